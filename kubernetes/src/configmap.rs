//! The agent config of one workload: what the webhook injects and how each captured port is
//! taken (named-port takeover or netfilter redirect). Stored as YAML under the workload's name in
//! the `telepresence-agents` ConfigMap of its namespace; planned from the workload's port matches.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use super::ports::{PortMatch, Reach, Workload};

/// First port the agent listens on; later ports count up, skipping ports the pod uses.
pub const FIRST_AGENT_PORT: u16 = 9900;
/// Maximum length of a container port name (IANA_SVC_NAME).
pub const MAX_PORT_NAME: usize = 15;

/// How the agent receives a port's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PortMode {
    /// The Service targets the port by name: the agent container takes the name (on
    /// `agentPort`), the app's port is renamed `tm-<name>`. No privilege needed.
    Takeover,
    /// Numeric `targetPort` or headless Service: an init container with NET_ADMIN redirects
    /// `appPort` to `agentPort` in the pod's network namespace.
    Redirect,
}

/// One captured port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPort {
    pub service_name: String,
    /// The service port: what intercepts name and route by.
    pub service_port: u16,
    #[serde(default)]
    pub service_port_name: String,
    pub protocol: String,
    pub mode: PortMode,
    /// The app container serving the port.
    pub container: String,
    /// The app's container port name (takeover mode).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_port_name: String,
    /// Where the app listens.
    pub app_port: u16,
    /// Where the agent listens.
    pub agent_port: u16,
}

/// The agent config of one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    pub workload_name: String,
    pub workload_kind: String,
    pub namespace: String,
    /// `host:port` of the manager's gRPC API, as agents reach it.
    pub manager_addr: String,
    /// `host:port` of the manager's tunnel listener.
    pub tunnel_addr: String,
    /// The container whose env and mounts the agent shares (the first captured port's).
    pub container: String,
    pub ports: Vec<AgentPort>,
    /// A replace engagement holds the workload: the agent takes the place of `container` in
    /// its pods (`patch.rs` `inject` leaves the container out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
}

impl AgentConfig {
    /// YAML for the ConfigMap value.
    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(self).expect("agent config serializes")
    }

    /// Parses a ConfigMap value.
    pub fn from_yaml(s: &str) -> Result<AgentConfig, PlanError> {
        yaml_serde::from_str(s).map_err(PlanError::Invalid)
    }

    /// Whether any port needs the redirecting init container.
    pub fn needs_redirect(&self) -> bool {
        self.ports.iter().any(|p| p.mode == PortMode::Redirect)
    }
}

/// Why an agent config cannot be read or planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A ConfigMap value that is not an agent config.
    #[error("invalid agent config: {0}")]
    Invalid(yaml_serde::Error),
    /// The workload (named) has no TCP service port.
    #[error("{0} has no TCP service port to capture")]
    NoTcpPort(String),
    #[error("no free port for the traffic-agent")]
    NoFreePort,
}

/// The renamed app port: `tm-<name>`, cut to 15 characters.
pub fn takeover_name(name: &str) -> String {
    let mut n = format!("tm-{name}");
    n.truncate(MAX_PORT_NAME);
    n.trim_end_matches('-').to_string()
}

/// The renamed app port, unique among the names `taken` says are in use in the pod:
/// [`takeover_name`], or when that is taken (two long names cut to the same prefix, or a port
/// already called so) the prefix shortened to make room for `-2`, `-3`, … Always a valid
/// IANA_SVC_NAME (see [`is_port_name`]).
pub fn unique_takeover_name(name: &str, taken: impl Fn(&str) -> bool) -> String {
    let first = takeover_name(name);
    if !taken(&first) {
        return first;
    }
    let base = format!("tm-{name}");
    (2u32..)
        .map(|i| {
            let suffix = format!("-{i}");
            let mut n = base.clone();
            n.truncate(MAX_PORT_NAME - suffix.len());
            format!("{}{suffix}", n.trim_end_matches('-'))
        })
        .find(|n| !taken(n))
        .expect("some suffix is free")
}

/// Whether `s` is a valid container port name (IANA_SVC_NAME): 1–15 characters, lowercase
/// letters, digits and '-', at least one letter, no '-' at either end or next to another.
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PORT_NAME
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Every port a container of `w`'s pod template declares, and every matched TCP port: an agent
/// port must be none of them.
fn used_ports(w: &Workload, tcp: &[&PortMatch]) -> BTreeSet<u16> {
    w.template
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .chain(tcp.iter().map(|m| m.container_port))
        .collect()
}

/// Plans the agent of `w` from its port matches (TCP only: the agent forwards TCP). One agent
/// port per app container port; a container port is taken over by name only when every
/// service port reaching it ([`PortMatch::reached_by`], of every selecting Service) names it and
/// none is headless: otherwise a caller of the service port that does not name it would reach
/// the app directly, past the agent.
pub fn plan(
    w: &Workload,
    matches: &[PortMatch],
    manager_addr: &str,
    tunnel_addr: &str,
) -> Result<AgentConfig, PlanError> {
    let tcp: Vec<&PortMatch> = matches.iter().filter(|m| m.protocol == "TCP").collect();
    if tcp.is_empty() {
        return Err(PlanError::NoTcpPort(w.name.clone()));
    }
    let used = used_ports(w, &tcp);
    let mut next = FIRST_AGENT_PORT;
    let mut ports: Vec<AgentPort> = Vec::new();
    for m in &tcp {
        if ports
            .iter()
            .any(|p| p.container == m.container && p.app_port == m.container_port)
        {
            continue;
        }
        let same: Vec<Reach> = tcp
            .iter()
            .filter(|o| o.container == m.container && o.container_port == m.container_port)
            .flat_map(|o| {
                if o.reached_by.is_empty() {
                    vec![Reach {
                        service: o.service.clone(),
                        headless: o.headless,
                        service_port: o.service_port,
                        target_name: o.target_name.clone(),
                    }]
                } else {
                    o.reached_by.clone()
                }
            })
            .collect();
        let name = same.iter().find_map(|o| o.target_name.clone());
        let takeover = name.is_some()
            && same
                .iter()
                .all(|o| !o.headless && o.target_name.as_deref() == name.as_deref());
        while used.contains(&next) || ports.iter().any(|p| p.agent_port == next) {
            next = next.checked_add(1).ok_or(PlanError::NoFreePort)?;
        }
        ports.push(AgentPort {
            service_name: m.service.clone(),
            service_port: m.service_port,
            service_port_name: m.service_port_name.clone(),
            protocol: m.protocol.clone(),
            mode: if takeover {
                PortMode::Takeover
            } else {
                PortMode::Redirect
            },
            container: m.container.clone(),
            container_port_name: if takeover {
                name.unwrap_or_default()
            } else {
                String::new()
            },
            app_port: m.container_port,
            agent_port: next,
        });
        next = next.saturating_add(1);
    }
    Ok(AgentConfig {
        workload_name: w.name.clone(),
        workload_kind: w.kind.to_string(),
        namespace: w.namespace.clone(),
        manager_addr: manager_addr.into(),
        tunnel_addr: tunnel_addr.into(),
        container: ports[0].container.clone(),
        ports,
        replace: false,
    })
}
