//! Wiretaps in the manager: a wiretap shares its ports with the workload's intercept and with
//! other wiretaps (it only gets copies, so it takes nothing from anybody), and the drop counters
//! the agents report (`ReportWiretaps`), summed per wiretap into
//! `InterceptInfo.wiretap_dropped` for `list` and `status`.

use crate::state::State;
use protocol::manager::{EngagementKind, InterceptSpec, WiretapReport};
use std::collections::HashMap;

/// Whether an engagement is a wiretap.
pub fn is_wiretap(spec: &InterceptSpec) -> bool {
    crate::engage::kind_of(spec) == EngagementKind::Wiretap
}

/// The drop counters of every wiretap, by wiretap id, then by reporting agent session (each
/// agent counts from its own start; the sum is what `list` shows).
#[derive(Debug, Default)]
pub struct Drops(HashMap<String, HashMap<String, u64>>);

impl Drops {
    /// Records `report` from agent session `agent` into `st`: the per-agent counters, and each
    /// wiretap's sum in its `InterceptInfo`. Counters of engagements that ended are forgotten.
    /// Returns whether any shown sum changed.
    pub fn record(st: &mut State, agent: &str, report: &WiretapReport) -> bool {
        let State {
            intercepts,
            wiretap_drops,
            ..
        } = st;
        wiretap_drops
            .0
            .retain(|id, _| intercepts.values().any(|i| i.id == *id));
        let mut changed = false;
        for (id, n) in &report.dropped {
            let Some(info) = intercepts.values_mut().find(|i| i.id == *id) else {
                continue;
            };
            if !info.spec.as_ref().is_some_and(is_wiretap) {
                continue;
            }
            let per_agent = wiretap_drops.0.entry(id.clone()).or_default();
            per_agent.insert(agent.to_string(), *n);
            let sum = per_agent.values().sum();
            if info.wiretap_dropped != sum {
                info.wiretap_dropped = sum;
                changed = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::manager::InterceptInfo;

    fn tap(id: &str, kind: EngagementKind) -> InterceptInfo {
        InterceptInfo {
            id: id.into(),
            spec: Some(InterceptSpec {
                name: id.into(),
                kind: kind as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn report(counts: &[(&str, u64)]) -> WiretapReport {
        WiretapReport {
            session: None,
            dropped: counts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn counts_are_summed_over_agents_and_only_for_wiretaps() {
        let mut st = State::default();
        st.intercepts
            .insert("t".into(), tap("c:t", EngagementKind::Wiretap));
        st.intercepts
            .insert("i".into(), tap("c:i", EngagementKind::Intercept));
        assert!(Drops::record(
            &mut st,
            "a1",
            &report(&[("c:t", 3), ("c:i", 5)])
        ));
        assert!(Drops::record(&mut st, "a2", &report(&[("c:t", 4)])));
        assert_eq!(st.intercepts["t"].wiretap_dropped, 7);
        assert_eq!(st.intercepts["i"].wiretap_dropped, 0, "not a wiretap");
        // The same counters again: nothing to tell anybody.
        assert!(!Drops::record(&mut st, "a1", &report(&[("c:t", 3)])));
        assert!(Drops::record(&mut st, "a1", &report(&[("c:t", 10)])));
        assert_eq!(st.intercepts["t"].wiretap_dropped, 14);
        // An ended wiretap's counters are forgotten; unknown ids are ignored.
        st.intercepts.remove("t");
        assert!(!Drops::record(&mut st, "a1", &report(&[("c:gone", 1)])));
        assert!(st.wiretap_drops.0.is_empty());
    }
}
