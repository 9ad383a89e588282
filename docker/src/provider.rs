//! The Docker-engine provider: namespaces are compose
//! projects (`default` = standalone containers), workloads are compose services (or named
//! containers in `default`), and an agent is a sidecar container sharing the network namespace of
//! each of the workload's containers. This module owns how containers map to workloads, how agent
//! containers are named, labelled, created, replaced and removed (with a netfilter cleanup run
//! when an agent did not exit cleanly), and the leftover sweep the CLI uses.
//!
//! Docker-model decisions are pure functions over bollard model structs (tested below with Engine
//! API 1.41 JSON); the async methods only fetch, then act on what those functions decide.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HostConfig,
    PortSummaryTypeEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    ListNetworksOptions, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use compose::{NUMBER_LABEL, PROJECT_LABEL, SERVICE_LABEL};
use futures::StreamExt;
use protocol::agent_env::{AgentEnv, AppMount};
use protocol::ports::Protocol;
use protocol::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

use manager::provider::{AgentRequest, PortSpec, Provider, ProviderError, WorkloadInfo};

/// The namespace of standalone containers (no compose project label) on the default bridge.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The network of [`DEFAULT_NAMESPACE`].
pub const DEFAULT_NETWORK: &str = "bridge";
/// Kind of a workload made of a compose service's containers.
pub const KIND_COMPOSE_SERVICE: &str = "ComposeService";
/// Kind of a workload that is one named standalone container.
pub const KIND_CONTAINER: &str = "Container";

/// Label naming what a managed container is (`agent`, `agent-cleanup`, ...).
pub const ROLE_LABEL: &str = "telepresence.io/role";
/// Label naming the namespace an agent serves.
pub const NAMESPACE_LABEL: &str = "telepresence.io/namespace";
/// Label naming the workload an agent serves.
pub const WORKLOAD_LABEL: &str = "telepresence.io/workload";
/// Label holding the id of the workload container whose network namespace an agent joined.
pub const TARGET_LABEL: &str = "telepresence.io/target";
/// Label holding the comma-separated ports an agent captures (as in `TP_PORTS`).
pub const PORTS_LABEL: &str = "telepresence.io/ports";
/// [`ROLE_LABEL`] value of agent containers.
pub const ROLE_AGENT: &str = "agent";
/// [`ROLE_LABEL`] value of the one-shot containers that delete a dead agent's netfilter table.
pub const ROLE_AGENT_CLEANUP: &str = "agent-cleanup";

/// Compose marks `compose run` containers with this label ("True"); they are not replicas.
const ONEOFF_LABEL: &str = "com.docker.compose.oneoff";
/// Seconds an agent gets to delete its netfilter table after SIGTERM.
const AGENT_STOP_TIMEOUT_SECS: i32 = 5;
/// How long a cleanup container may run.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Reason shown for a workload on the host network.
pub const HOST_NETWORK_REASON: &str =
    "uses the host network (network_mode: host): its ports cannot be redirected";

/// What a Docker-engine manager needs to know about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// The namespace (compose project, or `default`) this manager serves.
    pub namespace: String,
    /// IP of the manager container on the namespace network, as agents reach it.
    pub manager_host: String,
    /// Manager gRPC port (container side).
    pub grpc_port: u16,
    /// Manager tunnel port (container side).
    pub tunnel_port: u16,
    /// The image agent (and agent-cleanup) containers run.
    pub agent_image: String,
    /// The agent token agent containers present (protocol/src/auth.rs).
    pub agent_token: Option<protocol::auth::Token>,
}

/// [`Provider`] for a Docker engine.
pub struct DockerProvider {
    docker: Docker,
    cfg: DockerConfig,
    server: String,
    /// Serialises agent changes so two concurrent requests cannot race on container names.
    agent_ops: tokio::sync::Mutex<()>,
    /// Moves on engine events that may detach an agent (crate::watch).
    changes: tokio::sync::watch::Sender<u64>,
}

/// The engine address users recognise: `DOCKER_HOST`, or the local socket.
pub fn engine_address() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

/// Connects to the engine (`DOCKER_HOST` or the local socket) and negotiates the API version.
pub async fn connect_engine() -> Result<Docker, ProviderError> {
    let server = engine_address();
    let docker = Docker::connect_with_defaults()
        .map_err(|e| ProviderError::Api(format!("cannot use Docker engine at {server}: {e}")))?;
    docker.negotiate_version().await.map_err(|e| {
        ProviderError::Api(format!(
            "cannot reach the Docker engine at {server} (is it running?): {e}"
        ))
    })
}

impl DockerProvider {
    /// The IPAM configurations of `namespace`'s networks (its compose project's, or the
    /// network its containers use); none for `default`, the engine's bridge network, which the
    /// daemon container is attached to itself: it reaches those containers directly.
    async fn namespace_ipam(
        &self,
        namespace: &str,
    ) -> Result<Vec<bollard::models::IpamConfig>, ProviderError> {
        if namespace == DEFAULT_NAMESPACE {
            return Ok(Vec::new());
        }
        let containers = self.list_all().await?;
        let primary = namespace_network(namespace, &containers);
        let networks = self
            .docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .map_err(|e| api_err("list networks", e))?;
        Ok(networks
            .into_iter()
            .filter(|n| {
                let project = n.labels.as_ref().and_then(|l| l.get(PROJECT_LABEL));
                n.name.as_ref() == primary.as_ref()
                    || project.map(String::as_str) == Some(namespace)
            })
            .flat_map(|n| n.ipam.and_then(|i| i.config).unwrap_or_default())
            .collect())
    }

    /// Connects to the engine (`DOCKER_HOST` or the local socket, version negotiated).
    pub async fn connect(cfg: DockerConfig) -> Result<Self, ProviderError> {
        Ok(Self::new(connect_engine().await?, cfg))
    }

    /// A provider over an already connected client.
    pub fn new(docker: Docker, cfg: DockerConfig) -> Self {
        Self {
            docker,
            cfg,
            server: engine_address(),
            agent_ops: tokio::sync::Mutex::new(()),
            changes: tokio::sync::watch::channel(0).0,
        }
    }

    /// Follows the engine's events for this provider's namespace until the process ends,
    /// moving [`Provider::changes`] (see crate::watch).
    pub fn watch_engine(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        crate::watch::watch_engine(
            self.docker.clone(),
            self.cfg.namespace.clone(),
            self.changes.clone(),
        )
    }

    /// The engine client.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The configuration this provider was made with.
    pub fn config(&self) -> &DockerConfig {
        &self.cfg
    }

