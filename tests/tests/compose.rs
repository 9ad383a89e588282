//! End-to-end tests of `telepresence compose` on the real Docker engine with the real compose
//! tool: cluster projects (plain compose projects on the engine, `cluster-type: docker`) and a
//! dev project whose `x-tele` engages them, each type observed from outside — a caller in the
//! cluster project reaches the intercepted and the replaced service's dev containers, a dev
//! sibling reaches the engaged service and the proxied remote service by their compose names,
//! the engaged service reaches its siblings and the cluster by name, the ingesting service sees
//! the remote environment, the intercepting service reaches a port on the workload's localhost
//! (`to-pod`), a wiretapping service gets a copy of every request while the original answers,
//! a second connection reaches a second cluster project — read from two
//! `-f` files with `.env` interpolation; then `down` restores everything and leaves nothing.
//! The lifecycle test covers bad `x-tele` (nothing left), a foreground `up` ended by Ctrl-C, and
//! `telepresence quit` taking the project down. The mount-policy test shows a `remote` volume
//! holding (and syncing) the workload's files where the compose volume was mounted and a
//! `local` one keeping its own. The same kind of dev file engages `intercept` and `proxy` over a
//! Kubernetes connection (kubeconfig naming the API stand-in in front of a real manager).
//! Run serially (`--test-threads=1`).
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use std::time::Duration;
use tests::*;

const T: Duration = Duration::from_secs(30);

/// Cluster project A: `web` serves 8080 but declares no `expose:` (an ordinary compose file),
/// `orders`, `db` (with env) and `pay` do.
const CLUSTER_A: &str = r#"  web:
    image: @APP@
    command: ["serve", "--http", "8080", "--name", "web"]
  orders:
    image: @APP@
    command: ["serve", "--http", "8080", "--name", "orders"]
    expose: ["8080"]
  db:
    image: @APP@
    command: ["serve", "--http", "8080", "--name", "db"]
    expose: ["8080"]
    environment:
      DB_SECRET: s3cret
  pay:
    image: @APP@
    command: ["serve", "--http", "8080", "--name", "pay"]
    expose: ["8080"]
"#;

/// The dev project's base file: two connections, an intercept of `web` (its port from `.env`
/// with a default), a plain sibling, and a proxy of `orders`.
const DEV_BASE: &str = r#"x-tele:
  connections:
    - name: ${CONN_A}
      namespace: ${CLUSTER_A}
      cluster-type: docker
    - name: ${CONN_B:?CONN_B must be set}
      namespace: ${CLUSTER_B}
      cluster-type: docker
x-team: {owner: dev}
services:
  web:
    image: ${APP_IMAGE}
    command: ["serve", "--http", "${WEB_PORT:-9090}", "--name", "dev-web"]
    ports: ["18080:9090"]
    x-tele:
      type: intercept
      connection: ${CONN_A}
      ports: ["${WEB_PORT:-9090}:8080"]
      to-pod: 7070
  helper:
    image: ${APP_IMAGE}
    command: ["serve", "--http", "8080", "--name", "helper"]
  orders:
    build: ./does-not-matter
    x-tele: {type: proxy, connection: "${CONN_A}"}
"#;

/// The second `-f` file: ingest, replace and a connect service on the second connection.
const DEV_OVERRIDE: &str = r#"services:
  helper:
    environment: {ROLE: sibling}
  ingester:
    image: ${APP_IMAGE}
    command: ["serve", "--http", "7071", "--name", "ingester"]
    x-tele: {type: ingest, name: db, connection: "${CONN_A}"}
  pay:
    image: ${APP_IMAGE}
    command: ["serve", "--http", "7073", "--name", "dev-pay"]
    x-tele: {type: replace, connection: "${CONN_A}", ports: ["7073:8080"]}
  apiclient:
    image: ${APP_IMAGE}
    command: ["serve", "--http", "7072", "--name", "apiclient"]
    x-tele: {type: connect, connection: "${CONN_B}"}
  tap:
    image: ${APP_IMAGE}
    command: ["serve", "--http", "7074", "--name", "tap", "--log-requests"]
    x-tele: {type: wiretap, name: orders, connection: "${CONN_A}", ports: ["7074:8080"]}
