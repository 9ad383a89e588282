//! The traffic-agent: runs in the workload's network namespace, captures the workload's service
//! ports with an nf_tables redirect to its own listeners, and sends each captured connection
//! either to the original application or — while an ACTIVE intercept covers its port — through
//! the traffic-manager's tunnel to the intercepting client.
//!
//! Entry points for the `telepresence` binary's hidden `agent` subcommand:
//! [`AgentConfig::from_env`] + [`run`] (until SIGTERM/SIGINT), and [`cleanup`] for a one-shot
//! container that removes the redirect left behind by a crashed agent. [`Agent`] gives tests and
//! embedders step-by-step control.
//!
//! Modules: [`config`] (environment), [`nft`] (pure-Rust nf_tables over netlink), [`routes`]
//! (the per-connection routing decision), `session` (manager session and intercept watch),
//! `forward` (accept loops and splicing), `to_pod` (pod-local ports for `--to-pod`), `http_route`
//! and [`http_sniff`] (per-request routing of ports with personal intercepts), [`wiretap`] (copies
//! for wiretaps, drop counters).
#![deny(missing_docs)]

pub mod config;
mod failopen;
mod forward;
pub mod fs;
mod http_route;
pub mod http_sniff;
pub use netfilter::nft;
pub mod portmap;
pub mod routes;
mod session;
#[cfg(test)]
use netfilter::testns;
mod to_pod;
pub mod wiretap;
mod wiretap_http;

pub use config::{AgentConfig, MANAGER_TIMEOUT};
pub use nft::NftError;
pub use routes::{Route, Routes};

use protocol::manager::{AgentInfo, SessionInfo};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Name of the agent's nf_tables table (`table ip telepresence_agent`).
pub const TABLE: &str = "telepresence_agent";

/// Why the agent could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration cannot work (no ports, unresolvable app host, bad manager address).
    #[error("agent configuration: {0}")]
    Config(String),
    /// A `TP_*` environment variable is missing or malformed.
    #[error("agent configuration: {0}")]
    Env(#[from] protocol::agent_env::AgentEnvError),
    /// Installing or removing the nf_tables redirect failed.
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("cannot listen for service port {port}: {source}")]
    /// Binding the listener for a service port failed.
    Listen {
        /// The service port.
        port: u16,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// The traffic-manager refused the agent or did not answer in time.
    #[error("{0}")]
    Manager(String),
    /// SIGTERM/SIGINT handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signal(#[source] std::io::Error),
}

/// Removes the agent's redirect table, if any (for a cleanup container after an agent crash;
/// an agent's own table is owned by its process and goes with it, so only tables of older
/// agents need this). Returns whether a table was removed.
pub fn cleanup() -> Result<bool, AgentError> {
    Ok(nft::delete_table(TABLE)?)
}

/// Runs the agent until SIGTERM or SIGINT, then removes the redirect, departs and returns
/// `Ok(())`.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    run_until(cfg, async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
    })
    .await
}

/// Runs the agent until `shutdown` completes (which may happen while still waiting for the
/// manager), then shuts down like [`run`].
pub async fn run_until(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut agent = Agent::capture(cfg).await?;
    tokio::pin!(shutdown);
    let connected = tokio::select! {
        r = agent.connect() => Some(r),
        _ = &mut shutdown => None,
    };
    match connected {
        None => return agent.shutdown().await,
        Some(Err(e)) => {
            if let Err(e2) = agent.shutdown().await {
                warn!("cleanup after a failed start: {e2}");
            }
            return Err(e);
        }
        Some(Ok(())) => {}
    }
    shutdown.await;
    agent.shutdown().await
}

/// A running agent.
pub struct Agent {
    cfg: AgentConfig,
    listeners: Vec<(u16, SocketAddr)>,
    routes_tx: watch::Sender<Routes>,
    session_rx: Option<watch::Receiver<SessionInfo>>,
    client: Option<session::Client>,
    accept_tasks: Vec<JoinHandle<()>>,
    session_tasks: Vec<JoinHandle<()>>,
    shared: Arc<forward::Shared>,
    /// The redirect, owned by this process: the kernel deletes it when the agent dies.
    table: Option<nft::OwnedTable>,
}