    /// Finds the manager's own IP on `network` by inspecting its own container (env `HOSTNAME` =
    /// container id, which is what Docker sets unless a hostname was given).
    pub async fn own_address(docker: &Docker, network: &str) -> Result<String, ProviderError> {
        let me = std::env::var("HOSTNAME").map_err(|_| {
            ProviderError::Invalid("HOSTNAME is not set: not running in a container?".into())
        })?;
        let inspect = docker
            .inspect_container(&me, None::<InspectContainerOptions>)
            .await
            .map_err(|e| api_err(&format!("inspect own container {me}"), e))?;
        inspect
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| {
                ProviderError::Invalid(format!(
                    "container {me} has no address on network \"{network}\""
                ))
            })
    }

    /// Removes every agent of the namespace this manager serves.
    pub async fn remove_all_agents(&self) -> Result<(), ProviderError> {
        let _guard = self.agent_ops.lock().await;
        sweep_agents(&self.docker, Some(&self.cfg.namespace)).await
    }

    async fn list_all(&self) -> Result<Vec<ContainerSummary>, ProviderError> {
        list_all_containers(&self.docker).await
    }

    /// Whether the namespace exists, given the container list already fetched.
    async fn exists_with(
        &self,
        namespace: &str,
        containers: &[ContainerSummary],
    ) -> Result<bool, ProviderError> {
        if namespace == DEFAULT_NAMESPACE || project_has_containers(namespace, containers) {
            return Ok(true);
        }
        Ok(find_project_network(&self.docker, namespace)
            .await?
            .is_some())
    }

    async fn not_found(
        &self,
        namespace: &str,
        name: &str,
        containers: &[ContainerSummary],
    ) -> ProviderError {
        match self.exists_with(namespace, containers).await {
            Ok(true) => ProviderError::WorkloadNotFound {
                name: name.to_string(),
                namespace: namespace.to_string(),
            },
            Ok(false) => ProviderError::NamespaceNotFound(namespace.to_string()),
            Err(e) => e,
        }
    }

    /// Creates and starts one agent; returns what is needed to remove it again.
    async fn create_agent(&self, spec: &AgentSpec) -> Result<AgentRef, ProviderError> {
        let target = self
            .docker
            .inspect_container(&spec.target_id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| api_err(&format!("inspect {}", spec.target_id), e))?;
        let body = agent_container_body(&self.cfg, spec, &AppView::of(&target));
        let opts = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| match e {
                BollardError::DockerResponseServerError {
                    status_code: 404,
                    message,
                } => ProviderError::Api(format!(
                    "cannot create agent {}: agent image {} is not on the engine ({message})",
                    spec.name, self.cfg.agent_image
                )),
                e => api_err(&format!("create agent {}", spec.name), e),
            })?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            // Leave nothing behind.
            let _ = self
                .docker
                .remove_container(&created.id, Some(force_remove()))
                .await;
            return Err(api_err(&format!("start agent {}", spec.name), e));
        }
        tracing::info!(agent = %spec.name, target = %spec.target_id, ports = ?spec.ports, "agent started");
        Ok(AgentRef {
            id: created.id,
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            workload: spec.workload.clone(),
            target: spec.target_id.clone(),
            ports: spec.ports.clone(),
            running: true,
            image: self.cfg.agent_image.clone(),
        })
    }
}

#[async_trait]
impl Provider for DockerProvider {
    fn cluster_type(&self) -> protocol::ClusterType {
        protocol::ClusterType::Docker
    }

    fn server(&self) -> String {
        self.server.clone()
    }

    fn agent_image(&self) -> String {
        self.cfg.agent_image.clone()
    }

    async fn namespace_exists(&self, namespace: &str) -> Result<bool, ProviderError> {
        if namespace == DEFAULT_NAMESPACE {
            return Ok(true);
        }
        let containers = self.list_all().await?;
        self.exists_with(namespace, &containers).await
    }

    async fn list_workloads(&self, namespace: &str) -> Result<Vec<WorkloadInfo>, ProviderError> {
        let containers = self.list_all().await?;
        if !self.exists_with(namespace, &containers).await? {
            return Err(ProviderError::NamespaceNotFound(namespace.to_string()));
        }
        Ok(workloads_from_containers(namespace, &containers))
    }

    async fn get_workload(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<WorkloadInfo, ProviderError> {
        let containers = self.list_all().await?;
        match workloads_from_containers(namespace, &containers)
            .into_iter()
            .find(|w| w.name == name)
        {
            Some(w) => Ok(w),
            None => Err(self.not_found(namespace, name, &containers).await),
        }
    }

    async fn ensure_agent(&self, req: &AgentRequest) -> Result<(), ProviderError> {
        if req.namespace != self.cfg.namespace {
            return Err(ProviderError::Invalid(format!(
                "this traffic-manager serves namespace \"{}\", not \"{}\"",
                self.cfg.namespace, req.namespace
            )));
        }
        let _guard = self.agent_ops.lock().await;
        let containers = self.list_all().await?;
        let Some(info) = workloads_from_containers(&req.namespace, &containers)
            .into_iter()
            .find(|w| w.name == req.workload)
        else {
            return Err(self
                .not_found(&req.namespace, &req.workload, &containers)
                .await);
        };
        let ports = normalize_ports(&req.ports);
        check_agent_ports(&info, &ports)?;
        let network = namespace_network(&req.namespace, &containers);
        let targets = workload_targets(
            &req.namespace,
            &req.workload,
            &containers,
            network.as_deref(),
        );
        let mut agents = agents_in(Some(&req.namespace), Some(&req.workload), &containers);
        for a in agents.iter_mut().filter(|a| a.running) {
            // In the network namespace of its target's previous run: as good as dead.
            if crate::watch::is_stale(&self.docker, &a.id, &a.target).await {
                tracing::info!(agent = %a.name, "target restarted since the agent started; replacing it");
                a.running = false;
            }
        }
        let plan = plan_agents(&req.namespace, &req.workload, &ports, &targets, &agents);
        tracing::debug!(workload = %req.workload, ?plan, "agent plan");

        let removals = plan
            .remove
            .iter()
            .map(|a| remove_agent_container(&self.docker, a));
        first_error(futures::future::join_all(removals).await)?;
        let creations = plan.create.iter().map(|s| self.create_agent(s));
        let results = futures::future::join_all(creations).await;
        if results.iter().all(Result::is_ok) {
            return Ok(());
        }
        // All replicas or none: take back the agents this call started.
        let started: Vec<&AgentRef> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let rollback = started
            .iter()
            .map(|a| remove_agent_container(&self.docker, a));
        for r in futures::future::join_all(rollback).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot roll back agent");
            }
        }
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }

    async fn cluster_subnets(&self, namespace: &str) -> Result<Vec<String>, ProviderError> {
        let mut subnets: Vec<String> = Vec::new();
        for c in self.namespace_ipam(namespace).await? {
            if let Some(s) = c.subnet.filter(|s| !s.is_empty()) {
                if !subnets.contains(&s) {
                    subnets.push(s);
                }
            }
        }
        subnets.sort();
        Ok(subnets)
    }

    async fn host_addresses(&self, namespace: &str) -> Vec<std::net::IpAddr> {
        match self.namespace_ipam(namespace).await {
            Ok(ipam) => ipam
                .into_iter()
                .filter_map(|c| c.gateway.and_then(|g| g.parse().ok()))
                .collect(),
            Err(e) => {
                tracing::warn!(%namespace, "cannot read the networks' gateways: {e}");
                Vec::new()
            }
        }
    }

    fn cluster_domain(&self) -> String {
        "cluster.local".to_string()
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    async fn set_replaced(
        &self,
        namespace: &str,
        workload: &str,
        replaced: bool,
    ) -> Result<(), ProviderError> {
        let _guard = self.agent_ops.lock().await;
        let containers = self.list_all().await?;
        let targets = workload_targets(namespace, workload, &containers, None);
        if targets.is_empty() && replaced {
            return Err(self.not_found(namespace, workload, &containers).await);
        }
        for t in &targets {
            crate::replace::set_paused(&self.docker, &t.id, replaced).await?;
        }
        Ok(())
    }

    async fn remove_agent(&self, namespace: &str, workload: &str) -> Result<(), ProviderError> {
        let _guard = self.agent_ops.lock().await;
        let containers = self.list_all().await?;
        let agents = agents_in(Some(namespace), Some(workload), &containers);
        let removals = agents
            .iter()
            .map(|a| remove_agent_container(&self.docker, a));
        first_error(futures::future::join_all(removals).await)
    }
}

