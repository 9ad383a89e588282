//! The containers the agent-injector webhook adds, run on the Docker engine the way a kubelet
//! runs a pod (one network namespace): the `agent-init` init container installs the redirect
//! of the numeric target port (NET_ADMIN), the `traffic-agent` container — started with exactly
//! the environment the webhook wrote — listens on the port it took over by name and on the
//! redirect's target, and forwards both to the app. No manager is needed for that: the agent
//! forwards to the app while it waits for one. Removing the agent proves the traffic went
//! through it.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, Pod, PodSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kubernetes::configmap;
use kubernetes::patch::{inject, InjectSettings};
use kubernetes::ports::{self, Workload};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use tests::*;

fn app_container() -> Container {
    Container {
        name: "app".into(),
        image: Some("tp-testapp".into()),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                container_port: 9090,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        env: Some(vec![EnvVar {
            name: "GREETING".into(),
            value: Some("hello".into()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn service(name: &str, port: i32, target: IntOrString) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            ports: Some(vec![ServicePort {
                port,
                target_port: Some(target),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `-e K=V` for every literal env var of a container; `TP_POD_IP` (downward API) is given; an
/// optional Secret key is left unset as the kubelet does when the Secret does not exist (no
/// Secret exists here: nobody answers at the manager address either).
fn env_args(c: &Container, pod_ip: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.env.iter().flatten() {
        let optional_secret = e
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .is_some_and(|r| r.optional == Some(true));
        let v = match (&e.value, e.name.as_str()) {
            (Some(v), _) => v.clone(),
            (None, "TP_POD_IP") => pod_ip.to_string(),
            (None, _) if optional_secret => continue,
            (None, other) => panic!("unexpected valueFrom env {other}"),
        };
        out.push("-e".into());
        out.push(format!("{}={v}", e.name));
    }
    out
}

fn docker_run(args: &[String]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("docker")
}

#[test]
fn injected_agent_takes_over_named_and_redirected_ports() {
    if !engine_available() {
        return;
    }
    let (_, tp) = images();
    let p = Project::up_with(
        "  web:\n    image: @APP@\n    command: [\"serve\", \"--http\", \"8080\", \"--http\", \"9090\", \"--name\", \"web\"]\n",
        "",
    )
    .unwrap();
    let web = p.container("web").unwrap();
    let ip = p.ip("web").unwrap();
    p.wait_for(
        &format!("http://{ip}:8080/"),
        "web",
        Duration::from_secs(20),
    )
    .unwrap();

    // What the manager plans and the webhook writes for this pod.
    let template = k8s_openapi::api::core::v1::PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![app_container()],
            ..Default::default()
        }),
    };
    let w = Workload {
        kind: ports::KIND_DEPLOYMENT,
        name: "web".into(),
        namespace: "shop".into(),
        template: template.clone(),
    };
    let named = service("web", 80, IntOrString::String("http".into()));
    let numeric = service("web-raw", 9090, IntOrString::Int(9090));
    let m = ports::match_ports(&w.template, &[&named, &numeric]).unwrap();
    // Nobody answers there: the agent keeps forwarding to the app while it retries.
    let cfg = configmap::plan(&w, &m, "127.0.0.1:1", "127.0.0.1:2").unwrap();
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some("web-6c8d7-".into()),
            labels: Some(BTreeMap::from([
                ("app".to_string(), "web".to_string()),
                ("pod-template-hash".to_string(), "6c8d7".to_string()),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web-6c8d7".into(),
                uid: "u".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    };
    let injected = inject(
        &pod,
        &cfg,
        &InjectSettings {
            agent_image: tp.clone(),
            image_pull_policy: None,
            ..Default::default()
        },
    )
    .unwrap();
    let spec = injected.spec.unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let agent = spec
        .containers
        .iter()
        .find(|c| c.name == "traffic-agent")
        .unwrap();
    // The Service's named targetPort now resolves to the agent's port.
    let http_port = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("http"))
        .unwrap()
        .container_port;
    assert_eq!(http_port, 9900);

    // The init container, as the kubelet runs it: same netns, NET_ADMIN, runs to completion.
    let netns = format!("container:{web}");
    let mut args: Vec<String> = ["run", "--rm", "--network", &netns, "--cap-add", "NET_ADMIN"]
        .map(String::from)
        .to_vec();
    args.extend(env_args(init, &ip));
    args.push(init.image.clone().unwrap());
    args.extend(init.args.clone().unwrap());
    let out = docker_run(&args);
    assert!(
        out.status.success(),
        "agent-init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(p.has_agent_table("web").unwrap());

    // The agent container, with the webhook's environment.
    let name = format!(
        "tp-kpod-agent-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", &netns]
        .map(String::from)
        .to_vec();
    args.extend(env_args(agent, &ip));
    args.push(agent.image.clone().unwrap());
    args.extend(agent.args.clone().unwrap());
    let out = docker_run(&args);
    assert!(
        out.status.success(),
        "agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = std::panic::catch_unwind(|| {
        // Named port: the endpoint is the agent's port, forwarded to the app.
        p.wait_for(
            &format!("http://{ip}:9900/"),
            "web",
            Duration::from_secs(20),
        )
        .unwrap();
        // Numeric port: redirected to the agent, forwarded to the app.
        assert_eq!(p.get(&format!("http://{ip}:9090/")).unwrap(), "web");
        // The app's renamed port still answers directly (probes use it).
        assert_eq!(p.get(&format!("http://{ip}:8080/")).unwrap(), "web");
    });
    let logs = Command::new("docker")
        .args(["logs", &name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    docker(&["rm", "-f", &name]).unwrap();
    if let Err(e) = result {
        eprintln!("agent logs:\n{logs}");
        std::panic::resume_unwind(e);
    }
    // Without the agent both paths are dead: the traffic went through it.
    assert!(p.get(&format!("http://{ip}:9900/")).is_err());
    assert!(p.get(&format!("http://{ip}:9090/")).is_err());
    drop(p);
    assert_eq!(leftovers(), Vec::<String>::new());
}
