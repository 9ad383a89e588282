//! Why an agent has not arrived, from the state of the workload's pods: none exist, a container
//! waits (image pull, crash loop, bad config), a pod cannot be scheduled, pods still run
//! without the agent (rollout in progress or webhook not reached), or the agent runs but has
//! not connected. Used in the message of an intercept that timed out.

use k8s_openapi::api::core::v1::Pod;
use std::sync::Arc;

use super::patch::has_agent;
use super::AGENT_CONTAINER;

/// Waiting reasons that are just progress, not a problem.
const NORMAL_WAITING: &[&str] = &["ContainerCreating", "PodInitializing"];

/// The first problem the pods of `kind workload` show.
pub fn agent_problem(kind: &str, workload: &str, pods: &[Arc<Pod>]) -> String {
    if pods.is_empty() {
        return format!("{kind} {workload} has no pods (scaled to zero?)");
    }
    for p in pods {
        let name = p.metadata.name.clone().unwrap_or_default();
        let Some(st) = &p.status else { continue };
        for c in st
            .init_container_statuses
            .iter()
            .flatten()
            .chain(st.container_statuses.iter().flatten())
        {
            if let Some(wt) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                let reason = wt.reason.clone().unwrap_or_default();
                if !reason.is_empty() && !NORMAL_WAITING.contains(&reason.as_str()) {
                    return format!(
                        "pod {name}: container {}: {reason}{}",
                        c.name,
                        wt.message
                            .as_ref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        if let Some(c) = st
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        {
            return format!(
                "pod {name} cannot be scheduled: {}",
                c.message.clone().unwrap_or_default()
            );
        }
    }
    if pods.iter().any(|p| !has_agent(p)) {
        return format!(
            "some pods of {workload} still run without the traffic-agent (rollout in progress, or the webhook is not reached: check the manager's logs and the MutatingWebhookConfiguration)"
        );
    }
    format!(
        "the pods of {workload} have the traffic-agent but it has not connected (check `kubectl logs -c {AGENT_CONTAINER}`)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodSpec,
        PodStatus,
    };

    fn pod(containers: &[&str], status: PodStatus) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("web-1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|n| Container {
                        name: n.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            status: Some(status),
        })
    }

    fn waiting(container: &str, reason: &str) -> PodStatus {
        PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: container.into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.into()),
                        message: Some("details".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn says_what_the_pods_show() {
        assert_eq!(
            agent_problem("Deployment", "web", &[]),
            "Deployment web has no pods (scaled to zero?)"
        );
        let both = ["app", AGENT_CONTAINER];
        assert_eq!(
            agent_problem(
                "Deployment",
                "web",
                &[pod(&both, waiting(AGENT_CONTAINER, "ErrImagePull"))]
            ),
            "pod web-1: container traffic-agent: ErrImagePull: details"
        );
        // Creating is progress, not a problem.
        let creating = agent_problem(
            "Deployment",
            "web",
            &[pod(&both, waiting(AGENT_CONTAINER, "ContainerCreating"))],
        );
        assert!(creating.contains("has not connected"), "{creating}");
        let unschedulable = PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                message: Some("0/3 nodes are available: insufficient memory".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            agent_problem("Deployment", "web", &[pod(&both, unschedulable)]),
            "pod web-1 cannot be scheduled: 0/3 nodes are available: insufficient memory"
        );
        let old = agent_problem("Deployment", "web", &[pod(&["app"], PodStatus::default())]);
        assert!(
            old.starts_with("some pods of web still run without the traffic-agent"),
            "{old}"
        );
    }
}
