//! Discovery of running daemons: one JSON info file per connection in
//! `~/.cache/telepresence/daemons/`, written by `connect`, removed by `quit`, and pruned when
//! its container is gone.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the CLI needs to find and talk to a daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonInfo {
    pub name: String,
    pub namespace: String,
    pub context: String,
    pub cluster_type: String,
    pub server: String,
    pub manager_namespace: String,
    /// Container name (`tp-<name>`).
    pub container: String,
    pub container_id: String,
    /// The daemon's gRPC port on 127.0.0.1.
    pub port: u16,
}

impl DaemonInfo {
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The user cache dir (`$XDG_CACHE_HOME/telepresence` or `~/.cache/telepresence`).
pub fn cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("telepresence")
}

fn daemons_dir() -> PathBuf {
    cache_dir().join("daemons")
}

fn path_of(name: &str) -> PathBuf {
    daemons_dir().join(format!("{name}.json"))
}

pub fn save(info: &DaemonInfo) -> Result<()> {
    std::fs::create_dir_all(daemons_dir()).context("creating the daemon info directory")?;
    let tmp = path_of(&format!(".{}", info.name));
    std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)?;
    std::fs::rename(&tmp, path_of(&info.name))?;
    Ok(())
}

pub fn remove(name: &str) {
    let _ = std::fs::remove_file(path_of(name));
}

/// Every info file, sorted by name; unreadable files are removed.
pub fn load_all() -> Vec<DaemonInfo> {
    let Ok(rd) = std::fs::read_dir(daemons_dir()) else {
        return Vec::new();
    };
    let mut v: Vec<DaemonInfo> = rd
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with(".json") && !n.starts_with('.')
        })
        .filter_map(|e| {
            let parsed = std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if parsed.is_none() {
                let _ = std::fs::remove_file(e.path());
            }
            parsed
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Picks the daemon a command talks to: `--use REGEX`, else the one whose namespace is the
/// one asked for, else the only one.
pub fn select<'a>(
    all: &'a [DaemonInfo],
    use_: Option<&str>,
    namespace: Option<&str>,
) -> Result<&'a DaemonInfo> {
    if all.is_empty() {
        bail!("Not connected; run `telepresence connect --docker` first");
    }
    if let Some(re) = use_ {
        let m = matcher(re)?;
        let hits: Vec<_> = all.iter().filter(|d| m(&d.name)).collect();
        return match hits.as_slice() {
            [one] => Ok(one),
            [] => Err(anyhow!(
                "no connection matches --use {re:?}; running: {}",
                names(all)
            )),
            _ => Err(anyhow!(
                "--use {re:?} matches several connections ({}); make it more specific",
                hits.iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
    }
    if all.len() == 1 {
        return Ok(&all[0]);
    }
    if let Some(ns) = namespace {
        let hits: Vec<_> = all.iter().filter(|d| d.namespace == ns).collect();
        if let [one] = hits.as_slice() {
            return Ok(one);
        }
    }
    bail!(
        "several connections are running ({}); pick one with --use <name>",
        names(all)
    )
}

fn names(all: &[DaemonInfo]) -> String {
    all.iter()
        .map(|d| d.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compiles a `--use` pattern.
fn matcher(pattern: &str) -> Result<impl Fn(&str) -> bool> {
    let re =
        regex::Regex::new(pattern).with_context(|| format!("invalid --use pattern {pattern:?}"))?;
    Ok(move |name: &str| re.is_match(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: &str, ns: &str) -> DaemonInfo {
        DaemonInfo {
            name: name.into(),
            namespace: ns.into(),
            context: "docker".into(),
            cluster_type: "docker".into(),
            server: String::new(),
            manager_namespace: String::new(),
            container: format!("tp-{name}"),
            container_id: String::new(),
            port: 1,
        }
    }

    #[test]
    fn selection() {
        let all = vec![d("docker-a-cn", "a"), d("docker-b-cn", "b")];
        assert!(select(&[], None, None)
            .unwrap_err()
            .to_string()
            .contains("Not connected"));
        assert_eq!(
            select(&all, Some("^docker-b"), None).unwrap().name,
            "docker-b-cn"
        );
        assert_eq!(
            select(&all, Some("a-cn$"), None).unwrap().name,
            "docker-a-cn"
        );
        assert!(select(&all, Some("docker"), None).is_err());
        assert!(select(&all, Some("zzz"), None).is_err());
        assert_eq!(select(&all, None, Some("b")).unwrap().name, "docker-b-cn");
        assert!(select(&all, None, None)
            .unwrap_err()
            .to_string()
            .contains("--use"));
        assert_eq!(
            select(&all[..1], None, Some("zz")).unwrap().name,
            "docker-a-cn"
        );
    }
}
