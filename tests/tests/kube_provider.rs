//! The Kubernetes provider with the real `kube` client against the HTTP stand-in: workload and
//! service discovery through reflectors (lists, watch events, bookmarks, 410 resync), port
//! mapping and "not interceptable" reasons, agent install/removal (ConfigMap entry, rollout
//! patch), injection policy, CIDR and cluster facts.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeSpec, Pod};
use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
use kubernetes::configmap::{AgentConfig, PortMode};
use kubernetes::ports::NO_SERVICE_REASON;
use kubernetes::webhook::ConfigSource;
use kubernetes::{InjectPolicy, KubeProvider, AGENTS_CONFIGMAP, RESTART_ANNOTATION};
use manager::provider::{AgentRequest, Provider, ProviderError};
use std::time::Duration;
use tests::kube::fixtures::*;
use tests::kube::standin::StandIn;

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The shop namespace: web (Deployment with its ReplicaSet and pod, one named and one numeric
/// service port), solo (bare ReplicaSet whose Service targets a missing port), db (StatefulSet
/// behind a headless Service), lonely (no Service), quiet (injection disabled).
fn seed(s: &StandIn) {
    seed_web(s);
    s.put(&namespace("default"));
    s.put(&replicaset(
        "shop",
        "solo",
        None,
        vec![container("c", &[(None, 7000)])],
    ));
    s.put(&service(
        "shop",
        "solo",
        "solo",
        &[("", 8080, named("nope"))],
        false,
    ));
    s.put(&statefulset(
        "shop",
        "db",
        vec![container("pg", &[(None, 5432)])],
    ));
    s.put(&service(
        "shop",
        "db",
        "db",
        &[("pg", 5432, num(5432))],
        true,
    ));
    s.put(&deployment(
        "shop",
        "lonely",
        vec![container("c", &[(None, 80)])],
    ));
    let mut quiet = deployment("shop", "quiet", vec![container("c", &[(None, 80)])]);
    quiet.spec.template.metadata.as_mut().unwrap().annotations = Some(labels(&[(
        "telepresence.io/inject-traffic-agent",
        "disabled",
    )]));
    s.put(&quiet);
    s.put(&service(
        "shop",
        "quiet",
        "quiet",
        &[("", 80, num(80))],
        false,
    ));
}

#[tokio::test]
async fn discovers_workloads_ports_and_reasons_and_follows_watch_events() {
    let s = StandIn::start().await;
    seed(&s);
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &[]))
        .await
        .unwrap();
    assert!(p.namespace_exists("shop").await.unwrap());
    assert!(!p.namespace_exists("nowhere").await.unwrap());

    let ws = p.list_workloads("shop").await.unwrap();
    let names: Vec<(&str, &str)> = ws
        .iter()
        .map(|w| (w.name.as_str(), w.kind.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("db", "StatefulSet"),
            ("lonely", "Deployment"),
            ("quiet", "Deployment"),
            ("solo", "ReplicaSet"),
            ("web", "Deployment"),
        ],
        "the ReplicaSet owned by web is not a workload of its own"
    );
    let web = &ws[4];
    assert_eq!(web.not_interceptable, None);
    let ports: Vec<(&str, u16)> = web
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port))
        .collect();
    assert_eq!(ports, [("http", 80), ("", 9000)]);
    assert!(!web.agent_installed);
    assert_eq!(ws[0].not_interceptable, None, "headless services count");
    assert_eq!(ws[1].not_interceptable.as_deref(), Some(NO_SERVICE_REASON));
    assert!(ws[2]
        .not_interceptable
        .as_deref()
        .unwrap()
        .contains("disabled by the annotation telepresence.io/inject-traffic-agent=disabled"));
    assert_eq!(
        ws[3].not_interceptable.as_deref(),
        Some("no service port maps to a container port (service solo port 8080: targetPort \"nope\" matches no container port)")
    );

    assert!(matches!(
        p.get_workload("shop", "nope").await,
        Err(ProviderError::WorkloadNotFound { .. })
    ));
    assert!(matches!(
        p.get_workload("nowhere", "web").await,
        Err(ProviderError::NamespaceNotFound(_))
    ));

    // Watch events: a Service appears for lonely, then goes away.
    s.put(&service(
        "shop",
        "lonely",
        "lonely",
        &[("web", 8000, num(80))],
        false,
    ));
    eventually("lonely gets its service", || {
        futures::executor::block_on(p.get_workload("shop", "lonely"))
            .unwrap()
            .not_interceptable
            .is_none()
    })
    .await;
    let lonely = p.get_workload("shop", "lonely").await.unwrap();
    assert_eq!(lonely.ports[0].port, 8000);
    s.delete("v1", "Service", "shop", "lonely");
    eventually("lonely loses its service", || {
        futures::executor::block_on(p.get_workload("shop", "lonely"))
            .unwrap()
            .not_interceptable
            .as_deref()
            == Some(NO_SERVICE_REASON)
    })
    .await;
    // The watches asked for bookmarks.
    assert!(s
        .requests()
        .iter()
        .any(|r| r.uri.contains("watch=true") && r.uri.contains("allowWatchBookmarks=true")));
}

