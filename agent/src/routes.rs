//! The routing decision: which captured service ports are currently intercepted, built from the
//! manager's latest intercept snapshot and read once per accepted connection.

use std::net::SocketAddr;
use std::sync::Arc;
use tp_rpc::manager::InterceptSnapshot;

/// Where one accepted connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To the original application.
    App,
    /// Through the manager's tunnel to the intercepting client.
    Intercept {
        intercept_id: Arc<str>,
        /// The agent session the snapshot was received on.
        session_id: Arc<str>,
        /// The tunnel listener, resolved when the snapshot arrived (`None`: resolve at dial).
        tunnel: Option<SocketAddr>,
    },
}

/// The active intercepts of this agent's workload, by service port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    session_id: Arc<str>,
    /// (service port, intercept id); few entries, so a linear scan beats hashing.
    active: Vec<(u16, Arc<str>)>,
    tunnel: Option<SocketAddr>,
}

impl Routes {
    /// No intercept: everything goes to the app.
    pub fn none() -> Routes {
        Routes::default()
    }

    /// Keeps the intercepts of `snapshot` that are ACTIVE and belong to `namespace/workload`.
    /// If two active intercepts claim one port (the manager should prevent that) the first wins.
    pub fn from_snapshot(
        snapshot: &InterceptSnapshot,
        namespace: &str,
        workload: &str,
        session_id: &str,
    ) -> Routes {
        let mut active: Vec<(u16, Arc<str>)> = Vec::new();
        for ic in &snapshot.intercepts {
            let Some(spec) = &ic.spec else { continue };
            let Ok(port) = u16::try_from(ic.service_port) else {
                continue;
            };
            if ic.state != tp_rpc::state::ACTIVE
                || spec.workload != workload
                || (!spec.namespace.is_empty() && spec.namespace != namespace)
                || port == 0
                || ic.id.is_empty()
                || active.iter().any(|(p, _)| *p == port)
            {
                continue;
            }
            active.push((port, Arc::from(ic.id.as_str())));
        }
        Routes {
            session_id: Arc::from(session_id),
            active,
            tunnel: None,
        }
    }

    /// Records the resolved tunnel address handed to intercepted connections.
    pub fn with_tunnel(mut self, tunnel: Option<SocketAddr>) -> Routes {
        self.tunnel = tunnel;
        self
    }

    /// Whether any port is intercepted.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// The intercepted service ports and their intercept ids.
    pub fn active(&self) -> impl Iterator<Item = (u16, &str)> {
        self.active.iter().map(|(p, id)| (*p, &**id))
    }

    /// The decision for a connection that arrived for `service_port`. Costs two reference-count
    /// increments when intercepted, nothing otherwise.
    pub fn route(&self, service_port: u16) -> Route {
        match self.active.iter().find(|(p, _)| *p == service_port) {
            Some((_, id)) => Route::Intercept {
                intercept_id: id.clone(),
                session_id: self.session_id.clone(),
                tunnel: self.tunnel,
            },
            None => Route::App,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tp_rpc::manager::{InterceptInfo, InterceptSpec};

    fn ic(id: &str, ns: &str, workload: &str, port: u32, state: &str) -> InterceptInfo {
        InterceptInfo {
            spec: Some(InterceptSpec {
                name: format!("{workload}-{port}"),
                workload: workload.into(),
                namespace: ns.into(),
                ..Default::default()
            }),
            id: id.into(),
            state: state.into(),
            service_port: port,
            ..Default::default()
        }
    }

    #[test]
    fn only_active_intercepts_of_this_workload_route_to_the_tunnel() {
        let snap = InterceptSnapshot {
            intercepts: vec![
                ic("a", "shop", "web", 8080, "ACTIVE"),
                ic("b", "shop", "web", 9090, "WAITING"),
                ic("c", "shop", "api", 7070, "ACTIVE"),
                ic("d", "other", "web", 6060, "ACTIVE"),
                ic("e", "shop", "web", 8080, "ACTIVE"), // duplicate port: first wins
                ic("f", "shop", "web", 70000, "ACTIVE"),
                InterceptInfo {
                    spec: None,
                    state: "ACTIVE".into(),
                    service_port: 5050,
                    id: "g".into(),
                    ..Default::default()
                },
            ],
        };
        let tunnel: SocketAddr = "10.0.0.9:8082".parse().unwrap();
        let r = Routes::from_snapshot(&snap, "shop", "web", "s1").with_tunnel(Some(tunnel));
        assert_eq!(
            r.route(8080),
            Route::Intercept {
                intercept_id: "a".into(),
                session_id: "s1".into(),
                tunnel: Some(tunnel),
            }
        );
        for port in [9090, 7070, 6060, 5050, 4464, 0] {
            assert_eq!(r.route(port), Route::App, "port {port}");
        }
        assert_eq!(r.active().collect::<Vec<_>>(), [(8080, "a")]);
        assert!(!r.is_empty());
    }

    #[test]
    fn an_empty_snapshot_routes_everything_to_the_app() {
        let r = Routes::from_snapshot(&InterceptSnapshot::default(), "shop", "web", "s1");
        assert!(r.is_empty());
        assert_eq!(r.route(8080), Route::App);
        assert_eq!(Routes::none().route(8080), Route::App);
    }

    #[test]
    fn a_spec_without_namespace_matches_by_workload() {
        let snap = InterceptSnapshot {
            intercepts: vec![ic("a", "", "web", 8080, "ACTIVE")],
        };
        let r = Routes::from_snapshot(&snap, "shop", "web", "s1");
        assert!(matches!(r.route(8080), Route::Intercept { .. }));
    }
}
