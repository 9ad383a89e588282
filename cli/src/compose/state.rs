//! What `telepresence compose up` started for a project, recorded as it goes in
//! `~/.cache/telepresence/compose/<project>.json` beside the rewritten file
//! (`<project>.yaml`): the connections (and whether this project started them), the
//! engagements, the networks the daemons were attached to, and the remote volumes. `down`, a failing `up` and
//! `telepresence quit` undo exactly what is recorded.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A connection a project uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionState {
    /// The connection name.
    pub name: String,
    /// Whether this project started it (then `down` quits it).
    pub started: bool,
}

/// An engagement a project created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngagementState {
    /// The connection it belongs to.
    pub connection: String,
    /// Its name at the traffic-manager.
    pub name: String,
    /// The compose service it is for.
    pub service: String,
}

/// The remote volumes (engine volumes and their sync container) of one engagement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    /// The connection.
    pub connection: String,
    /// The engagement.
    pub engagement: String,
}

/// A daemon container attached to a project network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The daemon container.
    pub container: String,
    /// The network.
    pub network: String,
    /// Whether this project created the network (compose then owns it, but a failed `up` must
    /// remove it).
    pub created: bool,
}

/// Everything a project started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The compose project.
    pub project: String,
    /// Its project directory.
    pub dir: PathBuf,
    /// Connections, in the order they were made.
    pub connections: Vec<ConnectionState>,
    /// Engagements still in place.
    pub engagements: Vec<EngagementState>,
    /// Daemon attachments.
    pub attachments: Vec<Attachment>,
    /// Remote volumes, removed after the compose tool's `down` (its containers use them).
    #[serde(default)]
    pub volumes: Vec<VolumeState>,
}

fn json_path(dir: &Path, project: &str) -> PathBuf {
    dir.join(format!("{project}.json"))
}

/// The rewritten compose file of `project`.
pub fn rewritten_path(dir: &Path, project: &str) -> PathBuf {
    dir.join(format!("{project}.yaml"))
}

impl State {
    /// A new, empty state of `project`.
    pub fn new(project: &str, dir: &Path) -> State {
        State {
            project: project.to_string(),
            dir: dir.to_path_buf(),
            ..Default::default()
        }
    }

    /// The recorded state of `project`, if it is up.
    pub fn load(dir: &Path, project: &str) -> Option<State> {
        let bytes = std::fs::read(json_path(dir, project)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every recorded project.
    pub fn all(dir: &Path) -> Vec<State> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    /// Writes the state (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).context("creating the compose state directory")?;
        let tmp = dir.join(format!(".{}.json", self.project));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, json_path(dir, &self.project))?;
        Ok(())
    }

    /// Forgets the project: its state and rewritten file.
    pub fn remove(dir: &Path, project: &str) {
        let _ = std::fs::remove_file(json_path(dir, project));
        let _ = std::fs::remove_file(rewritten_path(dir, project));
    }

    /// Whether the project uses connection `name`.
    pub fn uses(&self, name: &str) -> bool {
        self.connections.iter().any(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_listing() {
        let dir = std::env::temp_dir().join(format!("tp-compose-state-{}", std::process::id()));
        let mut s = State::new("dev", Path::new("/src/dev"));
        s.connections.push(ConnectionState {
            name: "shop".into(),
            started: true,
        });
        s.save(&dir).unwrap();
        assert_eq!(State::load(&dir, "dev"), Some(s.clone()));
        assert!(State::all(&dir)[0].uses("shop"));
        State::remove(&dir, "dev");
        assert_eq!(State::load(&dir, "dev"), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
