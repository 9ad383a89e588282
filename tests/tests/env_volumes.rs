//! End-to-end tests of the intercepted environment and remote volumes: the handler
//! container sees the workload's env and its volumes under `TELEPRESENCE_ROOT`, live, both ways.
//! Run serially (`--test-threads=1`), like every end-to-end test.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tests::*;

const T: Duration = Duration::from_secs(30);
const HOSTILE: &str = r#"it's "quoted" $HOME `tick` back\slash a=b é 🚀"#;

const SERVICES: &str = r#"  web:
    image: @APP@
    command: ["serve", "--http", "8080", "--name", "web"]
    expose: ["8080"]
    environment:
      GREETING: "hello from web"
      HOSTILE: 'it''s "quoted" $$HOME `tick` back\slash a=b é 🚀'
    volumes:
      - data:/data
      - config:/config:ro
"#;
const VOLUMES: &str = "  data: {}\n  config: {}\n";

/// A project whose `web` has env and two volumes, `/data` (rw, with hello.txt) and `/config`
/// (ro, with app.conf).
fn project() -> Project {
    let p = Project::up_with(SERVICES, VOLUMES).unwrap();
    let web = p.container("web").unwrap();
    let dir = std::env::temp_dir().join(format!("{}-seed", p.name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from the workload volume").unwrap();
    std::fs::write(dir.join("app.conf"), "mode=prod").unwrap();
    docker(&[
        "cp",
        dir.join("hello.txt").to_str().unwrap(),
        &format!("{web}:/data/hello.txt"),
    ])
    .unwrap();
    // A read-only mount can't be written through the workload: seed it through a created
    // (never started) container that mounts the volume read-write.
    let seed = format!("{}-seed", p.name);
    let (app, _) = images();
    docker(&[
        "create",
        "--name",
        &seed,
        "-v",
        &format!("{}_config:/config", p.name),
        app,
    ])
    .unwrap();
    docker(&[
        "cp",
        dir.join("app.conf").to_str().unwrap(),
        &format!("{seed}:/config/app.conf"),
    ])
    .unwrap();
    docker(&["rm", &seed]).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    p.wait_for("http://web:8080/", "web", T).unwrap();
    p
}

fn handler(user: &User, p: &Project, extra: &[&str]) -> Child {
    handler_with(user, p, extra, &[])
}

/// `extra` are intercept flags, `run` are the user's own `docker run` flags.
fn handler_with(user: &User, p: &Project, extra: &[&str], run: &[&str]) -> Child {
    user.intercept_cmd(p, "web", 9090, 8080, extra, run, "handler")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stop(p: &Project, user: &User, mut child: Child) -> String {
    docker(&["stop", "-t", "1", "intercept-web-9090"]).unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < T, "intercept did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    p.wait_for("http://web:8080/", "web", T).unwrap();
    user.tp(&["quit", "-s"]).ok();
    let left = leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn handler_sees_env_and_live_volumes() {
    if !engine_available() {
        return;
    }
    let p = project();
    let user = User::connected(&p);
    let envfile = user.home.join("web.env");
    let child = handler(
        &user,
        &p,
        &[
            "--env-file",
            envfile.to_str().unwrap(),
            "--env-syntax",
            "compose",
        ],
    );
    p.wait_for("http://web:8080/", "handler", T).unwrap();

    // Environment: the workload's own values, and the TELEPRESENCE_* variables.
    assert_eq!(
        p.get("http://web:8080/env/GREETING").unwrap(),
        "hello from web"
    );
    assert_eq!(p.get("http://web:8080/env/HOSTILE").unwrap(), HOSTILE);
    let root = p.get("http://web:8080/env/TELEPRESENCE_ROOT").unwrap();
    assert!(root.starts_with("/tmp/telfs-"), "{root}");
    assert_eq!(
        p.get("http://web:8080/env/TELEPRESENCE_MOUNTS").unwrap(),
        "/config:/data"
    );
    let id = p
        .get("http://web:8080/env/TELEPRESENCE_INTERCEPT_ID")
        .unwrap();
    assert!(id.ends_with(":web") && id.len() == 36 + 4, "{id}");
    assert!(p
        .get("http://web:8080/env/TELEPRESENCE_CONTAINER")
        .unwrap()
        .contains("web"));
    // The --env-file, mode 0600, read back by the compose reader.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&envfile).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let parsed: std::collections::BTreeMap<String, String> = dotenvy::from_path_iter(&envfile)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(parsed["HOSTILE"], HOSTILE);
    assert_eq!(parsed["TELEPRESENCE_INTERCEPT_ID"], id);

    // Volumes: present before the handler started, live both ways, read-only enforced.
    let data = format!("http://web:8080/file{root}/data/hello.txt");
    assert_eq!(p.get(&data).unwrap(), "hello from the workload volume");
    assert_eq!(
        p.get(&format!("http://web:8080/file{root}/config/app.conf"))
            .unwrap(),
        "mode=prod"
    );
    let web = p.container("web").unwrap();
    let dir = std::env::temp_dir().join(format!("{}-change", p.name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "changed in the workload").unwrap();
    docker(&[
        "cp",
        dir.join("hello.txt").to_str().unwrap(),
        &format!("{web}:/data/hello.txt"),
    ])
    .unwrap();
    let took = eventually(
        "workload change reaches the handler",
        Duration::from_secs(10),
        || {
            p.get(&data)
                .map(|b| b == "changed in the workload")
                .unwrap_or(false)
        },
    );
    eprintln!("workload -> handler propagation: {took:?}");
    let r = p
        .put(
            &format!("http://web:8080/file{root}/data/from-handler.txt"),
            "written by the handler",
        )
        .unwrap();
    assert_eq!(r, "written");
    let took = eventually(
        "handler write reaches the workload",
        Duration::from_secs(10),
        || {
            docker(&[
                "cp",
                &format!("{web}:/data/from-handler.txt"),
                dir.to_str().unwrap(),
            ])
            .is_ok()
                && std::fs::read_to_string(dir.join("from-handler.txt"))
                    .map(|s| s == "written by the handler")
                    .unwrap_or(false)
        },
    );
    eprintln!("handler -> workload propagation: {took:?}");
    let ro = p.put(
        &format!("http://web:8080/file{root}/config/app.conf"),
        "hacked",
    );
    assert!(ro.is_err(), "a read-only mount must refuse writes: {ro:?}");
    let _ = std::fs::remove_dir_all(dir);

    let out = stop(&p, &user, child);
    assert!(
        out.contains(&format!("   Volume Mount Point     : {root}")),
        "{out}"
    );
    assert!(out.contains("   Env file               : "), "{out}");
}

#[test]
fn mount_false_creates_no_volume() {
    if !engine_available() {
        return;
    }
    let p = project();
    let user = User::connected(&p);
    let child = handler(&user, &p, &["--mount=false"]);
    p.wait_for("http://web:8080/", "handler", T).unwrap();
    let vols = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        "label=telepresence.io/managed-by",
    ])
    .unwrap();
    assert!(vols.is_empty(), "no volume with --mount=false: {vols}");
    assert!(
        p.get("http://web:8080/env/TELEPRESENCE_ROOT").is_err(),
        "no root without mounts"
    );
    assert_eq!(
        p.get("http://web:8080/env/GREETING").unwrap(),
        "hello from web"
    );
    let out = stop(&p, &user, child);
    assert!(!out.contains("Volume Mount Point"), "{out}");
}

#[test]
fn env_json_and_docker_mount_root() {
    if !engine_available() {
        return;
    }
    let p = project();
    let user = User::connected(&p);
    let json = user.home.join("env.json");
    let child = handler_with(
        &user,
        &p,
        &[
            "--env-json",
            json.to_str().unwrap(),
            "--docker-mount",
            "/remote",
        ],
        &["-e", "GREETING=the handler's own"],
    );
    p.wait_for("http://web:8080/", "handler", T).unwrap();
    // The user's own `docker run -e` wins over the intercepted value.
    assert_eq!(
        p.get("http://web:8080/env/GREETING").unwrap(),
        "the handler's own"
    );
    assert_eq!(
        p.get("http://web:8080/env/TELEPRESENCE_ROOT").unwrap(),
        "/remote"
    );
    assert_eq!(
        p.get("http://web:8080/file/remote/data/hello.txt").unwrap(),
        "hello from the workload volume"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["HOSTILE"], HOSTILE);
    assert_eq!(v["TELEPRESENCE_ROOT"], "/remote");
    stop(&p, &user, child);
}

#[test]
fn large_tree_mounts_completely() {
    if !engine_available() {
        return;
    }
    let p = project();
    let web = p.container("web").unwrap();
    let dir = std::env::temp_dir().join(format!("{}-tree", p.name));
    std::fs::create_dir_all(dir.join("tree")).unwrap();
    let (files, bytes) = make_tree(&dir.join("tree"), 10_000, 200 * 1024 * 1024).unwrap();
    docker(&[
        "cp",
        dir.join("tree").to_str().unwrap(),
        &format!("{web}:/data/"),
    ])
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let user = User::connected(&p);
    let child = handler(&user, &p, &["--docker-mount", "/remote"]);
    p.wait_for("http://web:8080/", "handler", Duration::from_secs(120))
        .unwrap();
    // Complete before the handler started: every file, every byte.
    assert_eq!(
        p.get("http://web:8080/tree/remote/data/tree").unwrap(),
        format!("{files} {bytes}")
    );
    assert_eq!(
        p.get("http://web:8080/file/remote/data/tree/d07/f4207.txt")
            .unwrap(),
        "file number 4207"
    );
    stop(&p, &user, child);
}
