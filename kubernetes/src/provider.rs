//! [`KubeProvider`]: the [`Provider`] over `kube::runtime` reflector stores of Deployments,
//! ReplicaSets, StatefulSets, Pods, Services, Namespaces and the agents ConfigMaps (cluster-wide,
//! or one watch per namespace when the manager is limited to some). Reads come from the stores;
//! agent changes write the ConfigMap entry, wait until the store has it (so the webhook sees it)
//! and trigger a rollout through a pod-template annotation.

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

use super::configmap::{self, AgentConfig};
use super::ports::{self, Workload, KIND_REPLICASET};
use super::stores::{apis, Watched};
use super::webhook::{BoxFuture, ConfigSource, SourceError};
use super::{
    InjectPolicy, AGENTS_CONFIGMAP, AGENT_CONTAINER, INJECT_ANNOTATION, RESTART_ANNOTATION,
};
use manager::provider::{AgentRequest, Provider, ProviderError, WorkloadInfo};

/// The namespace label naming the Pod Security level the API server enforces there.
pub const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// How the Kubernetes manager is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// The namespace the manager runs in.
    pub manager_namespace: String,
    /// Host agents use to reach the manager (Service IP or DNS name).
    pub manager_host: String,
    pub grpc_port: u16,
    pub tunnel_port: u16,
    pub agent_image: String,
    pub policy: InjectPolicy,
    /// Namespaces the manager may use; empty: the whole cluster.
    pub namespaces: Vec<String>,
    /// The API server URL shown to users.
    pub server: String,
    /// How long startup waits for the first list of every watched kind.
    pub sync_timeout: Duration,
    /// How long installing an agent waits until every live pod of the workload has it (zero:
    /// return right after triggering the rollout).
    pub rollout_timeout: Duration,
}

/// The Kubernetes [`Provider`].
pub struct KubeProvider {
    client: Client,
    cfg: KubeConfig,
    deployments: Watched<Deployment>,
    replicasets: Watched<ReplicaSet>,
    statefulsets: Watched<StatefulSet>,
    pods: Watched<Pod>,
    services: Watched<Service>,
    configmaps: Watched<ConfigMap>,
    namespaces: Option<Watched<Namespace>>,
    tasks: Vec<JoinHandle<()>>,
    /// Serialises agent changes (ConfigMap read-modify-write).
    agent_ops: tokio::sync::Mutex<()>,
    /// Found once by [`KubeProvider::cluster_subnets`].
    service_cidrs: tokio::sync::OnceCell<Vec<String>>,
    /// The manager's credentials: their agent token goes into Secret
    /// [`crate::auth::AGENT_SECRET`] of every namespace an agent is injected in.
    auth: std::sync::OnceLock<std::sync::Arc<manager::auth::Auth>>,
}

impl Drop for KubeProvider {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn api_err(what: &str, e: kube::Error) -> ProviderError {
    ProviderError::Api(format!("{what}: {e}"))
}

impl KubeProvider {
    /// Starts the watches and waits until every store holds its first list.
    pub async fn start(client: Client, cfg: KubeConfig) -> Result<Self, ProviderError> {
        let mut tasks = Vec::new();
        let ns = &cfg.namespaces;
        let all = watcher::Config::default;
        let p = KubeProvider {
            deployments: Watched::start(apis(&client, ns), "deployments", all(), &mut tasks),
            replicasets: Watched::start(apis(&client, ns), "replicasets", all(), &mut tasks),
            statefulsets: Watched::start(apis(&client, ns), "statefulsets", all(), &mut tasks),
            pods: Watched::start(apis(&client, ns), "pods", all(), &mut tasks),
            services: Watched::start(apis(&client, ns), "services", all(), &mut tasks),
            configmaps: Watched::start(
                apis(&client, ns),
                "configmaps",
                all().fields(&format!("metadata.name={AGENTS_CONFIGMAP}")),
                &mut tasks,
            ),
            namespaces: ns.is_empty().then(|| {
                Watched::start(
                    vec![Api::all(client.clone())],
                    "namespaces",
                    all(),
                    &mut tasks,
                )
            }),
            tasks,
            client,
            cfg,
            agent_ops: tokio::sync::Mutex::new(()),
            service_cidrs: tokio::sync::OnceCell::new(),
            auth: std::sync::OnceLock::new(),
        };
        let t = p.cfg.sync_timeout;
        p.deployments.ready(t).await?;
        p.replicasets.ready(t).await?;
        p.statefulsets.ready(t).await?;
        p.pods.ready(t).await?;
        p.services.ready(t).await?;
        p.configmaps.ready(t).await?;
        if let Some(n) = &p.namespaces {
            n.ready(t).await?;
        }
        tracing::info!("kubernetes provider: watches synced");
        Ok(p)
    }

