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
#[allow(clippy::too_many_lines)] // generated code
pub mod manager {
    tonic::include_proto!("telepresence.manager");
}

/// Generated code for `proto/connector.proto`.
#[allow(missing_docs)]
#[allow(clippy::too_many_lines)] // generated code
pub mod connector {
    tonic::include_proto!("telepresence.connector");
}

/// The version every role reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Label put on every resource the project creates.
pub const MANAGED_BY_LABEL: &str = "telepresence.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "telepresence";

impl manager::InterceptState {
    /// The text the CLI shows (and `--output json` carries): `ACTIVE`, `WAITING`, `NO_CLIENT`,
    /// `NO_AGENT`, `NO_PORTS`, `AGENT_ERROR`, `BAD_ARGS`, `REMOVED`; empty when unspecified.
    pub fn as_str(self) -> &'static str {
        self.as_str_name()
            .strip_prefix("INTERCEPT_STATE_")
            .filter(|s| *s != "UNSPECIFIED")
            .unwrap_or("")
    }

    /// The state [`Self::as_str`] prints as `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::from_str_name(&format!("INTERCEPT_STATE_{text}"))
    }
}

impl std::fmt::Display for manager::InterceptState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
