//! The traffic-manager: client and agent sessions with leases, intercepts (create, remove,
//! watch), the cluster reached through a [`provider::Provider`], and the pairing of agent-side and
//! client-side tunnel connections.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod engage;
pub mod forward;
pub mod intercept_fwd;
mod liveness;
pub mod loglevel;
pub mod outbound;
pub mod personal;
pub mod provider;
mod reattach;
pub mod resolve;
pub mod service;
pub mod state;
pub mod to_pod;
pub mod tunnel;
pub mod wiretap;

use provider::Provider;
use state::State;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Mutex};

/// How often the manager pings each gRPC connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the answering side of a tunnel stream hands its originator: its connection, or why it
/// could not deliver.
pub(crate) type Pairing = Result<tunnel::Paired, protocol::tunnel::HeaderError>;

/// Where the manager listens.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Address of the gRPC `Manager` service.
    pub grpc_addr: SocketAddr,
    /// Address of the tunnel listener that pairs agent-side and client-side connections.
    pub tunnel_addr: SocketAddr,
    /// How long `CreateIntercept` waits for an agent to arrive.
    pub agent_timeout: Duration,
    /// The credentials callers must present (rotated by the provider's startup).
    pub auth: Arc<auth::Auth>,
}

/// The shared manager; cheap to clone.
#[derive(Clone)]
pub struct Manager {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) provider: Arc<dyn Provider>,
    pub(crate) state: Mutex<State>,
    pub(crate) generation: watch::Sender<u64>,
    /// Bumped whenever a snapshot has been handed to an agent's watch stream.
    pub(crate) sent: watch::Sender<u64>,
    /// Originating tunnel connections waiting for their other side (or the error it reported),
    /// by connection id.
    pub(crate) pending: std::sync::Mutex<HashMap<String, oneshot::Sender<Pairing>>>,
    /// The newest stream bound to each session (`liveness.rs`).
    pub(crate) streams: std::sync::Mutex<HashMap<String, u64>>,
    pub(crate) agent_timeout: Duration,
    /// `TP_TEAM_MODE=true`: intercepts without filters are personal (`--http-header=auto`).
    pub(crate) team_mode: std::sync::atomic::AtomicBool,
    /// The credentials callers and tunnel connections must present.
    pub(crate) auth: Arc<auth::Auth>,
    /// The `protocol::manager::LogLevel` agents are asked to run at (`manager/src/loglevel.rs`).
    pub(crate) agent_log_level: std::sync::atomic::AtomicI32,
    /// Bumped by every log level change, so an older pending return does not undo a newer one.
    pub(crate) log_epoch: std::sync::atomic::AtomicU64,
    /// In-kernel forwards for clients on the manager's own network (`forward.rs`).
    pub(crate) forwards: Arc<forward::Forwards>,
    /// In-kernel deliveries of intercepted connections (`intercept_fwd.rs`).
    pub(crate) intercept_fwds: intercept_fwd::InterceptForwards,
}

impl Manager {
    /// A manager over `provider` accepting fresh random credentials nobody outside this
    /// process knows (in-process callers mark requests with [`auth::Caller::attach`]);
    /// `agent_timeout` is how long `CreateIntercept` waits for an agent.
    pub fn new(provider: Arc<dyn Provider>, agent_timeout: Duration) -> Self {
        let secret = protocol::auth::Token::generate();
        let auth = auth::Auth::new(auth::Credentials::from_secret(&secret));
        Manager::with_auth(provider, agent_timeout, Arc::new(auth))
    }

    /// A manager over `provider` accepting the credentials of `auth`.
    pub fn with_auth(
        provider: Arc<dyn Provider>,
        agent_timeout: Duration,
        auth: Arc<auth::Auth>,
    ) -> Self {
        let (generation, _) = watch::channel(0);
        let (sent, _) = watch::channel(0);
        Manager {
            inner: Arc::new(Inner {
                provider,
                state: Mutex::new(State::default()),
                generation,
                sent,
                pending: Default::default(),
                streams: Default::default(),
                agent_timeout,
                team_mode: Default::default(),
                auth,
                agent_log_level: Default::default(),
                log_epoch: Default::default(),
                forwards: Default::default(),
                intercept_fwds: Default::default(),
            }),
        }
    }

    /// Team mode: intercepts created without filters get `--http-header=auto`.
    pub fn set_team_mode(&self, on: bool) {
        self.inner
            .team_mode
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether team mode is on.
    pub fn team_mode(&self) -> bool {
        self.inner
            .team_mode
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Expires sessions every second until the process ends.
    async fn reap(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let mut st = self.inner.state.lock().await;
            if st.expire(Instant::now()) {
                st.changed(&self.inner.generation);
            }
        }
    }
}

/// Serves the manager's gRPC API and tunnel listener until `shutdown` resolves.
pub async fn run(
    cfg: ManagerConfig,
    provider: Arc<dyn Provider>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mgr = Manager::with_auth(provider, cfg.agent_timeout, cfg.auth.clone());
    mgr.set_team_mode(personal::team_mode_from_env());
    if mgr.team_mode() {
        tracing::info!("team mode: intercepts without filters default to --http-header=auto");
    }
    let tunnel_listener = tokio::net::TcpListener::bind(cfg.tunnel_addr).await?;
    let grpc_listener = tokio::net::TcpListener::bind(cfg.grpc_addr).await?;
    tracing::info!(grpc = %cfg.grpc_addr, tunnel = %cfg.tunnel_addr, "traffic-manager listening");
    tokio::spawn(mgr.clone().reap());
    tokio::spawn(intercept_fwd::sweep(mgr.clone()));
    tokio::spawn(mgr.clone().keep_replaced());
    if let Some(changes) = mgr.inner.provider.changes() {
        tokio::spawn(mgr.clone().reattach_on_changes(changes));
    }
    tokio::spawn(tunnel::serve(mgr.clone(), tunnel_listener));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // A peer that stops answering pings within ~3 s is dead: its streams end, and with them
        // its session (liveness.rs).
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(
            protocol::manager::manager_server::ManagerServer::with_interceptor(
                mgr,
                auth::interceptor(cfg.auth),
            ),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
