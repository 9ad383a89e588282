//! The Docker-engine side of `telepresence gather-logs`: which containers of ours run a given
//! role (found by [`MANAGED_BY_LABEL`] and [`ROLE_LABEL`]), and the whole log of a container.

use crate::engine::{
    containers_with_labels, EngineError, CONNECTION_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    NAMESPACE_LABEL, ROLE_LABEL,
};
use crate::provider::WORKLOAD_LABEL;
use bollard::Docker;
use futures::StreamExt;

/// [`ROLE_LABEL`] value of daemon containers (`tp-<connection>`).
pub const ROLE_DAEMON: &str = "daemon";
/// [`ROLE_LABEL`] value of Docker-engine traffic-manager containers (`tp-traffic-manager-<ns>`).
pub const ROLE_TRAFFIC_MANAGER: &str = "traffic-manager";
/// [`ROLE_LABEL`] value of traffic-agent containers (`tp-agent-<ns>-<workload>-<n>`).
pub use crate::provider::ROLE_AGENT;

/// One of our containers, with what its labels say about it (empty when a label is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ours {
    /// Container name, without the leading `/`.
    pub name: String,
    /// [`ROLE_LABEL`] value, like [`ROLE_DAEMON`].
    pub role: String,
    /// [`NAMESPACE_LABEL`] value (the compose project).
    pub namespace: String,
    /// [`WORKLOAD_LABEL`] value.
    pub workload: String,
    /// [`CONNECTION_LABEL`] value.
    pub connection: String,
    /// Whether it is running (a stopped container still has its log).
    pub running: bool,
}

/// Our containers (running or stopped) of one role, sorted by name.
pub async fn containers_of_role(docker: &Docker, role: &str) -> Result<Vec<Ours>, EngineError> {
    let found = containers_with_labels(
        docker,
        &[(MANAGED_BY_LABEL, MANAGED_BY_VALUE), (ROLE_LABEL, role)],
    )
    .await?;
    let mut v: Vec<Ours> = found
        .into_iter()
        .map(|c| {
            let labels = c.labels.unwrap_or_default();
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            Ours {
                name: c
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .or(c.id)
                    .unwrap_or_default(),
                role: label(ROLE_LABEL),
                namespace: label(NAMESPACE_LABEL),
                workload: label(WORKLOAD_LABEL),
                connection: label(CONNECTION_LABEL),
                running: c.state.map(|s| s.to_string() == "running").unwrap_or(false),
            }
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// A container's whole log (stdout and stderr interleaved as the engine keeps them).
pub async fn container_log(docker: &Docker, container: &str) -> Result<String, EngineError> {
    let opts = bollard::query_parameters::LogsOptions {
        stdout: true,
        stderr: true,
        tail: "all".into(),
        ..Default::default()
    };
    let mut s = docker.logs(container, Some(opts));
    let mut out = String::new();
    while let Some(chunk) = s.next().await {
        out.push_str(&chunk?.to_string());
    }
    Ok(out)
}
