//! Kubernetes mode of the agent: the port map the webhook sets (`TP_PORT_MAP`: for each
//! service port, the fixed port the agent listens on and the app's port it forwards to), the
//! app environment inherited from the agent's own (the webhook copies the app container's env
//! and envFrom), and the `agent-init` role that installs the redirects of numeric target ports
//! (`TP_REDIRECTS=app:agent,...`) from an init container with NET_ADMIN.

use crate::AgentError;
use std::collections::BTreeMap;

use protocol::agent_env::AgentEnvError;
pub use protocol::agent_env::{
    PortMapping, APP_ENV_INHERIT as ENV_APP_ENV_INHERIT, PORT_MAP as ENV_PORT_MAP,
    REDIRECTS as ENV_REDIRECTS,
};

/// How long an agent in a pod (port map set) waits for the manager before exiting for a restart.
pub const POD_MANAGER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A listener for a captured port: any port on 0.0.0.0 (the redirect's target), or a fixed port
/// (the port map) on `[::]` — IPv4 and IPv6 callers, for dual-stack and IPv6 pods — falling back
/// to 0.0.0.0 where the pod has no IPv6.
pub(crate) async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    if port != 0 {
        if let Ok(l) = tokio::net::TcpListener::bind(("::", port)).await {
            return Ok(l);
        }
    }
    tokio::net::TcpListener::bind(("0.0.0.0", port)).await
}

/// Parses `TP_PORT_MAP`; absent or blank: empty.
pub fn parse_port_map(v: Option<&str>) -> Result<Vec<PortMapping>, AgentError> {
    Ok(protocol::agent_env::parse_port_map(v)?)
}

/// Parses `8080:9900,8081:9901` into (app port, agent port) pairs.
pub fn parse_redirects(v: &str) -> Result<Vec<(u16, u16)>, AgentError> {
    Ok(protocol::agent_env::parse_redirects(v)?)
}

/// The app environment from the agent's own variables: everything but `TP_*`.
pub fn inherited_env(vars: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter(|(k, _)| !k.starts_with(protocol::agent_env::PREFIX))
        .collect()
}

/// The `agent-init` role: installs the redirects of `TP_REDIRECTS` in the pod's network
/// namespace (they stay for the pod's life; a pod without the agent is a new pod).
pub fn init_redirects() -> Result<Vec<(u16, u16)>, AgentError> {
    init_redirects_from(std::env::var(ENV_REDIRECTS).ok())
}

/// [`init_redirects`] with the value of `TP_REDIRECTS` given.
pub fn init_redirects_from(v: Option<String>) -> Result<Vec<(u16, u16)>, AgentError> {
    let v = v.ok_or(AgentEnvError::Missing(ENV_REDIRECTS))?;
    let pairs = parse_redirects(&v)?;
    if pairs.is_empty() {
        return Err(AgentEnvError::NoRedirects.into());
    }
    crate::nft::install_redirects(crate::TABLE, &pairs)?;
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_map_parses_and_rejects() {
        assert!(parse_port_map(None).unwrap().is_empty());
        assert!(parse_port_map(Some(" ")).unwrap().is_empty());
        let m = parse_port_map(Some(
            r#"[{"servicePort":80,"agentPort":9900,"appPort":8080}]"#,
        ))
        .unwrap();
        assert_eq!(
            m,
            [PortMapping {
                service_port: 80,
                agent_port: 9900,
                app_port: 8080
            }]
        );
        for bad in [
            "{}",
            r#"[{"servicePort":80,"agentPort":0,"appPort":8080}]"#,
            r#"[{"servicePort":80,"agentPort":8080,"appPort":8080}]"#,
        ] {
            let e = parse_port_map(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("TP_PORT_MAP"), "{bad}: {e}");
        }
    }

    #[test]
    fn redirects_parse() {
        assert_eq!(
            parse_redirects("8080:9900, 53:9901").unwrap(),
            [(8080, 9900), (53, 9901)]
        );
        for bad in ["8080", "8080:x", "0:9900", "8080:9900:1"] {
            assert!(parse_redirects(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn init_installs_the_redirect_table_in_the_pod_netns() {
        let r = crate::testns::in_fresh_netns("agent-init redirect", || {
            let none = init_redirects_from(None).unwrap_err().to_string();
            let empty = init_redirects_from(Some(" ".into()))
                .unwrap_err()
                .to_string();
            let before = crate::nft::table_exists(crate::TABLE).unwrap();
            let pairs = init_redirects_from(Some("8080:9900,9000:9901".into())).unwrap();
            let after = crate::nft::table_exists(crate::TABLE).unwrap();
            (none, empty, before, pairs, after)
        });
        let Some((none, empty, before, pairs, after)) = r else {
            return;
        };
        assert!(none.contains("TP_REDIRECTS is not set"), "{none}");
        assert!(empty.contains("lists no ports"), "{empty}");
        assert!(!before);
        assert_eq!(pairs, [(8080, 9900), (9000, 9901)]);
        assert!(after);
    }

    #[test]
    fn inherited_env_drops_ours() {
        let env = inherited_env([
            ("TP_PORTS".to_string(), "80".to_string()),
            ("DB_URL".to_string(), "pg://db".to_string()),
        ]);
        assert_eq!(env.len(), 1);
        assert_eq!(env["DB_URL"], "pg://db");
    }
}
