//! The Kubernetes provider: workloads (Deployments, ReplicaSets not
//! owned by a Deployment, StatefulSets) and the Services that select them, watched with
//! `kube::runtime` reflectors; agents injected by the manager's mutating webhook from their
//! config in the `telepresence-agents` ConfigMap; cluster facts (service/pod CIDRs, domain).
//!
//! Modules: [`ports`] (which service port maps to which container port, "not interceptable"
//! reasons), [`configmap`] (the per-workload agent config and its YAML), [`patch`] (the pod
//! mutation: agent sidecar, port takeover, init container), [`webhook`] (the HTTPS admission
//! endpoint), [`cidr`] (subnets and cluster domain), [`diagnose`] (why an agent did not arrive),
//! `stores` (the reflectors), [`auth`] (the manager's credentials in Secrets), [`provider`] (the [`manager::provider::Provider`] implementation over
//! them), [`startup`] (the manager process on Kubernetes), [`contract`] (the environment,
//! RBAC and webhook endpoint an installation must provide, as tables the chart is tested against).
#![forbid(unsafe_code)]

pub mod auth;
pub mod cidr;
pub mod configmap;
pub mod contract;
pub mod diagnose;
pub mod helm;
pub mod kubeconfig;
pub mod patch;
pub mod portforward;
pub mod ports;
pub mod provider;
pub mod startup;
mod stores;
pub mod webhook;

pub use provider::{KubeConfig, KubeProvider};

/// The ConfigMap holding one agent config per workload, in the workload's namespace.
pub const AGENTS_CONFIGMAP: &str = "telepresence-agents";
/// Pod (template) annotation selecting injection: `enabled` or `disabled`.
pub const INJECT_ANNOTATION: &str = "telepresence.io/inject-traffic-agent";
/// Pod template annotation whose change makes the workload controller roll out new pods.
pub const RESTART_ANNOTATION: &str = "telepresence.io/restartedAt";
/// Name of the injected agent container.
pub const AGENT_CONTAINER: &str = "traffic-agent";
/// Name of the injected init container that installs the netfilter redirect.
pub const INIT_CONTAINER: &str = "tel-agent-init";
/// Label on objects the manager creates.
pub const MANAGED_BY: (&str, &str) = (protocol::MANAGED_BY_LABEL, protocol::MANAGED_BY_VALUE);

/// When agents are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InjectPolicy {
    /// Injected when a workload is intercepted (its ConfigMap entry exists), or when its pods
    /// are annotated `enabled`; never when annotated `disabled`.
    #[default]
    OnDemand,
    /// Only workloads whose pods are annotated [`INJECT_ANNOTATION`]`: enabled`.
    WhenEnabled,
}

/// An agent injection policy that is neither `OnDemand` nor `WhenEnabled`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent injection policy {0:?} is not OnDemand or WhenEnabled")]
pub struct UnknownPolicy(pub String);

impl std::str::FromStr for InjectPolicy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, UnknownPolicy> {
        match s {
            "" | "OnDemand" => Ok(InjectPolicy::OnDemand),
            "WhenEnabled" => Ok(InjectPolicy::WhenEnabled),
            _ => Err(UnknownPolicy(s.to_string())),
        }
    }
}
