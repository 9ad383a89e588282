//! The traffic-agent's environment contract: the names of its `TP_*` variables and
//! [`AgentEnv`], which the Docker provider (docker/src/provider.rs `agent_container_body`) and
//! the Kubernetes webhook (kubernetes/src/patch.rs `inject`) write with [`AgentEnv::to_env`] and
//! the agent (agent/src/config.rs `AgentConfig::from_lookup`) reads with
//! [`AgentEnv::from_lookup`], validating every value up front.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Manager gRPC address (`host:port`).
pub const MANAGER_ADDR: &str = "TP_MANAGER_ADDR";
/// Manager tunnel listener (`host:port`).
pub const TUNNEL_ADDR: &str = "TP_TUNNEL_ADDR";
/// The namespace of the intercepted workload.
pub const NAMESPACE: &str = "TP_NAMESPACE";
/// The intercepted workload's name.
pub const WORKLOAD: &str = "TP_WORKLOAD";
/// Comma-separated service ports to capture, e.g. `8080,9090`.
pub const PORTS: &str = "TP_PORTS";
/// Kubernetes mode: JSON list of [`PortMapping`].
pub const PORT_MAP: &str = "TP_PORT_MAP";
/// Optional: the workload's IP as others see it (reported to the manager).
pub const POD_IP: &str = "TP_POD_IP";
/// Where the application listens (default `127.0.0.1`).
pub const APP_HOST: &str = "TP_APP_HOST";
/// Optional: the intercepted container's name.
pub const APP_CONTAINER: &str = "TP_APP_CONTAINER";
/// Optional: the intercepted container's environment, a JSON object of strings.
pub const APP_ENV: &str = "TP_APP_ENV";
/// Optional: the intercepted container's mounts, a JSON array of [`AppMount`], which the agent
/// sees at the same paths.
pub const APP_MOUNTS: &str = "TP_APP_MOUNTS";
/// `true`: the app's environment is the agent's own minus `TP_*` (Kubernetes mode).
pub const APP_ENV_INHERIT: &str = "TP_APP_ENV_INHERIT";
/// Optional: seconds shutdown waits for in-flight connections (default 2).
pub const DRAIN_SECONDS: &str = "TP_DRAIN_SECONDS";
/// The agent token the agent presents to the manager (protocol/src/auth.rs); in Kubernetes it
/// comes from a Secret (`valueFrom.secretKeyRef`), never a literal of the pod spec.
pub const AGENT_TOKEN: &str = "TP_AGENT_TOKEN";
/// `appPort:agentPort,...` for the `agent-init` container.
pub const REDIRECTS: &str = "TP_REDIRECTS";

/// The prefix every variable of the contract starts with.
pub const PREFIX: &str = "TP_";

/// Where the application listens when [`APP_HOST`] is not set.
pub const DEFAULT_APP_HOST: &str = "127.0.0.1";
/// How long shutdown waits when [`DRAIN_SECONDS`] is not set.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(2);

/// A mount of the intercepted container (the agent sees it at the same path).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AppMount {
    /// Absolute path in the container.
    pub path: String,
    /// Whether the mount is read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// One captured service port in Kubernetes mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The service port (what intercepts are routed by).
    pub service_port: u16,
    /// The port the agent listens on (taken over by name, or the redirect's target).
    pub agent_port: u16,
    /// The port the app listens on.
    pub app_port: u16,
}

