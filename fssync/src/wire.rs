//! The wire format: frame layout ([`encode_frame`], [`decode_frame`], [`read_frame`],
//! [`write_frame`]), the message types ([`Msg`], [`Change`], [`Op`], [`Mount`], [`Attrs`]), and
//! the task that owns a stream's write half ([`spawn_writer`], fed through an [`Outbox`]).

use crate::FsSyncError;
use serde::{Deserialize, Serialize};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Protocol version sent in `Hello`.
pub const PROTO_VERSION: u32 = 1;
/// Largest accepted frame payload.
pub const MAX_FRAME: usize = 1 << 20;
/// Size of the data frames this implementation sends.
pub const CHUNK: usize = 256 * 1024;

const FRAME_MSG: u8 = 1;
const FRAME_DATA: u8 = 2;
const OUTBOX_DEPTH: usize = 32;

/// One mount of the intercepted container: its absolute path there and whether it is read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path in the intercepted container.
    pub path: String,
    /// Whether the agent refuses the client's changes to it (default false).
    #[serde(default)]
    pub read_only: bool,
}

/// Permission bits and owner of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Attrs {
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Msg {
    /// agent → client, first: the protocol version and the mounts offered.
    Hello {
        /// [`PROTO_VERSION`] of the sender.
        proto: u32,
        /// Every mount the agent can sync.
        mounts: Vec<Mount>,
    },
    /// client → agent: the mounts to sync; their indexes are the `mount` numbers that follow.
    Subscribe {
        /// A subset of the offered mounts.
        mounts: Vec<Mount>,
    },
    /// Opens the initial tar of one mount (data frames follow).
    TarBegin {
        /// Mount number (index into `Subscribe`).
        mount: u32,
        /// Permission bits and owner of the mount root (`None`: unknown).
        #[serde(default)]
        root: Option<Attrs>,
    },
    /// Closes the initial tar of one mount.
    TarEnd {
        /// Mount number.
        mount: u32,
    },
    /// A live change (for `file`, data frames follow).
    Change(Change),
    /// Ends a `file` change early: the sender could not read the announced size.
    Abort,
    /// The receiver did not apply a change.
    Refused {
        /// Mount number.
        mount: u32,
        /// Mount-relative path of the change.
        path: String,
        /// Why (read-only mount, symlink leaving the mount, …).
        reason: String,
    },
    /// A fatal error; the sender closes after it.
    Error {
        /// The error, for the peer's log.
        message: String,
    },
}

impl Msg {
    /// The message's wire tag.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "hello",
            Msg::Subscribe { .. } => "subscribe",
            Msg::TarBegin { .. } => "tar_begin",
            Msg::TarEnd { .. } => "tar_end",
            Msg::Change(_) => "change",
            Msg::Abort => "abort",
            Msg::Refused { .. } => "refused",
            Msg::Error { .. } => "error",
        }
    }
}

/// One change to one path of one mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Mount number (index into `Subscribe`).
    pub mount: u32,
    /// Mount-relative path.
    pub path: String,
    /// The sender's change number.
    pub seq: u64,
    /// The highest peer `seq` the sender had processed.
    pub seen: u64,
    /// Writer time used to settle conflicts: the mtime for files and symlinks, the detection
    /// time for directories and deletions (ns since the epoch).
    pub time_ns: i64,
    /// What happened.
    pub op: Op,
}

/// What happened to the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Op {
    /// Regular file with this content (the next `size` bytes of data frames).
    File {
        /// Content length in bytes.
        size: u64,
        /// Permission bits and owner.
        attrs: Attrs,
    },
    /// A directory.
    Mkdir {
        /// Permission bits and owner.
        attrs: Attrs,
    },
    /// A symbolic link.
    Symlink {
        /// The link's target, as stored.
        target: String,
    },
    /// The path was removed.
    Delete,
}

/// One unit on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A control message (type byte `1`).
    Msg(Msg),
    /// Raw bytes of the current transfer (type byte `2`).
    Data(Vec<u8>),
}

