//! The ports and shared `TP_*` variable names more than one role agrees on: the manager's
//! listeners (set by the CLI, cli/src/connect.rs, and dialed by the daemon,
//! daemon-image/src/lib.rs), the transport of a workload's ports ([`Protocol`]) and the names
//! of the variables one crate writes and another reads.

use crate::manager::PortProtocol;

/// The traffic-manager's gRPC port.
pub const MANAGER_GRPC_PORT: u16 = 8081;
/// The traffic-manager's tunnel port.
pub const MANAGER_TUNNEL_PORT: u16 = 8082;

/// The transport a workload's port serves (`manager::provider::PortSpec::protocol`); on the
/// wire it is the proto enum [`PortProtocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// `TCP`: the only transport an intercept captures.
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP` (Kubernetes services only).
    Sctp,
}

impl Protocol {
    /// The text users see: `TCP`, `UDP` or `SCTP` (as Kubernetes spells it).
    pub fn as_str(self) -> &'static str {
        PortProtocol::from(self).as_str()
    }

    /// The transport Kubernetes (or [`Self::as_str`]) spells `text`.
    pub fn parse(text: &str) -> Option<Protocol> {
        PortProtocol::parse(text).and_then(Protocol::from_proto)
    }

    /// The transport a proto field names; `None` when unspecified.
    pub fn from_proto(p: PortProtocol) -> Option<Protocol> {
        match p {
            PortProtocol::Tcp => Some(Protocol::Tcp),
            PortProtocol::Udp => Some(Protocol::Udp),
            PortProtocol::Sctp => Some(Protocol::Sctp),
            PortProtocol::Unspecified => None,
        }
    }
}

impl From<Protocol> for PortProtocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => PortProtocol::Tcp,
            Protocol::Udp => PortProtocol::Udp,
            Protocol::Sctp => PortProtocol::Sctp,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names of `TP_*` variables read by more than one crate (the traffic-agent's own are in
/// [`crate::agent_env`]).
pub mod env {
    /// The manager's gRPC port (manager roles).
    pub const GRPC_PORT: &str = "TP_GRPC_PORT";
    /// The manager's tunnel port (manager roles).
    pub const TUNNEL_PORT: &str = "TP_TUNNEL_PORT";
    /// The host agents reach the manager at.
    pub const MANAGER_HOST: &str = "TP_MANAGER_HOST";
    /// The traffic-agent image.
    pub const AGENT_IMAGE: &str = "TP_AGENT_IMAGE";
    /// The namespace the manager runs in.
    pub const MANAGER_NAMESPACE: &str = "TP_MANAGER_NAMESPACE";
    /// `docker` or `kubernetes`.
    pub const CLUSTER_TYPE: &str = "TP_CLUSTER_TYPE";
    /// The daemon's TUN MTU.
    pub const TUN_MTU: &str = "TP_TUN_MTU";
    /// The daemon's TCP buffer size.
    pub const TCP_BUFFER: &str = "TP_TCP_BUFFER";
    /// Runs the daemon's network stack on its own thread.
    pub const STACK_THREAD: &str = "TP_STACK_THREAD";
    /// Subnets never routed to the cluster.
    pub const NEVER_PROXY: &str = "TP_NEVER_PROXY";
    /// Extra subnets routed to the cluster.
    pub const ALSO_PROXY: &str = "TP_ALSO_PROXY";
    /// Routes cluster subnets that conflict with local ones.
    pub const ALLOW_CONFLICTING_SUBNETS: &str = "TP_ALLOW_CONFLICTING_SUBNETS";
}
