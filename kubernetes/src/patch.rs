//! The pod mutation the webhook applies: the traffic-agent sidecar (the app container's env,
//! envFrom and volume mounts, readiness probe, resources, its `TP_*` configuration), the
//! named-port takeover (app port renamed `tm-<name>`, probes that named it updated, the agent
//! container takes the name) and, for numeric or headless ports, the init container with
//! NET_ADMIN that installs the redirect; for a replaced workload the app container is left
//! out, the agent in its place. Pure functions over `k8s-openapi` types; the JSONPatch
//! is the difference between the pod before and after.
//!
//! Least privilege: the agent container runs non-root with a read-only root filesystem, no
//! privilege escalation, every capability dropped and the `RuntimeDefault` seccomp profile
//! ([`agent_security_context`]), so a pod meeting the Pod Security `restricted` profile still
//! meets it after a takeover-only injection. Only the redirect's init container needs root and
//! NET_ADMIN ([`init_container`]): no Pod Security level above `privileged` admits it.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, Pod,
    PodSecurityContext, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use protocol::agent_env::{self, AgentEnv, AppMount, PortMapping};
use std::collections::BTreeMap;

use super::configmap::{unique_takeover_name, AgentConfig, PortMode};
use super::{AGENT_CONTAINER, INIT_CONTAINER};

/// Pod annotation recording the config the agent was injected with (the workload's name).
pub const INJECTED_ANNOTATION: &str = "telepresence.io/agent-injected";
/// The user the agent runs as when neither the app container nor the pod names a non-root one
/// (the agent image is `FROM scratch` without a `USER`, so `runAsNonRoot` needs a number).
pub const AGENT_UID: i64 = 65532;

/// What the injected containers run, and the chart's `agent` values (through the manager's
/// environment, `startup::Settings`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InjectSettings {
    pub agent_image: String,
    pub image_pull_policy: Option<String>,
    /// The agent's `RUST_LOG` (`agent.logLevel`); `None`: the app's, else the agent's default.
    pub log_level: Option<String>,
    /// The agent container's resources (`agent.resources`); `None`: [`default_resources`].
    pub resources: Option<ResourceRequirements>,
    /// Secrets added to the pod's `imagePullSecrets` (`agent.image.pullSecrets`).
    pub pull_secrets: Vec<String>,
    /// Fields merged over [`agent_security_context`] (`agent.securityContext`): objects merge
    /// key by key, any other value (lists too) replaces the default's, `null` removes it.
    pub security_context: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Whether the pod already carries the agent.
pub fn has_agent(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == AGENT_CONTAINER))
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Replaces a probe's port named `from` by `to`.
fn rename_probe_port(probe: &mut Option<Probe>, from: &str, to: &str) {
    let Some(p) = probe else { return };
    let named = |port: &mut IntOrString| {
        if matches!(port, IntOrString::String(s) if s == from) {
            *port = IntOrString::String(to.into());
        }
    };
    if let Some(h) = &mut p.http_get {
        named(&mut h.port);
    }
    if let Some(t) = &mut p.tcp_socket {
        named(&mut t.port);
    }
}

/// Why a pod cannot carry the agent its config describes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The pod has no spec.
    #[error("the pod has no spec")]
    NoSpec,
    /// The config names a container the pod does not have.
    #[error("the pod has no container \"{0}\"")]
    NoContainer(String),
    /// A port to take over by name does not exist in its container.
    #[error("container \"{container}\" has no port named \"{port}\"")]
    NoNamedPort {
        /// The container.
        container: String,
        /// The port name.
        port: String,
    },
}

/// The pod with the agent injected per `cfg`. A pod that already has the agent is returned
/// unchanged (the webhook is idempotent).
pub fn inject(pod: &Pod, cfg: &AgentConfig, s: &InjectSettings) -> Result<Pod, InjectError> {
    let mut pod = pod.clone();
    if has_agent(&pod) {
        return Ok(pod);
    }
    let spec = pod.spec.as_mut().ok_or(InjectError::NoSpec)?;
    let app = app_container(&spec.containers, cfg)?;
    let mut taken: std::collections::BTreeSet<String> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| p.name.clone())
        .collect();
    let agent_ports = take_over_named_ports(&mut spec.containers, cfg, &mut taken)?;
    let security = agent_security_context(spec.security_context.as_ref(), &app);
    let mut agent = agent_container(cfg, s, &app, agent_ports);
    agent.security_context = Some(match &s.security_context {
        Some(over) => merge_security_context(&security, over),
        None => security,
    });
    spec.containers.push(agent);
    add_pull_secrets(spec, &s.pull_secrets);
    if cfg.replace {
        // `replace`: the agent (which carries the app's env, envFrom and volume mounts) takes
        // the app container's place; the app does not run until the replace ends.
        spec.containers.retain(|c| c.name != cfg.container);
    }
    if let Some(init) = init_container(cfg, s) {
        spec.init_containers.get_or_insert_with(Vec::new).push(init);
    }
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED_ANNOTATION.into(), cfg.workload_name.clone());
    Ok(pod)
}

