//! Mount policies (`x-tele.mounts`) applied to one engaged service: which of the named compose
//! volumes it mounts are replaced by the workload's remote volume mounted at the same path.
//! A volume matched by a mount entry (the first whose `volume` / `volumePattern` matches) takes
//! that entry's policy: `local` keeps the compose volume, `remote` / `remoteReadOnly` put the
//! workload's volume at that path (an error when the workload mounts nothing there). Without a
//! policy the workload decides: a path it mounts is remote (read-only when it is read-only
//! there), any other stays local. Bind mounts and anonymous volumes are never replaced.
//! Also the parsing of a service's `volumes:` entries (short `src:dst[:mode]` and long syntax),
//! which `merge.rs` uses too.

use crate::model::scalar_text;
use crate::xtele::{Mount, MountPolicy, VolumeMatch};
use yaml_serde::Value;

/// One entry of a service's `volumes:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The source (a volume name or a host path); `None` for an anonymous volume.
    pub source: Option<String>,
    /// The path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Parses a `volumes:` entry (`None` when it is neither a string nor a mapping with `target`).
pub fn entry(v: &Value) -> Option<Entry> {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            Some(match parts.as_slice() {
                [one] => Entry {
                    source: None,
                    target: (*one).to_string(),
                    read_only: false,
                },
                [src, dst, rest @ ..] => Entry {
                    source: Some((*src).to_string()),
                    target: (*dst).to_string(),
                    read_only: rest
                        .first()
                        .is_some_and(|mode| mode.split(',').any(|o| o == "ro")),
                },
                [] => return None,
            })
        }
        Value::Mapping(m) => Some(Entry {
            source: m.get("source").and_then(scalar_text),
            target: m.get("target").and_then(scalar_text)?,
            read_only: m
                .get("read_only")
                .is_some_and(|r| r.as_bool() == Some(true)),
        }),
        _ => None,
    }
}

/// The named project volumes (keys of the top-level `volumes:`) that `service` mounts.
pub fn named_volumes(tree: &Value, service: &str) -> Vec<Entry> {
    let declared = |name: &str| {
        tree.get("volumes")
            .and_then(Value::as_mapping)
            .is_some_and(|m| m.contains_key(name))
    };
    crate::model::services(tree)
        .and_then(|s| s.get(service))
        .and_then(|s| s.get("volumes"))
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(entry)
        .filter(|e| e.source.as_deref().is_some_and(declared))
        .collect()
}

/// A volume of the engaged workload's container, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMount {
    /// Where it is mounted in the workload's container.
    pub path: String,
    /// Mounted read-only there.
    pub read_only: bool,
}

/// A compose volume replaced by a remote one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swap {
    /// The compose volume it replaces.
    pub volume: String,
    /// The path (the same in the service and in the workload).
    pub target: String,
    /// Index into the remote mounts.
    pub remote: usize,
    /// Mounted read-only in the service.
    pub read_only: bool,
}

/// A `remote` policy that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "x-tele.mounts.{index}: policy {policy} for volume {volume:?}, which this service mounts at {target}, but the workload mounts nothing there (its volumes: {remote}); mount the volume where the workload does, or use policy: local"
)]
pub struct NoRemoteVolume {
    /// Which `x-tele.mounts` entry.
    pub index: usize,
    /// Its policy as written.
    pub policy: &'static str,
    /// The compose volume.
    pub volume: String,
    /// Where the service mounts it.
    pub target: String,
    /// The workload's mount paths (or "none").
    pub remote: String,
}

/// The first mount entry matching `volume`, with its index.
fn policy_of<'a>(mounts: &'a [Mount], volume: &str) -> Option<(usize, &'a Mount)> {
    mounts.iter().enumerate().find(|(_, m)| match &m.volumes {
        VolumeMatch::Name(n) => n == volume,
        VolumeMatch::Pattern(p) => p.is_match(volume),
    })
}

