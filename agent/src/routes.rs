//! The routing decision: which captured service ports are currently intercepted, built from the
//! manager's latest intercept snapshot. A port with a global intercept is routed once per
//! accepted connection; a port with personal intercepts (HTTP filters) is routed once per
//! request ([`Routes::route_request`]). Wiretaps are not routes: [`Routes::taps`] names the ones
//! that get a copy of a port's connections, whatever their route.

use protocol::filters::HttpFilter;
use protocol::manager::InterceptSnapshot;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::warn;

/// Where one accepted connection (or one HTTP request) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To the original application.
    App,
    /// Through the manager's tunnel to the intercepting client.
    Intercept {
        /// The intercept the connection belongs to.
        intercept_id: Arc<str>,
        /// The agent session the snapshot was received on.
        session_id: Arc<str>,
        /// The tunnel listener, resolved when the snapshot arrived (`None`: resolve at dial).
        tunnel: Option<SocketAddr>,
    },
    /// The port has personal intercepts: terminate HTTP and route each request.
    Http,
}

/// A personal intercept: its id and which requests it wants.
#[derive(Debug, Clone, PartialEq)]
pub struct Personal {
    /// Intercept id.
    pub id: Arc<str>,
    /// The requests it wants.
    pub filter: HttpFilter,
}

/// Where the copies of one wiretap go: through the manager's tunnel, like an intercepted
/// connection, to the wiretapping client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// The wiretap's (intercept) id.
    pub intercept_id: Arc<str>,
    /// The agent session the snapshot was received on.
    pub session_id: Arc<str>,
    /// The tunnel listener, resolved when the snapshot arrived (`None`: resolve at dial).
    pub tunnel: Option<SocketAddr>,
}

/// The active intercepts of this agent's workload, by service port.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routes {
    session_id: Arc<str>,
    /// (service port, intercept id) of global intercepts; few entries, so a linear scan beats
    /// hashing.
    active: Vec<(u16, Arc<str>)>,
    /// (service port, personal intercepts, most specific first).
    personal: Vec<(u16, Vec<Personal>)>,
    /// (service port, wiretap id, filter) of the wiretaps: without filter they copy every
    /// connection of their port, with one the HTTP requests it matches.
    taps: Vec<(u16, Arc<str>, Option<HttpFilter>)>,
    tunnel: Option<SocketAddr>,
}

impl Routes {
    /// No intercept: everything goes to the app.
    pub fn none() -> Routes {
        Routes::default()
    }

    /// Keeps the intercepts of `snapshot` that are ACTIVE and belong to `namespace/workload`.
    /// If two global intercepts claim one port (the manager should prevent that) the first
    /// wins; a global intercept hides personal ones on its port.
    pub fn from_snapshot(
        snapshot: &InterceptSnapshot,
        namespace: &str,
        workload: &str,
        session_id: &str,
    ) -> Routes {
        let mut active: Vec<(u16, Arc<str>)> = Vec::new();
        let mut personal: Vec<(u16, Vec<Personal>)> = Vec::new();
        let mut taps: Vec<(u16, Arc<str>, Option<HttpFilter>)> = Vec::new();
        // Each service port of an engagement (a multi-port one has several) routes on its own.
        let each_port = snapshot.intercepts.iter().flat_map(|ic| {
            std::iter::once(ic.service_port)
                .chain(ic.extra_ports.iter().map(|r| r.service_port))
                .map(move |p| (ic, p))
        });
        for (ic, port) in each_port {
            let Some(spec) = &ic.spec else { continue };
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            if ic.state() != protocol::manager::InterceptState::Active
                || spec.workload != workload
                || (!spec.namespace.is_empty() && spec.namespace != namespace)
                || port == 0
                || ic.id.is_empty()
            {
                continue;
            }
            if spec.kind() == protocol::manager::EngagementKind::Wiretap {
                match HttpFilter::from_spec(spec) {
                    Ok(filter) => taps.push((port, Arc::from(ic.id.as_str()), filter)),
                    Err(e) => warn!("wiretap {}: ignoring it, its filter is invalid: {e}", ic.id),
                }
                continue;
            }
            if active.iter().any(|(p, _)| *p == port) {
                continue;
            }
            match HttpFilter::from_spec(spec) {
                Ok(None) => active.push((port, Arc::from(ic.id.as_str()))),
                Ok(Some(filter)) => {
                    let p = Personal {
                        id: Arc::from(ic.id.as_str()),
                        filter,
                    };
                    match personal.iter_mut().find(|(pp, _)| *pp == port) {
                        Some((_, v)) => v.push(p),
                        None => personal.push((port, vec![p])),
                    }
                }
                Err(e) => warn!("intercept {}: ignoring its filter: {e}", ic.id),
            }
        }
        personal.retain(|(port, _)| !active.iter().any(|(p, _)| p == port));
        for (_, v) in &mut personal {
            v.sort_by(|a, b| {
                b.filter
                    .conditions()
                    .cmp(&a.filter.conditions())
                    .then_with(|| a.id.cmp(&b.id))
            });
        }
        Routes {
            session_id: Arc::from(session_id),
            active,
            personal,
            taps,
            tunnel: None,
        }
    }

