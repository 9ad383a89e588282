//! Engagement kinds beside the single-port intercept: the `local:remote` pairs of a multi-port
//! engagement, `replace` (every port of the workload, the original container stopped) and
//! `ingest` (env and volumes only, no port), `wiretap` (copies; its sharing rules and drop
//! counters are `wiretap.rs`'s), the conflicts between kinds, and the loop that keeps
//! the provider's "replaced" state (a paused container, a pod without its app) in step with the
//! engagements (`keep_replaced`).

use crate::provider::{PortSpec, WorkloadInfo};
use crate::service::{resolve_port, PortError};
use crate::Manager;
use protocol::manager::{EngagementKind, InterceptInfo, InterceptSpec, ResolvedPort};
use std::collections::BTreeSet;
use tonic::Status;

/// Why the pairs of an engagement cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngageError {
    /// A port of the workload could not be resolved.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The same service port was given twice.
    #[error("port {port} of {workload} is given twice in --port; give each service port once")]
    DuplicateService {
        /// The workload's name.
        workload: String,
        /// The service port.
        port: u16,
    },
    /// Two pairs deliver to the same local port.
    #[error("local port {0} is given twice in --port; give each pair its own local port")]
    DuplicateLocal(u32),
    /// `--service` names no service of the workload.
    #[error("{0}")]
    Service(String),
}

/// The resolved pairs of an engagement: the first one (`service_port`, its name, the local
/// port) and the others.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pairs {
    /// The first service port (0 for an ingest, or a replace of a workload without TCP port).
    pub port: u16,
    /// The name of the first service port (empty when it has none).
    pub port_name: String,
    /// The local port of the first pair.
    pub target_port: u32,
    /// The other pairs.
    pub extra: Vec<ResolvedPort>,
}

impl Pairs {
    /// Every service port of the engagement.
    pub fn service_ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = std::iter::once(self.port)
            .filter(|p| *p != 0)
            .chain(
                self.extra
                    .iter()
                    .filter_map(|r| u16::try_from(r.service_port).ok()),
            )
            .collect();
        v.dedup();
        v
    }
}

/// The kind of an engagement.
pub fn kind_of(spec: &InterceptSpec) -> EngagementKind {
    EngagementKind::try_from(spec.kind).unwrap_or(EngagementKind::Intercept)
}

/// The service ports an engagement holds (its first and its extra pairs).
pub fn ports_of(i: &InterceptInfo) -> Vec<u16> {
    std::iter::once(i.service_port)
        .chain(i.extra_ports.iter().map(|r| r.service_port))
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .collect()
}

/// The local port a connection captured on `service_port` is delivered to: the matching extra
/// pair, else the first pair's.
pub fn target_port_for(i: &InterceptInfo, service_port: Option<u16>) -> u32 {
    let first = i.spec.as_ref().map(|s| s.target_port).unwrap_or_default();
    match service_port {
        Some(p) => i
            .extra_ports
            .iter()
            .find(|r| r.service_port == u32::from(p))
            .map_or(first, |r| r.target_port),
        None => first,
    }
}

/// Resolves the `local:remote` pairs of `spec` against the workload's ports `ports`: an
/// intercept gets the pairs it names; a replace gets them plus every other TCP port of the
/// workload delivered to the same local port number; an ingest gets none.
pub fn resolve_pairs(
    w: &WorkloadInfo,
    ports: &[PortSpec],
    spec: &InterceptSpec,
) -> Result<Pairs, EngageError> {
    let kind = kind_of(spec);
    if kind == EngagementKind::Ingest {
        return Ok(Pairs::default());
    }
    let view = WorkloadInfo {
        ports: ports.to_vec(),
        ..w.clone()
    };
    let named = !spec.port_identifier.is_empty() || spec.target_port != 0;
    let mut pairs: Vec<(u16, String, u32)> = Vec::new();
    if matches!(kind, EngagementKind::Intercept | EngagementKind::Wiretap) || named {
        let (p, n) = resolve_port(&view, &spec.port_identifier)?;
        pairs.push((p, n, spec.target_port));
    }
    for extra in &spec.extra_ports {
        let (p, n) = resolve_port(&view, &extra.port_identifier)?;
        pairs.push((p, n, extra.target_port));
    }
    if kind == EngagementKind::Replace {
        for p in ports
            .iter()
            .filter(|p| p.protocol == protocol::ports::Protocol::Tcp)
        {
            if !pairs.iter().any(|(sp, _, _)| *sp == p.port) {
                pairs.push((p.port, p.name.clone(), u32::from(p.port)));
            }
        }
    }
    let mut seen_service = BTreeSet::new();
    let mut seen_local = BTreeSet::new();
    for (p, _, local) in &pairs {
        if !seen_service.insert(*p) {
            return Err(EngageError::DuplicateService {
                workload: w.name.clone(),
                port: *p,
            });
        }
        if !seen_local.insert(*local) {
            return Err(EngageError::DuplicateLocal(*local));
        }
    }
    let mut it = pairs.into_iter();
    let Some((port, port_name, target_port)) = it.next() else {
        return Ok(Pairs::default());
    };
    Ok(Pairs {
        port,
        port_name,
        target_port,
        extra: it
            .map(|(p, n, t)| ResolvedPort {
                service_port: u32::from(p),
                service_port_name: n,
                target_port: t,
            })
            .collect(),
    })
}

