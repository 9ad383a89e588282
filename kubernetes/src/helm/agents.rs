//! Before `telepresence helm uninstall` deletes the manager: every traffic-agent the manager
//! installed is removed (its `telepresence-agents` entry dropped, its workload rolled out), with
//! the manager's own provider code ([`kubernetes::KubeProvider`]) run here with the
//! user's credentials, so workloads are not left with agents whose manager is gone. The
//! webhook configuration is deleted before (see `uninstall`): the rollouts' new pods must not be
//! injected again (a pod annotated `enabled` would be, and the manager's own watch may not yet
//! show the removed entry).

use crate::{InjectPolicy, KubeConfig, KubeProvider};
use manager::provider::ProviderError;
use std::time::Duration;

/// Why the traffic-agents could not be removed; the provider's error is the source.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    #[error("cannot read the cluster's workloads to remove the traffic-agents")]
    Watch(#[source] ProviderError),
    #[error("cannot remove the traffic-agents")]
    Remove(#[source] ProviderError),
}

/// The namespaces the release serves (`managedNamespaces` of its values; empty: all).
pub fn served_namespaces(release_values: &str) -> Vec<String> {
    yaml_serde::from_str::<serde_json::Value>(release_values)
        .ok()
        .and_then(|v| serde_json::from_value(v["managedNamespaces"].clone()).ok())
        .unwrap_or_default()
}

/// The manager's provider over the served namespaces, its watches synced.
pub async fn watch(
    client: &kube::Client,
    manager_namespace: &str,
    namespaces: Vec<String>,
) -> Result<KubeProvider, AgentsError> {
    KubeProvider::start(
        client.clone(),
        KubeConfig {
            manager_namespace: manager_namespace.into(),
            manager_host: String::new(),
            grpc_port: 0,
            tunnel_port: 0,
            agent_image: String::new(),
            policy: InjectPolicy::default(),
            namespaces,
            server: String::new(),
            sync_timeout: Duration::from_secs(30),
            rollout_timeout: Duration::ZERO,
        },
    )
    .await
    .map_err(AgentsError::Watch)
}

/// Removes every agent the provider's watches show; returns how many workloads were rolled out.
pub async fn remove_all(provider: &KubeProvider) -> Result<usize, AgentsError> {
    provider
        .remove_all_agents_everywhere()
        .await
        .map_err(AgentsError::Remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_namespaces_come_from_the_release_values() {
        assert_eq!(
            served_namespaces("rbac:\n  clusterWide: false\nmanagedNamespaces: [shop, blog]\n"),
            ["shop", "blog"]
        );
        assert!(served_namespaces("logLevel: debug\n").is_empty());
        assert!(served_namespaces("{}\n").is_empty());
        assert!(served_namespaces("").is_empty());
    }
}
