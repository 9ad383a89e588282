//! The traffic-manager on Kubernetes (`TP_CLUSTER_TYPE=kubernetes`): reads its environment
//! (set by the chart), connects with the in-cluster config, starts the provider's watches, the
//! webhook (HTTPS) and then the gRPC and tunnel listeners.
//!
//! Environment: `TP_MANAGER_NAMESPACE` (required), `TP_AGENT_IMAGE` (required),
//! `TP_GRPC_PORT` (8081), `TP_TUNNEL_PORT` (8082), `TP_WEBHOOK_PORT` (8443),
//! `TP_WEBHOOK_CERT`/`TP_WEBHOOK_KEY`, `TP_MANAGER_HOST` (default: the ClusterIP of the
//! `traffic-manager` Service, else its DNS name), `TP_AGENT_INJECT_POLICY` (OnDemand |
//! WhenEnabled), `TP_MANAGED_NAMESPACES` (comma separated; empty: cluster-wide),
//! `TP_AGENT_TIMEOUT` (seconds an intercept waits for its agent, 120),
//! `TP_AGENT_IMAGE_PULL_POLICY`.

use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::patch::InjectSettings;
use super::webhook::{self, TlsFiles};
use super::{KubeConfig, KubeProvider};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The manager's Service name (chart).
pub const MANAGER_SERVICE: &str = "traffic-manager";

fn var(k: &str) -> Option<String> {
    std::env::var(k)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn port(k: &str, default: u16) -> Result<u16, BoxError> {
    match var(k) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("{k}={v:?} is not a port").into()),
    }
}

/// Runs the Kubernetes traffic-manager until `shutdown` resolves.
pub async fn run(shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), BoxError> {
    let manager_namespace =
        var("TP_MANAGER_NAMESPACE").ok_or("TP_MANAGER_NAMESPACE is required")?;
    let agent_image = var("TP_AGENT_IMAGE").ok_or("TP_AGENT_IMAGE is required")?;
    let grpc_port = port("TP_GRPC_PORT", 8081)?;
    let tunnel_port = port("TP_TUNNEL_PORT", 8082)?;
    let webhook_port = port("TP_WEBHOOK_PORT", 8443)?;
    let policy = var("TP_AGENT_INJECT_POLICY")
        .unwrap_or_default()
        .parse()
        .map_err(|e: String| format!("TP_AGENT_INJECT_POLICY: {e}"))?;
    let agent_timeout = match var("TP_AGENT_TIMEOUT") {
        None => Duration::from_secs(120),
        Some(v) => Duration::from_secs(
            v.parse()
                .map_err(|_| format!("TP_AGENT_TIMEOUT={v:?} is not a number of seconds"))?,
        ),
    };
    let namespaces: Vec<String> = var("TP_MANAGED_NAMESPACES")
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();

    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("no Kubernetes configuration (in-cluster or kubeconfig): {e}"))?;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)?;
    let manager_host = match var("TP_MANAGER_HOST") {
        Some(h) => h,
        None => manager_service_host(&client, &manager_namespace).await,
    };
    let tls = TlsFiles::from_env();
    let (listener, acceptor) = webhook::bind(([0, 0, 0, 0], webhook_port).into(), &tls).await?;
    let provider = Arc::new(
        KubeProvider::start(
            client,
            KubeConfig {
                manager_namespace,
                manager_host,
                grpc_port,
                tunnel_port,
                agent_image: agent_image.clone(),
                policy,
                namespaces,
                server,
                sync_timeout: Duration::from_secs(60),
            },
        )
        .await?,
    );
    tracing::info!(
        port = webhook_port,
        path = webhook::PATH,
        "agent-injector webhook listening"
    );
    tokio::spawn(webhook::serve(
        listener,
        acceptor,
        provider.clone(),
        InjectSettings {
            agent_image,
            image_pull_policy: var("TP_AGENT_IMAGE_PULL_POLICY"),
        },
    ));
    crate::run(
        crate::ManagerConfig {
            grpc_addr: ([0, 0, 0, 0], grpc_port).into(),
            tunnel_addr: ([0, 0, 0, 0], tunnel_port).into(),
            agent_timeout,
        },
        provider,
        shutdown,
    )
    .await
}

/// The ClusterIP of the manager's Service (agents then need no DNS), else its DNS name.
pub async fn manager_service_host(client: &Client, namespace: &str) -> String {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    match api.get(MANAGER_SERVICE).await {
        Ok(s) => s
            .spec
            .and_then(|s| s.cluster_ip)
            .filter(|ip| !ip.is_empty() && ip != "None")
            .unwrap_or_else(|| format!("{MANAGER_SERVICE}.{namespace}")),
        Err(e) => {
            tracing::warn!("cannot read Service {MANAGER_SERVICE}: {e}; agents use its DNS name");
            format!("{MANAGER_SERVICE}.{namespace}")
        }
    }
}
