//! The CLI's Docker engine access: connecting with a clear error when the engine is down, and
//! the few container operations the commands share (find by label, remove, published ports).

use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use std::collections::HashMap;

pub use protocol::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// Labels naming the role of one of our containers (daemon, traffic-manager, agent, handler)
/// and the namespace it serves; shared with the Docker provider.
pub use crate::provider::{engine_address, NAMESPACE_LABEL, ROLE_LABEL};
/// Label naming the connection a daemon or handler belongs to.
pub const CONNECTION_LABEL: &str = "telepresence.io/connection";
/// Label naming the intercept a handler serves.
pub const INTERCEPT_LABEL: &str = "telepresence.io/intercept";

/// What went wrong talking to the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Connecting, negotiating the API version or the ping failed; the engine's error is the
    /// source.
    #[error(
        "cannot reach the Docker engine at {address}: is it running? (check with `docker info`)"
    )]
    Unreachable {
        /// The engine address tried (`DOCKER_HOST` or the local socket).
        address: String,
        /// The engine client's error.
        #[source]
        err: bollard::errors::Error,
    },
    /// A Docker API call failed.
    #[error(transparent)]
    Api(#[from] bollard::errors::Error),
    /// Removing a container failed.
    #[error("removing container {id}: {err}")]
    Remove {
        /// Container id or name.
        id: String,
        /// The engine's error.
        err: bollard::errors::Error,
    },
    /// Container name and port (like "8081/tcp").
    #[error("container {0} does not publish {1}")]
    NotPublished(String, String),
    /// A published host port that is not a number.
    #[error("published port")]
    BadPort(#[source] std::num::ParseIntError),
}

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Connects to the engine (DOCKER_HOST or the local socket) and checks that it answers.
pub async fn connect() -> Result<Docker> {
    let down = |err| EngineError::Unreachable {
        address: engine_address(),
        err,
    };
    let docker = Docker::connect_with_defaults().map_err(down)?;
    let docker = docker.negotiate_version().await.map_err(down)?;
    docker.ping().await.map_err(down)?;
    Ok(docker)
}

/// Containers (running or not) carrying every `key=value` label given.
pub async fn containers_with_labels(
    docker: &Docker,
    labels: &[(&str, &str)],
) -> Result<Vec<bollard::models::ContainerSummary>> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        labels
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.to_string()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect(),
    );
    Ok(docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await?)
}

/// Stops (SIGTERM, then SIGKILL after `grace_secs`) and removes a container; a missing
/// container is not an error.
pub async fn remove_container(docker: &Docker, id: &str, grace_secs: i32) -> Result<()> {
    let _ = docker
        .stop_container(
            id,
            Some(StopContainerOptions {
                t: Some(grace_secs),
                signal: None,
            }),
        )
        .await;
    match docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(()) => Ok(()),
        // Gone already, or being removed (by `--rm` as it stopped).
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => Ok(()),
        Err(err) => Err(EngineError::Remove { id: id.into(), err }),
    }
}

/// Removes every container that carries the labels, concurrently.
pub async fn remove_labelled(
    docker: &Docker,
    labels: &[(&str, &str)],
    grace: i32,
) -> Result<usize> {
    let found = containers_with_labels(docker, labels).await?;
    let n = found.len();
    let jobs = found
        .into_iter()
        .filter_map(|c| c.id)
        .map(|id| async move { remove_container(docker, &id, grace).await });
    for r in futures::future::join_all(jobs).await {
        r?;
    }
    Ok(n)
}

/// Whether the named container exists and runs.
pub async fn is_running(docker: &Docker, name: &str) -> bool {
    docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state)
        .and_then(|s| s.running)
        .unwrap_or(false)
}

/// The host side (ip, port) of a published container port like "8081/tcp".
pub async fn published_port(docker: &Docker, name: &str, port: &str) -> Result<(String, u16)> {
    let c = docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await?;
    let binding = c
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|mut p| p.remove(port))
        .flatten()
        .and_then(|b| b.into_iter().next())
        .ok_or_else(|| EngineError::NotPublished(name.into(), port.into()))?;
    let hp: u16 = binding
        .host_port
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(EngineError::BadPort)?;
    Ok((binding.host_ip.unwrap_or_default(), hp))
}

/// The last lines of a container's log, formatted to append to an error (empty when none).
pub async fn engine_logs(docker: &bollard::Docker, container: &str) -> String {
    use futures::StreamExt;
    let opts = bollard::query_parameters::LogsOptions {
        stdout: true,
        stderr: true,
        tail: "10".into(),
        ..Default::default()
    };
    let mut s = docker.logs(container, Some(opts));
    let mut out = String::new();
    while let Some(Ok(chunk)) = s.next().await {
        out.push_str(&chunk.to_string());
    }
    if out.trim().is_empty() {
        String::new()
    } else {
        format!("; its last log lines:\n{}", out.trim_end())
    }
}
