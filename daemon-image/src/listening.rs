//! Whether a TCP port of the daemon's network namespace (the one the handler containers join)
//! listens on every address, asked of the kernel (`netfilter::sockdiag`: listening sockets
//! only, cheap however many connections exist); a yes is remembered for [`FRESH`]. The daemon
//! then lets the manager connect to the handler itself (`session.rs` `deliver`): a handler
//! bound to `127.0.0.1` only is reachable from nowhere but this namespace.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a yes is reused.
const FRESH: Duration = Duration::from_secs(1);

static SEEN: Mutex<Option<HashMap<u16, Instant>>> = Mutex::new(None);

/// Whether something listens on `port` of every address (IPv4 `0.0.0.0` or IPv6 `::`).
pub fn on_all_addresses(port: u16) -> bool {
    let now = Instant::now();
    if let Some(&at) = SEEN
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .get(&port)
    {
        if now.duration_since(at) < FRESH {
            return true;
        }
    }
    let yes = netfilter::sockdiag::tcp_listeners(port)
        .is_ok_and(|ips| ips.iter().any(std::net::IpAddr::is_unspecified));
    // Only a yes is remembered: a handler that starts listening is seen at once. (A yes gone
    // stale costs the manager one refused connect, and the caller goes to the app.)
    if yes {
        SEEN.lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(port, now);
    }
    yes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_only() {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(on_all_addresses(port));
        let lo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!on_all_addresses(lo.local_addr().unwrap().port()));
        let v6 = std::net::TcpListener::bind("[::]:0").unwrap();
        assert!(on_all_addresses(v6.local_addr().unwrap().port()));
    }
}