/// Removes every agent (and every leftover cleanup container) of `namespace`, or of every
/// namespace when `None`, restoring the direct path of the workloads they served.
pub async fn sweep_agents(docker: &Docker, namespace: Option<&str>) -> Result<(), ProviderError> {
    let containers = list_all_containers(docker).await?;
    let leftovers: Vec<String> = containers
        .iter()
        .filter(|c| {
            label(c, ROLE_LABEL) == Some(ROLE_AGENT_CLEANUP)
                && namespace.is_none_or(|ns| label(c, NAMESPACE_LABEL) == Some(ns))
        })
        .filter_map(|c| c.id.clone())
        .collect();
    for id in leftovers {
        if let Err(e) = docker.remove_container(&id, Some(force_remove())).await {
            if !is_not_found(&e) {
                tracing::warn!(container = %id, error = %e, "cannot remove leftover cleanup container");
            }
        }
    }
    let agents = agents_in(namespace, None, &containers);
    let removals = agents.iter().map(|a| remove_agent_container(docker, a));
    first_error(futures::future::join_all(removals).await)
}

/// The network a namespace's manager joins, found on the engine: `bridge` for `default`; else
/// the network of the project's running containers (preferring `<project>_default`); else a
/// network compose made for the project. `NamespaceNotFound` when there is none.
pub async fn network_of_namespace(
    docker: &Docker,
    namespace: &str,
) -> Result<String, ProviderError> {
    if namespace == DEFAULT_NAMESPACE {
        return Ok(DEFAULT_NETWORK.to_string());
    }
    let containers = list_all_containers(docker).await?;
    if let Some(n) = namespace_network(namespace, &containers) {
        return Ok(n);
    }
    find_project_network(docker, namespace)
        .await?
        .ok_or_else(|| ProviderError::NamespaceNotFound(namespace.to_string()))
}

/// A network compose created for `project`: named `<project>_default` or `<project>`, or
/// labelled with the project.
async fn find_project_network(
    docker: &Docker,
    project: &str,
) -> Result<Option<String>, ProviderError> {
    let networks = docker
        .list_networks(None::<ListNetworksOptions>)
        .await
        .map_err(|e| api_err("list networks", e))?;
    let named: Vec<(String, Option<String>)> = networks
        .into_iter()
        .filter_map(|n| {
            let project_label = n
                .labels
                .as_ref()
                .and_then(|l| l.get(PROJECT_LABEL).cloned());
            n.name.map(|name| (name, project_label))
        })
        .collect();
    Ok(pick_project_network(project, &named))
}

/// Chooses a project's network among `(name, compose project label)` pairs.
fn pick_project_network(project: &str, networks: &[(String, Option<String>)]) -> Option<String> {
    let default = compose::default_network(project);
    let mut by_label: Vec<&String> = networks
        .iter()
        .filter(|(_, p)| p.as_deref() == Some(project))
        .map(|(n, _)| n)
        .collect();
    by_label.sort();
    networks
        .iter()
        .map(|(n, _)| n)
        .find(|n| **n == default)
        .or_else(|| networks.iter().map(|(n, _)| n).find(|n| *n == project))
        .or_else(|| by_label.first().copied())
        .cloned()
}

async fn list_all_containers(docker: &Docker) -> Result<Vec<ContainerSummary>, ProviderError> {
    let opts = ListContainersOptionsBuilder::default().all(true).build();
    docker
        .list_containers(Some(opts))
        .await
        .map_err(|e| api_err("list containers", e))
}

/// Stops an agent (SIGTERM: it deletes its netfilter table), removes it, and when it did not exit
/// with code 0 runs a cleanup container in the target's network namespace.
async fn remove_agent_container(docker: &Docker, agent: &AgentRef) -> Result<(), ProviderError> {
    // A replaced workload runs again before its agent goes.
    crate::replace::unpause_if_paused(docker, &agent.target).await?;
    let stop = StopContainerOptionsBuilder::default()
        .t(AGENT_STOP_TIMEOUT_SECS)
        .build();
    match docker.stop_container(&agent.id, Some(stop)).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(api_err(&format!("stop agent {}", agent.name), e)),
    }
    let exit_code = match docker
        .inspect_container(&agent.id, None::<InspectContainerOptions>)
        .await
    {
        Ok(i) => i.state.and_then(|s| s.exit_code).unwrap_or(0),
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(api_err(&format!("inspect agent {}", agent.name), e)),
    };
    match docker
        .remove_container(&agent.id, Some(force_remove()))
        .await
    {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(api_err(&format!("remove agent {}", agent.name), e)),
    }
    tracing::info!(agent = %agent.name, exit_code, "agent removed");
    if exit_code == 0 {
        return Ok(());
    }
    // The agent crashed or was killed: its netfilter table may still redirect the workload's
    // ports to nowhere. Delete it from inside the target's network namespace, if that lives.
    let target_running = match docker
        .inspect_container(&agent.target, None::<InspectContainerOptions>)
        .await
    {
        Ok(i) => i.state.and_then(|s| s.running).unwrap_or(false),
        Err(e) if is_not_found(&e) => false,
        Err(e) => return Err(api_err("inspect agent target", e)),
    };
    if !target_running {
        tracing::info!(agent = %agent.name, "target not running: no netfilter cleanup needed");
        return Ok(());
    }
    run_cleanup(docker, agent).await
}

