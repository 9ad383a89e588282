//! The crate's error type, [`FsSyncError`]: why a sync session failed (i/o, protocol
//! violation, hostile entry, or an error the peer reported).

use std::io;

/// Why a sync session failed.
#[derive(Debug, thiserror::Error)]
pub enum FsSyncError {
    /// Reading or writing the stream or the local tree failed.
    #[error("volume sync i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something the protocol does not allow at that point.
    #[error("volume sync protocol violation: {0}")]
    Protocol(String),
    /// A path that fails `paths::check_rel` (absolute, `..`, empty or NUL components, too long).
    #[error("refused hostile entry: {0}")]
    Hostile(String),
    /// The peer's `Error` message.
    #[error("volume sync peer reported: {0}")]
    Remote(String),
}

impl From<FsSyncError> for io::Error {
    fn from(e: FsSyncError) -> io::Error {
        match e {
            FsSyncError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}
