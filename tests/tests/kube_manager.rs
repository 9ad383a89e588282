//! The traffic-manager's gRPC service over the Kubernetes provider (API stand-in): listing,
//! an intercept whose agent cannot start (the timeout says why, from the pods' state), and
//! `uninstall --all-agents` removing the ConfigMap entries.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
};
use kubernetes::patch::{inject, InjectSettings};
use kubernetes::{InjectPolicy, KubeConfig, KubeProvider, AGENTS_CONFIGMAP};
use manager::auth::Caller;
use protocol::manager::manager_server::Manager as _;
use protocol::manager::*;
use std::sync::Arc;
use std::time::Duration;
use tests::kube::fixtures::*;
use tests::kube::https;
use tests::kube::standin::StandIn;
use tonic::Request;

/// An intercept of workload `web` to 127.0.0.1:8080.
fn web_spec() -> InterceptSpec {
    InterceptSpec {
        name: "web".into(),
        workload: "web".into(),
        target_host: "127.0.0.1".into(),
        target_port: 8080,
        ..Default::default()
    }
}

#[tokio::test]
async fn intercept_timeout_says_why_and_uninstall_removes_agents() {
    let s = StandIn::start().await;
    s.put(&namespace("shop"));
    let app = container("app", &[(Some("http"), 8080)]);
    s.put(&deployment("shop", "web", vec![app.clone()]));
    s.put(&service(
        "shop",
        "web",
        "web",
        &[("http", 80, named("http"))],
        false,
    ));
    s.put(&deployment(
        "shop",
        "api",
        vec![container("api", &[(None, 3000)])],
    ));
    s.put(&service(
        "shop",
        "api",
        "api",
        &[("", 3000, num(3000))],
        false,
    ));
    let provider = Arc::new(
        KubeProvider::start(
            s.client(),
            KubeConfig {
                manager_host: "traffic-manager.ambassador".into(),
                agent_image: "registry.example/telepresence:0.1.0".into(),
                server: s.url.clone(),
                ..kube_config(InjectPolicy::OnDemand, &[])
            },
        )
        .await
        .unwrap(),
    );
    let mgr = manager::Manager::new(provider.clone(), Duration::from_secs(1));
    let arrived = mgr
        .arrive_as_client(Caller::Client.attach(Request::new(ClientInfo {
            name: "dev@laptop".into(),
            namespace: "shop".into(),
            ..Default::default()
        })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        arrived.cluster.as_ref().unwrap().cluster_type().as_str(),
        "kubernetes"
    );
    let session = arrived.session;
    let list = mgr
        .list_workloads(Caller::Client.attach(Request::new(ListWorkloadsRequest {
            session: session.clone(),
            namespace: "shop".into(),
        })))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(list.workloads[1].ports[0].port, 80);

    // The rollout's new pod has the agent, but its image cannot be pulled.
    let mut pod = deployment_pod("shop", "web", "77aa1", "q1", vec![app], "10.42.0.7");
    let cfg = provider
        .plan(
            &kubernetes::ports::workloads(
                "shop",
                &[&deployment(
                    "shop",
                    "web",
                    vec![container("app", &[(Some("http"), 8080)])],
                )],
                &[],
                &[],
            )[0],
        )
        .unwrap();
    pod = inject(
        &pod,
        &cfg,
        &InjectSettings {
            agent_image: "registry.example/telepresence:0.1.0".into(),
            image_pull_policy: None,
            ..Default::default()
        },
    )
    .unwrap();
    pod.status = Some(PodStatus {
        pod_ip: Some("10.42.0.7".into()),
        phase: Some("Pending".into()),
        container_statuses: Some(vec![ContainerStatus {
            name: "traffic-agent".into(),
            image: "registry.example/telepresence:0.1.0".into(),
            ready: false,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ImagePullBackOff".into()),
                    message: Some(
                        "Back-off pulling image \"registry.example/telepresence:0.1.0\"".into(),
                    ),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    });
    s.put(&pod);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while provider
        .agent_problem("shop", "web")
        .is_none_or(|m| !m.contains("ImagePullBackOff"))
    {
        assert!(tokio::time::Instant::now() < deadline, "pod not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let e = mgr
        .create_intercept(Caller::Client.attach(Request::new(CreateInterceptRequest {
            session: session.clone(),
            spec: Some(web_spec()),
        })))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
    assert!(
        e.message().contains("did not connect within 1s")
            && e.message()
                .contains("container traffic-agent: ImagePullBackOff: Back-off pulling image"),
        "{}",
        e.message()
    );
    // The agent stays requested (the config entry is there) for the next attempt.
    let cm: ConfigMap = s.get("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP).unwrap();
    assert!(cm.data.as_ref().unwrap().contains_key("web"));

    // A numeric target: the entry asks for a redirect.
    mgr.create_intercept(Caller::Client.attach(Request::new(CreateInterceptRequest {
        session: session.clone(),
        spec: Some(InterceptSpec {
            name: "api".into(),
            workload: "api".into(),
            target_host: "127.0.0.1".into(),
            target_port: 3000,
            ..Default::default()
        }),
    })))
    .await
    .unwrap_err();
    let cm: ConfigMap = s.get("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP).unwrap();
    assert!(cm.data.as_ref().unwrap()["api"].contains("mode: redirect"));

    mgr.uninstall(Caller::Client.attach(Request::new(UninstallRequest {
        session,
        namespace: "shop".into(),
        agents: vec![],
        all_agents: true,
    })))
    .await
    .unwrap();
    let cm: ConfigMap = s.get("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP).unwrap();
    assert!(cm.data.unwrap_or_default().is_empty());
}

/// The manager as the chart runs it (`startup::run_with`): watches, webhook over HTTPS, gRPC.
#[tokio::test]
async fn manager_startup_serves_grpc_and_the_webhook() {
    use kubernetes::startup::{run_with, Settings};
    let s = StandIn::start().await;
    s.put(&namespace("shop"));
    s.put(&namespace("ambassador"));
    let mut tm = service(
        "ambassador",
        "traffic-manager",
        "traffic-manager",
        &[("api", 8081, num(8081))],
        false,
    );
    tm.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.50".into());
    s.put(&tm);
    s.put(&deployment(
        "shop",
        "web",
        vec![container("app", &[(Some("http"), 8080)])],
    ));
    s.put(&service(
        "shop",
        "web",
        "web",
        &[("http", 80, named("http"))],
        false,
    ));
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (grpc, tunnel, hook) = (free(), free(), free());
    let cert = https::cert();
    let env = [
        ("TP_MANAGER_NAMESPACE", "ambassador".to_string()),
        (
            "TP_AGENT_IMAGE",
            "registry.example/telepresence:0.1.0".to_string(),
        ),
        ("TP_GRPC_PORT", grpc.to_string()),
        ("TP_TUNNEL_PORT", tunnel.to_string()),
        ("TP_WEBHOOK_PORT", hook.to_string()),
        ("TP_AGENT_TIMEOUT", "1".to_string()),
        ("TP_WEBHOOK_CERT", cert.files.cert.display().to_string()),
        ("TP_WEBHOOK_KEY", cert.files.key.display().to_string()),
    ];
    let settings =
        Settings::from_lookup(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run_with(settings, s.client(), s.url.clone(), async {
        let _ = stop_rx.await;
    }));
    let token = client_token(&s, "ambassador").await;
    let mut client = manager_client(grpc, Some(token)).await;
    let arrived = arrive(&mut client).await;
    let e = client
        .create_intercept(CreateInterceptRequest {
            session: arrived.session.clone(),
            spec: Some(web_spec()),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("has no pods"), "{}", e.message());
    // Agents reach the manager at its Service's ClusterIP.
    let cm: ConfigMap = s.get("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP).unwrap();
    let entry = cm.data.unwrap()["web"].clone();
    assert!(
        entry.contains(&format!("managerAddr: 10.96.0.50:{grpc}")),
        "{entry}"
    );
    let hook_addr = std::net::SocketAddr::from(([127, 0, 0, 1], hook));
    assert_eq!(
        https::request(&cert, hook_addr, "GET", "/healthz", vec![])
            .await
            .0,
        200
    );
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
