//! [`Root`], a mount root every path is resolved below (component by component, never through
//! a symlink), and the confined tree operations built on it: temporary files and symlinks
//! ([`create_temp`], [`create_temp_symlink`]), atomic installation ([`install_at`]) and
//! recursive removal ([`remove_all_at`]).

use crate::paths::{temp_name, MAX_DEPTH};
use crate::sys::{open_dir_path, renameat};
use crate::{
    cstring, is_absent, lstat_at, mkdirat, openat, read_dir_names, set_fd_attrs, split_rel,
    symlinkat, unlinkat, Attrs, Kind, Meta, DIR_FLAGS,
};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Creates a new temporary file in `dir` (mode 0600); returns its name and the open file.
pub fn create_temp(dir: BorrowedFd<'_>) -> io::Result<(CString, File)> {
    loop {
        let name = temp_name();
        match openat(
            dir,
            &name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        ) {
            Ok(fd) => return Ok((name, File::from(fd))),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Creates a temporary symlink in `dir` pointing at `target`; returns its name.
pub fn create_temp_symlink(dir: BorrowedFd<'_>, target: &CStr) -> io::Result<CString> {
    loop {
        let name = temp_name();
        match symlinkat(target, dir, &name) {
            Ok(()) => return Ok(name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Atomically renames `tmp` to `name` in `dir`; a directory in the way is removed first.
pub fn install_at(dir: BorrowedFd<'_>, tmp: &CStr, name: &CStr) -> io::Result<()> {
    match renameat(dir, tmp, name) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EISDIR | libc::ENOTEMPTY | libc::EEXIST)
            ) =>
        {
            remove_all_at(dir, name)?;
            renameat(dir, tmp, name)
        }
        other => other,
    }
}

/// Removes `name` in `dir` and, for a directory, everything below it; never follows symlinks.
/// A missing entry is not an error.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    remove_all_depth(dir, name, 0)
}

fn remove_all_depth(dir: BorrowedFd<'_>, name: &CStr, depth: usize) -> io::Result<()> {
    let Some(m) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if m.kind == Kind::Dir {
        if depth > MAX_DEPTH {
            return Err(io::Error::other("directory tree too deep to remove"));
        }
        let sub = match openat(dir, name, DIR_FLAGS, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        for child in read_dir_names(sub.as_fd())? {
            remove_all_depth(sub.as_fd(), &child, depth + 1)?;
        }
        drop(sub);
        match unlinkat(dir, name, libc::AT_REMOVEDIR) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    } else {
        match unlinkat(dir, name, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

/// A mount root: every operation below it resolves paths component by component with
/// `O_NOFOLLOW`, so a symlink (or a concurrently swapped directory) can never take a read or
/// write outside the root.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens an existing directory as a root (the root path itself may be a symlink).
    pub fn open(path: &Path) -> io::Result<Root> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        Ok(Root {
            fd: open_dir_path(&c)?,
            path: path.to_path_buf(),
        })
    }

    /// The path the root was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory's file descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens directory `rel` (`""` = the root). With `created`, missing directories are made
    /// (mode 0755) and their paths appended to it.
    pub fn open_dir(
        &self,
        rel: &str,
        mut created: Option<&mut Vec<String>>,
    ) -> io::Result<OwnedFd> {
        let mut cur = self.fd.try_clone()?;
        if rel.is_empty() {
            return Ok(cur);
        }
        let mut done = 0usize;
        for comp in rel.split('/') {
            let c = cstring(comp)?;
            let next = match openat(cur.as_fd(), &c, DIR_FLAGS, 0) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && created.is_some() => {
                    match mkdirat(cur.as_fd(), &c, 0o755) {
                        Ok(()) => {
                            if let Some(v) = created.as_deref_mut() {
                                v.push(rel[..done + comp.len()].to_string());
                            }
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    openat(cur.as_fd(), &c, DIR_FLAGS, 0)?
                }
                Err(e) => return Err(e),
            };
            cur = next;
            done += comp.len() + 1;
        }
        Ok(cur)
    }

    /// `lstat` of `rel` (`Ok(None)` if it, or a directory on the way, does not exist or is not
    /// a directory).
    pub fn stat(&self, rel: &str) -> io::Result<Option<Meta>> {
        let (parent, name) = split_rel(rel);
        let dir = match self.open_dir(parent, None) {
            Ok(d) => d,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        lstat_at(dir.as_fd(), &cstring(name)?)
    }

    /// Opens regular file `rel` for reading (never through a symlink).
    pub fn open_read(&self, rel: &str) -> io::Result<File> {
        let (parent, name) = split_rel(rel);
        let dir = self.open_dir(parent, None)?;
        openat(
            dir.as_fd(),
            &cstring(name)?,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        )
        .map(File::from)
    }

    /// Applies a remote root's mode and owner to this root.
    pub fn set_root_attrs(&self, a: Attrs, chown: bool) -> io::Result<()> {
        set_fd_attrs(self.fd(), Kind::Dir, a, chown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn root_never_follows_symlinks_below_it() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        symlink(outside.path(), dir.path().join("esc")).unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/f"), "f").unwrap();
        let root = Root::open(dir.path()).unwrap();

        let mut created = Vec::new();
        assert!(root.open_dir("esc", Some(&mut created)).is_err());
        assert!(root.open_dir("esc/deeper", Some(&mut created)).is_err());
        assert!(created.is_empty());
        assert!(root.open_read("esc/secret").is_err());
        assert!(root.open_read("esc").is_err());
        assert_eq!(root.stat("esc/secret").unwrap(), None);
        assert_eq!(root.stat("esc").unwrap().unwrap().kind, Kind::Symlink);
        assert!(root.open_read("real/f").is_ok());

        // Missing parents are created (and reported), never through a symlink.
        root.open_dir("n1/n2", Some(&mut created)).unwrap();
        assert_eq!(created, vec!["n1".to_string(), "n1/n2".to_string()]);

        // remove_all_at deletes the link, not what it points at.
        remove_all_at(root.fd(), &cstring("esc").unwrap()).unwrap();
        assert!(outside.path().join("secret").exists());
        assert!(!dir.path().join("esc").exists());
    }
}