/// A variable of the contract that is missing or malformed; the text names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentEnvError {
    /// A required variable is unset or blank.
    #[error("{0} is not set (required)")]
    Missing(&'static str),
    /// An address is not `host:port`.
    #[error("{var}={value:?} is not host:port")]
    NotHostPort {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// An entry of [`PORTS`] is not a port.
    #[error("{PORTS}: {item:?} is not a port number (1-65535) in {list:?}")]
    BadPort {
        /// The bad entry.
        item: String,
        /// The whole list.
        list: String,
    },
    /// [`DRAIN_SECONDS`] is not a number of seconds.
    #[error("{DRAIN_SECONDS}={0:?} is not a number of seconds (0-3600)")]
    BadDrain(String),
    /// A JSON variable does not parse.
    #[error("{var} is not valid JSON of the expected shape: {reason}")]
    BadJson {
        /// The variable.
        var: &'static str,
        /// What serde said.
        reason: String,
    },
    /// [`PORT_MAP`] is not a list of port mappings.
    #[error("{PORT_MAP} is not a JSON list of {{servicePort, agentPort, appPort}}: {0}")]
    BadPortMap(String),
    /// An entry of [`PORT_MAP`] has a zero port or equal agent and app ports.
    #[error("{PORT_MAP}: invalid entry {0:?} (ports must be 1-65535, agent and app ports differ)")]
    BadPortMapping(PortMapping),
    /// An entry of [`REDIRECTS`] is not `appPort:agentPort`.
    #[error("{REDIRECTS}: {item:?} is not appPort:agentPort in {list:?}")]
    BadRedirect {
        /// The bad entry.
        item: String,
        /// The whole list.
        list: String,
    },
    /// [`REDIRECTS`] is set but empty.
    #[error("{REDIRECTS} lists no ports")]
    NoRedirects,
    /// [`AGENT_TOKEN`] is not a credential.
    #[error("{AGENT_TOKEN} is not a telepresence credential")]
    BadToken,
}

/// The traffic-agent's configuration as it travels in its environment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentEnv {
    /// [`MANAGER_ADDR`]: `host:port` of the manager's gRPC API.
    pub manager_addr: String,
    /// [`TUNNEL_ADDR`]: `host:port` of the manager's tunnel listener.
    pub tunnel_addr: String,
    /// [`NAMESPACE`].
    pub namespace: String,
    /// [`WORKLOAD`].
    pub workload: String,
    /// [`PORTS`]: service ports to capture (deduplicated, in the order given, when read).
    pub ports: Vec<u16>,
    /// [`PORT_MAP`] (Kubernetes mode); written when `Some`, read as `Some` only when set.
    pub port_map: Option<Vec<PortMapping>>,
    /// [`POD_IP`].
    pub pod_ip: Option<String>,
    /// [`APP_HOST`]; the agent defaults it to [`DEFAULT_APP_HOST`].
    pub app_host: Option<String>,
    /// [`APP_CONTAINER`].
    pub app_container: Option<String>,
    /// [`APP_ENV`].
    pub app_env: Option<BTreeMap<String, String>>,
    /// [`APP_MOUNTS`].
    pub app_mounts: Option<Vec<AppMount>>,
    /// [`APP_ENV_INHERIT`] is `true`.
    pub app_env_inherit: bool,
    /// [`DRAIN_SECONDS`].
    pub drain: Option<Duration>,
    /// [`AGENT_TOKEN`]; written when `Some` (the Docker engine's provider), left to a
    /// `secretKeyRef` otherwise (kubernetes/src/patch.rs).
    pub token: Option<crate::auth::Token>,
}

/// JSON text of a value with object keys in the order `serde_json::Value` keeps them (sorted),
/// which is what every writer has always produced.
fn json_text<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .expect("agent environment serializes")
        .to_string()
}

