//! The Kubernetes provider against a real cluster, read-only, when `KUBECONFIG` names one (e.g.
//! a kind cluster: `kind create cluster && KUBECONFIG=~/.kube/config cargo test -p tests
//! --test suite kube_cluster::`). Without it the test prints SKIPPED with the reason.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use kubernetes::{InjectPolicy, KubeConfig, KubeProvider};
use manager::provider::Provider;
use std::time::Duration;

#[tokio::test]
async fn lists_a_real_cluster() {
    let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) else {
        let reason = "lists_a_real_cluster: KUBECONFIG is not set; this test reads a real cluster (see the module doc)";
        tests::skip(reason);
        return;
    };
    let config = kube::Config::infer()
        .await
        .unwrap_or_else(|e| panic!("KUBECONFIG={path:?} is not usable: {e}"));
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).unwrap();
    let p = KubeProvider::start(
        client,
        KubeConfig {
            manager_namespace: "default".into(),
            manager_host: "traffic-manager.ambassador".into(),
            grpc_port: 8081,
            tunnel_port: 8082,
            agent_image: "unused".into(),
            policy: InjectPolicy::OnDemand,
            namespaces: vec![],
            server,
            sync_timeout: Duration::from_secs(30),
            rollout_timeout: Duration::ZERO,
        },
    )
    .await
    .expect("watches sync against the cluster");
    assert!(p.namespace_exists("kube-system").await.unwrap());
    let ws = p.list_workloads("kube-system").await.unwrap();
    for w in &ws {
        eprintln!(
            "kube-system {} {}: {:?} {}",
            w.kind,
            w.name,
            w.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
            w.not_interceptable.as_deref().unwrap_or("interceptable")
        );
    }
    // Every cluster runs its DNS as a Deployment in kube-system, selected by the kube-dns Service.
    assert!(ws.iter().any(|w| w.kind == "Deployment"), "{ws:?}");
    let subnets = p.cluster_subnets("default").await.unwrap();
    eprintln!("subnets: {subnets:?}, domain: {}", p.cluster_domain());
    assert!(!subnets.is_empty());
}
