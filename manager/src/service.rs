//! The manager's gRPC service: sessions, workload listing, intercept creation and removal, and
//! the watch streams that clients and agents keep open.

use crate::auth::{require, Caller};
use crate::provider::{AgentRequest, ProviderError, WorkloadInfo};
use crate::state::{AgentSession, ClientSession, LEASE};
use crate::Manager;
use protocol::manager::manager_server::Manager as ManagerApi;
use protocol::manager::*;
use protocol::ports::Protocol;
use std::pin::Pin;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

type Stream2<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn provider_status(e: ProviderError) -> Status {
    match e {
        ProviderError::NamespaceNotFound(_) | ProviderError::WorkloadNotFound { .. } => {
            Status::not_found(e.to_string())
        }
        ProviderError::Invalid(m) => Status::failed_precondition(m),
        ProviderError::Api(m) => Status::unavailable(m),
    }
}

fn session_id(s: Option<&SessionInfo>) -> Result<String, Status> {
    s.map(|s| s.session_id.clone())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::invalid_argument("missing session"))
}

fn unknown_session() -> Status {
    Status::not_found("session expired or unknown; connect again")
}

fn new_session(prefix: &str) -> SessionInfo {
    SessionInfo {
        session_id: format!("{prefix}-{}", uuid::Uuid::new_v4()),
        lease_seconds: LEASE.as_secs() as u32,
        tunnel_proof: String::new(),
    }
}

/// Converts a provider workload into its wire form, attaching its intercepts.
fn workload_msg(w: WorkloadInfo, intercepts: Vec<InterceptInfo>) -> Workload {
    Workload {
        name: w.name,
        namespace: w.namespace,
        kind: w.kind,
        ports: w
            .ports
            .into_iter()
            .map(|p| ServicePort {
                name: p.name,
                port: u32::from(p.port),
                protocol: PortProtocol::from(p.protocol) as i32,
            })
            .collect(),
        not_interceptable_reason: w.not_interceptable.unwrap_or_default(),
        agent_installed: w.agent_installed,
        intercepts,
    }
}

/// Why an intercept's port identifier names no service port of its workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// No port given and the workload has no TCP port.
    #[error("{workload} exposes no TCP port")]
    NoTcpPort {
        /// The workload's name.
        workload: String,
    },
    /// No port given and the workload has several TCP ports.
    #[error("{workload} exposes several ports ({listing}); say which with --port <local>:<port>")]
    Ambiguous {
        /// The workload's name.
        workload: String,
        /// Its ports, as listed to the user.
        listing: String,
    },
    /// The given port is not one of the workload's TCP ports.
    #[error(
        "{workload} does not expose port {ident} (it exposes {listing}); use --port <local>:<port>"
    )]
    NotExposed {
        /// The workload's name.
        workload: String,
        /// The port as given.
        ident: String,
        /// Its ports, as listed to the user (or "no ports").
        listing: String,
    },
}

