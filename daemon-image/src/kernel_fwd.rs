//! In-kernel forwards of the outbound path: once a cluster destination has carried a TCP
//! connection through the manager (`kernel_tcp.rs`), the daemon asks the manager for a forward
//! to it ([`Dialer::forward`], tunnel kind `out-fwd`, manager/src/forward.rs). The manager
//! answers with one of its own `ip:port` that leads there; the daemon then rewrites the
//! handler's new connections to that destination to that address in its outbound table
//! (`netfilter::forward`, a `dnat` before the redirect to its listener, masqueraded on the
//! way out). From then on the kernels of both namespaces carry those connections: no process
//! copies their bytes, and they still go through the manager's address.
//!
//! A forward lasts as long as its `out-fwd` connection: when the manager goes (restart, crash,
//! network cut noticed within [`GONE_WITHIN`]) the rule is removed and new connections take
//! the listener again. Connections already forwarded keep their path (conntrack holds the
//! rewrite). A destination the manager will not forward (a Kubernetes manager reached through
//! a port-forward, no `NET_ADMIN`, IPv6) is not asked again.

use crate::netstack::{DialError, Dialer};
use netfilter::forward::Dnat;
use netfilter::nft::OwnedTable;
use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A manager gone without a FIN is noticed within this.
pub const GONE_WITHIN: Duration = Duration::from_secs(10);
/// Most destinations forwarded at once (the manager's own limit per client is the same).
pub const MAX_FORWARDS: usize = 64;

/// What the daemon knows of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Asked, not answered yet.
    Asking,
    /// Forwarded to the manager's address.
    Active(SocketAddrV4),
    /// The manager said no: not asked again.
    Refused,
}

/// The daemon's forwards, written into its outbound table.
pub struct Forwarder {
    /// `None` once closed ([`Forwarder::close`]).
    table: Mutex<Option<OwnedTable>>,
    /// The redirect's device and listener port (the table's last rule).
    oif: u32,
    port: u16,
    slots: Mutex<HashMap<SocketAddrV4, Slot>>,
    /// Active forwards, for `status`.
    active: Arc<AtomicU32>,
}

impl Forwarder {
    /// Forwards kept in `table` (made by `install_owned_output_redirect(oif, port)`).
    pub fn new(table: OwnedTable, oif: u32, port: u16, active: Arc<AtomicU32>) -> Forwarder {
        Forwarder {
            table: Mutex::new(Some(table)),
            oif,
            port,
            slots: Mutex::new(HashMap::new()),
            active,
        }
    }

    /// Asks for a forward to `dst` in the background, unless one exists, is being asked for,
    /// was refused, or too many are held.
    pub fn want<X: Dialer>(self: &Arc<Self>, dst: SocketAddr, dialer: Arc<X>) {
        let SocketAddr::V4(dst) = dst else { return };
        {
            let mut slots = self.slots.lock().unwrap();
            if slots.contains_key(&dst) || slots.len() >= MAX_FORWARDS {
                return;
            }
            slots.insert(dst, Slot::Asking);
        }
        let me = self.clone();
        tokio::spawn(async move { me.hold(dst, &*dialer).await });
    }

    /// Asks for the forward, installs it, and removes it when its connection ends.
    async fn hold<X: Dialer>(&self, dst: SocketAddrV4, dialer: &X) {
        let (to, mut conn) = match dialer.forward(dst).await {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(%dst, "no in-kernel forward: {e}");
                self.slots.lock().unwrap().insert(dst, Slot::Refused);
                return;
            }
        };
        relay::impatient(&conn, GONE_WITHIN);
        if let Err(e) = self.set(dst, Slot::Active(to)) {
            tracing::warn!(%dst, "cannot install the in-kernel forward: {e}");
            self.slots.lock().unwrap().insert(dst, Slot::Refused);
            let _ = self.apply();
            return;
        }
        tracing::info!(%dst, via = %to, "new connections to {dst} go through the kernel");
        // The manager sends nothing more: any read result means the forward is over.
        let mut byte = [0u8; 1];
        let _ = conn.read(&mut byte).await;
        tracing::info!(%dst, "in-kernel forward ended; new connections take the daemon's listener");
        self.slots.lock().unwrap().remove(&dst);
        if let Err(e) = self.apply() {
            tracing::warn!(%dst, "cannot remove the in-kernel forward: {e}");
        }
    }

    /// Removes the table now (the redirect with it); forwards still held change nothing more.
    pub fn close(&self) {
        self.table.lock().unwrap().take();
        self.active.store(0, Ordering::Relaxed);
    }

    fn set(&self, dst: SocketAddrV4, slot: Slot) -> Result<(), netfilter::NftError> {
        self.slots.lock().unwrap().insert(dst, slot);
        self.apply()
    }

    /// Writes the active forwards into the table (atomically, with the redirect last).
    fn apply(&self) -> Result<(), netfilter::NftError> {
        let slots = self.slots.lock().unwrap();
        let mut fwds: Vec<Dnat> = slots
            .iter()
            .filter_map(|(dst, s)| match s {
                Slot::Active(to) => Some(Dnat {
                    from: None,
                    dst: *dst,
                    to: *to,
                }),
                _ => None,
            })
            .collect();
        fwds.sort_by_key(|d| (*d.dst.ip(), d.dst.port()));
        if let Some(table) = &*self.table.lock().unwrap() {
            table.set_output_forwards(self.oif, self.port, &fwds)?;
        }
        self.active.store(fwds.len() as u32, Ordering::Relaxed);
        Ok(())
    }
}

/// The address to rewrite to, from the `target` of the manager's answer to `out-fwd`.
pub fn parse_answer(target: &str) -> Result<SocketAddrV4, DialError> {
    target
        .parse()
        .map_err(|_| DialError::Refused(format!("the manager answered a forward with {target:?}")))
}

/// The connection type a forward holds.
pub type Held = (SocketAddrV4, TcpStream);

#[cfg(test)]
#[path = "kernel_fwd_tests.rs"]
mod tests;
