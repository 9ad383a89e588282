//! Workload discovery over plain API objects: which objects are workloads, which Services select
//! a workload's pods, which service port maps to which container port (named or numeric
//! `targetPort`), and why a workload cannot be intercepted. Pure functions, no I/O.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

use manager::provider::PortSpec;
use protocol::ports::Protocol;

/// Workload kinds, as shown to users.
pub const KIND_DEPLOYMENT: &str = "Deployment";
pub const KIND_REPLICASET: &str = "ReplicaSet";
pub const KIND_STATEFULSET: &str = "StatefulSet";

/// Reason when no Service selects the workload's pods.
pub const NO_SERVICE_REASON: &str =
    "no service selects its pods: create a Service whose selector matches the pod labels";
/// Reason for pods on the host network.
pub const HOST_NETWORK_REASON: &str =
    "uses the host network (hostNetwork: true): its ports cannot be taken over";

/// A workload with its pod template.
#[derive(Debug, Clone)]
pub struct Workload {
    pub kind: &'static str,
    pub name: String,
    pub namespace: String,
    pub template: PodTemplateSpec,
}

impl Workload {
    /// The labels of the workload's pods.
    pub fn pod_labels(&self) -> BTreeMap<String, String> {
        self.template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    }

    /// An annotation of the pod template.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }
}

/// Whether an object's owners include a controller of `kind`.
fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, kind: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == kind && o.controller.unwrap_or(false))
}

/// The workloads of `namespace` among the given objects, sorted by name then kind. ReplicaSets
/// controlled by a Deployment are not workloads of their own; neither are objects being deleted.
pub fn workloads(
    namespace: &str,
    deployments: &[&Deployment],
    replicasets: &[&ReplicaSet],
    statefulsets: &[&StatefulSet],
) -> Vec<Workload> {
    let in_ns = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        m.namespace.as_deref() == Some(namespace) && m.deletion_timestamp.is_none()
    };
    let mut out = Vec::new();
    for d in deployments.iter().filter(|d| in_ns(&d.metadata)) {
        if let Some(name) = &d.metadata.name {
            out.push(Workload {
                kind: KIND_DEPLOYMENT,
                name: name.clone(),
                namespace: namespace.into(),
                template: d.spec.template.clone(),
            });
        }
    }
    for r in replicasets
        .iter()
        .filter(|r| in_ns(&r.metadata) && !owned_by(&r.metadata, KIND_DEPLOYMENT))
    {
        if let (Some(name), Some(tpl)) = (&r.metadata.name, r.spec.template.clone()) {
            out.push(Workload {
                kind: KIND_REPLICASET,
                name: name.clone(),
                namespace: namespace.into(),
                template: tpl,
            });
        }
    }
    for s in statefulsets.iter().filter(|s| in_ns(&s.metadata)) {
        if let Some(name) = &s.metadata.name {
            out.push(Workload {
                kind: KIND_STATEFULSET,
                name: name.clone(),
                namespace: namespace.into(),
                template: s.spec.template.clone(),
            });
        }
    }
    out.sort_by(|a, b| (&a.name, a.kind).cmp(&(&b.name, b.kind)));
    out
}

/// Whether `svc` selects pods labelled `labels` (an empty or missing selector selects nothing
/// here: such Services have manually managed endpoints).
pub fn selects(svc: &Service, labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = &svc.spec else { return false };
    if spec.type_.as_deref() == Some("ExternalName") {
        return false;
    }
    match &spec.selector {
        Some(sel) if !sel.is_empty() => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

/// Whether the Service is headless (`clusterIP: None`).
pub fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// One service port and the container port it reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMatch {
    pub service: String,
    pub headless: bool,
    pub service_port: u16,
    /// Service port name (may be empty).
    pub service_port_name: String,
    pub protocol: String,
    /// The container serving it.
    pub container: String,
    pub container_port: u16,
    /// The container port's name when the Service's `targetPort` names it.
    pub target_name: Option<String>,
}

/// Why a workload's ports cannot be intercepted (shown to users as the workload's reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInterceptable {
    #[error("its pod template has no spec")]
    NoPodSpec,
    #[error("{}", HOST_NETWORK_REASON)]
    HostNetwork,
    #[error("{}", NO_SERVICE_REASON)]
    NoService,
    #[error("the services that select its pods have no ports")]
    NoServicePorts,
    /// Which service ports' targets were not found, `; `-separated.
    #[error("no service port maps to a container port ({0})")]
    NoTarget(String),
}