"#;

#[test]
fn compose_engages_every_type_and_down_restores() {
    let Some(b) = Project::up_if_engine(&[("api", 8080)]) else {
        return;
    };
    let a = Project::up_with(CLUSTER_A, "").unwrap();
    a.wait_for("http://web:8080/", "web", T).unwrap();
    let (app, _) = images();
    let (conn_a, conn_b) = (format!("{}-a", a.name), format!("{}-b", b.name));
    let env = format!(
        "APP_IMAGE={app}\nCLUSTER_A={}\nCLUSTER_B={}\nCONN_A={conn_a}\nCONN_B={conn_b}\n",
        a.name, b.name
    );
    let dev = DevProject::new(&[
        ("compose.yaml", DEV_BASE),
        ("dev.yaml", DEV_OVERRIDE),
        (".env", &env),
    ]);
    let user = User::new();
    // A sidecar of the cluster's web that listens on web's localhost only (for `to-pod`).
    let web = a.container("web").unwrap();
    sidecar_on_localhost(&web, &["--http", "7070"]).unwrap();

    // A service without `expose:` is a workload.
    let listed = user
        .tp(&[
            "connect",
            "--cluster-type",
            "docker",
            "-n",
            &a.name,
            "--name",
            &conn_a,
        ])
        .ok();
    assert!(listed.stdout.contains("Connected"), "{listed:?}");
    let list = user.tp(&["list", "-n", &a.name]).ok();
    assert!(
        list.stdout.contains("web: ready to intercept"),
        "{}",
        list.stdout
    );

    let up = dev.run(&user, &["up", "-d"]);
    assert_eq!(up.code, 0, "compose up -d: {up:?}");

    // Intercept: the cluster's callers of web reach the dev web.
    a.wait_for("http://web:8080/", "dev-web", T).unwrap();
    // Replace: the cluster's pay is the dev pay.
    a.wait_for("http://pay:8080/", "dev-pay", T).unwrap();
    // A sibling reaches the engaged service by its compose name, and the proxied remote service.
    dev.wait_from("helper", "http://web:9090/", "dev-web", T)
        .unwrap();
    dev.wait_from("helper", "http://orders:8080/", "orders", T)
        .unwrap();
    // The engaged service reaches its sibling by name, and the cluster by name.
    dev.wait_from("web", "http://helper:8080/", "helper", T)
        .unwrap();
    dev.wait_from("web", "http://db:8080/", "db", T).unwrap();
    dev.wait_from("web", "http://orders:8080/", "orders", T)
        .unwrap();
    // Ingest: the remote environment, no traffic.
    dev.wait_from(
        "ingester",
        "http://127.0.0.1:7071/env/DB_SECRET",
        "s3cret",
        T,
    )
    .unwrap();
    assert_eq!(a.get("http://db:8080/").unwrap(), "db");
    // The second connection reaches the second cluster project.
    dev.wait_from("apiclient", "http://api:8080/", "api", T)
        .unwrap();
    // to-pod: the intercepting service reaches the sidecar on the workload's localhost.
    dev.wait_from("web", "http://127.0.0.1:7070/", "sidecar", T)
        .unwrap();
    // Wiretap: the original orders answers the cluster's callers, the dev tap gets a copy.
    let tap = dev.container("tap").unwrap();
    eventually("the wiretap's copies reach the dev tap", T, || {
        a.get("http://orders:8080/?tapped=1")
            .is_ok_and(|b| b == "orders")
            && docker(&["logs", &tap]).is_ok_and(|l| l.contains("/?tapped=1"))
    });
    for i in 0..5 {
        assert_eq!(
            a.get(&format!("http://orders:8080/?copy={i}")).unwrap(),
            "orders"
        );
    }
    eventually("every request is copied", T, || {
        docker(&["logs", &tap])
            .is_ok_and(|l| (0..5).all(|i| l.lines().any(|x| x.ends_with(&format!(" /?copy={i}")))))
    });

    // config: the rewritten project, other x-* keys kept; ps passes through.
    let config = dev.run(&user, &["config"]).ok();
    assert!(
        config
            .stdout
            .contains(&format!("network_mode: container:tp-{conn_a}")),
        "{}",
        config.stdout
    );
    assert!(config.stdout.contains("x-team"), "{}", config.stdout);
    assert!(!config.stdout.contains("x-tele"), "{}", config.stdout);
    let ps = dev.run(&user, &["ps"]).ok();
    assert!(ps.stdout.contains("helper"), "{}", ps.stdout);

    // down: engagements ended, the original paths answer, nothing of the dev project left.
    let down = dev.run(&user, &["down", "-t", "1"]);
    assert_eq!(down.code, 0, "compose down: {down:?}");
    assert_eq!(a.get("http://web:8080/").unwrap(), "web");
    a.wait_for("http://pay:8080/", "pay", T).unwrap();
    assert!(dev.containers().is_empty(), "{:?}", dev.containers());
    assert!(!dev.has_networks());
    // The connection made before `up` stays; the one `up` started is gone.
    let status = user.tp(&["status"]).ok();
    assert!(status.stdout.contains(&conn_a), "{}", status.stdout);
    assert!(!status.stdout.contains(&conn_b), "{}", status.stdout);
    user.quit_clean("after compose down and quit -s");
}

