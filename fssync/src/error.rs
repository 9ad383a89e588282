//! The crate's error type, [`FsSyncError`]: why a sync session failed (i/o, protocol
//! violation, hostile entry, or an error the peer reported).

use std::io;

/// Why a sync session failed.
#[derive(Debug, thiserror::Error)]
pub enum FsSyncError {
    #[error("volume sync i/o: {0}")]
    Io(#[from] io::Error),
    #[error("volume sync protocol violation: {0}")]
    Protocol(String),
    #[error("refused hostile entry: {0}")]
    Hostile(String),
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
