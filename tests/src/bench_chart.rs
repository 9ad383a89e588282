//! The benchmark's chart (`tp-bench --chart FILE.svg`): latency distributions, direct against
//! ours, as percentile lines in a hand-written SVG (no plotting crate). One panel per measure;
//! x is the percentile on a "nines" scale (10, 50, 90, 99, 99.9), y the latency in µs on a
//! logarithmic scale (whole decades), so a tail of milliseconds and a median of microseconds
//! both stay readable.

use std::fmt::Write as _;

/// One line of a panel: `[percentile, µs]` points.
pub struct Line {
    pub label: String,
    pub color: &'static str,
    pub points: Vec<[f64; 2]>,
}

/// One chart panel.
pub struct Panel {
    pub title: String,
    pub lines: Vec<Line>,
}

/// Colours of the direct path and ours.
pub const DIRECT_COLOR: &str = "#1f77b4";
pub const OURS_COLOR: &str = "#d62728";

const PANEL_W: f64 = 520.0;
const PANEL_H: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 45.0;
/// The x axis ends at 99.9 (three nines).
const MAX_NINES: f64 = 3.0;
const COLUMNS: usize = 2;

/// Where percentile `p` sits on the "nines" scale: 90 → 1, 99 → 2, 99.9 → 3.
pub fn nines(p: f64) -> f64 {
    -(1.0 - (p / 100.0).min(0.999)).log10()
}

/// The decades the y axis spans: (log10 of its bottom, log10 of its top), whole numbers around
/// the positive values, at least one decade.
pub fn decades(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if hi <= 0.0 {
        return (0.0, 1.0);
    }
    let (lo, hi) = (lo.log10().floor(), hi.log10().ceil());
    (lo, hi.max(lo + 1.0))
}

/// A tick label of `v` µs.
fn us_label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{} ms", v / 1000.0)
    } else {
        format!("{v}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The axes, ticks and title of one panel whose y axis spans the decades `(lo, hi)`; origin
/// (ox, oy).
fn axes(out: &mut String, panel: &Panel, ox: f64, oy: f64, (lo, hi): (f64, f64)) {
    let (w, h) = (PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
    let (x0, y0) = (ox + LEFT, oy + TOP + h);
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"##,
        ox + LEFT,
        oy + 22.0,
        escape(&panel.title)
    );
    let _ = write!(
        out,
        r##"<rect x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{h:.1}" fill="none" stroke="#888"/>"##,
        oy + TOP
    );
    for p in [10.0, 50.0, 90.0, 99.0, 99.9] {
        let x = x0 + nines(p) / MAX_NINES * w;
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{y0:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">p{p}</text>"##,
            oy + TOP,
            y0 + 16.0
        );
    }
    let mut decade = lo;
    while decade <= hi {
        let y = y0 - h * (decade - lo) / (hi - lo);
        let _ = write!(
            out,
            r##"<line x1="{x0:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            x0 + w,
            x0 - 6.0,
            y + 4.0,
            us_label(10f64.powi(decade as i32))
        );
        decade += 1.0;
    }
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">percentile</text><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">µs</text>"##,
        x0 + w / 2.0,
        y0 + 34.0,
        ox + 18.0,
        oy + TOP + h / 2.0,
        ox + 18.0,
        oy + TOP + h / 2.0
    );
}

/// One panel at (ox, oy): axes, a polyline and a legend entry per line.
fn panel(out: &mut String, panel: &Panel, ox: f64, oy: f64) {
    let (lo, hi) = decades(
        panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p[1])),
    );
    axes(out, panel, ox, oy, (lo, hi));
    let (w, h) = (PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
    let (x0, y0) = (ox + LEFT, oy + TOP + h);
    for (i, line) in panel.lines.iter().enumerate() {
        let points: Vec<String> = line
            .points
            .iter()
            .filter(|p| p[1].is_finite() && p[1] > 0.0)
            .map(|p| {
                let x = x0 + nines(p[0]) / MAX_NINES * w;
                let y = y0 - ((p[1].log10() - lo) / (hi - lo)).clamp(0.0, 1.0) * h;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            out,
            r##"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"##,
            line.color,
            points.join(" ")
        );
        let ly = oy + TOP + 16.0 + 16.0 * i as f64;
        let _ = write!(
            out,
            r##"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"##,
            x0 + 10.0,
            x0 + 30.0,
            line.color,
            x0 + 36.0,
            ly + 4.0,
            escape(&line.label)
        );
    }
}

/// The whole SVG document: `title` above the panels, two per row.
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let rows = panels.len().div_ceil(COLUMNS).max(1);
    let width = PANEL_W * COLUMNS as f64;
    let height = 40.0 + PANEL_H * rows as f64;
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="20" y="26" font-size="16" font-weight="bold">{}</text>"##,
        escape(title)
    );
    for (i, p) in panels.iter().enumerate() {
        let ox = PANEL_W * (i % COLUMNS) as f64;
        let oy = 40.0 + PANEL_H * (i / COLUMNS) as f64;
        panel(&mut out, p, ox, oy);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert!(nines(50.0) < nines(51.0));
        assert_eq!(decades([12.0, 83.0, 4500.0].into_iter()), (1.0, 4.0));
        assert_eq!(decades([10.0, 10.0].into_iter()), (1.0, 2.0));
        assert_eq!(decades([0.0, f64::NAN].into_iter()), (0.0, 1.0));
        assert_eq!(us_label(100.0), "100");
        assert_eq!(us_label(10000.0), "10 ms");
    }

    #[test]
    fn document_has_a_line_per_series() {
        let line = |label: &str, color, k: f64| Line {
            label: label.into(),
            color,
            points: (1..=99).map(|p| [f64::from(p), k * f64::from(p)]).collect(),
        };
        let panels = [
            Panel {
                title: "keep-alive <1 KiB>".into(),
                lines: vec![
                    line("direct", DIRECT_COLOR, 1.0),
                    line("ours", OURS_COLOR, 2.0),
                ],
            },
            Panel {
                title: "udp".into(),
                lines: vec![line("direct", DIRECT_COLOR, 1.0)],
            },
            Panel {
                title: "dns".into(),
                lines: vec![],
            },
        ];
        let s = svg("t & u", &panels);
        assert!(s.starts_with("<svg ") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches("<polyline").count(), 3);
        assert!(s.contains("keep-alive &lt;1 KiB&gt;") && s.contains("t &amp; u"));
        assert!(s.contains(r#"height="680""#), "two rows of panels");
    }
}