/// Bad x-tele files and what the error must say.
fn bad_inputs(cluster: &str) -> Vec<(&'static str, String, Vec<&'static str>)> {
    let conn = format!("x-tele:\n  connections:\n    - {{name: bad1, namespace: {cluster}, cluster-type: docker}}\n");
    let svc = |tele: &str| {
        format!("{conn}services:\n  web:\n    image: @APP@\n    command: [serve, --http, '9090']\n    x-tele: {tele}\n")
    };
    vec![
        (
            "unknown type",
            svc("{type: intrecept}"),
            vec!["compose.yaml: services.web.x-tele.type: unknown type"],
        ),
        (
            "unknown connection",
            svc("{type: connect, connection: nope}"),
            vec!["services.web.x-tele.connection: no connection named \"nope\""],
        ),
        (
            "duplicate connection names",
            format!("x-tele:\n  connections:\n    - {{name: bad1, namespace: {cluster}}}\n    - {{name: bad1, namespace: {cluster}}}\nservices: {{}}\n"),
            vec!["x-tele.connections.1.name: connection name \"bad1\" is already used"],
        ),
        (
            "volume and volumePattern",
            "x-tele:\n  mounts: [{volume: a, volumePattern: 'a.*'}]\nservices: {}\n".to_string(),
            vec!["x-tele.mounts.0: volume and volumePattern exclude each other"],
        ),
        (
            "unknown workload",
            svc("{type: intercept, workload: nope, ports: ['9090:8080']}"),
            vec!["compose.yaml: services.web.x-tele", "nope"],
        ),
        (
            // Fails after the engagement exists: it is ended again.
            "remote policy where the workload mounts nothing",
            format!("x-tele:\n  connections:\n    - {{name: bad1, namespace: {cluster}, cluster-type: docker}}\n  mounts: [{{volume: data, policy: remote}}]\nservices:\n  web:\n    image: @APP@\n    command: [serve, --http, '9090']\n    volumes: ['data:/data']\n    x-tele: {{type: intercept, ports: ['9090:8080']}}\nvolumes: {{data: {{}}}}\n"),
            vec![
                "compose.yaml: services.web.x-tele: x-tele.mounts.0: policy remote for volume \"data\", which this service mounts at /data, but the workload mounts nothing there (its volumes: none)",
                "use policy: local",
            ],
        ),
    ]
}

/// What of ours may stay after a project is down: the Docker-engine traffic-managers (as after
/// `telepresence quit`, until `quit -s`) and the traffic-agents of ended engagements (as after
/// `telepresence leave`, until `uninstall` or `quit -s`).
const KEPT: [&str; 2] = ["container tp-traffic-manager-", "container tp-agent-"];

/// Our containers, networks and volumes except those whose description starts with one of
/// `kept`.
fn leftovers_but(kept: &[&str]) -> Vec<String> {
    leftovers()
        .into_iter()
        .filter(|l| !kept.iter().any(|k| l.starts_with(k)))
        .collect()
}

