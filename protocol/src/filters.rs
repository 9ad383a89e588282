//! Personal-intercept filters: which HTTP requests of an intercepted port go to the
//! intercepting client. One place for the rules every role shares: the CLI validates the flags
//! with them, the manager resolves `auto` and detects identical filters, and the agent matches
//! each request against them.
//!
//! A filter is a set of header conditions (`name=value`, all must hold; names
//! case-insensitive, values exact) and at most one path condition (equal, prefix, or a regular
//! expression that must match the whole path). No condition at all = a global intercept.

use crate::manager::InterceptSpec;

/// The header `auto` stands for.
pub const INTERCEPT_ID_HEADER: &str = "x-telepresence-intercept-id";
/// `--http-header auto`: the intercept id header with this intercept's id.
pub const AUTO: &str = "auto";
/// `--http-header all`: all traffic (a global intercept, even in team mode).
pub const ALL: &str = "all";

/// Why an intercept's HTTP filter flags are invalid; the text is what the CLI prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A `--http-header` value has no `=`/`:`.
    #[error("invalid --http-header {0:?}: expected NAME=VALUE, \"auto\" or \"all\"")]
    NoSeparator(String),
    /// A `--http-header` name is not an HTTP token.
    #[error("invalid --http-header {flag:?}: {name:?} is not a valid HTTP header name")]
    BadName {
        /// The flag value.
        flag: String,
        /// The name in it.
        name: String,
    },
    /// A `--http-header` value has control characters.
    #[error("invalid --http-header {0:?}: the value contains control characters")]
    ControlInValue(String),
    /// A path flag does not start with `/`.
    #[error("invalid {flag} {path:?}: a path starts with '/'")]
    RelativePath {
        /// The flag.
        flag: &'static str,
        /// Its value.
        path: String,
    },
    /// A path flag has spaces or control characters.
    #[error(
        "invalid {flag} {path:?}: spaces and control characters cannot appear in a request path"
    )]
    BadPathChars {
        /// The flag.
        flag: &'static str,
        /// Its value.
        path: String,
    },
    /// `--http-path-regex` does not compile.
    #[error("invalid --http-path-regex {src:?}: {reason}")]
    BadRegex {
        /// The expression.
        src: String,
        /// What the regex crate said.
        reason: String,
    },
    /// `all` combined with filters.
    #[error("--http-header all (every request) cannot be combined with other --http-header or --http-path-* filters")]
    AllWithFilters,
    /// `auto` reached [`HttpFilter::from_spec`] unresolved.
    #[error("--http-header auto was not resolved to the intercept id")]
    UnresolvedAuto,
    /// More than one path flag.
    #[error("give at most one of --http-path-equal, --http-path-prefix and --http-path-regex")]
    SeveralPaths,
}

/// How the request path must look.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// `--http-path-equal`.
    Equal(String),
    /// `--http-path-prefix`.
    Prefix(String),
    /// The source as given, and the compiled expression anchored at both ends.
    Regex(String, regex::Regex),
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathMatch::Equal(a), PathMatch::Equal(b)) => a == b,
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
            (PathMatch::Regex(a, _), PathMatch::Regex(b, _)) => a == b,
            _ => false,
        }
    }
}

/// A compiled personal-intercept filter.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpFilter {
    /// (lower-case name, exact value), sorted and without duplicates.
    headers: Vec<(String, String)>,
    path: Option<PathMatch>,
}

/// Whether `b` may appear in a header name (RFC 9110 `tchar`).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses one `--http-header` value: `name=value` (or `name: value`). The name is returned in
/// lower case. `auto`/`all` are not accepted here (see [`resolve`]).
pub fn parse_header(s: &str) -> Result<(String, String), FilterError> {
    // The first of '=' and ':' separates (values may contain either).
    let (k, v) = s
        .find(['=', ':'])
        .map(|i| (&s[..i], &s[i + 1..]))
        .ok_or_else(|| FilterError::NoSeparator(s.to_string()))?;
    let k = k.trim();
    if k.is_empty() || !k.bytes().all(is_tchar) {
        return Err(FilterError::BadName {
            flag: s.to_string(),
            name: k.to_string(),
        });
    }
    let v = v.trim();
    if v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(FilterError::ControlInValue(s.to_string()));
    }
    Ok((k.to_ascii_lowercase(), v.to_string()))
}