    /// The configuration this provider was made with.
    pub fn config(&self) -> &KubeConfig {
        &self.cfg
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Service and pod CIDRs (see [`super::cidr`]).
    pub async fn cluster_subnets(&self, namespace: &str) -> Result<Vec<String>, ProviderError> {
        let ns = if namespace.is_empty() {
            &self.cfg.manager_namespace
        } else {
            namespace
        };
        // The service range does not change while the cluster runs: probe it once.
        let service = self
            .service_cidrs
            .get_or_try_init(|| super::cidr::service_cidrs(&self.client, ns))
            .await;
        let mut out = match service {
            Ok(v) => v.clone(),
            Err(e) => {
                tracing::warn!("service CIDR unknown: {e}");
                Vec::new()
            }
        };
        let ips: Vec<IpAddr> = self
            .pods
            .all()
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.host_network) != Some(true))
            .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
            .collect();
        for c in super::cidr::pod_cidrs(&self.client, ips).await {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        if out.is_empty() {
            return Err(ProviderError::Api(
                "neither the service CIDR nor any pod CIDR could be found".into(),
            ));
        }
        Ok(out)
    }

    /// The cluster DNS domain (see [`super::cidr::cluster_domain`]).
    pub fn cluster_domain(&self) -> String {
        super::cidr::cluster_domain()
    }

    /// The namespace's workloads, without telepresence's own (the traffic-manager).
    fn workloads(&self, namespace: &str) -> Vec<Workload> {
        let d = self.deployments.in_namespace(namespace);
        let r = self.replicasets.in_namespace(namespace);
        let s = self.statefulsets.in_namespace(namespace);
        let mut ws = ports::workloads(
            namespace,
            &d.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            &r.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            &s.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        );
        ws.retain(|w| {
            w.pod_labels().get(super::MANAGED_BY.0).map(String::as_str) != Some(super::MANAGED_BY.1)
        });
        ws
    }

    fn services_of(&self, w: &Workload) -> Vec<Arc<Service>> {
        let labels = w.pod_labels();
        self.services
            .in_namespace(&w.namespace)
            .into_iter()
            .filter(|s| ports::selects(s, &labels))
            .collect()
    }

    fn matches(&self, w: &Workload) -> Result<Vec<ports::PortMatch>, ports::NotInterceptable> {
        let svcs = self.services_of(w);
        ports::match_ports(
            &w.template,
            &svcs.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        )
    }

    /// Whether the workload's stored agent config says it is replaced.
    fn stored_replace(&self, namespace: &str, workload: &str) -> bool {
        self.stored_config(namespace, workload)
            .and_then(|y| configmap::AgentConfig::from_yaml(&y).ok())
            .is_some_and(|c| c.replace)
    }

    /// The ports of service `service`, which must select the workload (`--service`).
    fn ports_of_service(
        &self,
        w: &Workload,
        service: &str,
    ) -> Result<Vec<manager::provider::PortSpec>, ProviderError> {
        let svcs = self.services_of(w);
        let names: Vec<String> = svcs
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        let Some(svc) = svcs
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(service))
        else {
            return Err(ProviderError::Invalid(format!(
                "no service named \"{service}\" selects {} (its services: {}); use one of them with --service",
                w.name,
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            )));
        };
        ports::match_ports(&w.template, &[svc.as_ref()])
            .map(|m| ports::port_specs(&m))
            .map_err(|e| ProviderError::Invalid(e.to_string()))
    }