#[test]
fn compose_bad_input_ctrl_c_and_quit_leave_nothing() {
    let Some(a) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::new();
    for (what, yaml, want) in bad_inputs(&a.name) {
        let dev = DevProject::new(&[("compose.yaml", &yaml)]);
        let r = dev.run(&user, &["up", "-d"]);
        assert_ne!(r.code, 0, "{what}: {r:?}");
        for w in want {
            assert!(r.stderr.contains(w), "{what}: {w:?} not in {}", r.stderr);
        }
        let errors: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| l.starts_with("telepresence compose: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{what}: one error line: {}", r.stderr);
        assert!(dev.containers().is_empty(), "{what}");
        let left = leftovers_but(&KEPT);
        assert!(left.is_empty(), "{what}: left behind {left:?}");
        assert_eq!(a.get("http://web:8080/").unwrap(), "web", "{what}");
    }

    // Foreground up: Ctrl-C ends the engagement (the cluster's web answers again).
    let yaml = format!(
        "x-tele:\n  connections: [{{name: fg1, namespace: {}, cluster-type: docker}}]\nservices:\n  web:\n    image: @APP@\n    command: [serve, --http, '9090', --name, dev-web]\n    x-tele: {{type: intercept, ports: ['9090:8080']}}\n",
        a.name
    );
    let dev = DevProject::new(&[("compose.yaml", &yaml)]);
    let child = spawn_piped(dev.command(&user, &["up"]));
    a.wait_for("http://web:8080/", "dev-web", T).unwrap();
    // SAFETY: kill(2) on our own child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let mut child = child;
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let (out, err) = output_of(child);
    assert!(status.code().is_some(), "{out}{err}");
    assert_eq!(a.get("http://web:8080/").unwrap(), "web", "{err}");

    // quit on the connection the project uses brings the project down first.
    let quit = user.tp(&["quit", "--use", "^fg1$"]).ok();
    assert!(quit.stdout.contains("Disconnected"), "{quit:?}");
    assert!(dev.containers().is_empty(), "{:?}", dev.containers());
    assert!(!dev.has_networks());
    assert!(leftovers_but(&KEPT).is_empty(), "{:?}", leftovers());
    user.quit_clean("after compose up, Ctrl-C and quit");
}

/// Cluster project with volumes: `web` mounts `data` at /data and `cfg` at /cfg.
const CLUSTER_VOLUMES: &str = r#"  web:
    image: @APP@
    command: ["serve", "--http", "8080", "--name", "web"]
    volumes: ["data:/data", "cfg:/cfg", "pub:/pub"]
"#;

/// The dev project: `web`, intercepted, mounts its own `data`, `cfg` and `pub` volumes at the
/// paths where the workload mounts its volumes; `data` is `remote`, `cfg` (external, seeded by
/// the test) `local`, `pub` `remoteReadOnly`.
const DEV_VOLUMES: &str = r#"x-tele:
  connections: [{name: vol1, namespace: @CLUSTER@, cluster-type: docker}]
  mounts:
    - {volume: data, policy: remote}
    - {volumePattern: 'c.g', policy: local}
    - {volume: pub, policy: remoteReadOnly}
services:
  web:
    image: @APP@
    command: [serve, --http, '9090', --name, dev-web]
    volumes: ["data:/data", "cfg:/cfg", "pub:/pub"]
    x-tele: {type: intercept, ports: ['9090:8080']}
volumes:
  data: {}
  cfg: {name: @CFG@, external: true}
  pub: {}
"#;

/// Writes `text` to `path` inside volume `volume` through a created, never started container.
fn seed_volume(volume: &str, path: &str, text: &str) {
    let (app, _) = images();
    let seed = format!("{volume}-seed");
    let file = std::env::temp_dir().join(&seed);
    std::fs::write(&file, text).unwrap();
    docker(&[
        "create",
        "--name",
        &seed,
        "-v",
        &format!("{volume}:/v"),
        app,
    ])
    .unwrap();
    docker(&["cp", file.to_str().unwrap(), &format!("{seed}:/v/{path}")]).unwrap();
    docker(&["rm", &seed]).unwrap();
    let _ = std::fs::remove_file(file);
}

