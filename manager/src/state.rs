//! The manager's bookkeeping: client and agent sessions with leases, intercepts and their
//! states, and a generation counter that wakes every watcher when anything changes.

use protocol::manager::{AgentInfo, ClientInfo, DialRequest, InterceptInfo};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How long a session lives without `Remain`.
pub const LEASE: Duration = Duration::from_secs(15);

/// A connected client (`ArriveAsClient`) and its lease.
pub struct ClientSession {
    /// What the client said about itself on arrival.
    pub info: ClientInfo,
    /// When the session ends unless the client calls `Remain` (see [`LEASE`]).
    pub expires: Instant,
    /// Where dial requests go; set while the client keeps `WatchDials` open.
    pub dials: Option<mpsc::Sender<DialRequest>>,
    /// Where its outbound streams may go.
    pub scope: crate::auth::OutboundScope,
}

/// A connected traffic-agent (`ArriveAsAgent`) and its lease.
pub struct AgentSession {
    /// What the agent said about itself on arrival.
    pub info: AgentInfo,
    /// When the session ends unless the agent calls `Remain` (see [`LEASE`]).
    pub expires: Instant,
    /// Highest generation whose snapshot has been handed to this agent's watch stream.
    pub sent_generation: u64,
    /// Where file-sync dial requests go; set while the agent keeps `WatchDials` open.
    pub dials: Option<mpsc::Sender<DialRequest>>,
}

/// Everything the manager knows; guarded by one mutex in [`crate::Manager`].
#[derive(Default)]
pub struct State {
    /// Client sessions by session id.
    pub clients: HashMap<String, ClientSession>,
    /// Agent sessions by session id.
    pub agents: HashMap<String, AgentSession>,
    /// Intercepts by id (`<client session uuid>:<name>`: names are unique per client).
    pub intercepts: HashMap<String, InterceptInfo>,
    /// Bumped on every change; watchers wake when it moves.
    pub generation: u64,
    /// What the agents reported about their wiretaps' dropped copies.
    pub wiretap_drops: crate::wiretap::Drops,
}

impl State {
    /// Whether `id` is a live session of `caller`'s kind.
    pub fn holds(&self, caller: crate::auth::Caller, id: &str) -> bool {
        match caller {
            crate::auth::Caller::Client => self.clients.contains_key(id),
            crate::auth::Caller::Agent => self.agents.contains_key(id),
        }
    }

    /// Whether any live agent serves `namespace/workload`.
    pub fn has_agent(&self, namespace: &str, workload: &str) -> bool {
        self.agents
            .values()
            .any(|a| a.info.namespace == namespace && a.info.name == workload)
    }

    /// Recomputes intercept states from the agents present and bumps the generation.
    pub fn changed(&mut self, gen_tx: &watch::Sender<u64>) {
        for ic in self.intercepts.values_mut() {
            let spec = ic.spec.as_ref().expect("intercepts always carry a spec");
            let agent = self
                .agents
                .values()
                .find(|a| a.info.namespace == spec.namespace && a.info.name == spec.workload);
            if let Some(agent) = agent {
                if ic.state() != protocol::manager::InterceptState::Active {
                    ic.set_state(protocol::manager::InterceptState::Active);
                    ic.message.clear();
                }
                // What the intercepted container sees, as its agent reported it.
                ic.container = agent.info.container.clone();
                ic.environment = agent.info.environment.clone();
                ic.mounts = agent.info.mounts.clone();
                ic.pod_ip = agent.info.pod_ip.clone();
            } else if ic.state() == protocol::manager::InterceptState::Active {
                ic.set_state(protocol::manager::InterceptState::NoAgent);
                ic.message = "the traffic-agent is not connected".into();
            }
        }
        self.generation += 1;
        let _ = gen_tx.send(self.generation);
    }

    /// The intercept with this id.
    pub fn intercept_by_id(&self, id: &str) -> Option<&InterceptInfo> {
        self.intercepts.values().find(|i| i.id == id)
    }

    /// The intercepts a client owns.
    pub fn client_intercepts(&self, session: &str) -> Vec<InterceptInfo> {
        let mut v: Vec<_> = self
            .intercepts
            .values()
            .filter(|i| i.client_session == session)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The intercepts of an agent's workload.
    pub fn agent_intercepts(&self, agent: &AgentInfo) -> Vec<InterceptInfo> {
        let mut v: Vec<_> = self
            .intercepts
            .values()
            .filter(|i| {
                let s = i.spec.as_ref().expect("spec");
                s.namespace == agent.namespace && s.workload == agent.name
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Drops sessions whose lease ran out, and the intercepts of expired clients. Returns whether
    /// anything changed.
    pub fn expire(&mut self, now: Instant) -> bool {
        let dead_clients: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, c)| c.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let dead_agents: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for c in &dead_clients {
            tracing::info!(session = %c, "client lease expired; removing its intercepts");
            self.remove_client(c);
        }
        for a in &dead_agents {
            tracing::info!(session = %a, "agent lease expired");
            self.agents.remove(a);
        }
        !dead_clients.is_empty() || !dead_agents.is_empty()
    }

    /// Removes a client session and all its intercepts.
    pub fn remove_client(&mut self, session: &str) {
        self.clients.remove(session);
        self.intercepts.retain(|_, i| i.client_session != session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::manager::InterceptSpec;

    fn intercept(name: &str, session: &str) -> InterceptInfo {
        InterceptInfo {
            spec: Some(InterceptSpec {
                name: name.into(),
                workload: "web".into(),
                namespace: "shop".into(),
                ..Default::default()
            }),
            id: format!("{session}:{name}"),
            state: protocol::manager::InterceptState::Waiting as i32,
            client_session: session.into(),
            ..Default::default()
        }
    }

    #[test]
    fn expired_client_loses_its_intercepts_only() {
        let (tx, _rx) = watch::channel(0);
        let mut s = State::default();
        let now = Instant::now();
        for (id, expires) in [("a", now - Duration::from_secs(1)), ("b", now + LEASE)] {
            s.clients.insert(
                id.into(),
                ClientSession {
                    info: ClientInfo::default(),
                    expires,
                    dials: None,
                    scope: Default::default(),
                },
            );
            s.intercepts.insert(id.into(), intercept(id, id));
        }
        assert!(s.expire(now));
        s.changed(&tx);
        assert!(s.clients.contains_key("b") && !s.clients.contains_key("a"));
        assert_eq!(s.intercepts.keys().collect::<Vec<_>>(), vec!["b"]);
        assert!(!s.expire(now), "nothing else to expire");
    }

    #[test]
    fn state_follows_agent_presence() {
        let (tx, rx) = watch::channel(0);
        let mut s = State::default();
        s.intercepts.insert("web".into(), intercept("web", "c"));
        s.agents.insert(
            "ag".into(),
            AgentSession {
                info: AgentInfo {
                    name: "web".into(),
                    namespace: "shop".into(),
                    ..Default::default()
                },
                expires: Instant::now() + LEASE,
                sent_generation: 0,
                dials: None,
            },
        );
        s.changed(&tx);
        assert_eq!(
            s.intercepts["web"].state(),
            protocol::manager::InterceptState::Active
        );
        assert_eq!(*rx.borrow(), 1);
        s.agents.clear();
        s.changed(&tx);
        assert_eq!(
            s.intercepts["web"].state(),
            protocol::manager::InterceptState::NoAgent
        );
    }
}
