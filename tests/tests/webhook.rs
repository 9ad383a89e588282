//! The agent-injector webhook with real AdmissionReview JSON: the returned JSONPatch, applied to
//! the pod, gives the expected pod (typed with k8s-openapi); reviewing the patched pod changes
//! nothing; pods without config, other operations and uninjectable pods are admitted as they
//! are. Also end to end over HTTPS with a generated certificate.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, LocalObjectReference, ObjectFieldSelector, Pod, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, TCPSocketAction,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::admission::AdmissionReview;
use kube::core::DynamicObject;
use kubernetes::configmap::{self, AgentConfig};
use kubernetes::patch::InjectSettings;
use kubernetes::ports::{self, Workload};
use kubernetes::webhook::{self, BoxFuture, ConfigSource, SourceError};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tests::kube::fixtures;
use tests::kube::fixtures::*;
use tests::kube::https;

/// Configs by workload name.
struct Fixed(HashMap<String, AgentConfig>);

impl ConfigSource for Fixed {
    fn agent_config<'a>(
        &'a self,
        _namespace: &'a str,
        _kind: &'a str,
        name: &'a str,
        _pod: &'a Pod,
        _dry_run: bool,
    ) -> BoxFuture<'a, Result<Option<AgentConfig>, SourceError>> {
        Box::pin(async move { Ok(self.0.get(name).cloned()) })
    }
}

fn settings() -> InjectSettings {
    InjectSettings {
        agent_image: "registry.example/telepresence:0.1.0".into(),
        image_pull_policy: Some("IfNotPresent".into()),
        ..Default::default()
    }
}

fn probe_http(port: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    }
}