impl AgentEnv {
    /// The variables in the order every writer emits them; `None` fields are left out.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut out: Vec<(&str, String)> = vec![
            (MANAGER_ADDR, self.manager_addr.clone()),
            (TUNNEL_ADDR, self.tunnel_addr.clone()),
            (NAMESPACE, self.namespace.clone()),
            (WORKLOAD, self.workload.clone()),
            (PORTS, ports_csv(&self.ports)),
        ];
        if let Some(m) = &self.port_map {
            out.push((PORT_MAP, json_text(m)));
        }
        if let Some(ip) = &self.pod_ip {
            out.push((POD_IP, ip.clone()));
        }
        if let Some(h) = &self.app_host {
            out.push((APP_HOST, h.clone()));
        }
        if let Some(c) = &self.app_container {
            out.push((APP_CONTAINER, c.clone()));
        }
        if let Some(e) = &self.app_env {
            out.push((APP_ENV, json_text(e)));
        }
        if let Some(m) = &self.app_mounts {
            out.push((APP_MOUNTS, json_text(m)));
        }
        if self.app_env_inherit {
            out.push((APP_ENV_INHERIT, "true".into()));
        }
        if let Some(d) = self.drain {
            out.push((DRAIN_SECONDS, d.as_secs_f64().to_string()));
        }
        if let Some(t) = &self.token {
            out.push((AGENT_TOKEN, t.as_str().to_string()));
        }
        out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Reads and validates the variables from any source (`std::env::var` in the agent, a map
    /// in tests). Blank values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<AgentEnv, AgentEnvError> {
        let opt = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let req = |k: &'static str| opt(k).ok_or(AgentEnvError::Missing(k));
        let manager_addr = host_port(MANAGER_ADDR, &req(MANAGER_ADDR)?)?;
        let tunnel_addr = host_port(TUNNEL_ADDR, &req(TUNNEL_ADDR)?)?;
        let namespace = req(NAMESPACE)?;
        let workload = req(WORKLOAD)?;
        let ports = parse_ports(&req(PORTS)?)?;
        let drain = opt(DRAIN_SECONDS).map(|v| parse_drain(&v)).transpose()?;
        let port_map = parse_port_map(get(PORT_MAP).as_deref())?;
        let token = opt(AGENT_TOKEN)
            .map(|t| crate::auth::Token::parse(&t).map_err(|_| AgentEnvError::BadToken))
            .transpose()?;
        Ok(AgentEnv {
            manager_addr,
            tunnel_addr,
            namespace,
            workload,
            ports,
            port_map: (!port_map.is_empty()).then_some(port_map),
            pod_ip: opt(POD_IP),
            app_host: opt(APP_HOST),
            app_container: opt(APP_CONTAINER),
            app_env: json_var(APP_ENV, get(APP_ENV))?,
            app_mounts: json_var(APP_MOUNTS, get(APP_MOUNTS))?,
            app_env_inherit: get(APP_ENV_INHERIT).is_some_and(|v| v == "true"),
            drain,
            token,
        })
    }
}

/// `8080,9090`.
pub fn ports_csv(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_drain(v: &str) -> Result<Duration, AgentEnvError> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| AgentEnvError::BadDrain(v.to_string()))
}

/// Parses an optional JSON variable; absent or blank gives `None`.
fn json_var<T: serde::de::DeserializeOwned>(
    var: &'static str,
    value: Option<String>,
) -> Result<Option<T>, AgentEnvError> {
    match value.filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(v) => serde_json::from_str(&v)
            .map(Some)
            .map_err(|e| AgentEnvError::BadJson {
                var,
                reason: e.to_string(),
            }),
    }
}

/// Parses `8080, 9090` into ports; every entry must be 1-65535. Duplicates are dropped.
pub fn parse_ports(list: &str) -> Result<Vec<u16>, AgentEnvError> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let p = item
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| AgentEnvError::BadPort {
                item: item.to_string(),
                list: list.to_string(),
            })?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Checks a `host:port` address (an `http://` prefix is tolerated and removed).
fn host_port(var: &'static str, v: &str) -> Result<String, AgentEnvError> {
    let bare = v.strip_prefix("http://").unwrap_or(v).trim_end_matches('/');
    let bad = || AgentEnvError::NotHostPort {
        var,
        value: v.to_string(),
    };
    let (host, port) = bare.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && !host.contains('/')
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    match port.parse::<u16>() {
        Ok(p) if p != 0 && host_ok => Ok(bare.to_string()),
        _ => Err(bad()),
    }
}

