//! The Kubernetes side of the engagement kinds against the HTTP stand-in: `replace` marks the
//! workload's agent config (`replace: true`) and rolls the workload out, the webhook's injection
//! then leaves the app container out (the agent in its place), a later `ensure_agent` keeps the
//! replace, ending it rolls back; `--service` picks the ports of one of the services selecting a
//! workload; the manager over this provider accepts wiretaps beside an intercept on one port,
//! and the agent's routing gives the intercept the connections and the wiretaps copies.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kubernetes::configmap::AgentConfig;
use kubernetes::{InjectPolicy, KubeProvider, AGENTS_CONFIGMAP, RESTART_ANNOTATION};
use manager::provider::{AgentRequest, Provider, ProviderError};
use tests::kube::fixtures::*;
use tests::kube::standin::StandIn;

fn stored(s: &StandIn) -> AgentConfig {
    let cm: ConfigMap = s.get("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP).unwrap();
    AgentConfig::from_yaml(&cm.data.as_ref().unwrap()["web"]).unwrap()
}

fn rollouts(s: &StandIn) -> usize {
    s.requests_matching("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web")
        .len()
}

#[tokio::test]
async fn replace_takes_the_app_containers_place_and_gives_it_back() {
    let s = StandIn::start().await;
    seed_web(&s);
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &[]))
        .await
        .unwrap();
    // Without an agent there is nothing to take the container's place.
    let e = p.set_replaced("shop", "web", true).await.unwrap_err();
    assert!(e.to_string().contains("no traffic-agent"), "{e}");
    p.set_replaced("shop", "web", false).await.unwrap();

    let req = AgentRequest {
        namespace: "shop".into(),
        workload: "web".into(),
        ports: vec![80, 9000],
    };
    p.ensure_agent(&req).await.unwrap();
    assert!(!stored(&s).replace);
    assert_eq!(rollouts(&s), 1);

    p.set_replaced("shop", "web", true).await.unwrap();
    let cfg = stored(&s);
    assert!(cfg.replace);
    assert_eq!(rollouts(&s), 2, "replacing rolls the workload out");
    let d: Deployment = s.get("apps/v1", "Deployment", "shop", "web").unwrap();
    assert!(!d.spec.template.metadata.unwrap().annotations.unwrap()[RESTART_ANNOTATION].is_empty());
    // Idempotent.
    p.set_replaced("shop", "web", true).await.unwrap();
    assert_eq!(rollouts(&s), 2);

    // The webhook's injection: the agent (with the app's env and mounts) and no app container.
    let pod = deployment_pod("shop", "web", "77aa1", "y2", vec![web_container()], "");
    let injected = kubernetes::patch::inject(
        &pod,
        &cfg,
        &kubernetes::patch::InjectSettings {
            agent_image: "local/telepresence:test".into(),
            image_pull_policy: None,
            ..Default::default()
        },
    )
    .unwrap();
    let names: Vec<&str> = injected
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["traffic-agent"]);
    // The agent answers on the named port the service targets.
    let agent = &injected.spec.as_ref().unwrap().containers[0];
    assert!(agent
        .ports
        .iter()
        .flatten()
        .any(|cp| cp.name.as_deref() == Some("http")));

    // Another engagement's ensure_agent keeps the replace in force.
    p.ensure_agent(&req).await.unwrap();
    assert!(stored(&s).replace);

    let before = rollouts(&s);
    p.set_replaced("shop", "web", false).await.unwrap();
    assert!(!stored(&s).replace);
    assert_eq!(
        rollouts(&s),
        before + 1,
        "ending the replace rolls the app back"
    );
    let normal = kubernetes::patch::inject(
        &pod,
        &stored(&s),
        &kubernetes::patch::InjectSettings {
            agent_image: "local/telepresence:test".into(),
            image_pull_policy: None,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(normal.spec.as_ref().unwrap().containers.len(), 2);
}

#[tokio::test]
async fn service_flag_picks_one_services_ports() {
    let s = StandIn::start().await;
    seed_web(&s);
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &[]))
        .await
        .unwrap();
    let all = p.get_workload("shop", "web").await.unwrap().ports;
    assert_eq!(all.len(), 2);
    let admin = p.service_ports("shop", "web", "web-admin").await.unwrap();
    assert_eq!(
        admin.iter().map(|p| p.port).collect::<Vec<_>>(),
        [9000],
        "{admin:?}"
    );
    let web = p.service_ports("shop", "web", "web").await.unwrap();
    assert_eq!(web.iter().map(|p| p.port).collect::<Vec<_>>(), [80]);
    match p.service_ports("shop", "web", "nope").await {
        Err(ProviderError::Invalid(m)) => {
            assert!(m.contains("no service named \"nope\" selects web"), "{m}");
            assert!(
                m.contains("web, web-admin") || m.contains("web-admin, web"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // a scenario, read top to bottom
async fn wiretaps_and_an_intercept_share_a_port_on_kubernetes() {
    use manager::auth::Caller;
    use protocol::manager::manager_server::Manager as _;
    use protocol::manager::*;
    use tonic::Request;
    let s = StandIn::start().await;
    seed_web(&s);
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &[]))
        .await
        .unwrap();
    let mgr = manager::Manager::new(std::sync::Arc::new(p), std::time::Duration::from_secs(5));
    let client = mgr
        .arrive_as_client(Caller::Client.attach(Request::new(ClientInfo {
            name: "dev@laptop".into(),
            namespace: "shop".into(),
            ..Default::default()
        })))
        .await
        .unwrap()
        .into_inner()
        .session;
    // The injected agent arrives and watches its snapshot.
    let agent = mgr
        .arrive_as_agent(Caller::Agent.attach(Request::new(AgentInfo {
            name: "web".into(),
            namespace: "shop".into(),
            ports: vec![80, 9000],
            ..Default::default()
        })))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let mut snaps = mgr
        .watch_intercepts(Caller::Agent.attach(Request::new(agent.clone())))
        .await
        .unwrap()
        .into_inner();
    let (snap_tx, mut snap_rx) = tokio::sync::watch::channel(InterceptSnapshot::default());
    tokio::spawn(async move {
        use tokio_stream::StreamExt;
        while let Some(Ok(s)) = snaps.next().await {
            snap_tx.send_replace(s);
        }
    });
    let create = |name: &str, kind: EngagementKind, local: u32| {
        mgr.create_intercept(Caller::Client.attach(Request::new(CreateInterceptRequest {
            session: client.clone(),
            spec: Some(InterceptSpec {
                name: name.into(),
                workload: "web".into(),
                port_identifier: "80".into(),
                target_host: "127.0.0.1".into(),
                target_port: local,
                kind: kind as i32,
                ..Default::default()
            }),
        })))
    };
    let tap = create("tap1", EngagementKind::Wiretap, 9095)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tap.state(), InterceptState::Active, "{}", tap.message);
    assert_eq!(tap.disposition, "a copy of all TCP connections");
    create("web", EngagementKind::Intercept, 8080)
        .await
        .unwrap();
    create("tap2", EngagementKind::Wiretap, 9097).await.unwrap();
    // A second intercept of the port is still refused.
    let e = create("other", EngagementKind::Intercept, 8081)
        .await
        .unwrap_err();
    assert!(
        e.message().contains("already intercepted"),
        "{}",
        e.message()
    );

    let snap = snap_rx
        .wait_for(|s| s.intercepts.len() == 3)
        .await
        .unwrap()
        .clone();
    let routes = agent::Routes::from_snapshot(&snap, "shop", "web", &agent.session_id);
    assert!(matches!(
        routes.route(80),
        agent::Route::Intercept { ref intercept_id, .. } if intercept_id.ends_with(":web")
    ));
    let mut taps: Vec<String> = routes
        .taps(80)
        .iter()
        .map(|t| t.intercept_id.to_string())
        .collect();
    taps.sort();
    assert_eq!(taps.len(), 2, "{taps:?}");
    assert!(
        taps[0].ends_with(":tap1") && taps[1].ends_with(":tap2"),
        "{taps:?}"
    );
    assert!(routes.taps(9000).is_empty());

    // The agent's drop counters reach `list`.
    mgr.report_wiretaps(Caller::Agent.attach(Request::new(WiretapReport {
        session: Some(agent.clone()),
        dropped: [(tap.id.clone(), 3)].into_iter().collect(),
    })))
    .await
    .unwrap();
    let list = mgr
        .list_workloads(Caller::Client.attach(Request::new(ListWorkloadsRequest {
            session: client.clone(),
            namespace: "shop".into(),
        })))
        .await
        .unwrap()
        .into_inner();
    let web = list.workloads.iter().find(|w| w.name == "web").unwrap();
    let t = web.intercepts.iter().find(|i| i.id == tap.id).unwrap();
    assert_eq!(t.wiretap_dropped, 3);
}