async fn run_cleanup(docker: &Docker, agent: &AgentRef) -> Result<(), ProviderError> {
    let name = cleanup_name(&agent.name);
    // A leftover from an earlier attempt would block the name.
    let _ = docker.remove_container(&name, Some(force_remove())).await;
    let body = cleanup_container_body(agent);
    let opts = CreateContainerOptionsBuilder::default().name(&name).build();
    let id = docker
        .create_container(Some(opts), body)
        .await
        .map_err(|e| api_err(&format!("create agent cleanup {name}"), e))?
        .id;
    let result = async {
        docker
            .start_container(&id, None)
            .await
            .map_err(|e| api_err(&format!("start agent cleanup {name}"), e))?;
        let wait = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut stream = docker.wait_container(&id, Some(wait));
        match tokio::time::timeout(CLEANUP_TIMEOUT, stream.next()).await {
            Err(_) => Err(ProviderError::Api(format!(
                "agent cleanup {name} did not finish within {}s",
                CLEANUP_TIMEOUT.as_secs()
            ))),
            Ok(None | Some(Ok(_))) => Ok(()),
            Ok(Some(Err(BollardError::DockerContainerWaitError { code, error }))) => {
                Err(ProviderError::Api(format!(
                    "agent cleanup {name} failed with exit code {code} {error}"
                )))
            }
            Ok(Some(Err(e))) => Err(api_err(&format!("wait for agent cleanup {name}"), e)),
        }
    }
    .await;
    let _ = docker.remove_container(&id, Some(force_remove())).await;
    if result.is_ok() {
        tracing::info!(agent = %agent.name, "netfilter cleanup done");
    }
    result
}

fn force_remove() -> bollard::query_parameters::RemoveContainerOptions {
    RemoveContainerOptionsBuilder::default().force(true).build()
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn api_err(context: &str, e: BollardError) -> ProviderError {
    ProviderError::Api(format!("{context}: {e}"))
}

fn first_error(results: Vec<Result<(), ProviderError>>) -> Result<(), ProviderError> {
    results.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Pure Docker-model decisions.
// ---------------------------------------------------------------------------------------------

fn label<'a>(c: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    c.labels.as_ref()?.get(key).map(String::as_str)
}

fn is_running(c: &ContainerSummary) -> bool {
    c.state == Some(ContainerSummaryStateEnum::RUNNING)
}

/// Containers we created (manager, agents, daemons, handlers) are never workloads. They are
/// known by the role label we set on each; the managed-by label is not enough, since a container
/// inherits it from an image we built (such as our test app's).
fn is_ours(c: &ContainerSummary) -> bool {
    label(c, ROLE_LABEL).is_some()
}

fn container_name(c: &ContainerSummary) -> Option<String> {
    c.names
        .as_ref()?
        .iter()
        .map(|n| n.trim_start_matches('/'))
        // Legacy links add "/other/alias" names; the container's own name has no slash.
        .find(|n| !n.is_empty() && !n.contains('/'))
        .map(str::to_string)
}

fn is_oneoff(c: &ContainerSummary) -> bool {
    label(c, ONEOFF_LABEL).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn project_has_containers(project: &str, containers: &[ContainerSummary]) -> bool {
    containers
        .iter()
        .any(|c| !is_ours(c) && label(c, PROJECT_LABEL) == Some(project))
}

/// The workload a running (or, replaced, paused), non-managed container belongs to in
/// `namespace`, if any.
fn workload_of(namespace: &str, c: &ContainerSummary) -> Option<(String, &'static str)> {
    let paused = c.state == Some(ContainerSummaryStateEnum::PAUSED);
    if !(is_running(c) || paused) || is_ours(c) {
        return None;
    }
    match label(c, PROJECT_LABEL) {
        Some(project) if project == namespace => {
            if is_oneoff(c) {
                return None;
            }
            label(c, SERVICE_LABEL).map(|s| (s.to_string(), KIND_COMPOSE_SERVICE))
        }
        Some(_) => None,
        None if namespace == DEFAULT_NAMESPACE => container_name(c).map(|n| (n, KIND_CONTAINER)),
        None => None,
    }
}

/// The TCP/UDP ports a container serves, container side: its exposed ports and the container
/// side of its published bindings (`/containers/json` lists both in `Ports`).
fn container_ports(c: &ContainerSummary) -> BTreeSet<(u16, Protocol)> {
    c.ports
        .iter()
        .flatten()
        .filter(|p| p.private_port != 0)
        .filter_map(|p| match p.typ {
            Some(PortSummaryTypeEnum::TCP) | None => Some((p.private_port, Protocol::Tcp)),
            Some(PortSummaryTypeEnum::UDP) => Some((p.private_port, Protocol::Udp)),
            _ => None,
        })
        .collect()
}

fn network_mode(c: &ContainerSummary) -> Option<&str> {
    c.host_config.as_ref()?.network_mode.as_deref()
}

/// Workloads of `namespace` as seen in a full container list (`all=true`, agents included),
/// sorted by name.
pub fn workloads_from_containers(
    namespace: &str,
    containers: &[ContainerSummary],
) -> Vec<WorkloadInfo> {
    struct Acc {
        kind: &'static str,
        ports: BTreeSet<(u16, Protocol)>,
        host_network: bool,
    }
    let mut by_name: BTreeMap<String, Acc> = BTreeMap::new();
    for c in containers {
        let Some((name, kind)) = workload_of(namespace, c) else {
            continue;
        };
        let acc = by_name.entry(name).or_insert_with(|| Acc {
            kind,
            ports: BTreeSet::new(),
            host_network: false,
        });
        acc.ports.extend(container_ports(c));
        acc.host_network |= network_mode(c) == Some("host");
    }
    let with_agent: BTreeSet<String> = agents_in(Some(namespace), None, containers)
        .into_iter()
        .filter(|a| a.running)
        .map(|a| a.workload)
        .collect();
    by_name
        .into_iter()
        .map(|(name, acc)| {
            // A container without `expose:`/`ports:` still serves what it listens on: it is
            // interceptable on the port the user names.
            let not_interceptable = acc.host_network.then(|| HOST_NETWORK_REASON.to_string());
            let open_ports = acc.ports.is_empty();
            WorkloadInfo {
                agent_installed: with_agent.contains(&name),
                namespace: namespace.to_string(),
                kind: acc.kind.to_string(),
                ports: acc
                    .ports
                    .into_iter()
                    .map(|(port, protocol)| PortSpec {
                        name: String::new(),
                        port,
                        protocol,
                    })
                    .collect(),
                not_interceptable,
                open_ports,
                name,
            }
        })
        .collect()
}

/// The network of a namespace as seen from its running containers: `bridge` for `default`;
/// for a project the networks its containers are on, preferring `<project>_default`, else the
/// first by name. `None` when no running container of the project has a network.
pub fn namespace_network(namespace: &str, containers: &[ContainerSummary]) -> Option<String> {
    if namespace == DEFAULT_NAMESPACE {
        return Some(DEFAULT_NETWORK.to_string());
    }
    let networks: BTreeSet<&String> = containers
        .iter()
        .filter(|c| {
            is_running(c)
                && !is_ours(c)
                && label(c, PROJECT_LABEL) == Some(namespace)
                && !is_oneoff(c)
        })
        .filter_map(|c| c.network_settings.as_ref()?.networks.as_ref())
        .flat_map(|n| n.keys())
        .collect();
    let default = compose::default_network(namespace);
    if networks.contains(&default) {
        return Some(default);
    }
    networks.into_iter().next().cloned()
}

/// A container's IP, preferring its address on `network`.
fn container_ip(c: &ContainerSummary, network: Option<&str>) -> Option<String> {
    let nets = c.network_settings.as_ref()?.networks.as_ref()?;
    let ip_of = |n: &str| {
        nets.get(n)
            .and_then(|e| e.ip_address.clone())
            .filter(|ip| !ip.is_empty())
    };
    if let Some(ip) = network.and_then(ip_of) {
        return Some(ip);
    }
    let mut names: Vec<&String> = nets.keys().collect();
    names.sort();
    names.into_iter().find_map(|n| ip_of(n))
}

/// One running container of a workload, which gets its own agent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    replica: u32,
    id: String,
    ip: String,
}

/// The running containers of a workload with their replica numbers (compose's number label, or
/// the 1-based index by name) and IPs, sorted by replica.
fn workload_targets(
    namespace: &str,
    workload: &str,
    containers: &[ContainerSummary],
    network: Option<&str>,
) -> Vec<Target> {
    let mut members: Vec<&ContainerSummary> = containers
        .iter()
        .filter(|c| workload_of(namespace, c).is_some_and(|(n, _)| n == workload))
        .collect();
    members.sort_by_key(|c| container_name(c));
    let mut targets: Vec<Target> = members
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let replica = label(c, NUMBER_LABEL)
                .and_then(|n| n.parse().ok())
                .unwrap_or(i as u32 + 1);
            Some(Target {
                replica,
                id: c.id.clone()?,
                ip: container_ip(c, network).unwrap_or_default(),
            })
        })
        .collect();
    targets.sort_by_key(|t| t.replica);
    targets
}

