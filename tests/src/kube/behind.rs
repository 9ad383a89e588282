//! The API stand-in in front of a real traffic-manager, for connecting the real CLI the
//! Kubernetes way on the Docker engine: the Docker-engine manager of a test project (started
//! by a docker-mode connection that is then ended; the manager stays) is what the stand-in's
//! manager pod forwards to, the stand-in holds that manager's client credential in Secret
//! `traffic-manager-auth`, and a kubeconfig (with an exec credential plugin) names the
//! stand-in. Used by `tests/tests/kubernetes.rs` and `tests/tests/compose.rs`.

use super::standin::StandIn;
use crate::harness::{bridge_ip, docker, User};
use crate::stack::Project;

/// A kubeconfig for the stand-in at `server`, with an exec plugin that hands out `token`, and
/// a second context that must not reach the daemon; written into `home`, returns its path.
pub fn write_kubeconfig(home: &std::path::Path, server: &str, ns: &str, token: &str) -> String {
    write_kubeconfig_ca(home, server, ns, token, None)
}

/// [`write_kubeconfig`] with the CA (PEM) of a TLS stand-in.
pub fn write_kubeconfig_ca(
    home: &std::path::Path,
    server: &str,
    ns: &str,
    token: &str,
    ca: Option<&str>,
) -> String {
    use std::os::unix::fs::PermissionsExt;
    let plugin = home.join("get-token.sh");
    std::fs::write(
        &plugin,
        format!("#!/bin/sh\necho '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{token}\"}}}}'\n"),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    use base64::Engine as _;
    let ca_line = ca
        .map(|pem| {
            format!(
                "    certificate-authority-data: {}\n",
                base64::engine::general_purpose::STANDARD.encode(pem)
            )
        })
        .unwrap_or_default();
    let kc = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: standin\nclusters:\n- name: standin\n  cluster:\n    server: {server}\n{ca_line}- name: other\n  cluster:\n    server: https://other.example:6443\n    certificate-authority-data: T1RIRVI=\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: plugin\n    namespace: {ns}\n- name: other\n  context:\n    cluster: other\n    user: secret-user\nusers:\n- name: plugin\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never\n- name: secret-user\n  user:\n    token: must-not-leak\n",
        plugin.display()
    );
    let path = home.join("kubeconfig");
    std::fs::write(&path, kc).unwrap();
    path.display().to_string()
}

/// The gateway of a container on the default bridge: where containers reach a server of
/// this host.
pub fn bridge_gateway(container: &str) -> String {
    let gw = docker(&[
        "inspect",
        container,
        "--format",
        "{{.NetworkSettings.Networks.bridge.Gateway}}",
    ])
    .unwrap();
    assert!(!gw.is_empty(), "{container} has no bridge gateway");
    gw
}

/// A real traffic-manager for the project (the Docker-engine one, started by a docker-mode
/// connection that is then ended; the manager stays) behind the API stand-in, which listens on
/// all interfaces and has a ready manager pod whose forwarded ports lead to that manager.
/// With `tls`, the stand-in serves HTTPS with a certificate valid only for 127.0.0.1 and
/// localhost, like kind's API server. Returns the runtime serving the stand-in, the stand-in,
/// the bridge gateway (where containers reach the stand-in) and the CA (PEM) with `tls`.
pub fn standin_with_manager(
    user: &User,
    p: &Project,
    tls: bool,
) -> (tokio::runtime::Runtime, StandIn, String, Option<String>) {
    user.connect(p);
    user.tp(&["quit"]).ok();
    let mgr = cli::connect::manager_container(&p.name);
    let mgr_ip = bridge_ip(&mgr).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (k, ca) = if tls {
        let (k, ca) = rt.block_on(StandIn::start_tls_on(
            "0.0.0.0:0",
            &["127.0.0.1", "localhost"],
        ));
        (k, Some(ca))
    } else {
        (rt.block_on(StandIn::start_on("0.0.0.0:0")), None)
    };
    k.add_namespace("ambassador");
    k.add_manager_pod(
        "ambassador",
        "traffic-manager-5f7d9",
        true,
        "2026-01-01T00:00:00Z",
    );
    k.forward_port(8081, format!("{mgr_ip}:8081").parse().unwrap());
    k.forward_port(8082, format!("{mgr_ip}:8082").parse().unwrap());
    // The manager's client credential, where a Kubernetes manager keeps it (the Secret users
    // who may connect can read): derived from the secret this engine's manager was given.
    let env = docker(&[
        "inspect",
        &mgr,
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
    ])
    .unwrap();
    let secret = env
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{}=", protocol::auth::MANAGER_SECRET_ENV)))
        .expect("the manager container has its secret");
    let client = protocol::auth::Token::parse(secret)
        .unwrap()
        .derive(protocol::auth::Purpose::Client);
    k.put(&k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(kubernetes::auth::MANAGER_SECRET.into()),
            namespace: Some("ambassador".into()),
            ..Default::default()
        },
        data: Some(std::collections::BTreeMap::from([(
            kubernetes::auth::CLIENT_KEY.to_string(),
            k8s_openapi::ByteString(client.as_str().as_bytes().to_vec()),
        )])),
        ..Default::default()
    });
    let gw = bridge_gateway(&mgr);
    (rt, k, gw, ca)
}
