//! How a daemon of a Kubernetes connection reaches the traffic-manager: through the API
//! server's port-forward (one WebSocket per TCP connection) to a ready `traffic-manager` pod in
//! the manager namespace. Local listeners inside the daemon (gRPC and tunnel) stand in for the
//! manager's addresses, so the session code dials them exactly as it dials a Docker-engine
//! manager. A forward that cannot be opened makes the next connection pick another ready pod.
//!
//! The `v4.channel.k8s.io` protocol has no half-close: when the local side shuts down its
//! write half, `kube` ends the whole WebSocket (as `kubectl port-forward` does). The manager's
//! gRPC (HTTP/2) and the tunnel's request/response exchanges do not rely on half-close.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

/// Label selector of the manager's pods (the chart's Deployment).
pub const MANAGER_SELECTOR: &str = "app=traffic-manager";

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("kubeconfig {0}: {1}")]
    Config(String, String),
    #[error("Kubernetes API: {0}")]
    Api(String),
    #[error("no ready traffic-manager pod in namespace {0}; install it with `telepresence helm install`")]
    NoPod(String),
    #[error("cannot listen for port-forwarded connections: {0}")]
    Listen(std::io::Error),
}

/// An error with its causes (`client error (Connect): … invalid peer certificate …`).
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Opens port-forwards to the current manager pod; remembers the pod until a forward fails.
pub struct Forwarder {
    pods: Mutex<Api<Pod>>,
    namespace: String,
    current: Mutex<Option<String>>,
    /// The kubeconfig file and its modification time when last loaded: a newer file (the CLI
    /// uploads refreshed credentials when `connect` runs again) replaces the client.
    source: Option<(String, Mutex<Option<std::time::SystemTime>>)>,
}

