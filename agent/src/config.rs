//! The agent's configuration, read from `TP_*` environment variables and validated up front so a
//! misconfigured sidecar fails at once with a line naming the variable at fault.

use crate::AgentError;
use std::collections::BTreeMap;
use std::time::Duration;

/// Manager gRPC address (`host:port`).
pub const ENV_MANAGER_ADDR: &str = "TP_MANAGER_ADDR";
/// Manager tunnel listener (`host:port`).
pub const ENV_TUNNEL_ADDR: &str = "TP_TUNNEL_ADDR";
pub const ENV_NAMESPACE: &str = "TP_NAMESPACE";
pub const ENV_WORKLOAD: &str = "TP_WORKLOAD";
/// Comma-separated service ports to capture, e.g. `8080,9090`.
pub const ENV_PORTS: &str = "TP_PORTS";
/// Where the application listens (default `127.0.0.1`).
pub const ENV_APP_HOST: &str = "TP_APP_HOST";
/// Optional: the workload's IP as others see it (reported to the manager).
pub const ENV_POD_IP: &str = "TP_POD_IP";
/// Optional: the intercepted container's name.
pub const ENV_APP_CONTAINER: &str = "TP_APP_CONTAINER";
/// Optional: the intercepted container's environment, a JSON object of strings.
pub const ENV_APP_ENV: &str = "TP_APP_ENV";
/// Optional: the intercepted container's mounts, a JSON array of `{"path","read_only"}`, which
/// the agent sees at the same paths.
pub const ENV_APP_MOUNTS: &str = "TP_APP_MOUNTS";
/// Optional: seconds shutdown waits for in-flight connections (default 2).
pub const ENV_DRAIN_SECONDS: &str = "TP_DRAIN_SECONDS";

/// How long the agent waits for the manager at startup.
pub const MANAGER_TIMEOUT: Duration = Duration::from_secs(30);

/// A mount of the intercepted container (the agent sees it at the same path).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct AppMount {
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Everything the agent needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// `host:port` of the manager's gRPC API.
    pub manager_addr: String,
    /// `host:port` of the manager's tunnel listener.
    pub tunnel_addr: String,
    pub namespace: String,
    pub workload: String,
    /// Service ports to capture (deduplicated, in the order given).
    pub ports: Vec<u16>,
    /// Host of the application; the app is reached at `app_host:<service port>`.
    pub app_host: String,
    pub pod_ip: Option<String>,
    /// The intercepted container, as reported to clients.
    pub container: String,
    pub environment: BTreeMap<String, String>,
    pub mounts: Vec<AppMount>,
    /// Install the nf_tables redirects. Always true from the environment; false only makes
    /// sense when traffic reaches the agent's listeners some other way (tests).
    pub redirect: bool,
    /// How long shutdown waits for in-flight connections to finish.
    pub drain_timeout: Duration,
    /// How long startup retries the manager before giving up ([`MANAGER_TIMEOUT`]).
    pub manager_timeout: Duration,
    /// Kubernetes mode: fixed listen port and app port per service port (`TP_PORT_MAP`). Mapped
    /// ports install no redirect of their own.
    pub port_map: Vec<crate::portmap::PortMapping>,
}

impl AgentConfig {
    /// Reads the `TP_*` environment variables.
    pub fn from_env() -> Result<AgentConfig, AgentError> {
        let mut cfg = Self::from_lookup(|k| std::env::var(k).ok())?;
        if std::env::var(crate::portmap::ENV_APP_ENV_INHERIT).is_ok_and(|v| v == "true") {
            cfg.environment = crate::portmap::inherited_env(std::env::vars());
        }
        Ok(cfg)
    }

    /// (listen port, app port) for a service port: the port map's, else (0 = any, the service
    /// port).
    pub fn listen_and_app(&self, service_port: u16) -> (u16, u16) {
        self.port_map
            .iter()
            .find(|m| m.service_port == service_port)
            .map(|m| (m.agent_port, m.app_port))
            .unwrap_or((0, service_port))
    }

