//! The daemon's session with the traffic-manager: arrival, lease renewal (arriving again and
//! re-creating its intercepts when the manager forgot it), the intercept snapshot, and delivery
//! of intercepted connections to the local handler.

use protocol::auth::{Bearer, ManagerClient, Token};
use protocol::manager::*;
use protocol::tunnel::{write_header, Role, TunnelHeader};
use relay::{dial, splice};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Endpoint;
use tonic::Code;

/// Daemon settings, from the environment the CLI gives the daemon container.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub connection: String,
    pub namespace: String,
    pub manager_namespace: String,
    pub context: String,
    /// Manager gRPC address as reachable from the daemon (host:port).
    pub manager_addr: String,
    /// Manager tunnel address as reachable from the daemon (host:port).
    pub tunnel_addr: String,
    /// Where the CLI-facing gRPC listens (inside the container).
    pub listen: String,
    /// user@host of the developer.
    pub client_name: String,
    /// Kubernetes connections: the reduced kubeconfig the CLI uploaded; the manager is then
    /// reached through the API port-forward (`portforward.rs`).
    pub kubeconfig: Option<String>,
    /// Kubernetes connections: the API server URL as the user's kubeconfig names it.
    pub server: String,
    /// The manager's client token (`TP_CLIENT_TOKEN`, protocol/src/auth.rs).
    pub token: Option<Token>,
    /// `--also-proxy` subnets (`TP_ALSO_PROXY`), which the manager lets outbound streams dial.
    pub also_proxy: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("missing environment variable {0}")]
    MissingEnv(&'static str),
    #[error("{0} is not a telepresence credential; run telepresence connect again")]
    BadToken(&'static str),
    #[error("cannot reach the traffic-manager at {0}: {1}")]
    Manager(String, String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("gRPC server: {0}")]
    Serve(String),
    #[error(transparent)]
    Outbound(#[from] crate::outbound::OutboundError),
}

impl DaemonConfig {
    pub fn from_env() -> Result<Self, DaemonError> {
        let req = |k: &'static str| std::env::var(k).map_err(|_| DaemonError::MissingEnv(k));
        let opt = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        let kubeconfig = std::env::var("TP_KUBECONFIG")
            .ok()
            .filter(|k| !k.is_empty());
        // Through the port-forward the addresses are only known once it listens.
        let addr = |k: &'static str| match kubeconfig {
            Some(_) => Ok(opt(k, "")),
            None => req(k),
        };
        Ok(DaemonConfig {
            connection: req("TP_CONNECTION")?,
            namespace: req("TP_NAMESPACE")?,
            manager_addr: addr("TP_MANAGER_ADDR")?,
            tunnel_addr: addr("TP_TUNNEL_ADDR")?,
            server: opt("TP_SERVER", ""),
            kubeconfig: kubeconfig.clone(),
            manager_namespace: opt(protocol::ports::env::MANAGER_NAMESPACE, ""),
            context: opt("TP_CONTEXT", ""),
            listen: opt("TP_LISTEN", "0.0.0.0:7777"),
            client_name: opt("TP_CLIENT_NAME", "user@host"),
            token: std::env::var(protocol::auth::CLIENT_TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty())
                .map(|t| {
                    Token::parse(&t)
                        .map_err(|_| DaemonError::BadToken(protocol::auth::CLIENT_TOKEN_ENV))
                })
                .transpose()?,
            also_proxy: opt(protocol::ports::env::ALSO_PROXY, "")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

pub struct Session {
    pub cfg: DaemonConfig,
    pub client: ManagerClient,
    /// Presents the client token on every manager call.
    pub bearer: Bearer,
    pub cluster: ClusterInfo,
    session: Mutex<SessionInfo>,
    /// The latest snapshot of this client's intercepts.
    pub intercepts: watch::Sender<Vec<InterceptInfo>>,
    /// Specs created through this daemon, re-created after a re-arrival.
    pub specs: Mutex<Vec<InterceptSpec>>,
    /// Wakes [`Session::keep_alive`] when a watch stream broke: the manager may have restarted
    /// or ended the session, and the intercepts should resume at once.
    poke: tokio::sync::Notify,
}

impl Session {
    /// Connects to the manager (retrying for a while, it may still be starting) and arrives.
    pub async fn establish(cfg: DaemonConfig) -> Result<Self, DaemonError> {
        let endpoint = Endpoint::from_shared(format!("http://{}", cfg.manager_addr))
            .map_err(|e| DaemonError::Manager(cfg.manager_addr.clone(), e.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            // A dead connection (manager gone, network cut) is found within ~4 s.
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let channel = loop {
            match endpoint.connect().await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(DaemonError::Manager(
                        cfg.manager_addr.clone(),
                        e.to_string(),
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let bearer = Bearer::new(cfg.token.clone());
        let mut client = protocol::auth::manager_client(channel, bearer.clone());
        let resp = client
            .arrive_as_client(client_info(&cfg))
            .await
            .map_err(|e| DaemonError::Manager(cfg.manager_addr.clone(), e.message().into()))?
            .into_inner();
        let (intercepts, _) = watch::channel(Vec::new());
        Ok(Session {
            cfg,
            client,
            bearer,
            cluster: resp.cluster.unwrap_or_default(),
            session: Mutex::new(resp.session.unwrap_or_default()),
            intercepts,
            specs: Mutex::new(Vec::new()),
            poke: tokio::sync::Notify::new(),
        })
    }

    /// A session that never arrived, with a manager client that connects lazily (for tests of
    /// the parts that hold a session).
    #[cfg(test)]
    pub fn for_test(cfg: DaemonConfig, cluster: ClusterInfo) -> Self {
        let channel = Endpoint::from_shared(format!("http://{}", cfg.manager_addr))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        let (intercepts, _) = watch::channel(Vec::new());
        let bearer = Bearer::new(cfg.token.clone());
        Session {
            cfg,
            client: protocol::auth::manager_client(channel, bearer.clone()),
            bearer,
            cluster,
            session: Mutex::new(SessionInfo::default()),
            intercepts,
            specs: Mutex::new(Vec::new()),
            poke: tokio::sync::Notify::new(),
        }
    }

    pub fn session(&self) -> SessionInfo {
        self.session.lock().unwrap().clone()
    }

    /// Renews the lease (every lease/3, or at once when a watch stream broke); arrives again
    /// (and re-creates intercepts) if the manager lost us.
    pub async fn keep_alive(self: std::sync::Arc<Self>) {
        loop {
            let s = self.session();
            let period = Duration::from_secs(u64::from(s.lease_seconds.max(3) / 3));
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = self.poke.notified() => {}
            }
            match self.client.clone().remain(s).await {
                Ok(_) => {}
                Err(e) if e.code() == Code::NotFound => {
                    tracing::warn!("manager forgot our session; arriving again");
                    self.rearrive().await;
                }
                Err(e) if e.code() == Code::Unauthenticated => self.refresh_token(&e).await,
                Err(e) => tracing::warn!("lease renewal failed: {}", e.message()),
            }
        }
    }

    /// The manager no longer accepts our client token (rotated past its grace period): a
    /// Kubernetes connection reads the current one with its kubeconfig, as `connect` did.
    async fn refresh_token(&self, refused: &tonic::Status) {
        let fresh = match &self.cfg.kubeconfig {
            Some(path) => {
                kubernetes::auth::client_token_with(path, &self.cfg.manager_namespace).await
            }
            None => None,
        };
        match fresh {
            Some(t) => {
                tracing::info!("the manager's client credential was rotated; using the new one");
                self.bearer.set(t);
            }
            None => tracing::warn!("{}", refused.message()),
        }
    }

    async fn rearrive(&self) {
        let Ok(resp) = self
            .client
            .clone()
            .arrive_as_client(client_info(&self.cfg))
            .await
        else {
            return;
        };
        let new = resp.into_inner().session.unwrap_or_default();
        *self.session.lock().unwrap() = new.clone();
        let specs = self.specs.lock().unwrap().clone();
        for spec in specs {
            let r = self
                .client
                .clone()
                .create_intercept(CreateInterceptRequest {
                    session: Some(new.clone()),
                    spec: Some(spec.clone()),
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(intercept = %spec.name, "could not resume intercept: {}", e.message());
            }
        }
    }

    /// Keeps the intercept snapshot current.
    pub async fn watch_intercepts(self: std::sync::Arc<Self>) {
        loop {
            if let Ok(resp) = self.client.clone().watch_intercepts(self.session()).await {
                let mut stream = resp.into_inner();
                while let Ok(Some(snap)) = stream.message().await {
                    self.intercepts.send_replace(snap.intercepts);
                }
            }
            self.poke.notify_one();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Delivers intercepted connections: for each dial request, dial the handler locally and
    /// join the manager's tunnel with the same connection id.
    pub async fn serve_dials(self: std::sync::Arc<Self>) {
        loop {
            if let Ok(resp) = self.client.clone().watch_dials(self.session()).await {
                let mut stream = resp.into_inner();
                while let Ok(Some(req)) = stream.message().await {
                    let tunnel = self.cfg.tunnel_addr.clone();
                    let session = self.session();
                    // The manager reaches this namespace's address only where the daemon
                    // reaches the manager's without a port-forward.
                    let direct = self.cfg.kubeconfig.is_none();
                    tokio::spawn(async move {
                        if let Err(e) = deliver(&tunnel, &session, req, direct).await {
                            tracing::debug!("delivery failed: {e}");
                        }
                    });
                }
            }
            self.poke.notify_one();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn depart(&self) {
        let _ = self.client.clone().depart(self.session()).await;
    }
}

fn client_info(cfg: &DaemonConfig) -> ClientInfo {
    ClientInfo {
        name: cfg.client_name.clone(),
        connection: cfg.connection.clone(),
        namespace: cfg.namespace.clone(),
        version: protocol::VERSION.into(),
        also_proxy: cfg.also_proxy.clone(),
    }
}

/// Names `session` and its tunnel proof in a tunnel header (protocol/src/auth.rs).
pub fn prove(header: &mut TunnelHeader, session: &SessionInfo) {
    header.session_id.clone_from(&session.session_id);
    header.proof.clone_from(&session.tunnel_proof);
}

/// Delivers one intercepted connection: dials the handler at `req.target_host:target_port` and
/// joins the tunnel with it. When `direct` and the handler listens on every address of this
/// namespace (crate::listening), the manager connects to it itself instead: the answer names
/// this namespace's address as the manager sees it, and no byte of the connection passes
/// through the daemon.
async fn deliver(
    tunnel: &str,
    session: &SessionInfo,
    req: DialRequest,
    direct: bool,
) -> std::io::Result<()> {
    let loopback = matches!(req.target_host.as_str(), "127.0.0.1" | "localhost" | "::1");
    if direct
        && loopback
        && u16::try_from(req.target_port).is_ok_and(crate::listening::on_all_addresses)
    {
        let mut t = dial(tunnel).await?;
        let mut header = TunnelHeader {
            conn_id: req.conn_id,
            intercept_id: req.intercept_id,
            target: std::net::SocketAddr::new(t.local_addr()?.ip(), req.target_port as u16)
                .to_string(),
            ..Default::default()
        };
        prove(&mut header, session);
        return write_header(&mut t, Role::Client, &header).await;
    }
    let target = format!("{}:{}", req.target_host, req.target_port);
    let (local, t) = tokio::join!(dial(&target), dial(tunnel));
    let mut t = t?;
    let mut header = TunnelHeader {
        conn_id: req.conn_id,
        intercept_id: req.intercept_id,
        ..Default::default()
    };
    prove(&mut header, session);
    match local {
        Ok(mut local) => {
            write_header(&mut t, Role::Client, &header).await?;
            splice(&mut t, &mut local).await.map(|_| ())
        }
        Err(e) => {
            header.error = Some(protocol::tunnel::HeaderError::Unreachable {
                target,
                reason: e.to_string(),
            });
            write_header(&mut t, Role::Client, &header).await
        }
    }
}