/// The intercepted container, after checking every container the config names exists.
fn app_container(containers: &[Container], cfg: &AgentConfig) -> Result<Container, InjectError> {
    let app = containers
        .iter()
        .find(|c| c.name == cfg.container)
        .cloned()
        .ok_or_else(|| InjectError::NoContainer(cfg.container.clone()))?;
    for p in &cfg.ports {
        if !containers.iter().any(|c| c.name == p.container) {
            return Err(InjectError::NoContainer(p.container.clone()));
        }
    }
    Ok(app)
}

/// Named-port takeover: the app's port gets another name, unique among the pod's port names in
/// `taken` (and probes naming it follow); the returned ports, with the original names, are the
/// agent's.
fn take_over_named_ports(
    containers: &mut [Container],
    cfg: &AgentConfig,
    taken: &mut std::collections::BTreeSet<String>,
) -> Result<Vec<ContainerPort>, InjectError> {
    let mut agent_ports = Vec::new();
    for p in cfg.ports.iter().filter(|p| p.mode == PortMode::Takeover) {
        let new = unique_takeover_name(&p.container_port_name, |n| taken.contains(n));
        taken.insert(new.clone());
        let c = containers
            .iter_mut()
            .find(|c| c.name == p.container)
            .expect("checked by app_container");
        let cp = c
            .ports
            .iter_mut()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(p.container_port_name.as_str()))
            .ok_or_else(|| InjectError::NoNamedPort {
                container: p.container.clone(),
                port: p.container_port_name.clone(),
            })?;
        cp.name = Some(new.clone());
        rename_probe_port(&mut c.readiness_probe, &p.container_port_name, &new);
        rename_probe_port(&mut c.liveness_probe, &p.container_port_name, &new);
        rename_probe_port(&mut c.startup_probe, &p.container_port_name, &new);
        agent_ports.push(ContainerPort {
            name: Some(p.container_port_name.clone()),
            container_port: i32::from(p.agent_port),
            protocol: Some(p.protocol.clone()),
            ..Default::default()
        });
    }
    Ok(agent_ports)
}

/// The traffic-agent sidecar: the app's env (ours after it, so ours wins), envFrom and volume
/// mounts, a readiness probe on its first port, and modest resources.
fn agent_container(
    cfg: &AgentConfig,
    s: &InjectSettings,
    app: &Container,
    agent_ports: Vec<ContainerPort>,
) -> Container {
    let mut agent_env = app.env.clone().unwrap_or_default();
    agent_env.extend(
        agent_env_of(cfg, app)
            .to_env()
            .into_iter()
            .map(|(k, v)| env(&k, v)),
    );
    // The agent token, from the Secret the manager writes into the pod's namespace
    // (kubernetes/src/auth.rs): never a literal in the pod spec. Optional, so that the pod
    // starts even if the Secret is gone (the manager then refuses the agent, the app is served).
    agent_env.push(EnvVar {
        name: agent_env::AGENT_TOKEN.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: crate::auth::AGENT_SECRET.into(),
                key: crate::auth::AGENT_KEY.into(),
                optional: Some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    agent_env.push(EnvVar {
        name: agent_env::POD_IP.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    if let Some(level) = &s.log_level {
        agent_env.retain(|e| e.name != "RUST_LOG");
        agent_env.push(env("RUST_LOG", level.clone()));
    }
    Container {
        name: AGENT_CONTAINER.into(),
        image: Some(s.agent_image.clone()),
        image_pull_policy: s.image_pull_policy.clone(),
        args: Some(vec!["agent".into()]),
        env: Some(agent_env),
        env_from: app.env_from.clone(),
        volume_mounts: app.volume_mounts.clone(),
        ports: (!agent_ports.is_empty()).then_some(agent_ports),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(cfg.ports[0].agent_port)),
                ..Default::default()
            }),
            period_seconds: Some(2),
            ..Default::default()
        }),
        resources: Some(s.resources.clone().unwrap_or_else(default_resources)),
        ..Default::default()
    }
}

/// The agent's resources unless `agent.resources` sets them: requests 10m CPU and 32Mi,
/// limit 256Mi.
pub fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), q("10m")),
            ("memory".into(), q("32Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), q("256Mi"))])),
        ..Default::default()
    }
}

