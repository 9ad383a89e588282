//! The outbound TCP path through the kernel. An nf_tables rule in the daemon's network
//! namespace (`netfilter::nft::install_owned_output_redirect`) redirects every TCP connection
//! routed into the TUN device to a listener of ours on `127.0.0.1`, so the kernel's own TCP
//! stack terminates the handler's connections (window scaling, segmentation offload, no copy
//! through a userspace stack). Each accepted connection's original destination
//! (`SO_ORIGINAL_DST`) is dialed through the manager like the userspace path does
//! ([`crate::netstack::Dialer`]), and the two sockets are spliced (`relay::splice`).
//!
//! A target the manager cannot reach gets a RST at once (linger 0 on close): the handler's
//! `connect` has already succeeded by then, so it sees "connection reset" on its first read or
//! write instead of "connection refused". UDP (and anything else) still goes through the TUN
//! device and the userspace stack (`netstack.rs`).
//!
//! Once a destination carried a connection, the daemon asks for an in-kernel forward to it
//! (`kernel_fwd.rs`): the handler's later connections to it no longer reach the listener.
//!
//! The table belongs to this process's netlink socket: when the daemon exits or is killed,
//! the kernel removes the redirect. Established connections keep their path when the rule
//! changes, since NAT is decided once per connection.

use crate::kernel_fwd::Forwarder;
use crate::netstack::{Dialer, Proto};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The daemon's outbound table (`table ip telepresence_out`).
pub const TABLE: &str = "telepresence_out";

/// Why the kernel path could not start (the daemon then carries TCP in user space).
#[derive(Debug, thiserror::Error)]
pub enum KernelTcpError {
    /// The listener on 127.0.0.1.
    #[error("cannot listen on 127.0.0.1 for redirected connections: {0}")]
    Listen(std::io::Error),
    /// The output device's index.
    #[error("cannot find the index of device {0}: {1}")]
    Device(String, std::io::Error),
    /// Installing the redirect.
    #[error(transparent)]
    Nft(#[from] netfilter::NftError),
}

/// A running kernel path: dropping it removes the redirect and stops accepting.
pub struct KernelTcp {
    forwards: Arc<Forwarder>,
    task: tokio::task::JoinHandle<()>,
    port: u16,
}

impl KernelTcp {
    /// The listener's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The in-kernel forwards (`kernel_fwd.rs`).
    pub fn forwards(&self) -> &Arc<Forwarder> {
        &self.forwards
    }
}

impl Drop for KernelTcp {
    fn drop(&mut self) {
        self.task.abort();
        self.forwards.close();
    }
}

/// Redirects the TCP connections routed out of device `dev` to a listener whose connections
/// `dialer` carries on; returns once the redirect is in place. `active` counts the in-kernel
/// forwards.
pub async fn start<X: Dialer>(
    dev: &str,
    dialer: Arc<X>,
    active: Arc<AtomicU32>,
) -> Result<KernelTcp, KernelTcpError> {
    let oif = netfilter::interface_index(dev).map_err(|e| KernelTcpError::Device(dev.into(), e))?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(KernelTcpError::Listen)?;
    let port = listener
        .local_addr()
        .map_err(KernelTcpError::Listen)?
        .port();
    let table = netfilter::nft::install_owned_output_redirect(TABLE, oif, port)?;
    let forwards = Arc::new(Forwarder::new(table, oif, port, active));
    let task = tokio::spawn(serve(listener, dialer, forwards.clone()));
    Ok(KernelTcp {
        forwards,
        task,
        port,
    })
}

async fn serve<X: Dialer>(listener: TcpListener, dialer: Arc<X>, forwards: Arc<Forwarder>) {
    let local = listener.local_addr().ok();
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!("accepting a redirected connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let dialer = dialer.clone();
        let forwards = forwards.clone();
        tokio::spawn(async move {
            let dst = match original_dst(&conn) {
                // A connection made to the listener itself was not redirected: nothing to dial.
                Ok(dst) if Some(dst) != local => dst,
                Ok(_) | Err(_) => return reset(conn),
            };
            carry(conn, peer, dst, dialer, &forwards).await;
        });
    }
}

/// Dials `dst` for the handler's connection `conn` and relays until both sides are done; a
/// destination that answered is worth an in-kernel forward.
async fn carry<X: Dialer>(
    mut conn: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    dialer: Arc<X>,
    forwards: &Arc<Forwarder>,
) {
    match dialer.dial(Proto::Tcp, dst).await {
        Ok(mut tunnel) => {
            forwards.want(dst, dialer.clone());
            relay::tune(&conn);
            if let Err(e) = relay::splice(&mut conn, &mut tunnel).await {
                tracing::debug!(%peer, %dst, "outbound connection ended: {e}");
            }
        }
        Err(e) => {
            tracing::debug!(%peer, %dst, "outbound connection refused: {e}");
            reset(conn);
        }
    }
}

/// The destination the handler asked for, before the redirect.
fn original_dst(conn: &TcpStream) -> std::io::Result<SocketAddr> {
    socket2::SockRef::from(conn)
        .original_dst_v4()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP address"))
}

/// Closes `conn` with a RST rather than a FIN.
fn reset(conn: TcpStream) {
    let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
    drop(conn);
}

#[cfg(test)]
#[path = "kernel_tcp_tests.rs"]
mod tests;