#[tokio::test]
async fn a_compacted_resource_version_forces_a_relist() {
    let s = StandIn::start().await;
    seed(&s);
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &[]))
        .await
        .unwrap();
    let lists_before = s.list_count("apps/v1/deployments");
    assert_eq!(lists_before, 1);
    // Changes made while the history is compacted away are never sent as watch events: only a
    // relist after the 410 can reveal them.
    s.compact_and(|s| {
        s.put(&deployment(
            "shop",
            "late",
            vec![container("c", &[(Some("http"), 80)])],
        ));
        s.put(&service(
            "shop",
            "late",
            "late",
            &[("http", 80, named("http"))],
            false,
        ));
        s.delete("apps/v1", "Deployment", "shop", "lonely");
    });
    eventually("the relisted deployments", || {
        let ws = futures::executor::block_on(p.list_workloads("shop")).unwrap();
        ws.iter()
            .any(|w| w.name == "late" && w.not_interceptable.is_none())
            && !ws.iter().any(|w| w.name == "lonely")
    })
    .await;
    assert!(
        s.gone_count("apps/v1/deployments") >= 1,
        "the resumed watch got 410"
    );
    assert!(s.list_count("apps/v1/deployments") > lists_before);
    assert!(s.list_count("v1/services") > 1);
}