#[test]
fn compose_mount_policies_remote_and_local() {
    if !engine_available() {
        return;
    }
    let a = Project::up_with(CLUSTER_VOLUMES, "  data: {}\n  cfg: {}\n  pub: {}\n").unwrap();
    seed_volume(&format!("{}_data", a.name), "hello.txt", "remote data");
    seed_volume(&format!("{}_pub", a.name), "index.txt", "remote pub");
    seed_volume(&format!("{}_cfg", a.name), "app.conf", "remote cfg");
    a.wait_for("http://web:8080/file/data/hello.txt", "remote data", T)
        .unwrap();
    let cfg = format!("{}-devcfg", a.name);
    docker(&["volume", "create", &cfg]).unwrap();
    seed_volume(&cfg, "app.conf", "local cfg");
    let yaml = DEV_VOLUMES
        .replace("@CLUSTER@", &a.name)
        .replace("@CFG@", &cfg);
    // Dropped after the dev project (declared before it): the test's own volumes go even when
    // an assertion fails.
    struct RemoveVolumes(Vec<String>);
    impl Drop for RemoveVolumes {
        fn drop(&mut self) {
            for v in &self.0 {
                let _ = docker(&["volume", "rm", v]);
            }
        }
    }
    let mut volumes = RemoveVolumes(vec![cfg.clone()]);
    let dev = DevProject::new(&[("compose.yaml", &yaml)]);
    volumes.0.push(format!("{}_data", dev.name));
    volumes.0.push(format!("{}_pub", dev.name));
    let user = User::new();

    let up = dev.run(&user, &["up", "-d"]);
    assert_eq!(up.code, 0, "compose up -d: {up:?}");
    assert!(
        up.stderr
            .contains("web: volume data at /data is the workload's"),
        "{}",
        up.stderr
    );
    a.wait_for("http://web:8080/", "dev-web", T).unwrap();
    // remote: the engaged service sees the workload's file where its compose volume was
    // mounted, and what it writes there reaches the workload.
    dev.wait_from(
        "web",
        "http://127.0.0.1:9090/file/data/hello.txt",
        "remote data",
        T,
    )
    .unwrap();
    let c = dev.container("web").unwrap();
    let put = |path: &str| {
        std::process::Command::new("docker")
            .args([
                "exec",
                &c,
                "/tp-testapp",
                "get",
                &format!("http://127.0.0.1:9090/file{path}"),
                "--put",
                "written by dev",
            ])
            .output()
            .unwrap()
    };
    let w = put("/data/from-dev.txt");
    assert!(w.status.success(), "{w:?}");
    let web = a.container("web").unwrap();
    // (`docker cp … -` writes a tar holding the file.)
    eventually("the dev write reaches the workload's volume", T, || {
        docker(&["cp", &format!("{web}:/data/from-dev.txt"), "-"])
            .is_ok_and(|tar| tar.contains("written by dev"))
    });
    // remoteReadOnly: the workload's files, not writable.
    assert_eq!(
        dev.get_from("web", "http://127.0.0.1:9090/file/pub/index.txt")
            .unwrap(),
        "remote pub"
    );
    let w = put("/pub/from-dev.txt");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&w.stdout),
        String::from_utf8_lossy(&w.stderr)
    );
    assert!(said.contains("Read-only file system"), "{w:?}");
    // local: the compose volume keeps its own content.
    assert_eq!(
        dev.get_from("web", "http://127.0.0.1:9090/file/cfg/app.conf")
            .unwrap(),
        "local cfg"
    );
    let config = dev.run(&user, &["config"]).ok();
    // The remote volume is one of ours, declared external; the local one is as written.
    assert!(
        config.stdout.contains("source: tp-vol1-web-") && config.stdout.contains("- cfg:/cfg"),
        "{}",
        config.stdout
    );

    // stop: the engagement ends, and so does the file sync of its remote volumes (the stopped
    // containers keep the volumes until `down`).
    let sync = || {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!(
                "label={}={}",
                docker::engine::ROLE_LABEL,
                cli::mounts::ROLE_FS_SYNC
            ),
        ])
        .unwrap()
    };
    assert!(
        !sync().is_empty(),
        "a file-sync container serves the remote volumes"
    );
    let stop = dev.run(&user, &["stop", "-t", "1"]);
    assert_eq!(stop.code, 0, "compose stop: {stop:?}");
    assert!(
        sync().is_empty(),
        "file sync still running after stop: {}",
        sync()
    );
    assert_eq!(a.get("http://web:8080/").unwrap(), "web");

    let down = dev.run(&user, &["down", "-v", "-t", "1"]);
    assert_eq!(down.code, 0, "compose down: {down:?}");
    assert_eq!(a.get("http://web:8080/").unwrap(), "web");
    assert!(dev.containers().is_empty(), "{:?}", dev.containers());
    let left = leftovers_but(&KEPT);
    assert!(left.is_empty(), "left behind {left:?}");
    user.quit_clean("after compose down with remote volumes");
}

