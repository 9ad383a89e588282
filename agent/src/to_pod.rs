//! The agent end of pod-local ports (`--to-pod PORT[/UDP]`, manager/src/to_pod.rs): for a
//! `DIAL_KIND_TO_POD` request it dials `127.0.0.1:<port>` in the workload's network namespace
//! (which the agent shares) and joins the manager's tunnel with the request's connection id —
//! TCP spliced, UDP datagrams framed as on outbound flows — or joins with `error` set when
//! nothing answers there. A `DIAL_KIND_TO_POD_CHECK` only says whether something listens on the
//! port, read from the namespace's socket tables (`/proc/self/net/{tcp,tcp6,udp,udp6}`), so
//! checking never touches the pod's own server.

use protocol::manager::{DialKind, DialRequest, PortProtocol};
use protocol::tunnel::{write_header, HeaderError, Role, TunnelHeader, TunnelKind};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpStream, UdpSocket};

/// How long dialing a pod-local TCP port may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A pod-local UDP flow with no datagram either way for this long is closed.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// What the agent opened for a request.
enum Opened {
    Tcp(TcpStream),
    Udp(UdpSocket),
    /// A check that found a listener.
    Checked,
}

/// Answers one pod-local dial request.
pub(crate) async fn serve(
    tunnel: &str,
    req: DialRequest,
    who: crate::session::TunnelAuth,
) -> std::io::Result<()> {
    let udp = req.protocol() == PortProtocol::Udp;
    let port = u16::try_from(req.target_port).unwrap_or(0);
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let opened = open(req.kind(), udp, target).await;
    let mut t = relay::dial(tunnel).await?;
    let mut header = TunnelHeader {
        conn_id: req.conn_id,
        intercept_id: req.intercept_id,
        kind: TunnelKind::to_pod(udp),
        error: opened.as_ref().err().cloned(),
        ..Default::default()
    };
    who.fill(&mut header);
    write_header(&mut t, Role::Agent, &header).await?;
    match opened {
        Ok(Opened::Tcp(mut s)) => relay::splice(&mut t, &mut s).await.map(|_| ()),
        Ok(Opened::Udp(s)) => relay::relay_udp(t, s, UDP_IDLE).await,
        Ok(Opened::Checked) | Err(_) => Ok(()),
    }
}

async fn open(kind: DialKind, udp: bool, target: SocketAddr) -> Result<Opened, HeaderError> {
    let unreachable = |reason: String| HeaderError::Unreachable {
        target: target.to_string(),
        reason,
    };
    let not_listening = || {
        unreachable(format!(
            "nothing listens on {} {} in the workload's network namespace",
            if udp { "UDP" } else { "TCP" },
            target
        ))
    };
    if kind == DialKind::ToPodCheck || udp {
        if !listening(udp, target.port()) {
            return Err(not_listening());
        }
        if kind == DialKind::ToPodCheck {
            return Ok(Opened::Checked);
        }
    }
    if udp {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        s.connect(target)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        return Ok(Opened::Udp(s));
    }
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => {
            relay::tune(&s);
            Ok(Opened::Tcp(s))
        }
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!("timed out after {DIAL_TIMEOUT:?}"))),
    }
}

/// Whether a socket in this network namespace listens on `127.0.0.1:<port>` (TCP) or is bound
/// to it (UDP), directly or through a wildcard address.
fn listening(udp: bool, port: u16) -> bool {
    let files: [&str; 2] = if udp {
        ["/proc/self/net/udp", "/proc/self/net/udp6"]
    } else {
        ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
    };
    files
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|text| table_listens(&text, udp, port)))
}

/// Whether a `/proc/net/{tcp,udp}[6]` table holds a socket that serves `127.0.0.1:<port>`:
/// local address 127.0.0.1, 0.0.0.0, `::` or `::ffff:127.0.0.1`; TCP in state LISTEN (`0A`),
/// UDP unconnected (`07`).
fn table_listens(text: &str, udp: bool, port: u16) -> bool {
    const SERVING: [&str; 4] = [
        "0100007F",
        "00000000",
        "00000000000000000000000000000000",
        "0000000000000000FFFF00000100007F",
    ];
    let state = if udp { "07" } else { "0A" };
    text.lines().skip(1).any(|line| {
        let mut cols = line.split_whitespace().skip(1);
        let (Some(local), Some(_remote), Some(st)) = (cols.next(), cols.next(), cols.next()) else {
            return false;
        };
        let Some((addr, p)) = local.split_once(':') else {
            return false;
        };
        st == state
            && u16::from_str_radix(p, 16) == Ok(port)
            && SERVING.iter().any(|a| a.eq_ignore_ascii_case(addr))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1B9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0A00000B:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:0050 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";
    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  10: 00000000000000000000000000000000:1B9F 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4 2 0 0
";

    #[test]
    fn proc_tables_say_who_serves_localhost() {
        assert!(table_listens(TCP, false, 7070), "127.0.0.1:7070 LISTEN");
        assert!(!table_listens(TCP, false, 8080), "only on another address");
        assert!(!table_listens(TCP, false, 80), "an established socket");
        assert!(!table_listens(TCP, true, 7070), "wrong state for UDP");
        assert!(table_listens(UDP6, true, 7071), ":: serves 127.0.0.1");
        assert!(!table_listens(UDP6, true, 7070));
    }

    #[tokio::test]
    async fn checks_and_dials_what_listens_here() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        assert!(listening(false, a.port()));
        assert!(matches!(
            open(DialKind::ToPodCheck, false, a).await,
            Ok(Opened::Checked)
        ));
        assert!(matches!(
            open(DialKind::ToPod, false, a).await,
            Ok(Opened::Tcp(_))
        ));
        let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ua = u.local_addr().unwrap();
        assert!(matches!(
            open(DialKind::ToPod, true, ua).await,
            Ok(Opened::Udp(_))
        ));
        drop((l, u));
        let e = open(DialKind::ToPodCheck, true, ua).await.err().unwrap();
        assert!(e.to_string().contains("nothing listens on UDP"), "{e}");
        let e = open(DialKind::ToPod, false, a).await.err().unwrap();
        assert!(e.to_string().starts_with(&a.to_string()), "{e}");
    }
}
