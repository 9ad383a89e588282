//! The traffic-manager on Kubernetes (`TP_CLUSTER_TYPE=kubernetes`): reads its environment
//! (set by the chart), connects with the in-cluster config, starts the provider's watches, the
//! webhook (HTTPS) and then the gRPC and tunnel listeners.
//!
//! Environment: `TP_MANAGER_NAMESPACE` (required), `TP_AGENT_IMAGE` (required),
//! `TP_GRPC_PORT` (8081), `TP_TUNNEL_PORT` (8082), `TP_WEBHOOK_PORT` (8443),
//! `TP_WEBHOOK_CERT`/`TP_WEBHOOK_KEY`, `TP_MANAGER_HOST` (default: the ClusterIP of the
//! `traffic-manager` Service, else its DNS name), `TP_AGENT_INJECT_POLICY` (OnDemand |
//! WhenEnabled), `TP_MANAGED_NAMESPACES` (comma separated; empty: cluster-wide),
//! `TP_ROLLOUT_TIMEOUT` (seconds installing an agent waits until every pod has it, 120),
//! `TP_AGENT_TIMEOUT` (seconds an intercept then waits for its agent to connect, 120),
//! `TP_AGENT_IMAGE_PULL_POLICY`; the chart's `agent` values: [`ENV_AGENT_LOG_LEVEL`],
//! [`ENV_AGENT_RESOURCES`], [`ENV_AGENT_PULL_SECRETS`], [`ENV_AGENT_SECURITY_CONTEXT`]
//! (applied by `patch::inject`).

use k8s_openapi::api::core::v1::{ResourceRequirements, SecurityContext, Service};
use kube::{Api, Client};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::patch::InjectSettings;
use super::webhook::{self, TlsFiles};
use super::{InjectPolicy, KubeConfig, KubeProvider};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The agent's `RUST_LOG` (chart `agent.logLevel`; empty: unset).
pub const ENV_AGENT_LOG_LEVEL: &str = "TP_AGENT_LOG_LEVEL";
/// The agent container's resources as JSON (chart `agent.resources`; empty or `{}`: defaults).
pub const ENV_AGENT_RESOURCES: &str = "TP_AGENT_RESOURCES";
/// Comma-separated Secret names added to injected pods' `imagePullSecrets` (chart
/// `agent.image.pullSecrets`).
pub const ENV_AGENT_PULL_SECRETS: &str = "TP_AGENT_PULL_SECRETS";
/// Fields merged over the agent's least-privilege securityContext, as JSON (chart
/// `agent.securityContext`; empty or `{}`: none).
pub const ENV_AGENT_SECURITY_CONTEXT: &str = "TP_AGENT_SECURITY_CONTEXT";