    /// Waits until every live pod of the workload runs (`replaced = false`) or lacks
    /// (`replaced = true`) the app container `container`.
    async fn await_replaced(
        &self,
        w: &Workload,
        container: &str,
        replaced: bool,
    ) -> Result<(), ProviderError> {
        let timeout = self.cfg.rollout_timeout;
        if timeout.is_zero() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pods = self.pods_of(w);
            let done = pods.iter().all(|p| {
                p.spec
                    .as_ref()
                    .is_some_and(|s| s.containers.iter().any(|c| c.name == container) != replaced)
            });
            if done {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProviderError::Api(format!(
                    "the rollout of {} {} did not finish within {}s",
                    w.kind,
                    w.name,
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The agent config stored for a workload, if any.
    pub fn stored_config(&self, namespace: &str, workload: &str) -> Option<String> {
        self.configmaps
            .in_namespace(namespace)
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(AGENTS_CONFIGMAP))
            .and_then(|c| c.data.as_ref()?.get(workload).cloned())
    }

    /// The pods of a workload (not being deleted).
    fn pods_of(&self, w: &Workload) -> Vec<Arc<Pod>> {
        let labels = w.pod_labels();
        if labels.is_empty() {
            return Vec::new();
        }
        self.pods
            .in_namespace(&w.namespace)
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                let pl = p.metadata.labels.as_ref();
                labels
                    .iter()
                    .all(|(k, v)| pl.and_then(|l| l.get(k)) == Some(v))
            })
            .filter(|p| match super::webhook::pod_workload(p) {
                Some((kind, name)) => kind == w.kind && name == w.name,
                None => false,
            })
            .collect()
    }

    fn info(&self, w: &Workload) -> WorkloadInfo {
        let (ports, reason) = match self.matches(w) {
            Ok(m) => (ports::port_specs(&m), None),
            Err(r) => (Vec::new(), Some(r.to_string())),
        };
        let reason = reason.or_else(|| self.policy_refusal(w)).or_else(|| {
            self.plan(w)
                .ok()
                .and_then(|c| self.pod_security_refusal(w, &c))
        });
        WorkloadInfo {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            kind: w.kind.into(),
            ports,
            not_interceptable: reason,
            open_ports: false,
            agent_installed: self.stored_config(&w.namespace, &w.name).is_some(),
        }
    }

    /// Why the injection policy keeps an agent out of the workload, if it does.
    fn policy_refusal(&self, w: &Workload) -> Option<String> {
        match (w.annotation(INJECT_ANNOTATION), self.cfg.policy) {
            (Some("disabled"), _) => Some(format!(
                "agent injection is disabled by the annotation {INJECT_ANNOTATION}=disabled"
            )),
            (Some("enabled"), _) | (_, InjectPolicy::OnDemand) => None,
            (_, InjectPolicy::WhenEnabled) => Some(format!(
                "the injection policy is WhenEnabled: annotate its pod template with {INJECT_ANNOTATION}=enabled"
            )),
        }
    }

    /// The Pod Security level enforced on `namespace` (its `pod-security.kubernetes.io/enforce`
    /// label), when the namespaces are watched (a manager limited to some namespaces may not
    /// read them: then nothing is known and nothing refused ahead of the API server).
    fn enforced_level(&self, namespace: &str) -> Option<String> {
        self.namespaces
            .as_ref()?
            .all()
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(namespace))?
            .metadata
            .labels
            .as_ref()?
            .get(POD_SECURITY_ENFORCE)
            .cloned()
    }