/// The app container: named port `http` (8080), unnamed 9000, env, envFrom, mounts, probes.
fn app() -> Container {
    let mut c = container("app", &[(Some("http"), 8080), (None, 9000)]);
    c.env = Some(vec![EnvVar {
        name: "DB_URL".into(),
        value: Some("postgres://db:5432/shop".into()),
        ..Default::default()
    }]);
    c.env_from = Some(vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: "shop-settings".into(),
            optional: None,
        }),
        ..Default::default()
    }]);
    c.volume_mounts = Some(vec![
        VolumeMount {
            name: "data".into(),
            mount_path: "/var/data".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "certs".into(),
            mount_path: "/etc/certs".into(),
            read_only: Some(true),
            ..Default::default()
        },
    ]);
    c.readiness_probe = Some(probe_http("http"));
    c.liveness_probe = Some(Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

fn sidecar() -> Container {
    container("metrics", &[(Some("metrics"), 9102)])
}

/// The pod the ReplicaSet controller of Deployment `web` creates (no name yet).
fn new_pod() -> Pod {
    let mut p = deployment_pod("shop", "web", "6c8d7", "x", vec![app(), sidecar()], "");
    p.metadata.name = None;
    p.metadata.generate_name = Some("web-6c8d7-".into());
    p.metadata.namespace = None;
    p.status = None;
    let spec = p.spec.as_mut().unwrap();
    spec.volumes = Some(vec![
        Volume {
            name: "data".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
        Volume {
            name: "certs".into(),
            secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
                secret_name: Some("web-certs".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]);
    p
}

/// The agent config the manager plans for web: service `web` targets `http` by name (takeover),
/// `web-grpc` targets 9000 by number (redirect).
fn web_config() -> AgentConfig {
    let w = Workload {
        kind: ports::KIND_DEPLOYMENT,
        name: "web".into(),
        namespace: "shop".into(),
        template: template("web", vec![app(), sidecar()]),
    };
    let svc = service("shop", "web", "web", &[("http", 80, named("http"))], false);
    let grpc = service(
        "shop",
        "web-grpc",
        "web",
        &[("grpc", 9000, num(9000))],
        false,
    );
    let m = ports::match_ports(&w.template, &[&svc, &grpc]).unwrap();
    configmap::plan(&w, &m, "10.96.0.50:8081", "10.96.0.50:8082").unwrap()
}

fn review_json(pod: &Pod, operation: &str) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "c3b1c7a0-0000-4000-8000-000000000001",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
    .to_string()
    .into_bytes()
}

/// Sends a review through the handler; returns (allowed, patch ops or None, warnings).
async fn review(
    src: &dyn ConfigSource,
    pod: &Pod,
    op: &str,
) -> (bool, Option<json_patch::Patch>, Vec<String>) {
    let out = webhook::review(src, &settings(), &review_json(pod, op)).await;
    decode(&out)
}

fn decode(out: &[u8]) -> (bool, Option<json_patch::Patch>, Vec<String>) {
    let raw: Value = serde_json::from_slice(out).unwrap();
    assert_eq!(raw["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(raw["kind"], "AdmissionReview");
    assert_eq!(
        raw["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    // The patch is a base64 string on the wire, as the API server's Go `[]byte` expects.
    let mut typed = raw.clone();
    let wire = typed["response"]
        .as_object_mut()
        .unwrap()
        .remove("patch")
        .map(|p| {
            use base64::Engine;
            let s = p.as_str().expect("patch is a base64 string");
            base64::engine::general_purpose::STANDARD.decode(s).unwrap()
        });
    let r: AdmissionReview<DynamicObject> = serde_json::from_value(typed).unwrap();
    let resp = r.response.unwrap();
    let patch = wire.map(|bytes| {
        assert_eq!(raw["response"]["patchType"], "JSONPatch");
        serde_json::from_slice::<json_patch::Patch>(&bytes).unwrap()
    });
    (resp.allowed, patch, resp.warnings.unwrap_or_default())
}

fn apply(pod: &Pod, patch: &json_patch::Patch) -> Pod {
    let mut v = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut v, patch).unwrap();
    serde_json::from_value(v).unwrap()
}

fn q(s: &str) -> Quantity {
    Quantity(s.into())
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The pod as it must come out, written out by hand.
fn expected_pod() -> Pod {
    let mut p = new_pod();
    p.metadata.annotations = Some(BTreeMap::from([(
        "telepresence.io/agent-injected".to_string(),
        "web".to_string(),
    )]));
    let spec = p.spec.as_mut().unwrap();
    // The app gives up the name `http`; its probes follow the rename.
    let app = &mut spec.containers[0];
    app.ports.as_mut().unwrap()[0].name = Some("tm-http".into());
    app.readiness_probe = Some(probe_http("tm-http"));
    app.liveness_probe
        .as_mut()
        .unwrap()
        .tcp_socket
        .as_mut()
        .unwrap()
        .port = IntOrString::String("tm-http".into());
    let mut agent_env = vec![env("DB_URL", "postgres://db:5432/shop")];
    agent_env.extend([
        env("TP_MANAGER_ADDR", "10.96.0.50:8081"),
        env("TP_TUNNEL_ADDR", "10.96.0.50:8082"),
        env("TP_NAMESPACE", "shop"),
        env("TP_WORKLOAD", "web"),
        env("TP_PORTS", "80,9000"),
        env(
            "TP_PORT_MAP",
            r#"[{"agentPort":9900,"appPort":8080,"servicePort":80},{"agentPort":9901,"appPort":9000,"servicePort":9000}]"#,
        ),
        env("TP_APP_HOST", "127.0.0.1"),
        env("TP_APP_CONTAINER", "app"),
        env(
            "TP_APP_MOUNTS",
            r#"[{"path":"/var/data","read_only":false},{"path":"/etc/certs","read_only":true}]"#,
        ),
        env("TP_APP_ENV_INHERIT", "true"),
        // The agent's credential: from the Secret the manager keeps in the namespace, optional
        // so the pod starts without it (the manager then refuses the agent; the app serves).
        EnvVar {
            name: "TP_AGENT_TOKEN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "traffic-agent-auth".into(),
                    key: "agent-token".into(),
                    optional: Some(true),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        EnvVar {
            name: "TP_POD_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]);
    spec.containers.push(Container {
        name: "traffic-agent".into(),
        image: Some("registry.example/telepresence:0.1.0".into()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["agent".into()]),
        env: Some(agent_env),
        env_from: app_env_from(),
        volume_mounts: new_pod().spec.unwrap().containers[0].volume_mounts.clone(),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: 9900,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(9900),
                ..Default::default()
            }),
            period_seconds: Some(2),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), q("10m")),
                ("memory".to_string(), q("32Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), q("256Mi"))])),
            ..Default::default()
        }),
        // Least privilege: what Pod Security `restricted` asks of every container.
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    spec.init_containers = Some(vec![Container {
        name: "tel-agent-init".into(),
        image: Some("registry.example/telepresence:0.1.0".into()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["agent-init".into()]),
        env: Some(vec![env("TP_REDIRECTS", "9000:9901")]),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    p
}

fn app_env_from() -> Option<Vec<EnvFromSource>> {
    app().env_from
}

fn src() -> Fixed {
    Fixed(HashMap::from([("web".to_string(), web_config())]))
}

#[tokio::test]
async fn injects_the_agent_into_a_deployment_pod_and_is_idempotent() {
    let src = src();
    let pod = new_pod();
    let (allowed, patch, warnings) = review(&src, &pod, "CREATE").await;
    assert!(allowed);
    assert!(warnings.is_empty(), "{warnings:?}");
    let patched = apply(&pod, &patch.expect("a patch"));
    let expected = expected_pod();
    assert_eq!(
        serde_json::to_value(&patched).unwrap(),
        serde_json::to_value(&expected).unwrap()
    );
    assert_eq!(patched, expected);
    // The sidecar container is untouched.
    assert_eq!(patched.spec.as_ref().unwrap().containers[1], sidecar());

    // Reviewing the injected pod again (e.g. webhook reinvocation) changes nothing.
    let (allowed, patch, _) = review(&src, &patched, "CREATE").await;
    assert!(allowed);
    assert!(patch.is_none(), "second review patched: {patch:?}");
}

/// web (app + sidecar) whose Service names both ports it reaches (the app's `http`, the
/// sidecar's `metrics`): takeover only, no redirect.
fn named_only_config() -> AgentConfig {
    let w = Workload {
        kind: ports::KIND_DEPLOYMENT,
        name: "web".into(),
        namespace: "shop".into(),
        template: template("web", vec![app(), sidecar()]),
    };
    let svc = service(
        "shop",
        "web",
        "web",
        &[
            ("http", 80, named("http")),
            ("metrics", 9102, named("metrics")),
        ],
        false,
    );
    let m = ports::match_ports(&w.template, &[&svc]).unwrap();
    configmap::plan(&w, &m, "m:1", "m:2").unwrap()
}

#[tokio::test]
async fn named_port_only_needs_no_init_container() {
    let cfg = named_only_config();
    assert!(!cfg.needs_redirect());
    let src = Fixed(HashMap::from([("web".to_string(), cfg)]));
    let (_, patch, _) = review(&src, &new_pod(), "CREATE").await;
    let patched = apply(&new_pod(), &patch.unwrap());
    let spec = patched.spec.unwrap();
    assert!(spec.init_containers.is_none());
    let names = |c: &Container| -> Vec<String> {
        c.ports
            .iter()
            .flatten()
            .filter_map(|p| p.name.clone())
            .collect()
    };
    assert_eq!(names(&spec.containers[0]), ["tm-http"]);
    assert_eq!(names(&spec.containers[1]), ["tm-metrics"]);
    assert_eq!(spec.containers[2].name, "traffic-agent");
    let agent_ports: Vec<(String, i32)> = spec.containers[2]
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        agent_ports,
        [("http".to_string(), 9900), ("metrics".to_string(), 9901)]
    );
}

#[tokio::test]
async fn headless_service_gets_a_redirect_even_for_a_named_port() {
    let w = Workload {
        kind: ports::KIND_STATEFULSET,
        name: "db".into(),
        namespace: "shop".into(),
        template: template("db", vec![container("pg", &[(Some("pg"), 5432)])]),
    };
    let svc = service("shop", "db", "db", &[("pg", 5432, named("pg"))], true);
    let m = ports::match_ports(&w.template, &[&svc]).unwrap();
    let cfg = configmap::plan(&w, &m, "m:1", "m:2").unwrap();
    assert_eq!(cfg.ports[0].mode, configmap::PortMode::Redirect);
    assert_eq!(
        configmap::takeover_name("a-very-long-port"),
        "tm-a-very-long"
    );
    assert!(configmap::takeover_name("a-very-long-port").len() <= 15);
}

#[tokio::test]
async fn other_pods_and_operations_are_admitted_unchanged() {
    let src = src();
    // Not a workload with a config.
    let mut other = new_pod();
    other.metadata.owner_references.as_mut().unwrap()[0].name = "api-6c8d7".into();
    other
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("app".into(), "api".into());
    let (allowed, patch, warnings) = review(&src, &other, "CREATE").await;
    assert!(allowed && patch.is_none() && warnings.is_empty());
    // Updates are not ours.
    let (allowed, patch, _) = review(&src, &new_pod(), "UPDATE").await;
    assert!(allowed && patch.is_none());
    // A bare pod (no controller).
    let mut bare = new_pod();
    bare.metadata.owner_references = None;
    let (allowed, patch, _) = review(&src, &bare, "CREATE").await;
    assert!(allowed && patch.is_none());
    // A config naming a container the pod lacks: admitted, with a warning saying why.
    let mut broken = web_config();
    broken.container = "gone".into();
    let src = Fixed(HashMap::from([("web".to_string(), broken)]));
    let (allowed, patch, warnings) = review(&src, &new_pod(), "CREATE").await;
    assert!(allowed && patch.is_none());
    assert_eq!(
        warnings,
        ["telepresence: traffic-agent not injected: the pod has no container \"gone\""]
    );
    // Garbage in: a clear refusal, not a crash.
    let out = webhook::review(&src, &settings(), b"{not json").await;
    let raw: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(raw["response"]["allowed"], false);
    assert!(raw["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains("not an AdmissionReview"));
}

#[tokio::test]
async fn serves_reviews_over_https() {
    let cert = https::cert();
    let (listener, acceptor) = webhook::bind(([127, 0, 0, 1], 0).into(), &cert.files)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(webhook::serve(
        listener,
        acceptor,
        Arc::new(src()),
        settings(),
    ));
    let (status, body) = https::request(
        &cert,
        addr,
        "POST",
        "/traffic-agent",
        review_json(&new_pod(), "CREATE"),
    )
    .await;
    assert_eq!(status, 200);
    let (allowed, patch, _) = decode(&body);
    assert!(allowed);
    assert_eq!(apply(&new_pod(), &patch.unwrap()), expected_pod());
    assert_eq!(
        https::request(&cert, addr, "GET", "/healthz", vec![])
            .await
            .0,
        200
    );
    assert_eq!(
        https::request(&cert, addr, "POST", "/other", vec![])
            .await
            .0,
        404
    );
    let huge = vec![b' '; webhook::MAX_REVIEW + 1];
    let (status, _) = https::request(&cert, addr, "POST", "/traffic-agent", huge).await;
    assert_eq!(status, 413);

    // A missing key file is a clear error at bind time.
    let bad = webhook::TlsFiles {
        cert: cert.files.cert.clone(),
        key: cert.files.cert.with_file_name("missing.key"),
    };
    let Err(e) = webhook::bind(([127, 0, 0, 1], 0).into(), &bad).await else {
        panic!("bind with a missing key succeeded");
    };
    let e = e.to_string();
    assert!(
        e.contains("cannot read webhook TLS file") && e.contains("missing.key"),
        "{e}"
    );
}

#[test]
fn port_matching_edge_cases() {
    let tpl = template("web", vec![sidecar(), app()]);
    // An undeclared numeric target is served by the first container; a declared one by its own.
    let svc = service(
        "shop",
        "web",
        "web",
        &[("a", 81, num(8081)), ("b", 80, num(8080))],
        false,
    );
    let m = ports::match_ports(&tpl, &[&svc]).unwrap();
    let got: Vec<(u16, &str, u16)> = m
        .iter()
        .map(|m| (m.service_port, m.container.as_str(), m.container_port))
        .collect();
    assert_eq!(got, [(80, "app", 8080), (81, "metrics", 8081)]);
    // A missing targetPort means the service port itself.
    let mut bare = service("shop", "web", "web", &[("", 9000, num(0))], false);
    bare.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port = None;
    assert_eq!(
        ports::match_ports(&tpl, &[&bare]).unwrap()[0].container,
        "app"
    );
    // One intercept port per service port number and per container port.
    let again = service(
        "shop",
        "web2",
        "web",
        &[("x", 80, named("http")), ("y", 8888, named("http"))],
        false,
    );
    assert_eq!(ports::match_ports(&tpl, &[&svc, &again]).unwrap().len(), 2);
    // A named target with another protocol does not match.
    let mut udp = service("shop", "dns", "web", &[("dns", 53, named("http"))], false);
    udp.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    let e = ports::match_ports(&tpl, &[&udp]).unwrap_err().to_string();
    assert!(
        e.contains("targetPort \"http\" matches no container port"),
        "{e}"
    );
    // Host network pods cannot be taken over.
    let mut host = tpl.clone();
    host.spec.as_mut().unwrap().host_network = Some(true);
    assert_eq!(
        ports::match_ports(&host, &[&svc]).unwrap_err().to_string(),
        ports::HOST_NETWORK_REASON
    );
    // Selection: all selector labels must match; no selector selects nothing.
    let labels = fixtures::labels(&[("app", "web"), ("tier", "front")]);
    assert!(ports::selects(&svc, &labels));
    let mut sel = svc.clone();
    sel.spec.as_mut().unwrap().selector =
        Some(fixtures::labels(&[("app", "web"), ("tier", "back")]));
    assert!(!ports::selects(&sel, &labels));
    sel.spec.as_mut().unwrap().selector = None;
    assert!(!ports::selects(&sel, &labels));
    // Agent ports skip ports the pod already uses.
    let busy = template(
        "web",
        vec![container("app", &[(Some("http"), 8080), (None, 9900)])],
    );
    let w = Workload {
        kind: ports::KIND_DEPLOYMENT,
        name: "web".into(),
        namespace: "shop".into(),
        template: busy,
    };
    let s = service("shop", "web", "web", &[("http", 80, named("http"))], false);
    let m = ports::match_ports(&w.template, &[&s]).unwrap();
    assert_eq!(
        configmap::plan(&w, &m, "m:1", "m:2").unwrap().ports[0].agent_port,
        9901
    );
}

/// A rotated certificate (new files, as a re-mounted Secret) is served without a restart; a
/// broken pair keeps the previous one.
#[tokio::test]
async fn rotated_certificates_are_picked_up() {
    use tokio_rustls::rustls;
    let first = https::cert();
    let (listener, acceptor) = webhook::bind(([127, 0, 0, 1], 0).into(), &first.files)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(webhook::serve(
        listener,
        acceptor,
        Arc::new(src()),
        settings(),
    ));
    let second = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let connector = https::connector(&[first.der.clone(), second.cert.der().clone()]);
    let served = || async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    assert_eq!(served().await, first.der);

    // A half-written rotation (garbage key) is ignored.
    std::fs::write(&first.files.key, "not a key").unwrap();
    tokio::time::sleep(webhook::RELOAD_CHECK).await;
    assert_eq!(served().await, first.der);

    std::fs::write(&first.files.cert, second.cert.pem()).unwrap();
    std::fs::write(&first.files.key, second.signing_key.serialize_pem()).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while served().await != *second.cert.der() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[test]
fn pods_are_traced_to_their_workload() {
    let d = new_pod();
    assert_eq!(
        webhook::pod_workload(&d),
        Some((ports::KIND_DEPLOYMENT, "web".to_string()))
    );
    // A ReplicaSet whose name is not `<x>-<pod-template-hash>` is a workload of its own.
    let mut rs = new_pod();
    rs.metadata
        .labels
        .as_mut()
        .unwrap()
        .remove("pod-template-hash");
    assert_eq!(
        webhook::pod_workload(&rs),
        Some((ports::KIND_REPLICASET, "web-6c8d7".to_string()))
    );
    let mut sts = new_pod();
    let o = &mut sts.metadata.owner_references.as_mut().unwrap()[0];
    o.kind = "StatefulSet".into();
    o.name = "db".into();
    assert_eq!(
        webhook::pod_workload(&sts),
        Some((ports::KIND_STATEFULSET, "db".to_string()))
    );
    let mut job = new_pod();
    job.metadata.owner_references.as_mut().unwrap()[0].kind = "Job".into();
    assert_eq!(webhook::pod_workload(&job), None);
    let mut not_controller = new_pod();
    not_controller.metadata.owner_references.as_mut().unwrap()[0].controller = None;
    assert_eq!(webhook::pod_workload(&not_controller), None);
}

/// The pods the tests above patch, re-patched with python's `jsonpatch` and validated against
/// the strict Kubernetes schemas (`tests::kube::schemas`).
#[tokio::test]
async fn patched_pods_pass_the_kubernetes_schemas() {
    let mut pods = Vec::new();
    let mut add = |name: &str, pod: &Pod, patch: json_patch::Patch| {
        let original = serde_json::to_value(pod).unwrap();
        let expected = serde_json::to_value(apply(pod, &patch)).unwrap();
        pods.push(tests::kube::schemas::PatchedPod {
            name: name.into(),
            original,
            patch: serde_json::to_value(&patch).unwrap(),
            expected,
            min_version: None,
        });
    };
    let (_, patch, _) = review(&src(), &new_pod(), "CREATE").await;
    add("web (takeover and redirect)", &new_pod(), patch.unwrap());
    let cfg = named_only_config();
    let named_only = Fixed(HashMap::from([("web".to_string(), cfg)]));
    let (_, patch, _) = review(&named_only, &new_pod(), "CREATE").await;
    add("web (takeover only)", &new_pod(), patch.unwrap());
    tests::kube::schemas::check(
        "webhook::patched_pods_pass_the_kubernetes_schemas",
        &pods,
        &[],
    );
}

/// The chart's `agent` values reach the injected pod: rendered into the manager's environment,
/// read by `startup::Settings` and applied by the webhook (image from the same registry as the
/// manager, RUST_LOG over the app's, resources, pull secrets added once, securityContext merged
/// over the least-privilege default); the patched pod passes the schemas.
#[tokio::test]
async fn chart_agent_values_reach_the_injected_pod() {
    let user = json!({"agent": {
        "image": {"name": "tp-agent", "pullSecrets": ["regcred", "other"]},
        "logLevel": "debug",
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": {"runAsUser": 2000, "runAsGroup": 3000,
                            "capabilities": {"add": ["NET_BIND_SERVICE"]}, "seccompProfile": null}
    }});
    let tls = cli::helm::generate_tls("tm").unwrap();
    let values = cli::helm::effective_values(&user, "ghcr.io/me", "0.1.0-abc", &tls);
    let objs = kubernetes::helm::chart::render(&values, "tm").unwrap();
    let d = objs.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let menv: HashMap<String, String> = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let v = match e["value"].as_str() {
                Some(v) => v.to_string(),
                None => "tm".to_string(), // metadata.namespace
            };
            (e["name"].as_str().unwrap().to_string(), v)
        })
        .collect();
    let s = kubernetes::startup::Settings::from_lookup(|k| menv.get(k).cloned()).unwrap();
    let settings = s.inject_settings();

    let mut pod = new_pod();
    let spec = pod.spec.as_mut().unwrap();
    spec.image_pull_secrets = Some(vec![LocalObjectReference {
        name: "regcred".into(),
    }]);
    spec.containers[0]
        .env
        .get_or_insert_with(Vec::new)
        .push(env("RUST_LOG", "warn"));
    let out = webhook::review(&src(), &settings, &review_json(&pod, "CREATE")).await;
    let (allowed, patch, _) = decode(&out);
    assert!(allowed);
    let patch = patch.expect("a patch");
    let patched = apply(&pod, &patch);
    let pspec = patched.spec.as_ref().unwrap();
    let agent = pspec
        .containers
        .iter()
        .find(|c| c.name == kubernetes::AGENT_CONTAINER)
        .unwrap();
    assert_eq!(
        agent.image.as_deref(),
        Some("ghcr.io/me/tp-agent:0.1.0-abc")
    );
    let init = pspec.init_containers.as_ref().unwrap().last().unwrap();
    assert_eq!(
        init.image, agent.image,
        "the init container runs the agent image"
    );
    let logs: Vec<_> = agent
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == "RUST_LOG")
        .collect();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].value.as_deref(), Some("debug"));
    assert_eq!(
        agent.resources,
        Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), q("50m")),
                ("memory".into(), q("64Mi"))
            ])),
            limits: Some(BTreeMap::from([("memory".into(), q("1Gi"))])),
            ..Default::default()
        })
    );
    assert_eq!(
        pspec
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["regcred", "other"]
    );
    let sc = agent.security_context.clone().unwrap();
    assert_eq!(
        sc,
        SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(2000),
            run_as_group: Some(3000),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: None,
            ..Default::default()
        }
    );
    // Without the values: the defaults.
    let plain = kubernetes::startup::Settings::from_lookup(|k| match k {
        "TP_MANAGER_NAMESPACE" => Some("tm".into()),
        "TP_AGENT_IMAGE" => Some("i:1".into()),
        _ => None,
    })
    .unwrap()
    .inject_settings();
    let (_, plain_patch, _) =
        decode(&webhook::review(&src(), &plain, &review_json(&new_pod(), "CREATE")).await);
    let plain_pod = apply(&new_pod(), &plain_patch.unwrap());
    let plain_agent = plain_pod
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == kubernetes::AGENT_CONTAINER)
        .unwrap()
        .clone();
    assert_eq!(
        plain_agent.resources,
        Some(kubernetes::patch::default_resources())
    );
    assert_eq!(plain_pod.spec.as_ref().unwrap().image_pull_secrets, None);
    assert_eq!(
        plain_agent.security_context.unwrap().seccomp_profile,
        Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        })
    );

    // Idempotent, and the patched pod passes the schemas.
    let again = webhook::review(&src(), &settings, &review_json(&patched, "CREATE")).await;
    assert!(decode(&again).1.is_none());
    tests::kube::schemas::check(
        "webhook::chart_agent_values_reach_the_injected_pod",
        &[tests::kube::schemas::PatchedPod {
            name: "web with the chart's agent values".into(),
            original: serde_json::to_value(&pod).unwrap(),
            patch: serde_json::to_value(&patch).unwrap(),
            expected: serde_json::to_value(&patched).unwrap(),
            min_version: None,
        }],
        &[],
    );
}
