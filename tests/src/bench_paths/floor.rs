//! The kernel floor of the intercept path: the hops an intercepted connection takes on a Docker
//! engine — the caller into the workload's network namespace, on to the manager's address, on
//! to the daemon's namespace where the handler listens — made of nf_tables rules alone (a `dnat`
//! and a `masquerade` in the workload's namespace and in the manager's, installed from the host
//! with `nsenter` + `nft`), with no process of ours in the path. The intercept's figures above
//! these are what our processes cost (the agent's relay); these above direct are what the
//! topology itself costs — two more namespaces and bridge crossings, which nothing that keeps
//! every byte of the daemon through the manager's address can avoid.
//!
//! Our tables are named [`TABLE`] and deleted, and the workload namespace's `ip_forward` put
//! back, when the [`Floor`] is dropped.

use crate::harness::{docker, netns_run, nft_in};
use anyhow::{anyhow, Context, Result};

/// The nf_tables table of the floor's rules, in the workload's and the manager's namespaces.
const TABLE: &str = "tp_bench_floor";
/// The workload's port whose connections take the floor path.
const PORT: u16 = 8082;

/// The URL the caller uses for the floor path (the workload is the service `web`).
pub fn url() -> String {
    format!("http://web:{PORT}/")
}
/// The manager's port the workload's rule sends them to (outside the manager's own forward
/// ports, 20000–29999).
const MANAGER_PORT: u16 = 30999;

/// The floor's rules while they are installed.
pub struct Floor {
    workload: String,
    manager: String,
    forwarding_was: String,
}

/// The address of each of two containers on a network both are on.
fn shared_ips(a: &str, b: &str) -> Result<(String, String)> {
    let nets = |c: &str| -> Result<serde_json::Value> {
        let j = docker(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", c])?;
        serde_json::from_str(&j).context("networks of a container")
    };
    let (na, nb) = (nets(a)?, nets(b)?);
    let (Some(na), Some(nb)) = (na.as_object(), nb.as_object()) else {
        return Err(anyhow!("{a} or {b} has no networks"));
    };
    na.iter()
        .find_map(|(name, x)| {
            let y = nb.get(name)?;
            let ip = |v: &serde_json::Value| v["IPAddress"].as_str().map(str::to_string);
            Some((ip(x)?, ip(y)?))
        })
        .ok_or_else(|| anyhow!("{a} and {b} share no network"))
}

/// The one running container with our role label `role`.
fn by_role(role: &str) -> Result<String> {
    let label = format!("label={}={role}", docker::engine::ROLE_LABEL);
    let ids = docker(&["ps", "-q", "--filter", &label])?;
    let mut ids = ids.lines().filter(|l| !l.is_empty());
    match (ids.next(), ids.next()) {
        (Some(id), None) => Ok(id.to_string()),
        _ => Err(anyhow!("not exactly one running container of role {role}")),
    }
}

/// `sysctl -n <args>` in a container's network namespace, trimmed.
fn sysctl_in(container: &str, args: &[&str]) -> Result<String> {
    let args: Vec<&str> = std::iter::once("-n").chain(args.iter().copied()).collect();
    Ok(netns_run(container, "sysctl", &args)?.trim().to_string())
}

/// The rules of one hop: connections to `port` (from `from`, when given) go to `to`, with the
/// hop's own address as their source.
fn hop_rules(from: Option<&str>, port: u16, to_ip: &str, to_port: u16) -> String {
    let from = from.map(|f| format!("ip saddr {f} ")).unwrap_or_default();
    format!(
        "table ip {TABLE} {{\n\
         chain pre {{ type nat hook prerouting priority -150; {from}tcp dport {port} dnat to {to_ip}:{to_port}; }}\n\
         chain post {{ type nat hook postrouting priority 150; ip daddr {to_ip} tcp dport {to_port} masquerade; }}\n\
         }}\n"
    )
}

/// `nft -f` of `rules` in a container's network namespace.
fn nft_file_in(container: &str, rules: &str) -> Result<()> {
    let file = std::env::temp_dir().join(format!("{TABLE}-{}.nft", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, rules)?;
    let r = nft_in(container, &["-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    r.map(drop)
}

impl Floor {
    /// Installs the floor path from `workload`'s port [`PORT`] through the manager to the
    /// handler's `handler_port` in the daemon's namespace.
    pub fn install(workload: &str, handler_port: u16) -> Result<Floor> {
        let manager = by_role(docker::logs::ROLE_TRAFFIC_MANAGER)?;
        let daemon = by_role(docker::logs::ROLE_DAEMON)?;
        let (workload_ip, manager_ip) = shared_ips(workload, &manager)?;
        let (_, daemon_ip) = shared_ips(&manager, &daemon)?;
        let forwarding_was = sysctl_in(workload, &["net.ipv4.ip_forward"])?;
        let floor = Floor {
            workload: workload.to_string(),
            manager: manager.clone(),
            forwarding_was,
        };
        sysctl_in(workload, &["-w", "net.ipv4.ip_forward=1"])?;
        nft_file_in(workload, &hop_rules(None, PORT, &manager_ip, MANAGER_PORT))?;
        let manager_rules = hop_rules(Some(&workload_ip), MANAGER_PORT, &daemon_ip, handler_port);
        nft_file_in(&manager, &manager_rules)?;
        Ok(floor)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        for c in [&self.workload, &self.manager] {
            if let Err(e) = nft_in(c, &["delete", "table", "ip", TABLE]) {
                eprintln!("paths: removing the floor's rules in {c}: {e:#}");
            }
        }
        let restore = format!("net.ipv4.ip_forward={}", self.forwarding_was);
        if let Err(e) = sysctl_in(&self.workload, &["-w", &restore]) {
            eprintln!("paths: restoring ip_forward in {}: {e:#}", self.workload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_sends_its_port_on_with_its_own_address() {
        let r = hop_rules(Some("10.0.0.2"), 30999, "10.0.0.9", 9090);
        assert!(r.contains("ip saddr 10.0.0.2 tcp dport 30999 dnat to 10.0.0.9:9090"));
        assert!(r.contains("ip daddr 10.0.0.9 tcp dport 9090 masquerade"));
        assert!(hop_rules(None, 8082, "10.0.0.3", 30999).contains("; tcp dport 8082 dnat"));
    }
}
