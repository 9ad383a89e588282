//! Tree walking: [`walk`] visits every entry below a [`Root`] (parents first, names sorted,
//! temporary names, excluded subtrees and special files left out), [`scan`] collects the
//! path → [`Meta`] map the live engine compares.

use crate::paths::MAX_DEPTH;
use crate::{excluded, lstat_at, openat, read_dir_names, Kind, Meta, Root, DIR_FLAGS, TEMP_PREFIX};
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

/// One entry met by [`walk`]: its parent directory, name, mount-relative path and metadata.
pub struct WalkEntry<'a> {
    /// The directory holding the entry.
    pub dir: BorrowedFd<'a>,
    /// The entry's name in `dir`.
    pub name: &'a CStr,
    /// Its path relative to the mount root.
    pub rel: &'a str,
    /// Its metadata.
    pub meta: &'a Meta,
}

/// What a walk could not see.
#[derive(Debug, Default, Clone)]
pub struct WalkReport {
    /// Subtrees that could not be read (no deletions are inferred below them).
    pub incomplete: Vec<String>,
    /// Entries skipped: names that are not UTF-8, devices, fifos, sockets.
    pub skipped: u64,
}

/// Visits every entry below `root` (parents before children, names sorted), skipping our
/// temporary files, `excludes` subtrees, non-UTF-8 names and special files.
pub fn walk(
    root: &Root,
    excludes: &HashSet<String>,
    f: &mut dyn FnMut(&WalkEntry<'_>) -> io::Result<()>,
) -> io::Result<WalkReport> {
    let names = read_dir_names(root.fd())?;
    let mut walker = Walker {
        excludes,
        f,
        report: WalkReport::default(),
    };
    walker.names(root.fd(), names, "", 0)?;
    Ok(walker.report)
}

/// One walk in progress: what to leave out, whom to tell, what could not be seen.
struct Walker<'w> {
    excludes: &'w HashSet<String>,
    f: &'w mut dyn FnMut(&WalkEntry<'_>) -> io::Result<()>,
    report: WalkReport,
}

impl Walker<'_> {
    /// Visits `names` of `dir` (at `prefix`, `depth` levels below the root) and their subtrees.
    fn names(
        &mut self,
        dir: BorrowedFd<'_>,
        mut names: Vec<CString>,
        prefix: &str,
        depth: usize,
    ) -> io::Result<()> {
        names.sort_unstable();
        for name in names {
            let Ok(s) = name.to_str() else {
                self.report.skipped += 1;
                continue;
            };
            if s.starts_with(TEMP_PREFIX) {
                continue;
            }
            let rel = if prefix.is_empty() {
                s.to_string()
            } else {
                format!("{prefix}/{s}")
            };
            if excluded(&rel, self.excludes) {
                continue;
            }
            let meta = match lstat_at(dir, &name) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(_) => {
                    self.report.incomplete.push(rel);
                    continue;
                }
            };
            if meta.kind == Kind::Other {
                self.report.skipped += 1;
                continue;
            }
            (self.f)(&WalkEntry {
                dir,
                name: &name,
                rel: &rel,
                meta: &meta,
            })?;
            if meta.kind == Kind::Dir {
                self.descend(dir, &name, rel, depth)?;
            }
        }
        Ok(())
    }

    /// Walks into directory `name` of `dir` (at `rel`); a subtree that cannot be read, or is
    /// too deep, is reported as incomplete.
    fn descend(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        rel: String,
        depth: usize,
    ) -> io::Result<()> {
        if depth + 1 >= MAX_DEPTH {
            self.report.incomplete.push(rel);
            return Ok(());
        }
        let sub = match openat(dir, name, DIR_FLAGS, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(_) => {
                self.report.incomplete.push(rel);
                return Ok(());
            }
        };
        match read_dir_names(sub.as_fd()) {
            Ok(children) => self.names(sub.as_fd(), children, &rel, depth + 1),
            Err(_) => {
                self.report.incomplete.push(rel);
                Ok(())
            }
        }
    }
}

/// Path → metadata of everything below `root` (see [`walk`]).
pub fn scan(
    root: &Root,
    excludes: &HashSet<String>,
) -> io::Result<(HashMap<String, Meta>, WalkReport)> {
    let mut map = HashMap::new();
    let report = walk(root, excludes, &mut |e| {
        map.insert(e.rel.to_string(), *e.meta);
        Ok(())
    })?;
    Ok((map, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    #[test]
    fn scan_sees_kinds_and_skips_temp_and_excluded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("d/e")).unwrap();
        std::fs::write(p.join("d/e/f"), "hello").unwrap();
        std::fs::write(p.join("empty"), "").unwrap();
        symlink("d/e/f", p.join("l")).unwrap();
        std::fs::write(p.join(format!("{TEMP_PREFIX}x")), "tmp").unwrap();
        std::fs::create_dir(p.join("nested")).unwrap();
        std::fs::write(p.join("nested/inner"), "i").unwrap();
        std::fs::set_permissions(p.join("empty"), std::fs::Permissions::from_mode(0o640)).unwrap();
        let root = Root::open(p).unwrap();
        let ex: HashSet<String> = ["nested".to_string()].into();
        let (m, report) = scan(&root, &ex).unwrap();
        let mut keys: Vec<&str> = m.keys().map(std::string::String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["d", "d/e", "d/e/f", "empty", "l"]);
        assert_eq!(m["d"].kind, Kind::Dir);
        assert_eq!(m["d/e/f"].kind, Kind::File);
        assert_eq!(m["d/e/f"].size, 5);
        assert_eq!(m["l"].kind, Kind::Symlink);
        assert_eq!(m["empty"].mode, 0o640);
        let md = std::fs::symlink_metadata(p.join("d/e/f")).unwrap();
        assert_eq!(m["d/e/f"].ino, md.ino());
        assert_eq!(
            m["d/e/f"].mtime_ns,
            md.mtime() * 1_000_000_000 + md.mtime_nsec()
        );
        assert!(report.incomplete.is_empty());
    }
}