/// The dev project of a Kubernetes connection: an intercept of `web`, a proxy of `orders`, and
/// a plain sibling.
const DEV_KUBE: &str = r#"x-tele:
  connections: [{name: kc1, namespace: @NS@, kubeconfig: @KUBECONFIG@}]
services:
  web:
    image: @APP@
    command: [serve, --http, '9090', --name, dev-web]
    x-tele: {type: intercept, ports: ['9090:8080']}
  helper:
    image: @APP@
    command: [serve, --http, '8080', --name, helper]
  orders:
    build: ./does-not-matter
    x-tele: {type: proxy}
"#;

/// The same kind of dev file against a Kubernetes connection: the connection's kubeconfig
/// names the API stand-in (`tests::kube::behind`), whose manager pod forwards to a real
/// traffic-manager; `intercept` and `proxy` work through the API server's port-forward.
#[test]
fn compose_intercept_and_proxy_over_a_kubernetes_connection() {
    let Some(p) = Project::up_if_engine(&[("web", 8080), ("orders", 8080)]) else {
        return;
    };
    p.wait_for("http://web:8080/", "web", T).unwrap();
    let user = User::new();
    let (_rt, k, gateway, _) = tests::kube::behind::standin_with_manager(&user, &p, false);
    let server = format!("http://{gateway}:{}", k.addr.port());
    let kubeconfig =
        tests::kube::behind::write_kubeconfig(&user.home, &server, &p.name, "tok-compose");
    let yaml = DEV_KUBE
        .replace("@NS@", &p.name)
        .replace("@KUBECONFIG@", &kubeconfig);
    let dev = DevProject::new(&[("compose.yaml", &yaml)]);

    let up = dev.run(&user, &["up", "-d"]);
    assert_eq!(up.code, 0, "compose up -d: {up:?}");
    let st = user.tp(&["status", "--output", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["daemons"][0]["cluster_type"], "kubernetes", "{v}");
    assert_eq!(v["daemons"][0]["name"], "kc1", "{v}");
    // Intercept: the cluster's callers of web reach the dev web, through the forwarded tunnel.
    p.wait_for("http://web:8080/", "dev-web", T).unwrap();
    assert!(k
        .requests()
        .iter()
        .any(|r| r.uri.contains("/portforward") && r.uri.contains("ports=8082")));
    // Proxy: a sibling calling orders reaches the remote orders; the engaged service reaches
    // its sibling by name and the cluster by name.
    dev.wait_from("helper", "http://orders:8080/", "orders", T)
        .unwrap();
    dev.wait_from("helper", "http://web:9090/", "dev-web", T)
        .unwrap();
    dev.wait_from("web", "http://helper:8080/", "helper", T)
        .unwrap();
    dev.wait_from("web", "http://orders:8080/", "orders", T)
        .unwrap();

    let down = dev.run(&user, &["down", "-t", "1"]);
    assert_eq!(down.code, 0, "compose down: {down:?}");
    assert_eq!(p.get("http://web:8080/").unwrap(), "web");
    assert!(dev.containers().is_empty(), "{:?}", dev.containers());
    let status = user.tp(&["status"]).ok();
    assert!(!status.stdout.contains("kc1"), "{}", status.stdout);
    user.quit_clean("after compose down over a Kubernetes connection");
}
