//! Independent checks of what the Kubernetes tests produce, by `tests/python/k8s_validate.py`:
//! webhook patches re-applied with python's `jsonpatch` (another RFC 6902 implementation) and
//! every pod or chart object validated against `kubernetes-validate`'s strict JSON schemas
//! (generated from each Kubernetes release's OpenAPI). Without python or those modules the check
//! is skipped with the reason (see [`crate::skip`]); under `CI=true` that is a failure, since
//! `.ci/run` installs them.

use serde_json::{json, Value};
use std::path::PathBuf;

/// Kubernetes versions every object is validated against (the oldest and newest the schema
/// package ships, and one between).
pub const VERSIONS: &[&str] = &["1.25.0", "1.30.0", "1.37.0"];

/// A webhook result: the pod as the API server sent it, the patch, and the pod it must give.
pub struct PatchedPod {
    pub name: String,
    pub original: Value,
    pub patch: Value,
    pub expected: Value,
    /// Oldest Kubernetes version whose schema has every field the pod uses (native sidecars:
    /// `restartPolicy` on init containers is 1.28+).
    pub min_version: Option<&'static str>,
}

/// An object to validate (a rendered chart object).
pub struct Object {
    pub name: String,
    pub object: Value,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/k8s_validate.py")
}

/// Runs the validator over `pods` and `objects`; panics with every problem found. `what` names
/// the calling test in a skip.
pub fn check(what: &str, pods: &[PatchedPod], objects: &[Object]) {
    let input = json!({
        "versions": VERSIONS,
        "pods": pods.iter().map(|p| json!({
            "name": p.name, "original": p.original, "patch": p.patch,
            "expected": p.expected, "min_version": p.min_version,
        })).collect::<Vec<_>>(),
        "objects": objects.iter().map(|o| json!({"name": o.name, "object": o.object}))
            .collect::<Vec<_>>(),
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cases.json");
    std::fs::write(&file, input.to_string()).expect("write cases");
    let out = match std::process::Command::new("python3")
        .arg(script())
        .arg(&file)
        .output()
    {
        Ok(o) => o,
        Err(e) => return unavailable(what, &format!("no python3 ({e})")),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => eprintln!("{what}: {}", stderr.trim()),
        Some(3) => unavailable(what, stderr.trim()),
        _ => panic!(
            "{what}: Kubernetes schema / JSONPatch check failed:\n{}{stderr}",
            String::from_utf8_lossy(&out.stdout)
        ),
    }
}

fn unavailable(what: &str, why: &str) {
    let msg = format!(
        "{what}: {why} (python3 -m pip install kubernetes-validate jsonpatch; .ci/run does)"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {msg}");
    }
    crate::skip(&msg);
}