/// Decides, for each named volume the service mounts (`uses`), whether the workload's volume
/// replaces it; `watch_only` (a wiretap) makes every remote volume read-only.
pub fn decide(
    uses: &[Entry],
    mounts: &[Mount],
    remote: &[RemoteMount],
    watch_only: bool,
) -> Result<Vec<Swap>, NoRemoteVolume> {
    let mut swaps = Vec::new();
    for e in uses {
        let Some(volume) = e.source.clone() else {
            continue;
        };
        let found = remote
            .iter()
            .position(|r| r.path.trim_end_matches('/') == e.target.trim_end_matches('/'));
        let policy = policy_of(mounts, &volume);
        let read_only_asked = match policy {
            Some((_, m)) if m.policy == Some(MountPolicy::Local) => continue,
            Some((index, m)) if m.policy.is_some() => {
                if found.is_none() {
                    let paths: Vec<&str> = remote.iter().map(|r| r.path.as_str()).collect();
                    return Err(NoRemoteVolume {
                        index,
                        policy: m.policy.map_or("", MountPolicy::word),
                        volume,
                        target: e.target.clone(),
                        remote: if paths.is_empty() {
                            "none".into()
                        } else {
                            paths.join(", ")
                        },
                    });
                }
                m.policy == Some(MountPolicy::RemoteReadOnly)
            }
            // No policy: remote where the workload mounts the same path.
            _ => false,
        };
        let Some(i) = found else { continue };
        swaps.push(Swap {
            volume,
            target: e.target.clone(),
            remote: i,
            read_only: read_only_asked || remote[i].read_only || watch_only || e.read_only,
        });
    }
    Ok(swaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Value {
        yaml_serde::from_str(
            r"
services:
  web:
    volumes:
      - data:/data
      - cfg:/etc/cfg:ro
      - ./src:/app
      - /cache
      - {type: volume, source: logs, target: /var/log/app}
      - {type: volume, source: keep, target: /keep, read_only: true}
volumes: {data: {}, cfg: {}, logs: {}, keep: {}}
",
        )
        .unwrap()
    }

    fn mount(m: &str) -> Vec<Mount> {
        let y = format!("x-tele:\n  mounts: {m}\nservices: {{}}\nvolumes: {{data: {{}}, cfg: {{}}, logs: {{}}, keep: {{}}}}\n");
        let p = crate::project::Project {
            name: "dev".into(),
            dir: "/d".into(),
            files: vec!["/d/compose.yaml".into()],
            tree: yaml_serde::from_str(&y).unwrap(),
            tele_origin: Default::default(),
            unset: Default::default(),
        };
        crate::xtele::Tele::read(&p).unwrap().mounts
    }

    fn remote(paths: &[(&str, bool)]) -> Vec<RemoteMount> {
        paths
            .iter()
            .map(|(p, ro)| RemoteMount {
                path: (*p).to_string(),
                read_only: *ro,
            })
            .collect()
    }

    #[test]
    fn entries_short_and_long() {
        let uses = named_volumes(&tree(), "web");
        let names: Vec<_> = uses.iter().filter_map(|e| e.source.clone()).collect();
        assert_eq!(names, ["data", "cfg", "logs", "keep"]);
        assert!(uses[1].read_only && uses[3].read_only && !uses[0].read_only);
        assert_eq!(uses[2].target, "/var/log/app");
        assert_eq!(entry(&Value::String("/cache".into())).unwrap().source, None);
        assert!(named_volumes(&tree(), "nope").is_empty());
    }

    #[test]
    fn without_policy_the_workload_decides() {
        let uses = named_volumes(&tree(), "web");
        let r = remote(&[("/data/", false), ("/etc/cfg", true), ("/other", false)]);
        let swaps = decide(&uses, &[], &r, false).unwrap();
        assert_eq!(
            swaps,
            vec![
                Swap {
                    volume: "data".into(),
                    target: "/data".into(),
                    remote: 0,
                    read_only: false
                },
                Swap {
                    volume: "cfg".into(),
                    target: "/etc/cfg".into(),
                    remote: 1,
                    read_only: true
                }
            ]
        );
        // A wiretap only watches.
        assert!(decide(&uses, &[], &r, true)
            .unwrap()
            .iter()
            .all(|s| s.read_only));
    }

    #[test]
    fn policies_local_remote_and_read_only() {
        let uses = named_volumes(&tree(), "web");
        let r = remote(&[
            ("/data", false),
            ("/etc/cfg", false),
            ("/var/log/app", false),
        ]);
        let m = mount(
            "[{volume: data, policy: local}, {volumePattern: 'c.*|l.*', policy: remoteReadOnly}]",
        );
        let swaps = decide(&uses, &m, &r, false).unwrap();
        let got: Vec<(&str, bool)> = swaps
            .iter()
            .map(|s| (s.volume.as_str(), s.read_only))
            .collect();
        assert_eq!(got, [("cfg", true), ("logs", true)]);
        // The first matching entry wins; an entry without policy leaves it to the workload.
        let m = mount("[{volume: logs}, {volumePattern: '.*', policy: local}]");
        let got: Vec<String> = decide(&uses, &m, &r, false)
            .unwrap()
            .into_iter()
            .map(|s| s.volume)
            .collect();
        assert_eq!(got, ["logs"]);
    }

    #[test]
    fn remote_policy_needs_a_remote_volume_there() {
        let uses = named_volumes(&tree(), "web");
        let m = mount("[{volume: keep, policy: remote}]");
        let e = decide(&uses, &m, &remote(&[("/data", false)]), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x-tele.mounts.0: policy remote for volume \"keep\", which this service mounts at /keep, but the workload mounts nothing there (its volumes: /data); mount the volume where the workload does, or use policy: local"
        );
        assert!(decide(&uses, &m, &[], false)
            .unwrap_err()
            .to_string()
            .contains("(its volumes: none)"));
    }
}
