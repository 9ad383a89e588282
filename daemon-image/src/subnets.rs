//! Which IPv4 subnets the daemon routes into its TUN device: the cluster's subnets (as the manager
//! reports them) plus `--also-proxy`, minus `--never-proxy`, refusing any that overlaps a route the
//! daemon container already has unless `--allow-conflicting-subnets` names it. Pure decisions
//! over CIDRs; `tun` applies them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network in CIDR notation (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Cidr {
        let prefix = prefix.min(32);
        Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }
    pub fn contains_ip(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }
    /// Whether `other` lies entirely inside `self`.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains_ip(other.addr)
    }
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }
    /// The two halves of this network (for a more specific route than an existing one).
    pub fn halves(&self) -> Option<[Cidr; 2]> {
        (self.prefix < 32).then(|| {
            let p = self.prefix + 1;
            let hi = u32::from(self.addr) | (1 << (32 - u32::from(p)));
            [Cidr::new(self.addr, p), Cidr::new(Ipv4Addr::from(hi), p)]
        })
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A subnet that does not parse, or cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("invalid subnet {0:?}: expected an IPv4 CIDR such as 10.96.0.0/12")]
    Invalid(String),
    /// A wanted subnet overlapping one of the container's own routes (network and device).
    #[error("subnet {subnet} overlaps the daemon container's route {route} (dev {dev}): connect with --allow-conflicting-subnets {subnet} to route it to the cluster anyway, or --never-proxy {subnet} to leave it alone")]
    Conflict {
        subnet: Cidr,
        route: Cidr,
        dev: String,
    },
}

impl FromStr for Cidr {
    type Err = SubnetError;
    fn from_str(s: &str) -> Result<Cidr, SubnetError> {
        let bad = || SubnetError::Invalid(s.to_string());
        let (a, p) = s.trim().split_once('/').unwrap_or((s.trim(), "32"));
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        Ok(Cidr::new(addr, prefix))
    }
}

/// Parses a comma-separated CIDR list (empty = none).
pub fn parse_list(s: &str) -> Result<Vec<Cidr>, SubnetError> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::parse)
        .collect()
}

/// A route the container already has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub net: Cidr,
    pub dev: String,
    pub gateway: Option<Ipv4Addr>,
}

/// What to install.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Routed into the TUN device.
    pub routes: Vec<Cidr>,
    /// Kept on the container's own path although inside a routed subnet (`--never-proxy`, the
    /// manager's address): (network, device, gateway).
    pub bypass: Vec<Existing>,
    /// Subnets the user asked for that are IPv6 or otherwise not routable here (shown, skipped).
    pub skipped: Vec<String>,
}

/// Reads `/proc/net/route` text.
pub fn parse_proc_route(text: &str) -> Vec<Existing> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.swap_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, dst, gw, mask) = (
                f.first()?,
                hex(f.get(1)?)?,
                hex(f.get(2)?)?,
                hex(f.get(7)?)?,
            );
            let prefix = u32::from(mask).count_ones() as u8;
            Some(Existing {
                net: Cidr::new(dst, prefix),
                dev: dev.to_string(),
                gateway: (!gw.is_unspecified()).then_some(gw),
            })
        })
        .collect()
}

/// Decides the routes. `keep` are addresses that must stay on the container's own path (the
/// manager's).
pub fn plan(
    cluster: &[String],
    also: &[Cidr],
    never: &[Cidr],
    allow: &[Cidr],
    existing: &[Existing],
    keep: &[Ipv4Addr],
) -> Result<Plan, SubnetError> {
    let mut out = Plan::default();
    let mut wanted: Vec<Cidr> = Vec::new();
    for s in cluster {
        match s.parse::<Cidr>() {
            Ok(c) => wanted.push(c),
            Err(_) => out.skipped.push(s.clone()),
        }
    }
    wanted.extend_from_slice(also);
    wanted.sort();
    wanted.dedup();
    // Drop subnets inside others, and those a --never-proxy covers.
    let all = wanted.clone();
    wanted.retain(|c| !all.iter().any(|o| o != c && o.contains(c)));
    wanted.retain(|c| !never.iter().any(|n| n.contains(c)));
    for c in wanted {
        let clash: Vec<&Existing> = existing
            .iter()
            .filter(|e| e.net.prefix > 0 && e.dev != crate::tun::DEVICE && e.net.overlaps(&c))
            .collect();
        if clash.is_empty() {
            out.routes.push(c);
            continue;
        }
        if !allow.iter().any(|a| a.contains(&c) || c.contains(a)) {
            let e = clash[0];
            return Err(SubnetError::Conflict {
                subnet: c,
                route: e.net,
                dev: e.dev.clone(),
            });
        }
        out.routes.push(c);
        // Beat an existing route that is as or more specific with two halves of it.
        for e in clash {
            if e.net.prefix >= c.prefix {
                if let Some(h) = e.net.halves() {
                    out.routes.extend(h);
                }
            }
        }
    }
    out.bypass = bypasses(&out.routes, never, existing, keep);
    out.routes.sort();
    out.routes.dedup();
    Ok(out)
}

