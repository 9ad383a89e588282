//! `replace` on a Docker engine: the workload's containers are paused (`docker pause`) while a
//! replace engagement holds them, so their processes (request handlers, queue consumers, cron
//! loops) stop, while the containers keep their identity and network namespace, where the agent
//! keeps answering on their ports. They are unpaused when the replace ends and whenever an agent
//! of theirs is removed (`provider.rs` `remove_agent_container`: leave, `uninstall`, `quit -s`).

use bollard::errors::Error as BollardError;
use bollard::Docker;
use manager::provider::ProviderError;

/// Whether an error only says the container already is in the wanted state (409) or is gone.
fn is_settled(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }
    )
}

/// Pauses (`paused = true`) or unpauses one container; idempotent.
pub async fn set_paused(docker: &Docker, id: &str, paused: bool) -> Result<(), ProviderError> {
    let r = if paused {
        docker.pause_container(id).await
    } else {
        docker.unpause_container(id).await
    };
    match r {
        Ok(()) => {
            tracing::info!(container = %id, paused, "replace: container {}", if paused { "paused" } else { "unpaused" });
            Ok(())
        }
        Err(e) if is_settled(&e) => Ok(()),
        Err(e) => Err(ProviderError::Api(format!(
            "{} {id}: {e}",
            if paused { "pause" } else { "unpause" }
        ))),
    }
}

/// Unpauses a container only if it is paused (used before an agent is removed, so a replaced
/// workload never outlives its agent paused).
pub async fn unpause_if_paused(docker: &Docker, id: &str) -> Result<(), ProviderError> {
    let paused = match docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(i) => i.state.and_then(|s| s.paused).unwrap_or(false),
        Err(_) => return Ok(()),
    };
    if paused {
        set_paused(docker, id, false).await
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_and_missing_containers_are_settled() {
        let e = |status_code| BollardError::DockerResponseServerError {
            status_code,
            message: String::new(),
        };
        assert!(is_settled(&e(409)));
        assert!(is_settled(&e(404)));
        assert!(!is_settled(&e(500)));
    }
}
