//! Protocol shared by every role of the `telepresence` binary: the generated gRPC code for the
//! manager and connector (CLI↔daemon) services, and the TCP tunnel that carries intercepted
//! connections between agent, manager and daemon.

#![deny(missing_docs)]

pub mod agent_env;
pub mod filters;
pub mod ports;
pub mod resolv;
pub mod tunnel;

/// Generated code for `proto/manager.proto`.
#[allow(missing_docs)]
pub mod manager {
    tonic::include_proto!("telepresence.manager");
}

/// Generated code for `proto/connector.proto`.
#[allow(missing_docs)]
pub mod connector {
    tonic::include_proto!("telepresence.connector");
}

/// The version every role reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Label put on every resource the project creates.
pub const MANAGED_BY_LABEL: &str = "telepresence.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "telepresence";

/// Intercept states, as shown by the CLI.
pub mod state {
    /// Connections are routed to the client.
    pub const ACTIVE: &str = "ACTIVE";
    /// Waiting for the agent to arrive.
    pub const WAITING: &str = "WAITING";
    /// The intercepting client is gone.
    pub const NO_CLIENT: &str = "NO_CLIENT";
    /// No agent arrived in time.
    pub const NO_AGENT: &str = "NO_AGENT";
    /// The agent does not capture the intercepted port.
    pub const NO_PORTS: &str = "NO_PORTS";
    /// The agent reported an error.
    pub const AGENT_ERROR: &str = "AGENT_ERROR";
    /// The intercept spec is invalid.
    pub const BAD_ARGS: &str = "BAD_ARGS";
    /// The intercept was removed.
    pub const REMOVED: &str = "REMOVED";
}

/// What kind of cluster a manager serves (`ClusterInfo.cluster_type` carries [`ClusterType::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterType {
    /// A Docker engine: workloads are containers and compose services.
    Docker,
    /// A Kubernetes cluster.
    Kubernetes,
}

impl ClusterType {
    /// The wire and display text: `docker` or `kubernetes`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterType::Docker => "docker",
            ClusterType::Kubernetes => "kubernetes",
        }
    }
}

impl std::fmt::Display for ClusterType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
