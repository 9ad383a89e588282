//! The fault suite on the real Docker engine: a caller sends a request every 25 ms to an
//! intercepted compose service while one thing fails at a time — the intercept starts, the
//! handler exits, the user leaves, the traffic-agent is killed, the workload restarts and is
//! recreated, the traffic-manager restarts, the network between daemon and manager is cut for
//! 20 s, the daemon is frozen (`docker pause`) for 10 s, the daemon is killed — and every
//! request is counted (`tests/src/faults.rs`). None may fail (during the network cut: at most
//! 1 %); requests that fail while the workload itself is
//! down (its own restart), and requests already under way through the agent when it is
//! SIGKILLed (their connection was the agent's socket), are not ours to save and are counted
//! apart; every request begun after the kill must succeed. How long each fault took to settle
//! is printed here and measured by the benchmark's "faults" section, never asserted.

use tests::faults::{run_suite, table};
use tests::*;

#[test]
fn no_request_is_lost_when_things_die() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::new();
    let outcomes = run_suite(&p, &user).unwrap();
    eprintln!("{}", table(&outcomes));
    if outcomes
        .iter()
        .any(|o| o.failed.len() * 100 > o.requests * o.tolerance_pct)
    {
        // What the agent and the manager saw, for the failures below.
        for c in [
            docker::provider::agent_name(&p.name, "web", 1),
            cli::connect::manager_container(&p.name),
        ] {
            let logs = std::process::Command::new("docker")
                .args(["logs", "--tail", "60", &c])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            eprintln!("==== {c} (last lines)\n{logs}");
        }
    }
    for o in &outcomes {
        assert!(o.requests > 0, "{}: no request completed", o.fault);
        assert!(
            o.failed.len() * 100 <= o.requests * o.tolerance_pct,
            "{}: {} of {} requests failed:\n{}\n{}",
            o.fault,
            o.failed.len(),
            o.requests,
            o.failed.join("\n"),
            table(&outcomes)
        );
    }
    user.quit_clean("after the fault suite");
    assert!(
        !p.has_agent_table("web").unwrap(),
        "quit -s must leave no redirect"
    );
    assert_eq!(p.get("http://web:8080/").unwrap(), "web");
}