#[tokio::test]
async fn ensure_and_remove_agent_write_the_configmap_and_roll_out() {
    let s = StandIn::start().await;
    seed(&s);
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &[]))
        .await
        .unwrap();
    let req = AgentRequest {
        namespace: "shop".into(),
        workload: "web".into(),
        ports: vec![80, 9000],
    };
    p.ensure_agent(&req).await.unwrap();

    let cm: ConfigMap = s.get("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP).unwrap();
    assert_eq!(
        cm.metadata.labels.as_ref().unwrap()["telepresence.io/managed-by"],
        "telepresence"
    );
    let cfg = AgentConfig::from_yaml(&cm.data.as_ref().unwrap()["web"]).unwrap();
    assert_eq!(cfg.workload_kind, "Deployment");
    assert_eq!(cfg.manager_addr, "10.96.0.50:8081");
    assert_eq!(cfg.tunnel_addr, "10.96.0.50:8082");
    assert_eq!(cfg.container, "app");
    let ports: Vec<(u16, PortMode, &str, u16, u16)> = cfg
        .ports
        .iter()
        .map(|p| {
            (
                p.service_port,
                p.mode,
                p.container_port_name.as_str(),
                p.app_port,
                p.agent_port,
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            (80, PortMode::Takeover, "http", 8080, 9900),
            (9000, PortMode::Redirect, "", 9000, 9901),
        ]
    );
    let d: Deployment = s.get("apps/v1", "Deployment", "shop", "web").unwrap();
    let stamp = d.spec.template.metadata.unwrap().annotations.unwrap()[RESTART_ANNOTATION].clone();
    let patches: Vec<_> =
        s.requests_matching("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web");
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    assert!(p.get_workload("shop", "web").await.unwrap().agent_installed);

    // The webhook's view: a new pod of web gets this config.
    let pod = deployment_pod("shop", "web", "77aa1", "y2", vec![web_container()], "");
    let got = p
        .agent_config("shop", "Deployment", "web", &pod, false)
        .await
        .unwrap();
    assert_eq!(got.as_ref(), Some(&cfg));
    assert_eq!(
        p.agent_config("shop", "StatefulSet", "web", &pod, false)
            .await
            .unwrap(),
        None
    );

    // The rollout replaced the pod with an injected one: asking again changes nothing.
    s.delete("v1", "Pod", "shop", "web-5d9f8-x1");
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
    s.put(&injected);
    eventually("the injected pod is seen", || {
        p.agent_problem("shop", "web")
            .is_some_and(|m| m.contains("has not connected"))
    })
    .await;
    p.ensure_agent(&req).await.unwrap();
    let d: Deployment = s.get("apps/v1", "Deployment", "shop", "web").unwrap();
    assert_eq!(
        d.spec.template.metadata.unwrap().annotations.unwrap()[RESTART_ANNOTATION],
        stamp,
        "no second rollout"
    );

    // Removal: the entry goes, the workload rolls out again.
    p.remove_agent("shop", "web").await.unwrap();
    let cm: ConfigMap = s.get("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP).unwrap();
    assert!(!cm.data.unwrap_or_default().contains_key("web"));
    let patches = s
        .requests_matching("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web")
        .len();
    assert_eq!(patches, 2);
    assert!(!p.get_workload("shop", "web").await.unwrap().agent_installed);
    // Removing again: no entry, but a pod with the agent still runs (the stand-in has no
    // controller to replace it), so it rolls out again.
    p.remove_agent("shop", "web").await.unwrap();
    let patches = s
        .requests_matching("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web")
        .len();
    assert_eq!(patches, 3);

    // Everywhere (before uninstalling the manager): entries of live and deleted workloads go.
    p.ensure_agent(&req).await.unwrap();
    s.put(&namespace("other"));
    s.put(&ConfigMap {
        metadata: meta("other", AGENTS_CONFIGMAP),
        data: Some(labels(&[("gone", "workloadName: gone")])),
        ..Default::default()
    });
    eventually("the other namespace's entry is seen", || {
        p.stored_config("other", "gone").is_some()
    })
    .await;
    assert_eq!(p.remove_all_agents_everywhere().await.unwrap(), 1);
    assert!(p.stored_config("shop", "web").is_none());
    assert!(p.stored_config("other", "gone").is_none());

    // A bare ReplicaSet rolls out by deleting its pods.
    s.put(&service(
        "shop",
        "solo",
        "solo",
        &[("", 7000, num(7000))],
        false,
    ));
    s.put(&owned_pod(
        "shop",
        "solo-abcde",
        "solo",
        "ReplicaSet",
        "solo",
        vec![container("c", &[(None, 7000)])],
        "10.42.0.9",
    ));
    eventually("solo is interceptable", || {
        futures::executor::block_on(p.get_workload("shop", "solo"))
            .unwrap()
            .not_interceptable
            .is_none()
    })
    .await;
    eventually("solo's pod is seen", || {
        p.agent_problem("shop", "solo")
            .is_some_and(|m| !m.contains("no pods"))
    })
    .await;
    p.ensure_agent(&AgentRequest {
        namespace: "shop".into(),
        workload: "solo".into(),
        ports: vec![7000],
    })
    .await
    .unwrap();
    assert!(s.get::<Pod>("v1", "Pod", "shop", "solo-abcde").is_none());
}

#[tokio::test]
async fn injection_policy_when_enabled_needs_the_annotation() {
    let s = StandIn::start().await;
    seed(&s);
    let mut web = deployment("shop", "web2", vec![web_container()]);
    web.spec.template.metadata.as_mut().unwrap().annotations = Some(labels(&[(
        "telepresence.io/inject-traffic-agent",
        "enabled",
    )]));
    s.put(&web);
    s.put(&service(
        "shop",
        "web2",
        "web2",
        &[("http", 80, named("http"))],
        false,
    ));
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::WhenEnabled, &[]))
        .await
        .unwrap();
    let w = p.get_workload("shop", "web").await.unwrap();
    assert!(w
        .not_interceptable
        .unwrap()
        .contains("policy is WhenEnabled"));
    let e = p
        .ensure_agent(&AgentRequest {
            namespace: "shop".into(),
            workload: "web".into(),
            ports: vec![80],
        })
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("telepresence.io/inject-traffic-agent=enabled"),
        "{e}"
    );
    assert!(s
        .get::<ConfigMap>("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP)
        .is_none());
    assert_eq!(
        p.get_workload("shop", "web2")
            .await
            .unwrap()
            .not_interceptable,
        None
    );

    // A pod annotated `enabled` gets an agent at creation even though nobody intercepted yet:
    // the webhook plans and records its config.
    let mut pod = deployment_pod("shop", "web2", "abc12", "p1", vec![web_container()], "");
    pod.metadata.annotations = Some(labels(&[(
        "telepresence.io/inject-traffic-agent",
        "enabled",
    )]));
    let got = p
        .agent_config("shop", "Deployment", "web2", &pod, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.ports[0].mode, PortMode::Takeover);
    let cm: ConfigMap = s.get("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP).unwrap();
    assert_eq!(
        AgentConfig::from_yaml(&cm.data.unwrap()["web2"]).unwrap(),
        got
    );
    // `disabled` wins over a stored config.
    pod.metadata.annotations = Some(labels(&[(
        "telepresence.io/inject-traffic-agent",
        "disabled",
    )]));
    assert_eq!(
        p.agent_config("shop", "Deployment", "web2", &pod, false)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn namespaced_watches_when_limited_to_namespaces() {
    let s = StandIn::start().await;
    seed(&s);
    s.put(&namespace("other"));
    s.put(&deployment(
        "other",
        "elsewhere",
        vec![container("c", &[(None, 80)])],
    ));
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &["shop"]))
        .await
        .unwrap();
    assert!(p.namespace_exists("shop").await.unwrap());
    assert!(!p.namespace_exists("other").await.unwrap());
    assert_eq!(p.list_workloads("shop").await.unwrap().len(), 5);
    let reqs = s.requests();
    assert!(reqs.iter().any(|r| r
        .uri
        .starts_with("/apis/apps/v1/namespaces/shop/deployments?")));
    assert!(!reqs
        .iter()
        .any(|r| r.uri.starts_with("/apis/apps/v1/deployments?")));
    assert!(!reqs
        .iter()
        .any(|r| r.uri.starts_with("/api/v1/namespaces?")));
}

#[tokio::test]
async fn cluster_subnets_from_service_cidrs_api_message_or_fallback() {
    let s = StandIn::start().await;
    seed(&s);
    let mut k = service(
        "default",
        "kubernetes",
        "none",
        &[("https", 443, num(6443))],
        false,
    );
    k.spec.as_mut().unwrap().selector = None;
    k.spec.as_mut().unwrap().cluster_ip = Some("10.43.0.1".into());
    s.put(&k);
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &[]))
        .await
        .unwrap();
    // Fallback: the kubernetes Service's IP widened to /12; pods cover 10.42.0.0/16.
    assert_eq!(
        p.cluster_subnets("shop").await.unwrap(),
        ["10.32.0.0/12", "10.42.0.0/16"]
    );
    // The API server's refusal of an impossible clusterIP names the range.
    s.set_service_range(Some("10.96.0.0/12"));
    let posts = s.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(
        p.cluster_subnets("shop").await.unwrap()[0],
        "10.32.0.0/12",
        "found once, then cached"
    );
    assert_eq!(
        s.requests().iter().filter(|r| r.method == "POST").count(),
        posts
    );
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &[]))
        .await
        .unwrap();
    assert_eq!(p.cluster_subnets("shop").await.unwrap()[0], "10.96.0.0/12");
    let probe = s
        .requests()
        .into_iter()
        .rfind(|r| r.method == "POST")
        .unwrap();
    assert!(probe.uri.contains("dryRun=All"), "{}", probe.uri);
    assert!(probe.uri.starts_with("/api/v1/namespaces/shop/services"));
    // Nodes that say their podCIDRs win over the pod IPs.
    for (n, c) in [("n1", "10.244.0.0/24"), ("n2", "10.244.1.0/24")] {
        s.put(&Node {
            metadata: meta("", n),
            spec: Some(NodeSpec {
                pod_cidr: Some(c.into()),
                pod_cidrs: Some(vec![c.into()]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    // ServiceCIDR objects (Kubernetes >= 1.33) win over the probe.
    s.put(&ServiceCIDR {
        metadata: meta("", "kubernetes"),
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(vec!["10.100.0.0/16".into(), "fd00:10:96::/108".into()]),
        }),
        ..Default::default()
    });
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &[]))
        .await
        .unwrap();
    assert_eq!(
        p.cluster_subnets("shop").await.unwrap(),
        [
            "10.100.0.0/16",
            "fd00:10:96::/108",
            "10.244.0.0/24",
            "10.244.1.0/24"
        ]
    );
}

#[tokio::test]
async fn own_workloads_dry_runs_and_on_delete_statefulsets() {
    let s = StandIn::start().await;
    seed(&s);
    // The traffic-manager itself is never listed.
    let mut tm = deployment(
        "shop",
        "traffic-manager",
        vec![container("m", &[(Some("api"), 8081)])],
    );
    tm.spec.template.metadata.as_mut().unwrap().labels = Some(labels(&[
        ("app", "traffic-manager"),
        ("telepresence.io/managed-by", "telepresence"),
    ]));
    s.put(&tm);
    s.put(&service(
        "shop",
        "traffic-manager",
        "traffic-manager",
        &[("api", 8081, named("api"))],
        false,
    ));
    // A StatefulSet with the OnDelete strategy only rolls out when its pods are deleted.
    let mut db = statefulset("shop", "db", vec![container("pg", &[(None, 5432)])]);
    db.spec.update_strategy = Some(k8s_openapi::api::apps::v1::StatefulSetUpdateStrategy {
        type_: Some("OnDelete".into()),
        ..Default::default()
    });
    s.put(&db);
    s.put(&owned_pod(
        "shop",
        "db-0",
        "db",
        "StatefulSet",
        "db",
        vec![container("pg", &[(None, 5432)])],
        "10.42.0.8",
    ));
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &[]))
        .await
        .unwrap();
    let names: Vec<String> = p
        .list_workloads("shop")
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert!(!names.contains(&"traffic-manager".to_string()), "{names:?}");

    eventually("db-0 is seen", || {
        !p.agent_problem("shop", "db").unwrap().contains("no pods")
    })
    .await;
    p.ensure_agent(&AgentRequest {
        namespace: "shop".into(),
        workload: "db".into(),
        ports: vec![5432],
    })
    .await
    .unwrap();
    assert!(
        s.get::<Pod>("v1", "Pod", "shop", "db-0").is_none(),
        "OnDelete: pod deleted"
    );
    let d: k8s_openapi::api::apps::v1::StatefulSet =
        s.get("apps/v1", "StatefulSet", "shop", "db").unwrap();
    assert!(d
        .spec
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()
        .contains_key(RESTART_ANNOTATION));

    // A dry-run admission of an `enabled` pod plans the config but writes nothing.
    let mut web = deployment_pod("shop", "web", "abc12", "p1", vec![web_container()], "");
    web.metadata.annotations = Some(labels(&[(
        "telepresence.io/inject-traffic-agent",
        "enabled",
    )]));
    let writes = s.requests().iter().filter(|r| r.method != "GET").count();
    assert!(p
        .agent_config("shop", "Deployment", "web", &web, true)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        s.requests().iter().filter(|r| r.method != "GET").count(),
        writes
    );
    let cm: ConfigMap = s.get("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP).unwrap();
    assert!(!cm.data.unwrap().contains_key("web"));
}

