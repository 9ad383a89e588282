//! The path section's report: medians of the rounds against the targets as table rows, the JSON
//! section (figures, rounds, failures, distributions summarised at a few percentiles, memory per
//! role) and the chart's panels.

use super::rss::ROLES;
use super::{median, Options, PathResults};
use crate::bench_chart::{Line, Panel, DIRECT_COLOR, OURS_COLOR};
use crate::harness::images;
use serde_json::{json, Value};

/// One line of the section's table.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRow {
    pub metric: String,
    pub direct: String,
    pub ours: String,
    /// Ours against direct: the added cost or the ratio.
    pub versus: String,
    pub target: String,
    /// `None` when there is no target.
    pub met: Option<bool>,
    /// Printed under the table (failed runs).
    pub note: Option<String>,
}

/// How a row compares ours with direct.
#[derive(Clone, Copy)]
enum Target {
    None,
    /// Latency: ours may add at most this many µs.
    AddedAtMost(f64),
    /// Rate: ours at least this fraction of direct.
    RatioAtLeast(f64),
}

/// A row of a direct-vs-ours measure: label, measure key, JSON field, unit, target.
type Spec = (String, String, &'static str, &'static str, Target);

fn specs(o: &Options) -> Vec<Spec> {
    let n = o.streams;
    let (us, g) = ("µs", "Gbit/s");
    let spec = |label: &str, key: &str, field, unit, target| {
        (label.to_string(), key.to_string(), field, unit, target)
    };
    let mut v: Vec<Spec> = vec![
        spec(
            "intercept: keep-alive 1 KiB p50",
            "keepalive",
            "p50_us",
            us,
            Target::AddedAtMost(50.0),
        ),
        spec(
            "intercept: keep-alive 1 KiB p99",
            "keepalive",
            "p99_us",
            us,
            Target::AddedAtMost(200.0),
        ),
        spec(
            "intercept: new connection p50",
            "new_conn",
            "p50_us",
            us,
            Target::AddedAtMost(300.0),
        ),
        spec(
            "intercept: new connection p99",
            "new_conn",
            "p99_us",
            us,
            Target::None,
        ),
        spec(
            "agent hop alone: keep-alive 1 KiB p50",
            "agent_keepalive",
            "p50_us",
            us,
            Target::None,
        ),
        spec(
            "agent hop alone: keep-alive 1 KiB p99",
            "agent_keepalive",
            "p99_us",
            us,
            Target::None,
        ),
        spec(
            "agent hop alone: new connection p50",
            "agent_new_conn",
            "p50_us",
            us,
            Target::None,
        ),
        spec(
            &format!("intercept: req/s, {n} keep-alive conns"),
            "rps",
            "requests_per_s",
            "req/s",
            Target::RatioAtLeast(0.8),
        ),
    ];
    // The intercept path's hops made of kernel rules alone (`floor.rs`).
    let floor = "kernel floor";
    v.extend([
        spec(
            &format!("{floor}: keep-alive 1 KiB p50"),
            "floor_keepalive",
            "p50_us",
            us,
            Target::None,
        ),
        spec(
            &format!("{floor}: keep-alive 1 KiB p99"),
            "floor_keepalive",
            "p99_us",
            us,
            Target::None,
        ),
        spec(
            &format!("{floor}: new connection p50"),
            "floor_new_conn",
            "p50_us",
            us,
            Target::None,
        ),
        spec(
            &format!("{floor}: req/s, {n} keep-alive conns"),
            "floor_rps",
            "requests_per_s",
            "req/s",
            Target::None,
        ),
    ]);
    let rate = Target::RatioAtLeast(0.8);
    for (path, key, down_target, up_target) in [
        ("intercept", "icpt", rate, Target::None),
        (floor, "floor", Target::None, Target::None),
        ("outbound", "out", rate, rate),
    ] {
        for (way, key_way, target) in [
            ("download", "down", down_target),
            ("upload", "up", up_target),
        ] {
            for (count, key_n) in [(1, "1"), (n, "n")] {
                let s = if count == 1 { "stream" } else { "streams" };
                let label = format!("{path}: {way}, {count} {s}");
                v.push(spec(
                    &label,
                    &format!("{key}_{key_way}_{key_n}"),
                    "gbit_per_s",
                    g,
                    target,
                ));
            }
        }
    }
    v.extend([
        spec("outbound: UDP echo p50", "udp", "p50_us", us, Target::None),
        spec("outbound: UDP echo p99", "udp", "p99_us", us, Target::None),
        spec(
            "DNS lookup, cluster name p50",
            "dns",
            "p50_us",
            us,
            Target::None,
        ),
        spec(
            "DNS lookup, cluster name p99",
            "dns",
            "p99_us",
            us,
            Target::None,
        ),
    ]);
    v
}