/// `over` merged over `base`: objects key by key, other values replace, `null` removes.
pub fn merge_security_context(
    base: &SecurityContext,
    over: &serde_json::Map<String, serde_json::Value>,
) -> SecurityContext {
    fn merge(
        into: &mut serde_json::Map<String, serde_json::Value>,
        over: &serde_json::Map<String, serde_json::Value>,
    ) {
        for (k, v) in over {
            match (into.get_mut(k), v) {
                (_, serde_json::Value::Null) => {
                    into.remove(k);
                }
                (Some(serde_json::Value::Object(a)), serde_json::Value::Object(b)) => merge(a, b),
                _ => {
                    into.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let mut v = serde_json::to_value(base).expect("securityContext serializes");
    if let serde_json::Value::Object(m) = &mut v {
        merge(m, over);
    }
    // `over` was checked to be a SecurityContext when read (`startup::Settings`); the merge of
    // two valid ones is one.
    serde_json::from_value(v).unwrap_or_else(|_| base.clone())
}

/// Adds `names` to the pod's `imagePullSecrets`, each once.
fn add_pull_secrets(spec: &mut k8s_openapi::api::core::v1::PodSpec, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let list = spec.image_pull_secrets.get_or_insert_with(Vec::new);
    for n in names {
        if !list.iter().any(|r| &r.name == n) {
            list.push(k8s_openapi::api::core::v1::LocalObjectReference { name: n.clone() });
        }
    }
}

/// The agent container's securityContext: non-root, no privilege escalation, no capabilities,
/// read-only root filesystem (the agent writes nothing outside the app's mounts it shares),
/// seccomp `RuntimeDefault`. It runs as the app container's user and group when that sets a
/// non-root one (so it can read and write the app's files), inherits the pod's when the pod sets
/// a non-root user, else runs as [`AGENT_UID`].
pub fn agent_security_context(
    pod: Option<&PodSecurityContext>,
    app: &Container,
) -> SecurityContext {
    let app_sc = app.security_context.as_ref();
    let non_root = |u: Option<i64>| u.filter(|u| *u != 0);
    let run_as_user = match (
        non_root(app_sc.and_then(|c| c.run_as_user)),
        non_root(pod.and_then(|p| p.run_as_user)),
    ) {
        (Some(u), _) => Some(u),
        (None, Some(_)) if app_sc.and_then(|c| c.run_as_user).is_none() => None,
        _ => Some(AGENT_UID),
    };
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user,
        run_as_group: app_sc.and_then(|c| c.run_as_group),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The init container with NET_ADMIN that installs the redirects of numeric or headless ports;
/// `None` when every port is taken over by name.
fn init_container(cfg: &AgentConfig, s: &InjectSettings) -> Option<Container> {
    let redirects: Vec<(u16, u16)> = cfg
        .ports
        .iter()
        .filter(|p| p.mode == PortMode::Redirect)
        .map(|p| (p.app_port, p.agent_port))
        .collect();
    if redirects.is_empty() {
        return None;
    }
    Some(Container {
        name: INIT_CONTAINER.into(),
        image: Some(s.agent_image.clone()),
        image_pull_policy: s.image_pull_policy.clone(),
        args: Some(vec!["agent-init".into()]),
        env: Some(vec![env(
            agent_env::REDIRECTS,
            agent_env::redirects_value(&redirects),
        )]),
        // Root with NET_ADMIN only: every other capability dropped, no escalation, nothing
        // written (the rules go to the kernel over netlink).
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The agent's `TP_*` configuration for `cfg` (its pod IP comes from a field reference,
/// added by [`inject`]).
fn agent_env_of(cfg: &AgentConfig, app: &Container) -> AgentEnv {
    AgentEnv {
        manager_addr: cfg.manager_addr.clone(),
        tunnel_addr: cfg.tunnel_addr.clone(),
        namespace: cfg.namespace.clone(),
        workload: cfg.workload_name.clone(),
        ports: cfg.ports.iter().map(|p| p.service_port).collect(),
        port_map: Some(
            cfg.ports
                .iter()
                .map(|p| PortMapping {
                    service_port: p.service_port,
                    agent_port: p.agent_port,
                    app_port: p.app_port,
                })
                .collect(),
        ),
        app_host: Some(agent_env::DEFAULT_APP_HOST.into()),
        app_container: Some(cfg.container.clone()),
        app_mounts: Some(
            app.volume_mounts
                .iter()
                .flatten()
                .map(|m| AppMount {
                    path: m.mount_path.clone(),
                    read_only: m.read_only.unwrap_or(false),
                })
                .collect(),
        ),
        app_env_inherit: true,
        ..Default::default()
    }
}

/// The JSONPatch turning `before` into `after`.
pub fn diff(before: &Pod, after: &Pod) -> json_patch::Patch {
    let a = serde_json::to_value(before).expect("pod serializes");
    let b = serde_json::to_value(after).expect("pod serializes");
    json_patch::diff(&a, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_context_overrides_merge_over_the_default() {
        let base = agent_security_context(None, &Container::default());
        let over = serde_json::json!({
            "runAsUser": 2000,
            "capabilities": {"add": ["NET_BIND_SERVICE"]},
            "seccompProfile": null,
        });
        let merged = merge_security_context(&base, over.as_object().unwrap());
        assert_eq!(merged.run_as_user, Some(2000));
        assert_eq!(merged.run_as_non_root, Some(true));
        assert_eq!(merged.read_only_root_filesystem, Some(true));
        assert_eq!(
            merged.capabilities,
            Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".into()]),
                drop: Some(vec!["ALL".into()]),
            })
        );
        assert_eq!(merged.seccomp_profile, None);
        assert_eq!(merge_security_context(&base, &serde_json::Map::new()), base);
    }
}