/// An agent container found on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AgentRef {
    id: String,
    name: String,
    namespace: String,
    workload: String,
    /// Id of the workload container whose network namespace it joined.
    target: String,
    ports: Vec<u16>,
    running: bool,
    image: String,
}

/// Agent containers (any state) of `namespace` / `workload` (all when `None`), sorted by name.
fn agents_in(
    namespace: Option<&str>,
    workload: Option<&str>,
    containers: &[ContainerSummary],
) -> Vec<AgentRef> {
    let mut agents: Vec<AgentRef> = containers
        .iter()
        .filter(|c| {
            label(c, MANAGED_BY_LABEL) == Some(MANAGED_BY_VALUE)
                && label(c, ROLE_LABEL) == Some(ROLE_AGENT)
                && namespace.is_none_or(|ns| label(c, NAMESPACE_LABEL) == Some(ns))
                && workload.is_none_or(|w| label(c, WORKLOAD_LABEL) == Some(w))
        })
        .filter_map(|c| {
            Some(AgentRef {
                id: c.id.clone()?,
                name: container_name(c).unwrap_or_default(),
                namespace: label(c, NAMESPACE_LABEL).unwrap_or_default().to_string(),
                workload: label(c, WORKLOAD_LABEL).unwrap_or_default().to_string(),
                target: label(c, TARGET_LABEL).unwrap_or_default().to_string(),
                ports: parse_ports(label(c, PORTS_LABEL).unwrap_or_default()),
                running: is_running(c),
                image: c.image.clone().unwrap_or_default(),
            })
        })
        .collect();
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    agents
}

fn parse_ports(s: &str) -> Vec<u16> {
    normalize_ports(
        &s.split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect::<Vec<u16>>(),
    )
}

fn normalize_ports(ports: &[u16]) -> Vec<u16> {
    let set: BTreeSet<u16> = ports.iter().copied().filter(|p| *p != 0).collect();
    set.into_iter().collect()
}

use protocol::agent_env::ports_csv;

/// Refuses an agent for a workload that cannot be intercepted or for ports it does not serve.
fn check_agent_ports(info: &WorkloadInfo, ports: &[u16]) -> Result<(), ProviderError> {
    if let Some(reason) = &info.not_interceptable {
        return Err(ProviderError::Invalid(format!(
            "{} {} cannot be intercepted: {reason}",
            info.kind, info.name
        )));
    }
    if ports.is_empty() {
        return Err(ProviderError::Invalid(format!(
            "no port given for the agent of {}",
            info.name
        )));
    }
    if info.open_ports && info.ports.is_empty() {
        return Ok(());
    }
    let served: BTreeSet<u16> = info.ports.iter().map(|p| p.port).collect();
    if let Some(p) = ports.iter().find(|p| !served.contains(p)) {
        let list = info
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ProviderError::Invalid(format!(
            "{} {} does not expose port {p} (it exposes {list})",
            info.kind, info.name
        )));
    }
    Ok(())
}

/// Name of the agent of replica `n` of a workload.
pub fn agent_name(namespace: &str, workload: &str, n: u32) -> String {
    format!("tp-agent-{namespace}-{workload}-{n}")
}

fn cleanup_name(agent_name: &str) -> String {
    match agent_name.strip_prefix("tp-agent-") {
        Some(rest) => format!("tp-agent-cleanup-{rest}"),
        None => format!("tp-agent-cleanup-{agent_name}"),
    }
}