/// Most memory the daemon may hold under the many-stream load, in MiB.
const DAEMON_RSS_MIB: f64 = 25.0;
/// Largest image, in MB.
const IMAGE_MB: f64 = 20.0;

fn value(v: f64, unit: &str) -> String {
    match unit {
        "Gbit/s" => format!("{v:.2} {unit}"),
        "µs" | "req/s" => format!("{v:.0} {unit}"),
        _ => format!("{v:.1} {unit}"),
    }
}

/// The row of one direct-vs-ours spec, with its medians.
fn spec_row(r: &PathResults, (label, key, field, unit, target): &Spec) -> (PathRow, Value) {
    let (d_rounds, o_rounds) = r.rounds.figures(key, field);
    let (d, o) = (median(d_rounds.clone()), median(o_rounds.clone()));
    let (d_errors, o_errors) = r.rounds.errors(key);
    let (versus, target_text, met) = match *target {
        Target::AddedAtMost(limit) => (
            format!("{:+.0} {unit}", o - d),
            format!("≤ +{limit:.0} {unit}"),
            Some(o - d <= limit),
        ),
        Target::RatioAtLeast(min) => (
            format!("{:.0} %", 100.0 * o / d),
            format!("≥ {:.0} % of direct", 100.0 * min),
            Some(o / d >= min),
        ),
        Target::None if *unit == "µs" => (format!("{:+.0} {unit}", o - d), "-".into(), None),
        Target::None => (format!("{:.0} %", 100.0 * o / d), "-".into(), None),
    };
    // A failed run of ours misses the target whatever the others measured.
    let met = if o_errors.is_empty() {
        met
    } else {
        Some(false)
    };
    let failed = |side: &str, errors: &[String], of: usize| {
        errors
            .first()
            .map(|e| format!("{} of {of} {side} runs failed, e.g. {e}", errors.len()))
    };
    let notes: Vec<String> = [
        failed("direct", &d_errors, d_rounds.len()),
        failed("ours", &o_errors, o_rounds.len()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let row = PathRow {
        metric: label.clone(),
        direct: value(d, unit),
        ours: value(o, unit),
        versus,
        target: target_text,
        met,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    };
    let doc = json!({
        "metric": label, "measure": key, "field": field, "unit": unit,
        "direct": d, "ours": o, "added": o - d, "ratio": o / d,
        "target": row.target, "met": met,
        "rounds": {"direct": d_rounds, "ours": o_rounds},
        "failed": {"direct": d_errors, "ours": o_errors},
    });
    (row, doc)
}

/// A row of ours alone (no direct counterpart).
fn own_row(metric: &str, ours: String, target: &str, met: Option<bool>) -> PathRow {
    PathRow {
        metric: metric.into(),
        direct: "-".into(),
        ours,
        versus: "-".into(),
        target: target.into(),
        met,
        note: None,
    }
}

impl PathResults {
    /// Median memory per role under load over the rounds.
    fn load_rss(&self, role: &str) -> (f64, Vec<f64>) {
        let v: Vec<f64> = self
            .rounds
            .load_rss
            .iter()
            .map(|m| m.get(role).copied().unwrap_or(f64::NAN))
            .collect();
        (median(v.clone()), v)
    }

    /// The specs of the measures that ran: the floor's only where it was installed
    /// (`floor.rs` needs root, `nsenter` and `nft`).
    fn measured_specs(&self) -> Vec<Spec> {
        let measured = |spec: &Spec| self.rounds.runs.contains_key(&spec.1);
        specs(&self.options).into_iter().filter(measured).collect()
    }

    /// The table rows and the JSON section.
    pub fn report(&self) -> (Vec<PathRow>, Value) {
        let connect = median(self.connect_s.clone());
        let mut rows = vec![own_row(
            "connect (image present)",
            format!("{connect:.3} s"),
            "-",
            None,
        )];
        let mut metrics = Vec::new();
        for spec in self.measured_specs() {
            let (row, doc) = spec_row(self, &spec);
            rows.push(row);
            metrics.push(doc);
        }
        let (_, tp) = images();
        rows.push(own_row(
            &format!("image {tp}"),
            format!("{:.1} MB", self.image_mb),
            "≤ 20 MB",
            Some(self.image_mb <= IMAGE_MB),
        ));
        let mut rss = serde_json::Map::new();
        for (role, _) in ROLES {
            let idle = self.idle_rss.get(role).copied().unwrap_or(f64::NAN);
            let (load, load_rounds) = self.load_rss(role);
            rows.push(own_row(
                &format!("RSS {role}, idle"),
                format!("{idle:.1} MiB"),
                "-",
                None,
            ));
            let (target, met) = if role == "daemon" {
                ("≤ 25 MiB", Some(load <= DAEMON_RSS_MIB))
            } else {
                ("-", None)
            };
            let label = format!("RSS {role}, {} streams (peak)", self.options.streams);
            rows.push(own_row(&label, format!("{load:.1} MiB"), target, met));
            rss.insert(
                role.into(),
                json!({"idle": idle, "under_load": load, "under_load_rounds": load_rounds}),
            );
        }
        let doc = json!({
            "method": "interleaved rounds (direct, ours); each figure is the median of its rounds",
            "rounds": self.options.rounds,
            "metrics": metrics,
            "connect_s": {"median": connect, "rounds": self.connect_s},
            "image": {"tag": tp, "mb": self.image_mb},
            "rss_mib": rss,
            "distributions_us": self.distributions(),
            "runs": self.runs_without_percentiles(),
            "targets_met": rows.iter().all(|r| r.met != Some(false)),
        });
        (rows, doc)
    }

    /// Per latency measure, the median percentile lines (direct, ours) at [`SUMMARY`]'s
    /// percentiles, listed once under `percentiles` (the chart draws every percentile).
    fn distributions(&self) -> Value {
        let summary = |line: Vec<[f64; 2]>| -> Vec<f64> {
            line.into_iter()
                .filter(|[p, _]| SUMMARY.contains(p))
                .map(|[_, us]| us)
                .collect()
        };
        let mut m = serde_json::Map::new();
        m.insert("percentiles".into(), json!(SUMMARY));
        for (key, _) in CHARTED {
            let (d, o) = self.rounds.distribution(key);
            m.insert(
                key.into(),
                json!({"direct": summary(d), "ours": summary(o)}),
            );
        }
        Value::Object(m)
    }

    /// Every round's answers, without their percentile lines (those are in `distributions_us`).
    fn runs_without_percentiles(&self) -> Value {
        let strip = |v: &[Value]| -> Vec<Value> {
            v.iter()
                .cloned()
                .map(|mut x| {
                    if let Some(o) = x.as_object_mut() {
                        o.remove("percentiles");
                    }
                    x
                })
                .collect()
        };
        let m: serde_json::Map<String, Value> = self
            .rounds
            .runs
            .iter()
            .map(|(k, (d, o))| (k.clone(), json!({"direct": strip(d), "ours": strip(o)})))
            .collect();
        Value::Object(m)
    }

    /// The chart's panels: the latency distributions, direct against ours.
    pub fn chart(&self) -> String {
        let panels: Vec<Panel> = CHARTED
            .iter()
            .map(|(key, title)| {
                let (d, o) = self.rounds.distribution(key);
                Panel {
                    title: (*title).into(),
                    lines: vec![
                        Line {
                            label: "direct".into(),
                            color: DIRECT_COLOR,
                            points: d,
                        },
                        Line {
                            label: "ours".into(),
                            color: OURS_COLOR,
                            points: o,
                        },
                    ],
                }
            })
            .collect();
        let title = format!(
            "Latency distributions, direct vs ours (median of {} rounds per percentile)",
            self.options.rounds
        );
        crate::bench_chart::svg(&title, &panels)
    }
}

/// The percentiles of the distributions in the JSON section.
const SUMMARY: [f64; 11] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9,
];

/// The latency measures the chart and `distributions_us` show, with their titles.
const CHARTED: [(&str, &str); 4] = [
    ("keepalive", "Intercepted keep-alive request, 1 KiB"),
    ("new_conn", "New connection + request (intercept)"),
    ("udp", "UDP echo (outbound path)"),
    ("dns", "DNS lookup of a cluster name"),
];

/// The section's table.
pub fn table(rows: &[PathRow]) -> String {
    let w = rows
        .iter()
        .map(|r| r.metric.chars().count())
        .max()
        .unwrap_or(0)
        .max(38);
    let mut out = format!(
        "{:<w$} {:>14} {:>14} {:>14}  {:<18} met\n",
        "metric", "direct", "ours", "ours vs direct", "target"
    );
    for r in rows {
        let met = match r.met {
            Some(true) => "✔",
            Some(false) => "✘",
            None => "",
        };
        out.push_str(&format!(
            "{:<w$} {:>14} {:>14} {:>14}  {:<18} {met}\n",
            r.metric, r.direct, r.ours, r.versus, r.target
        ));
    }
    for r in rows {
        if let Some(note) = &r.note {
            out.push_str(&format!("✘ {}: {note}\n", r.metric));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{measure_keys, options};
    use super::super::Rounds;
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn every_spec_names_a_measure() {
        let keys = measure_keys();
        for (label, key, ..) in specs(&options()) {
            assert!(keys.contains(&key), "{label}: no measure {key}");
        }
        for (key, _) in CHARTED {
            assert!(keys.iter().any(|k| k == key), "chart: no measure {key}");
        }
    }

    fn results() -> PathResults {
        let mut rounds = Rounds::default();
        let lat = |p50: f64| json!({"p50_us": p50, "p99_us": p50 * 2.0, "percentiles": [[50.0, p50], [99.0, p50 * 2.0]]});
        for (d, o) in [(100.0, 140.0), (110.0, 300.0), (90.0, 130.0)] {
            let e = rounds.runs.entry("keepalive".into()).or_default();
            e.0.push(lat(d));
            e.1.push(lat(o));
            let e = rounds.runs.entry("out_down_1".into()).or_default();
            e.0.push(json!({"gbit_per_s": d / 10.0}));
            e.1.push(json!({"gbit_per_s": o / 40.0}));
            let e = rounds.runs.entry("out_up_n".into()).or_default();
            e.0.push(json!({"gbit_per_s": 10.0}));
            e.1.push(json!({"gbit_per_s": 9.0}));
        }
        rounds.runs.get_mut("out_up_n").unwrap().1[1] = json!({"error": "connect: timed out"});
        rounds.load_rss = vec![BTreeMap::from([("daemon", 20.0)]); 3];
        PathResults {
            options: options(),
            rounds,
            connect_s: vec![1.0, 0.8, 1.2],
            image_mb: 19.0,
            idle_rss: BTreeMap::from([("daemon", 8.0)]),
        }
    }

    #[test]
    fn medians_of_rounds_and_targets() {
        let r = results();
        let (row, doc) = spec_row(&r, &specs(&r.options)[0]);
        // Medians 100 and 140: +40 µs is within +50 µs.
        assert_eq!(
            (row.direct.as_str(), row.ours.as_str()),
            ("100 µs", "140 µs")
        );
        assert_eq!((row.versus.as_str(), row.met), ("+40 µs", Some(true)));
        assert_eq!(doc["rounds"]["ours"], json!([140.0, 300.0, 130.0]));
        let spec = specs(&r.options)
            .into_iter()
            .find(|s| s.1 == "out_down_1")
            .unwrap();
        let (row, _) = spec_row(&r, &spec);
        // 3.5 of 10 Gbit/s: 35 %, under 80 %.
        assert_eq!((row.versus.as_str(), row.met), ("35 %", Some(false)));
        // One failed run of three: the median of the other two, the target missed, a note.
        let spec = specs(&r.options)
            .into_iter()
            .find(|s| s.1 == "out_up_n")
            .unwrap();
        let (row, doc) = spec_row(&r, &spec);
        assert_eq!((row.ours.as_str(), row.met), ("9.00 Gbit/s", Some(false)));
        let note = row.note.unwrap();
        assert!(note.contains("1 of 3 ours runs failed") && note.contains("timed out"));
        assert_eq!(doc["failed"]["ours"], json!(["connect: timed out"]));
        let (d, o) = r.rounds.distribution("keepalive");
        assert_eq!(d, vec![[50.0, 100.0], [99.0, 200.0]]);
        assert_eq!(o, vec![[50.0, 140.0], [99.0, 280.0]]);
        // The JSON keeps the summary's percentiles of the lines (here 50 and 99).
        let dist = r.distributions();
        assert_eq!(dist["percentiles"][4], json!(50.0));
        assert_eq!(dist["keepalive"]["ours"], json!([140.0, 280.0]));
    }

    #[test]
    fn floor_rows_only_where_the_floor_was_measured() {
        let mut r = results();
        let floor_rows = |r: &PathResults| {
            let specs = r.measured_specs();
            specs.iter().filter(|s| s.1.starts_with("floor_")).count()
        };
        assert_eq!(floor_rows(&r), 0);
        assert_eq!(
            r.measured_specs().len(),
            4,
            "keepalive p50, p99, out_down_1, out_up_n"
        );
        let lat = json!({"p50_us": 100.0, "p99_us": 200.0});
        r.rounds
            .runs
            .insert("floor_keepalive".into(), (vec![lat.clone()], vec![lat]));
        assert_eq!(floor_rows(&r), 2, "p50 and p99");
    }

    #[test]
    fn table_marks_targets() {
        let rows = vec![
            own_row("a", "1".into(), "≤ 2", Some(true)),
            own_row("b", "3".into(), "≤ 2", Some(false)),
            own_row("c", "3".into(), "-", None),
        ];
        let t = table(&rows);
        assert_eq!(t.lines().count(), 4);
        assert!(t.lines().nth(1).unwrap().ends_with('✔'));
        assert!(t.lines().nth(2).unwrap().ends_with('✘'));
        // A label longer than the column widens it for every row: the columns stay aligned.
        let long = "l".repeat(50);
        let t = table(&[own_row(&long, "1".into(), "-", None), rows[0].clone()]);
        // The direct column (right-aligned, 14 wide after the label and a space) ends at
        // character 64 of every line: "direct" in the header, "-" in the rows.
        let ends: Vec<_> = t.lines().map(|l| l.chars().nth(64)).collect();
        assert_eq!(ends, vec![Some('t'), Some('-'), Some('-')], "{t}");
    }
}
