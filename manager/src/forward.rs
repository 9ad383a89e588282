//! In-kernel forwards (tunnel kind `out-fwd`): a client that reaches the manager's address
//! directly (a daemon on a Docker engine's network, never through a port-forward) asks for one
//! cluster destination it already dialed through `out-tcp`; the manager checks it like an
//! outbound stream, picks a free port of its own ([`FORWARD_PORTS`]) and rewrites new TCP
//! connections from that client's address to that port into connections to the destination
//! (`dnat` + `masquerade` in its table [`TABLE`], netfilter/src/forward.rs), then answers with
//! `ip:port`. The kernel carries those connections: no process of ours copies their bytes, and
//! they still go through the manager's address. The forward lasts as long as the asking
//! connection and the client's session; the table is owned by this process and goes with it.
//!
//! It needs `NET_ADMIN` and `net.ipv4.ip_forward=1` in the manager's network namespace (the
//! Docker engine's manager container has both, cli/src/connect.rs); without them every request
//! is answered with an error and the client keeps its user-space path.

use crate::outbound::{admit, refuse};
use crate::tunnel::TunnelDropped;
use crate::Manager;
use netfilter::forward::Dnat;
use netfilter::nft::OwnedTable;
use protocol::tunnel::{write_header, HeaderError, Role, TunnelHeader};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The manager's forward table.
pub const TABLE: &str = "telepresence_fwd";
/// The manager's ports a forward may take (its gRPC and tunnel ports are never among them).
pub const FORWARD_PORTS: RangeInclusive<u16> = 20000..=29999;
/// Most forwards one client address holds at once.
pub const MAX_PER_CLIENT: usize = 64;
/// How often a forward checks that its client's session still exists.
const SESSION_CHECK: Duration = Duration::from_secs(2);
/// A client gone without a FIN (its namespace deleted, the network cut) is noticed within this.
const GONE_WITHIN: Duration = Duration::from_secs(10);

/// The forwards of this manager and the table that holds them.
#[derive(Default)]
pub struct Forwards {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `None` until the first request; then the table, or why there is none.
    table: Option<Result<OwnedTable, String>>,
    active: HashMap<u64, Dnat>,
    next_id: u64,
    next_port: u16,
}

/// One forward; dropping it removes its rules.
pub struct Forward {
    forwards: Arc<Forwards>,
    id: u64,
    /// The manager's address and port that lead to the destination.
    pub at: SocketAddrV4,
}

impl Drop for Forward {
    fn drop(&mut self) {
        let mut g = self.forwards.inner.lock().unwrap();
        g.active.remove(&self.id);
        if let Err(e) = g.apply() {
            tracing::warn!("removing forward {}: {e}", self.at);
        }
    }
}

/// Why this manager cannot forward in the kernel, if it cannot: the table could not be made
/// (no `NET_ADMIN`), or the namespace does not forward IPv4.
fn open_table() -> Result<OwnedTable, String> {
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    if !forwarding {
        return Err(
            "the manager's network namespace does not forward IPv4 (net.ipv4.ip_forward=0)".into(),
        );
    }
    netfilter::forward::install_owned_forwards(TABLE).map_err(|e| e.to_string())
}

impl Inner {
    fn table(&mut self) -> Result<&OwnedTable, String> {
        self.table
            .get_or_insert_with(open_table)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Writes the active forwards into the table.
    fn apply(&mut self) -> Result<(), String> {
        let mut fwds: Vec<(u64, Dnat)> = self.active.iter().map(|(k, v)| (*k, *v)).collect();
        fwds.sort_by_key(|(k, _)| *k);
        let fwds: Vec<Dnat> = fwds.into_iter().map(|(_, d)| d).collect();
        self.table()?.set_forwards(&fwds).map_err(|e| e.to_string())
    }

    /// A port of [`FORWARD_PORTS`] no active forward uses on `at`.
    fn free_port(&mut self, at: Ipv4Addr) -> Option<u16> {
        let span = u32::from(FORWARD_PORTS.end() - FORWARD_PORTS.start()) + 1;
        if self.next_id == 0 && self.active.is_empty() {
            // A restarted manager starts elsewhere in the range: a peer that still remembers a
            // forward of the previous one does not find another's behind the same port.
            self.next_port = (uuid::Uuid::new_v4().as_u128() % u128::from(span)) as u16;
        }
        for _ in 0..span {
            let off = u32::from(self.next_port) % span;
            self.next_port = ((off + 1) % span) as u16;
            let port = FORWARD_PORTS.start() + off as u16;
            let taken = self
                .active
                .values()
                .any(|d| d.dst.port() == port && *d.dst.ip() == at);
            if !taken {
                return Some(port);
            }
        }
        None
    }
}

impl Forwards {
    /// Forwards connections from `client` to `at`:<a free port> to `target`.
    pub fn open(
        self: &Arc<Self>,
        client: Ipv4Addr,
        at: Ipv4Addr,
        target: SocketAddrV4,
    ) -> Result<Forward, String> {
        let mut g = self.inner.lock().unwrap();
        g.table()?;
        let held = g.active.values().filter(|d| d.from == Some(client)).count();
        if held >= MAX_PER_CLIENT {
            return Err(format!("{client} already holds {MAX_PER_CLIENT} forwards"));
        }
        let port = g
            .free_port(at)
            .ok_or_else(|| "no free forward port".to_string())?;
        let id = g.next_id;
        g.next_id += 1;
        let dst = SocketAddrV4::new(at, port);
        g.active.insert(
            id,
            Dnat {
                from: Some(client),
                dst,
                to: target,
            },
        );
        if let Err(e) = g.apply() {
            g.active.remove(&id);
            return Err(e);
        }
        Ok(Forward {
            forwards: self.clone(),
            id,
            at: dst,
        })
    }

