//! In-kernel delivery of intercepted connections (Docker engines). When a daemon answers a
//! dial request with its own address (its handler listens on every address of its namespace,
//! `manager/src/tunnel.rs` `answer`), the manager does not connect to the handler and splice:
//! it opens one of its in-kernel forwards (`manager/src/forward.rs`) from the agent's address
//! to the handler and answers the agent with the forward's `ip:port`. The agent connects there
//! for this connection and the intercept's later ones (`agent/src/forward.rs`), so the kernels
//! carry intercepted bytes from caller to handler with only the agent's relay in the path, and
//! they still pass through the manager's address. One forward per agent address, manager
//! address, handler and intercept; [`sweep`] removes it as soon as the intercept or its client
//! session is gone. Without `NET_ADMIN` or IPv4 forwarding ([`crate::forward`]) the manager
//! connects to the handler and splices, as before.

use crate::forward::{ip4, v4, Forward};
use crate::Manager;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;

/// How often [`sweep`] looks at the forwards even without a state change.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What one forward delivers, and to whom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// The agent's address (the forward takes only its connections).
    agent: Ipv4Addr,
    /// The manager's address as the agent reaches it.
    at: Ipv4Addr,
    /// The handler, in the client's namespace.
    handler: SocketAddrV4,
    /// The intercept whose connections these are.
    intercept_id: String,
}

/// The manager's forwards for intercepted connections.
#[derive(Default)]
pub struct InterceptForwards {
    held: Mutex<HashMap<Key, Forward>>,
}

impl InterceptForwards {
    /// The forward for `key`, opened when there is none yet.
    fn get_or_open(
        &self,
        fwds: &std::sync::Arc<crate::forward::Forwards>,
        key: Key,
    ) -> Result<SocketAddrV4, String> {
        let mut held = self.held.lock().unwrap();
        if let Some(f) = held.get(&key) {
            return Ok(f.at);
        }
        let f = fwds.open(key.agent, key.at, key.handler)?;
        let at = f.at;
        held.insert(key, f);
        Ok(at)
    }

    /// Takes out the forwards whose intercept is gone or whose client session ended.
    fn take_stale(&self, st: &crate::state::State) -> Vec<Forward> {
        let mut held = self.held.lock().unwrap();
        let stale: Vec<Key> = held
            .keys()
            .filter(|k| {
                st.intercept_by_id(&k.intercept_id)
                    .is_none_or(|ic| !st.clients.contains_key(&ic.client_session))
            })
            .cloned()
            .collect();
        stale.iter().filter_map(|k| held.remove(k)).collect()
    }
}

/// The address the `agent` (its tunnel connection) should connect to for `intercept_id`'s
/// handler at `handler`: an in-kernel forward of the manager, or `None` when there can be none
/// (IPv6, no `NET_ADMIN`, the agent's forwards exhausted) and the manager relays instead.
pub(crate) fn offer(
    mgr: &Manager,
    agent: &TcpStream,
    intercept_id: &str,
    handler: SocketAddr,
) -> Option<SocketAddrV4> {
    let key = Key {
        agent: ip4(agent.peer_addr().ok()?.ip())?,
        at: ip4(agent.local_addr().ok()?.ip())?,
        handler: v4(handler)?,
        intercept_id: intercept_id.to_string(),
    };
    match mgr
        .inner
        .intercept_fwds
        .get_or_open(&mgr.inner.forwards, key)
    {
        Ok(at) => Some(at),
        Err(why) => {
            tracing::debug!(%handler, "relaying intercepted connections: no in-kernel forward ({why})");
            None
        }
    }
}

/// Removes forwards whose intercept or client session is gone, on every state change and at
/// least every [`SWEEP_EVERY`].
pub(crate) async fn sweep(mgr: Manager) {
    let mut changes = mgr.inner.generation.subscribe();
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        let stale = {
            let st = mgr.inner.state.lock().await;
            mgr.inner.intercept_fwds.take_stale(&st)
        };
        for f in &stale {
            tracing::debug!(at = %f.at, "intercept forward removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{Forwards, TABLE};
    use crate::state::{ClientSession, State};
    use netfilter::testns;
    use protocol::manager::InterceptInfo;
    use std::sync::Arc;

    fn dnat_targets() -> Vec<String> {
        netfilter::nft::list_rules(TABLE)
            .unwrap()
            .iter()
            .filter_map(|r| r.dnat.map(|d| d.to.to_string()))
            .collect()
    }

    fn key(agent: [u8; 4], handler: &str, intercept_id: &str) -> Key {
        Key {
            agent: agent.into(),
            at: Ipv4Addr::new(172, 18, 0, 2),
            handler: handler.parse().unwrap(),
            intercept_id: intercept_id.into(),
        }
    }

    #[test]
    fn one_forward_per_agent_and_handler_gone_with_its_intercept_or_session() {
        testns::in_fresh_netns("intercept_forwards", || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
            let (fwds, ifw) = (Arc::new(Forwards::default()), InterceptForwards::default());
            let open =
                |agent, handler, id| ifw.get_or_open(&fwds, key(agent, handler, id)).unwrap();
            let a = open([172, 18, 0, 5], "172.18.0.9:9090", "s1:web");
            let again = open([172, 18, 0, 5], "172.18.0.9:9090", "s1:web");
            assert_eq!(a, again, "a second connection reuses the forward");
            let replica = open([172, 18, 0, 6], "172.18.0.9:9090", "s1:web");
            let other = open([172, 18, 0, 5], "172.18.0.7:9090", "s2:web");
            assert!(a != replica && a != other && replica != other);
            assert_eq!(ifw.held.lock().unwrap().len(), 3);
            assert_eq!(dnat_targets().len(), 3);

            let mut st = State::default();
            for (session, id) in [("s1", "s1:web"), ("s2", "s2:web")] {
                st.clients.insert(
                    session.into(),
                    ClientSession {
                        info: Default::default(),
                        expires: std::time::Instant::now() + crate::state::LEASE,
                        dials: None,
                        scope: Default::default(),
                    },
                );
                let ic = InterceptInfo {
                    id: id.into(),
                    client_session: session.into(),
                    ..Default::default()
                };
                st.intercepts.insert(id.into(), ic);
            }
            assert!(ifw.take_stale(&st).is_empty(), "both intercepts live");
            // s2's session ends (its intercept record outlives it for a moment).
            st.clients.remove("s2");
            drop(ifw.take_stale(&st));
            assert_eq!(dnat_targets(), vec!["172.18.0.9:9090", "172.18.0.9:9090"]);
            // s1's intercept ends.
            st.intercepts.remove("s1:web");
            drop(ifw.take_stale(&st));
            assert_eq!(
                (ifw.held.lock().unwrap().len(), dnat_targets().len()),
                (0, 0)
            );
        });
    }
}
