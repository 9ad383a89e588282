//! End-to-end tests of `telepresence wiretap` on the real Docker engine, observed from outside as
//! a caller in the project sees them: the original answers every request while the handlers
//! (test apps logging each request they receive) get a copy of each; two wiretaps and an
//! intercept on one port (the intercept answers, both wiretaps get copies); a handler stopped
//! mid-way breaks no caller and its dropped copies show in `status` and `list`; bad input leaves
//! nothing behind. Run serially (`--test-threads=1`), like every end-to-end test.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use std::time::Duration;
use tests::*;

const T: Duration = Duration::from_secs(30);

fn project() -> Project {
    let p = Project::up_with(
        "  web:\n    image: @APP@\n    command: [\"serve\", \"--http\", \"8080\", \"--name\", \"web\"]\n    expose: [\"8080\"]\n",
        "",
    )
    .unwrap();
    p.wait_for("http://web:8080/", "web", T).unwrap();
    p
}

/// A handler started by hand in the daemon's network namespace (as a user would with
/// `docker run --network container:tp-…`), logging every request it receives.
struct Handler(String);

impl Handler {
    fn start(user: &User, p: &Project, name: &str, port: u16) -> Handler {
        let st = user.tp(&["status"]).ok();
        let network = kv(&st.stdout, "Container network");
        let (app, _) = images();
        let container = format!("{}-{name}", p.name);
        docker(&[
            "run",
            "-d",
            "--name",
            &container,
            "--network",
            &network,
            app.as_str(),
            "serve",
            "--http",
            &port.to_string(),
            "--name",
            name,
            "--log-requests",
        ])
        .unwrap();
        Handler(container)
    }

    /// The requests it logged whose path starts with `prefix`.
    fn seen(&self, prefix: &str) -> Vec<String> {
        seen_by(&self.0, prefix)
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// The requests a handler container logged (`<name> GET <path>`) whose path starts with `prefix`.
fn seen_by(container: &str, prefix: &str) -> Vec<String> {
    docker(&["logs", container])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(2).is_some_and(|p| p.starts_with(prefix)))
        .map(str::to_string)
        .collect()
}

/// Sends `n` requests `GET /?<tag>=<i>` (one connection each) and asserts every one is answered
/// by `by`.
fn requests(p: &Project, tag: &str, n: usize, by: &str) {
    for i in 0..n {
        let url = format!("http://web:8080/?{tag}={i}");
        assert_eq!(p.get(&url).unwrap(), by, "{url}");
    }
}

/// Waits until `seen` holds the `n` requests tagged `tag`.
fn all_copied(what: &str, n: usize, tag: &str, seen: impl Fn(&str) -> Vec<String>) {
    let prefix = format!("/?{tag}=");
    eventually(what, T, || seen(&prefix).len() >= n);
    let got = seen(&prefix);
    for i in 0..n {
        let want = format!("{prefix}{i}");
        assert!(got.iter().any(|l| l.ends_with(&want)), "{want} in {got:?}");
    }
    assert_eq!(got.len(), n, "one copy of each request: {got:?}");
}

/// The `Copies dropped` of wiretap `name` in `list`.
fn dropped_in_list(user: &User, p: &Project, name: &str) -> u64 {
    let l = user
        .tp(&["list", "-n", &p.name, "--output", "json"])
        .ok()
        .stdout;
    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["intercepts"].as_array().cloned().unwrap_or_default())
        .find(|i| i["name"] == name)
        .and_then(|i| i["wiretap_dropped"].as_u64())
        .unwrap_or_else(|| panic!("no wiretap {name} in {l}"))
}

