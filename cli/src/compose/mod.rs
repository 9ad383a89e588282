//! `telepresence compose [compose flags] <subcommand> [args…]`: reads the project as compose
//! does (`compose/` crate), brings the `x-tele` services into their engaged state
//! (`engage.rs`: connections and engagements; `network.rs`: the daemon on the project's
//! networks), runs the real compose tool on the rewritten project (`tool.rs`), and takes it all
//! down again (`teardown.rs`). What a project started is recorded (`state.rs`) so that `down`,
//! a failing `up` and `telepresence quit` undo exactly that. `forward.rs` is the forwarder a
//! `proxy` service becomes.

pub mod engage;
pub mod forward;
pub mod network;
pub mod state;
pub mod teardown;
pub mod tool;

use anyhow::{anyhow, bail, Context, Result};
use compose::project::{Options, Project};
use compose::xtele::Tele;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The compose command line, split: the flags that decide the project, the subcommand and
/// its arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `-f`, `-p`, `--project-directory`, `--env-file`, `--profile`.
    pub options: Options,
    /// The compose subcommand (`up`, `down`, `ps`, …).
    pub subcommand: String,
    /// Its arguments, passed on as they are.
    pub args: Vec<String>,
}

/// Splits `telepresence compose` arguments.
pub fn parse(argv: &[String]) -> Result<Invocation> {
    let mut inv = Invocation::default();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| anyhow!("compose flag {name} needs a value"))
        };
        match flag {
            "-f" | "--file" => inv.options.files.push(value(flag)?.into()),
            "-p" | "--project-name" => inv.options.project_name = Some(value(flag)?),
            "--project-directory" => {
                inv.options.project_directory = Some(value(flag)?.into());
            }
            "--env-file" => inv.options.env_files.push(value(flag)?.into()),
            "--profile" => inv.options.profiles.push(value(flag)?),
            f if f.starts_with('-') => bail!(
                "compose flag {f} is not supported before the subcommand; telepresence compose takes -f, -p, --project-directory, --env-file and --profile there"
            ),
            sub => {
                inv.subcommand = sub.to_string();
                inv.args = it.cloned().collect();
                break;
            }
        }
    }
    if inv.subcommand.is_empty() {
        bail!("say what to run: telepresence compose [-f FILE] up|down|config|ps|logs|… [args]");
    }
    Ok(inv)
}

/// Reads the project and its `x-tele` from the current directory and environment.
pub fn load(options: &Options) -> Result<(Project, Tele)> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let project = compose::project::load(options, &cwd, &env)?;
    for var in &project.unset {
        eprintln!("warning: the {var:?} variable is not set; defaulting to a blank string");
    }
    let tele = Tele::read(&project)?;
    Ok((project, tele))
}

/// Runs `telepresence compose ARGS`; returns the exit code (the compose tool's where it ran).
pub async fn run(argv: &[String]) -> i32 {
    match run_inner(argv).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("telepresence compose: error: {e:#}");
            1
        }
    }
}

async fn run_inner(argv: &[String]) -> Result<i32> {
    let inv = parse(argv)?;
    let (project, tele) = load(&inv.options)?;
    match inv.subcommand.as_str() {
        "up" | "create" => engage::up(&inv, &project, &tele).await,
        "down" => teardown::down(&inv, &project).await,
        "stop" => teardown::stop(&inv, &project).await,
        "config" => tool::config(&inv, &project),
        _ => tool::pass_through(&inv, &project).await,
    }
}

/// Where the rewritten files and the state of project `name` are kept.
pub fn state_dir() -> PathBuf {
    crate::info::cache_dir().join("compose")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn flags_before_the_subcommand_are_ours() {
        let inv = parse(&argv(
            "-f a.yaml --file=b.yaml -p dev --env-file e --profile debug up -d --build",
        ))
        .unwrap();
        assert_eq!(
            inv.options.files,
            vec![PathBuf::from("a.yaml"), PathBuf::from("b.yaml")]
        );
        assert_eq!(inv.options.project_name.as_deref(), Some("dev"));
        assert_eq!(inv.options.profiles, vec!["debug"]);
        assert_eq!(inv.subcommand, "up");
        assert_eq!(inv.args, argv("-d --build"));
        assert!(parse(&argv("-f")).is_err());
        assert!(parse(&argv("--verbose up"))
            .unwrap_err()
            .to_string()
            .contains("--verbose"));
        assert!(parse(&argv("-f x.yaml")).is_err());
    }
}
