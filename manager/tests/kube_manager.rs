//! The traffic-manager's gRPC service over the Kubernetes provider (API stand-in): listing,
//! an intercept whose agent cannot start (the timeout says why, from the pods' state), and
//! `uninstall --all-agents` removing the ConfigMap entries.

#[path = "support/fixtures.rs"]
mod fixtures;
#[path = "support/standin.rs"]
mod standin;

use fixtures::*;
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
};
use standin::StandIn;
use std::sync::Arc;
use std::time::Duration;
use tonic::Request;
use tp_manager::kubernetes::patch::{inject, InjectSettings};
use tp_manager::kubernetes::{InjectPolicy, KubeConfig, KubeProvider, AGENTS_CONFIGMAP};
use tp_rpc::manager::manager_server::Manager as _;
use tp_rpc::manager::*;

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
                manager_namespace: "ambassador".into(),
                manager_host: "traffic-manager.ambassador".into(),
                grpc_port: 8081,
                tunnel_port: 8082,
                agent_image: "registry.example/telepresence:0.1.0".into(),
                policy: InjectPolicy::OnDemand,
                namespaces: vec![],
                server: s.url.clone(),
                sync_timeout: Duration::from_secs(10),
            },
        )
        .await
        .unwrap(),
    );
    let mgr = tp_manager::Manager::new(provider.clone(), Duration::from_secs(1));
    let arrived = mgr
        .arrive_as_client(Request::new(ClientInfo {
            name: "dev@laptop".into(),
            namespace: "shop".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(arrived.cluster.as_ref().unwrap().cluster_type, "kubernetes");
    let session = arrived.session;
    let list = mgr
        .list_workloads(Request::new(ListWorkloadsRequest {
            session: session.clone(),
            namespace: "shop".into(),
        }))
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
            &tp_manager::kubernetes::ports::workloads(
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
        .create_intercept(Request::new(CreateInterceptRequest {
            session: session.clone(),
            spec: Some(InterceptSpec {
                name: "web".into(),
                workload: "web".into(),
                target_host: "127.0.0.1".into(),
                target_port: 8080,
                ..Default::default()
            }),
        }))
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
    mgr.create_intercept(Request::new(CreateInterceptRequest {
        session: session.clone(),
        spec: Some(InterceptSpec {
            name: "api".into(),
            workload: "api".into(),
            target_host: "127.0.0.1".into(),
            target_port: 3000,
            ..Default::default()
        }),
    }))
    .await
    .unwrap_err();
    let cm: ConfigMap = s.get("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP).unwrap();
    assert!(cm.data.as_ref().unwrap()["api"].contains("mode: redirect"));

    mgr.uninstall(Request::new(UninstallRequest {
        session,
        namespace: "shop".into(),
        agents: vec![],
        all_agents: true,
    }))
    .await
    .unwrap();
    let cm: ConfigMap = s.get("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP).unwrap();
    assert!(cm.data.unwrap_or_default().is_empty());
}
