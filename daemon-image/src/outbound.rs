//! The outbound path as the daemon runs it: reads its settings from the environment the
//! CLI gives the daemon container, decides and installs the routes, starts the TUN device with the
//! packet → stream layer (UDP, and TCP when the kernel path cannot start), the kernel path for
//! TCP (`kernel_tcp.rs`), and dials cluster targets through the manager's tunnel.

use crate::dns::DnsConfigError;
use crate::netstack::{DialError, Dialer, Proto, Smoltcp};
use crate::session::Session;
use crate::subnets::{self, Cidr, SubnetError};
use protocol::connector::OutboundTcp;
use protocol::tunnel::{read_header_timeout, write_header, Role, TunnelHeader, TunnelKind};
use relay::dial;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long the manager may take to dial a target and answer (its own dial timeout is 5 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(8);

/// Outbound settings (env `TP_ALSO_PROXY`, `TP_NEVER_PROXY`, `TP_ALLOW_CONFLICTING_SUBNETS`:
/// comma-separated CIDRs; `TP_TUN_MTU`; `TP_TCP_BUFFER`).
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    pub also: Vec<Cidr>,
    pub never: Vec<Cidr>,
    pub allow: Vec<Cidr>,
    pub mtu: u16,
    pub tcp_buffer: u32,
}

impl OutboundConfig {
    pub fn from_env() -> Result<Self, SubnetError> {
        let list = |k: &str| subnets::parse_list(&std::env::var(k).unwrap_or_default());
        let num = |k: &str, d: u32| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        Ok(OutboundConfig {
            also: list(protocol::ports::env::ALSO_PROXY)?,
            never: list(protocol::ports::env::NEVER_PROXY)?,
            allow: list(protocol::ports::env::ALLOW_CONFLICTING_SUBNETS)?,
            mtu: num(protocol::ports::env::TUN_MTU, 16000).clamp(1280, 65000) as u16,
            tcp_buffer: num(protocol::ports::env::TCP_BUFFER, 128 * 1024).clamp(16 * 1024, 4 << 20),
        })
    }
}

/// Dials cluster targets through the manager's tunnel listener.
pub struct TunnelDialer {
    pub session: Arc<Session>,
}

impl TunnelDialer {
    /// Opens a tunnel connection of `kind` to `dst`; returns it with the manager's answer once
    /// that says yes.
    async fn open(
        &self,
        kind: TunnelKind,
        dst: SocketAddr,
    ) -> Result<(TcpStream, TunnelHeader), DialError> {
        let mut s = dial(&self.session.cfg.tunnel_addr)
            .await
            .map_err(DialError::Tunnel)?;
        let mut header = TunnelHeader {
            conn_id: uuid::Uuid::new_v4().to_string(),
            kind,
            target: dst.to_string(),
            ..Default::default()
        };
        crate::session::prove(&mut header, &self.session.session());
        write_header(&mut s, Role::Client, &header)
            .await
            .map_err(DialError::Tunnel)?;
        let (_, answer) = read_header_timeout(&mut s, ANSWER_TIMEOUT)
            .await
            .map_err(DialError::Answer)?;
        match answer.error {
            None => Ok((s, answer)),
            Some(e) => Err(DialError::Refused(e.to_string())),
        }
    }
}

impl Dialer for TunnelDialer {
    async fn dial(&self, proto: Proto, dst: SocketAddr) -> Result<TcpStream, DialError> {
        let kind = match proto {
            Proto::Tcp => TunnelKind::OutTcp,
            Proto::Udp => TunnelKind::OutUdp,
        };
        Ok(self.open(kind, dst).await?.0)
    }

    /// Only where the daemon reaches the manager's address itself (a Docker engine's network):
    /// through a Kubernetes port-forward the manager's address is not the daemon's to route to.
    async fn forward(
        &self,
        dst: std::net::SocketAddrV4,
    ) -> Result<crate::kernel_fwd::Held, DialError> {
        if self.session.cfg.kubeconfig.is_some() {
            return Err(DialError::Refused(
                "the manager is reached through a port-forward".into(),
            ));
        }
        let (s, answer) = self.open(TunnelKind::OutFwd, dst.into()).await?;
        Ok((crate::kernel_fwd::parse_answer(&answer.target)?, s))
    }
}

