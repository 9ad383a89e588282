//! Intercepts that survive their workload's restarts: whenever the provider reports a change
//! that may have detached an agent ([`crate::provider::Provider::changes`]: a workload
//! container restarted or was recreated, an agent died), the agent of every intercepted
//! workload is ensured again — a dead or stale agent is replaced, a new container gets one —
//! and the agents of a workload that is gone are removed. The intercept itself stays; it is
//! ACTIVE again as soon as the new agent arrives (state.rs), and until then it says no agent is
//! connected, since the old agent's session ended with its connection (liveness.rs).

use crate::provider::{AgentRequest, ProviderError};
use crate::Manager;
use protocol::ports::Protocol;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::watch;

/// Events come in bursts (a restart is a die and a start): wait this long for the rest.
const SETTLE: Duration = Duration::from_millis(100);
/// Shortest time between two rounds.
const ROUND: Duration = Duration::from_secs(1);

impl Manager {
    /// Re-attaches agents after every provider change, until the provider stops reporting.
    pub(crate) async fn reattach_on_changes(self, mut changes: watch::Receiver<u64>) {
        let now = tokio::time::Instant::now();
        let mut last = now.checked_sub(ROUND).unwrap_or(now);
        while changes.changed().await.is_ok() {
            tokio::time::sleep(SETTLE).await;
            // At most one round per ROUND, so an agent that keeps dying is not re-created in
            // a tight loop.
            tokio::time::sleep_until(last + ROUND).await;
            last = tokio::time::Instant::now();
            changes.borrow_and_update();
            let workloads: BTreeSet<(String, String)> = {
                let st = self.inner.state.lock().await;
                st.intercepts
                    .values()
                    .filter_map(|i| i.spec.as_ref())
                    .map(|s| (s.namespace.clone(), s.workload.clone()))
                    .collect()
            };
            for (namespace, workload) in workloads {
                if let Err(e) = self.reattach(&namespace, &workload).await {
                    tracing::warn!(%namespace, %workload, "cannot re-attach the traffic-agent: {e}");
                }
            }
        }
    }

    /// Ensures the agent of one intercepted workload, or removes its agents when it is gone.
    async fn reattach(&self, namespace: &str, workload: &str) -> Result<(), ProviderError> {
        let p = &self.inner.provider;
        let w = match p.get_workload(namespace, workload).await {
            Ok(w) => w,
            Err(ProviderError::WorkloadNotFound { .. } | ProviderError::NamespaceNotFound(_)) => {
                tracing::info!(%namespace, %workload, "workload gone; removing its agents");
                return p.remove_agent(namespace, workload).await;
            }
            Err(e) => return Err(e),
        };
        if w.not_interceptable.is_some() {
            return Ok(());
        }
        let ports = tcp_ports(&w);
        p.ensure_agent(&AgentRequest {
            namespace: namespace.to_string(),
            workload: workload.to_string(),
            ports,
        })
        .await
    }
}

/// The ports an agent of `w` captures: all its TCP ports (as `CreateIntercept` asks).
pub(crate) fn tcp_ports(w: &crate::provider::WorkloadInfo) -> Vec<u16> {
    w.ports
        .iter()
        .filter(|p| p.protocol == Protocol::Tcp)
        .map(|p| p.port)
        .collect()
}