/// Encodes a frame (header + payload).
pub fn encode_frame(f: &Frame) -> Vec<u8> {
    let (t, body): (u8, std::borrow::Cow<'_, [u8]>) = match f {
        Frame::Msg(m) => (
            FRAME_MSG,
            serde_json::to_vec(m).expect("messages serialize").into(),
        ),
        Frame::Data(d) => (FRAME_DATA, d.as_slice().into()),
    };
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(t);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes one frame from the front of `buf`: `Ok(None)` if more bytes are needed, else the
/// frame and how many bytes it used.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, FsSyncError> {
    if buf.len() < 5 {
        if let Some(&t) = buf.first() {
            check_type(t)?;
        }
        return Ok(None);
    }
    check_type(buf[0])?;
    let len = check_len(u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]))?;
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let f = decode_body(buf[0], buf[5..5 + len].to_vec())?;
    Ok(Some((f, 5 + len)))
}

fn check_type(t: u8) -> Result<(), FsSyncError> {
    match t {
        FRAME_MSG | FRAME_DATA => Ok(()),
        other => Err(FsSyncError::Protocol(format!("unknown frame type {other}"))),
    }
}

fn check_len(len: u32) -> Result<usize, FsSyncError> {
    let len = len as usize;
    if len > MAX_FRAME {
        return Err(FsSyncError::Protocol(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME} byte limit"
        )));
    }
    Ok(len)
}

fn decode_body(t: u8, body: Vec<u8>) -> Result<Frame, FsSyncError> {
    if t == FRAME_DATA {
        return Ok(Frame::Data(body));
    }
    serde_json::from_slice(&body)
        .map(Frame::Msg)
        .map_err(|e| FsSyncError::Protocol(format!("malformed message: {e}")))
}

/// Reads one frame; `Ok(None)` on a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FsSyncError> {
    let mut head = [0u8; 5];
    if r.read(&mut head[..1]).await? == 0 {
        return Ok(None);
    }
    check_type(head[0])?;
    r.read_exact(&mut head[1..]).await?;
    let len = check_len(u32::from_be_bytes([head[1], head[2], head[3], head[4]]))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode_body(head[0], body).map(Some)
}

/// Writes one frame (not flushed).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> io::Result<()> {
    match f {
        Frame::Msg(m) => {
            let body = serde_json::to_vec(m).map_err(io::Error::other)?;
            w.write_all(&[FRAME_MSG]).await?;
            w.write_all(&(body.len() as u32).to_be_bytes()).await?;
            w.write_all(&body).await
        }
        Frame::Data(d) => {
            w.write_all(&[FRAME_DATA]).await?;
            w.write_all(&(d.len() as u32).to_be_bytes()).await?;
            w.write_all(d).await
        }
    }
}

/// Frames queued for the stream's writer task.
pub type Outbox = mpsc::Sender<Frame>;

/// The frame that tells the peer why this side stops; none when the peer reported the error.
pub fn error_frame(e: &FsSyncError) -> Option<Frame> {
    (!matches!(e, FsSyncError::Remote(_))).then(|| {
        Frame::Msg(Msg::Error {
            message: e.to_string(),
        })
    })
}

/// Ends a stream after a failure: tells the peer why, lets the writer flush and half-close,
/// and hands the error back.
pub async fn fail(out: Outbox, writer: JoinHandle<io::Result<()>>, e: FsSyncError) -> FsSyncError {
    if let Some(f) = error_frame(&e) {
        let _ = out.send(f).await;
    }
    drop(out);
    let _ = writer.await;
    e
}