fn check_path(flag: &'static str, p: &str) -> Result<(), FilterError> {
    if !p.starts_with('/') {
        return Err(FilterError::RelativePath {
            flag,
            path: p.to_string(),
        });
    }
    if p.bytes().any(|b| b <= 0x20 || b == 0x7f) {
        return Err(FilterError::BadPathChars {
            flag,
            path: p.to_string(),
        });
    }
    Ok(())
}

/// Whether a spec asks for a personal intercept (any filter flag other than `all`).
pub fn is_personal(spec: &InterceptSpec) -> bool {
    spec.http_headers.iter().any(|h| h != ALL)
        || !spec.http_path_equal.is_empty()
        || !spec.http_path_prefix.is_empty()
        || !spec.http_path_regex.is_empty()
}

/// Completes a spec's filters before the intercept is created: `auto` becomes
/// `x-telepresence-intercept-id=<intercept_id>`; with `team_mode`, a spec without any filter
/// gets `auto`; `all` is dropped (a global intercept). Header names are normalised to lower
/// case, and everything is validated.
pub fn resolve(
    spec: &mut InterceptSpec,
    intercept_id: &str,
    team_mode: bool,
) -> Result<(), FilterError> {
    let all = spec.http_headers.iter().any(|h| h == ALL);
    if all && is_personal(spec) {
        return Err(FilterError::AllWithFilters);
    }
    if all {
        spec.http_headers.clear();
        return Ok(());
    }
    if team_mode && !is_personal(spec) {
        spec.http_headers.push(AUTO.into());
    }
    let mut out = Vec::with_capacity(spec.http_headers.len());
    for h in &spec.http_headers {
        let (k, v) = if h == AUTO {
            (INTERCEPT_ID_HEADER.to_string(), intercept_id.to_string())
        } else {
            parse_header(h)?
        };
        out.push(format!("{k}={v}"));
    }
    out.sort();
    out.dedup();
    spec.http_headers = out;
    HttpFilter::from_spec(spec).map(|_| ())
}

impl HttpFilter {
    /// The filter of a (resolved) spec; `None` when it has no condition (a global intercept).
    pub fn from_spec(spec: &InterceptSpec) -> Result<Option<HttpFilter>, FilterError> {
        let mut headers = Vec::new();
        for h in spec.http_headers.iter().filter(|h| *h != ALL) {
            if h == AUTO {
                return Err(FilterError::UnresolvedAuto);
            }
            headers.push(parse_header(h)?);
        }
        headers.sort();
        headers.dedup();
        let mut paths = Vec::new();
        if !spec.http_path_equal.is_empty() {
            check_path("--http-path-equal", &spec.http_path_equal)?;
            paths.push(PathMatch::Equal(spec.http_path_equal.clone()));
        }
        if !spec.http_path_prefix.is_empty() {
            check_path("--http-path-prefix", &spec.http_path_prefix)?;
            paths.push(PathMatch::Prefix(spec.http_path_prefix.clone()));
        }
        if !spec.http_path_regex.is_empty() {
            let src = &spec.http_path_regex;
            let re =
                regex::Regex::new(&format!("^(?:{src})$")).map_err(|e| FilterError::BadRegex {
                    src: src.clone(),
                    reason: e.to_string(),
                })?;
            paths.push(PathMatch::Regex(src.clone(), re));
        }
        if paths.len() > 1 {
            return Err(FilterError::SeveralPaths);
        }
        let path = paths.pop();
        if headers.is_empty() && path.is_none() {
            return Ok(None);
        }
        Ok(Some(HttpFilter { headers, path }))
    }

    /// Whether a request matches. `path` is the request path without the query; `has(name,
    /// value)` tells whether the request carries header `name` (lower case) with exactly
    /// `value`.
    pub fn matches(&self, path: &str, has: impl Fn(&str, &str) -> bool) -> bool {
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Equal(p)) => path == p,
            Some(PathMatch::Prefix(p)) => path.starts_with(p.as_str()),
            Some(PathMatch::Regex(_, re)) => re.is_match(path),
        };
        path_ok && self.headers.iter().all(|(k, v)| has(k, v))
    }

    /// How many conditions it has (more specific filters are tried first).
    pub fn conditions(&self) -> usize {
        self.headers.len() + usize::from(self.path.is_some())
    }

    /// The header conditions (lower-case name, value).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The path condition.
    pub fn path(&self) -> Option<&PathMatch> {
        self.path.as_ref()
    }

    /// What it matches, for the `Intercepting` line: the first line a sentence, then one
    /// condition per line.
    pub fn describe(&self) -> String {
        let mut s = String::from("HTTP requests");
        if !self.headers.is_empty() {
            s.push_str(" with headers");
            for (k, v) in &self.headers {
                s.push_str(&format!("\n  '{k}: {v}'"));
            }
        }
        if let Some(p) = &self.path {
            s.push_str(if self.headers.is_empty() {
                " with path "
            } else {
                "\n  and path "
            });
            match p {
                PathMatch::Equal(p) => s.push_str(&format!("equal to '{p}'")),
                PathMatch::Prefix(p) => s.push_str(&format!("prefix '{p}'")),
                PathMatch::Regex(p, _) => s.push_str(&format!("matching '{p}'")),
            }
        }
        s
    }
}