/// The service ports of `services` (already known to select the workload) and the container
/// ports they reach, or why none can be intercepted. Service ports whose target is missing are
/// left out; if none is left the error says which targets were not found.
pub fn match_ports(
    template: &PodTemplateSpec,
    services: &[&Service],
) -> Result<Vec<PortMatch>, NotInterceptable> {
    let Some(pod) = &template.spec else {
        return Err(NotInterceptable::NoPodSpec);
    };
    if pod.host_network == Some(true) {
        return Err(NotInterceptable::HostNetwork);
    }
    if services.is_empty() {
        return Err(NotInterceptable::NoService);
    }
    let mut out: Vec<PortMatch> = Vec::new();
    let mut missing = Vec::new();
    for svc in services {
        let sname = svc.metadata.name.clone().unwrap_or_default();
        let ports: &[ServicePort] = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_deref())
            .unwrap_or_default();
        for sp in ports {
            let Ok(port) = u16::try_from(sp.port) else {
                continue;
            };
            let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            match target_of(pod, sp, &protocol) {
                Some((container, cport, target_name)) => {
                    let Ok(container_port) = u16::try_from(cport) else {
                        continue;
                    };
                    // One intercept port per service port number, and per container port:
                    // the agent has one listener for a container port, routed by one service
                    // port.
                    if out.iter().any(|m| {
                        m.protocol == protocol
                            && (m.service_port == port
                                || (m.container == container && m.container_port == container_port))
                    }) {
                        continue;
                    }
                    out.push(PortMatch {
                        service: sname.clone(),
                        headless: is_headless(svc),
                        service_port: port,
                        service_port_name: sp.name.clone().unwrap_or_default(),
                        protocol,
                        container,
                        container_port,
                        target_name,
                    });
                }
                None => missing.push(missing_target(&sname, port, sp)),
            }
        }
    }
    if out.is_empty() {
        return Err(if missing.is_empty() {
            NotInterceptable::NoServicePorts
        } else {
            NotInterceptable::NoTarget(missing.join("; "))
        });
    }
    out.sort_by_key(|m| (m.service_port, m.protocol.clone()));
    Ok(out)
}

/// The container (name, port, and the port's name when targeted by name) a service port
/// reaches, if any.
fn target_of(
    pod: &PodSpec,
    sp: &ServicePort,
    protocol: &str,
) -> Option<(String, i32, Option<String>)> {
    match &sp.target_port {
        Some(IntOrString::String(name)) => pod.containers.iter().find_map(|c| {
            c.ports.iter().flatten().find_map(|cp| {
                (cp.name.as_deref() == Some(name.as_str())
                    && cp.protocol.as_deref().unwrap_or("TCP") == protocol)
                    .then(|| (c.name.clone(), cp.container_port, Some(name.clone())))
            })
        }),
        other => {
            let n = match other {
                Some(IntOrString::Int(n)) => *n,
                _ => sp.port,
            };
            pod.containers
                .iter()
                .find(|c| c.ports.iter().flatten().any(|cp| cp.container_port == n))
                // A numeric target need not be declared: then it is the first container.
                .or(pod.containers.first())
                .map(|c| (c.name.clone(), n, None))
        }
    }
}

/// Why service `sname`'s port `port` reaches no container (part of [`NotInterceptable::NoTarget`]).
fn missing_target(sname: &str, port: u16, sp: &ServicePort) -> String {
    format!(
        "service {sname} port {port}: targetPort {} matches no container port",
        match &sp.target_port {
            Some(IntOrString::String(s)) => format!("\"{s}\""),
            Some(IntOrString::Int(n)) => n.to_string(),
            None => port.to_string(),
        }
    )
}

/// The ports shown to users for matched service ports.
pub fn port_specs(matches: &[PortMatch]) -> Vec<PortSpec> {
    matches
        .iter()
        .filter_map(|m| {
            Some(PortSpec {
                name: m.service_port_name.clone(),
                port: m.service_port,
                protocol: Protocol::parse(&m.protocol)?,
            })
        })
        .collect()
}