    /// Records the resolved tunnel address handed to intercepted connections.
    pub fn with_tunnel(mut self, tunnel: Option<SocketAddr>) -> Routes {
        self.tunnel = tunnel;
        self
    }

    /// Whether any port is intercepted or wiretapped.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.personal.is_empty() && self.taps.is_empty()
    }

    fn tap(&self, id: &Arc<str>) -> Tap {
        Tap {
            intercept_id: id.clone(),
            session_id: self.session_id.clone(),
            tunnel: self.tunnel,
        }
    }

    /// The wiretaps without filter, which get a copy of every connection that arrived for
    /// `service_port` (none, and no allocation, on a port without wiretap).
    pub fn taps(&self, service_port: u16) -> Vec<Tap> {
        self.taps
            .iter()
            .filter(|(p, _, f)| *p == service_port && f.is_none())
            .map(|(_, id, _)| self.tap(id))
            .collect()
    }

    /// The HTTP-filtered wiretaps of `service_port` that want a copy of one request (`has` as
    /// in [`Routes::route_request`]).
    pub fn request_taps(
        &self,
        service_port: u16,
        path: &str,
        has: impl Fn(&str, &str) -> bool,
    ) -> Vec<Tap> {
        self.taps
            .iter()
            .filter(|(p, _, f)| {
                *p == service_port && f.as_ref().is_some_and(|f| f.matches(path, &has))
            })
            .map(|(_, id, _)| self.tap(id))
            .collect()
    }

    /// The intercepted (and wiretapped) service ports and their engagement ids.
    pub fn active(&self) -> impl Iterator<Item = (u16, &str)> {
        self.active
            .iter()
            .map(|(p, id)| (*p, &**id))
            .chain(
                self.personal
                    .iter()
                    .flat_map(|(p, v)| v.iter().map(move |i| (*p, &*i.id))),
            )
            .chain(self.taps.iter().map(|(p, id, _)| (*p, &**id)))
    }

    fn intercept(&self, id: &Arc<str>) -> Route {
        Route::Intercept {
            intercept_id: id.clone(),
            session_id: self.session_id.clone(),
            tunnel: self.tunnel,
        }
    }

    /// The decision for a connection that arrived for `service_port`. Costs two reference-count
    /// increments when intercepted, nothing otherwise.
    /// An HTTP-filtered wiretap makes every connection of its port go through per-request routing.
    pub fn route(&self, service_port: u16) -> Route {
        let filtered_taps = self
            .taps
            .iter()
            .any(|(p, _, f)| *p == service_port && f.is_some());
        if !filtered_taps {
            if let Some((_, id)) = self.active.iter().find(|(p, _)| *p == service_port) {
                return self.intercept(id);
            }
        }
        if filtered_taps || self.personal.iter().any(|(p, _)| *p == service_port) {
            return Route::Http;
        }
        Route::App
    }

    /// The decision for one HTTP request on `service_port`: the first personal intercept whose
    /// filter matches (most specific first), a global intercept of the port if one appeared
    /// meanwhile, else the app. `has(name, value)` tells whether the request carries header
    /// `name` (lower case) with exactly `value`.
    pub fn route_request(
        &self,
        service_port: u16,
        path: &str,
        has: impl Fn(&str, &str) -> bool,
    ) -> Route {
        if let Some((_, id)) = self.active.iter().find(|(p, _)| *p == service_port) {
            return self.intercept(id);
        }
        if let Some((_, v)) = self.personal.iter().find(|(p, _)| *p == service_port) {
            if let Some(i) = v.iter().find(|i| i.filter.matches(path, &has)) {
                return self.intercept(&i.id);
            }
        }
        Route::App
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::manager::{InterceptInfo, InterceptSpec};

    fn ic(id: &str, ns: &str, workload: &str, port: u32, state: &str) -> InterceptInfo {
        InterceptInfo {
            spec: Some(InterceptSpec {
                name: format!("{workload}-{port}"),
                workload: workload.into(),
                namespace: ns.into(),
                ..Default::default()
            }),
            id: id.into(),
            state: protocol::manager::InterceptState::parse(state).unwrap() as i32,
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
                    state: protocol::manager::InterceptState::Active as i32,
                    service_port: 5050,
                    id: "g".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
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
    fn every_pair_of_a_multi_port_engagement_routes_to_it() {
        let mut two = ic("a", "shop", "web", 8080, "ACTIVE");
        two.extra_ports = vec![protocol::manager::ResolvedPort {
            service_port: 9090,
            service_port_name: String::new(),
            target_port: 7070,
        }];
        let snap = InterceptSnapshot {
            intercepts: vec![two],
            ..Default::default()
        };
        let r = Routes::from_snapshot(&snap, "shop", "web", "s1");
        for port in [8080, 9090] {
            assert!(
                matches!(r.route(port), Route::Intercept { ref intercept_id, .. } if &**intercept_id == "a"),
                "port {port}"
            );
        }
        assert_eq!(r.route(7070), Route::App);
        assert_eq!(r.active().collect::<Vec<_>>(), [(8080, "a"), (9090, "a")]);
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
            ..Default::default()
        };
        let r = Routes::from_snapshot(&snap, "shop", "web", "s1");
        assert!(matches!(r.route(8080), Route::Intercept { .. }));
    }

    fn personal(id: &str, port: u32, headers: &[&str], prefix: &str) -> InterceptInfo {
        let mut i = ic(id, "shop", "web", port, "ACTIVE");
        let spec = i.spec.as_mut().unwrap();
        spec.http_headers = headers
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        spec.http_path_prefix = prefix.into();
        i
    }

    #[test]
    fn personal_intercepts_route_each_request_by_its_filter() {
        let snap = InterceptSnapshot {
            intercepts: vec![
                personal("a", 8080, &["x-dev=alice"], ""),
                personal("b", 8080, &["x-dev=bob"], ""),
                personal("c", 8080, &["x-dev=bob"], "/api"), // more specific: tried first
                personal("d", 8080, &["bad header=1"], ""),  // invalid: ignored
                ic("g", "shop", "web", 9090, "ACTIVE"),
            ],
            ..Default::default()
        };
        let r = Routes::from_snapshot(&snap, "shop", "web", "s1");
        assert_eq!(r.route(8080), Route::Http);
        assert!(matches!(r.route(9090), Route::Intercept { .. }));
        let to = |path: &str, dev: &str| match r
            .route_request(8080, path, |k, v| k == "x-dev" && v == dev)
        {
            Route::Intercept { intercept_id, .. } => intercept_id.to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(to("/", "alice"), "a");
        assert_eq!(to("/", "bob"), "b");
        assert_eq!(to("/api/x", "bob"), "c");
        assert_eq!(to("/", "carol"), "App");
        let mut ids: Vec<_> = r.active().collect();
        ids.sort();
        assert_eq!(ids, [(8080, "a"), (8080, "b"), (8080, "c"), (9090, "g")]);
    }

    #[test]
    fn a_global_intercept_hides_personal_ones_on_its_port() {
        let snap = InterceptSnapshot {
            intercepts: vec![
                ic("g", "shop", "web", 8080, "ACTIVE"),
                personal("a", 8080, &["x-dev=alice"], ""),
            ],
            ..Default::default()
        };
        let r = Routes::from_snapshot(&snap, "shop", "web", "s1");
        assert!(matches!(r.route(8080), Route::Intercept { .. }));
        assert!(matches!(
            r.route_request(8080, "/", |_, _| true),
            Route::Intercept { intercept_id, .. } if &*intercept_id == "g"
        ));
        assert_eq!(r.active().count(), 1);
    }
}
