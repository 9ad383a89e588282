//! The test app's UDP client and name lookup: `udp-send HOST:PORT MESSAGE` sends one
//! datagram and prints the reply (the echo server answers `<name>:<message>`), and
//! `lookup NAME` prints the IPv4 addresses DNS gives for a name, one per line, asking the
//! resolv.conf nameservers directly (with its search domains).

use crate::testapp::{dns_lookup, resolve, ResolvConf};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

/// Sends `msg` to `host:port` over UDP and returns the reply; retries a few times (UDP).
pub async fn udp_request(
    host: &str,
    port: u16,
    msg: &str,
    timeout: Duration,
) -> io::Result<String> {
    let sock = connected_udp(host, port).await?;
    let addr = sock.peer_addr()?;
    let mut buf = vec![0u8; 65536];
    let tries = 5u32;
    for _ in 0..tries {
        sock.send(msg.as_bytes()).await?;
        if let Ok(r) = tokio::time::timeout(timeout / tries, sock.recv(&mut buf)).await {
            let n = r?;
            return Ok(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no UDP reply from {addr} within {timeout:?}"),
    ))
}

/// The IPv4 addresses DNS gives for `name` (asking resolv.conf's nameservers directly).
pub async fn lookup(name: &str) -> io::Result<Vec<IpAddr>> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    dns_lookup(name, &ResolvConf::parse(&conf)).await
}

/// A UDP socket connected to the first address of `host:port`.
pub async fn connected_udp(host: &str, port: u16) -> io::Result<UdpSocket> {
    let addr = *resolve(host, port)
        .await?
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address")))?;
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    Ok(sock)
}
