//! Mount-relative paths: validation of what a peer sends ([`check_rel`],
//! [`symlink_stays_inside`]), splitting and prefix tests, the subtrees left out of a mount
//! ([`nested_excludes`], [`excluded`]), and our temporary names ([`TEMP_PREFIX`]).

use crate::{now_ns, FsSyncError, Mount};
use std::collections::HashSet;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};

/// Names starting with this are our temporary files: never scanned, never accepted from a peer.
pub const TEMP_PREFIX: &str = ".tpsync-";
/// Longest accepted relative path.
pub const MAX_PATH: usize = 4096;
/// Deepest directory nesting walked or removed.
pub(crate) const MAX_DEPTH: usize = 256;

/// Checks a mount-relative path: not empty, not absolute, no `.`/`..`/empty components, no NUL,
/// bounded length.
pub fn check_rel(p: &str) -> Result<(), FsSyncError> {
    let bad = p.is_empty()
        || p.len() > MAX_PATH
        || p.starts_with('/')
        || p.contains('\0')
        || p.split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.len() > 255);
    if bad {
        return Err(FsSyncError::Hostile(format!("path {p:?}")));
    }
    Ok(())
}

/// Whether a symlink at `rel` with `target` resolves (lexically) inside the mount: relative,
/// and never climbing above the mount root.
pub fn symlink_stays_inside(rel: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return false;
    }
    let mut depth = rel.split('/').count() as isize - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// Splits `a/b/c` into (`a/b`, `c`); the parent of a top-level name is `""`.
pub fn split_rel(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

/// Whether `rel` is `prefix` or below it.
pub fn is_under(rel: &str, prefix: &str) -> bool {
    rel == prefix || (rel.starts_with(prefix) && rel.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The paths (relative to mount `i`) of the other mounts nested inside it: each side leaves
/// them out of mount `i`, they are synced as mounts of their own.
pub fn nested_excludes(mounts: &[Mount], i: usize) -> HashSet<String> {
    let base = mounts[i].path.trim_end_matches('/');
    mounts
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .filter_map(|(_, m)| {
            let p = m.path.trim_end_matches('/');
            let rest = if base.is_empty() {
                p.strip_prefix('/')
            } else {
                p.strip_prefix(base).and_then(|r| r.strip_prefix('/'))
            }?;
            (!rest.is_empty()).then(|| rest.to_string())
        })
        .collect()
}

/// Whether `rel` is inside one of the `excludes` subtrees.
pub fn excluded(rel: &str, excludes: &HashSet<String>) -> bool {
    !excludes.is_empty() && excludes.iter().any(|x| is_under(rel, x))
}

/// Whether a component of `rel` is one of our temporary names.
pub fn has_temp_component(rel: &str) -> bool {
    rel.split('/').any(|c| c.starts_with(TEMP_PREFIX))
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh name for a temporary entry (starts with [`TEMP_PREFIX`]).
pub(crate) fn temp_name() -> CString {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{TEMP_PREFIX}{}-{}-{n}",
        std::process::id(),
        now_ns() as u64 % 1_000_000_007
    );
    CString::new(name).expect("no NUL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_and_symlink_targets() {
        for ok in [
            "a",
            "a/b",
            "a b/\u{e9}t\u{e9}",
            ".hidden",
            "a/..b",
            "...",
            "a/b.",
        ] {
            assert!(check_rel(ok).is_ok(), "{ok}");
        }
        let long = "x/".repeat(3000) + "y";
        for bad in [
            "",
            "/etc/x",
            "../x",
            "a/../../x",
            "a/./b",
            ".",
            "a//b",
            "a/",
            "a\0b",
            long.as_str(),
        ] {
            assert!(
                matches!(check_rel(bad), Err(FsSyncError::Hostile(_))),
                "{bad:?}"
            );
        }
        assert!(symlink_stays_inside("a", "b"));
        assert!(symlink_stays_inside("a", "."));
        assert!(symlink_stays_inside("d/a", "../b"));
        assert!(symlink_stays_inside("d/a", ".."));
        assert!(symlink_stays_inside("d/e/a", "../../x/../y"));
        assert!(!symlink_stays_inside("a", ".."));
        assert!(!symlink_stays_inside("a", "../a"));
        assert!(!symlink_stays_inside("d/a", "../../x"));
        assert!(!symlink_stays_inside("d/a", "x/../../.."));
        assert!(!symlink_stays_inside("a", "/etc/passwd"));
        assert!(!symlink_stays_inside("a", ""));
        assert_eq!(split_rel("a/b/c"), ("a/b", "c"));
        assert_eq!(split_rel("c"), ("", "c"));
        assert!(is_under("a/b", "a") && is_under("a", "a") && !is_under("ab", "a"));
    }

    #[test]
    fn nested_mounts_are_excluded_from_their_parent() {
        let m = |p: &str| Mount {
            path: p.into(),
            read_only: false,
        };
        let mounts = vec![
            m("/data"),
            m("/data/cache"),
            m("/database"),
            m("/data/x/y/"),
        ];
        let ex = nested_excludes(&mounts, 0);
        assert_eq!(
            ex,
            ["cache", "x/y"].iter().map(ToString::to_string).collect()
        );
        assert!(nested_excludes(&mounts, 1).is_empty());
        assert!(nested_excludes(&mounts, 2).is_empty());
        assert!(excluded("cache/f", &ex) && !excluded("cachet", &ex));
    }
}
