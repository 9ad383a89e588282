//! The shipped chart rendered with default and non-default values: every object deserializes
//! into its k8s-openapi type, and the values change what they are documented to change.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::{json, Value};
use tp_cli::helm::{self, chart, InstallArgs, WebhookTls};

fn tls() -> WebhookTls {
    helm::generate_tls("ambassador").unwrap()
}

fn render(user: Value, ns: &str) -> Vec<Value> {
    let values = helm::effective_values(&user, "", "0.1.0-abc", &tls());
    chart::render(&values, ns).unwrap()
}

fn kinds(objs: &[Value]) -> Vec<String> {
    objs.iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect()
}

/// Deserializes every object into its typed form (fails on unknown shapes, wrong types).
fn typed(objs: &[Value]) {
    for o in objs {
        let k = o["kind"].as_str().unwrap();
        let r: Result<(), serde_json::Error> = match k {
            "ServiceAccount" => serde_json::from_value::<ServiceAccount>(o.clone()).map(drop),
            "Secret" => serde_json::from_value::<Secret>(o.clone()).map(drop),
            "ConfigMap" => serde_json::from_value::<ConfigMap>(o.clone()).map(drop),
            "Service" => serde_json::from_value::<Service>(o.clone()).map(drop),
            "Deployment" => serde_json::from_value::<Deployment>(o.clone()).map(drop),
            "ClusterRole" => serde_json::from_value::<ClusterRole>(o.clone()).map(drop),
            "ClusterRoleBinding" => {
                serde_json::from_value::<ClusterRoleBinding>(o.clone()).map(drop)
            }
            "Role" => serde_json::from_value::<Role>(o.clone()).map(drop),
            "RoleBinding" => serde_json::from_value::<RoleBinding>(o.clone()).map(drop),
            "MutatingWebhookConfiguration" => {
                serde_json::from_value::<MutatingWebhookConfiguration>(o.clone()).map(drop)
            }
            other => panic!("unexpected kind {other}"),
        };
        r.unwrap_or_else(|e| panic!("{k} {}: {e}\n{o:#}", o["metadata"]["name"]));
    }
}

fn find<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn deployment(objs: &[Value]) -> Deployment {
    serde_json::from_value(find(objs, "Deployment")[0].clone()).unwrap()
}

fn env(d: &Deployment, key: &str) -> Option<String> {
    let c = &d.spec.template.spec.as_ref().unwrap().containers[0];
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == key)
        .map(|e| e.value.clone().unwrap_or_default())
}

#[test]
fn defaults_render_every_object_typed_and_cluster_wide() {
    let objs = render(json!({}), "ambassador");
    typed(&objs);
    assert_eq!(
        kinds(&objs),
        [
            "ServiceAccount",
            "Secret",
            "ConfigMap",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "Deployment",
            "MutatingWebhookConfiguration"
        ]
    );
    let d = deployment(&objs);
    let c = &d.spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("telepresence:0.1.0-abc"));
    assert_eq!(
        c.args.as_deref(),
        Some(&["traffic-manager".to_string()][..])
    );
    assert_eq!(env(&d, "TP_CLUSTER_TYPE").as_deref(), Some("kubernetes"));
    assert_eq!(env(&d, "TP_TEAM_MODE").as_deref(), Some("false"));
    assert_eq!(
        env(&d, "TP_AGENT_IMAGE").as_deref(),
        Some("telepresence:0.1.0-abc")
    );
    let ns_env = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "TP_MANAGER_NAMESPACE")
        .unwrap();
    assert_eq!(
        ns_env
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.namespace"
    );
    let labels = d
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert_eq!(labels["app"], "traffic-manager");
    assert_eq!(labels["telepresence.io/managed-by"], "telepresence");
    // The Service has the ports of the agreed interface.
    let svc: Service = serde_json::from_value(find(&objs, "Service")[0].clone()).unwrap();
    let ports: Vec<(String, i32)> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port))
        .collect();
    assert_eq!(
        ports,
        [
            ("api".into(), 8081),
            ("tunnel".into(), 8082),
            ("https".into(), 443)
        ]
    );
    // The webhook trusts the CA that signed the serving certificate in the Secret.
    let wh: MutatingWebhookConfiguration =
        serde_json::from_value(find(&objs, "MutatingWebhookConfiguration")[0].clone()).unwrap();
    let w = &wh.webhooks.unwrap()[0];
    assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
    let cc = &w.client_config;
    assert_eq!(
        cc.service.as_ref().unwrap().path.as_deref(),
        Some("/traffic-agent")
    );
    let secret: Secret = serde_json::from_value(find(&objs, "Secret")[0].clone()).unwrap();
    let data = secret.data.unwrap();
    assert_eq!(cc.ca_bundle.as_ref().unwrap().0, data["ca.crt"].0);
    assert!(String::from_utf8(data["tls.key"].0.clone())
        .unwrap()
        .contains("PRIVATE KEY"));
    // Cluster-wide RBAC reads nodes and namespaces; no Role exists.
    let cr: ClusterRole = serde_json::from_value(find(&objs, "ClusterRole")[0].clone()).unwrap();
    assert!(cr
        .rules
        .unwrap()
        .iter()
        .any(|r| r.resources.iter().flatten().any(|x| x == "nodes")));
    assert!(find(&objs, "Role").is_empty());
    // Every object carries our label.
    for o in &objs {
        assert_eq!(
            o["metadata"]["labels"]["telepresence.io/managed-by"], "telepresence",
            "{o}"
        );
    }
}