/// Picks the service port an intercept spec names: a number, a port name, or (empty) the only
/// TCP port.
pub fn resolve_port(w: &WorkloadInfo, ident: &str) -> Result<(u16, String), PortError> {
    let tcp: Vec<_> = w
        .ports
        .iter()
        .filter(|p| p.protocol == Protocol::Tcp)
        .collect();
    let listing = || {
        w.ports
            .iter()
            .map(|p| {
                if p.name.is_empty() {
                    format!("{}/{}", p.port, p.protocol)
                } else {
                    format!("{}({})/{}", p.port, p.name, p.protocol)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if ident.is_empty() {
        return match tcp.as_slice() {
            [one] => Ok((one.port, one.name.clone())),
            [] => Err(PortError::NoTcpPort {
                workload: w.name.clone(),
            }),
            _ => Err(PortError::Ambiguous {
                workload: w.name.clone(),
                listing: listing(),
            }),
        };
    }
    let found = match ident.parse::<u16>() {
        // A workload that declares no ports serves the one the user names.
        Ok(n) if w.open_ports && w.ports.is_empty() && n != 0 => return Ok((n, String::new())),
        Ok(n) => tcp.iter().find(|p| p.port == n),
        Err(_) => tcp.iter().find(|p| p.name == ident),
    };
    found
        .map(|p| (p.port, p.name.clone()))
        .ok_or_else(|| PortError::NotExposed {
            workload: w.name.clone(),
            ident: ident.to_string(),
            listing: if w.ports.is_empty() {
                "no ports".to_string()
            } else {
                listing()
            },
        })
}

impl Manager {
    /// Asks the provider for an agent on the workload `spec` engages (capturing its TCP ports).
    async fn install_agent(&self, w: &WorkloadInfo, spec: &InterceptSpec) -> Result<(), Status> {
        let mut ports = crate::reattach::tcp_ports(w);
        if w.open_ports {
            // It declares none: the agent captures the ports its engagements name.
            ports.extend(engaged_ports(&*self.inner.state.lock().await, spec));
        }
        self.inner
            .provider
            .ensure_agent(&AgentRequest {
                namespace: spec.namespace.clone(),
                workload: spec.workload.clone(),
                ports,
            })
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "could not install the traffic-agent on {}: {e}",
                    spec.workload
                ))
            })
    }

    /// Removes the agent a failed engagement installed, when nothing else engages its workload.
    async fn remove_unused_agent(&self, before: &WorkloadInfo, spec: &InterceptSpec) {
        if before.agent_installed {
            return;
        }
        let used = self.inner.state.lock().await.intercepts.values().any(|i| {
            i.spec
                .as_ref()
                .is_some_and(|s| s.namespace == spec.namespace && s.workload == spec.workload)
        });
        if !used {
            if let Err(e) = self
                .inner
                .provider
                .remove_agent(&spec.namespace, &spec.workload)
                .await
            {
                tracing::warn!(workload = %spec.workload, "cannot remove the agent of a failed engagement: {e}");
            }
        }
    }

    async fn client_of(&self, s: Option<&SessionInfo>) -> Result<(String, ClientInfo), Status> {
        let id = session_id(s)?;
        let st = self.inner.state.lock().await;
        let c = st.clients.get(&id).ok_or_else(unknown_session)?;
        Ok((id, c.info.clone()))
    }

    /// Waits until an agent of the workload is present and has been handed the snapshot that
    /// contains generation `gen` (so its next accepted connection is routed by it).
    pub(crate) async fn await_agent(&self, namespace: &str, workload: &str) -> bool {
        let deadline = tokio::time::Instant::now() + self.inner.agent_timeout;
        let mut rx = self.inner.sent.subscribe();
        loop {
            {
                let st = self.inner.state.lock().await;
                let agents: Vec<&AgentSession> = st
                    .agents
                    .values()
                    .filter(|a| a.info.namespace == namespace && a.info.name == workload)
                    .collect();
                if !agents.is_empty() && agents.iter().all(|a| a.sent_generation >= st.generation) {
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

impl Manager {
    /// Fills a client's spec (name, namespace, client) and resolves its HTTP filters; returns
    /// it with the intercept id `<uuid>:<name>` (the value of the x-telepresence-intercept-id
    /// header).
    fn complete_spec(
        &self,
        session: &str,
        client: &ClientInfo,
        mut spec: InterceptSpec,
    ) -> Result<(InterceptSpec, String), Status> {
        if spec.name.is_empty() {
            spec.name = spec.workload.clone();
        }
        if spec.namespace.is_empty() {
            spec.namespace = client.namespace.clone();
        }
        spec.client = client.name.clone();
        let id = format!(
            "{}:{}",
            session.strip_prefix("client-").unwrap_or(session),
            spec.name
        );
        // A wiretap without filters copies everything, team mode or not.
        let team_mode = self.team_mode() && !crate::wiretap::is_wiretap(&spec);
        protocol::filters::resolve(&mut spec, &id, team_mode)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok((spec, id))
    }

    /// The workload a spec names (which must exist and be interceptable).
    async fn intercepted_workload(&self, spec: &InterceptSpec) -> Result<WorkloadInfo, Status> {
        let p = &self.inner.provider;
        if !p
            .namespace_exists(&spec.namespace)
            .await
            .map_err(provider_status)?
        {
            return Err(Status::not_found(format!(
                "namespace \"{}\" not found",
                spec.namespace
            )));
        }
        let w = p
            .get_workload(&spec.namespace, &spec.workload)
            .await
            .map_err(provider_status)?;
        if let Some(reason) = &w.not_interceptable {
            return Err(Status::failed_precondition(format!(
                "{} is not interceptable: {reason}",
                w.name
            )));
        }
        Ok(w)
    }

    /// The workload a spec names and the `local:remote` pairs it engages (the ports of
    /// `spec.service` when given).
    async fn engaged_pairs(
        &self,
        spec: &InterceptSpec,
    ) -> Result<(WorkloadInfo, crate::engage::Pairs), Status> {
        let w = self.intercepted_workload(spec).await?;
        let ports = if spec.service.is_empty() {
            w.ports.clone()
        } else {
            self.inner
                .provider
                .service_ports(&spec.namespace, &spec.workload, &spec.service)
                .await
                .map_err(provider_status)?
        };
        let pairs = crate::engage::resolve_pairs(&w, &ports, spec)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok((w, pairs))
    }
}

/// The service ports every engagement of the spec's workload names (its own included).
fn engaged_ports(st: &crate::state::State, spec: &InterceptSpec) -> Vec<u16> {
    st.intercepts
        .values()
        .filter(|i| {
            i.spec
                .as_ref()
                .is_some_and(|s| s.namespace == spec.namespace && s.workload == spec.workload)
        })
        .flat_map(|i| {
            std::iter::once(i.service_port).chain(i.extra_ports.iter().map(|r| r.service_port))
        })
        .filter_map(|p| u16::try_from(p).ok().filter(|p| *p != 0))
        .collect()
}

/// Refuses an intercept whose local target, name or traffic clashes with an existing one.
fn check_conflicts(
    st: &crate::state::State,
    session: &str,
    spec: &InterceptSpec,
    port: u16,
) -> Result<(), Status> {
    // One client delivers each intercept to its own local address.
    if let Some(other) = st.intercepts.values().find(|i| {
        spec.target_port != 0
            && i.client_session == session
            && i.spec.as_ref().is_some_and(|s| {
                s.target_port == spec.target_port && s.target_host == spec.target_host
            })
    }) {
        return Err(Status::already_exists(format!(
            "local port {} is already used by intercept \"{}\"; choose another --port",
            spec.target_port,
            other.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("?")
        )));
    }
    if let Some(other) = st.intercepts.values().find(|i| {
        i.client_session == session && i.spec.as_ref().is_some_and(|s| s.name == spec.name)
    }) {
        return Err(Status::already_exists(format!(
            "intercept named \"{}\" already exists (by {}); leave it first or choose another name",
            spec.name,
            other
                .spec
                .as_ref()
                .map(|s| s.client.as_str())
                .unwrap_or("?")
        )));
    }
    for other in st.intercepts.values().filter(|i| {
        let s = i.spec.as_ref().expect("spec");
        port != 0
            && s.namespace == spec.namespace
            && s.workload == spec.workload
            && i.service_port == u32::from(port)
    }) {
        if let Some(why) = crate::personal::conflict(spec, other, port) {
            return Err(Status::already_exists(why));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl ManagerApi for Manager {
    async fn version(&self, _: Request<Empty>) -> Result<Response<VersionInfo>, Status> {
        Ok(Response::new(VersionInfo {
            version: protocol::VERSION.into(),
            name: "traffic-manager".into(),
        }))
    }

    async fn arrive_as_client(
        &self,
        req: Request<ClientInfo>,
    ) -> Result<Response<ArriveResponse>, Status> {
        require(&req, Caller::Client)?;
        let info = req.into_inner();
        let p = &self.inner.provider;
        if !info.namespace.is_empty()
            && !p
                .namespace_exists(&info.namespace)
                .await
                .map_err(provider_status)?
        {
            return Err(Status::not_found(format!(
                "namespace \"{}\" not found",
                info.namespace
            )));
        }
        let mut session = new_session("client");
        session.tunnel_proof = self.inner.auth.session_proof(&session.session_id);
        tracing::info!(client = %info.name, connection = %info.connection, session = %session.session_id, "client arrived");
        let subnets = crate::resolve::subnets_of(p.as_ref(), &info.namespace).await;
        let scope = crate::auth::OutboundScope::new(
            subnets.iter().chain(&info.also_proxy),
            p.host_addresses(&info.namespace).await,
        );
        let mut st = self.inner.state.lock().await;
        st.clients.insert(
            session.session_id.clone(),
            ClientSession {
                info: info.clone(),
                expires: Instant::now() + LEASE,
                dials: None,
                scope,
            },
        );
        Ok(Response::new(ArriveResponse {
            session: Some(session),
            cluster: Some(ClusterInfo {
                subnets,
                cluster_domain: p.cluster_domain(),
                cluster_type: ClusterType::from(p.cluster_type()) as i32,
                server: p.server(),
                namespace: info.namespace,
                agent_image: p.agent_image(),
            }),
        }))
    }

    async fn arrive_as_agent(
        &self,
        req: Request<AgentInfo>,
    ) -> Result<Response<ArriveResponse>, Status> {
        require(&req, Caller::Agent)?;
        let info = req.into_inner();
        let session = new_session("agent");
        tracing::info!(workload = %info.name, namespace = %info.namespace, pod_ip = %info.pod_ip, "agent arrived");
        let mut st = self.inner.state.lock().await;
        st.agents.insert(
            session.session_id.clone(),
            AgentSession {
                info: info.clone(),
                expires: Instant::now() + LEASE,
                sent_generation: 0,
                dials: None,
            },
        );
        st.changed(&self.inner.generation);
        let p = &self.inner.provider;
        Ok(Response::new(ArriveResponse {
            session: Some(session),
            cluster: Some(ClusterInfo {
                cluster_type: ClusterType::from(p.cluster_type()) as i32,
                server: p.server(),
                namespace: info.namespace,
                agent_image: p.agent_image(),
                ..Default::default()
            }),
        }))
    }

    async fn remain(&self, req: Request<SessionInfo>) -> Result<Response<Empty>, Status> {
        let caller = crate::auth::caller(&req)?;
        let id = req.into_inner().session_id;
        let mut st = self.inner.state.lock().await;
        let expires = Instant::now() + LEASE;
        match caller {
            Caller::Client => st.clients.get_mut(&id).map(|c| c.expires = expires),
            Caller::Agent => st.agents.get_mut(&id).map(|a| a.expires = expires),
        }
        .ok_or_else(unknown_session)?;
        Ok(Response::new(Empty {}))
    }

    async fn depart(&self, req: Request<SessionInfo>) -> Result<Response<Empty>, Status> {
        let caller = crate::auth::caller(&req)?;
        let id = req.into_inner().session_id;
        let mut st = self.inner.state.lock().await;
        match caller {
            Caller::Client => st.remove_client(&id),
            Caller::Agent => {
                st.agents.remove(&id);
            }
        }
        st.changed(&self.inner.generation);
        Ok(Response::new(Empty {}))
    }

    async fn list_workloads(
        &self,
        req: Request<ListWorkloadsRequest>,
    ) -> Result<Response<WorkloadList>, Status> {
        require(&req, Caller::Client)?;
        let req = req.into_inner();
        self.client_of(req.session.as_ref()).await?;
        let p = &self.inner.provider;
        if !p
            .namespace_exists(&req.namespace)
            .await
            .map_err(provider_status)?
        {
            return Err(Status::not_found(format!(
                "namespace \"{}\" not found",
                req.namespace
            )));
        }
        let ws = p
            .list_workloads(&req.namespace)
            .await
            .map_err(provider_status)?;
        let st = self.inner.state.lock().await;
        let workloads = ws
            .into_iter()
            .map(|w| {
                let ics = st
                    .intercepts
                    .values()
                    .filter(|i| {
                        let s = i.spec.as_ref().expect("spec");
                        s.namespace == w.namespace && s.workload == w.name
                    })
                    .cloned()
                    .collect();
                workload_msg(w, ics)
            })
            .collect();
        Ok(Response::new(WorkloadList { workloads }))
    }

    async fn create_intercept(
        &self,
        req: Request<CreateInterceptRequest>,
    ) -> Result<Response<InterceptInfo>, Status> {
        require(&req, Caller::Client)?;
        let req = req.into_inner();
        let (session, client) = self.client_of(req.session.as_ref()).await?;
        let spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("missing intercept spec"))?;
        let (mut spec, id) = self.complete_spec(&session, &client, spec)?;
        crate::to_pod::check_spec(&spec)?;
        let p = self.inner.provider.clone();
        let (w, pairs) = self.engaged_pairs(&spec).await?;
        spec.target_port = pairs.target_port;
        let kind = crate::engage::kind_of(&spec);
        if kind == EngagementKind::Replace && spec.port_identifier.is_empty() && pairs.port != 0 {
            // Named, so that the daemon re-creating the spec after a new session gets the same pairs.
            spec.port_identifier = pairs.port.to_string();
        }
        let info = {
            let mut st = self.inner.state.lock().await;
            crate::engage::check(&st, &session, &spec, &pairs)?;
            check_conflicts(&st, &session, &spec, pairs.port)?;
            let info = InterceptInfo {
                id: id.clone(),
                state: protocol::manager::InterceptState::Waiting as i32,
                message: "waiting for the traffic-agent".into(),
                client_session: session.clone(),
                service_port: u32::from(pairs.port),
                service_port_name: pairs.port_name.clone(),
                workload_kind: w.kind.clone(),
                disposition: crate::engage::disposition(&spec),
                extra_ports: pairs.extra.clone(),
                spec: Some(spec.clone()),
                ..Default::default()
            };
            st.intercepts.insert(id.clone(), info.clone());
            st.changed(&self.inner.generation);
            info
        };
        let fail = |status: Status| async {
            let mut st = self.inner.state.lock().await;
            st.intercepts.remove(&id);
            st.changed(&self.inner.generation);
            Err(status)
        };
        if let Err(e) = self.install_agent(&w, &spec).await {
            return fail(e).await;
        }
        if !self.await_agent(&spec.namespace, &spec.workload).await {
            let why = p
                .agent_problem(&spec.namespace, &spec.workload)
                .await
                .unwrap_or_else(|| "check `docker logs` of its agent container".into());
            return fail(Status::deadline_exceeded(format!(
                "the traffic-agent of {} did not connect within {}s; {why}",
                spec.workload,
                self.inner.agent_timeout.as_secs()
            )))
            .await;
        }
        if let Err(e) = self.check_to_pod(&spec, &id).await {
            let r = fail(e).await;
            self.remove_unused_agent(&w, &spec).await;
            return r;
        }
        if let Err(e) = self.start_replace(&spec).await {
            return fail(e).await;
        }
        let st = self.inner.state.lock().await;
        let current = st.intercepts.get(&id).cloned().unwrap_or(info);
        Ok(Response::new(current))
    }

    async fn remove_intercept(
        &self,
        req: Request<RemoveInterceptRequest>,
    ) -> Result<Response<Empty>, Status> {
        require(&req, Caller::Client)?;
        let req = req.into_inner();
        let (session, _) = self.client_of(req.session.as_ref()).await?;
        let mut st = self.inner.state.lock().await;
        let key = st
            .intercepts
            .iter()
            .find(|(_, i)| {
                i.client_session == session && i.spec.as_ref().is_some_and(|s| s.name == req.name)
            })
            .map(|(k, _)| k.clone());
        match key {
            Some(key) => {
                st.intercepts.remove(&key);
                st.changed(&self.inner.generation);
                Ok(Response::new(Empty {}))
            }
            None => Err(Status::not_found(format!(
                "Intercept named \"{}\" not found",
                req.name
            ))),
        }
    }

    async fn report_wiretaps(
        &self,
        req: Request<WiretapReport>,
    ) -> Result<Response<Empty>, Status> {
        require(&req, Caller::Agent)?;
        let report = req.into_inner();
        let id = session_id(report.session.as_ref())?;
        let mut st = self.inner.state.lock().await;
        if !st.agents.contains_key(&id) {
            return Err(unknown_session());
        }
        if crate::wiretap::Drops::record(&mut st, &id, &report) {
            st.changed(&self.inner.generation);
        }
        Ok(Response::new(Empty {}))
    }

    async fn uninstall(&self, req: Request<UninstallRequest>) -> Result<Response<Empty>, Status> {
        require(&req, Caller::Client)?;
        let req = req.into_inner();
        self.client_of(req.session.as_ref()).await?;
        let p = self.inner.provider.clone();
        let names: Vec<String> = if req.all_agents {
            p.list_workloads(&req.namespace)
                .await
                .map_err(provider_status)?
                .into_iter()
                .filter(|w| w.agent_installed)
                .map(|w| w.name)
                .collect()
        } else {
            req.agents.clone()
        };
        for name in &names {
            if !req.all_agents {
                p.get_workload(&req.namespace, name)
                    .await
                    .map_err(provider_status)?;
            }
            {
                let mut st = self.inner.state.lock().await;
                st.intercepts.retain(|_, i| {
                    let s = i.spec.as_ref().expect("spec");
                    !(s.namespace == req.namespace && s.workload == *name)
                });
                st.changed(&self.inner.generation);
            }
            p.remove_agent(&req.namespace, name)
                .await
                .map_err(provider_status)?;
        }
        Ok(Response::new(Empty {}))
    }

    type WatchInterceptsStream = Stream2<InterceptSnapshot>;

    async fn watch_intercepts(
        &self,
        req: Request<SessionInfo>,
    ) -> Result<Response<Self::WatchInterceptsStream>, Status> {
        let caller = crate::auth::caller(&req)?;
        let id = req.into_inner().session_id;
        {
            let st = self.inner.state.lock().await;
            if !st.holds(caller, &id) {
                return Err(unknown_session());
            }
        }
        let is_agent = {
            let st = self.inner.state.lock().await;
            st.agents.contains_key(&id)
        };
        let mgr = self.clone();
        let session = id.clone();
        let mut gen_rx = self.inner.generation.subscribe();
        gen_rx.borrow_and_update();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let snapshot = {
                    let mut st = mgr.inner.state.lock().await;
                    let generation = st.generation;
                    if let Some(a) = st.agents.get(&id) {
                        let info = a.info.clone();
                        let v = st.agent_intercepts(&info);
                        if let Some(a) = st.agents.get_mut(&id) {
                            a.sent_generation = generation;
                        }
                        v
                    } else if st.clients.contains_key(&id) {
                        st.client_intercepts(&id)
                    } else {
                        let _ = tx.send(Err(unknown_session())).await;
                        return;
                    }
                };
                if tx
                    .send(Ok(InterceptSnapshot {
                        intercepts: snapshot,
                        agent_log_level: mgr.agent_log_level() as i32,
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                // Tell `await_agent` that this agent's view is current.
                mgr.inner.sent.send_modify(|n| *n += 1);
                if gen_rx.changed().await.is_err() {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        if is_agent {
            // An agent lives as long as its intercept watch (liveness.rs).
            return Ok(Response::new(Box::pin(crate::liveness::bind(
                self, &session, stream,
            ))));
        }
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchDialsStream = Stream2<DialRequest>;

    async fn watch_dials(
        &self,
        req: Request<SessionInfo>,
    ) -> Result<Response<Self::WatchDialsStream>, Status> {
        let caller = crate::auth::caller(&req)?;
        let id = req.into_inner().session_id;
        let (tx, rx) = mpsc::channel(256);
        let is_client = {
            let mut st = self.inner.state.lock().await;
            let found = match caller {
                Caller::Client => st
                    .clients
                    .get_mut(&id)
                    .map(|c| c.dials = Some(tx))
                    .map(|()| true),
                Caller::Agent => st
                    .agents
                    .get_mut(&id)
                    .map(|a| a.dials = Some(tx))
                    .map(|()| false),
            };
            found.ok_or_else(unknown_session)?
        };
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
        if is_client {
            // A client lives as long as it takes dial requests (liveness.rs).
            return Ok(Response::new(Box::pin(crate::liveness::bind(
                self, &id, stream,
            ))));
        }
        Ok(Response::new(Box::pin(stream)))
    }

    // The outbound path.
    async fn resolve(
        &self,
        req: Request<ResolveRequest>,
    ) -> Result<Response<ResolveResponse>, Status> {
        require(&req, Caller::Client)?;
        let req = req.into_inner();
        self.client_of(req.session.as_ref()).await?;
        crate::resolve::resolve(self, &req).await.map(Response::new)
    }

    async fn set_log_level(
        &self,
        req: Request<LogLevelRequest>,
    ) -> Result<Response<Empty>, Status> {
        require(&req, Caller::Client)?;
        let req = req.into_inner();
        self.client_of(req.session.as_ref()).await?;
        crate::loglevel::set(self, &req).await?;
        Ok(Response::new(Empty {}))
    }
}

use tokio_stream::StreamExt;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::PortSpec;

    fn w(ports: &[(&str, u16, &str)]) -> WorkloadInfo {
        WorkloadInfo {
            name: "web".into(),
            namespace: "shop".into(),
            kind: "ComposeService".into(),
            ports: ports
                .iter()
                .map(|(n, p, proto)| PortSpec {
                    name: n.to_string(),
                    port: *p,
                    protocol: Protocol::parse(proto).unwrap(),
                })
                .collect(),
            not_interceptable: None,
            open_ports: false,
            agent_installed: false,
        }
    }

    #[test]
    fn port_resolution() {
        let one = w(&[("", 8080, "TCP"), ("", 53, "UDP")]);
        assert_eq!(resolve_port(&one, "").unwrap().0, 8080);
        assert_eq!(resolve_port(&one, "8080").unwrap().0, 8080);
        let e = resolve_port(&one, "9999").unwrap_err().to_string();
        assert!(
            e.contains("does not expose port 9999") && e.contains("8080/TCP"),
            "{e}"
        );
        let two = w(&[("http", 80, "TCP"), ("admin", 9000, "TCP")]);
        assert!(resolve_port(&two, "")
            .unwrap_err()
            .to_string()
            .contains("several ports"));
        assert_eq!(resolve_port(&two, "admin").unwrap(), (9000, "admin".into()));
        assert!(resolve_port(&two, "nope").is_err());
    }

    #[test]
    fn a_workload_declaring_no_ports_serves_the_one_named() {
        let open = WorkloadInfo {
            open_ports: true,
            ..w(&[])
        };
        assert_eq!(resolve_port(&open, "8080").unwrap(), (8080, String::new()));
        assert!(resolve_port(&open, "").is_err(), "which port must be said");
        assert!(resolve_port(&open, "http").is_err());
        assert!(
            resolve_port(&w(&[]), "8080").is_err(),
            "Kubernetes: declared ports only"
        );
    }
}