/// A setting of the manager's environment that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{0} is required")]
    Required(&'static str),
    /// Variable and value.
    #[error("{0}={1:?} is not a port")]
    NotAPort(String, String),
    /// Variable and value.
    #[error("{0}={1:?} is not a number of seconds")]
    NotSeconds(&'static str, String),
    #[error("TP_AGENT_INJECT_POLICY: {0}")]
    Policy(super::UnknownPolicy),
    /// Variable and why its value is not the JSON object it must be.
    #[error("{0}: {1}")]
    NotJson(&'static str, String),
}

/// Why the Kubernetes traffic-manager stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("no Kubernetes configuration (in-cluster or kubeconfig): {0}")]
    NoConfig(kube::config::InferConfigError),
    #[error(transparent)]
    Client(#[from] kube::Error),
    #[error(transparent)]
    Webhook(#[from] webhook::TlsError),
    /// Reading or writing the credentials' Secret.
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
    #[error(transparent)]
    Provider(#[from] manager::provider::ProviderError),
    /// The gRPC or tunnel listener.
    #[error(transparent)]
    Manager(BoxError),
}

/// The manager's Service name (chart).
pub const MANAGER_SERVICE: &str = "traffic-manager";

/// The manager's settings, from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub manager_namespace: String,
    pub agent_image: String,
    pub grpc_port: u16,
    pub tunnel_port: u16,
    pub webhook_port: u16,
    pub policy: InjectPolicy,
    pub agent_timeout: Duration,
    /// How long installing an agent waits for the workload's rollout.
    pub rollout_timeout: Duration,
    pub namespaces: Vec<String>,
    /// `None`: look up the manager Service.
    pub manager_host: Option<String>,
    pub tls: TlsFiles,
    pub image_pull_policy: Option<String>,
    /// The chart's `agent` values for the injected containers.
    pub agent_log_level: Option<String>,
    pub agent_resources: Option<ResourceRequirements>,
    pub agent_pull_secrets: Vec<String>,
    pub agent_security_context: Option<JsonObject>,
}

/// A JSON object as written.
type JsonObject = serde_json::Map<String, serde_json::Value>;

/// A JSON object in variable `k` (`None` when empty or `{}`), checked to be a `T`.
fn json_object<T: serde::de::DeserializeOwned>(
    k: &'static str,
    v: Option<String>,
) -> Result<Option<(T, JsonObject)>, SettingsError> {
    let Some(v) = v else { return Ok(None) };
    let map: JsonObject =
        serde_json::from_str(&v).map_err(|e| SettingsError::NotJson(k, e.to_string()))?;
    if map.is_empty() {
        return Ok(None);
    }
    let typed = serde_json::from_value(serde_json::Value::Object(map.clone()))
        .map_err(|e| SettingsError::NotJson(k, e.to_string()))?;
    Ok(Some((typed, map)))
}

/// The names of a comma-separated list, trimmed, empty ones left out.
fn names(v: Option<String>) -> Vec<String> {
    v.map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

impl Settings {
    /// Reads the variables listed in the module doc through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Settings, SettingsError> {
        let var = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let port = |k: &str, default: u16| match var(k) {
            None => Ok(default),
            Some(v) => v
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| SettingsError::NotAPort(k.to_string(), v)),
        };
        let seconds = |k: &'static str| match var(k) {
            None => Ok(Duration::from_secs(120)),
            Some(v) => v
                .parse()
                .map(Duration::from_secs)
                .map_err(|_| SettingsError::NotSeconds(k, v)),
        };
        let required = |k: &'static str| var(k).ok_or(SettingsError::Required(k));
        Ok(Settings {
            manager_namespace: required(protocol::ports::env::MANAGER_NAMESPACE)?,
            agent_image: required(protocol::ports::env::AGENT_IMAGE)?,
            grpc_port: port(
                protocol::ports::env::GRPC_PORT,
                protocol::ports::MANAGER_GRPC_PORT,
            )?,
            tunnel_port: port(
                protocol::ports::env::TUNNEL_PORT,
                protocol::ports::MANAGER_TUNNEL_PORT,
            )?,
            webhook_port: port("TP_WEBHOOK_PORT", 8443)?,
            policy: var("TP_AGENT_INJECT_POLICY")
                .unwrap_or_default()
                .parse()
                .map_err(SettingsError::Policy)?,
            agent_timeout: seconds("TP_AGENT_TIMEOUT")?,
            rollout_timeout: seconds("TP_ROLLOUT_TIMEOUT")?,
            namespaces: names(var("TP_MANAGED_NAMESPACES")),
            manager_host: var(protocol::ports::env::MANAGER_HOST),
            tls: TlsFiles {
                cert: var("TP_WEBHOOK_CERT")
                    .unwrap_or_else(|| webhook::DEFAULT_CERT.into())
                    .into(),
                key: var("TP_WEBHOOK_KEY")
                    .unwrap_or_else(|| webhook::DEFAULT_KEY.into())
                    .into(),
            },
            image_pull_policy: var("TP_AGENT_IMAGE_PULL_POLICY"),
            agent_log_level: var(ENV_AGENT_LOG_LEVEL),
            agent_resources: json_object::<ResourceRequirements>(
                ENV_AGENT_RESOURCES,
                var(ENV_AGENT_RESOURCES),
            )?
            .map(|(r, _)| r),
            agent_pull_secrets: names(var(ENV_AGENT_PULL_SECRETS)),
            agent_security_context: json_object::<SecurityContext>(
                ENV_AGENT_SECURITY_CONTEXT,
                var(ENV_AGENT_SECURITY_CONTEXT),
            )?
            .map(|(_, m)| m),
        })
    }

    /// What the webhook injects with these settings.
    pub fn inject_settings(&self) -> InjectSettings {
        InjectSettings {
            agent_image: self.agent_image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            log_level: self.agent_log_level.clone(),
            resources: self.agent_resources.clone(),
            pull_secrets: self.agent_pull_secrets.clone(),
            security_context: self.agent_security_context.clone(),
        }
    }
}

/// Runs the Kubernetes traffic-manager from its environment until `shutdown` resolves.
pub async fn run(shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartupError> {
    let settings = Settings::from_lookup(|k| std::env::var(k).ok())?;
    let config = kube::Config::infer()
        .await
        .map_err(StartupError::NoConfig)?;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)?;
    run_with(settings, client, server, shutdown).await
}

/// Runs the manager with a given client: provider watches, webhook, gRPC and tunnel.
pub async fn run_with(
    s: Settings,
    client: Client,
    server: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let manager_host = match s.manager_host.clone() {
        Some(h) => h,
        None => manager_service_host(&client, &s.manager_namespace).await,
    };
    let auth = Arc::new(super::auth::rotate_at_start(&client, &s.manager_namespace).await?);
    tokio::spawn(super::auth::watch(
        client.clone(),
        s.manager_namespace.clone(),
        auth.clone(),
        super::auth::RECHECK,
    ));
    let (listener, acceptor) = webhook::bind(([0, 0, 0, 0], s.webhook_port).into(), &s.tls).await?;
    let provider = Arc::new(
        KubeProvider::start(
            client,
            KubeConfig {
                manager_namespace: s.manager_namespace.clone(),
                manager_host,
                grpc_port: s.grpc_port,
                tunnel_port: s.tunnel_port,
                agent_image: s.agent_image.clone(),
                policy: s.policy,
                namespaces: s.namespaces.clone(),
                server,
                sync_timeout: super::contract::SYNC_TIMEOUT,
                rollout_timeout: s.rollout_timeout,
            },
        )
        .await?,
    );
    provider.use_auth(auth.clone());
    tracing::info!(
        port = s.webhook_port,
        path = webhook::PATH,
        "agent-injector webhook listening"
    );
    tokio::spawn(webhook::serve(
        listener,
        acceptor,
        provider.clone(),
        s.inject_settings(),
    ));
    manager::run(
        manager::ManagerConfig {
            grpc_addr: ([0, 0, 0, 0], s.grpc_port).into(),
            tunnel_addr: ([0, 0, 0, 0], s.tunnel_port).into(),
            agent_timeout: s.agent_timeout,
            auth,
        },
        provider,
        shutdown,
    )
    .await
    .map_err(StartupError::Manager)
}

/// The ClusterIP of the manager's Service (agents then need no DNS), else its DNS name.
pub async fn manager_service_host(client: &Client, namespace: &str) -> String {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    match api.get(MANAGER_SERVICE).await {
        Ok(s) => s
            .spec
            .and_then(|s| s.cluster_ip)
            .filter(|ip| !ip.is_empty() && ip != "None")
            .unwrap_or_else(|| format!("{MANAGER_SERVICE}.{namespace}")),
        Err(e) => {
            tracing::warn!("cannot read Service {MANAGER_SERVICE}: {e}; agents use its DNS name");
            format!("{MANAGER_SERVICE}.{namespace}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn settings_from_the_environment() {
        let base = [
            ("TP_MANAGER_NAMESPACE", "ambassador"),
            ("TP_AGENT_IMAGE", "r/tp:1"),
        ];
        let s = Settings::from_lookup(lookup(&base)).unwrap();
        assert_eq!(
            (s.grpc_port, s.tunnel_port, s.webhook_port),
            (8081, 8082, 8443)
        );
        assert_eq!(s.policy, InjectPolicy::OnDemand);
        assert_eq!(s.agent_timeout, Duration::from_secs(120));
        assert!(s.namespaces.is_empty() && s.manager_host.is_none());
        assert_eq!(s.tls.cert, std::path::Path::new(webhook::DEFAULT_CERT));
        let mut more = base.to_vec();
        more.extend([
            ("TP_MANAGED_NAMESPACES", "shop, dev,"),
            ("TP_AGENT_INJECT_POLICY", "WhenEnabled"),
            ("TP_WEBHOOK_KEY", "/k"),
        ]);
        let s = Settings::from_lookup(lookup(&more)).unwrap();
        assert_eq!(s.namespaces, ["shop", "dev"]);
        assert_eq!(s.policy, InjectPolicy::WhenEnabled);
        assert_eq!(s.tls.key, std::path::Path::new("/k"));
        let err = |pairs: &[(&str, &str)]| {
            Settings::from_lookup(lookup(pairs))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[("TP_AGENT_IMAGE", "x")]),
            "TP_MANAGER_NAMESPACE is required"
        );
        let mut bad = base.to_vec();
        bad.push(("TP_WEBHOOK_PORT", "0"));
        assert_eq!(err(&bad), "TP_WEBHOOK_PORT=\"0\" is not a port");
        let mut bad = base.to_vec();
        bad.push(("TP_AGENT_INJECT_POLICY", "Always"));
        assert!(err(&bad).contains("is not OnDemand or WhenEnabled"));
    }

    #[test]
    fn agent_values_from_the_environment() {
        let base = [
            ("TP_MANAGER_NAMESPACE", "ambassador"),
            ("TP_AGENT_IMAGE", "r/tp:1"),
            (ENV_AGENT_RESOURCES, "{}"),
            (ENV_AGENT_SECURITY_CONTEXT, "{}"),
            (ENV_AGENT_PULL_SECRETS, ""),
            (ENV_AGENT_LOG_LEVEL, ""),
        ];
        let s = Settings::from_lookup(lookup(&base))
            .unwrap()
            .inject_settings();
        assert_eq!(
            s,
            InjectSettings {
                agent_image: "r/tp:1".into(),
                ..Default::default()
            }
        );
        let mut more = base.to_vec();
        more.extend([
            (ENV_AGENT_RESOURCES, r#"{"limits":{"memory":"1Gi"}}"#),
            (
                ENV_AGENT_SECURITY_CONTEXT,
                r#"{"runAsUser":7,"seccompProfile":null}"#,
            ),
            (ENV_AGENT_PULL_SECRETS, "a, b,"),
            (ENV_AGENT_LOG_LEVEL, "debug"),
        ]);
        let s = Settings::from_lookup(lookup(&more)).unwrap();
        assert_eq!(s.agent_pull_secrets, ["a", "b"]);
        assert_eq!(s.agent_log_level.as_deref(), Some("debug"));
        assert!(s
            .agent_resources
            .unwrap()
            .limits
            .unwrap()
            .contains_key("memory"));
        assert_eq!(
            serde_json::Value::Object(s.agent_security_context.unwrap()),
            serde_json::json!({"runAsUser": 7, "seccompProfile": null})
        );
        let err = |k: &'static str, v: &'static str| {
            let mut bad = base.to_vec();
            bad.push((k, v));
            Settings::from_lookup(lookup(&bad)).unwrap_err().to_string()
        };
        assert!(err(ENV_AGENT_RESOURCES, "[1]").starts_with("TP_AGENT_RESOURCES: "));
        assert!(err(ENV_AGENT_SECURITY_CONTEXT, r#"{"runAsUser":"x"}"#)
            .starts_with("TP_AGENT_SECURITY_CONTEXT: "));
    }
}