#[test]
fn namespaced_rbac_team_mode_registry_and_values_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.yaml");
    std::fs::write(
        &file,
        "rbac:\n  clusterWide: false\nmanagedNamespaces: [shop, blog]\nnodeSelector:\n  disk: ssd\n",
    )
    .unwrap();
    let args = InstallArgs {
        values: vec![file],
        set: vec![
            "image.registry=ghcr.io/me,logLevel=debug".into(),
            "podAnnotations.team=dev".into(),
        ],
        team_mode: true,
        ..Default::default()
    };
    let user = helm::user_values(&args).unwrap();
    let values = helm::effective_values(&user, "registry.local:5000", "0.1.0-abc", &tls());
    let objs = chart::render(&values, "tm").unwrap();
    typed(&objs);
    // Namespaced: a Role + RoleBinding per managed namespace plus the manager's own; no
    // cluster-wide role; nodes are never granted.
    assert!(find(&objs, "ClusterRole").is_empty());
    assert!(find(&objs, "ClusterRoleBinding").is_empty());
    let mut role_ns: Vec<String> = find(&objs, "Role")
        .iter()
        .map(|o| o["metadata"]["namespace"].as_str().unwrap().to_string())
        .collect();
    role_ns.sort();
    assert_eq!(role_ns, ["blog", "shop", "tm"]);
    assert_eq!(find(&objs, "RoleBinding").len(), 3);
    for rb in find(&objs, "RoleBinding") {
        let rb: RoleBinding = serde_json::from_value(rb.clone()).unwrap();
        let s = &rb.subjects.unwrap()[0];
        assert_eq!(
            (s.name.as_str(), s.namespace.as_deref()),
            ("traffic-manager", Some("tm"))
        );
    }
    assert!(!serde_json::to_string(&find(&objs, "Role"))
        .unwrap()
        .contains("nodes"));
    // The webhook only acts in the managed namespaces.
    let wh = serde_json::to_string(&find(&objs, "MutatingWebhookConfiguration")[0]).unwrap();
    assert!(wh.contains("\"shop\"") && wh.contains("\"blog\""), "{wh}");
    let d = deployment(&objs);
    // --set wins over config: the user's registry is used, not images.registry.
    assert_eq!(
        d.spec.template.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("ghcr.io/me/telepresence:0.1.0-abc")
    );
    assert_eq!(env(&d, "TP_TEAM_MODE").as_deref(), Some("true"));
    assert_eq!(env(&d, "RUST_LOG").as_deref(), Some("debug"));
    assert_eq!(
        env(&d, "TP_MANAGED_NAMESPACES").as_deref(),
        Some("shop,blog")
    );
    let pod = d.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.node_selector.as_ref().unwrap()["disk"], "ssd");
    let ann = d
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap();
    assert_eq!(ann["team"], "dev");
    assert!(ann.contains_key("checksum/tls"));

    // The configured registry is used when the user sets none.
    let values = helm::effective_values(&json!({}), "registry.local:5000/", "t1", &tls());
    let d = deployment(&chart::render(&values, "tm").unwrap());
    assert_eq!(
        d.spec.template.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("registry.local:5000/telepresence:t1")
    );
}

