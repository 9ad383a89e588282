//! Running the real compose tool (`compose::compose_command()`: the v2 plugin or v1
//! `docker-compose`) on a project: always with `-p <project> --project-directory <dir> -f
//! <file>`, where the file is the rewritten project when it is up and the project without its
//! `x-tele` otherwise; in the foreground with Ctrl-C forwarded once; `config`; and the
//! subcommands passed through as they are.

use super::state::{rewritten_path, State};
use super::{state_dir, Invocation};
use anyhow::{anyhow, Context, Result};
use compose::project::Project;
use std::path::{Path, PathBuf};

/// `<compose> -p <project> --project-directory <dir> -f <file> <sub> <args…>`.
pub fn command(
    project: &str,
    dir: &Path,
    file: &Path,
    sub: &str,
    args: &[String],
) -> Result<tokio::process::Command> {
    let tool = compose::compose_command().ok_or_else(|| {
        anyhow!("neither `docker compose` nor `docker-compose` is installed; install one of them")
    })?;
    let mut c = tokio::process::Command::new(&tool[0]);
    c.args(&tool[1..])
        .arg("-p")
        .arg(project)
        .arg("--project-directory")
        .arg(dir)
        .arg("-f")
        .arg(file)
        .arg(sub)
        .args(args);
    Ok(c)
}

/// Runs the tool attached to this terminal; its exit code.
pub async fn run(mut c: tokio::process::Command) -> Result<i32> {
    let status = c.status().await.context("running the compose tool")?;
    Ok(status.code().unwrap_or(1))
}

/// Runs the tool in its own process group, forwarding SIGINT and SIGTERM to it once, so that
/// a Ctrl-C reaches it exactly once and this process lives on to end the engagements.
pub async fn run_foreground(mut c: tokio::process::Command) -> Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    c.process_group(0);
    let mut child = c.spawn().context("running the compose tool")?;
    let pid = child.id();
    loop {
        tokio::select! {
            s = child.wait() => return Ok(s?.code().unwrap_or(1)),
            _ = int.recv() => signal_child(pid, libc::SIGINT),
            _ = term.recv() => signal_child(pid, libc::SIGINT),
        }
    }
}

#[allow(unsafe_code)]
fn signal_child(pid: Option<u32>, sig: i32) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) takes plain integers; `pid` is our own child, the compose tool.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// The file the tool reads for `project`: the rewritten one when the project is up, else the
/// project without its `x-tele` (written beside the state files).
pub fn project_file(project: &Project) -> Result<PathBuf> {
    let dir = state_dir();
    if State::load(&dir, &project.name).is_some() {
        return Ok(rewritten_path(&dir, &project.name));
    }
    let plain = compose::rewrite::rewrite(&project.tree, &Default::default());
    std::fs::create_dir_all(&dir).context("creating the compose state directory")?;
    let path = dir.join(format!("{}.plain.yaml", project.name));
    std::fs::write(&path, compose::model::to_compose_yaml(&plain))?;
    Ok(path)
}

/// `config`: the rewritten project when it is up, else the project as read (canonical YAML).
pub fn config(_inv: &Invocation, project: &Project) -> Result<i32> {
    let dir = state_dir();
    let text = if State::load(&dir, &project.name).is_some() {
        std::fs::read_to_string(rewritten_path(&dir, &project.name))?
    } else {
        compose::model::to_compose_yaml(&project.tree)
    };
    print!("{text}");
    Ok(0)
}

/// Any other subcommand: the tool on the project's file.
pub async fn pass_through(inv: &Invocation, project: &Project) -> Result<i32> {
    let file = project_file(project)?;
    run(command(
        &project.name,
        &project.dir,
        &file,
        &inv.subcommand,
        &inv.args,
    )?)
    .await
}