    /// Same as [`AgentConfig::from_env`] with any variable source (tests use a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<AgentConfig, AgentError> {
        let opt = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let req = |k: &str| {
            opt(k).ok_or_else(|| AgentError::Config(format!("{k} is not set (required)")))
        };
        let manager_addr = host_port(ENV_MANAGER_ADDR, &req(ENV_MANAGER_ADDR)?)?;
        let tunnel_addr = host_port(ENV_TUNNEL_ADDR, &req(ENV_TUNNEL_ADDR)?)?;
        let namespace = req(ENV_NAMESPACE)?;
        let workload = req(ENV_WORKLOAD)?;
        let ports = parse_ports(&req(ENV_PORTS)?)?;
        let drain_timeout = match opt(ENV_DRAIN_SECONDS) {
            None => Duration::from_secs(2),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    AgentError::Config(format!(
                        "{ENV_DRAIN_SECONDS}={v:?} is not a number of seconds (0-3600)"
                    ))
                })?,
        };
        let port_map =
            crate::portmap::parse_port_map(get(crate::portmap::ENV_PORT_MAP).as_deref())?;
        Ok(AgentConfig {
            // In a pod the agent owns the app's port: it keeps forwarding to the app while it
            // waits for the manager, much longer than a sidecar on a Docker engine would.
            manager_timeout: if port_map.is_empty() {
                MANAGER_TIMEOUT
            } else {
                crate::portmap::POD_MANAGER_TIMEOUT
            },
            port_map,
            manager_addr,
            tunnel_addr,
            namespace,
            workload,
            ports,
            app_host: opt(ENV_APP_HOST).unwrap_or_else(|| "127.0.0.1".to_string()),
            pod_ip: opt(ENV_POD_IP),
            container: opt(ENV_APP_CONTAINER).unwrap_or_default(),
            environment: json_var(ENV_APP_ENV, get(ENV_APP_ENV))?,
            mounts: json_var(ENV_APP_MOUNTS, get(ENV_APP_MOUNTS))?,
            redirect: true,
            drain_timeout,
        })
    }
}

/// Parses an optional JSON variable; absent or empty gives the default.
fn json_var<T: serde::de::DeserializeOwned + Default>(
    key: &str,
    value: Option<String>,
) -> Result<T, AgentError> {
    match value.filter(|v| !v.trim().is_empty()) {
        None => Ok(T::default()),
        Some(v) => serde_json::from_str(&v).map_err(|e| {
            AgentError::Config(format!(
                "{key} is not valid JSON of the expected shape: {e}"
            ))
        }),
    }
}

/// Parses `8080, 9090` into ports; every entry must be 1-65535. Duplicates are dropped.
pub fn parse_ports(list: &str) -> Result<Vec<u16>, AgentError> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let p = item
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                AgentError::Config(format!(
                    "{ENV_PORTS}: {item:?} is not a port number (1-65535) in {list:?}"
                ))
            })?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Checks a `host:port` address (an `http://` prefix is tolerated and removed).