/// The kube client's TLS (rustls with the ring provider, as in the final binary) against an
/// HTTPS API server whose CA is in the config, as in a flattened kubeconfig.
#[tokio::test]
async fn works_over_tls_with_the_clusters_ca() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let s = StandIn::start_tls(key.cert.der().to_vec(), &key.signing_key.serialize_pem()).await;
    assert!(s.url.starts_with("https://localhost:"));
    seed(&s);
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &[]))
        .await
        .unwrap();
    assert_eq!(p.list_workloads("shop").await.unwrap().len(), 5);
    // An untrusted server is refused, and startup says which list failed.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let mut c = kube::Config::new(s.url.parse().unwrap());
    c.root_cert = Some(vec![other.cert.der().to_vec()]);
    let mut short = kube_config(InjectPolicy::OnDemand, &[]);
    short.sync_timeout = Duration::from_secs(2);
    let Err(e) = KubeProvider::start(kube::Client::try_from(c).unwrap(), short).await else {
        panic!("an untrusted API server was accepted");
    };
    let e = e.to_string();
    assert!(e.contains("did not list deployments within 2s"), "{e}");
}

/// Installing an agent returns only once every live pod has it (a stand-in controller replaces
/// the pod through the provider's webhook view); without the webhook it fails saying so.
#[tokio::test]
async fn installing_waits_for_the_rollout() {
    let s = StandIn::start().await;
    seed(&s);
    let mut c = kube_config(InjectPolicy::OnDemand, &[]);
    c.rollout_timeout = Duration::from_secs(10);
    let p = std::sync::Arc::new(KubeProvider::start(s.client(), c).await.unwrap());
    let (s2, p2) = (s.clone(), p.clone());
    let controller = tokio::spawn(async move {
        loop {
            let d: Deployment = s2.get("apps/v1", "Deployment", "shop", "web").unwrap();
            let rolled = d
                .spec
                .template
                .metadata
                .and_then(|m| m.annotations)
                .is_some_and(|a| a.contains_key(RESTART_ANNOTATION));
            if rolled {
                let pod = deployment_pod(
                    "shop",
                    "web",
                    "77aa1",
                    "n1",
                    vec![web_container()],
                    "10.42.0.9",
                );
                let cfg = p2
                    .agent_config("shop", "Deployment", "web", &pod, false)
                    .await
                    .unwrap()
                    .expect("the webhook injects the new pod");
                let settings = kubernetes::patch::InjectSettings {
                    agent_image: "local/telepresence:test".into(),
                    image_pull_policy: None,
                    ..Default::default()
                };
                s2.put(&kubernetes::patch::inject(&pod, &cfg, &settings).unwrap());
                tokio::time::sleep(Duration::from_millis(300)).await;
                s2.delete("v1", "Pod", "shop", "web-5d9f8-x1");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let req = AgentRequest {
        namespace: "shop".into(),
        workload: "web".into(),
        ports: vec![80],
    };
    p.ensure_agent(&req).await.unwrap();
    assert!(
        s.get::<Pod>("v1", "Pod", "shop", "web-5d9f8-x1").is_none(),
        "returned before the old pod was gone"
    );
    controller.await.unwrap();

    // No webhook: the rollout's pods come without the agent and installing says so.
    let s = StandIn::start().await;
    seed(&s);
    let mut c = kube_config(InjectPolicy::OnDemand, &[]);
    c.rollout_timeout = Duration::from_secs(1);
    let p = KubeProvider::start(s.client(), c).await.unwrap();
    let e = p.ensure_agent(&req).await.unwrap_err().to_string();
    assert!(
        e.contains("the rollout of Deployment web did not finish within 1s: some pods of web still run without the traffic-agent"),
        "{e}"
    );
}

/// A namespace enforcing Pod Security `baseline` or `restricted`: a workload whose agent needs
/// the redirect's NET_ADMIN init container says so in `list` and refuses `ensure_agent` (instead
/// of a rollout the API server rejects); one taken over by name only is fine; the webhook admits
/// such a pod without the agent, with the reason as a warning.
#[tokio::test]
async fn pod_security_levels_refuse_the_redirect_ahead_of_the_api_server() {
    let s = StandIn::start().await;
    for (ns, level) in [
        ("locked", "baseline"),
        ("tight", "restricted"),
        ("open", "privileged"),
    ] {
        let mut n = namespace(ns);
        n.metadata.labels = Some(labels(&[("pod-security.kubernetes.io/enforce", level)]));
        s.put(&n);
        for (name, target) in [("byname", named("http")), ("bynumber", num(8080))] {
            s.put(&deployment(ns, name, vec![web_container()]));
            s.put(&service(ns, name, name, &[("http", 80, target)], false));
        }
    }
    let p = KubeProvider::start(s.client(), kube_config(InjectPolicy::OnDemand, &[]))
        .await
        .unwrap();
    for (ns, refused) in [
        ("locked", Some("baseline")),
        ("tight", Some("restricted")),
        ("open", None),
    ] {
        let ws = p.list_workloads(ns).await.unwrap();
        let reason = |n: &str| {
            ws.iter()
                .find(|w| w.name == n)
                .unwrap()
                .not_interceptable
                .clone()
        };
        assert_eq!(reason("byname"), None, "{ns}: takeover needs no privilege");
        let req = AgentRequest {
            namespace: ns.into(),
            workload: "bynumber".into(),
            ports: vec![80],
        };
        match refused {
            Some(level) => {
                let want = format!(
                    "service port 80 needs the tel-agent-init init container with NET_ADMIN (its targetPort is numeric, shared with a port that does not name it, or its Service is headless), which Pod Security level \"{level}\" enforced on namespace {ns} forbids: target the container port by name from every Service port that is not headless, or label the namespace pod-security.kubernetes.io/enforce=privileged"
                );
                assert_eq!(reason("bynumber").as_deref(), Some(want.as_str()));
                match p.ensure_agent(&req).await {
                    Err(ProviderError::Invalid(m)) => assert_eq!(m, want),
                    other => panic!("{ns}: {other:?}"),
                }
                assert!(s
                    .get::<ConfigMap>("v1", "ConfigMap", ns, AGENTS_CONFIGMAP)
                    .is_none());
            }
            None => {
                assert_eq!(reason("bynumber"), None);
                p.ensure_agent(&req).await.unwrap();
            }
        }
        p.ensure_agent(&AgentRequest {
            namespace: ns.into(),
            workload: "byname".into(),
            ports: vec![80],
        })
        .await
        .unwrap();
    }
    // A pod annotated `enabled` in a baseline namespace: admitted without the agent, with why.
    let mut pod = deployment_pod(
        "locked",
        "bynumber",
        "5d9f8",
        "x1",
        vec![web_container()],
        "",
    );
    pod.metadata.annotations = Some(
        [(
            "telepresence.io/inject-traffic-agent".to_string(),
            "enabled".to_string(),
        )]
        .into(),
    );
    let e = p
        .agent_config("locked", "Deployment", "bynumber", &pod, true)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("Pod Security level \"baseline\""), "{e}");
}
