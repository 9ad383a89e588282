//! `--docker-build CONTEXT` and `--docker-debug CONTEXT` (with `--docker-build-opt KEY=VALUE`):
//! the handler image is built with the `docker build` CLI — its progress shown on stderr — before
//! anything is engaged, and the literal `IMAGE` after `--` is replaced by the built image id;
//! `--docker-debug` adds what a debugger needs to the handler's `docker run`.

use crate::args::InterceptArgs;
use crate::dockerrun::RunArgs;
use crate::engage::HandlerExtras;
use anyhow::{bail, Context, Result};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Stdio;

/// The placeholder after `--` that the built image replaces.
pub const PLACEHOLDER: &str = "IMAGE";

/// What `--docker-debug` adds to the handler's `docker run` (before the user's flags).
pub const DEBUG_RUN_FLAGS: [&str; 6] = [
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "seccomp=unconfined",
    "--cap-add",
    "SYS_PTRACE",
];

/// The `--docker-build-opt` keys, each passed to `docker build` as `--KEY VALUE` (switches
/// `no-cache` and `pull` as `--KEY=VALUE`).
const OPTS: [&str; 10] = [
    "file",
    "target",
    "build-arg",
    "tag",
    "label",
    "network",
    "platform",
    "add-host",
    "no-cache",
    "pull",
];

/// A checked build request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// The build context.
    pub context: PathBuf,
    /// `docker build` flags from `--docker-build-opt`.
    pub flags: Vec<String>,
    /// `--docker-debug`.
    pub debug: bool,
}

/// The build the flags ask for (`None` without `--docker-build`/`--docker-debug`); checks the
/// options and the context before anything runs.
pub fn plan(x: &HandlerExtras) -> Result<Option<Build>> {
    let (context, debug) = match (&x.docker_build, &x.docker_debug) {
        (Some(c), _) => (c.clone(), false),
        (None, Some(c)) => (c.clone(), true),
        (None, None) => {
            if !x.docker_build_opt.is_empty() {
                bail!("--docker-build-opt needs --docker-build CONTEXT or --docker-debug CONTEXT");
            }
            return Ok(None);
        }
    };
    if !context.is_dir() {
        bail!(
            "build context {} is not a directory: give --docker-build the directory that holds the Dockerfile",
            context.display()
        );
    }
    let flags = build_flags(&x.docker_build_opt)?;
    Ok(Some(Build {
        context,
        flags,
        debug,
    }))
}

/// `--docker-build-opt KEY=VALUE` values as `docker build` flags.
fn build_flags(opts: &[String]) -> Result<Vec<String>> {
    let mut flags = Vec::new();
    for o in opts {
        let Some((k, v)) = o.split_once('=') else {
            bail!("--docker-build-opt {o:?} is not KEY=VALUE (e.g. file=Dockerfile.dev)");
        };
        if !OPTS.contains(&k) {
            bail!(
                "--docker-build-opt {k:?} is not supported; use one of {}",
                OPTS.join(", ")
            );
        }
        if k == "no-cache" || k == "pull" {
            flags.push(format!("--{k}={v}"));
        } else {
            flags.extend([format!("--{k}"), v.to_string()]);
        }
    }
    Ok(flags)
}

/// The handler's `docker run` arguments after `--` for a build: `IMAGE` alone when none given;
/// otherwise they must name the image as `IMAGE`.
pub fn run_args(command: &[String]) -> Vec<String> {
    if command.is_empty() {
        vec![PLACEHOLDER.to_string()]
    } else {
        command.to_vec()
    }
}

/// The build `args` ask for; a build implies `--docker-run` (with `-- IMAGE` by default).
pub fn prepare(args: &mut InterceptArgs) -> Result<Option<Build>> {
    let build = plan(&args.extras)?;
    if build.is_some() {
        args.docker_run = true;
        args.command = run_args(&args.command);
    }
    Ok(build)
}

/// Builds the image and puts it in place of `IMAGE` in the handler's `docker run` (with the
/// debug flags for `--docker-debug`).
pub async fn build_into(b: &Build, ra: &mut RunArgs) -> Result<()> {
    if ra.image != PLACEHOLDER {
        bail!(
            "with --docker-build, write IMAGE where the image goes after -- (e.g. -- -e K=V IMAGE serve), not {:?}",
            ra.image
        );
    }
    ra.set_image(&build(b).await?);
    if b.debug {
        ra.add_flags(&DEBUG_RUN_FLAGS);
    }
    Ok(())
}

/// Runs `docker build` (progress on stderr) and returns the built image's id.
pub async fn build(b: &Build) -> Result<String> {
    let iid = std::env::temp_dir().join(format!("tp-build-{}.iid", uuid::Uuid::new_v4()));
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating stderr")?;
    eprintln!("Building the handler image from {}", b.context.display());
    let status = tokio::process::Command::new("docker")
        .arg("build")
        .arg("--iidfile")
        .arg(&iid)
        .args(&b.flags)
        .arg(&b.context)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .status()
        .await
        .context("running `docker build` (is the docker CLI installed?)")?;
    let id = std::fs::read_to_string(&iid).unwrap_or_default();
    let _ = std::fs::remove_file(&iid);
    if !status.success() || id.trim().is_empty() {
        bail!(
            "the handler image did not build (docker build {}); fix the Dockerfile in {} or the --docker-build-opt values as the build output above says",
            status
                .code()
                .map_or("was stopped".to_string(), |c| format!("exited with {c}")),
            b.context.display()
        );
    }
    Ok(id.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extras(build: Option<&str>, debug: Option<&str>, opts: &[&str]) -> HandlerExtras {
        HandlerExtras {
            docker_build: build.map(PathBuf::from),
            docker_debug: debug.map(PathBuf::from),
            docker_build_opt: opts.iter().map(ToString::to_string).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn options_become_build_flags() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().to_str().unwrap();
        let b = plan(&extras(
            Some(ctx),
            None,
            &["file=Dockerfile.dev", "build-arg=A=1", "no-cache=true"],
        ))
        .unwrap()
        .unwrap();
        assert!(!b.debug);
        assert_eq!(
            b.flags,
            [
                "--file",
                "Dockerfile.dev",
                "--build-arg",
                "A=1",
                "--no-cache=true"
            ]
        );
        assert!(plan(&extras(None, Some(ctx), &[])).unwrap().unwrap().debug);
        assert_eq!(plan(&extras(None, None, &[])).unwrap(), None);
    }

    #[test]
    fn bad_options_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().to_str().unwrap();
        let e = plan(&extras(Some(ctx), None, &["squash=true"])).unwrap_err();
        assert!(e.to_string().contains("use one of file, target"), "{e}");
        let e = plan(&extras(Some(ctx), None, &["file"])).unwrap_err();
        assert!(e.to_string().contains("not KEY=VALUE"), "{e}");
        let e = plan(&extras(None, None, &["file=x"])).unwrap_err();
        assert!(e.to_string().contains("needs --docker-build"), "{e}");
        let e = plan(&extras(Some("/nonexistent/ctx"), None, &[])).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        assert_eq!(run_args(&[]), ["IMAGE"]);
    }
}