#[test]
fn wiretaps_copy_every_request_and_never_break_callers() {
    if !engine_available() {
        return;
    }
    let p = project();
    let user = User::new();
    user.connect(&p);

    // A wiretap whose handler runs on its own.
    let r = user
        .tp(&[
            "wiretap",
            "web",
            "-n",
            &p.name,
            "--name",
            "tap1",
            "-p",
            "9095:8080",
        ])
        .ok();
    assert!(
        r.stdout.starts_with("Using ComposeService web\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("   Intercept name: tap1\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(": 127.0.0.1:9095\n"), "{}", r.stdout);
    assert!(
        r.stdout.contains(": a copy of all TCP connections\n"),
        "{}",
        r.stdout
    );
    let tap1 = Handler::start(&user, &p, "tap1", 9095);
    requests(&p, "a", 10, "web");
    all_copied("tap1 logs a copy of each request", 10, "a", |pre| {
        tap1.seen(pre)
    });
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(
        l.stdout.lines().any(|x| x == "web: wiretapped"),
        "{}",
        l.stdout
    );
    assert!(l.stdout.contains("Copies dropped: 0\n"), "{}", l.stdout);

    // An intercept and a second wiretap (run by the CLI with --docker-run) on the same port:
    // the intercept answers, both wiretaps get a copy of every request.
    let mut icpt = user
        .intercept_cmd(&p, "web", 9096, 8080, &[], &[], "icpt")
        .spawn()
        .unwrap();
    p.wait_for("http://web:8080/", "icpt", T).unwrap();
    let (app, _) = images();
    let mut tap2 = user
        .command(&[
            "wiretap",
            "web",
            "-n",
            &p.name,
            "--name",
            "tap2",
            "-p",
            "9097:8080",
            "--docker-run",
            "--",
            app.as_str(),
            "serve",
            "--http",
            "9097",
            "--name",
            "tap2",
            "--log-requests",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tap2_seen = |pre: &str| seen_by("intercept-tap2-9097", pre);
    eventually("the second wiretap is active", T, || {
        p.get("http://web:8080/?probe=1").is_ok() && !tap2_seen("/?probe=").is_empty()
    });
    requests(&p, "b", 10, "icpt");
    all_copied("tap1 copies beside an intercept", 10, "b", |pre| {
        tap1.seen(pre)
    });
    all_copied("tap2 copies beside an intercept", 10, "b", tap2_seen);
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(
        l.stdout.lines().any(|x| x == "web: intercepted"),
        "{}",
        l.stdout
    );
    // tap1 dropped nothing; tap2 may have dropped the probes that came before its handler
    // listened, and drops nothing once it does.
    assert_eq!(dropped_in_list(&user, &p, "tap1"), 0, "{}", l.stdout);
    let tap2_dropped = dropped_in_list(&user, &p, "tap2");
    user.tp(&["leave", "web"]).ok();
    wait_exit(&mut icpt, T);
    p.wait_for("http://web:8080/", "web", T).unwrap();

    // tap1's handler dies: every caller is still answered by the original, tap2 still gets its
    // copies, and tap1's dropped copies are counted.
    docker(&["rm", "-f", &tap1.0]).unwrap();
    requests(&p, "c", 10, "web");
    all_copied("tap2 copies after tap1's handler died", 10, "c", tap2_seen);
    eventually("tap1's dropped copies are counted", T, || {
        dropped_in_list(&user, &p, "tap1") > 0
    });
    assert!(dropped_in_list(&user, &p, "tap1") <= 10);
    assert_eq!(dropped_in_list(&user, &p, "tap2"), tap2_dropped);
    let st = user.tp(&["status"]).ok();
    assert!(st.stdout.contains("    tap1: "), "{}", st.stdout);
    assert!(st.stdout.contains("(wiretap, "), "{}", st.stdout);
    assert!(st.stdout.contains("    tap2: "), "{}", st.stdout);
    assert!(
        st.stdout
            .contains(&format!("(wiretap, {tap2_dropped} copies dropped)")),
        "{}",
        st.stdout
    );

    // Leaving ends each wiretap (tap2's handler exits with it).
    user.tp(&["leave", "tap2"]).ok();
    wait_exit(&mut tap2, T);
    user.tp(&["leave", "tap1"]).ok();
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(!l.stdout.contains("wiretapped"), "{}", l.stdout);
    requests(&p, "d", 3, "web");
    drop(tap1);
    user.tp(&["quit", "-s"]).ok();
    assert_clean("after quit -s");
}

#[test]
fn bad_wiretaps_leave_nothing_behind() {
    if !engine_available() {
        return;
    }
    let p = project();
    let user = User::new();
    user.connect(&p);
    let one_line = |r: &Run| {
        assert_ne!(r.code, 0, "{r:?}");
        assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");
        r.stderr.clone()
    };
    let r = user.tp(&["wiretap", "web", "-n", &p.name, "-p", "9095:7777"]);
    let e = one_line(&r);
    assert!(e.contains("does not expose port 7777"), "{e}");
    let r = user.tp(&["wiretap", "nope", "-n", &p.name, "-p", "9095:8080"]);
    let e = one_line(&r);
    assert!(e.contains("nope"), "{e}");
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(
        l.stdout
            .contains("web: ready to intercept (traffic-agent not yet installed)"),
        "nothing installed: {}",
        l.stdout
    );

    // A name that is taken.
    user.tp(&[
        "wiretap",
        "web",
        "-n",
        &p.name,
        "--name",
        "tap",
        "-p",
        "9095:8080",
    ])
    .ok();
    let r = user.tp(&[
        "wiretap",
        "web",
        "-n",
        &p.name,
        "--name",
        "tap",
        "-p",
        "9096:8080",
    ]);
    let e = one_line(&r);
    assert!(e.contains("\"tap\" already exists"), "{e}");
    let st = user.tp(&["status"]).ok();
    assert_eq!(kv(&st.stdout, "Intercepts"), "1 total", "{}", st.stdout);
    assert_eq!(p.get("http://web:8080/").unwrap(), "web");
    user.tp(&["leave", "tap"]).ok();
    user.tp(&["quit", "-s"]).ok();
    assert_clean("after quit -s");
}
