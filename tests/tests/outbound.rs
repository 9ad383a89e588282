//! End-to-end tests of the outbound path on the real Docker engine: a handler container
//! started with `telepresence docker-run` on a connection reaches the connected namespace's
//! services by every name form and by IP over TCP (the kernel path: an nf_tables redirect in the
//! daemon's namespace) and UDP (the TUN device and userspace stack), through the daemon's DNS
//! server and the manager's tunnel. Run serially (`--test-threads=1`).
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use std::time::Duration;
use tests::*;

const T: Duration = Duration::from_secs(30);

/// `telepresence [--use conn] docker-run --rm <test app> <args>` as `user`.
fn handler(user: &User, conn: Option<&str>, args: &[&str]) -> Run {
    let (app, _) = images();
    let mut a: Vec<&str> = Vec::new();
    if let Some(c) = conn {
        a.extend(["--use", c]);
    }
    a.extend(["docker-run", "--rm", app.as_str()]);
    a.extend_from_slice(args);
    user.tp(&a)
}

/// The test app's answer to `GET url` from a handler on the connection.
fn get(user: &User, conn: Option<&str>, url: &str) -> Run {
    handler(user, conn, &["get", url, "--timeout", "20"])
}

fn inspect(container: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, container]).unwrap()
}

/// The subnet of a project's default network.
fn project_subnet(p: &Project) -> String {
    docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        &format!("{}_default", p.name),
    ])
    .unwrap()
}

/// The packet counts of every `counter` in `nft list` output, in order.
fn counters(table: &str) -> Vec<u64> {
    table
        .split("counter packets ")
        .skip(1)
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The `nft list` lines of `table` that contain `needle`.
fn lines_with<'a>(table: &'a str, needle: &str) -> Vec<&'a str> {
    table.lines().filter(|l| l.contains(needle)).collect()
}