/// Parses [`PORT_MAP`]; absent or blank: empty.
pub fn parse_port_map(v: Option<&str>) -> Result<Vec<PortMapping>, AgentEnvError> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(Vec::new());
    };
    let m: Vec<PortMapping> =
        serde_json::from_str(v).map_err(|e| AgentEnvError::BadPortMap(e.to_string()))?;
    if let Some(bad) = m.iter().find(|p| {
        p.service_port == 0 || p.agent_port == 0 || p.app_port == 0 || p.agent_port == p.app_port
    }) {
        return Err(AgentEnvError::BadPortMapping(*bad));
    }
    Ok(m)
}

/// The [`REDIRECTS`] value for (app port, agent port) pairs.
pub fn redirects_value(pairs: &[(u16, u16)]) -> String {
    pairs
        .iter()
        .map(|(app, agent)| format!("{app}:{agent}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `8080:9900,8081:9901` into (app port, agent port) pairs.
pub fn parse_redirects(v: &str) -> Result<Vec<(u16, u16)>, AgentEnvError> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            item.split_once(':')
                .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
                .filter(|(a, b)| *a != 0 && *b != 0)
                .ok_or_else(|| AgentEnvError::BadRedirect {
                    item: item.to_string(),
                    list: v.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn round_trips_through_the_environment() {
        let env = AgentEnv {
            manager_addr: "10.0.0.1:8081".into(),
            tunnel_addr: "10.0.0.1:8082".into(),
            namespace: "shop".into(),
            workload: "web".into(),
            ports: vec![8080, 9000],
            port_map: Some(vec![PortMapping {
                service_port: 80,
                agent_port: 9900,
                app_port: 8080,
            }]),
            pod_ip: Some("10.0.0.4".into()),
            app_host: Some("127.0.0.1".into()),
            app_container: Some("app".into()),
            app_env: Some(BTreeMap::from([("A".into(), "b".into())])),
            app_mounts: Some(vec![AppMount {
                path: "/data".into(),
                read_only: true,
            }]),
            app_env_inherit: true,
            drain: Some(Duration::from_millis(500)),
            token: Some(crate::auth::Token::generate()),
        };
        let vars = env.to_env();
        let keys: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                MANAGER_ADDR,
                TUNNEL_ADDR,
                NAMESPACE,
                WORKLOAD,
                PORTS,
                PORT_MAP,
                POD_IP,
                APP_HOST,
                APP_CONTAINER,
                APP_ENV,
                APP_MOUNTS,
                APP_ENV_INHERIT,
                DRAIN_SECONDS,
                AGENT_TOKEN
            ]
        );
        let map: HashMap<String, String> = vars.into_iter().collect();
        assert_eq!(
            map[PORT_MAP],
            r#"[{"agentPort":9900,"appPort":8080,"servicePort":80}]"#
        );
        assert_eq!(map[APP_MOUNTS], r#"[{"path":"/data","read_only":true}]"#);
        assert_eq!(AgentEnv::from_lookup(|k| map.get(k).cloned()).unwrap(), env);
        let mut bad = map.clone();
        bad.insert(AGENT_TOKEN.into(), "secret".into());
        assert_eq!(
            AgentEnv::from_lookup(|k| bad.get(k).cloned()),
            Err(AgentEnvError::BadToken)
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let e = AgentEnv::from_lookup(|_| None).unwrap_err();
        assert_eq!(e.to_string(), "TP_MANAGER_ADDR is not set (required)");
        assert_eq!(
            parse_redirects("1:2,x").unwrap_err().to_string(),
            r#"TP_REDIRECTS: "x" is not appPort:agentPort in "1:2,x""#
        );
        assert_eq!(parse_redirects("8080:9900").unwrap(), [(8080, 9900)]);
        assert_eq!(redirects_value(&[(8080, 9900), (1, 2)]), "8080:9900,1:2");
    }
}
