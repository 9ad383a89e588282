//! The data tunnel: every intercepted TCP connection travels over its own TCP connection
//! (agent → manager ← daemon), so the kernel gives each one flow control, half-close and
//! back-pressure, and no connection can stall another. Each side opens with a small header
//! naming the connection id; the manager pairs the two sides and splices them (the relay
//! itself, dialing and socket tuning live in the `relay` crate, relay/src/lib.rs).
//!
//! Header layout: `TPT1` magic, one role byte, a big-endian u16 length, then that many bytes of
//! JSON ([`TunnelHeader`]).

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// First bytes of every tunnel connection.
pub const MAGIC: &[u8; 4] = b"TPT1";
/// Largest accepted header body; anything longer is garbage.
pub const MAX_HEADER: usize = 4096;

/// Which end of a tunnel a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The agent side: a caller's connection captured at the workload.
    Agent = 1,
    /// The client side: the daemon's connection to the handler.
    Client = 2,
}

/// What a tunnel connection says about itself before the payload starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TunnelHeader {
    /// The connection id both sides of a tunnel name, so the manager can pair them.
    pub conn_id: String,
    /// The intercept the connection belongs to (intercepted and file-sync streams).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub intercept_id: String,
    /// The session of the party that opened the connection (agents and outbound streams).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session_id: String,
    /// Set by a client that could not reach its local target (the manager closes the agent
    /// side), or by the manager answering an outbound stream it could not connect.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "header_error"
    )]
    pub error: Option<HeaderError>,
    /// What the connection carries: see [`TunnelKind`].
    #[serde(default, skip_serializing_if = "TunnelKind::is_intercept")]
    pub kind: TunnelKind,
    /// Outbound streams ([`TunnelKind::OutTcp`], [`TunnelKind::OutUdp`]): the `host:port` in the
    /// cluster the manager dials.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Proves that the opener holds [`TunnelHeader::session_id`] (protocol/src/auth.rs): a
    /// client's session tunnel proof, or an agent's `auth::agent_proof`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proof: String,
}

/// What a tunnel connection carries ([`TunnelHeader::kind`]); on the wire it is the string
/// [`TunnelKind::as_str`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TunnelKind {
    /// An intercepted TCP connection (opened by the agent); the empty string on the wire. The
    /// manager answers the agent with a header ([`TunnelHeader::answer`], role
    /// [`Role::Client`]) before any payload: `error` unset once the client side is connected,
    /// set when it cannot be (the manager then closes the connection). Until that answer the
    /// agent sends none of the caller's bytes, so a caller whose client side is gone goes to the
    /// app without losing a byte. A client answering the manager's dial request with
    /// [`TunnelHeader::target`] set asks the manager to connect to that address — its own, as
    /// the manager sees it — instead of carrying the bytes itself (manager/src/tunnel.rs
    /// `answer`). The manager's answer to the agent may then name a `target` in turn: the
    /// manager's in-kernel forward to that handler (manager/src/intercept_fwd.rs), which the
    /// agent connects to instead of using this connection, and keeps using for the intercept's
    /// later connections while it answers (agent/src/forward.rs).
    #[default]
    #[serde(rename = "")]
    Intercept,
    /// A file-sync stream (opened by the client), `"fs"`.
    #[serde(rename = "fs")]
    Fs,
    /// An outbound TCP connection opened by a client, `"out-tcp"`: the manager dials
    /// [`TunnelHeader::target`], answers with a header whose `error` is unset on success, then
    /// splices.
    #[serde(rename = "out-tcp")]
    OutTcp,
    /// An outbound UDP flow opened by a client, `"out-udp"`: like [`TunnelKind::OutTcp`], then
    /// datagrams travel both ways framed by [`write_datagram`]/[`read_datagram`].
    #[serde(rename = "out-udp")]
    OutUdp,
    /// A TCP connection to a port on the engaged workload's localhost (`--to-pod`), `"pod-tcp"`:
    /// opened by a client with [`TunnelHeader::target`] `127.0.0.1:<port>`; the manager asks an
    /// agent of the workload to dial it, answers the client with a header whose `error` is
    /// unset on success (like [`TunnelKind::OutTcp`]), then splices.
    #[serde(rename = "pod-tcp")]
    PodTcp,
    /// A UDP flow to a port on the engaged workload's localhost (`--to-pod PORT/UDP`),
    /// `"pod-udp"`: like [`TunnelKind::PodTcp`], then datagrams framed as for
    /// [`TunnelKind::OutUdp`].
    #[serde(rename = "pod-udp")]
    PodUdp,
    /// An in-kernel forward asked for by a client, `"out-fwd"`: the manager checks
    /// [`TunnelHeader::target`] as for [`TunnelKind::OutTcp`] and, where its network namespace
    /// can forward, answers with `target` set to the `ip:port` of its own that now leads there
    /// for the client's address only (manager/src/forward.rs); no payload follows. The forward
    /// lasts as long as this connection.
    #[serde(rename = "out-fwd")]
    OutFwd,
}