/// Polls `status --output json` until `kernel_forwards` is `want`.
fn wait_kernel_forwards(user: &User, want: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let st = user.tp(&["status", "--output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap_or_default();
        let n = v["daemons"][0]["kernel_forwards"].as_u64();
        if n == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kernel_forwards never became {want}: {}",
            st.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_destination_that_answered_is_forwarded_by_the_kernels_through_the_manager() {
    if !engine_available() {
        return;
    }
    // As users write it: no `expose:`, the port only in the command.
    let services = "  web:\n    image: @APP@\n    command: [\"serve\", \"--http\", \"8080\", \"--name\", \"web\"]\n";
    let p = Project::up_with(services, "").unwrap();
    p.wait_for("http://web:8080/", "web", T).unwrap();
    let user = User::connected(&p);
    let manager = cli::connect::manager_container(&p.name);
    let daemon = daemon_container(&user).unwrap();
    let (manager_ip, daemon_ip) = (bridge_ip(&manager).unwrap(), bridge_ip(&daemon).unwrap());
    let ns = p.name.as_str();
    let web_ip = inspect(
        &p.container("web").unwrap(),
        &format!("{{{{(index .NetworkSettings.Networks \"{ns}_default\").IPAddress}}}}"),
    );

    // The first connection goes through the daemon's listener and the manager's relay; then the
    // destination is forwarded.
    let r = get(&user, None, "http://web:8080/");
    assert_eq!((r.code, r.stdout.trim()), (0, "web"), "{r:?}");
    wait_kernel_forwards(&user, 1);
    let st = user.tp(&["status"]).ok();
    let line = st
        .stdout
        .lines()
        .find(|l| l.starts_with("  Outbound TCP "))
        .unwrap_or_default();
    assert!(
        line.ends_with(
            ": kernel (nf_tables redirect; 1 destination forwarded in the kernel through the manager)"
        ),
        "{}",
        st.stdout
    );
    let daemon_table = nft_in(&daemon, &["list", "table", "ip", "telepresence_out"]).unwrap();
    let dnat = lines_with(&daemon_table, "dnat to ");
    assert_eq!(dnat.len(), 1, "{daemon_table}");
    assert!(
        dnat[0].contains(&format!("ip daddr {web_ip} tcp dport 8080")),
        "{daemon_table}"
    );
    assert!(
        dnat[0].contains(&format!("dnat to {manager_ip}:")),
        "{daemon_table}"
    );
    let manager_table = nft_in(&manager, &["list", "table", "ip", "telepresence_fwd"]).unwrap();
    let fwd = lines_with(&manager_table, "dnat to ");
    assert_eq!(fwd.len(), 1, "{manager_table}");
    assert!(
        fwd[0].contains(&format!("ip saddr {daemon_ip} ip daddr {manager_ip}"))
            && fwd[0].contains(&format!("dnat to {web_ip}:8080")),
        "{manager_table}"
    );
    assert!(
        manager_table.contains(&format!(
            "ip saddr {daemon_ip} ip daddr {web_ip} tcp dport 8080 masquerade"
        )),
        "{manager_table}"
    );
    let before = counters(&daemon_table);

    // Later connections are the kernels': the forward rules count them, the redirect does not;
    // 64 MiB arrive whole.
    let size = 64u64 << 20;
    let r = handler(
        &user,
        None,
        &["download", &format!("http://web:8080/bytes/{size}")],
    )
    .ok();
    let d: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(d["bytes"].as_u64(), Some(size), "{}", r.stdout);
    let r = get(&user, None, &format!("http://{web_ip}:8080/"));
    assert_eq!((r.code, r.stdout.trim()), (0, "web"), "{r:?}");
    let daemon_table = nft_in(&daemon, &["list", "table", "ip", "telepresence_out"]).unwrap();
    let after = counters(&daemon_table);
    assert_eq!(
        after.len(),
        2,
        "the forward's and the redirect's: {daemon_table}"
    );
    assert_eq!(after[0], before[0] + 2, "{daemon_table}");
    assert_eq!(after[1], before[1], "{daemon_table}");
    let manager_table = nft_in(&manager, &["list", "table", "ip", "telepresence_fwd"]).unwrap();
    assert_eq!(counters(&manager_table)[0], 2, "{manager_table}");

    // The daemon goes: its forward goes from the manager too.
    user.tp(&["quit"]).ok();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let t = nft_in(&manager, &["list", "table", "ip", "telepresence_fwd"]).unwrap();
        if !t.contains(&daemon_ip) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still forwarding for {daemon_ip}: {t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    user.tp(&["quit", "-s"]).ok();
    drop(user);
    drop(p);
    assert_clean("after quit");
}

#[test]
fn handler_reaches_cluster_services_by_name_ip_tcp_and_udp() {
    if !engine_available() {
        return;
    }
    let services = "  web:\n    image: @APP@\n    command: [\"serve\", \"--http\", \"8080\", \"--udp\", \"9000\", \"--name\", \"web\"]\n    expose: [\"8080\", \"9000/udp\"]\n    networks:\n      default:\n        aliases: [shop-api]\n  multi:\n    image: @APP@\n    command: [\"serve\", \"--http\", \"8080\", \"--name\", \"multi\"]\n    expose: [\"8080\"]\n";
    let p = Project::up_with(services, "").unwrap();
    p.compose(&["up", "-d", "--scale", "multi=2"]).unwrap();
    p.wait_for("http://web:8080/", "web", T).unwrap();
    let user = User::connected(&p);

    // status shows what is routed and the DNS server.
    let st = user.tp(&["status"]).ok();
    let subnet = project_subnet(&p);
    let line = |key: &str| {
        st.stdout
            .lines()
            .find(|l| l.starts_with(&format!("  {key} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("Subnets").ends_with(": (1 subnet)"), "{}", st.stdout);
    assert!(
        st.stdout.contains(&format!("    - {subnet}\n")),
        "{}",
        st.stdout
    );
    assert!(line("DNS").ends_with(':'), "{}", st.stdout);
    assert!(
        line("Outbound TCP").ends_with(": kernel (nf_tables redirect)"),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout.contains("    Remote IP       : "),
        "{}",
        st.stdout
    );

    // Every name form of a compose service, its alias, and its IP.
    let ns = p.name.as_str();
    for host in [
        "web".to_string(),
        format!("web.{ns}"),
        format!("web.{ns}.svc.cluster.local"),
        "shop-api".to_string(),
    ] {
        let r = get(&user, None, &format!("http://{host}:8080/"));
        assert_eq!((r.code, r.stdout.trim()), (0, "web"), "{host}: {r:?}");
    }
    let web_ip = inspect(
        &p.container("web").unwrap(),
        &format!("{{{{(index .NetworkSettings.Networks \"{ns}_default\").IPAddress}}}}"),
    );
    let r = get(&user, None, &format!("http://{web_ip}:8080/"));
    assert_eq!((r.code, r.stdout.trim()), (0, "web"), "{r:?}");

    // A multi-replica service: its name gives every replica; each replica answers by IP and by
    // its own (container) name.
    let replicas = p.containers("multi").unwrap();
    assert_eq!(replicas.len(), 2);
    let r = handler(&user, None, &["lookup", "multi"]).ok();
    let mut ips: Vec<&str> = r.stdout.lines().collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 2, "{}", r.stdout);
    for id in &replicas {
        let name = inspect(id, "{{.Name}}").trim_start_matches('/').to_string();
        let hostname = inspect(id, "{{.Config.Hostname}}");
        let r = get(&user, None, &format!("http://{name}:8080/env/HOSTNAME"));
        assert_eq!(
            (r.code, r.stdout.trim()),
            (0, hostname.as_str()),
            "{name}: {r:?}"
        );
    }

    // UDP by name.
    let r = handler(&user, None, &["udp-send", "web:9000", "hello"]);
    assert_eq!((r.code, r.stdout.trim()), (0, "web:hello"), "{r:?}");

    // A closed port in the cluster gets a RST from the daemon, not a hang: the kernel has
    // completed the handshake by then, so the client sees the reset on its first write or read.
    let r = get(&user, None, "http://web:8081/");
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("reset") || r.stderr.contains("refused"),
        "{r:?}"
    );

    // TCP went through the kernel: the daemon's namespace holds its redirect table, and each of
    // the three destinations that answered above (web, and the two replicas of multi; not the
    // closed port) now has an in-kernel forward before the redirect.
    wait_kernel_forwards(&user, 3);
    let daemon = daemon_container(&user).unwrap();
    let table = nft_in(&daemon, &["list", "table", "ip", "telepresence_out"]).unwrap();
    assert!(table.contains("hook output"), "{table}");
    assert!(table.contains("redirect to :"), "{table}");
    assert_eq!(lines_with(&table, "dnat to ").len(), 3, "{table}");
    assert!(!table.contains("dport 8081"), "{table}");

    // Names that are not in the cluster get no cluster answer.
    let r = handler(&user, None, &["lookup", "no-such-service"]);
    assert_ne!(r.code, 0, "{r:?}");
    let r = handler(
        &user,
        None,
        &["lookup", &format!("web.not-{ns}.svc.cluster.local")],
    );
    assert_ne!(r.code, 0, "{r:?}");

    // telepresence curl: our own client when no curl image exists here.
    let r = user.tp(&["curl", "-s", "http://web:8080/"]);
    assert_eq!((r.code, r.stdout.trim()), (0, "web"), "{r:?}");

    user.tp(&["quit", "-s"]).ok();
    drop(user);
    drop(p);
    assert_clean("after quit");
}

#[test]
fn second_connection_resolves_its_own_namespace_only() {
    let Some(a) = Project::up_if_engine(&[("alpha", 8080)]) else {
        return;
    };
    let b = Project::up(&[("beta", 8080)]).unwrap();
    let user = User::new();
    user.connect_with(&a, &["--name", "conn-a"]).ok();

    // A subnet that overlaps the daemon container's own network is refused, and nothing stays.
    let before = leftovers();
    let r = user.connect_with(&b, &["--name", "conn-bad", "--also-proxy", "172.17.0.0/16"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("--allow-conflicting-subnets 172.17.0.0/16"),
        "{r:?}"
    );
    assert_eq!(leftovers(), before);
    let r = user.tp(&["connect", "-n", &b.name, "--never-proxy", "10.0.0.0/33"]);
    assert!(r.stderr.contains("--never-proxy: invalid subnet"), "{r:?}");

    user.connect_with(&b, &["--name", "conn-b"]).ok();
    let r = get(&user, Some("conn-a"), "http://alpha:8080/");
    assert_eq!((r.code, r.stdout.trim()), (0, "alpha"), "{r:?}");
    let r = get(&user, Some("conn-b"), "http://beta:8080/");
    assert_eq!((r.code, r.stdout.trim()), (0, "beta"), "{r:?}");
    let r = get(
        &user,
        Some("conn-b"),
        &format!("http://beta.{}:8080/", b.name),
    );
    assert_eq!((r.code, r.stdout.trim()), (0, "beta"), "{r:?}");
    // Each connection knows its own namespace's names only.
    for (conn, other) in [("conn-a", "beta"), ("conn-b", "alpha")] {
        let r = handler(&user, Some(conn), &["lookup", other]);
        assert_ne!(r.code, 0, "{conn} resolved {other}: {r:?}");
    }
    let r = handler(
        &user,
        Some("conn-a"),
        &["lookup", &format!("beta.{}", b.name)],
    );
    assert_ne!(r.code, 0, "{r:?}");
    // docker-run keeps the handler on the connection's network.
    let r = user.tp(&["--use", "conn-a", "docker-run", "--network", "host", "img"]);
    assert!(r.stderr.contains("remove --network"), "{r:?}");

    user.tp(&["quit", "-s"]).ok();
    drop(user);
    drop(a);
    drop(b);
    assert_clean("after quit");
}