/// Why the outbound path (routes, TUN device, DNS server) cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    #[error(transparent)]
    Dns(#[from] DnsConfigError),
    #[error(
        "cannot create the TUN device {dev} (the daemon container needs NET_ADMIN and /dev/net/tun): {0}",
        dev = crate::tun::DEVICE
    )]
    Tun(std::io::Error),
    #[error("{0}")]
    Route(std::io::Error),
    /// The DNS server's address and why it cannot listen there.
    #[error("cannot serve DNS on {0}: {1}")]
    DnsListen(SocketAddr, std::io::Error),
}

/// The manager's IPv4 addresses as the daemon reaches them (never routed into the device).
fn manager_ips(session: &Session) -> Vec<std::net::Ipv4Addr> {
    [&session.cfg.tunnel_addr, &session.cfg.manager_addr]
        .into_iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .filter_map(|a| match a.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// What [`start`] routed, and which path carries TCP.
pub struct Started {
    /// The routed subnets.
    pub routed: Vec<String>,
    /// Unspecified when nothing is routed.
    pub tcp: OutboundTcp,
    /// How many cluster destinations the kernel forwards (crate::kernel_fwd), as it changes.
    pub forwards: Arc<AtomicU32>,
}

/// Installs the routes, the TUN pump and the kernel path for TCP.
pub async fn start(session: Arc<Session>, cfg: &OutboundConfig) -> Result<Started, OutboundError> {
    let existing = crate::tun::existing_routes();
    let manager_ip = manager_ips(&session);
    let plan = subnets::plan(
        &session.cluster.subnets,
        &cfg.also,
        &cfg.never,
        &cfg.allow,
        &existing,
        &manager_ip,
    )?;
    for s in &plan.skipped {
        tracing::warn!("subnet {s} is not routed: only IPv4 subnets are supported");
    }
    if plan.routes.is_empty() {
        tracing::info!("no subnets to route");
        return Ok(Started {
            routed: Vec::new(),
            tcp: OutboundTcp::Unspecified,
            forwards: Default::default(),
        });
    }
    let dev = crate::tun::create(cfg.mtu).map_err(OutboundError::Tun)?;
    for b in &plan.bypass {
        crate::tun::add_route(b.net, &b.dev, b.gateway).map_err(OutboundError::Route)?;
    }
    for r in &plan.routes {
        crate::tun::add_route(*r, crate::tun::DEVICE, None).map_err(OutboundError::Route)?;
    }
    let routed: Vec<String> = plan
        .routes
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    tracing::info!(subnets = ?routed, "routing the cluster's subnets through {}", crate::tun::DEVICE);
    let stack = Smoltcp {
        mtu: cfg.mtu as usize,
        tcp_buffer: cfg.tcp_buffer,
    };
    let dialer = Arc::new(TunnelDialer { session });
    // TCP through the kernel when nf_tables allows it; the userspace stack still carries UDP,
    // and TCP too when the redirect cannot be installed.
    let forwards = Arc::new(AtomicU32::new(0));
    let kernel = match crate::kernel_tcp::start(
        crate::tun::DEVICE,
        dialer.clone(),
        forwards.clone(),
    )
    .await
    {
        Ok(k) => {
            tracing::info!(
                port = k.port(),
                "TCP to the cluster goes through the kernel"
            );
            Some(k)
        }
        Err(e) => {
            tracing::warn!("TCP to the cluster goes through the userspace stack: {e}");
            None
        }
    };
    let tcp = if kernel.is_some() {
        OutboundTcp::Kernel
    } else {
        OutboundTcp::Userspace
    };
    let mtu = cfg.mtu as usize;
    tokio::spawn(async move {
        let _kernel = kernel;
        if let Err(e) = crate::netstack::run(stack, Arc::new(dev), dialer, mtu).await {
            tracing::error!("the outbound packet path stopped: {e}");
        }
    });
    Ok(Started {
        routed,
        tcp,
        forwards,
    })
}
