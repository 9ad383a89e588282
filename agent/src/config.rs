//! The agent's configuration, read from `TP_*` environment variables and validated up front so a
//! misconfigured sidecar fails at once with a line naming the variable at fault.

use crate::AgentError;
use std::collections::BTreeMap;
use std::time::Duration;

use protocol::agent_env::{AgentEnv, DEFAULT_APP_HOST, DEFAULT_DRAIN};
pub use protocol::agent_env::{
    AppMount, APP_CONTAINER as ENV_APP_CONTAINER, APP_ENV as ENV_APP_ENV, APP_HOST as ENV_APP_HOST,
    APP_MOUNTS as ENV_APP_MOUNTS, DRAIN_SECONDS as ENV_DRAIN_SECONDS,
    MANAGER_ADDR as ENV_MANAGER_ADDR, NAMESPACE as ENV_NAMESPACE, POD_IP as ENV_POD_IP,
    PORTS as ENV_PORTS, TUNNEL_ADDR as ENV_TUNNEL_ADDR, WORKLOAD as ENV_WORKLOAD,
};

/// How long the agent waits for the manager at startup.
pub const MANAGER_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the agent needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// `host:port` of the manager's gRPC API.
    pub manager_addr: String,
    /// `host:port` of the manager's tunnel listener.
    pub tunnel_addr: String,
    /// Namespace of the workload (`TP_NAMESPACE`).
    pub namespace: String,
    /// The workload the agent serves (`TP_WORKLOAD`).
    pub workload: String,
    /// Service ports to capture (deduplicated, in the order given).
    pub ports: Vec<u16>,
    /// Host of the application; the app is reached at `app_host:<service port>`.
    pub app_host: String,
    /// The workload's IP as others see it (`TP_POD_IP`), reported to the manager.
    pub pod_ip: Option<String>,
    /// The intercepted container, as reported to clients.
    pub container: String,
    /// The intercepted container's environment, as reported to clients.
    pub environment: BTreeMap<String, String>,
    /// The intercepted container's mounts, which the agent sees at the same paths.
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
    /// The agent token presented to the manager (`TP_AGENT_TOKEN`).
    pub token: Option<protocol::auth::Token>,
}

impl AgentConfig {
    /// Reads the `TP_*` environment variables.
    pub fn from_env() -> Result<AgentConfig, AgentError> {
        let env = AgentEnv::from_lookup(|k| std::env::var(k).ok())?;
        let inherit = env.app_env_inherit;
        let mut cfg = Self::from_agent_env(env);
        if inherit {
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
        Ok(Self::from_agent_env(AgentEnv::from_lookup(get)?))
    }

    /// The configuration of a validated environment, defaults filled in.
    fn from_agent_env(env: AgentEnv) -> AgentConfig {
        let port_map = env.port_map.unwrap_or_default();
        AgentConfig {
            // In a pod the agent owns the app's port: it keeps forwarding to the app while it
            // waits for the manager, much longer than a sidecar on a Docker engine would.
            manager_timeout: if port_map.is_empty() {
                MANAGER_TIMEOUT
            } else {
                crate::portmap::POD_MANAGER_TIMEOUT
            },
            port_map,
            manager_addr: env.manager_addr,
            tunnel_addr: env.tunnel_addr,
            namespace: env.namespace,
            workload: env.workload,
            ports: env.ports,
            app_host: env.app_host.unwrap_or_else(|| DEFAULT_APP_HOST.to_string()),
            pod_ip: env.pod_ip,
            container: env.app_container.unwrap_or_default(),
            environment: env.app_env.unwrap_or_default(),
            mounts: env.app_mounts.unwrap_or_default(),
            redirect: true,
            drain_timeout: env.drain.unwrap_or(DEFAULT_DRAIN),
            token: env.token,
        }
    }
}

/// Parses `8080, 9090` into ports; every entry must be 1-65535. Duplicates are dropped.
pub fn parse_ports(list: &str) -> Result<Vec<u16>, AgentError> {
    Ok(protocol::agent_env::parse_ports(list)?)
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