impl Agent {
    /// [`Agent::capture`] then [`Agent::connect`]; on failure everything is undone.
    pub async fn start(cfg: AgentConfig) -> Result<Agent, AgentError> {
        let mut agent = Agent::capture(cfg).await?;
        if let Err(e) = agent.connect().await {
            if let Err(e2) = agent.shutdown().await {
                warn!("cleanup after a failed start: {e2}");
            }
            return Err(e);
        }
        Ok(agent)
    }

    /// Binds one listener per service port, starts serving them (everything goes to the app
    /// until the manager says otherwise) and installs the redirects service port → listener.
    pub async fn capture(cfg: AgentConfig) -> Result<Agent, AgentError> {
        if cfg.ports.is_empty() {
            return Err(AgentError::Config("no service ports to capture".into()));
        }
        let (routes_tx, _) = watch::channel(Routes::none());
        let shared = Arc::new(forward::Shared {
            tunnel_addr: cfg.tunnel_addr.clone(),
            active: AtomicUsize::new(0),
            pool: Default::default(),
            token: cfg.token.clone(),
            counters: Default::default(),
            offered: Default::default(),
        });
        let mut agent = Agent {
            listeners: Vec::with_capacity(cfg.ports.len()),
            routes_tx,
            session_rx: None,
            client: None,
            accept_tasks: Vec::new(),
            session_tasks: Vec::new(),
            shared,
            table: None,
            cfg,
        };
        for &port in &agent.cfg.ports {
            let (listen, app_port) = agent.cfg.listen_and_app(port);
            let app = resolve_app(&agent.cfg.app_host, app_port).await?;
            let listener: TcpListener = portmap::bind(listen)
                .await
                .map_err(|source| AgentError::Listen { port, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| AgentError::Listen { port, source })?;
            agent.listeners.push((port, local));
            agent.accept_tasks.push(tokio::spawn(forward::accept_loop(
                listener,
                port,
                app,
                agent.routes_tx.subscribe(),
                agent.shared.clone(),
            )));
        }
        let pairs: Vec<(u16, u16)> = agent
            .listeners
            .iter()
            .filter(|(svc, _)| agent.cfg.listen_and_app(*svc).0 == 0)
            .map(|(svc, l)| (*svc, l.port()))
            .collect();
        if agent.cfg.redirect && !pairs.is_empty() {
            let installed = tokio::task::spawn_blocking(move || {
                if nft::table_exists(TABLE)? {
                    info!("replacing a stale redirect table {TABLE} left by a previous agent");
                }
                nft::install_owned_redirects(TABLE, &pairs)
            })
            .await
            .map_err(|e| AgentError::Manager(format!("redirect installer panicked: {e}")))?;
            // on error `agent` is dropped: accept loops stop, nothing to delete
            agent.table = Some(installed?);
        }
        let l: Vec<String> = agent
            .listeners
            .iter()
            .map(|(svc, l)| format!("{svc} -> :{}", l.port()))
            .collect();
        info!(
            "traffic-agent for {}/{} capturing {} (app at {}{})",
            agent.cfg.namespace,
            agent.cfg.workload,
            l.join(", "),
            agent.cfg.app_host,
            if agent.cfg.redirect {
                ""
            } else {
                "; no redirect installed"
            },
        );
        Ok(agent)
    }

    /// Arrives at the manager (retrying for up to `manager_timeout`, 30 s by default), then keeps the session alive and the
    /// intercept snapshot current in the background.
    pub async fn connect(&mut self) -> Result<(), AgentError> {
        let info = AgentInfo {
            name: self.cfg.workload.clone(),
            namespace: self.cfg.namespace.clone(),
            pod_ip: self.cfg.pod_ip.clone().unwrap_or_default(),
            version: protocol::VERSION.to_string(),
            ports: self.cfg.ports.iter().map(|p| u32::from(*p)).collect(),
            container: self.cfg.container.clone(),
            environment: self.cfg.environment.clone().into_iter().collect(),
            mounts: self
                .cfg
                .mounts
                .iter()
                .map(|m| protocol::manager::MountInfo {
                    path: m.path.clone(),
                    read_only: m.read_only,
                })
                .collect(),
        };
        let (client, session) = session::connect(
            &self.cfg.manager_addr,
            &info,
            self.cfg.token.clone(),
            self.cfg.manager_timeout,
        )
        .await?;
        info!(
            "arrived at the traffic-manager {} as session {} (lease {}s)",
            self.cfg.manager_addr, session.session_id, session.lease_seconds
        );
        let (session_tx, session_rx) = watch::channel(session);
        let poke = Arc::new(tokio::sync::Notify::new());
        let ctx = session::WatchCtx {
            namespace: self.cfg.namespace.clone(),
            workload: self.cfg.workload.clone(),
            tunnel_addr: self.cfg.tunnel_addr.clone(),
            poke: poke.clone(),
            offered: self.shared.offered.clone(),
        };
        self.session_tasks.push(tokio::spawn(session::watch_loop(
            client.clone(),
            ctx,
            session_rx.clone(),
            self.routes_tx.clone(),
        )));
        self.session_tasks.push(tokio::spawn(session::dials_loop(
            client.clone(),
            self.cfg.tunnel_addr.clone(),
            self.cfg
                .mounts
                .iter()
                .map(|m| fssync::Mount {
                    path: m.path.clone(),
                    read_only: m.read_only,
                })
                .collect(),
            self.cfg.token.clone(),
            session_rx.clone(),
        )));
        self.session_tasks.push(tokio::spawn(wiretap::report_loop(
            client.clone(),
            self.shared.counters.clone(),
            session_rx.clone(),
        )));
        self.session_tasks.push(tokio::spawn(session::remain_loop(
            client.clone(),
            info,
            session_tx,
            poke,
        )));
        self.session_rx = Some(session_rx);
        self.client = Some(client);
        Ok(())
    }

    /// (service port, local listener address) for every captured port.
    pub fn listen_addrs(&self) -> &[(u16, SocketAddr)] {
        &self.listeners
    }

    /// The routing snapshot, as the accept loops see it.
    pub fn routes(&self) -> watch::Receiver<Routes> {
        self.routes_tx.subscribe()
    }

    /// The current manager session id, once connected.
    pub fn session_id(&self) -> Option<String> {
        self.session_rx
            .as_ref()
            .map(|s| s.borrow().session_id.clone())
    }

    /// Connections currently being forwarded.
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }

