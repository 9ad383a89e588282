//! The traffic-manager on a Docker engine (`TP_CLUSTER_TYPE=docker`, the default): reads its
//! environment (set by `telepresence connect`, see `ensure_manager` in cli/src/connect.rs),
//! connects to the engine, builds the [`DockerProvider`] and runs the gRPC and tunnel listeners
//! of `manager::run`. The Kubernetes counterpart is kubernetes/src/startup.rs.
//!
//! Environment: `TP_NAMESPACE` (required: the compose project served), `TP_NETWORK`
//! (required: the network agents join), `TP_AGENT_IMAGE` (required), `TP_GRPC_PORT` (8081),
//! `TP_TUNNEL_PORT` (8082), `TP_MANAGER_HOST` (default: this container's address on
//! `TP_NETWORK`), `TP_MANAGER_SECRET` (required: the secret its client and agent tokens derive
//! from, protocol/src/auth.rs).

use std::env::VarError;
use std::future::Future;
use std::num::ParseIntError;
use std::sync::Arc;
use std::time::Duration;

use manager::provider::ProviderError;
use protocol::ports::env;

use crate::provider::{connect_engine, DockerConfig, DockerProvider};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A setting of the manager's environment that is missing or malformed; the underlying error
/// is the source.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A required variable is unset or not Unicode.
    #[error("{var} is required")]
    Required {
        /// Variable name.
        var: &'static str,
        /// Why it could not be read.
        #[source]
        err: VarError,
    },
    /// The manager secret is not a credential.
    #[error("{0} is not a telepresence credential")]
    BadSecret(&'static str),
    /// Variable and value.
    #[error("{var}={value:?} is not a port")]
    NotAPort {
        /// Variable name.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it is not a port number.
        #[source]
        err: ParseIntError,
    },
}

/// Why the Docker traffic-manager stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The environment is incomplete or malformed.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Reaching the engine or finding the manager's own address.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The gRPC or tunnel listener.
    #[error(transparent)]
    Manager(BoxError),
}

/// The manager's settings, from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `TP_NAMESPACE`: the compose project served.
    pub namespace: String,
    /// `TP_NETWORK`: the network agents join.
    pub network: String,
    /// `TP_AGENT_IMAGE`: the image agent containers run.
    pub agent_image: String,
    /// `TP_GRPC_PORT`: the gRPC listener's port (default 8081).
    pub grpc_port: u16,
    /// `TP_TUNNEL_PORT`: the tunnel listener's port (default 8082).
    pub tunnel_port: u16,
    /// `None`: this container's address on `network`.
    pub manager_host: Option<String>,
    /// `TP_MANAGER_SECRET`: what the tokens derive from.
    pub secret: protocol::auth::Token,
}

impl Settings {
    /// Reads the variables listed in the module doc.
    pub fn from_env() -> Result<Settings, SettingsError> {
        Settings::from_lookup(|k| std::env::var(k))
    }

    /// Reads the variables listed in the module doc through `get`.
    pub fn from_lookup(
        get: impl Fn(&str) -> Result<String, VarError>,
    ) -> Result<Settings, SettingsError> {
        let required =
            |var: &'static str| get(var).map_err(|err| SettingsError::Required { var, err });
        let port = |var: &'static str, default: u16| match get(var) {
            Ok(value) => value
                .parse()
                .map_err(|err| SettingsError::NotAPort { var, value, err }),
            Err(_) => Ok(default),
        };
        Ok(Settings {
            namespace: required("TP_NAMESPACE")?,
            network: required("TP_NETWORK")?,
            agent_image: required(env::AGENT_IMAGE)?,
            grpc_port: port(env::GRPC_PORT, protocol::ports::MANAGER_GRPC_PORT)?,
            tunnel_port: port(env::TUNNEL_PORT, protocol::ports::MANAGER_TUNNEL_PORT)?,
            manager_host: get(env::MANAGER_HOST).ok(),
            secret: protocol::auth::Token::parse(&required(protocol::auth::MANAGER_SECRET_ENV)?)
                .map_err(|_| SettingsError::BadSecret(protocol::auth::MANAGER_SECRET_ENV))?,
        })
    }
}

/// Runs the Docker traffic-manager from its environment until `shutdown` resolves.
pub async fn run(shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartupError> {
    let s = Settings::from_env()?;
    let docker = connect_engine().await?;
    let credentials = manager::auth::Credentials::from_secret(&s.secret);
    let manager_host = match s.manager_host {
        Some(h) => h,
        None => DockerProvider::own_address(&docker, &s.network).await?,
    };
    let provider = DockerProvider::new(
        docker,
        DockerConfig {
            namespace: s.namespace,
            manager_host,
            grpc_port: s.grpc_port,
            tunnel_port: s.tunnel_port,
            agent_image: s.agent_image,
            agent_token: Some(credentials.agent.clone()),
        },
    );
    let cfg = manager::ManagerConfig {
        grpc_addr: ([0, 0, 0, 0], s.grpc_port).into(),
        tunnel_addr: ([0, 0, 0, 0], s.tunnel_port).into(),
        agent_timeout: Duration::from_secs(30),
        auth: Arc::new(manager::auth::Auth::new(credentials)),
    };
    tokio::spawn(provider.watch_engine());
    manager::run(cfg, Arc::new(provider), shutdown)
        .await
        .map_err(StartupError::Manager)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Result<String, VarError> {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned().ok_or(VarError::NotPresent)
    }

    /// The message `telepresence traffic-manager` prints: the error and its sources.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            out.push_str(&format!(": {s}"));
            src = s.source();
        }
        out
    }

    #[test]
    fn settings_from_the_environment() {
        let secret = protocol::auth::Token::generate();
        let base = [
            ("TP_NAMESPACE", "shop"),
            ("TP_NETWORK", "shop_default"),
            ("TP_AGENT_IMAGE", "tp:1"),
            ("TP_MANAGER_SECRET", secret.as_str()),
        ];
        let s = Settings::from_lookup(lookup(&base)).unwrap();
        assert_eq!((s.grpc_port, s.tunnel_port), (8081, 8082));
        assert_eq!(s.manager_host, None);
        let mut more = base.to_vec();
        more.extend([("TP_GRPC_PORT", "9001"), ("TP_MANAGER_HOST", "10.0.0.2")]);
        let s = Settings::from_lookup(lookup(&more)).unwrap();
        assert_eq!(s.grpc_port, 9001);
        assert_eq!(s.manager_host.as_deref(), Some("10.0.0.2"));
        let err =
            |pairs: &[(&str, &str)]| chain(&Settings::from_lookup(lookup(pairs)).unwrap_err());
        assert_eq!(
            err(&base[1..]),
            "TP_NAMESPACE is required: environment variable not found"
        );
        let mut bad = base.to_vec();
        bad.push(("TP_TUNNEL_PORT", "x"));
        assert_eq!(
            err(&bad),
            "TP_TUNNEL_PORT=\"x\" is not a port: invalid digit found in string"
        );
    }
}