    /// Why the agent `cfg` cannot be admitted in the workload's namespace: its redirect needs the
    /// init container with root and NET_ADMIN ([`super::patch`]), which Pod Security levels
    /// `baseline` and `restricted` reject; refused here instead of by the API server at rollout
    /// (where the controller would create no pod at all).
    fn pod_security_refusal(&self, w: &Workload, cfg: &AgentConfig) -> Option<String> {
        if !cfg.needs_redirect() {
            return None;
        }
        let level = self.enforced_level(&w.namespace)?;
        if level != "baseline" && level != "restricted" {
            return None;
        }
        let ports: Vec<String> = cfg
            .ports
            .iter()
            .filter(|p| p.mode == configmap::PortMode::Redirect)
            .map(|p| p.service_port.to_string())
            .collect();
        Some(format!(
            "service port {} needs the {} init container with NET_ADMIN (its targetPort is numeric, shared with a port that does not name it, or its Service is headless), which Pod Security level {level:?} enforced on namespace {} forbids: target the container port by name from every Service port that is not headless, or label the namespace {POD_SECURITY_ENFORCE}=privileged",
            ports.join(", "),
            super::INIT_CONTAINER,
            w.namespace,
        ))
    }

    fn find(&self, namespace: &str, name: &str) -> Result<Workload, ProviderError> {
        if !self.exists(namespace) {
            return Err(ProviderError::NamespaceNotFound(namespace.into()));
        }
        self.workloads(namespace)
            .into_iter()
            .find(|w| w.name == name)
            .ok_or_else(|| ProviderError::WorkloadNotFound {
                name: name.into(),
                namespace: namespace.into(),
            })
    }

