//! The listening TCP sockets of the calling thread's network namespace, asked of the kernel
//! over `NETLINK_SOCK_DIAG` (`SOCK_DIAG_BY_FAMILY`, state `LISTEN` only): the answer stays a few
//! messages long however many connections the namespace holds, where `/proc/net/tcp` lists
//! every one of them (thousands in `TIME_WAIT` under load).

use crate::netlink::{self, Builder, ExchangeError, Malformed, Socket, NLM_F_DUMP, NLM_F_REQUEST};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then `inet_diag_sockid`.
const REQ_LEN: usize = 56;
/// Offsets in `struct inet_diag_msg`: `id.idiag_sport` (big-endian) and `id.idiag_src`.
const MSG_SPORT: usize = 4;
const MSG_SRC: usize = 8;

static SEQ: AtomicU32 = AtomicU32::new(1);

/// The addresses TCP sockets listen on at `port` (`0.0.0.0` / `::` for every address).
pub fn tcp_listeners(port: u16) -> io::Result<Vec<IpAddr>> {
    let sock = Socket::open(NETLINK_SOCK_DIAG)?;
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut b = Builder::new();
        let m = b.begin_msg(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq);
        b.put_header(&request(family as u8, port));
        b.end_msg(m);
        netlink::exchange(&sock, &b.finish(), &[seq], |msg| {
            if let Some(ip) = listener(msg.payload, port)? {
                out.push(ip);
            }
            Ok(())
        })
        .map_err(|e| match e {
            ExchangeError::Io(e) => e,
            ExchangeError::Nack { errno, .. } => io::Error::from_raw_os_error(errno),
            ExchangeError::Timeout => io::Error::from(io::ErrorKind::TimedOut),
            ExchangeError::Malformed(m) => io::Error::other(format!("sock_diag: {m}")),
        })?;
    }
    Ok(out)
}

/// The request for `family`'s TCP sockets in `LISTEN` on `port`.
fn request(family: u8, port: u16) -> [u8; REQ_LEN] {
    let mut req = [0u8; REQ_LEN];
    req[0] = family;
    req[1] = libc::IPPROTO_TCP as u8;
    req[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // id.idiag_sport: the kernel skips listeners on other ports (checked here again).
    req[8..10].copy_from_slice(&port.to_be_bytes());
    req
}

/// The local address of one `inet_diag_msg` when it listens on `port`.
fn listener(p: &[u8], port: u16) -> Result<Option<IpAddr>, Malformed> {
    let (Some(&family), Some(sport), Some(src)) = (
        p.first(),
        p.get(MSG_SPORT..MSG_SPORT + 2),
        p.get(MSG_SRC..MSG_SRC + 16),
    ) else {
        return Err(Malformed::ShortDiag);
    };
    if u16::from_be_bytes([sport[0], sport[1]]) != port {
        return Ok(None);
    }
    let ip = if i32::from(family) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(src).expect("16 bytes")))
    };
    Ok(Some(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_wildcard_and_loopback_listeners_only_on_their_port() {
        let any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let lo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::TcpListener::bind("[::]:0").unwrap();
        let port = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
        assert_eq!(
            tcp_listeners(port(&any)).unwrap(),
            [IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        );
        assert_eq!(
            tcp_listeners(port(&lo)).unwrap(),
            [IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
        assert_eq!(
            tcp_listeners(port(&v6)).unwrap(),
            [IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
        );
        // A connection (not a listener) on a port does not count.
        let c = std::net::TcpStream::connect(lo.local_addr().unwrap()).unwrap();
        let client_port = c.local_addr().unwrap().port();
        assert!(tcp_listeners(client_port).unwrap().is_empty());
        assert!(
            listener(&[2, 0, 0], 1).is_err(),
            "a short message is malformed"
        );
    }
}
