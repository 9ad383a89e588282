//! Kubernetes objects for tests, typed with `k8s-openapi`: namespaces, Deployments with their
//! ReplicaSets and pods, bare ReplicaSets, StatefulSets, Services; the provider settings the
//! tests start from, and a manager gRPC client arriving as a developer.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus, PodTemplateSpec, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kubernetes::{InjectPolicy, KubeConfig};
use protocol::auth::{Bearer, ManagerClient, Token};
use protocol::manager::{ArriveResponse, ClientInfo};
use std::collections::BTreeMap;
use std::time::Duration;

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: (!ns.is_empty()).then(|| ns.into()),
        ..Default::default()
    }
}

pub fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: meta("", name),
        ..Default::default()
    }
}

/// A container with named (`Some`) or unnamed ports.
pub fn container(name: &str, ports: &[(Option<&str>, i32)]) -> Container {
    Container {
        name: name.into(),
        image: Some(format!("example/{name}:1")),
        ports: (!ports.is_empty()).then(|| {
            ports
                .iter()
                .map(|(n, p)| ContainerPort {
                    name: n.map(str::to_string),
                    container_port: *p,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    }
}

pub fn template(app: &str, containers: Vec<Container>) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&[("app", app)])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers,
            ..Default::default()
        }),
    }
}

pub fn deployment(ns: &str, name: &str, containers: Vec<Container>) -> Deployment {
    Deployment {
        metadata: meta(ns, name),
        spec: DeploymentSpec {
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", name)])),
                ..Default::default()
            },
            template: template(name, containers),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn owner(kind: &str, api_version: &str, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A running pod named `name`, labelled `app=<app>`, whose controller is the `kind` (an `apps/v1`
/// kind: ReplicaSet, StatefulSet) named `owner_name`.
pub fn owned_pod(
    ns: &str,
    name: &str,
    app: &str,
    kind: &str,
    owner_name: &str,
    containers: Vec<Container>,
    ip: &str,
) -> Pod {
    let mut pod = deployment_pod(ns, app, "x", "y", containers, ip);
    pod.metadata.name = Some(name.into());
    pod.metadata.labels = Some(labels(&[("app", app)]));
    pod.metadata.owner_references = Some(vec![owner(kind, "apps/v1", owner_name)]);
    pod
}

/// A ReplicaSet: owned by `deployment` (named `<deployment>-<hash>`) or bare.
pub fn replicaset(
    ns: &str,
    name: &str,
    deployment: Option<&str>,
    containers: Vec<Container>,
) -> ReplicaSet {
    let mut m = meta(ns, name);
    let mut tpl = template(deployment.unwrap_or(name), containers);
    if let Some(d) = deployment {
        m.owner_references = Some(vec![owner("Deployment", "apps/v1", d)]);
        let hash = name.rsplit('-').next().unwrap();
        tpl.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("pod-template-hash".into(), hash.into());
    }
    ReplicaSet {
        metadata: m,
        spec: ReplicaSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", deployment.unwrap_or(name))])),
                ..Default::default()
            },
            template: Some(tpl),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub fn statefulset(ns: &str, name: &str, containers: Vec<Container>) -> StatefulSet {
    StatefulSet {
        metadata: meta(ns, name),
        spec: StatefulSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", name)])),
                ..Default::default()
            },
            service_name: Some(name.into()),
            template: template(name, containers),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A pod of a Deployment (through its ReplicaSet `<deployment>-<hash>`).
pub fn deployment_pod(
    ns: &str,
    deployment: &str,
    hash: &str,
    suffix: &str,
    containers: Vec<Container>,
    ip: &str,
) -> Pod {
    let mut m = meta(ns, &format!("{deployment}-{hash}-{suffix}"));
    m.labels = Some(labels(&[("app", deployment), ("pod-template-hash", hash)]));
    m.owner_references = Some(vec![owner(
        "ReplicaSet",
        "apps/v1",
        &format!("{deployment}-{hash}"),
    )]);
    Pod {
        metadata: m,
        spec: Some(PodSpec {
            containers,
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some(ip.into()),
            phase: Some("Running".into()),
            ..Default::default()
        }),
    }
}

/// A Service selecting `app=<app>`: ports (name, port, targetPort).
pub fn service(
    ns: &str,
    name: &str,
    app: &str,
    ports: &[(&str, i32, IntOrString)],
    headless: bool,
) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            selector: Some(labels(&[("app", app)])),
            cluster_ip: Some(if headless {
                "None".into()
            } else {
                "10.96.10.10".into()
            }),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, t)| ServicePort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        port: *p,
                        target_port: Some(t.clone()),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn named(s: &str) -> IntOrString {
    IntOrString::String(s.into())
}

pub fn num(n: i32) -> IntOrString {
    IntOrString::Int(n)
}

/// The provider settings the tests start from: manager in `ambassador` at `10.96.0.50`, ports
/// 8081/8082, no rollout wait; tests override what they need with `..kube_config(…)`.
pub fn kube_config(policy: InjectPolicy, namespaces: &[&str]) -> KubeConfig {
    KubeConfig {
        manager_namespace: "ambassador".into(),
        manager_host: "10.96.0.50".into(),
        grpc_port: 8081,
        tunnel_port: 8082,
        agent_image: "local/telepresence:test".into(),
        policy,
        namespaces: namespaces
            .iter()
            .map(std::string::ToString::to_string)
            .collect(),
        server: "https://cluster.example:6443".into(),
        sync_timeout: Duration::from_secs(10),
        rollout_timeout: Duration::ZERO,
    }
}

/// A gRPC client of the manager serving on 127.0.0.1:`grpc`, presenting `token`, once it
/// answers.
pub async fn manager_client(grpc: u16, token: Option<Token>) -> ManagerClient {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .expect("endpoint");
    loop {
        match endpoint.connect().await {
            Ok(c) => return protocol::auth::manager_client(c, Bearer::new(token)),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The client token of the manager in `namespace` once its Secret exists, read as the CLI
/// reads it (kubernetes/src/auth.rs `client_token`).
pub async fn client_token(s: &super::standin::StandIn, namespace: &str) -> Token {
    loop {
        if let Ok(Some(t)) = kubernetes::auth::client_token(&s.client(), namespace).await {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Arrives as the client `dev@laptop` in namespace `shop`.
pub async fn arrive(client: &mut ManagerClient) -> ArriveResponse {
    client
        .arrive_as_client(ClientInfo {
            name: "dev@laptop".into(),
            namespace: "shop".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The app container of the `shop/web` workload: ports `http` 8080 and `admin` 9000.
pub fn web_container() -> Container {
    container("app", &[(Some("http"), 8080), (Some("admin"), 9000)])
}

/// `shop/web`: namespace `shop`, a Deployment with its ReplicaSet and one pod (10.42.0.5),
/// selected by Service `web` (port `http` 80 → named `http`) and `web-admin` (9000 → 9000).
pub fn seed_web(s: &super::standin::StandIn) {
    s.put(&namespace("shop"));
    s.put(&deployment("shop", "web", vec![web_container()]));
    s.put(&replicaset(
        "shop",
        "web-5d9f8",
        Some("web"),
        vec![web_container()],
    ));
    s.put(&deployment_pod(
        "shop",
        "web",
        "5d9f8",
        "x1",
        vec![web_container()],
        "10.42.0.5",
    ));
    s.put(&service(
        "shop",
        "web",
        "web",
        &[("http", 80, named("http"))],
        false,
    ));
    s.put(&service(
        "shop",
        "web-admin",
        "web",
        &[("", 9000, num(9000))],
        false,
    ));
}
