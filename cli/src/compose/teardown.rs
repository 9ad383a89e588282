//! Taking a project down: `down` (engagements ended, daemons detached from the project
//! networks, the compose tool's `down`, networks and remote volumes created here removed, the
//! connections this project started quit, the state forgotten), `stop` (engagements ended,
//! connections kept), the undo of a failing `up`, and `telepresence quit` bringing down the
//! projects that use a connection first.

use super::state::{rewritten_path, State};
use super::{state_dir, tool, Invocation};
use crate::rpc::connector;
use anyhow::Result;
use compose::project::Project;
use protocol::connector::LeaveRequest;
use std::path::Path;

/// `down`.
pub async fn down(inv: &Invocation, project: &Project) -> Result<i32> {
    let dir = state_dir();
    let Some(state) = State::load(&dir, &project.name) else {
        return tool::pass_through(inv, project).await;
    };
    let docker = docker::engine::connect().await?;
    let code = undo_with(&docker, &state, Some((&project.dir, &inv.args))).await?;
    super::engage::progress(&format!("project {} down", project.name));
    Ok(code)
}

/// `stop`: the engagements end, the containers stop, the connections stay.
pub async fn stop(inv: &Invocation, project: &Project) -> Result<i32> {
    if let Some(mut state) = State::load(&state_dir(), &project.name) {
        end_engagements(&mut state).await?;
    }
    tool::pass_through(inv, project).await
}

/// Ends every recorded engagement (their connections stay) and stops the file sync of its
/// remote volumes (the volumes stay until `down`: the stopped containers still mount them);
/// records that.
pub async fn end_engagements(state: &mut State) -> Result<()> {
    let docker = docker::engine::connect().await?;
    let live = crate::commands::live_daemons(&docker).await;
    for e in std::mem::take(&mut state.engagements) {
        if let Some(d) = live.iter().find(|d| d.name == e.connection) {
            if let Ok(mut c) = connector(d.port).await {
                let _ = c
                    .remove_intercept(LeaveRequest {
                        name: e.name.clone(),
                    })
                    .await;
            }
        }
        if state
            .volumes
            .iter()
            .any(|v| v.connection == e.connection && v.engagement == e.name)
        {
            crate::mounts::stop_sync(&docker, &e.connection, Some(&e.name)).await?;
        }
        super::engage::progress(&format!("ended the engagement of {}", e.service));
    }
    state.save(&state_dir())
}

/// Undoes everything `state` records; with `compose_dir`, runs the compose tool's `down` on
/// the rewritten file first (from that project directory).
pub async fn undo(
    docker: &bollard::Docker,
    state: &State,
    compose_dir: Option<&Path>,
) -> Result<()> {
    undo_with(docker, state, compose_dir.map(|d| (d, &[][..]))).await?;
    Ok(())
}

/// [`undo`], with the arguments of the compose `down`; returns its exit code (0 without one).
async fn undo_with(
    docker: &bollard::Docker,
    state: &State,
    compose: Option<(&Path, &[String])>,
) -> Result<i32> {
    let mut state = state.clone();
    end_engagements(&mut state).await?;
    super::network::detach(docker, &state, false).await?;
    let dir = state_dir();
    let file = rewritten_path(&dir, &state.project);
    let mut code = 0;
    if let (Some((project_dir, args)), true) = (compose, file.exists()) {
        let cmd = tool::command(&state.project, project_dir, &file, "down", args)?;
        code = tool::run(cmd).await?;
    }
    // Networks this project created and compose did not remove (it never ran, or failed).
    super::network::detach(docker, &state, true).await?;
    // Remote volumes, now that no container of the project uses them.
    for v in &state.volumes {
        crate::mounts::remove(docker, &v.connection, Some(&v.engagement)).await?;
    }
    let live = crate::commands::live_daemons(docker).await;
    for c in state.connections.iter().filter(|c| c.started) {
        if let Some(d) = live.iter().find(|d| d.name == c.name) {
            crate::commands::disconnect(docker, d).await?;
            super::engage::progress(&format!("connection {} quit", c.name));
        }
    }
    State::remove(&dir, &state.project);
    Ok(code)
}

/// Brings down (compose `down` included) every project that uses connection `name`, or every
/// project when `None`; `telepresence quit` calls this before it ends a connection.
pub async fn down_projects_using(docker: &bollard::Docker, name: Option<&str>) -> Result<()> {
    for state in State::all(&state_dir()) {
        if name.is_none_or(|n| state.uses(n)) {
            let dir = state.dir.clone();
            undo(docker, &state, Some(&dir)).await?;
            super::engage::progress(&format!("project {} down", state.project));
        }
    }
    Ok(())
}