/// The `Intercepting` text of a resolved spec.
pub fn disposition(spec: &InterceptSpec) -> String {
    match HttpFilter::from_spec(spec) {
        Ok(Some(f)) => f.describe(),
        _ => "all TCP connections".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(headers: &[&str], eq: &str, prefix: &str, re: &str) -> InterceptSpec {
        InterceptSpec {
            http_headers: headers
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            http_path_equal: eq.into(),
            http_path_prefix: prefix.into(),
            http_path_regex: re.into(),
            ..Default::default()
        }
    }

    fn has<'a>(hs: &'a [(&'a str, &'a str)]) -> impl Fn(&str, &str) -> bool + 'a {
        move |k, v| {
            hs.iter()
                .any(|(hk, hv)| hk.eq_ignore_ascii_case(k) && *hv == v)
        }
    }

    #[test]
    fn auto_and_team_mode_resolve_to_the_intercept_id() {
        let mut s = spec(&["auto"], "", "", "");
        resolve(&mut s, "u1:web", false).unwrap();
        assert_eq!(s.http_headers, ["x-telepresence-intercept-id=u1:web"]);
        let mut s = spec(&[], "", "", "");
        resolve(&mut s, "u1:web", false).unwrap();
        assert!(s.http_headers.is_empty() && !is_personal(&s));
        resolve(&mut s, "u1:web", true).unwrap();
        assert_eq!(s.http_headers, ["x-telepresence-intercept-id=u1:web"]);
        let mut s = spec(&["all"], "", "", "");
        resolve(&mut s, "u1:web", true).unwrap();
        assert!(s.http_headers.is_empty(), "all = global even in team mode");
        let mut s = spec(&["all", "a=b"], "", "", "");
        assert!(resolve(&mut s, "i", false)
            .unwrap_err()
            .to_string()
            .contains("cannot be combined"));
        // a path filter alone makes a personal intercept: team mode adds nothing
        let mut s = spec(&[], "/x", "", "");
        resolve(&mut s, "i", true).unwrap();
        assert!(s.http_headers.is_empty());
    }

    #[test]
    fn header_names_are_case_insensitive_values_exact() {
        let mut s = spec(&["X-Dev=Alice", "x-dev=Alice"], "", "", "");
        resolve(&mut s, "i", false).unwrap();
        assert_eq!(
            s.http_headers,
            ["x-dev=Alice"],
            "normalised and deduplicated"
        );
        let f = HttpFilter::from_spec(&s).unwrap().unwrap();
        assert!(f.matches("/", has(&[("X-DEV", "Alice")])));
        assert!(!f.matches("/", has(&[("x-dev", "alice")])));
        assert!(!f.matches("/", has(&[])));
        assert_eq!(f.describe(), "HTTP requests with headers\n  'x-dev: Alice'");
    }

    #[test]
    fn all_headers_must_match() {
        let s = spec(&["a=1", "b: 2"], "", "", "");
        let f = HttpFilter::from_spec(&s).unwrap().unwrap();
        assert!(f.matches("/", has(&[("a", "1"), ("b", "2")])));
        assert!(!f.matches("/", has(&[("a", "1")])));
        assert_eq!(f.conditions(), 2);
    }

    #[test]
    fn path_filters() {
        let eq = HttpFilter::from_spec(&spec(&[], "/api", "", ""))
            .unwrap()
            .unwrap();
        assert!(eq.matches("/api", has(&[])));
        assert!(!eq.matches("/api/x", has(&[])));
        let pre = HttpFilter::from_spec(&spec(&[], "", "/api", ""))
            .unwrap()
            .unwrap();
        assert!(pre.matches("/api/x", has(&[])) && !pre.matches("/ap", has(&[])));
        let re = HttpFilter::from_spec(&spec(&[], "", "", "/v[0-9]+/.*"))
            .unwrap()
            .unwrap();
        assert!(re.matches("/v2/users", has(&[])));
        assert!(
            !re.matches("/x/v2/users", has(&[])),
            "the whole path must match"
        );
        assert_eq!(
            re.describe(),
            "HTTP requests with path matching '/v[0-9]+/.*'"
        );
        let both = HttpFilter::from_spec(&spec(&["a=1"], "", "/api", ""))
            .unwrap()
            .unwrap();
        assert_eq!(
            both.describe(),
            "HTTP requests with headers\n  'a: 1'\n  and path prefix '/api'"
        );
        assert!(!both.matches("/api", has(&[])));
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        for (s, want) in [
            (spec(&["novalue"], "", "", ""), "expected NAME=VALUE"),
            (
                spec(&["bad name=1"], "", "", ""),
                "not a valid HTTP header name",
            ),
            (spec(&["=1"], "", "", ""), "not a valid HTTP header name"),
            (spec(&["a=b\u{1}"], "", "", ""), "control characters"),
            (spec(&[], "api", "", ""), "starts with '/'"),
            (spec(&[], "/a b", "", ""), "spaces"),
            (spec(&[], "", "", "("), "invalid --http-path-regex"),
            (spec(&[], "/a", "/b", ""), "at most one"),
        ] {
            let mut s2 = s.clone();
            let e = resolve(&mut s2, "i", false).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(disposition(&spec(&[], "", "", "")), "all TCP connections");
    }

    #[test]
    fn identical_filters_compare_equal() {
        let mut a = spec(&["B=2", "a=1"], "", "/p", "");
        let mut b = spec(&["a=1", "b=2"], "", "/p", "");
        resolve(&mut a, "x", false).unwrap();
        resolve(&mut b, "y", false).unwrap();
        assert_eq!(
            HttpFilter::from_spec(&a).unwrap(),
            HttpFilter::from_spec(&b).unwrap()
        );
        let c = spec(&["a=1"], "", "/p", "");
        assert_ne!(
            HttpFilter::from_spec(&a).unwrap(),
            HttpFilter::from_spec(&c).unwrap()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Arbitrary flag values never panic: they resolve to a valid filter or an error.
        #[test]
        fn arbitrary_flags_never_panic(
            headers in proptest::collection::vec(".{0,20}", 0..4),
            eq in "(/.{0,10})?",
            re in ".{0,12}",
            path in ".{0,30}",
        ) {
            let mut s = spec(&[], &eq, "", &re);
            s.http_headers = headers;
            if resolve(&mut s, "id", false).is_ok() {
                if let Ok(Some(f)) = HttpFilter::from_spec(&s) {
                    let _ = f.matches(&path, |_, _| true);
                    let _ = f.describe();
                }
            }
        }

        /// A request carrying exactly the filter's headers (in any case) and a path with the
        /// filter's prefix always matches; dropping one header never does.
        #[test]
        fn matching_is_exact_on_values_and_case_blind_on_names(
            pairs in proptest::collection::btree_map("[a-z][a-z0-9-]{0,8}", "[ -~&&[^ ]]{1,10}", 1..4),
            suffix in "[a-z/]{0,8}",
            upper in any::<bool>(),
        ) {
            let flags: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut s = spec(&[], "", "/p", "");
            s.http_headers = flags;
            resolve(&mut s, "id", false).unwrap();
            let f = HttpFilter::from_spec(&s).unwrap().unwrap();
            let req: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (if upper { k.to_ascii_uppercase() } else { k.clone() }, v.clone()))
                .collect();
            let path = format!("/p{suffix}");
            let has_all = |k: &str, v: &str| req.iter().any(|(hk, hv)| hk.eq_ignore_ascii_case(k) && hv == v);
            prop_assert!(f.matches(&path, has_all));
            let first = req[0].0.clone();
            let has_but_one = |k: &str, v: &str| {
                !first.eq_ignore_ascii_case(k)
                    && req.iter().any(|(hk, hv)| hk.eq_ignore_ascii_case(k) && hv == v)
            };
            prop_assert!(!f.matches(&path, has_but_one));
        }
    }
}
