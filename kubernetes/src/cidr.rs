//! Cluster facts for the daemon's routes and DNS: the service CIDR, the pod CIDRs and the
//! cluster domain.
//!
//! Service CIDR, first answer wins: (1) the `networking.k8s.io/v1` ServiceCIDR objects
//! (Kubernetes ≥ 1.33); (2) the API server's refusal of a dry-run Service with an impossible
//! `clusterIP` (its message names "the range of valid IPs"); (3) the `kubernetes` Service's IP
//! widened to a /12 (the kube-apiserver default size). Pod CIDRs: the nodes' `spec.podCIDRs`, or
//! if no node says, the /16 (IPv6: /64) networks covering the known pod IPs. Cluster domain:
//! `TP_CLUSTER_DOMAIN`, else the `svc.<domain>` search entry of the manager's resolv.conf, else
//! `cluster.local`.

use k8s_openapi::api::core::v1::{Node, Service, ServiceSpec};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// A name no real Service has; only ever created with `dryRun=All`.
const PROBE_SERVICE: &str = "telepresence-cidr-probe";
/// An address outside every service range (TEST-NET-1), used by the probe.
const PROBE_IP: &str = "192.0.2.1";

/// `ip/prefix` with the host bits cleared.
pub fn network(ip: IpAddr, prefix: u8) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let p = prefix.min(32);
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            format!("{}/{p}", std::net::Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let p = prefix.min(128);
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            format!("{}/{p}", std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// Whether `s` is `ip/prefix` with a valid prefix.
pub fn is_cidr(s: &str) -> bool {
    let Some((ip, p)) = s.split_once('/') else {
        return false;
    };
    match (ip.parse::<IpAddr>(), p.parse::<u8>()) {
        (Ok(IpAddr::V4(_)), Ok(p)) => p <= 32,
        (Ok(IpAddr::V6(_)), Ok(p)) => p <= 128,
        _ => false,
    }
}

/// The CIDRs in the API server's message refusing an out-of-range `clusterIP`, e.g. "... The
/// range of valid IPs is 10.96.0.0/12" (dual stack: several, comma or space separated).
pub fn parse_range_message(msg: &str) -> Vec<String> {
    let Some(i) = msg.find("range of valid IPs is") else {
        return Vec::new();
    };
    msg[i + "range of valid IPs is".len()..]
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .map(|t| t.trim_matches(|c: char| matches!(c, '"' | '\'' | '.' | '[' | ']')))
        .filter(|t| is_cidr(t))
        .map(str::to_string)
        .collect()
}

/// The networks covering `ips`: /16 for IPv4, /64 for IPv6, deduplicated and sorted.
pub fn covering(ips: impl IntoIterator<Item = IpAddr>) -> Vec<String> {
    ips.into_iter()
        .map(|ip| match ip {
            IpAddr::V4(_) => network(ip, 16),
            IpAddr::V6(_) => network(ip, 64),
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The cluster domain from resolv.conf text: the first search entry `svc.<domain>`.
pub fn domain_from_resolv(text: &str) -> Option<String> {
    protocol::resolv::ResolvConf::parse(text).cluster_domain()
}

/// The variable that overrides the cluster domain.
pub const ENV_CLUSTER_DOMAIN: &str = "TP_CLUSTER_DOMAIN";

/// The cluster domain (see the module doc).
pub fn cluster_domain() -> String {
    if let Ok(d) = std::env::var(ENV_CLUSTER_DOMAIN) {
        if !d.trim().is_empty() {
            return d.trim().trim_end_matches('.').to_string();
        }
    }
    protocol::resolv::ResolvConf::read()
        .cluster_domain()
        .unwrap_or_else(|| "cluster.local".into())
}

/// Why the service CIDR cannot be found (after the ServiceCIDR API and the dry-run probe).
#[derive(Debug, thiserror::Error)]
pub enum CidrError {
    /// Reading the `kubernetes` Service in `default` failed.
    #[error("cannot find the service CIDR: {0}")]
    NoKubernetesService(kube::Error),
    #[error("the kubernetes Service has no cluster IP")]
    NoClusterIp,
}

/// The service CIDRs (see the module doc). `namespace` is where the dry-run probe is made.
pub async fn service_cidrs(client: &Client, namespace: &str) -> Result<Vec<String>, CidrError> {
    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    if let Ok(list) = cidrs.list(&ListParams::default()).await {
        let v: BTreeSet<String> = list
            .items
            .iter()
            .filter_map(|c| c.spec.as_ref())
            .flat_map(|s| s.cidrs.iter().flatten().cloned())
            .filter(|c| is_cidr(c))
            .collect();
        if !v.is_empty() {
            return Ok(v.into_iter().collect());
        }
    }
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let probe = Service {
        metadata: kube::api::ObjectMeta {
            name: Some(PROBE_SERVICE.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(PROBE_IP.into()),
            ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                port: 443,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    if let Err(kube::Error::Api(status)) = services.create(&pp, &probe).await {
        let v = parse_range_message(&status.message);
        if !v.is_empty() {
            return Ok(v);
        }
    }
    let default: Api<Service> = Api::namespaced(client.clone(), "default");
    let k = default
        .get("kubernetes")
        .await
        .map_err(CidrError::NoKubernetesService)?;
    let ip = k
        .spec
        .and_then(|s| s.cluster_ip)
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .ok_or(CidrError::NoClusterIp)?;
    Ok(vec![match ip {
        IpAddr::V4(_) => network(ip, 12),
        IpAddr::V6(_) => network(ip, 108),
    }])
}

/// The pod CIDRs: the nodes' `podCIDRs`, else the networks covering `pod_ips`.
pub async fn pod_cidrs(client: &Client, pod_ips: Vec<IpAddr>) -> Vec<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    if let Ok(list) = nodes.list(&ListParams::default()).await {
        let v: BTreeSet<String> = list
            .items
            .iter()
            .filter_map(|n| n.spec.as_ref())
            .flat_map(|s| {
                s.pod_cidrs
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .chain(s.pod_cidr.clone())
            })
            .filter(|c| is_cidr(c))
            .collect();
        if !v.is_empty() {
            return v.into_iter().collect();
        }
    }
    covering(pod_ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_cidrs() {
        assert_eq!(network("10.43.0.1".parse().unwrap(), 12), "10.32.0.0/12");
        assert_eq!(network("10.96.0.1".parse().unwrap(), 12), "10.96.0.0/12");
        assert_eq!(
            network("fd00:10:96::1".parse().unwrap(), 108),
            "fd00:10:96::/108"
        );
        assert!(is_cidr("10.0.0.0/8") && is_cidr("::/0"));
        assert!(!is_cidr("10.0.0.0/33") && !is_cidr("10.0.0.0") && !is_cidr("x/8"));
        assert_eq!(
            covering(
                ["10.42.0.5", "10.42.1.7", "10.1.2.3", "fd00::1:2"].map(|s| s.parse().unwrap())
            ),
            ["10.1.0.0/16", "10.42.0.0/16", "fd00::/64"]
        );
    }

    #[test]
    fn range_messages_of_the_api_server() {
        let single = "Service \"telepresence-cidr-probe\" is invalid: spec.clusterIPs: Invalid value: []string{\"192.0.2.1\"}: failed to allocate IP 192.0.2.1: the provided IP (192.0.2.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12";
        assert_eq!(parse_range_message(single), ["10.96.0.0/12"]);
        let dual = "... The range of valid IPs is 10.96.0.0/16, fd00:10:96::/112.";
        assert_eq!(
            parse_range_message(dual),
            ["10.96.0.0/16", "fd00:10:96::/112"]
        );
        assert!(parse_range_message(
            "spec.clusterIPs: Invalid value: provided IP is already allocated"
        )
        .is_empty());
    }

    #[test]
    fn domain_from_the_search_path() {
        let conf = "search ambassador.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n";
        assert_eq!(domain_from_resolv(conf).as_deref(), Some("cluster.local"));
        let custom = "nameserver 10.0.0.10\nsearch shop.svc.corp.example. svc.corp.example.\n";
        assert_eq!(domain_from_resolv(custom).as_deref(), Some("corp.example"));
        assert_eq!(domain_from_resolv("search example.com\n"), None);
    }
}
