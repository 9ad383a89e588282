//! Volume sync protocol: how the traffic-agent (which sees the workload's mounts at their real
//! paths) and the client's sync container (one local directory per remote mount) keep those
//! trees identical over ONE byte stream. This crate owns the wire format (framing and message
//! types), the confined file-system primitives both ends use (every path is resolved below a
//! mount root with `openat(O_NOFOLLOW)`, so nothing is ever written outside it), the tree
//! scanner, and the symmetric live-sync engine ([`run_live`]). The agent end
//! (`agent::fs::serve`) and the client end (`daemon_image::fs::sync`) add the handshake and the
//! initial tar transfer.
//!
//! # Wire format
//! A stream of frames: one type byte (`1` = message, `2` = data), a big-endian `u32` length
//! (at most [`MAX_FRAME`]), then the payload. A message payload is one JSON [`Msg`]; data frames
//! carry raw bytes that belong to the transfer the preceding message opened.
//!
//! # Conversation
//! 1. agent → client `Hello { proto, mounts }`; client → agent `Subscribe { mounts }` (a subset
//!    of the offered paths; `read_only` may be stricter than offered). Mount numbers are indexes
//!    into the `Subscribe` list.
//! 2. For each subscribed mount, in order: `TarBegin { mount, root }`, data frames holding one
//!    tar archive of the mount (GNU headers, parents before children), `TarEnd { mount }`.
//! 3. Live sync, both directions at once: `Change { mount, path, seq, seen, time_ns, op }` where
//!    `op` is `file` (followed by exactly `size` bytes of data frames, or an early `Abort`),
//!    `mkdir`, `symlink` or `delete`. `seq` numbers the sender's changes, `seen` is the highest
//!    peer `seq` the sender had processed. A receiver applying a change to a path it has itself
//!    changed since the last sync (not yet sent, or sent with a `seq` the peer had not seen) has
//!    a conflict: the later `time_ns` wins (ties go to the agent), decided identically on both
//!    sides. `Refused` reports a change the receiver would not apply (read-only mount, symlink
//!    leaving the mount); `Error` carries a fatal error before the sender closes.
//!
//! # Change detection
//! Each side polls its trees every [`POLL_INTERVAL`], comparing (type, size, mtime, ctime,
//! inode, mode, owner) per path with the state recorded at the last sync. A regular file is
//! only sent once it looked the same in two consecutive polls, so a file being written is not
//! sent over and over (a file under [`SMALL_FILE`] that keeps changing, like a log, still goes
//! out every [`MAX_DEFER`]). Applied changes update the recorded state (no echo); files are
//! written to a temporary name in the same directory and renamed into place, so readers never
//! see half a file. Renames travel as delete + create.
//!
//! # Layout
//! - `wire.rs`: frames, message types, encoding and the stream's writer task.
//! - `error.rs`: [`FsSyncError`].
//! - `paths.rs`: mount-relative path checks, excluded subtrees, temporary names.
//! - `meta.rs`: per-path metadata ([`Meta`], [`Kind`]) and the clock.
//! - `sys.rs`: the libc wrappers (`openat` family, `fstatat`, `readdir`, `futimens`, …), the
//!   only module allowed `unsafe` code.
//! - `root.rs`: [`Root`] and the confined tree operations (temporary files, install, remove).
//! - `walk.rs`: [`walk`] and [`scan`].
//! - `live/`: the live engine [`run_live`] (`mod.rs`), its shared state (`state.rs`), what to
//!   send (`plan.rs`, `send.rs`) and how to apply what arrives (`apply.rs`).

#![deny(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod live;
mod meta;
mod paths;
mod root;
#[allow(unsafe_code)]
mod sys;
mod walk;
mod wire;

pub use error::FsSyncError;
pub use live::{
    run_live, LiveMount, LiveOptions, FLUSH_TIMEOUT, MAX_DEFER, POLL_INTERVAL, SMALL_FILE,
};
pub(crate) use meta::same_opt;
pub use meta::{now_ns, safe_mode, Kind, Meta};
pub use paths::{
    check_rel, excluded, has_temp_component, is_under, nested_excludes, split_rel,
    symlink_stays_inside, MAX_PATH, TEMP_PREFIX,
};
pub use root::{create_temp, create_temp_symlink, install_at, remove_all_at, Root};
pub use sys::{
    can_chown, cstring, fstat, is_absent, lstat_at, mkdirat, openat, read_dir_names, readlinkat,
    set_fd_attrs, set_fd_mtime, set_link_mtime, set_link_owner, symlinkat, unlinkat, DIR_FLAGS,
};
pub use walk::{scan, walk, WalkEntry, WalkReport};
pub use wire::{
    decode_frame, encode_frame, error_frame, fail, read_frame, spawn_writer, write_frame, Attrs,
    Change, Frame, Mount, Msg, Op, Outbox, CHUNK, MAX_FRAME, PROTO_VERSION,
};