    /// Removes the redirect (new connections reach the app directly), stops accepting, lets
    /// in-flight connections finish for up to the drain timeout, and departs from the manager.
    pub async fn shutdown(mut self) -> Result<(), AgentError> {
        let mut result = Ok(());
        if let Some(table) = self.table.take() {
            match tokio::task::spawn_blocking(|| table.delete()).await {
                Ok(Ok(())) => info!("removed the redirect table {TABLE}"),
                Ok(Err(e)) => result = Err(e.into()),
                Err(e) => warn!("redirect removal panicked: {e}"),
            }
        }
        for t in self.accept_tasks.drain(..) {
            t.abort();
        }
        for t in self.session_tasks.drain(..) {
            t.abort();
        }
        let deadline = Instant::now() + self.cfg.drain_timeout;
        while self.active_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.active_connections();
        if left > 0 {
            info!("{left} connection(s) still open at exit");
        }
        if let (Some(mut client), Some(s)) = (self.client.take(), self.session_rx.take()) {
            let session = s.borrow().clone();
            match tokio::time::timeout(Duration::from_secs(1), client.depart(session)).await {
                Ok(Ok(_)) => info!("departed from the traffic-manager"),
                Ok(Err(e)) => warn!("depart failed: {}", e.message()),
                Err(_) => warn!("depart timed out"),
            }
        }
        result
    }
}

impl Drop for Agent {
    /// Safety net when [`Agent::shutdown`] was not called (panic, early return): never leave
    /// the redirect pointing at listeners that no longer exist (dropping the owned table
    /// deletes it; the kernel does the same if the process dies without dropping it).
    fn drop(&mut self) {
        for t in self.accept_tasks.iter().chain(&self.session_tasks) {
            t.abort();
        }
        if let Some(table) = self.table.take() {
            if let Err(e) = table.delete() {
                warn!("removing the redirect table {TABLE}: {e}");
            }
        }
    }
}

/// Resolves where the app listens for `port` (done once at startup, not per connection).
async fn resolve_app(host: &str, port: u16) -> Result<SocketAddr, AgentError> {
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| AgentError::Config(format!("TP_APP_HOST={host:?} cannot be resolved: {e}")))?;
    let all: Vec<SocketAddr> = addrs.by_ref().collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| AgentError::Config(format!("TP_APP_HOST={host:?} has no address")))
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod agent_tests;

#[cfg(test)]
#[path = "http_tests.rs"]
mod http_tests;