pub(crate) async fn client_from(path: &str) -> Result<kube::Client, ForwardError> {
    let kc = Kubeconfig::read_from(path)
        .map_err(|e| ForwardError::Config(path.into(), e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| ForwardError::Config(path.into(), e.to_string()))?;
    kube::Client::try_from(cfg).map_err(|e| ForwardError::Config(path.into(), e.to_string()))
}

fn modified(path: &str) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Forwarder {
    /// A forwarder from a kubeconfig file (reduced to one context by the CLI), reloaded when
    /// the file changes.
    pub async fn from_kubeconfig(path: &str, namespace: &str) -> Result<Self, ForwardError> {
        let loaded = modified(path);
        let mut f = Self::new(client_from(path).await?, namespace);
        f.source = Some((path.to_string(), Mutex::new(loaded)));
        Ok(f)
    }

    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Forwarder {
            pods: Mutex::new(Api::namespaced(client, namespace)),
            namespace: namespace.into(),
            current: Mutex::new(None),
            source: None,
        }
    }

    /// The pods API, with a client rebuilt from the kubeconfig file if it changed.
    async fn api(&self) -> Api<Pod> {
        if let Some((path, loaded)) = &self.source {
            let now = modified(path);
            let stale = *loaded.lock().unwrap() != now;
            if stale {
                match client_from(path).await {
                    Ok(c) => {
                        tracing::info!(%path, "kubeconfig changed: using its new credentials");
                        *self.pods.lock().unwrap() = Api::namespaced(c, &self.namespace);
                        *loaded.lock().unwrap() = now;
                    }
                    Err(e) => tracing::warn!("kubeconfig changed but is unusable: {e}"),
                }
            }
        }
        self.pods.lock().unwrap().clone()
    }

    /// A ready manager pod: the remembered one, else the first ready one the API lists.
    pub async fn pod(&self) -> Result<String, ForwardError> {
        if let Some(p) = self.current.lock().unwrap().clone() {
            return Ok(p);
        }
        let list = self
            .api()
            .await
            .list(&ListParams::default().labels(MANAGER_SELECTOR))
            .await
            .map_err(|e| ForwardError::Api(with_causes(&e)))?;
        let mut ready: Vec<&Pod> = list.items.iter().filter(|p| is_ready(p)).collect();
        // Newest first: after a rollout the old pod may still be terminating.
        ready.sort_by(|a, b| {
            b.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .cmp(&a.metadata.creation_timestamp.as_ref().map(|t| t.0))
        });
        let name = ready
            .first()
            .and_then(|p| p.metadata.name.clone())
            .ok_or_else(|| ForwardError::NoPod(self.namespace.clone()))?;
        *self.current.lock().unwrap() = Some(name.clone());
        Ok(name)
    }

    fn forget(&self, pod: &str) {
        let mut cur = self.current.lock().unwrap();
        if cur.as_deref() == Some(pod) {
            *cur = None;
        }
    }

    /// Forwards one accepted connection to `port` of the manager pod. When the forward cannot
    /// be opened, the pod is forgotten and one other ready pod is tried.
    pub async fn forward(&self, mut conn: TcpStream, port: u16) -> Result<(), ForwardError> {
        let _ = conn.set_nodelay(true);
        let mut attempt = 0;
        let (pod, mut pf) = loop {
            let pod = self.pod().await?;
            match self.api().await.portforward(&pod, &[port]).await {
                Ok(pf) => break (pod, pf),
                Err(e) => {
                    tracing::warn!(%pod, port, "port-forward failed: {e}");
                    self.forget(&pod);
                    attempt += 1;
                    if attempt >= 2 {
                        return Err(ForwardError::Api(with_causes(&e)));
                    }
                }
            }
        };
        let Some(mut stream) = pf.take_stream(port) else {
            return Err(ForwardError::Api(format!("no stream for port {port}")));
        };
        let errors = pf.take_error(port);
        let copied = tokio::io::copy_bidirectional(&mut conn, &mut stream).await;
        drop(stream);
        drop(conn);
        if let Some(err) = errors {
            if let Ok(Some(msg)) =
                tokio::time::timeout(std::time::Duration::from_millis(100), err).await
            {
                tracing::warn!(%pod, port, "port-forward error from the API server: {msg}");
                self.forget(&pod);
            }
        }
        if let Err(e) = pf.join().await {
            tracing::debug!(%pod, port, "port-forward ended: {e}");
            self.forget(&pod);
        }
        if let Err(e) = copied {
            tracing::debug!(%pod, port, "forwarded connection ended: {e}");
        }
        Ok(())
    }

    /// Listens on `bind` (`host:port`; empty: an ephemeral port on 127.0.0.1) and forwards
    /// every connection to `port` of the manager pod; returns the local address.
    pub async fn listen(
        self: Arc<Self>,
        bind: &str,
        port: u16,
    ) -> Result<SocketAddr, ForwardError> {
        let bind = if bind.is_empty() { "127.0.0.1:0" } else { bind };
        let l = TcpListener::bind(bind)
            .await
            .map_err(ForwardError::Listen)?;
        let addr = l.local_addr().map_err(ForwardError::Listen)?;
        tokio::spawn(async move {
            loop {
                let conn = match l.accept().await {
                    Ok((c, _)) => c,
                    Err(e) => {
                        // E.g. out of file descriptors: don't spin.
                        tracing::warn!("accepting a connection for the manager: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.forward(conn, port).await {
                        tracing::warn!(port, "cannot reach the traffic-manager: {e}");
                    }
                });
            }
        });
        Ok(addr)
    }
}

/// Ready = condition `Ready=True`, running and not being deleted.
pub fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Starts the gRPC and tunnel listeners (on the given local addresses, or ephemeral ports
/// when empty) for a manager in `namespace`; returns their `host:port` addresses. The tunnel
/// address is fixed by the CLI because the volume sync container, which shares the daemon's
/// network namespace, dials it too.
pub async fn start(
    kubeconfig: &str,
    namespace: &str,
    (grpc_bind, grpc_port): (&str, u16),
    (tunnel_bind, tunnel_port): (&str, u16),
) -> Result<(String, String), ForwardError> {
    let f = Arc::new(Forwarder::from_kubeconfig(kubeconfig, namespace).await?);
    // Fail early, with the reason, when no manager runs.
    f.pod().await?;
    let g = f.clone().listen(grpc_bind, grpc_port).await?;
    let t = f.listen(tunnel_bind, tunnel_port).await?;
    Ok((g.to_string(), t.to_string()))
}
