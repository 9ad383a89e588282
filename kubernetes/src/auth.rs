//! The Kubernetes manager's credentials (protocol/src/auth.rs): Secret [`MANAGER_SECRET`] in
//! the manager's namespace holds the client token (read by the CLI with the user's own
//! credentials: whoever the chart's RBAC lets `get` it may connect), the agent token, and the
//! client token it replaced. Every manager start rotates the client token ([`rotate_at_start`]);
//! the replaced one stays accepted for [`manager::auth::ROTATION_GRACE`], so connected daemons
//! keep working. [`watch`] re-reads the Secret, so a rotation by `helm upgrade` or an admin
//! takes effect without a restart. Agents get the agent token from Secret [`AGENT_SECRET`] in
//! their own namespace, which the manager writes before it injects one
//! (kubernetes/src/provider.rs) and the injected container references (kubernetes/src/patch.rs).

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use manager::auth::{Auth, Credentials, ROTATION_GRACE};
use protocol::auth::Token;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The manager's Secret in its own namespace.
pub const MANAGER_SECRET: &str = "traffic-manager-auth";
/// The agents' Secret in each namespace with injected agents.
pub const AGENT_SECRET: &str = "traffic-agent-auth";
/// Key of the client token.
pub const CLIENT_KEY: &str = "client-token";
/// Key of the agent token (in both Secrets).
pub const AGENT_KEY: &str = "agent-token";
/// Key of the client token the last rotation replaced.
pub const PREVIOUS_CLIENT_KEY: &str = "previous-client-token";
/// How often [`watch`] re-reads the Secret.
pub const RECHECK: Duration = Duration::from_secs(10);

/// Why the credentials could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The API call failed (e.g. RBAC does not allow it).
    #[error("Secret {name} in namespace {namespace}: {source}")]
    Api {
        /// The Secret.
        name: &'static str,
        /// Its namespace.
        namespace: String,
        /// What the API server said.
        source: kube::Error,
    },
}

fn token_of(s: &Secret, key: &str) -> Option<Token> {
    let bytes = s.data.as_ref()?.get(key)?;
    Token::parse(std::str::from_utf8(&bytes.0).ok()?).ok()
}

fn data(pairs: &[(&str, &Token)]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, t)| (k.to_string(), ByteString(t.as_str().as_bytes().to_vec())))
        .collect()
}

async fn get(api: &Api<Secret>, name: &'static str, ns: &str) -> Result<Option<Secret>, AuthError> {
    api.get_opt(name).await.map_err(|source| AuthError::Api {
        name,
        namespace: ns.to_string(),
        source,
    })
}

/// Writes Secret `name` with `data`: merges it into `existing`, else creates it.
async fn put(
    api: &Api<Secret>,
    name: &'static str,
    ns: &str,
    existing: Option<Secret>,
    data: BTreeMap<String, ByteString>,
) -> Result<(), AuthError> {
    let err = |source| AuthError::Api {
        name,
        namespace: ns.to_string(),
        source,
    };
    let pp = PostParams::default();
    match existing {
        Some(_) => {
            let patch = Patch::Merge(serde_json::json!({ "data": data }));
            api.patch(name, &PatchParams::default(), &patch)
                .await
                .map_err(err)?;
        }
        None => {
            let s = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    labels: Some(BTreeMap::from([(
                        protocol::MANAGED_BY_LABEL.to_string(),
                        protocol::MANAGED_BY_VALUE.to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            api.create(&pp, &s).await.map_err(err)?;
        }
    }
    Ok(())
}

/// At manager start: a new client token (the previous one kept in the Secret), the agent
/// token kept (running agents hold it) or created. Returns the credentials accepted from now
/// on, with the previous client token accepted for [`ROTATION_GRACE`].
pub async fn rotate_at_start(client: &Client, namespace: &str) -> Result<Auth, AuthError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = get(&api, MANAGER_SECRET, namespace).await?;
    let old = existing.as_ref().and_then(|s| token_of(s, CLIENT_KEY));
    let agent = existing
        .as_ref()
        .and_then(|s| token_of(s, AGENT_KEY))
        .unwrap_or_else(Token::generate);
    let current = Credentials {
        client: Token::generate(),
        agent: agent.clone(),
    };
    let mut pairs = vec![(CLIENT_KEY, &current.client), (AGENT_KEY, &agent)];
    if let Some(old) = &old {
        pairs.push((PREVIOUS_CLIENT_KEY, old));
    }
    put(&api, MANAGER_SECRET, namespace, existing, data(&pairs)).await?;
    let auth = match old {
        Some(client) => {
            let auth = Auth::new(Credentials { client, agent });
            auth.rotate(current, ROTATION_GRACE);
            auth
        }
        None => Auth::new(current),
    };
    tracing::info!(secret = MANAGER_SECRET, %namespace, "client credential rotated");
    Ok(auth)
}

/// The credentials Secret [`MANAGER_SECRET`] holds now, if complete.
pub async fn read(client: &Client, namespace: &str) -> Result<Option<Credentials>, AuthError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    Ok(get(&api, MANAGER_SECRET, namespace).await?.and_then(|s| {
        Some(Credentials {
            client: token_of(&s, CLIENT_KEY)?,
            agent: token_of(&s, AGENT_KEY)?,
        })
    }))
}

/// Re-reads the Secret every `every` ([`RECHECK`] in the manager) and accepts what it holds
/// (the replaced credentials for [`ROTATION_GRACE`] more). Runs until the process ends.
pub async fn watch(client: Client, namespace: String, auth: Arc<Auth>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match read(&client, &namespace).await {
            Ok(Some(c)) => {
                if auth.rotate(c, ROTATION_GRACE) {
                    tracing::info!(secret = MANAGER_SECRET, "credentials changed; the previous ones stay accepted for {ROTATION_GRACE:?}");
                }
            }
            Ok(None) => tracing::warn!(
                secret = MANAGER_SECRET,
                "Secret missing or incomplete; keeping the current credentials"
            ),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// The client token a user may read (the CLI's `connect`, with the user's credentials).
pub async fn client_token(client: &Client, namespace: &str) -> Result<Option<Token>, AuthError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    Ok(get(&api, MANAGER_SECRET, namespace)
        .await?
        .and_then(|s| token_of(&s, CLIENT_KEY)))
}

/// The client token read with the kubeconfig at `path` (the daemon's, which re-reads it when
/// the manager no longer accepts the one it holds); `None` when it cannot be read.
pub async fn client_token_with(path: &str, namespace: &str) -> Option<Token> {
    let client = crate::portforward::client_from(path).await.ok()?;
    client_token(&client, namespace).await.ok().flatten()
}

/// Makes Secret [`AGENT_SECRET`] in `namespace` hold `agent` (agents injected there read it).
pub async fn ensure_agent_secret(
    client: &Client,
    namespace: &str,
    agent: &Token,
) -> Result<(), AuthError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = get(&api, AGENT_SECRET, namespace).await?;
    if existing
        .as_ref()
        .and_then(|s| token_of(s, AGENT_KEY))
        .as_ref()
        == Some(agent)
    {
        return Ok(());
    }
    put(
        &api,
        AGENT_SECRET,
        namespace,
        existing,
        data(&[(AGENT_KEY, agent)]),
    )
    .await
}
