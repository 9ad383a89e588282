//! The user commands that need no connection — `completion` and `config view`, run as a user
//! would (the real binary, a sandboxed home, no containers) — and one end-to-end run of
//! `gather-logs` on the real Docker engine (connect, intercept, gather, check the zip, quit -s,
//! no leftovers). Run serially (`--test-threads=1`): `quit -s` is engine-wide.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tests::*;

const T: Duration = Duration::from_secs(30);

/// Whether the `telepresence` binary under test exists (else the test is skipped, saying why).
fn binary_built() -> bool {
    if tp_bin().exists() {
        return true;
    }
    skip(&format!(
        "{} is missing: build the binaries first (`cargo build --release --bins`)",
        tp_bin().display()
    ));
    false
}

/// `telepresence <args>` with `home` as its home, config and cache directories. Not
/// [`User`]: its drop runs `quit -s`, which these engine-free tests must not do.
fn tp_in(home: &Path, args: &[&str]) -> Run {
    let out = Command::new(tp_bin())
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run telepresence");
    Run::from_output(out)
}

#[test]
fn completion_scripts_complete_user_commands_only() {
    if !binary_built() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let r = tp_in(home.path(), &["completion", shell]).ok();
        for shown in ["gather-logs", "intercept", "completion", "namespace"] {
            assert!(r.stdout.contains(shown), "{shell}: {shown} missing");
        }
        for hidden in [
            "daemon-foreground",
            "agent-init",
            "agent-cleanup",
            "fs-sync",
            "curl-client",
        ] {
            assert!(!r.stdout.contains(hidden), "{shell} completes {hidden}");
        }
        assert_eq!(r.stderr, "", "{shell}");
    }
    let bash = tp_in(home.path(), &["completion", "bash"]).stdout;
    assert!(!bash.contains("telepresence,traffic-manager)"));
    assert!(!bash.contains("telepresence,agent)"));
    let bad = tp_in(home.path(), &["completion", "tcsh"]);
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("invalid value 'tcsh'"),
        "{}",
        bad.stderr
    );
}

#[test]
fn config_view_shows_the_defaults_then_the_file() {
    if !binary_built() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let r = tp_in(home.path(), &["config", "view"]).ok();
    assert_eq!(r.stdout, "images:\n  registry: ''\n");

    let dir = home.path().join(".config/telepresence");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.yml"),
        "images:\n  registry: ghcr.io/me\ntimeouts:\n  intercept: 10s\n",
    )
    .unwrap();
    let r = tp_in(home.path(), &["config", "view"]).ok();
    let v: serde_json::Value = yaml_serde::from_str(&r.stdout).unwrap();
    assert_eq!(v["images"]["registry"], "ghcr.io/me", "{}", r.stdout);
    assert_eq!(v["timeouts"]["intercept"], "10s", "{}", r.stdout);

    let j = tp_in(home.path(), &["config", "view", "--output", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["cmd"], "config view");
    assert_eq!(v["data"]["images"]["registry"], "ghcr.io/me");

    std::fs::write(dir.join("config.yml"), "images: [unclosed\n").unwrap();
    let bad = tp_in(home.path(), &["config", "view"]);
    assert_eq!(bad.code, 1);
    assert_eq!(bad.stdout, "");
    assert!(
        bad.stderr.starts_with(&format!(
            "telepresence config view: error: {} is not valid YAML",
            dir.join("config.yml").display()
        )),
        "{}",
        bad.stderr
    );
}

#[test]
fn gather_logs_refuses_bad_arguments_before_writing() {
    if !binary_built() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    for (args, want) in [
        (
            vec!["gather-logs", "-o", "logs.tar"],
            "telepresence gather-logs: error: logs.tar does not end in .zip: choose the output file with -o FILE.zip\n",
        ),
        (
            vec!["gather-logs", "--daemons", "all,x", "-o", "x.zip"],
            "telepresence gather-logs: error: --daemons all: give either all, none, or names, not both\n",
        ),
    ] {
        let r = tp_in(h, &args);
        assert_eq!(r.code, 1, "{args:?}");
        assert_eq!(r.stderr, want, "{args:?}");
    }
    let missing = h.join("no/such/dir/l.zip");
    let r = tp_in(h, &["gather-logs", "-o", missing.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("choose a writable file with -o FILE.zip"),
        "{}",
        r.stderr
    );
    assert!(!missing.exists());
}

/// The zip entry whose name starts with `prefix`; it must exist and hold a log.
fn log_of<'a>(entries: &'a [cli::gather_logs::Entry], prefix: &str) -> &'a str {
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let e = entries
        .iter()
        .find(|e| e.name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}* in {names:?}"));
    assert!(!e.content.trim().is_empty(), "{} is empty", e.name);
    &e.content
}

#[test]
fn gather_logs_zips_daemon_manager_and_agent_logs() {
    if !engine_available() {
        return;
    }
    let p = Project::up(&[("web", 8080)]).unwrap();
    let user = User::new();
    p.wait_for("http://web:8080/", "web", T).unwrap();
    user.connect(&p);
    let mut child = spawn_piped(user.intercept_cmd(&p, "web", 9090, 8080, &[], &[], "handler"));
    p.wait_for("http://web:8080/", "handler", T).unwrap();

    let zip = user.home.join("logs.zip");
    let r = user.tp(&["gather-logs", "-o", zip.to_str().unwrap()]).ok();
    assert!(r.stdout.contains("written to"), "{}", r.stdout);
    let entries = cli::gather_logs::read_zip(&zip).unwrap();
    log_of(&entries, "daemon-");
    log_of(&entries, &format!("traffic-manager-{}.log", p.name));
    log_of(&entries, &format!("traffic-agent-{}-web-", p.name));
    log_of(&entries, cli::gather_logs::SUMMARY_ENTRY);

    // Anonymized: the project (namespace) name appears nowhere, neither in names nor in logs.
    let anon = user.home.join("anon.zip");
    user.tp(&["gather-logs", "-a", "-o", anon.to_str().unwrap()])
        .ok();
    let entries = cli::gather_logs::read_zip(&anon).unwrap();
    log_of(&entries, "traffic-manager-namespace-");
    for e in &entries {
        assert!(!e.name.contains(&p.name), "{}", e.name);
        assert!(!e.content.contains(&p.name), "{} names the project", e.name);
    }

    // The default file, in the current directory; selections narrow what is gathered.
    let out = user
        .command(&[
            "gather-logs",
            "--traffic-agents",
            "none",
            "--traffic-manager=false",
        ])
        .current_dir(&user.home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = cli::gather_logs::read_zip(&user.home.join("telepresence_logs.zip")).unwrap();
    assert!(entries.iter().any(|e| e.name.starts_with("daemon-")));
    assert!(
        !entries.iter().any(|e| e.name.starts_with("traffic-")),
        "{entries:?}"
    );

    // An unknown daemon: one line saying what to do, no file.
    let bad_zip = user.home.join("bad.zip");
    let bad = user.tp(&[
        "gather-logs",
        "--daemons",
        "nope",
        "-o",
        bad_zip.to_str().unwrap(),
    ]);
    assert_eq!(bad.code, 1);
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
    assert!(
        bad.stderr
            .starts_with("telepresence gather-logs: error: no daemon named \"nope\""),
        "{}",
        bad.stderr
    );
    assert!(!bad_zip.exists());

    user.tp(&["leave", "web"]).ok();
    wait_exit(&mut child, T);
    user.tp(&["quit", "-s"]).ok();
    p.wait_for("http://web:8080/", "web", T).unwrap();
    assert_clean("after gather-logs and quit -s");
}