/// Starts the task that owns the write half: it writes queued frames, flushes whenever the
/// queue runs dry, and half-closes the stream once every [`Outbox`] clone is dropped.
pub fn spawn_writer<W>(w: W) -> (Outbox, JoinHandle<io::Result<()>>)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Frame>(OUTBOX_DEPTH);
    let task = tokio::spawn(async move {
        let mut w = tokio::io::BufWriter::with_capacity(64 * 1024, w);
        while let Some(f) = rx.recv().await {
            write_frame(&mut w, &f).await?;
            if rx.is_empty() {
                w.flush().await?;
            }
        }
        w.flush().await?;
        let _ = w.shutdown().await;
        Ok(())
    });
    (tx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift PRNG for the fuzz-ish tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn sample_msgs() -> Vec<Msg> {
        vec![
            Msg::Hello {
                proto: PROTO_VERSION,
                mounts: vec![Mount {
                    path: "/data".into(),
                    read_only: true,
                }],
            },
            Msg::Subscribe { mounts: vec![] },
            Msg::TarBegin {
                mount: 3,
                root: Some(Attrs {
                    mode: 0o755,
                    uid: 1,
                    gid: 2,
                }),
            },
            Msg::TarEnd { mount: 3 },
            Msg::Change(Change {
                mount: 0,
                path: "a/b \"c\"/\u{e9}".into(),
                seq: 7,
                seen: 5,
                time_ns: -12,
                op: Op::File {
                    size: 10,
                    attrs: Attrs::default(),
                },
            }),
            Msg::Change(Change {
                mount: 1,
                path: "x".into(),
                seq: 1,
                seen: 0,
                time_ns: 1,
                op: Op::Symlink {
                    target: "../y".into(),
                },
            }),
            Msg::Change(Change {
                mount: 1,
                path: "x".into(),
                seq: 2,
                seen: 0,
                time_ns: 1,
                op: Op::Delete,
            }),
            Msg::Abort,
            Msg::Refused {
                mount: 0,
                path: "p".into(),
                reason: "read-only".into(),
            },
            Msg::Error {
                message: "boom".into(),
            },
        ]
    }

    #[tokio::test]
    async fn frames_round_trip_sync_and_async() {
        let mut frames: Vec<Frame> = sample_msgs().into_iter().map(Frame::Msg).collect();
        frames.push(Frame::Data(vec![]));
        frames.push(Frame::Data((0..=255u8).collect()));
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(encode_frame(f));
        }
        // Incremental decoding: a prefix is "need more", never an error.
        let mut off = 0;
        let mut decoded = Vec::new();
        while off < wire.len() {
            assert!(decode_frame(&wire[off..off + 3.min(wire.len() - off)])
                .unwrap()
                .is_none());
            let (f, used) = decode_frame(&wire[off..]).unwrap().unwrap();
            decoded.push(f);
            off += used;
        }
        assert_eq!(decoded, frames);
        // The async reader, through the async writer.
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).await.unwrap();
        }
        assert_eq!(buf, wire);
        let mut r = &wire[..];
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut r).await.unwrap() {
            got.push(f);
        }
        assert_eq!(got, frames);
    }

    #[tokio::test]
    async fn garbage_frames_are_errors_not_panics() {
        assert!(matches!(
            decode_frame(&[9, 0, 0, 0, 0]),
            Err(FsSyncError::Protocol(_))
        ));
        assert!(matches!(
            decode_frame(&[1, 0xff, 0xff, 0xff, 0xff]),
            Err(FsSyncError::Protocol(_))
        ));
        assert!(matches!(
            decode_frame(&[1, 0, 0, 0, 2, b'{', b'}']),
            Err(FsSyncError::Protocol(_))
        ));
        // A frame cut short is an i/o error for the stream reader.
        let mut r: &[u8] = &[2, 0, 0, 0, 9, 1, 2];
        assert!(matches!(read_frame(&mut r).await, Err(FsSyncError::Io(_))));

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let valid: Vec<u8> = sample_msgs()
            .iter()
            .flat_map(|m| encode_frame(&Frame::Msg(m.clone())))
            .collect();
        let mut errors = 0;
        for round in 0..3000 {
            let input = if round % 2 == 0 {
                let n = (rng.next() % 600) as usize;
                rng.bytes(n)
            } else {
                // Valid frames with a few bytes flipped.
                let mut v = valid.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let i = (rng.next() as usize) % v.len();
                    v[i] ^= (rng.next() as u8) | 1;
                }
                v
            };
            let mut off = 0;
            loop {
                match decode_frame(&input[off..]) {
                    Ok(Some((_, used))) => off += used,
                    Ok(None) => break,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            let mut r = &input[..];
            while let Ok(Some(_)) = read_frame(&mut r).await {}
        }
        assert!(
            errors > 1000,
            "random input should mostly be rejected ({errors})"
        );
    }
}
