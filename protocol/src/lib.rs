//! Protocol shared by every role of the `telepresence` binary: the generated gRPC code for the
//! manager and connector (CLI↔daemon) services, and the header of the TCP tunnel that carries
//! intercepted connections between agent, manager and daemon (the bytes after it are moved by
//! the `relay` crate). Contracts only: no I/O engine and no `unsafe` here.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod agent_env;
pub mod auth;
pub mod filters;
pub mod loglevel;
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

/// Gives a proto enum its display text: its proto name without `prefix`, empty when
/// unspecified (`lower` for contracts shown in lower case), plus `Display` and a parser.
macro_rules! proto_text {
    ($ty:ty, $prefix:literal, $doc:literal) => {
        proto_text!($ty, $prefix, $doc, |s: &'static str| s);
    };
    ($ty:ty, $prefix:literal, $doc:literal, $case:expr) => {
        impl $ty {
            #[doc = $doc]
            pub fn as_str(self) -> &'static str {
                self.as_str_name()
                    .strip_prefix($prefix)
                    .filter(|s| *s != "UNSPECIFIED")
                    .map($case)
                    .unwrap_or("")
            }

            /// The value [`Self::as_str`] prints as `text`.
            pub fn parse(text: &str) -> Option<Self> {
                Self::from_str_name(&format!("{}{}", $prefix, text.to_ascii_uppercase()))
                    .filter(|v| v.as_str() == text)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

proto_text!(
    manager::InterceptState,
    "INTERCEPT_STATE_",
    "The text the CLI shows (and `--output json` carries): `ACTIVE`, `WAITING`, `NO_CLIENT`, \
     `NO_AGENT`, `NO_PORTS`, `AGENT_ERROR`, `BAD_ARGS`, `REMOVED`; empty when unspecified."
);
proto_text!(
    manager::PortProtocol,
    "PORT_PROTOCOL_",
    "The text users see (and `--output json` carries): `TCP`, `UDP` or `SCTP`; empty when \
     unspecified."
);
proto_text!(
    manager::InterceptMechanism,
    "INTERCEPT_MECHANISM_",
    "The mechanism's name: `tcp`; empty when unspecified.",
    |s: &'static str| match s {
        "TCP" => "tcp",
        _ => "",
    }
);
proto_text!(
    connector::OutboundTcp,
    "OUTBOUND_TCP_",
    "The text `status` shows (and `--output json` carries): `kernel` or `userspace`; empty \
     when unspecified (no subnet is routed).",
    |s: &'static str| match s {
        "KERNEL" => "kernel",
        "USERSPACE" => "userspace",
        _ => "",
    }
);
proto_text!(
    manager::ClusterType,
    "CLUSTER_TYPE_",
    "The text users see (and `--output json` carries): `docker` or `kubernetes`; empty when \
     unspecified.",
    |s: &'static str| match s {
        "DOCKER" => ClusterType::Docker.as_str(),
        "KUBERNETES" => ClusterType::Kubernetes.as_str(),
        _ => "",
    }
);

/// What kind of cluster a manager serves (`ClusterInfo.cluster_type` and `DaemonStatus.cluster_type`
/// carry it as the proto enum [`manager::ClusterType`]).
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

impl ClusterType {
    /// The cluster type a proto field names; `None` when unspecified.
    pub fn from_proto(t: manager::ClusterType) -> Option<ClusterType> {
        match t {
            manager::ClusterType::Docker => Some(ClusterType::Docker),
            manager::ClusterType::Kubernetes => Some(ClusterType::Kubernetes),
            manager::ClusterType::Unspecified => None,
        }
    }
}

impl From<ClusterType> for manager::ClusterType {
    fn from(t: ClusterType) -> Self {
        match t {
            ClusterType::Docker => manager::ClusterType::Docker,
            ClusterType::Kubernetes => manager::ClusterType::Kubernetes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_enums_keep_their_text() {
        use manager::{InterceptMechanism, InterceptState, PortProtocol};
        assert_eq!(InterceptState::Active.as_str(), "ACTIVE");
        assert_eq!(InterceptState::AgentError.to_string(), "AGENT_ERROR");
        assert_eq!(
            InterceptState::parse("NO_CLIENT"),
            Some(InterceptState::NoClient)
        );
        assert_eq!(InterceptState::Unspecified.as_str(), "");
        assert_eq!(PortProtocol::Tcp.as_str(), "TCP");
        assert_eq!(PortProtocol::Udp.to_string(), "UDP");
        assert_eq!(PortProtocol::parse("SCTP"), Some(PortProtocol::Sctp));
        assert_eq!(PortProtocol::parse("tcp"), None);
        assert_eq!(InterceptMechanism::Tcp.as_str(), "tcp");
        assert_eq!(
            InterceptMechanism::parse("tcp"),
            Some(InterceptMechanism::Tcp)
        );
        for t in [ClusterType::Docker, ClusterType::Kubernetes] {
            let p = manager::ClusterType::from(t);
            assert_eq!(p.as_str(), t.as_str());
            assert_eq!(ClusterType::from_proto(p), Some(t));
            assert_eq!(manager::ClusterType::parse(t.as_str()), Some(p));
        }
        assert_eq!(manager::ClusterType::Unspecified.as_str(), "");
    }
}