/// The routes that keep `never` subnets and `keep` addresses inside `routes` on the
/// container's own path (through the default route, or the existing route to them).
fn bypasses(
    routes: &[Cidr],
    never: &[Cidr],
    existing: &[Existing],
    keep: &[Ipv4Addr],
) -> Vec<Existing> {
    let mut out = Vec::new();
    let default_route = existing.iter().find(|e| e.net.prefix == 0);
    for n in never {
        if routes.iter().any(|r| r.contains(n) && r != n) {
            if let Some(d) = default_route.or_else(|| existing.iter().find(|e| e.net.contains(n))) {
                out.push(Existing {
                    net: *n,
                    dev: d.dev.clone(),
                    gateway: d.gateway,
                });
            }
        }
    }
    for ip in keep {
        if routes.iter().any(|r| r.contains_ip(*ip)) {
            // The most specific existing route to it, as it was before ours.
            if let Some(d) = existing
                .iter()
                .filter(|e| e.net.contains_ip(*ip))
                .max_by_key(|e| e.net.prefix)
            {
                out.push(Existing {
                    net: Cidr::new(*ip, 32),
                    dev: d.dev.clone(),
                    gateway: d.gateway,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn container_routes() -> Vec<Existing> {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        parse_proc_route(text)
    }

    #[test]
    fn cidr_parsing_and_relations() {
        assert_eq!(c("172.20.1.7/16").to_string(), "172.20.0.0/16");
        assert_eq!(c("10.0.0.1").prefix, 32);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope"
            .parse::<Cidr>()
            .unwrap_err()
            .to_string()
            .contains("IPv4 CIDR"));
        assert!(c("10.0.0.0/8").contains(&c("10.1.0.0/16")));
        assert!(!c("10.1.0.0/16").contains(&c("10.0.0.0/8")));
        assert!(c("10.1.0.0/16").overlaps(&c("10.0.0.0/8")));
        assert_eq!(
            c("172.17.0.0/16").halves().unwrap(),
            [c("172.17.0.0/17"), c("172.17.128.0/17")]
        );
        assert_eq!(parse_list(" 10.0.0.0/8, ,192.168.0.0/16").unwrap().len(), 2);
    }

    #[test]
    fn proc_route_is_read() {
        let r = container_routes();
        assert_eq!(r[0].net.prefix, 0);
        assert_eq!(r[0].gateway, Some("172.17.0.1".parse().unwrap()));
        assert_eq!(r[1].net, c("172.17.0.0/16"));
        assert_eq!(r[1].gateway, None);
    }

    #[test]
    fn plan_routes_cluster_plus_also_minus_never() {
        let ex = container_routes();
        let p = plan(
            &["172.20.0.0/16".into(), "fd00::/64".into()],
            &[c("10.10.0.0/16")],
            &[c("10.10.5.0/24")],
            &[],
            &ex,
            &[],
        )
        .unwrap();
        assert_eq!(p.routes, vec![c("10.10.0.0/16"), c("172.20.0.0/16")]);
        assert_eq!(p.skipped, vec!["fd00::/64".to_string()]);
        assert_eq!(p.bypass.len(), 1);
        assert_eq!(p.bypass[0].net, c("10.10.5.0/24"));
        assert_eq!(p.bypass[0].gateway, Some("172.17.0.1".parse().unwrap()));
        // A never-proxy that covers a subnet removes it.
        let p = plan(
            &["172.20.0.0/16".into()],
            &[],
            &[c("172.16.0.0/12")],
            &[],
            &ex,
            &[],
        )
        .unwrap();
        assert!(p.routes.is_empty());
    }

    #[test]
    fn conflicts_are_refused_unless_allowed() {
        let ex = container_routes();
        let e = plan(&[], &[c("172.17.0.0/16")], &[], &[], &ex, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--allow-conflicting-subnets 172.17.0.0/16"),
            "{e}"
        );
        let e = plan(&["172.16.0.0/12".into()], &[], &[], &[], &ex, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("overlaps the daemon container's route 172.17.0.0/16"),
            "{e}"
        );
        let keep = ["172.17.0.2".parse().unwrap()];
        let p = plan(
            &[],
            &[c("172.17.0.0/16")],
            &[],
            &[c("172.17.0.0/16")],
            &ex,
            &keep,
        )
        .unwrap();
        assert!(p.routes.contains(&c("172.17.0.0/17")) && p.routes.contains(&c("172.17.128.0/17")));
        // The manager stays reachable the way it was.
        assert_eq!(p.bypass.len(), 1);
        assert_eq!(p.bypass[0].net, c("172.17.0.2/32"));
        assert_eq!(p.bypass[0].dev, "eth0");
    }
}