/// The word `list` and `status` use for an engagement kind.
pub fn kind_word(kind: EngagementKind) -> &'static str {
    match kind {
        EngagementKind::Intercept => "intercepted",
        EngagementKind::Replace => "replaced",
        EngagementKind::Ingest => "ingested",
        EngagementKind::Wiretap => "wiretapped",
    }
}

/// Refuses an engagement that clashes with another one beyond what `check_conflicts` in
/// `service.rs` looks at: a replace needs its workload to itself (ingests aside), an intercept
/// cannot join a replaced workload, the extra pairs' local ports and service ports must be free.
pub fn check(
    st: &crate::state::State,
    session: &str,
    spec: &InterceptSpec,
    pairs: &Pairs,
) -> Result<(), Status> {
    let kind = kind_of(spec);
    let same_workload = |i: &&InterceptInfo| {
        i.spec
            .as_ref()
            .is_some_and(|s| s.namespace == spec.namespace && s.workload == spec.workload)
    };
    for other in st.intercepts.values().filter(same_workload) {
        let o = other.spec.as_ref().expect("spec");
        let okind = kind_of(o);
        if kind == EngagementKind::Ingest || okind == EngagementKind::Ingest {
            continue;
        }
        if kind == EngagementKind::Replace || okind == EngagementKind::Replace {
            return Err(Status::already_exists(format!(
                "{} is already {} by {} (\"{}\"); a replace needs the workload to itself: leave that one first",
                spec.workload,
                kind_word(okind),
                o.client,
                o.name
            )));
        }
    }
    let locals: Vec<u32> = pairs.extra.iter().map(|r| r.target_port).collect();
    for other in st
        .intercepts
        .values()
        .filter(|i| i.client_session == session)
    {
        let o = other.spec.as_ref().expect("spec");
        let theirs: Vec<u32> = std::iter::once(o.target_port)
            .chain(other.extra_ports.iter().map(|r| r.target_port))
            .filter(|p| *p != 0)
            .collect();
        if let Some(p) = locals.iter().find(|p| theirs.contains(p)) {
            return Err(Status::already_exists(format!(
                "local port {p} is already used by intercept \"{}\"; choose another --port",
                o.name
            )));
        }
    }
    for p in pairs
        .extra
        .iter()
        .filter_map(|r| u16::try_from(r.service_port).ok())
    {
        for other in st
            .intercepts
            .values()
            .filter(same_workload)
            .filter(|i| ports_of(i).contains(&p))
        {
            if let Some(why) = crate::personal::conflict(spec, other, p) {
                return Err(Status::already_exists(why));
            }
        }
    }
    Ok(())
}

/// What an engagement routes, as `list` shows it: the filters' disposition, or no traffic.
pub fn disposition(spec: &InterceptSpec) -> String {
    let kind = kind_of(spec);
    if kind == EngagementKind::Ingest {
        "no traffic (environment and volumes only)".into()
    } else if kind == EngagementKind::Wiretap {
        format!("a copy of {}", protocol::filters::disposition(spec))
    } else {
        protocol::filters::disposition(spec)
    }
}

/// The workloads (namespace, name) that replace engagements hold, whatever their state (on
/// Kubernetes the replacing rollout brings a new agent: the engagement waits for it meanwhile).
fn replaced(st: &crate::state::State) -> BTreeSet<(String, String)> {
    st.intercepts
        .values()
        .filter_map(|i| i.spec.as_ref())
        .filter(|s| kind_of(s) == EngagementKind::Replace)
        .map(|s| (s.namespace.clone(), s.workload.clone()))
        .collect()
}

