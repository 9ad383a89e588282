//! Reading a compose project the way compose reads it: which files (`-f`, `COMPOSE_FILE`, or the
//! default names and their override file), the project directory, the variables (`.env` or
//! `--env-file`, the process environment winning), interpolation of each file, merging, the
//! project name, and profiles (services of inactive profiles are dropped).

use crate::interpolate::interpolate_tree;
use crate::merge::merge_files;
use crate::model::{key_text, scalar_text};
use crate::ComposeError;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use yaml_serde::Value;

/// Default file names, in the order compose looks for them.
pub const DEFAULT_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];
/// Override files read after a default file.
pub const OVERRIDE_FILES: [&str; 4] = [
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
];

/// The compose flags that decide what the project is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `-f/--file`, in order.
    pub files: Vec<PathBuf>,
    /// `-p/--project-name`.
    pub project_name: Option<String>,
    /// `--project-directory`.
    pub project_directory: Option<PathBuf>,
    /// `--env-file`, in order.
    pub env_files: Vec<PathBuf>,
    /// `--profile`, in order.
    pub profiles: Vec<String>,
}

/// A project read, interpolated and merged.
#[derive(Debug, Clone)]
pub struct Project {
    /// The project name.
    pub name: String,
    /// The project directory (relative paths of the files resolve from here).
    pub dir: PathBuf,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// The merged tree (services of inactive profiles removed).
    pub tree: Value,
    /// The file that last set each service's `x-tele` (key `""`: the top-level `x-tele`).
    pub tele_origin: BTreeMap<String, PathBuf>,
    /// Variables used without a value (compose warns about them).
    pub unset: BTreeSet<String>,
}

/// Reads the project `opts` describe, from working directory `cwd`, with the process
/// environment `env`.
pub fn load(
    opts: &Options,
    cwd: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Project, ComposeError> {
    let files = find_files(opts, cwd, env)?;
    let dir = match &opts.project_directory {
        Some(d) => cwd.join(d),
        None => files[0]
            .parent()
            .map_or(cwd.to_path_buf(), Path::to_path_buf),
    };
    let vars = variables(opts, &dir, cwd, env)?;
    let lookup = |k: &str| vars.get(k).cloned();
    let mut tree = Value::Null;
    let mut tele_origin = BTreeMap::new();
    let mut unset = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| ComposeError::Read {
            file: f.clone(),
            error: e.to_string(),
        })?;
        let mut v: Value = yaml_serde::from_str(&text).map_err(|e| ComposeError::Yaml {
            file: f.clone(),
            error: e.to_string(),
        })?;
        if !v.is_mapping() {
            return Err(ComposeError::Yaml {
                file: f.clone(),
                error: "the top level must be a mapping (services:, networks:, …)".into(),
            });
        }
        interpolate_tree(&mut v, &lookup, &mut unset).map_err(|(path, error)| {
            ComposeError::Interpolate {
                file: f.clone(),
                path,
                error,
            }
        })?;
        note_tele_origin(&v, f, &mut tele_origin);
        merge_files(&mut tree, v);
    }
    let active = active_profiles(opts, &vars);
    apply_profiles(&mut tree, &active);
    let name = project_name(opts, &vars, &tree, &dir);
    Ok(Project {
        name,
        dir,
        files,
        tree,
        tele_origin,
        unset,
    })
}

