//! What is recorded per path: [`Kind`] and [`Meta`] (built from a `stat`), how two
//! observations compare, the permission bits we are willing to set ([`safe_mode`]), and the
//! clock ([`now_ns`]).

use crate::Attrs;
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in ns since the epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Entry type as far as syncing is concerned (devices, fifos and sockets are `Other`: skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// What a scan records per path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Entry type.
    pub kind: Kind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
}

impl Meta {
    pub(crate) fn from_stat(st: &libc::stat) -> Meta {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        };
        Meta {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
            ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
            ino: st.st_ino,
        }
    }

    /// Whether two observations of the same path show no change (directories: type, mode and
    /// owner only; their times move whenever a child changes).
    pub fn same(&self, o: &Meta) -> bool {
        self.kind == o.kind
            && self.mode == o.mode
            && self.uid == o.uid
            && self.gid == o.gid
            && (self.kind == Kind::Dir
                || (self.size == o.size
                    && self.mtime_ns == o.mtime_ns
                    && self.ctime_ns == o.ctime_ns
                    && self.ino == o.ino))
    }

    /// The permission bits and owner, as sent on the wire.
    pub fn attrs(&self) -> Attrs {
        Attrs {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// [`Meta::same`] for possibly absent entries (both absent counts as the same).
pub(crate) fn same_opt(a: Option<&Meta>, b: Option<&Meta>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same(b),
        _ => false,
    }
}

/// Permission bits we are willing to set: no set-uid/set-gid on files (the sync process runs as
/// root), set-gid and sticky kept on directories.
pub fn safe_mode(kind: Kind, mode: u32) -> u32 {
    match kind {
        Kind::Dir => mode & 0o3777,
        _ => mode & 0o1777,
    }
}