#[test]
fn bad_values_are_refused_with_the_reason() {
    let values = helm::effective_values(&json!({"rbac": {"clusterWide": false}}), "", "t", &tls());
    let e = chart::render(&values, "tm").unwrap_err().to_string();
    assert!(e.contains("managedNamespaces"), "{e}");
    let e = chart::parse_set("a[0]=x").unwrap_err().to_string();
    assert!(e.contains("values file"), "{e}");
    assert!(chart::parse_set("novalue").is_err());
    assert_eq!(
        chart::parse_set("a.b=1,c={x,y},d\\.e=true,f=007").unwrap(),
        json!({"a": {"b": 1}, "c": ["x", "y"], "d.e": true, "f": "007"})
    );
    // Disabling the injector drops the webhook, its Secret and the TLS volume.
    let values = helm::effective_values(
        &json!({"agentInjector": {"enabled": false}}),
        "",
        "t",
        &tls(),
    );
    let objs = chart::render(&values, "tm").unwrap();
    typed(&objs);
    assert!(find(&objs, "MutatingWebhookConfiguration").is_empty());
    assert!(find(&objs, "Secret").is_empty());
    assert!(deployment(&objs)
        .spec
        .template
        .spec
        .unwrap()
        .volumes
        .is_none());
}

/// Cross-check of the renderer against Go's own `text/template` with sprig (the function
/// library Helm uses) and Helm's `include`/`required`/`fail`/`toYaml`: the program in
/// `scripts/chart-go-render` renders the same chart with the same data, and both must give the
/// same objects. Needs `go` and Debian's `golang-github-masterminds-sprig-dev` and
/// `golang-gopkg-yaml.v3-dev` (GOPATH mode, nothing downloaded); without them it is skipped
/// with the reason.
#[test]
fn renderer_agrees_with_go_text_template_and_sprig() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let gopath = "/usr/share/gocode";
    if std::process::Command::new("go")
        .arg("version")
        .output()
        .is_err()
    {
        println!("SKIPPED: renderer_agrees_with_go_text_template_and_sprig: no `go` toolchain (apt-get install golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev)");
        return;
    }
    if !std::path::Path::new(gopath)
        .join("src/github.com/Masterminds/sprig")
        .exists()
    {
        println!("SKIPPED: renderer_agrees_with_go_text_template_and_sprig: sprig is not installed under {gopath} (apt-get install golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("gorender");
    let built = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(root.join("scripts/chart-go-render"))
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOCACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let cases = [
        json!({}),
        json!({"rbac": {"clusterWide": false}, "managedNamespaces": ["shop", "blog"], "teamMode": true,
               "image": {"registry": "ghcr.io/me/", "pullSecrets": ["regcred"]},
               "podAnnotations": {"a": "b"}, "podLabels": {"x": "y"}, "tolerations": [{"key": "k", "operator": "Exists"}],
               "agent": {"image": "other/agent:1"}}),
        json!({"agentInjector": {"enabled": false}, "nodeSelector": {"disk": "ssd"}, "replicaCount": 2}),
    ];
    for user in cases {
        let values = helm::effective_values(&user, "", "0.1.0-abc", &tls());
        let mut ours = chart::render(&values, "tm").unwrap();
        let data = chart::render_data(&values, "tm");
        let mut child = std::process::Command::new(&bin)
            .arg(root.join("charts/traffic-manager"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(data.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "go render failed for {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut theirs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let key = |v: &Value| v.to_string();
        ours.sort_by_key(key);
        theirs.sort_by_key(key);
        assert_eq!(ours.len(), theirs.len(), "{user}");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a, b, "values {user}");
        }
    }
}
