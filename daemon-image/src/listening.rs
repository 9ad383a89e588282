//! Whether a TCP port of the daemon's network namespace (the one the handler containers join)
//! listens on every address, read from `/proc/net/tcp` and `/proc/net/tcp6` (the sockets of
//! the reading process's namespace) a yes remembered for [`FRESH`]. The daemon then lets the
//! manager connect to the handler itself (`session.rs` `deliver`): a handler bound to
//! `127.0.0.1` only is reachable from nowhere but this namespace.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is reused.
const FRESH: Duration = Duration::from_secs(1);
/// `TCP_LISTEN` in the `st` column.
const LISTEN: &str = "0A";

static SEEN: Mutex<Option<HashMap<u16, (Instant, bool)>>> = Mutex::new(None);

/// Whether something listens on `port` of every address (IPv4 `0.0.0.0` or IPv6 `::`).
pub fn on_all_addresses(port: u16) -> bool {
    let now = Instant::now();
    if let Some(&(at, yes)) = SEEN
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .get(&port)
    {
        if now.duration_since(at) < FRESH {
            return yes;
        }
    }
    let yes = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|table| listens_on_any(&table, port)));
    // Only a yes is remembered: a handler that starts listening is seen at once. (A yes gone
    // stale costs the manager one refused connect, and the caller goes to the app.)
    if yes {
        SEEN.lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(port, (now, yes));
    }
    yes
}

/// Whether the `/proc/net/tcp{,6}` text `table` has a listening socket on the wildcard address
/// and `port`.
fn listens_on_any(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let mut cols = line.split_whitespace();
        let (Some(local), Some(_remote), Some(state)) = (cols.nth(1), cols.next(), cols.next())
        else {
            return false;
        };
        let Some((addr, p)) = local.split_once(':') else {
            return false;
        };
        state == LISTEN
            && u16::from_str_radix(p, 16) == Ok(port)
            && !addr.is_empty()
            && addr.bytes().all(|b| b == b'0')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a container's /proc/net/tcp and /proc/net/tcp6.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31001 1 0000000000000000 100 0 0 10 0
   1: 00000000:2382 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31002 1 0000000000000000 100 0 0 10 0
   2: 020011AC:2382 030011AC:C350 01 00000000:00000000 00:00000000 00000000     0        0 31003 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 32001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 32002 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn wildcard_listeners_only() {
        // 127.0.0.1:8080 only: not reachable from outside.
        assert!(!listens_on_any(TCP, 8080));
        // 0.0.0.0:9090 listening (and an established connection on it, which does not count).
        assert!(listens_on_any(TCP, 9090));
        // [::]:8081 (dual stack) yes, [::1]:8082 no.
        assert!(listens_on_any(TCP6, 8081));
        assert!(!listens_on_any(TCP6, 8082));
        // Nothing on 7000; a header line or garbage never matches.
        assert!(!listens_on_any(TCP, 7000));
        assert!(!listens_on_any("sl local\nnonsense\n", 0));
    }

    #[test]
    fn this_namespace_is_read() {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(on_all_addresses(port));
        let lo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!on_all_addresses(lo.local_addr().unwrap().port()));
    }
}