fn host_port(var: &str, v: &str) -> Result<String, AgentError> {
    let bare = v.strip_prefix("http://").unwrap_or(v).trim_end_matches('/');
    let bad = || AgentError::Config(format!("{var}={v:?} is not host:port"));
    let (host, port) = bare.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && !host.contains('/')
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    match port.parse::<u16>() {
        Ok(p) if p != 0 && host_ok => Ok(bare.to_string()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const GOOD: &[(&str, &str)] = &[
        ("TP_MANAGER_ADDR", "tp-manager:8081"),
        ("TP_TUNNEL_ADDR", "tp-manager:8082"),
        ("TP_NAMESPACE", "shop"),
        ("TP_WORKLOAD", "web"),
        ("TP_PORTS", "8080, 9090,8080"),
    ];

    fn with(changes: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = GOOD
            .iter()
            .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
            .copied()
            .collect();
        v.extend(changes.iter().filter(|(_, val)| *val != "<unset>"));
        v
    }

    fn err(changes: &[(&'static str, &'static str)]) -> String {
        AgentConfig::from_lookup(env(&with(changes)))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn reads_a_complete_environment() {
        let c = AgentConfig::from_lookup(env(GOOD)).unwrap();
        assert_eq!(c.manager_addr, "tp-manager:8081");
        assert_eq!(c.tunnel_addr, "tp-manager:8082");
        assert_eq!((c.namespace.as_str(), c.workload.as_str()), ("shop", "web"));
        assert_eq!(c.ports, [8080, 9090]);
        assert_eq!(c.app_host, "127.0.0.1");
        assert_eq!(c.pod_ip, None);
        assert!(c.redirect);
        assert_eq!(c.drain_timeout, Duration::from_secs(2));
        assert_eq!(c.manager_timeout, Duration::from_secs(30));

        let c = AgentConfig::from_lookup(env(&with(&[
            ("TP_APP_HOST", "10.0.0.5"),
            ("TP_POD_IP", "172.18.0.4"),
            ("TP_MANAGER_ADDR", "http://[::1]:8081/"),
            ("TP_DRAIN_SECONDS", "0.5"),
        ])))
        .unwrap();
        assert_eq!(c.app_host, "10.0.0.5");
        assert_eq!(c.pod_ip.as_deref(), Some("172.18.0.4"));
        assert_eq!(c.manager_addr, "[::1]:8081");
        assert_eq!(c.drain_timeout, Duration::from_millis(500));
    }

    #[test]
    fn kubernetes_mode_reads_the_port_map() {
        let c = AgentConfig::from_lookup(env(&with(&[(
            "TP_PORT_MAP",
            r#"[{"servicePort":8080,"agentPort":9900,"appPort":8081}]"#,
        )])))
        .unwrap();
        assert_eq!(c.listen_and_app(8080), (9900, 8081));
        assert_eq!(
            c.listen_and_app(9090),
            (0, 9090),
            "unmapped: any port, redirected"
        );
        assert_eq!(c.manager_timeout, crate::portmap::POD_MANAGER_TIMEOUT);
        let e = err(&[("TP_PORT_MAP", "[1]")]);
        assert!(e.contains("TP_PORT_MAP is not a JSON list"), "{e}");
    }

    #[test]
    fn missing_variables_are_named() {
        for var in [
            "TP_MANAGER_ADDR",
            "TP_TUNNEL_ADDR",
            "TP_NAMESPACE",
            "TP_WORKLOAD",
            "TP_PORTS",
        ] {
            assert_eq!(
                err(&[(var, "<unset>")]),
                format!("agent configuration: {var} is not set (required)")
            );
            assert_eq!(
                err(&[(var, "  ")]),
                format!("agent configuration: {var} is not set (required)"),
                "blank counts as missing"
            );
        }
    }

    #[test]
    fn bad_ports_are_rejected_clearly() {
        assert_eq!(
            err(&[("TP_PORTS", "8080,80x")]),
            "agent configuration: TP_PORTS: \"80x\" is not a port number (1-65535) in \"8080,80x\""
        );
        for bad in ["0", "65536", "-1", "8080,,9090", "8080;9090"] {
            let e = err(&[("TP_PORTS", bad)]);
            assert!(e.contains("is not a port number (1-65535)"), "{bad}: {e}");
        }
        assert_eq!(parse_ports("1,65535").unwrap(), [1, 65535]);
    }

    #[test]
    fn bad_addresses_are_rejected_clearly() {
        for bad in [
            "tp-manager",
            "tp-manager:",
            ":8081",
            "host:0",
            "host:99999",
            "::1:80",
            "a/b:1",
        ] {
            assert_eq!(
                err(&[("TP_TUNNEL_ADDR", bad)]),
                format!("agent configuration: TP_TUNNEL_ADDR={bad:?} is not host:port")
            );
        }
        let e = err(&[("TP_DRAIN_SECONDS", "soon")]);
        assert!(e.contains("TP_DRAIN_SECONDS=\"soon\""), "{e}");
    }
}