/// An agent to create.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AgentSpec {
    name: String,
    namespace: String,
    workload: String,
    target_id: String,
    target_ip: String,
    ports: Vec<u16>,
}

/// What `ensure_agent` does: agents to remove (wrong ports, dead, stale target, or no longer a
/// replica) and agents to create; an agent already running with the same ports on the same
/// target is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct AgentPlan {
    keep: Vec<String>,
    remove: Vec<AgentRef>,
    create: Vec<AgentSpec>,
}

fn plan_agents(
    namespace: &str,
    workload: &str,
    ports: &[u16],
    targets: &[Target],
    agents: &[AgentRef],
) -> AgentPlan {
    let mut plan = AgentPlan::default();
    let mut wanted: HashMap<String, &Target> = HashMap::new();
    for t in targets {
        wanted.insert(agent_name(namespace, workload, t.replica), t);
    }
    let mut satisfied: BTreeSet<String> = BTreeSet::new();
    for a in agents {
        match wanted.get(&a.name) {
            Some(t) if a.running && a.target == t.id && a.ports == ports => {
                satisfied.insert(a.name.clone());
                plan.keep.push(a.name.clone());
            }
            _ => plan.remove.push(a.clone()),
        }
    }
    for t in targets {
        let name = agent_name(namespace, workload, t.replica);
        if !satisfied.contains(&name) {
            plan.create.push(AgentSpec {
                name,
                namespace: namespace.to_string(),
                workload: workload.to_string(),
                target_id: t.id.clone(),
                target_ip: t.ip.clone(),
                ports: ports.to_vec(),
            });
        }
    }
    plan
}

fn agent_labels(
    namespace: &str,
    workload: &str,
    target: &str,
    role: &str,
) -> HashMap<String, String> {
    HashMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (ROLE_LABEL.to_string(), role.to_string()),
        (NAMESPACE_LABEL.to_string(), namespace.to_string()),
        (WORKLOAD_LABEL.to_string(), workload.to_string()),
        (TARGET_LABEL.to_string(), target.to_string()),
    ])
}

/// Host config shared by agents and cleanups: the target's network namespace and NET_ADMIN.
/// (`network_mode: container:` rejects hostname, ports and dns settings: none are set.)
fn sidecar_host_config(target: &str) -> HostConfig {
    HostConfig {
        network_mode: Some(format!("container:{target}")),
        cap_add: Some(vec!["NET_ADMIN".to_string()]),
        auto_remove: Some(false),
        ..Default::default()
    }
}

/// What the intercepted container sees, handed to its agent: its name, environment and mounts
/// (the agent reports them to clients, and sees the mounts itself through `volumes_from`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AppView {
    container: String,
    env: std::collections::BTreeMap<String, String>,
    mounts: Vec<(String, bool)>,
}

