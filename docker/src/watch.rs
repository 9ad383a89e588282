//! Keeps agents attached through the life of their workloads. The engine's event stream says
//! when a workload container of the namespace starts (restarted with the same id, or recreated
//! by compose with a new one), dies or is destroyed, and when an agent container dies; each
//! such event bumps the provider's change counter ([`manager::provider::Provider::changes`]),
//! which the manager answers by re-attaching the agent of every intercepted workload
//! (manager/src/reattach.rs, through `ensure_agent`). Also owns the check `ensure_agent`
//! applies to an agent it would keep: one that started before its target's latest start sits in
//! the target's old network namespace, reaches nothing, and is replaced ([`is_stale`]).

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{EventsOptions, InspectContainerOptions};
use bollard::Docker;
use compose::PROJECT_LABEL;
use futures::StreamExt;
use tokio::sync::watch;

use crate::provider::{DEFAULT_NAMESPACE, NAMESPACE_LABEL, ROLE_AGENT, ROLE_LABEL};

/// Pause before subscribing again when the event stream broke.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// Whether a container event matters to the agents of `namespace`: a workload container of it
/// started, died or went away, or one of its agents died.
pub fn relevant(namespace: &str, action: &str, attrs: &HashMap<String, String>) -> bool {
    let get = |k: &str| attrs.get(k).map(String::as_str);
    match get(ROLE_LABEL) {
        Some(ROLE_AGENT) => action == "die" && get(NAMESPACE_LABEL) == Some(namespace),
        Some(_) => false, // our other containers are never workloads
        None => {
            matches!(action, "start" | "die" | "destroy")
                && match get(PROJECT_LABEL) {
                    Some(project) => project == namespace,
                    None => namespace == DEFAULT_NAMESPACE,
                }
        }
    }
}

/// Follows the engine's container events until the process ends, bumping `changes` for each
/// one that is [`relevant`] to `namespace` (and once after every resubscription, for what
/// happened while the stream was down).
pub async fn watch_engine(docker: Docker, namespace: String, changes: watch::Sender<u64>) {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        (
            "event".to_string(),
            vec!["start".into(), "die".into(), "destroy".into()],
        ),
    ]);
    let mut first = true;
    loop {
        let opts = EventsOptions {
            filters: Some(filters.clone()),
            ..Default::default()
        };
        let mut events = docker.events(Some(opts));
        if !first {
            changes.send_modify(|n| *n += 1);
        }
        first = false;
        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!("engine event stream: {e}");
                    break;
                }
            };
            let action = ev.action.unwrap_or_default();
            let actor = ev.actor.unwrap_or_default();
            let attrs = actor.attributes.unwrap_or_default();
            if relevant(&namespace, &action, &attrs) {
                tracing::debug!(container = ?actor.id, %action, "workload or agent changed");
                changes.send_modify(|n| *n += 1);
            }
        }
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

/// A container's `StartedAt` as a comparable key: (date-time, nanoseconds). The engine writes
/// RFC 3339 with trailing zeros of the fraction trimmed, so the text itself does not sort.
fn started_key(started_at: &str) -> Option<(String, u32)> {
    let s = started_at.strip_suffix('Z')?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = format!("{frac:0<9}").parse().ok()?;
    Some((secs.to_string(), nanos))
}

/// Whether `target` started after `agent` did: the agent then holds the network namespace of
/// the target's previous run. Unknown (either inspect fails): not stale.
pub async fn is_stale(docker: &Docker, agent: &str, target: &str) -> bool {
    let started = |id: String| async move {
        docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.started_at)
            .and_then(|t| started_key(&t))
    };
    match (
        started(agent.to_string()).await,
        started(target.to_string()).await,
    ) {
        (Some(a), Some(t)) => t > a,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn workload_and_agent_events_of_the_namespace_matter() {
        let web = attrs(&[(PROJECT_LABEL, "shop"), ("name", "shop_web_1")]);
        for action in ["start", "die", "destroy"] {
            assert!(relevant("shop", action, &web), "{action}");
        }
        assert!(!relevant("shop", "pause", &web));
        assert!(!relevant("other", "start", &web));
        let agent = attrs(&[(ROLE_LABEL, ROLE_AGENT), (NAMESPACE_LABEL, "shop")]);
        assert!(relevant("shop", "die", &agent));
        assert!(
            !relevant("shop", "start", &agent),
            "we started it ourselves"
        );
        assert!(!relevant("other", "die", &agent));
        let daemon = attrs(&[(ROLE_LABEL, "daemon"), (PROJECT_LABEL, "shop")]);
        assert!(!relevant("shop", "die", &daemon));
        let standalone = attrs(&[("name", "web")]);
        assert!(relevant(DEFAULT_NAMESPACE, "start", &standalone));
        assert!(!relevant("shop", "start", &standalone));
    }

    #[test]
    fn start_times_compare_by_value_not_text() {
        let a = started_key("2026-12-04T20:00:00.1Z").unwrap();
        let b = started_key("2026-12-04T20:00:00.12Z").unwrap();
        assert!(b > a, "0.12 s is later than 0.1 s");
        assert!(started_key("2026-12-04T20:00:01Z").unwrap() > b);
        assert_eq!(started_key("2026-12-04T20:00:00.000000001Z").unwrap().1, 1);
        assert_eq!(started_key("0001-01-01T00:00:00Z").unwrap().1, 0);
        assert!(started_key("garbage").is_none());
        assert!(started_key("2026-12-04T20:00:00.1234567890Z").is_none());
    }
}
