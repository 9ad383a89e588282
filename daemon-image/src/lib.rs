//! The client daemon, run as `telepresence daemon-foreground` in container `tp-<connection>`:
//! it holds the session with the traffic-manager (lease renewal, re-arrival), serves the CLI's
//! gRPC API on a port the container publishes on 127.0.0.1, and delivers intercepted connections
//! by dialing the handler inside its own network namespace (which the handler container shares).

mod connector;
pub mod fs;
pub mod portforward;
mod session;

pub use session::{DaemonConfig, DaemonError};

use std::sync::Arc;

/// The traffic-manager's gRPC and tunnel ports in its pod.
pub const MANAGER_GRPC_PORT: u16 = 8081;
pub const MANAGER_TUNNEL_PORT: u16 = 8082;
use std::time::Duration;

/// Runs the daemon until `Quit` is called or the process is signalled.
pub async fn run(mut cfg: DaemonConfig) -> Result<(), DaemonError> {
    if let Some(kubeconfig) = cfg.kubeconfig.clone() {
        let (grpc, tunnel) = portforward::start(
            &kubeconfig,
            &cfg.manager_namespace,
            (&cfg.manager_addr, MANAGER_GRPC_PORT),
            (&cfg.tunnel_addr, MANAGER_TUNNEL_PORT),
        )
        .await
        .map_err(|e| {
            DaemonError::Manager(
                format!("namespace {}", cfg.manager_namespace),
                e.to_string(),
            )
        })?;
        tracing::info!(%grpc, %tunnel, "reaching the traffic-manager through the Kubernetes port-forward");
        cfg.manager_addr = grpc;
        cfg.tunnel_addr = tunnel;
    }
    let session = Arc::new(session::Session::establish(cfg.clone()).await?);
    let (quit_tx, mut quit_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(session.clone().keep_alive());
    tokio::spawn(session.clone().watch_intercepts());
    tokio::spawn(session.clone().serve_dials());
    let svc = connector::ConnectorService::new(session.clone(), quit_tx);
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| DaemonError::Listen(cfg.listen.clone(), e))?;
    tracing::info!(listen = %cfg.listen, "daemon ready");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = quit_rx.recv() => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(tp_rpc::connector::connector_server::ConnectorServer::new(
            svc,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| DaemonError::Serve(e.to_string()))?;
    // Give the manager a chance to drop our intercepts at once rather than at lease expiry.
    let _ = tokio::time::timeout(Duration::from_secs(2), session.depart()).await;
    Ok(())
}
