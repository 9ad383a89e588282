//! Owns moving bytes between sockets: the relay that joins two TCP connections (small messages
//! copied, bulk moved with kernel `splice(2)` through a pipe on Linux; see
//! relay/src/zero_copy.rs), the socket tuning every tunnel and proxy socket gets, dialing a
//! tunnel, and relaying a UDP flow framed on a tunnel stream (`src/udp.rs`). The tunnel's header
//! codec is the contract in protocol/src/tunnel.rs; this crate only carries the bytes after it.

#![deny(unsafe_code)]
#![deny(missing_docs)]

use std::time::Duration;
use tokio::net::TcpStream;

pub mod udp;
#[cfg(target_os = "linux")]
mod zero_copy;

pub use udp::relay_udp;

/// Buffer size used when splicing two sockets without `splice(2)`.
pub const SPLICE_BUF: usize = 256 * 1024;

/// Applies the socket options every tunnel and proxy socket needs: `TCP_NODELAY` and keepalive.
pub fn tune(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    steady_keepalive(s);
}

/// The keepalive of a long-lived tunnel or proxy socket.
fn steady_keepalive(s: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
}

/// Makes a peer that vanished (its host or namespace gone, so no FIN or RST ever comes) an
/// error within about `within`: unacknowledged data aborts the connection after `within`
/// (`TCP_USER_TIMEOUT`), and an idle one is probed from then on. A slow application on the
/// other side does not trip it: its kernel still acknowledges. For the moments when giving up
/// early still helps (the agent's replay window, agent/src/failopen.rs); [`patient`] undoes it.
pub fn impatient(s: &TcpStream, within: Duration) {
    let sock = socket2::SockRef::from(s);
    #[cfg(target_os = "linux")]
    let _ = sock.set_tcp_user_timeout(Some(within));
    let ka = socket2::TcpKeepalive::new()
        .with_time(within)
        .with_interval(Duration::from_secs(1));
    #[cfg(target_os = "linux")]
    let ka = ka.with_retries(2);
    let _ = sock.set_tcp_keepalive(&ka);
}

/// Back to [`tune`]'s patience after [`impatient`].
pub fn patient(s: &TcpStream) {
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(s).set_tcp_user_timeout(None);
    steady_keepalive(s);
}

/// Connects to `addr` and tunes the socket.
pub async fn dial(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    tune(&s);
    Ok(s)
}

/// Copies both directions until both are done, propagating half-close (a FIN on one side
/// becomes a shutdown of the other's write half). Returns bytes (a→b, b→a).
///
/// On Linux small messages are copied and bulk moves with `splice(2)` through a pipe per
/// direction, so those bytes never enter user space; elsewhere it copies.
pub async fn splice(a: &mut TcpStream, b: &mut TcpStream) -> std::io::Result<(u64, u64)> {
    #[cfg(target_os = "linux")]
    {
        let (a, b) = (&*a, &*b);
        tokio::try_join!(zero_copy::one_way(a, b), zero_copy::one_way(b, a))
    }
    #[cfg(not(target_os = "linux"))]
    tokio::io::copy_bidirectional_with_sizes(a, b, SPLICE_BUF, SPLICE_BUF).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A relay under test: the listener it dials for each caller (the server), the address
    /// callers dial, and the relay of the first caller, which ends with the bytes it moved.
    async fn relay_under_test() -> (
        TcpListener,
        std::net::SocketAddr,
        tokio::task::JoinHandle<(u64, u64)>,
    ) {
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
        let proxy = tokio::spawn(async move {
            let (mut inbound, _) = l1.accept().await.unwrap();
            let mut outbound = dial(&a2.to_string()).await.unwrap();
            splice(&mut inbound, &mut outbound).await.unwrap()
        });
        (l2, a1, proxy)
    }

    #[tokio::test]
    async fn splice_propagates_half_close() {
        // client -> [proxy] -> server
        let (l2, a1, proxy) = relay_under_test().await;
        let server = tokio::spawn(async move {
            let (mut s, _) = l2.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap(); // ends only if the FIN crossed the proxy
            s.write_all(&got).await.unwrap();
            s.write_all(b"!").await.unwrap();
        });
        let mut c = dial(&a1.to_string()).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello!");
        server.await.unwrap();
        assert_eq!(proxy.await.unwrap(), (5, 6));
    }

    #[tokio::test]
    async fn splice_moves_bulk_data_intact() {
        const N: usize = 8 * 1024 * 1024 + 123;
        let (l2, a1, proxy) = relay_under_test().await;
        // The server echoes everything back, so both directions carry N bytes at once.
        let server = tokio::spawn(async move {
            let (s, _) = l2.accept().await.unwrap();
            let (mut r, mut w) = s.into_split();
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let c = dial(&a1.to_string()).await.unwrap();
        let (mut r, mut w) = c.into_split();
        let data: Vec<u8> = (0..N).map(|i| (i * 7 % 251) as u8).collect();
        let expect = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::with_capacity(N);
        r.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        server.await.unwrap();
        assert!(back == expect, "bytes changed in transit");
        assert_eq!(proxy.await.unwrap(), (N as u64, N as u64));
    }

    #[tokio::test]
    async fn messages_of_every_size_cross_in_order_as_the_relay_switches_modes() {
        // Below, at and above the copy buffer, and bulk, in an order that switches the relay
        // between copying and splicing in both directions.
        const SIZES: [usize; 9] = [1, 100, 1024, 16383, 16384, 16385, 300_000, 3, 70_000];
        // Message `k`: bytes that differ along it and from every other message.
        let message = |k: usize, n: usize| -> Vec<u8> {
            (0..n).map(|j| (j * 7 + k * 31 + j / 251) as u8).collect()
        };
        let (l2, a1, proxy) = relay_under_test().await;
        // The server answers each message with its bytes reversed, once all of it arrived.
        let server = tokio::spawn(async move {
            let (mut s, _) = l2.accept().await.unwrap();
            for k in 0..3 * SIZES.len() {
                let mut m = vec![0u8; SIZES[k % SIZES.len()]];
                s.read_exact(&mut m).await.unwrap();
                assert!(
                    m == message(k, m.len()),
                    "message {k} changed on the way in"
                );
                m.reverse();
                s.write_all(&m).await.unwrap();
            }
        });
        let mut c = dial(&a1.to_string()).await.unwrap();
        let mut total = 0u64;
        for k in 0..3 * SIZES.len() {
            let n = SIZES[k % SIZES.len()];
            c.write_all(&message(k, n)).await.unwrap();
            let mut back = vec![0u8; n];
            c.read_exact(&mut back).await.unwrap();
            back.reverse();
            assert!(back == message(k, n), "answer {k} changed on the way back");
            total += n as u64;
        }
        c.shutdown().await.unwrap();
        server.await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(proxy.await.unwrap(), (total, total));
    }
}
