//! The one interface through which the manager knows a cluster: its namespaces, workloads and
//! their ports, and how an agent is attached to or detached from a workload. The Docker-engine
//! provider (`docker`) implements it today; the Kubernetes provider implements the same trait.

use async_trait::async_trait;

/// A port a workload serves, as callers address it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Port name (Kubernetes service port name; empty on a Docker engine).
    pub name: String,
    /// Port number.
    pub port: u16,
    /// TCP or UDP (SCTP on Kubernetes).
    pub protocol: protocol::ports::Protocol,
}

/// A workload as the manager sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadInfo {
    /// Workload name (compose service or container name on a Docker engine).
    pub name: String,
    /// Namespace (compose project on a Docker engine).
    pub namespace: String,
    /// Deployment, StatefulSet, ReplicaSet (Kubernetes); ComposeService or Container (Docker).
    pub kind: String,
    /// The ports the workload serves.
    pub ports: Vec<PortSpec>,
    /// Why the workload cannot be intercepted; `None` when it can.
    pub not_interceptable: Option<String>,
    /// The workload declares no ports but serves whatever it listens on (a Docker container
    /// without `expose:`/`ports:`): any TCP port number the user names is one of its ports.
    pub open_ports: bool,
    /// Whether a traffic-agent is attached to the workload.
    pub agent_installed: bool,
}

/// What the provider needs to attach an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRequest {
    /// Namespace of the workload.
    pub namespace: String,
    /// Name of the workload to attach the agent to.
    pub workload: String,
    /// The service ports the agent must capture.
    pub ports: Vec<u16>,
}

/// Provider errors; `NotFound` variants are shown to users as is.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("namespace \"{0}\" not found")]
    /// The named namespace does not exist.
    NamespaceNotFound(String),
    #[error("workload \"{name}\" not found in namespace \"{namespace}\"")]
    /// The named workload does not exist in that namespace.
    WorkloadNotFound {
        /// Workload name.
        name: String,
        /// Namespace searched.
        namespace: String,
    },
    #[error("{0}")]
    /// The request cannot be honoured (message shown as is).
    Invalid(String),
    #[error("cluster API error: {0}")]
    /// The cluster API call failed.
    Api(String),
}

/// How the manager reads and changes one cluster.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// "docker" or "kubernetes".
    fn cluster_type(&self) -> protocol::ClusterType;
    /// The API address users recognise (engine socket or API server URL).
    fn server(&self) -> String;
    /// The image agents run.
    fn agent_image(&self) -> String;
    /// Whether `namespace` exists.
    async fn namespace_exists(&self, namespace: &str) -> Result<bool, ProviderError>;
    /// Workloads in `namespace`, sorted by name.
    async fn list_workloads(&self, namespace: &str) -> Result<Vec<WorkloadInfo>, ProviderError>;
    /// One workload, or `WorkloadNotFound`.
    async fn get_workload(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<WorkloadInfo, ProviderError>;
    /// Attaches an agent capturing `req.ports` to the workload (idempotent: an agent that already
    /// captures those ports is kept). Returns once the agent has been started; the agent then
    /// arrives at the manager by itself.
    async fn ensure_agent(&self, req: &AgentRequest) -> Result<(), ProviderError>;
    /// Detaches the workload's agent and restores the direct path. No agent: Ok.
    async fn remove_agent(&self, namespace: &str, workload: &str) -> Result<(), ProviderError>;
    /// What keeps the workload's agent from connecting, if the provider can tell (used in the
    /// message when an intercept times out waiting for its agent).
    async fn agent_problem(&self, _namespace: &str, _workload: &str) -> Option<String> {
        None
    }
    /// The ports of service `service` (`--service`), which must select `workload`. A Docker
    /// engine has one service per workload, named like it.
    async fn service_ports(
        &self,
        namespace: &str,
        workload: &str,
        service: &str,
    ) -> Result<Vec<PortSpec>, ProviderError> {
        if service != workload {
            return Err(ProviderError::Invalid(format!(
                "{workload} has no service named \"{service}\" (on a Docker engine the service is the workload itself); drop --service or use --service {workload}"
            )));
        }
        Ok(self.get_workload(namespace, workload).await?.ports)
    }
    /// Stops (`replaced = true`) or restarts the workload's original container while a replace
    /// engagement holds it; idempotent. The agent keeps answering on the workload's ports.
    async fn set_replaced(
        &self,
        _namespace: &str,
        workload: &str,
        _replaced: bool,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Invalid(format!(
            "this cluster cannot replace {workload}; use intercept instead"
        )))
    }
    /// The subnets (CIDR strings) that addresses of `namespace`'s services and pods come from:
    /// what a client routes to the cluster.
    async fn cluster_subnets(&self, namespace: &str) -> Result<Vec<String>, ProviderError>;
    /// The cluster's DNS domain (`cluster.local` unless configured otherwise).
    fn cluster_domain(&self) -> String;
    /// A counter that moves whenever a workload or agent changed in a way that may have
    /// detached an agent (a workload container restarted or was recreated, an agent died); the
    /// manager then re-attaches the agents of intercepted workloads with
    /// [`Provider::ensure_agent`] (manager/src/reattach.rs). `None` (the default): agents
    /// re-attach by themselves (Kubernetes: the webhook injects every new pod).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Addresses inside [`Provider::cluster_subnets`] that belong to the cluster's host rather
    /// than to a workload (a Docker network's gateway is the engine's host): outbound streams
    /// never dial them.
    async fn host_addresses(&self, _namespace: &str) -> Vec<std::net::IpAddr> {
        Vec::new()
    }
}