impl TunnelKind {
    /// The wire form: `""`, `"fs"`, `"out-tcp"`, `"out-udp"`, `"pod-tcp"`, `"pod-udp"` or
    /// `"out-fwd"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelKind::Intercept => "",
            TunnelKind::Fs => "fs",
            TunnelKind::OutTcp => "out-tcp",
            TunnelKind::OutUdp => "out-udp",
            TunnelKind::PodTcp => "pod-tcp",
            TunnelKind::PodUdp => "pod-udp",
            TunnelKind::OutFwd => "out-fwd",
        }
    }

    /// The pod-local stream kind for a transport: [`TunnelKind::PodTcp`] or
    /// [`TunnelKind::PodUdp`].
    pub fn to_pod(udp: bool) -> TunnelKind {
        if udp {
            TunnelKind::PodUdp
        } else {
            TunnelKind::PodTcp
        }
    }

    /// Whether a connection of this kind belongs to an intercept ([`TunnelHeader::intercept_id`]),
    /// which the manager checks the opening session may use (manager/src/auth.rs).
    pub fn names_an_intercept(self) -> bool {
        match self {
            TunnelKind::Intercept | TunnelKind::Fs | TunnelKind::PodTcp | TunnelKind::PodUdp => {
                true
            }
            TunnelKind::OutTcp | TunnelKind::OutUdp | TunnelKind::OutFwd => false,
        }
    }

    /// Whether the opening client waits for the manager's answer header before its payload
    /// (outbound and pod-local streams).
    pub fn is_answered(self) -> bool {
        matches!(
            self,
            TunnelKind::OutTcp
                | TunnelKind::OutUdp
                | TunnelKind::PodTcp
                | TunnelKind::PodUdp
                | TunnelKind::OutFwd
        )
    }

    /// True for [`TunnelKind::Intercept`] (which is left out of the serialized header).
    pub fn is_intercept(&self) -> bool {
        *self == TunnelKind::Intercept
    }
}

impl std::fmt::Display for TunnelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the side that answers a tunnel connection could not carry it ([`TunnelHeader::error`]).
/// On the wire it is its `Display` text, as it always was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// An outbound stream named a session the manager does not know.
    #[error("outbound stream from an unknown session")]
    UnknownSession,
    /// The connection names no session, or a proof that does not match it.
    #[error("not authorized: this tunnel connection has no valid session proof, run telepresence connect again")]
    NotAuthorized,
    /// An outbound stream's target is outside the client's cluster view.
    #[error("not authorized: {0} is outside the cluster's subnets and --also-proxy")]
    Forbidden(String),
    /// An outbound stream's target is not a socket address.
    #[error("bad outbound target {0:?}")]
    BadTarget(String),
    /// Dialing `target` failed (or timed out) with `reason`.
    #[error("{target}: {reason}")]
    Unreachable {
        /// The `host:port` that was dialed.
        target: String,
        /// What went wrong, as the operating system (or the timeout) said it.
        reason: String,
    },
    /// Any other text a peer sent, kept as it was.
    #[error("{0}")]
    Other(String),
}

impl HeaderError {
    /// Parses the wire text back into the variant that prints it.
    pub fn parse(text: &str) -> HeaderError {
        for fixed in [HeaderError::UnknownSession, HeaderError::NotAuthorized] {
            if text == fixed.to_string() {
                return fixed;
            }
        }
        if let Some(target) = text
            .strip_prefix("not authorized: ")
            .and_then(|t| t.strip_suffix(" is outside the cluster's subnets and --also-proxy"))
        {
            return HeaderError::Forbidden(target.to_string());
        }
        if let Some(quoted) = text.strip_prefix("bad outbound target ") {
            if let Ok(t) = serde_json::from_str::<String>(quoted) {
                if HeaderError::BadTarget(t.clone()).to_string() == text {
                    return HeaderError::BadTarget(t);
                }
            }
        }
        if let Some((target, reason)) = text.split_once(": ") {
            let is_host_port = target
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if is_host_port && !target.contains(' ') {
                return HeaderError::Unreachable {
                    target: target.to_string(),
                    reason: reason.to_string(),
                };
            }
        }
        HeaderError::Other(text.to_string())
    }
}

