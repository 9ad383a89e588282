//! The client daemon, run as `telepresence daemon-foreground` in container `tp-<connection>`:
//! it holds the session with the traffic-manager (lease renewal, re-arrival), serves the CLI's
//! gRPC API on a port the container publishes on 127.0.0.1, and delivers intercepted connections
//! by dialing the handler inside its own network namespace (which the handler container shares).

mod connector;
pub mod dns;
pub mod fs;
pub mod kernel_fwd;
pub mod kernel_tcp;
pub mod listening;
pub mod netstack;
#[cfg(test)]
mod netstack_tests;
pub mod outbound;
pub mod packet;
mod session;
pub mod subnets;
pub mod to_pod;
#[allow(unsafe_code)] // SIOCADDRT ioctl and its sockaddr: each block says why it is sound
pub mod tun;

pub use session::{DaemonConfig, DaemonError};

use std::sync::Arc;

/// The traffic-manager's gRPC and tunnel ports in its pod.
pub use protocol::ports::{MANAGER_GRPC_PORT, MANAGER_TUNNEL_PORT};
use std::time::Duration;

/// Runs the daemon until `Quit` is called or the process is signalled.
pub async fn run(mut cfg: DaemonConfig) -> Result<(), DaemonError> {
    if let Some(kubeconfig) = cfg.kubeconfig.clone() {
        let (grpc, tunnel) = kubernetes::portforward::start(
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
    let outbound = start_outbound(session.clone()).await?;
    let (outbound, forwards) = outbound;
    let svc = connector::ConnectorService::new(session.clone(), quit_tx, outbound, forwards);
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
        .add_service(protocol::connector::connector_server::ConnectorServer::new(
            svc,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| DaemonError::Serve(e.to_string()))?;
    // Give the manager a chance to drop our intercepts at once rather than at lease expiry.
    let _ = tokio::time::timeout(Duration::from_secs(2), session.depart()).await;
    Ok(())
}

/// Starts the outbound path (routes, TUN, DNS); what `status` reports about it, and the count
/// of in-kernel forwards.
async fn start_outbound(
    session: Arc<session::Session>,
) -> Result<
    (
        Arc<protocol::connector::DaemonStatus>,
        Arc<std::sync::atomic::AtomicU32>,
    ),
    DaemonError,
> {
    let ocfg = outbound::OutboundConfig::from_env().map_err(outbound::OutboundError::from)?;
    let dcfg = dns::DnsConfig::from_env().map_err(outbound::OutboundError::from)?;
    let outbound::Started {
        routed,
        tcp,
        forwards,
    } = outbound::start(session.clone(), &ocfg).await?;
    let dns = Arc::new(dns::Dns::new(session.clone(), dcfg.clone(), &routed));
    let status = protocol::connector::DaemonStatus {
        subnets: routed,
        outbound_tcp: tcp.into(),
        dns: Some(protocol::connector::DnsStatus {
            local_ip: dcfg.listen.ip().to_string(),
            remote_ip: dcfg
                .upstream
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(","),
            exclude_suffixes: dns::EXCLUDE_SUFFIXES
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            include_suffixes: Vec::new(),
            timeout_seconds: dns::UPSTREAM_TIMEOUT.as_secs() as u32,
            cluster_domain: dns.domain().to_string(),
        }),
        ..Default::default()
    };
    // Bind now so a taken port fails the start, then serve in the background.
    let (sock, tcp) = dns
        .bind()
        .await
        .map_err(|e| outbound::OutboundError::DnsListen(dcfg.listen, e))?;
    tokio::spawn(dns.clone().serve_tcp(tcp));
    let server = dns.serve(sock);
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("DNS server stopped: {e}");
        }
    });
    Ok((Arc::new(status), forwards))
}