    /// How many forwards are active.
    pub fn count(&self) -> usize {
        self.inner.lock().unwrap().active.len()
    }
}

/// `a` as IPv4, an IPv4-mapped IPv6 address included.
pub(crate) fn ip4(a: IpAddr) -> Option<Ipv4Addr> {
    match a.to_canonical() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

/// `a` as an IPv4 socket address, an IPv4-mapped IPv6 one included.
pub(crate) fn v4(a: SocketAddr) -> Option<SocketAddrV4> {
    ip4(a.ip()).map(|ip| SocketAddrV4::new(ip, a.port()))
}

/// A client's `out-fwd` connection: the forward, for as long as the connection and the session
/// last.
pub async fn serve(
    mgr: &Manager,
    mut client: TcpStream,
    h: TunnelHeader,
) -> Result<(), TunnelDropped> {
    let target = admit(mgr, &mut client, &h).await?;
    let ends = (
        client.peer_addr().ok().map(|a| a.ip()).and_then(ip4),
        client.local_addr().ok().map(|a| a.ip()).and_then(ip4),
        v4(target),
    );
    let (Some(from), Some(at), Some(target)) = ends else {
        let e = HeaderError::Other(format!("in-kernel forwarding is IPv4 only ({target})"));
        return Err(refuse(&mut client, &h, e).await);
    };
    let fwd = match mgr.inner.forwards.open(from, at, target) {
        Ok(f) => f,
        Err(why) => {
            let e = HeaderError::Other(format!("no in-kernel forward to {target}: {why}"));
            return Err(refuse(&mut client, &h, e).await);
        }
    };
    tracing::debug!(client = %from, at = %fwd.at, %target, "in-kernel forward");
    let mut answer = h.answer(None);
    answer.target = fwd.at.to_string();
    write_header(&mut client, Role::Agent, &answer).await?;
    relay::impatient(&client, GONE_WITHIN);
    let mut byte = [0u8; 1];
    let mut check = tokio::time::interval(SESSION_CHECK);
    loop {
        tokio::select! {
            // Anything (end of stream, an error, a stray byte) ends the forward.
            _ = client.read(&mut byte) => break,
            _ = check.tick() => {
                let st = mgr.inner.state.lock().await;
                if !st.clients.contains_key(&h.session_id) {
                    break;
                }
            }
        }
    }
    drop(fwd);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netfilter::testns;

    fn fwd_count() -> usize {
        netfilter::nft::list_rules(TABLE)
            .unwrap()
            .iter()
            .filter(|r| r.dnat.is_some())
            .count()
    }

    #[test]
    fn ports_are_distinct_and_each_client_is_capped() {
        testns::in_fresh_netns("manager_forwards", || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
            let fwds = Arc::new(Forwards::default());
            let at = Ipv4Addr::new(172, 17, 0, 2);
            let (a, b) = (Ipv4Addr::new(172, 17, 0, 3), Ipv4Addr::new(172, 17, 0, 4));
            let target: SocketAddrV4 = "10.9.0.5:8080".parse().unwrap();
            let held: Vec<Forward> = (0..MAX_PER_CLIENT)
                .map(|_| fwds.open(a, at, target).unwrap())
                .collect();
            let mut ports: Vec<u16> = held.iter().map(|f| f.at.port()).collect();
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), MAX_PER_CLIENT);
            assert!(ports.iter().all(|p| FORWARD_PORTS.contains(p)));
            let refused = fwds.open(a, at, target).err().expect("over the cap");
            assert!(refused.contains("already holds"), "{refused}");
            let other = fwds.open(b, at, target).unwrap();
            assert!(!ports.contains(&other.at.port()));
            assert_eq!(
                (fwds.count(), fwd_count()),
                (MAX_PER_CLIENT + 1, MAX_PER_CLIENT + 1)
            );
            drop(held);
            assert_eq!((fwds.count(), fwd_count()), (1, 1));
            drop(other);
            assert_eq!(fwd_count(), 0);
        });
    }

    #[test]
    fn a_namespace_that_does_not_forward_gets_no_forwards() {
        testns::in_fresh_netns("manager_no_ip_forward", || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
            let fwds = Arc::new(Forwards::default());
            let e = fwds
                .open(
                    Ipv4Addr::new(172, 17, 0, 3),
                    Ipv4Addr::new(172, 17, 0, 2),
                    "10.9.0.5:8080".parse().unwrap(),
                )
                .err()
                .expect("refused");
            assert!(e.contains("ip_forward"), "{e}");
            assert!(!netfilter::nft::table_exists(TABLE).unwrap());
        });
    }
}