impl Manager {
    /// For a replace engagement whose agent is routing: stops the original container (the
    /// provider's `set_replaced`), then waits for the agent again (on Kubernetes the replaced
    /// pods bring a new one). Nothing for other kinds.
    pub(crate) async fn start_replace(&self, spec: &InterceptSpec) -> Result<(), Status> {
        if kind_of(spec) != EngagementKind::Replace {
            return Ok(());
        }
        self.inner
            .provider
            .set_replaced(&spec.namespace, &spec.workload, true)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.await_agent(&spec.namespace, &spec.workload).await;
        Ok(())
    }

    /// Restores the workloads of replace engagements that ended (leave, lease expiry, handler
    /// exit, uninstall): their original containers run again.
    pub(crate) async fn keep_replaced(self) {
        let mut gen_rx = self.inner.generation.subscribe();
        let mut current: BTreeSet<(String, String)> = BTreeSet::new();
        loop {
            let want = replaced(&*self.inner.state.lock().await);
            for (ns, w) in current.difference(&want) {
                if let Err(e) = self.inner.provider.set_replaced(ns, w, false).await {
                    tracing::warn!(namespace = %ns, workload = %w, error = %e, "cannot restore replaced workload");
                }
            }
            // Replacing is `start_replace`'s, once the agent routes every port: pausing earlier
            // would leave callers hanging on a frozen app.
            current = want;
            if gen_rx.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderError;
    use protocol::manager::PortPair;

    fn w() -> WorkloadInfo {
        WorkloadInfo {
            name: "web".into(),
            namespace: "shop".into(),
            kind: "ComposeService".into(),
            ports: [("http", 80), ("admin", 9000), ("metrics", 9100)]
                .iter()
                .map(|(n, p)| PortSpec {
                    name: n.to_string(),
                    port: *p,
                    protocol: protocol::ports::Protocol::Tcp,
                })
                .collect(),
            not_interceptable: None,
            open_ports: false,
            agent_installed: false,
        }
    }

    fn spec(kind: EngagementKind, first: (&str, u32), extra: &[(&str, u32)]) -> InterceptSpec {
        InterceptSpec {
            workload: "web".into(),
            port_identifier: first.0.into(),
            target_port: first.1,
            kind: kind as i32,
            extra_ports: extra
                .iter()
                .map(|(i, t)| PortPair {
                    port_identifier: i.to_string(),
                    target_port: *t,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn multi_port_intercept_resolves_each_pair() {
        let w = w();
        let p = resolve_pairs(
            &w,
            &w.ports,
            &spec(EngagementKind::Intercept, ("80", 8080), &[("admin", 8081)]),
        )
        .unwrap();
        assert_eq!((p.port, p.target_port), (80, 8080));
        assert_eq!(p.extra.len(), 1);
        assert_eq!(
            (p.extra[0].service_port, p.extra[0].target_port),
            (9000, 8081)
        );
        assert_eq!(p.service_ports(), vec![80, 9000]);
        let info = InterceptInfo {
            spec: Some(spec(EngagementKind::Intercept, ("80", 8080), &[])),
            service_port: 80,
            extra_ports: p.extra.clone(),
            ..Default::default()
        };
        assert_eq!(target_port_for(&info, Some(9000)), 8081);
        assert_eq!(target_port_for(&info, Some(80)), 8080);
        assert_eq!(target_port_for(&info, None), 8080);
        assert_eq!(ports_of(&info), vec![80, 9000]);
    }

    #[test]
    fn bad_pairs_are_refused_with_a_hint() {
        let w = w();
        let e = resolve_pairs(
            &w,
            &w.ports,
            &spec(EngagementKind::Intercept, ("80", 8080), &[("7777", 8081)]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not expose port 7777"), "{e}");
        let e = resolve_pairs(
            &w,
            &w.ports,
            &spec(EngagementKind::Intercept, ("80", 8080), &[("http", 8081)]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("given twice"), "{e}");
        let e = resolve_pairs(
            &w,
            &w.ports,
            &spec(EngagementKind::Intercept, ("80", 8080), &[("admin", 8080)]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("local port 8080 is given twice"), "{e}");
    }

    #[test]
    fn replace_takes_every_port_and_ingest_none() {
        let w = w();
        let p = resolve_pairs(&w, &w.ports, &spec(EngagementKind::Replace, ("", 0), &[])).unwrap();
        assert_eq!(p.service_ports(), vec![80, 9000, 9100]);
        assert_eq!(p.target_port, 80, "same local port number by default");
        let p = resolve_pairs(
            &w,
            &w.ports,
            &spec(EngagementKind::Replace, ("admin", 7000), &[]),
        )
        .unwrap();
        assert_eq!((p.port, p.target_port), (9000, 7000));
        assert_eq!(p.service_ports(), vec![9000, 80, 9100]);
        let p = resolve_pairs(&w, &w.ports, &spec(EngagementKind::Ingest, ("", 0), &[])).unwrap();
        assert_eq!(p, Pairs::default());
        assert!(p.service_ports().is_empty());
    }

    /// A provider that only records `set_replaced` calls.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<(String, bool)>>);

    #[async_trait::async_trait]
    impl crate::provider::Provider for Recorder {
        fn cluster_type(&self) -> protocol::ClusterType {
            protocol::ClusterType::Docker
        }
        fn server(&self) -> String {
            String::new()
        }
        fn agent_image(&self) -> String {
            String::new()
        }
        async fn namespace_exists(&self, _: &str) -> Result<bool, ProviderError> {
            Ok(true)
        }
        async fn list_workloads(&self, _: &str) -> Result<Vec<WorkloadInfo>, ProviderError> {
            Ok(vec![w()])
        }
        async fn get_workload(&self, _: &str, _: &str) -> Result<WorkloadInfo, ProviderError> {
            Ok(w())
        }
        async fn ensure_agent(
            &self,
            _: &crate::provider::AgentRequest,
        ) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn remove_agent(&self, _: &str, _: &str) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn cluster_subnets(&self, _: &str) -> Result<Vec<String>, ProviderError> {
            Ok(Vec::new())
        }
        fn cluster_domain(&self) -> String {
            String::new()
        }
        async fn set_replaced(&self, _: &str, w: &str, on: bool) -> Result<(), ProviderError> {
            self.0.lock().unwrap().push((w.to_string(), on));
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_ended_replace_gives_the_workload_back() {
        let rec = std::sync::Arc::new(Recorder::default());
        let mgr = Manager::new(rec.clone(), std::time::Duration::from_secs(1));
        tokio::spawn(mgr.clone().keep_replaced());
        let mut rep = spec(EngagementKind::Replace, ("", 0), &[]);
        rep.namespace = "shop".into();
        {
            let mut st = mgr.inner.state.lock().await;
            st.intercepts.insert(
                "a:web".into(),
                InterceptInfo {
                    spec: Some(rep.clone()),
                    id: "a:web".into(),
                    ..Default::default()
                },
            );
            st.changed(&mgr.inner.generation);
        }
        mgr.start_replace(&rep).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(*rec.0.lock().unwrap(), [("web".to_string(), true)]);
        {
            let mut st = mgr.inner.state.lock().await;
            st.intercepts.clear();
            st.changed(&mgr.inner.generation);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while rec.0.lock().unwrap().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "not restored");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(rec.0.lock().unwrap()[1], ("web".to_string(), false));
        // Ingests and intercepts never pause anything.
        mgr.start_replace(&spec(EngagementKind::Ingest, ("", 0), &[]))
            .await
            .unwrap();
        assert_eq!(rec.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn replace_needs_the_workload_to_itself() {
        let mut st = crate::state::State::default();
        let mut mine = spec(EngagementKind::Intercept, ("80", 8080), &[]);
        mine.namespace = "shop".into();
        mine.name = "web".into();
        mine.client = "alice@box".into();
        st.intercepts.insert(
            "a:web".into(),
            InterceptInfo {
                spec: Some(mine.clone()),
                id: "a:web".into(),
                client_session: "a".into(),
                service_port: 80,
                ..Default::default()
            },
        );
        let mut rep = spec(EngagementKind::Replace, ("", 0), &[]);
        rep.namespace = "shop".into();
        let e = check(&st, "b", &rep, &Pairs::default()).unwrap_err();
        assert!(
            e.message().contains("already intercepted by alice@box"),
            "{}",
            e.message()
        );
        let mut ing = spec(EngagementKind::Ingest, ("", 0), &[]);
        ing.namespace = "shop".into();
        assert!(check(&st, "b", &ing, &Pairs::default()).is_ok());
        // The other way round: an intercept cannot join a replaced workload.
        st.intercepts
            .get_mut("a:web")
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .kind = EngagementKind::Replace as i32;
        let e = check(&st, "b", &mine, &Pairs::default()).unwrap_err();
        assert!(e.message().contains("already replaced"), "{}", e.message());
    }
}
