//! File-tree helpers for tests: building trees of files to sync or serve (`make_tree`,
//! `write_file`), reading and changing their metadata (`read`, `chmod`, `set_mtime`), comparing
//! two trees (`tree_diff`, `same_content`), waiting for a condition on them (`within`) and
//! deterministic random bytes (`Rng`).

use anyhow::Result;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes `contents` to `dir/rel`, creating the parent directories.
pub fn write_file(dir: &Path, rel: &str, contents: impl AsRef<[u8]>) {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(p, contents).unwrap();
}

/// The contents of a file, `None` when it cannot be read.
pub fn read(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

/// Sets a path's permission bits.
pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets a file's modification time to `secs` after the epoch.
pub fn set_mtime(p: &Path, secs: u64) {
    let f = File::open(p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// Differences between two trees below `rel` (type, content, mode, mtime seconds, symlink
/// target), one line each, appended to `out`.
pub fn tree_diff(a: &Path, b: &Path, rel: &str, out: &mut Vec<String>) {
    let mut names: Vec<_> = std::fs::read_dir(a.join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut other: Vec<_> = std::fs::read_dir(b.join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    other.sort();
    if names != other {
        out.push(format!("{rel}: {names:?} vs {other:?}"));
        return;
    }
    for n in names {
        let r = Path::new(rel).join(&n);
        let (ma, mb) = (
            std::fs::symlink_metadata(a.join(&r)).unwrap(),
            std::fs::symlink_metadata(b.join(&r)).unwrap(),
        );
        if ma.file_type() != mb.file_type() || ma.mode() != mb.mode() {
            out.push(format!("{r:?}: mode {:o} vs {:o}", ma.mode(), mb.mode()));
        } else if ma.is_symlink() {
            if std::fs::read_link(a.join(&r)).unwrap() != std::fs::read_link(b.join(&r)).unwrap() {
                out.push(format!("{r:?}: link target"));
            }
        } else if ma.is_dir() {
            if ma.mtime() != mb.mtime() {
                out.push(format!("{r:?}: dir mtime {} vs {}", ma.mtime(), mb.mtime()));
            }
            tree_diff(a, b, r.to_str().unwrap(), out);
        } else if ma.mtime() != mb.mtime() || !same_content(&a.join(&r), &b.join(&r)) {
            out.push(format!("{r:?}: content or mtime"));
        }
    }
}

/// Whether two files have the same bytes.
pub fn same_content(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Polls `f` every `every` until it holds; panics with `what` after `timeout`. Returns how long
/// it took.
pub async fn within(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> bool,
) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < timeout,
            "not within {} s: {what}",
            timeout.as_secs()
        );
        tokio::time::sleep(every).await;
    }
    t.elapsed()
}

/// Writes a tree of `files` small files (in 100 directories) plus one file of `big` bytes into
/// `dir`; returns (regular files, total bytes).
pub fn make_tree(dir: &Path, files: usize, big: u64) -> Result<(u64, u64)> {
    use std::io::Write;
    let mut bytes = 0u64;
    for i in 0..files {
        let sub = dir.join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&sub)?;
        let body = format!("file number {i}\n");
        std::fs::write(sub.join(format!("f{i}.txt")), &body)?;
        bytes += body.len() as u64;
    }
    let mut n = 0;
    if big > 0 {
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("big.bin"))?);
        let chunk: Vec<u8> = (0..1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let mut left = big;
        while left > 0 {
            let take = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..take])?;
            left -= take as u64;
        }
        f.flush()?;
        n = 1;
        bytes += big;
    }
    Ok((files as u64 + n, bytes))
}

/// Deterministic xorshift PRNG for the fuzz-ish tests: the same seed gives the same bytes.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