    fn exists(&self, namespace: &str) -> bool {
        match &self.namespaces {
            Some(n) => n
                .all()
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(namespace)),
            None => self.cfg.namespaces.iter().any(|n| n == namespace),
        }
    }

    /// Plans the agent config of a workload.
    pub fn plan(&self, w: &Workload) -> Result<AgentConfig, ProviderError> {
        let m = self
            .matches(w)
            .map_err(|e| ProviderError::Invalid(e.to_string()))?;
        configmap::plan(
            w,
            &m,
            &format!("{}:{}", self.cfg.manager_host, self.cfg.grpc_port),
            &format!("{}:{}", self.cfg.manager_host, self.cfg.tunnel_port),
        )
        .map_err(|e| ProviderError::Invalid(e.to_string()))
    }

    /// Sets (`Some`) or removes (`None`) the workload's ConfigMap entry, then waits until the
    /// store shows it.
    async fn write_entry(
        &self,
        namespace: &str,
        workload: &str,
        value: Option<String>,
    ) -> Result<(), ProviderError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let exists = self
            .configmaps
            .in_namespace(namespace)
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some(AGENTS_CONFIGMAP));
        match (&value, exists) {
            (None, false) => return Ok(()),
            (Some(v), false) => {
                let cm = ConfigMap {
                    metadata: kube::api::ObjectMeta {
                        name: Some(AGENTS_CONFIGMAP.into()),
                        namespace: Some(namespace.into()),
                        labels: Some(BTreeMap::from([(
                            super::MANAGED_BY.0.to_string(),
                            super::MANAGED_BY.1.to_string(),
                        )])),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(workload.to_string(), v.clone())])),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &cm).await {
                    Ok(_) => {}
                    // Created meanwhile (by another manager): patch it below.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        self.patch_entry(&api, workload, &value).await?;
                    }
                    Err(e) => return Err(api_err("create ConfigMap telepresence-agents", e)),
                }
            }
            (_, true) => self.patch_entry(&api, workload, &value).await?,
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.stored_config(namespace, workload) != value {
            if tokio::time::Instant::now() > deadline {
                return Err(ProviderError::Api(format!(
                    "the ConfigMap {AGENTS_CONFIGMAP} in {namespace} was written but its watch did not show the change within 10s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn patch_entry(
        &self,
        api: &Api<ConfigMap>,
        workload: &str,
        value: &Option<String>,
    ) -> Result<(), ProviderError> {
        let patch = serde_json::json!({ "data": { workload: value } });
        api.patch(
            AGENTS_CONFIGMAP,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| api_err("update ConfigMap telepresence-agents", e))?;
        Ok(())
    }

    /// Makes the workload's controller replace its pods: a new pod-template annotation
    /// (Deployment, StatefulSet), or deleting the pods (a bare ReplicaSet does not roll out).
    pub async fn rollout(&self, w: &Workload) -> Result<(), ProviderError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis().to_string())
            .unwrap_or_default();
        let patch = serde_json::json!({
            "spec": { "template": { "metadata": { "annotations": { RESTART_ANNOTATION: stamp } } } }
        });
        let pp = PatchParams::default();
        let what = format!("roll out {} {}", w.kind, w.name);
        match w.kind {
            ports::KIND_DEPLOYMENT => {
                Api::<Deployment>::namespaced(self.client.clone(), &w.namespace)
                    .patch(&w.name, &pp, &Patch::Merge(&patch))
                    .await
                    .map_err(|e| api_err(&what, e))?;
            }
            ports::KIND_STATEFULSET => {
                let sts = Api::<StatefulSet>::namespaced(self.client.clone(), &w.namespace)
                    .patch(&w.name, &pp, &Patch::Merge(&patch))
                    .await
                    .map_err(|e| api_err(&what, e))?;
                let on_delete = sts
                    .spec
                    .update_strategy
                    .and_then(|u| u.type_)
                    .is_some_and(|t| t == "OnDelete");
                if on_delete {
                    self.delete_pods(w).await?;
                }
            }
            KIND_REPLICASET => self.delete_pods(w).await?,
            _ => {}
        }
        tracing::info!(namespace = %w.namespace, workload = %w.name, "rollout triggered");
        Ok(())
    }

    /// Deletes the workload's pods (its controller recreates them, through the webhook).
    async fn delete_pods(&self, w: &Workload) -> Result<(), ProviderError> {
        let what = format!("delete the pods of {} {}", w.kind, w.name);
        let api = Api::<Pod>::namespaced(self.client.clone(), &w.namespace);
        for p in self.pods_of(w) {
            let name = p.metadata.name.clone().unwrap_or_default();
            match api.delete(&name, &DeleteParams::default()).await {
                // Already gone: fine.
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(api_err(&what, e)),
            }
        }
        Ok(())
    }

    /// Waits until no live pod of the workload runs without the agent (old pods terminating
    /// do not count), so an intercept never starts while old pods still take traffic.
    async fn await_rollout(&self, w: &Workload) -> Result<(), ProviderError> {
        let timeout = self.cfg.rollout_timeout;
        if timeout.is_zero() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.agent_pods(w).1 > 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(ProviderError::Api(format!(
                    "the rollout of {} {} did not finish within {}s: {}",
                    w.kind,
                    w.name,
                    timeout.as_secs(),
                    super::diagnose::agent_problem(w.kind, &w.name, &self.pods_of(w))
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// (pods with the agent, pods without) among the workload's live pods.
    fn agent_pods(&self, w: &Workload) -> (usize, usize) {
        let pods = self.pods_of(w);
        let with = pods
            .iter()
            .filter(|p| {
                p.spec
                    .as_ref()
                    .is_some_and(|s| s.containers.iter().any(|c| c.name == AGENT_CONTAINER))
            })
            .count();
        (with, pods.len() - with)
    }

    /// Removes the agents of every workload in `namespace` (`uninstall --all-agents`).
    pub async fn remove_all_agents(&self, namespace: &str) -> Result<(), ProviderError> {
        for w in self.workloads(namespace) {
            if self.stored_config(namespace, &w.name).is_some() {
                self.remove_agent(namespace, &w.name).await?;
            }
        }
        Ok(())
    }

    /// Removes every agent this manager's ConfigMaps know of, in every namespace (before the
    /// manager itself is uninstalled). Returns how many workloads were rolled out.
    pub async fn remove_all_agents_everywhere(&self) -> Result<usize, ProviderError> {
        let mut entries: Vec<(String, String)> = self
            .configmaps
            .all()
            .iter()
            .filter(|c| c.metadata.name.as_deref() == Some(AGENTS_CONFIGMAP))
            .flat_map(|c| {
                let ns = c.metadata.namespace.clone().unwrap_or_default();
                c.data
                    .iter()
                    .flat_map(|d| d.keys().cloned())
                    .map(move |k| (ns.clone(), k))
                    .collect::<Vec<_>>()
            })
            .collect();
        entries.sort();
        let mut n = 0;
        for (ns, name) in entries {
            match self.remove_agent(&ns, &name).await {
                Ok(()) => n += 1,
                // The workload is gone: just drop its entry.
                Err(ProviderError::WorkloadNotFound { .. }) => {
                    let _guard = self.agent_ops.lock().await;
                    self.write_entry(&ns, &name, None).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// What keeps the workload's agent from arriving, as far as the pods tell.
    pub fn agent_problem(&self, namespace: &str, workload: &str) -> Option<String> {
        let w = self.find(namespace, workload).ok()?;
        Some(super::diagnose::agent_problem(
            w.kind,
            workload,
            &self.pods_of(&w),
        ))
    }
}

#[async_trait]
impl Provider for KubeProvider {
    fn cluster_type(&self) -> protocol::ClusterType {
        protocol::ClusterType::Kubernetes
    }

    async fn cluster_subnets(&self, namespace: &str) -> Result<Vec<String>, ProviderError> {
        KubeProvider::cluster_subnets(self, namespace).await
    }

    fn cluster_domain(&self) -> String {
        KubeProvider::cluster_domain(self)
    }

    fn server(&self) -> String {
        self.cfg.server.clone()
    }

    fn agent_image(&self) -> String {
        self.cfg.agent_image.clone()
    }

    async fn namespace_exists(&self, namespace: &str) -> Result<bool, ProviderError> {
        Ok(self.exists(namespace))
    }

    async fn list_workloads(&self, namespace: &str) -> Result<Vec<WorkloadInfo>, ProviderError> {
        Ok(self
            .workloads(namespace)
            .iter()
            .map(|w| self.info(w))
            .collect())
    }

    async fn get_workload(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<WorkloadInfo, ProviderError> {
        Ok(self.info(&self.find(namespace, name)?))
    }

    async fn ensure_agent(&self, req: &AgentRequest) -> Result<(), ProviderError> {
        let _guard = self.agent_ops.lock().await;
        let w = self.find(&req.namespace, &req.workload)?;
        if let Some(r) = self.policy_refusal(&w) {
            return Err(ProviderError::Invalid(r));
        }
        let mut cfg = self.plan(&w)?;
        if let Some(r) = self.pod_security_refusal(&w, &cfg) {
            return Err(ProviderError::Invalid(r));
        }
        // A replace in force stays in force (`set_replaced` ends it).
        cfg.replace = self.stored_replace(&w.namespace, &w.name);
        let yaml = cfg.to_yaml();
        let changed = self.stored_config(&w.namespace, &w.name).as_deref() != Some(&yaml);
        if changed {
            self.write_entry(&w.namespace, &w.name, Some(yaml)).await?;
        }
        // Unchanged config: roll out only if no pod has the agent yet (e.g. the webhook was
        // down at the last rollout); a rollout in progress is left alone.
        if changed || self.agent_pods(&w).0 == 0 {
            self.rollout(&w).await?;
        }
        // Wait without the lock: the webhook may need it meanwhile.
        drop(_guard);
        self.await_rollout(&w).await
    }

    async fn service_ports(
        &self,
        namespace: &str,
        workload: &str,
        service: &str,
    ) -> Result<Vec<manager::provider::PortSpec>, ProviderError> {
        let w = self.find(namespace, workload)?;
        self.ports_of_service(&w, service)
    }

    async fn set_replaced(
        &self,
        namespace: &str,
        workload: &str,
        replaced: bool,
    ) -> Result<(), ProviderError> {
        let _guard = self.agent_ops.lock().await;
        let w = self.find(namespace, workload)?;
        let Some(stored) = self.stored_config(namespace, workload) else {
            if !replaced {
                return Ok(());
            }
            return Err(ProviderError::Invalid(format!(
                "{workload} has no traffic-agent to take its container's place"
            )));
        };
        let mut cfg = super::configmap::AgentConfig::from_yaml(&stored)
            .map_err(|e| ProviderError::Invalid(e.to_string()))?;
        if cfg.replace == replaced {
            return Ok(());
        }
        cfg.replace = replaced;
        self.write_entry(namespace, workload, Some(cfg.to_yaml()))
            .await?;
        self.rollout(&w).await?;
        drop(_guard);
        self.await_replaced(&w, &cfg.container, replaced).await
    }

    async fn remove_agent(&self, namespace: &str, workload: &str) -> Result<(), ProviderError> {
        let _guard = self.agent_ops.lock().await;
        let w = self.find(namespace, workload)?;
        let had = self.stored_config(namespace, workload).is_some();
        if had {
            self.write_entry(namespace, workload, None).await?;
        }
        if had || self.agent_pods(&w).0 > 0 {
            self.rollout(&w).await?;
        }
        Ok(())
    }

    async fn agent_problem(&self, namespace: &str, workload: &str) -> Option<String> {
        KubeProvider::agent_problem(self, namespace, workload)
    }
}

impl ConfigSource for KubeProvider {
    fn agent_config<'a>(
        &'a self,
        namespace: &'a str,
        kind: &'a str,
        name: &'a str,
        pod: &'a Pod,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Option<AgentConfig>, SourceError>> {
        Box::pin(async move {
            let cfg = self
                .planned_config(namespace, kind, name, pod, dry_run)
                .await?;
            if let (Some(_), false, Some(auth)) = (&cfg, dry_run, self.auth.get()) {
                // The injected agent reads its token from this Secret.
                crate::auth::ensure_agent_secret(&self.client, namespace, &auth.current().agent)
                    .await
                    .map_err(|e| SourceError::Provider(ProviderError::Api(e.to_string())))?;
            }
            Ok(cfg)
        })
    }
}

impl KubeProvider {
    /// Agents injected from now on get the agent token of `auth` (set once, by startup).
    pub fn use_auth(&self, auth: std::sync::Arc<manager::auth::Auth>) {
        let _ = self.auth.set(auth);
    }

    /// The agent config of a pod being admitted (see [`ConfigSource::agent_config`]).
    fn planned_config<'a>(
        &'a self,
        namespace: &'a str,
        kind: &'a str,
        name: &'a str,
        pod: &'a Pod,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Option<AgentConfig>, SourceError>> {
        Box::pin(async move {
            let annotation = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INJECT_ANNOTATION))
                .map(String::as_str);
            if annotation == Some("disabled") {
                return Ok(None);
            }
            // An agent the namespace's Pod Security level rejects would keep the controller
            // from creating the pod at all: admit the pod without it (with a warning).
            let admissible = |cfg: AgentConfig| match self
                .workloads(namespace)
                .into_iter()
                .find(|w| w.name == name && w.kind == kind)
                .and_then(|w| self.pod_security_refusal(&w, &cfg))
            {
                Some(r) => Err(SourceError::Provider(ProviderError::Invalid(r))),
                None => Ok(Some(cfg)),
            };
            if let Some(y) = self.stored_config(namespace, name) {
                let cfg = AgentConfig::from_yaml(&y)?;
                if cfg.workload_kind != kind {
                    return Ok(None);
                }
                return admissible(cfg);
            }
            if annotation != Some("enabled") {
                return Ok(None);
            }
            // Annotated `enabled` but never intercepted: plan and record the config now.
            let _guard = self.agent_ops.lock().await;
            let w = self
                .workloads(namespace)
                .into_iter()
                .find(|w| w.name == name && w.kind == kind)
                .ok_or_else(|| SourceError::NotFound {
                    kind: kind.to_string(),
                    name: name.to_string(),
                })?;
            let cfg = self.plan(&w)?;
            if let Some(r) = self.pod_security_refusal(&w, &cfg) {
                return Err(SourceError::Provider(ProviderError::Invalid(r)));
            }
            if dry_run {
                return Ok(Some(cfg));
            }
            self.write_entry(namespace, name, Some(cfg.to_yaml()))
                .await?;
            Ok(Some(cfg))
        })
    }
}
