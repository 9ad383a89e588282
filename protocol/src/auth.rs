//! Who may use a traffic-manager: the credentials and how every role presents them.
//!
//! A manager has a **client token** (daemons present it on every gRPC call, in metadata
//! [`METADATA_KEY`]) and an **agent token** (traffic-agents present it the same way). A Docker
//! engine's manager derives both from one random secret the CLI puts into the manager
//! container's environment ([`MANAGER_SECRET_ENV`], readable only through the engine API, see
//! cli/src/connect.rs); in Kubernetes they live in a Secret of the manager's namespace
//! (kubernetes/src/auth.rs). Tunnel connections carry a **proof** in their header
//! ([`crate::tunnel::TunnelHeader::proof`]): a client's is the per-session
//! [`crate::manager::SessionInfo::tunnel_proof`] the manager handed out at arrival, an agent's
//! is [`agent_proof`] of its session id. The manager's checks are in manager/src/auth.rs.

use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The gRPC metadata key that carries a client's or agent's token.
pub const METADATA_KEY: &str = "x-telepresence-token";
/// The Docker-engine manager's secret, from which it derives its tokens (manager container).
pub const MANAGER_SECRET_ENV: &str = "TP_MANAGER_SECRET";
/// The client token a daemon presents (daemon container).
pub const CLIENT_TOKEN_ENV: &str = "TP_CLIENT_TOKEN";
/// The client session a file-sync container's tunnel connection names (set by the CLI,
/// cli/src/mounts.rs).
pub const SESSION_ID_ENV: &str = "TP_SESSION_ID";
/// That session's tunnel proof.
pub const TUNNEL_PROOF_ENV: &str = "TP_TUNNEL_PROOF";
/// How the manager starts every refusal, so each caller can tell it apart.
pub const NOT_AUTHORIZED: &str = "not authorized";

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// A credential: 64 lowercase hex digits. Its `Debug` form hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

/// A token that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a telepresence credential is {} hex digits", TOKEN_BYTES * 2)]
pub struct BadToken;

/// What a token derived from a manager secret is for ([`Token::derive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The client token daemons present.
    Client,
    /// The agent token traffic-agents present.
    Agent,
    /// The manager's key for per-session tunnel proofs (never leaves the manager).
    Tunnel,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Client => b"telepresence client",
            Purpose::Agent => b"telepresence agent",
            Purpose::Tunnel => b"telepresence tunnel",
        }
    }
}

impl Token {
    /// A new random token.
    pub fn generate() -> Token {
        let bytes: [u8; TOKEN_BYTES] = rand::random();
        Token(hex::encode(bytes))
    }

    /// Parses a token as written in an environment variable or Secret (surrounding
    /// whitespace ignored).
    pub fn parse(s: &str) -> Result<Token, BadToken> {
        let s = s.trim();
        if s.len() == TOKEN_BYTES * 2 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Token(s.to_ascii_lowercase()))
        } else {
            Err(BadToken)
        }
    }

    /// The token of `purpose` derived from this secret: nobody holding one derived token can
    /// compute another, or the secret.
    pub fn derive(&self, purpose: Purpose) -> Token {
        Token(hex::encode(hmac_sha256(self.0.as_bytes(), purpose.label())))
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        ct_eq(self.0.as_bytes(), presented.trim().as_bytes())
    }

    /// The hex HMAC-SHA256 of `msg` under this token.
    pub fn sign(&self, msg: &str) -> String {
        hex::encode(hmac_sha256(self.0.as_bytes(), msg.as_bytes()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// The tunnel proof of an agent session: the HMAC of its session id under the agent token.
pub fn agent_proof(agent_token: &Token, session_id: &str) -> String {
    agent_token.sign(session_id)
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Equality whose time does not depend on where `a` and `b` differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Adds the token to every call of a manager client; the token can be replaced while the client
/// is in use ([`Bearer::set`]), e.g. after the CLI re-read a rotated credential.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Arc<RwLock<Option<Token>>>);

impl Bearer {
    /// A bearer of `token` (`None`: calls carry no token).
    pub fn new(token: Option<Token>) -> Bearer {
        Bearer(Arc::new(RwLock::new(token)))
    }

    /// Presents `token` from now on.
    pub fn set(&self, token: Token) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(token);
    }

    /// Whether a token is presented.
    pub fn is_set(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            let v = MetadataValue::try_from(t.as_str())
                .map_err(|_| tonic::Status::internal("token is not ASCII"))?;
            req.metadata_mut().insert(METADATA_KEY, v);
        }
        Ok(req)
    }
}

/// A channel whose calls carry a [`Bearer`]'s token.
pub type AuthChannel = InterceptedService<Channel, Bearer>;
/// The manager client every role uses.
pub type ManagerClient = crate::manager::manager_client::ManagerClient<AuthChannel>;

/// A manager client over `channel` presenting `bearer`'s token.
pub fn manager_client(channel: Channel, bearer: Bearer) -> ManagerClient {
    crate::manager::manager_client::ManagerClient::with_interceptor(channel, bearer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn tokens_parse_derive_and_compare() {
        let secret = Token::generate();
        assert_eq!(Token::parse(secret.as_str()), Ok(secret.clone()));
        assert_eq!(
            Token::parse(&format!(" {} \n", secret.as_str().to_uppercase())),
            Ok(secret.clone())
        );
        assert_eq!(Token::parse("abc"), Err(BadToken));
        assert_eq!(Token::parse(&"g".repeat(64)), Err(BadToken));
        let client = secret.derive(Purpose::Client);
        let agent = secret.derive(Purpose::Agent);
        assert_ne!(client, agent);
        assert_eq!(client, secret.derive(Purpose::Client));
        assert!(client.matches(client.as_str()) && !client.matches(agent.as_str()));
        assert!(!client.matches(""));
        assert_eq!(format!("{client:?}"), "Token(…)");
        assert_ne!(
            agent_proof(&agent, "agent-1"),
            agent_proof(&agent, "agent-2")
        );
    }

    #[test]
    fn bearer_adds_the_token_when_set() {
        use tonic::service::Interceptor;
        let mut b = Bearer::new(None);
        let r = b.call(tonic::Request::new(())).unwrap();
        assert!(r.metadata().get(METADATA_KEY).is_none());
        let t = Token::generate();
        b.set(t.clone());
        let r = b.call(tonic::Request::new(())).unwrap();
        assert_eq!(r.metadata().get(METADATA_KEY).unwrap(), t.as_str());
    }
}