/// Serde for [`TunnelHeader::error`]: the error's text, an empty string meaning none.
mod header_error {
    use super::HeaderError;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(e: &Option<HeaderError>, s: S) -> Result<S::Ok, S::Error> {
        match e {
            Some(e) => s.collect_str(e),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HeaderError>, D::Error> {
        let text = String::deserialize(d)?;
        Ok((!text.is_empty()).then(|| HeaderError::parse(&text)))
    }
}

impl TunnelHeader {
    /// The header that answers this one: same connection id and kind, `error` unset when the
    /// stream is connected.
    pub fn answer(&self, error: Option<HeaderError>) -> TunnelHeader {
        TunnelHeader {
            conn_id: self.conn_id.clone(),
            kind: self.kind,
            error,
            ..Default::default()
        }
    }
}

/// The largest datagram a UDP flow carries.
pub const MAX_DATAGRAM: usize = 65535;

/// Writes one datagram of a UDP flow: a big-endian u16 length, then the bytes.
pub async fn write_datagram<W: AsyncWrite + Unpin>(w: &mut W, d: &[u8]) -> std::io::Result<()> {
    if d.len() > MAX_DATAGRAM {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "datagram too large",
        ));
    }
    let mut buf = Vec::with_capacity(2 + d.len());
    buf.extend_from_slice(&(d.len() as u16).to_be_bytes());
    buf.extend_from_slice(d);
    w.write_all(&buf).await
}

/// Reads one datagram of a UDP flow into `buf`; `Ok(None)` at a clean end of the stream.
pub async fn read_datagram<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<()>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    buf.resize(u16::from_be_bytes(len) as usize, 0);
    r.read_exact(buf).await?;
    Ok(Some(()))
}

/// Why a tunnel header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The connection does not start with [`MAGIC`].
    #[error("not a telepresence tunnel connection (bad magic)")]
    BadMagic,
    /// The role byte is neither agent nor client.
    #[error("unknown tunnel role {0}")]
    BadRole(u8),
    /// The header length is over [`MAX_HEADER`].
    #[error("tunnel header of {0} bytes exceeds the {MAX_HEADER} byte limit")]
    TooLong(usize),
    /// The header body is not the expected JSON.
    #[error("malformed tunnel header: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Reading failed.
    #[error("tunnel i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent no header in time.
    #[error("timed out waiting for the tunnel header")]
    Timeout,
}

