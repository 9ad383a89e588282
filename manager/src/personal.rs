//! Personal intercepts in the manager: which intercepts may share a workload port,
//! and team mode. A global intercept (no filter) owns its port alone; personal intercepts
//! (HTTP header/path filters) share a port as long as no two have identical filters; wiretaps
//! share with everybody.

use protocol::filters::HttpFilter;
use protocol::manager::{InterceptInfo, InterceptSpec};

/// Environment variable that turns team mode on (`true`/`1`/`yes`).
pub const ENV_TEAM_MODE: &str = "TP_TEAM_MODE";

/// Whether `TP_TEAM_MODE` asks for team mode.
pub fn team_mode_from_env() -> bool {
    std::env::var(ENV_TEAM_MODE).is_ok_and(|v| parse_bool(&v))
}

fn parse_bool(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "on"
    )
}

/// Why a new intercept (with resolved `spec`) cannot share service port `port` with `other`,
/// an intercept of the same workload port; `None` when they can coexist.
pub fn conflict(spec: &InterceptSpec, other: &InterceptInfo, port: u16) -> Option<String> {
    let o = other.spec.as_ref()?;
    // A wiretap gets copies: it shares a port with an intercept and with other wiretaps.
    if crate::wiretap::is_wiretap(spec) || crate::wiretap::is_wiretap(o) {
        return None;
    }
    let (mine, theirs) = (
        HttpFilter::from_spec(spec).ok().flatten(),
        HttpFilter::from_spec(o).ok().flatten(),
    );
    let who = format!("{} (intercept \"{}\")", o.client, o.name);
    match (mine, theirs) {
        (None, None) => Some(format!(
            "port {port} of {} is already intercepted by {who}; leave it first",
            spec.workload
        )),
        (Some(_), None) => Some(format!(
            "port {port} of {} is already intercepted by {who} for all TCP connections: a personal intercept cannot share the port until that intercept leaves",
            spec.workload
        )),
        (None, Some(_)) => Some(format!(
            "port {port} of {} is already intercepted by {who} for some HTTP requests: a global intercept cannot share the port; add --http-header or --http-path-* filters (or --http-header=auto) to make this one personal",
            spec.workload
        )),
        (Some(a), Some(b)) if a == b => Some(format!(
            "port {port} of {} is already intercepted by {who} with the same filters ({}); choose other --http-header/--http-path-* values",
            spec.workload,
            a.describe().replace("\n  ", " ")
        )),
        (Some(_), Some(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(headers: &[&str], prefix: &str) -> InterceptSpec {
        InterceptSpec {
            name: "mine".into(),
            workload: "web".into(),
            http_headers: headers
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            http_path_prefix: prefix.into(),
            ..Default::default()
        }
    }

    fn other(headers: &[&str], prefix: &str) -> InterceptInfo {
        let mut s = spec(headers, prefix);
        s.name = "theirs".into();
        s.client = "bob@host".into();
        InterceptInfo {
            spec: Some(s),
            ..Default::default()
        }
    }

    #[test]
    fn global_and_personal_never_share_a_port() {
        let e = conflict(&spec(&[], ""), &other(&[], ""), 8080).unwrap();
        assert!(
            e.contains("already intercepted by bob@host (intercept \"theirs\")"),
            "{e}"
        );
        let e = conflict(&spec(&["x=1"], ""), &other(&[], ""), 8080).unwrap();
        assert!(e.contains("for all TCP connections"), "{e}");
        let e = conflict(&spec(&[], ""), &other(&["x=1"], ""), 8080).unwrap();
        assert!(
            e.contains("a global intercept cannot share the port"),
            "{e}"
        );
    }

    #[test]
    fn personal_intercepts_share_unless_their_filters_are_identical() {
        assert_eq!(
            conflict(&spec(&["x=1"], ""), &other(&["x=2"], ""), 80),
            None
        );
        assert_eq!(
            conflict(&spec(&["x=1"], "/a"), &other(&["x=1"], ""), 80),
            None
        );
        let e = conflict(&spec(&["x=1"], "/a"), &other(&["x=1"], "/a"), 80).unwrap();
        assert!(
            e.contains(
                "with the same filters (HTTP requests with headers 'x: 1' and path prefix '/a')"
            ),
            "{e}"
        );
    }

    #[test]
    fn team_mode_values() {
        assert!(parse_bool("true") && parse_bool("1") && parse_bool(" TRUE "));
        assert!(!parse_bool("false") && !parse_bool("") && !parse_bool("no"));
    }
}
