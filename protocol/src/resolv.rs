//! The one resolv.conf parser: what the manager (manager/src/resolve.rs), the Kubernetes
//! provider (kubernetes/src/cidr.rs) and the CLI (cli/src/outbound.rs, cli/src/curl.rs) read from
//! `/etc/resolv.conf`. A pure function over the file's text.

use std::net::IpAddr;

/// Where resolv.conf lives.
pub const PATH: &str = "/etc/resolv.conf";

/// The parts of resolv.conf the project uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// Every `nameserver` whose address parses, in file order.
    pub nameservers: Vec<IpAddr>,
    /// The search list as the resolver uses it: the last `search` or `domain` line.
    pub search: Vec<String>,
    /// Every entry of every `search` line, in file order.
    pub all_search: Vec<String>,
    /// The last `options ndots:N`, if any.
    pub ndots: Option<usize>,
}

impl ResolvConf {
    /// Parses resolv.conf text; unknown or malformed lines are skipped.
    pub fn parse(text: &str) -> ResolvConf {
        let mut out = ResolvConf::default();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["nameserver", ip, ..] => out.nameservers.extend(ip.parse::<IpAddr>().ok()),
                ["search", d @ ..] => {
                    out.search = d.iter().map(ToString::to_string).collect();
                    out.all_search.extend(out.search.iter().cloned());
                }
                ["domain", d @ ..] => {
                    out.search = d.iter().map(ToString::to_string).collect();
                }
                ["options", o @ ..] => {
                    for x in o {
                        if let Some(n) = x.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                            out.ndots = Some(n);
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Reads and parses [`PATH`]; a missing file parses as empty.
    pub fn read() -> ResolvConf {
        ResolvConf::parse(&std::fs::read_to_string(PATH).unwrap_or_default())
    }

    /// The cluster domain: the first search entry `svc.<domain>` (trailing dot removed).
    pub fn cluster_domain(&self) -> Option<String> {
        self.all_search
            .iter()
            .find_map(|d| {
                d.trim_end_matches('.')
                    .strip_prefix("svc.")
                    .map(str::to_string)
            })
            .filter(|d| !d.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_parts_in_use() {
        let c = ResolvConf::parse(
            "# x\nsearch a.b svc.cluster.local\nnameserver 127.0.0.11\nnameserver bad\n\
             nameserver 8.8.8.8\noptions ndots:5 timeout:1\ndomain d.e\n",
        );
        assert_eq!(
            c.nameservers,
            [
                "127.0.0.11".parse::<IpAddr>().unwrap(),
                "8.8.8.8".parse().unwrap()
            ]
        );
        assert_eq!(c.search, ["d.e"]);
        assert_eq!(c.all_search, ["a.b", "svc.cluster.local"]);
        assert_eq!(c.ndots, Some(5));
        assert_eq!(c.cluster_domain().as_deref(), Some("cluster.local"));
        assert_eq!(ResolvConf::parse(""), ResolvConf::default());
        assert_eq!(ResolvConf::parse("search svc.\n").cluster_domain(), None);
    }
}
