//! Relaying one UDP flow over a tunnel stream: datagrams framed by
//! `protocol::tunnel::{write_datagram, read_datagram}` on the stream, a connected UDP socket on
//! the other side (the manager's outbound flows, the agent's pod-local flows).

use protocol::tunnel::{read_datagram, write_datagram, MAX_DATAGRAM};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{TcpStream, UdpSocket};

/// Relays framed datagrams between a stream and a connected UDP socket until either side ends
/// or nothing moves for `idle`. Each direction runs as its own future so no read is ever cut
/// in half.
pub async fn relay_udp(stream: TcpStream, sock: UdpSocket, idle: Duration) -> std::io::Result<()> {
    let start = tokio::time::Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let (mut r, mut w) = stream.into_split();
    let up = async {
        let mut buf = Vec::with_capacity(2048);
        while read_datagram(&mut r, &mut buf).await?.is_some() {
            touch();
            // A send error (e.g. ICMP port unreachable of an earlier datagram) is what UDP does:
            // the datagram is lost, the flow goes on.
            let _ = sock.send(&buf).await;
        }
        Ok::<_, std::io::Error>(())
    };
    let down = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            match sock.recv(&mut buf).await {
                Ok(n) => {
                    touch();
                    write_datagram(&mut w, &buf[..n]).await?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err::<(), _>(e),
            }
        }
    };
    let watchdog = async {
        loop {
            tokio::time::sleep(idle / 4).await;
            let quiet = start.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
            if quiet >= idle.as_millis() as u64 {
                return;
            }
        }
    };
    tokio::select! {
        r = up => r,
        r = down => r,
        _ = watchdog => Ok(()),
    }
}