/// Encodes a header into its wire form.
pub fn encode_header(role: Role, h: &TunnelHeader) -> Vec<u8> {
    let body = serde_json::to_vec(h).expect("header serializes");
    let mut out = Vec::with_capacity(7 + body.len());
    out.extend_from_slice(MAGIC);
    out.push(role as u8);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Writes a header.
pub async fn write_header<W: AsyncWrite + Unpin>(
    w: &mut W,
    role: Role,
    h: &TunnelHeader,
) -> std::io::Result<()> {
    w.write_all(&encode_header(role, h)).await
}

/// Reads and validates a header; fails on garbage without reading more than the header bound.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(Role, TunnelHeader), TunnelError> {
    let mut fixed = [0u8; 7];
    r.read_exact(&mut fixed).await?;
    if &fixed[..4] != MAGIC {
        return Err(TunnelError::BadMagic);
    }
    let role = match fixed[4] {
        1 => Role::Agent,
        2 => Role::Client,
        other => return Err(TunnelError::BadRole(other)),
    };
    let len = u16::from_be_bytes([fixed[5], fixed[6]]) as usize;
    if len > MAX_HEADER {
        return Err(TunnelError::TooLong(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok((role, serde_json::from_slice(&body)?))
}

/// [`read_header`] with a deadline, so a silent peer cannot hold a task forever.
pub async fn read_header_timeout<R: AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> Result<(Role, TunnelHeader), TunnelError> {
    tokio::time::timeout(timeout, read_header(r))
        .await
        .map_err(|_| TunnelError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn header_round_trip() {
        let h = TunnelHeader {
            conn_id: "c1".into(),
            intercept_id: "i1".into(),
            ..Default::default()
        };
        let bytes = encode_header(Role::Client, &h);
        let mut r = &bytes[..];
        let (role, got) = read_header(&mut r).await.unwrap();
        assert_eq!(role, Role::Client);
        assert_eq!(got, h);
    }

    #[tokio::test]
    async fn outbound_header_and_datagrams_round_trip() {
        let h = TunnelHeader {
            conn_id: "c2".into(),
            kind: TunnelKind::OutUdp,
            target: "10.0.0.1:53".into(),
            ..Default::default()
        };
        let mut bytes = encode_header(Role::Client, &h);
        write_datagram(&mut bytes, b"hello").await.unwrap();
        write_datagram(&mut bytes, b"").await.unwrap();
        let mut r = &bytes[..];
        assert_eq!(read_header(&mut r).await.unwrap().1, h);
        let mut buf = Vec::new();
        assert!(read_datagram(&mut r, &mut buf).await.unwrap().is_some());
        assert_eq!(buf, b"hello");
        assert!(read_datagram(&mut r, &mut buf).await.unwrap().is_some());
        assert!(buf.is_empty());
        assert!(read_datagram(&mut r, &mut buf).await.unwrap().is_none());
        // Old peers that know no target still parse.
        let old = br#"{"conn_id":"x"}"#;
        let parsed: TunnelHeader = serde_json::from_slice(old).unwrap();
        assert!(parsed.target.is_empty());
    }

    #[test]
    fn kind_and_error_keep_their_wire_text() {
        for (kind, text) in [
            (TunnelKind::Intercept, ""),
            (TunnelKind::Fs, "fs"),
            (TunnelKind::OutTcp, "out-tcp"),
            (TunnelKind::OutUdp, "out-udp"),
            (TunnelKind::OutFwd, "out-fwd"),
            (TunnelKind::PodTcp, "pod-tcp"),
            (TunnelKind::PodUdp, "pod-udp"),
        ] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("{text:?}"));
            assert_eq!(kind.as_str(), text);
        }
        let h = TunnelHeader {
            conn_id: "c".into(),
            kind: TunnelKind::Fs,
            error: Some(HeaderError::Unreachable {
                target: "127.0.0.1:8080".into(),
                reason: "Connection refused (os error 111)".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"conn_id":"c","error":"127.0.0.1:8080: Connection refused (os error 111)","kind":"fs"}"#
        );
        assert_eq!(
            serde_json::to_string(&TunnelHeader::default()).unwrap(),
            r#"{"conn_id":""}"#
        );
        let empty: TunnelHeader =
            serde_json::from_str(r#"{"conn_id":"x","error":"","kind":""}"#).unwrap();
        assert_eq!(empty.error, None);
        assert_eq!(empty.kind, TunnelKind::Intercept);
        for e in [
            HeaderError::UnknownSession,
            HeaderError::NotAuthorized,
            HeaderError::Forbidden("127.0.0.1:22".into()),
            HeaderError::BadTarget("nope \"x\"".into()),
            HeaderError::Unreachable {
                target: "[::1]:53".into(),
                reason: "x: y".into(),
            },
            HeaderError::Other("Address family not supported (os error 97)".into()),
        ] {
            assert_eq!(HeaderError::parse(&e.to_string()), e);
        }
    }

    #[tokio::test]
    async fn garbage_is_rejected() {
        let mut r = &b"GET / HTTP/1.1\r\n\r\n"[..];
        assert!(matches!(
            read_header(&mut r).await,
            Err(TunnelError::BadMagic)
        ));
        let mut bad_role = encode_header(Role::Agent, &TunnelHeader::default());
        bad_role[4] = 9;
        assert!(matches!(
            read_header(&mut &bad_role[..]).await,
            Err(TunnelError::BadRole(9))
        ));
        let mut long = MAGIC.to_vec();
        long.push(1);
        long.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            read_header(&mut &long[..]).await,
            Err(TunnelError::TooLong(_))
        ));
        let mut trunc = encode_header(Role::Agent, &TunnelHeader::default());
        trunc.truncate(9);
        assert!(read_header(&mut &trunc[..]).await.is_err());
    }
}
