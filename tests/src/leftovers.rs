//! Leak checks: what of ours (containers, networks, volumes) is left on the engine.

use crate::harness::docker;

/// Containers, networks and volumes carrying our label (names), for leak checks.
pub fn leftovers() -> Vec<String> {
    let mut v = Vec::new();
    for (what, args) in [
        // Containers we create carry a role label; the managed-by label alone would also match
        // the test project's containers, which inherit it from the test app's image.
        (
            "container",
            vec![
                "ps",
                "-a",
                "--filter",
                "label=telepresence.io/role",
                "--format",
                "{{.Names}}",
            ],
        ),
        (
            "container",
            vec![
                "ps",
                "-a",
                "--filter",
                "name=^tp-",
                "--format",
                "{{.Names}}",
            ],
        ),
        (
            "network",
            vec![
                "network",
                "ls",
                "--filter",
                "label=telepresence.io/managed-by",
                "--format",
                "{{.Name}}",
            ],
        ),
        (
            "volume",
            vec![
                "volume",
                "ls",
                "--filter",
                "label=telepresence.io/managed-by",
                "--format",
                "{{.Name}}",
            ],
        ),
    ] {
        if let Ok(out) = docker(&args) {
            v.extend(
                out.lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| format!("{what} {l}")),
            );
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Asserts that nothing of ours is left on the engine (containers, networks, volumes).
pub fn assert_clean(context: &str) {
    let left = leftovers();
    assert!(left.is_empty(), "{context}: left behind: {left:?}");
}