impl AppView {
    fn of(c: &bollard::models::ContainerInspectResponse) -> AppView {
        let env = c
            .config
            .as_ref()
            .and_then(|c| c.env.as_ref())
            .map(|e| {
                e.iter()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let mut mounts: Vec<(String, bool)> = c
            .mounts
            .iter()
            .flatten()
            .filter_map(|m| Some((m.destination.clone()?, !m.rw.unwrap_or(true))))
            .collect();
        mounts.sort();
        AppView {
            container: c
                .name
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            env,
            mounts,
        }
    }

    /// The agent's `TP_APP_*` variables for this container.
    fn fill(&self, env: &mut AgentEnv) {
        env.app_container = Some(self.container.clone());
        env.app_env = Some(self.env.clone());
        env.app_mounts = Some(
            self.mounts
                .iter()
                .map(|(path, read_only)| AppMount {
                    path: path.clone(),
                    read_only: *read_only,
                })
                .collect(),
        );
    }
}

fn agent_container_body(
    cfg: &DockerConfig,
    spec: &AgentSpec,
    app: &AppView,
) -> ContainerCreateBody {
    let mut labels = agent_labels(&spec.namespace, &spec.workload, &spec.target_id, ROLE_AGENT);
    labels.insert(PORTS_LABEL.to_string(), ports_csv(&spec.ports));
    let mut host_config = sidecar_host_config(&spec.target_id);
    // The agent sees the workload's volumes at the same paths, to serve them to clients.
    host_config.volumes_from = Some(vec![spec.target_id.clone()]);
    let mut agent_env = AgentEnv {
        manager_addr: format!("{}:{}", cfg.manager_host, cfg.grpc_port),
        tunnel_addr: format!("{}:{}", cfg.manager_host, cfg.tunnel_port),
        namespace: spec.namespace.clone(),
        workload: spec.workload.clone(),
        ports: spec.ports.clone(),
        pod_ip: Some(spec.target_ip.clone()),
        token: cfg.agent_token.clone(),
        ..Default::default()
    };
    app.fill(&mut agent_env);
    ContainerCreateBody {
        image: Some(cfg.agent_image.clone()),
        cmd: Some(vec!["agent".to_string()]),
        env: Some(
            agent_env
                .to_env()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        labels: Some(labels),
        stop_signal: Some("SIGTERM".to_string()),
        stop_timeout: Some(i64::from(AGENT_STOP_TIMEOUT_SECS)),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn cleanup_container_body(agent: &AgentRef) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(agent.image.clone()),
        cmd: Some(vec!["agent-cleanup".to_string()]),
        labels: Some(agent_labels(
            &agent.namespace,
            &agent.workload,
            &agent.target,
            ROLE_AGENT_CLEANUP,
        )),
        host_config: Some(sidecar_host_config(&agent.target)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /containers/json?all=1` from an Engine 20.10 (API 1.41) running a docker-compose 1.29
    /// project `shop` (web ×2 with an exposed and a published port, a UDP `stats` service, a `db`
    /// with no ports, a stopped `migrate`, a `compose run` one-off), standalone containers, and
    /// our own manager and agent containers.
    /// (Kept in `docker/src/testdata/containers.json`.)
    const CONTAINERS_JSON: &str = include_str!("testdata/containers.json");

    fn containers() -> Vec<ContainerSummary> {
        serde_json::from_str(CONTAINERS_JSON).expect("Engine API 1.41 /containers/json parses")
    }

    fn tcp(port: u16) -> PortSpec {
        PortSpec {
            name: String::new(),
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn udp(port: u16) -> PortSpec {
        PortSpec {
            name: String::new(),
            port,
            protocol: Protocol::Udp,
        }
    }

    fn by_name(ws: &[WorkloadInfo], name: &str) -> WorkloadInfo {
        ws.iter()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("workload {name} missing from {ws:?}"))
            .clone()
    }

    #[test]
    fn compose_project_workloads() {
        let ws = workloads_from_containers("shop", &containers());
        let names: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
        // Sorted; the stopped `migrate`, the one-off run, the manager and agents are not workloads.
        assert_eq!(names, ["db", "stats", "web"]);

        let web = by_name(&ws, "web");
        assert_eq!(web.kind, KIND_COMPOSE_SERVICE);
        assert_eq!(web.namespace, "shop");
        // Exposed 8080 and published 9000 (listed once although bound on v4 and v6).
        assert_eq!(web.ports, vec![tcp(8080), tcp(9000)]);
        assert_eq!(web.not_interceptable, None);
        assert!(web.agent_installed);

        let stats = by_name(&ws, "stats");
        assert_eq!(stats.ports, vec![udp(8125), tcp(8126)]);
        // Its agent exists but exited: not installed.
        assert!(!stats.agent_installed);

        let db = by_name(&ws, "db");
        assert!(db.ports.is_empty());
        assert_eq!(db.not_interceptable, None, "no expose: still a workload");
        assert!(db.open_ports);
        assert!(!db.agent_installed);
    }

    #[test]
    fn default_namespace_is_standalone_containers() {
        let ws = workloads_from_containers(DEFAULT_NAMESPACE, &containers());
        let names: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["hostnet", "nginx-test"]);
        let nginx = by_name(&ws, "nginx-test");
        assert_eq!(nginx.kind, KIND_CONTAINER);
        assert_eq!(nginx.ports, vec![tcp(80)]);
        assert_eq!(nginx.not_interceptable, None);
        let host = by_name(&ws, "hostnet");
        assert_eq!(host.not_interceptable.as_deref(), Some(HOST_NETWORK_REASON));
    }

    #[test]
    fn unknown_project_has_no_workloads() {
        assert!(workloads_from_containers("nope", &containers()).is_empty());
        assert!(!project_has_containers("nope", &containers()));
        assert!(project_has_containers("shop", &containers()));
    }

    #[test]
    fn namespace_network_prefers_project_default() {
        let cs = containers();
        assert_eq!(
            namespace_network("shop", &cs).as_deref(),
            Some("shop_default")
        );
        assert_eq!(
            namespace_network(DEFAULT_NAMESPACE, &cs).as_deref(),
            Some("bridge")
        );
        assert_eq!(namespace_network("nope", &cs), None);

        // Without shop_default, the first network by name.
        let mut cs = containers();
        for c in &mut cs {
            if let Some(nets) = c
                .network_settings
                .as_mut()
                .and_then(|s| s.networks.as_mut())
            {
                nets.remove("shop_default");
            }
        }
        assert_eq!(
            namespace_network("shop", &cs).as_deref(),
            Some("shop_backend")
        );
    }

    #[test]
    fn project_network_from_network_list() {
        let nets = |v: &[(&str, Option<&str>)]| -> Vec<(String, Option<String>)> {
            v.iter()
                .map(|(n, p)| (n.to_string(), p.map(str::to_string)))
                .collect()
        };
        let list = nets(&[
            ("bridge", None),
            ("shop_front", Some("shop")),
            ("shop_default", Some("shop")),
        ]);
        assert_eq!(
            pick_project_network("shop", &list).as_deref(),
            Some("shop_default")
        );
        let list = nets(&[("bridge", None), ("shop_front", Some("shop"))]);
        assert_eq!(
            pick_project_network("shop", &list).as_deref(),
            Some("shop_front")
        );
        let list = nets(&[("bridge", None), ("shop", None)]);
        assert_eq!(pick_project_network("shop", &list).as_deref(), Some("shop"));
        // A substring of another project's name is not a match.
        let list = nets(&[("shopping_default", Some("shopping"))]);
        assert_eq!(pick_project_network("shop", &list), None);
    }

    #[test]
    fn targets_are_running_replicas_with_ips() {
        let cs = containers();
        let t = workload_targets("shop", "web", &cs, Some("shop_default"));
        assert_eq!(
            t,
            vec![
                Target {
                    replica: 1,
                    id: "aaa1111111111111111111111111111111111111111111111111111111111111".into(),
                    ip: "172.20.0.3".into()
                },
                Target {
                    replica: 2,
                    id: "aaa2222222222222222222222222222222222222222222222222222222222222".into(),
                    ip: "172.20.0.4".into()
                },
            ]
        );
        // Without a preferred network, the first network by name.
        let t = workload_targets("shop", "web", &cs, None);
        assert_eq!(t[1].ip, "172.21.0.2");
        let t = workload_targets(DEFAULT_NAMESPACE, "nginx-test", &cs, Some("bridge"));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].replica, 1);
        assert_eq!(t[0].ip, "172.17.0.2");
        assert!(workload_targets("shop", "migrate", &cs, None).is_empty());
    }

    #[test]
    fn agents_are_found_by_labels() {
        let cs = containers();
        let all = agents_in(None, None, &cs);
        assert_eq!(
            all.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            ["tp-agent-shop-stats-1", "tp-agent-shop-web-1"]
        );
        let web = agents_in(Some("shop"), Some("web"), &cs);
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].ports, vec![8080]);
        assert!(web[0].running);
        assert_eq!(web[0].image, "telepresence:0.1.0-abc123");
        assert_eq!(
            web[0].target,
            "aaa1111111111111111111111111111111111111111111111111111111111111"
        );
        assert!(agents_in(Some("other"), None, &cs).is_empty());
    }

    #[test]
    fn plan_creates_missing_and_keeps_matching_agents() {
        let cs = containers();
        let targets = workload_targets("shop", "web", &cs, Some("shop_default"));
        let agents = agents_in(Some("shop"), Some("web"), &cs);
        let plan = plan_agents("shop", "web", &[8080], &targets, &agents);
        assert_eq!(plan.keep, vec!["tp-agent-shop-web-1".to_string()]);
        assert!(plan.remove.is_empty());
        assert_eq!(plan.create.len(), 1);
        let spec = &plan.create[0];
        assert_eq!(spec.name, "tp-agent-shop-web-2");
        assert_eq!(
            spec.target_id,
            "aaa2222222222222222222222222222222222222222222222222222222222222"
        );
        assert_eq!(spec.target_ip, "172.20.0.4");
        assert_eq!(spec.ports, vec![8080]);
    }

    #[test]
    fn plan_replaces_agents_with_other_ports_dead_or_stale() {
        let cs = containers();
        let targets = workload_targets("shop", "web", &cs, Some("shop_default"));
        let agents = agents_in(Some("shop"), Some("web"), &cs);
        // Different ports: replace replica 1's agent, create replica 2's.
        let plan = plan_agents("shop", "web", &[8080, 9000], &targets, &agents);
        assert!(plan.keep.is_empty());
        assert_eq!(plan.remove.len(), 1);
        assert_eq!(plan.remove[0].name, "tp-agent-shop-web-1");
        assert_eq!(
            plan.create
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["tp-agent-shop-web-1", "tp-agent-shop-web-2"]
        );

        // The workload container was recreated: the agent's target is stale.
        let mut recreated = targets.clone();
        recreated[0].id = "new0000".into();
        let plan = plan_agents("shop", "web", &[8080], &recreated, &agents);
        assert_eq!(plan.remove.len(), 1);
        assert_eq!(plan.create[0].target_id, "new0000");

        // An exited agent is replaced.
        let stats_targets = workload_targets("shop", "stats", &cs, None);
        let stats_agents = agents_in(Some("shop"), Some("stats"), &cs);
        let plan = plan_agents("shop", "stats", &[8126], &stats_targets, &stats_agents);
        assert_eq!(plan.remove.len(), 1);
        assert_eq!(plan.create.len(), 1);

        // Scaled down to replica 2 only: replica 1's agent goes.
        let plan = plan_agents("shop", "web", &[8080], &targets[1..], &agents);
        assert_eq!(plan.remove[0].name, "tp-agent-shop-web-1");
        assert_eq!(plan.create[0].name, "tp-agent-shop-web-2");
    }

    #[test]
    fn agent_ports_are_checked() {
        let ws = workloads_from_containers("shop", &containers());
        let web = by_name(&ws, "web");
        assert!(check_agent_ports(&web, &[8080]).is_ok());
        let err = check_agent_ports(&web, &[8081]).unwrap_err().to_string();
        assert!(err.contains("does not expose port 8081"), "{err}");
        assert!(err.contains("8080/TCP, 9000/TCP"), "{err}");
        assert!(check_agent_ports(&web, &[]).is_err());
        let db = by_name(&ws, "db");
        assert!(
            check_agent_ports(&db, &[5432]).is_ok(),
            "declares none: any port"
        );
    }

    #[test]
    fn agent_container_is_a_labelled_sidecar() {
        let cfg = DockerConfig {
            namespace: "shop".into(),
            manager_host: "172.20.0.10".into(),
            grpc_port: 8081,
            tunnel_port: 8082,
            agent_image: "telepresence:0.1.0-abc123".into(),
            agent_token: None,
        };
        let spec = AgentSpec {
            name: agent_name("shop", "web", 2),
            namespace: "shop".into(),
            workload: "web".into(),
            target_id: "aaa222".into(),
            target_ip: "172.20.0.4".into(),
            ports: normalize_ports(&[9000, 8080, 8080]),
        };
        assert_eq!(spec.name, "tp-agent-shop-web-2");
        // The app view comes from `docker inspect` of the workload container.
        let inspect: bollard::models::ContainerInspectResponse = serde_json::from_str(
            r#"{"Name": "/shop_web_2",
                "Config": {"Env": ["GREETING=hello=world", "PATH=/usr/bin"]},
                "Mounts": [
                  {"Type": "volume", "Name": "shop_data", "Destination": "/data", "RW": true},
                  {"Type": "bind", "Source": "/etc/app", "Destination": "/etc/app", "RW": false}
                ]}"#,
        )
        .unwrap();
        let app = AppView::of(&inspect);
        assert_eq!(app.container, "shop_web_2");
        assert_eq!(app.env["GREETING"], "hello=world");
        assert_eq!(
            app.mounts,
            vec![("/data".to_string(), false), ("/etc/app".to_string(), true)]
        );
        let body = agent_container_body(&cfg, &spec, &app);
        assert_eq!(body.image.as_deref(), Some("telepresence:0.1.0-abc123"));
        assert_eq!(body.cmd, Some(vec!["agent".to_string()]));
        assert_eq!(
            body.env.unwrap(),
            [
                "TP_MANAGER_ADDR=172.20.0.10:8081",
                "TP_TUNNEL_ADDR=172.20.0.10:8082",
                "TP_NAMESPACE=shop",
                "TP_WORKLOAD=web",
                "TP_PORTS=8080,9000",
                "TP_POD_IP=172.20.0.4",
                "TP_APP_CONTAINER=shop_web_2",
                r#"TP_APP_ENV={"GREETING":"hello=world","PATH":"/usr/bin"}"#,
                r#"TP_APP_MOUNTS=[{"path":"/data","read_only":false},{"path":"/etc/app","read_only":true}]"#,
            ]
        );
        let labels = body.labels.unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], "telepresence");
        assert_eq!(labels[ROLE_LABEL], "agent");
        assert_eq!(labels[NAMESPACE_LABEL], "shop");
        assert_eq!(labels[WORKLOAD_LABEL], "web");
        assert_eq!(labels[TARGET_LABEL], "aaa222");
        assert_eq!(labels[PORTS_LABEL], "8080,9000");
        let hc = body.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("container:aaa222"));
        assert_eq!(hc.cap_add, Some(vec!["NET_ADMIN".to_string()]));
        assert_eq!(hc.auto_remove, Some(false));
        assert_eq!(hc.volumes_from, Some(vec!["aaa222".to_string()]));
        // network_mode container: rejects these.
        assert!(body.hostname.is_none() && body.exposed_ports.is_none());
        assert!(hc.port_bindings.is_none() && hc.dns.is_none());
    }

    #[test]
    fn cleanup_container_reuses_the_agents_image_target_and_labels() {
        let agent = agents_in(Some("shop"), Some("stats"), &containers()).remove(0);
        let body = cleanup_container_body(&agent);
        assert_eq!(body.cmd, Some(vec!["agent-cleanup".to_string()]));
        assert_eq!(body.image.as_deref(), Some("telepresence:0.1.0-abc123"));
        let labels = body.labels.unwrap();
        assert_eq!(labels[ROLE_LABEL], "agent-cleanup");
        assert_eq!(labels[WORKLOAD_LABEL], "stats");
        let hc = body.host_config.unwrap();
        assert_eq!(
            hc.network_mode.as_deref(),
            Some("container:bbb1111111111111111111111111111111111111111111111111111111111111")
        );
        assert_eq!(hc.cap_add, Some(vec!["NET_ADMIN".to_string()]));
        assert_eq!(cleanup_name(&agent.name), "tp-agent-cleanup-shop-stats-1");
    }

    #[test]
    fn ports_label_round_trip() {
        assert_eq!(parse_ports("9000, 8080,8080,x,0"), vec![8080, 9000]);
        assert_eq!(ports_csv(&parse_ports("9000,8080")), "8080,9000");
        assert!(parse_ports("").is_empty());
    }
}