/// The files to read: `-f`, else `COMPOSE_FILE`, else the first default name found in `cwd` or
/// a parent directory, with its override file.
fn find_files(
    opts: &Options,
    cwd: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Vec<PathBuf>, ComposeError> {
    if !opts.files.is_empty() {
        return Ok(opts.files.iter().map(|f| cwd.join(f)).collect());
    }
    if let Some(list) = env.get("COMPOSE_FILE").filter(|s| !s.is_empty()) {
        let sep = env
            .get("COMPOSE_PATH_SEPARATOR")
            .cloned()
            .unwrap_or_else(|| ":".into());
        return Ok(list.split(sep.as_str()).map(|f| cwd.join(f)).collect());
    }
    let start = opts
        .project_directory
        .as_ref()
        .map_or(cwd.to_path_buf(), |d| cwd.join(d));
    for dir in start.ancestors() {
        if let Some(f) = DEFAULT_FILES
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
        {
            let mut files = vec![f];
            if let Some(o) = OVERRIDE_FILES
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
            {
                files.push(o);
            }
            return Ok(files);
        }
    }
    Err(ComposeError::NoFile {
        dir: start,
        names: DEFAULT_FILES.join(", "),
    })
}

/// The variables for interpolation: the env files (`--env-file`, else `<project dir>/.env`),
/// overridden by the process environment.
fn variables(
    opts: &Options,
    dir: &Path,
    cwd: &Path,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut vars = BTreeMap::new();
    let files: Vec<PathBuf> = if opts.env_files.is_empty() {
        let dot = dir.join(".env");
        if dot.is_file() {
            vec![dot]
        } else {
            Vec::new()
        }
    } else {
        opts.env_files.iter().map(|f| cwd.join(f)).collect()
    };
    for f in files {
        let iter = dotenvy::from_path_iter(&f).map_err(|e| ComposeError::Read {
            file: f.clone(),
            error: e.to_string(),
        })?;
        for item in iter {
            let (k, v) = item.map_err(|e| ComposeError::Read {
                file: f.clone(),
                error: e.to_string(),
            })?;
            vars.insert(k, v);
        }
    }
    vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(vars)
}

fn note_tele_origin(file_tree: &Value, file: &Path, origin: &mut BTreeMap<String, PathBuf>) {
    if file_tree.get("x-tele").is_some() {
        origin.insert(String::new(), file.to_path_buf());
    }
    if let Some(services) = crate::model::services(file_tree) {
        for (name, svc) in services {
            if svc.get("x-tele").is_some() {
                origin.insert(key_text(name), file.to_path_buf());
            }
        }
    }
}

fn active_profiles(opts: &Options, vars: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut active: BTreeSet<String> = opts.profiles.iter().cloned().collect();
    if let Some(p) = vars.get("COMPOSE_PROFILES") {
        active.extend(
            p.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    active
}

/// Drops the services whose `profiles:` are all inactive, and the `profiles:` key of the others
/// (the rewritten file is read without `--profile`).
fn apply_profiles(tree: &mut Value, active: &BTreeSet<String>) {
    let Some(services) = tree.get_mut("services").and_then(Value::as_mapping_mut) else {
        return;
    };
    services.retain(|_, svc| {
        let profiles: Vec<String> = svc
            .get("profiles")
            .and_then(Value::as_sequence)
            .map(|s| s.iter().filter_map(scalar_text).collect())
            .unwrap_or_default();
        profiles.is_empty() || profiles.iter().any(|p| active.contains(p) || p == "*")
    });
    for svc in services.values_mut() {
        if let Some(m) = svc.as_mapping_mut() {
            m.remove("profiles");
        }
    }
}

/// `-p`, else `COMPOSE_PROJECT_NAME`, else the top-level `name:`, else the project directory's
/// name; lower-cased, keeping letters, digits, `-` and `_`.
fn project_name(
    opts: &Options,
    vars: &BTreeMap<String, String>,
    tree: &Value,
    dir: &Path,
) -> String {
    let raw = opts
        .project_name
        .clone()
        .or_else(|| vars.get("COMPOSE_PROJECT_NAME").cloned())
        .filter(|s| !s.is_empty())
        .or_else(|| tree.get("name").and_then(scalar_text))
        .unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "default".into())
        });
    normalize_name(&raw)
}

/// A project name as compose normalizes it.
pub fn normalize_name(raw: &str) -> String {
    raw.to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "compose-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn two_files_env_file_and_process_env() {
        let d = tmp().join("My.Dev");
        std::fs::create_dir_all(&d).unwrap();
        write(&d, ".env", "TAG=from-dotenv\nPORT=8080\n");
        write(
            &d,
            "base.yaml",
            "services:\n  web:\n    image: web:${TAG}\n    x-tele: {type: intercept, ports: ['${PORT}:8080']}\n",
        );
        write(
            &d,
            "dev.yaml",
            "services:\n  web:\n    environment: {MODE: '${MODE:-dev}'}\n  dbg:\n    image: d\n    profiles: [debug]\n",
        );
        let opts = Options {
            files: vec!["base.yaml".into(), "dev.yaml".into()],
            ..Default::default()
        };
        let env = BTreeMap::from([("TAG".to_string(), "from-env".to_string())]);
        let p = load(&opts, &d, &env).unwrap();
        assert_eq!(p.name, "mydev");
        let web = &p.tree["services"]["web"];
        assert_eq!(web["image"], Value::String("web:from-env".into()));
        assert_eq!(web["environment"]["MODE"], Value::String("dev".into()));
        assert_eq!(web["x-tele"]["ports"][0], Value::String("8080:8080".into()));
        assert_eq!(p.tele_origin["web"], d.join("base.yaml"));
        assert!(p.tree["services"].get("dbg").is_none(), "inactive profile");
        let with_profile = Options {
            profiles: vec!["debug".into()],
            project_name: Some("x".into()),
            ..opts
        };
        let p = load(&with_profile, &d, &env).unwrap();
        assert_eq!(p.name, "x");
        assert!(p.tree["services"]["dbg"].get("profiles").is_none());
    }

    #[test]
    fn default_file_override_and_errors() {
        let d = tmp();
        assert!(matches!(
            load(&Options::default(), &d, &BTreeMap::new()),
            Err(ComposeError::NoFile { .. })
        ));
        write(
            &d,
            "compose.yaml",
            "services:\n  a: {image: '${IMG:?set IMG}'}\n",
        );
        let e = load(&Options::default(), &d, &BTreeMap::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("compose.yaml: services.a.image: required variable IMG"),
            "{e}"
        );
        write(
            &d,
            "compose.override.yaml",
            "services:\n  a: {command: [x]}\n",
        );
        let env = BTreeMap::from([("IMG".to_string(), "i".to_string())]);
        let p = load(&Options::default(), &d, &env).unwrap();
        assert_eq!(p.files.len(), 2);
        assert_eq!(
            p.tree["services"]["a"]["command"][0],
            Value::String("x".into())
        );
    }
}
