//! The webhook on pods as the API server sends them on CREATE (defaults filled in, the projected
//! service-account token volume and its mounts, existing init containers, a native sidecar),
//! judged by what the API server and Pod Security admission would do with the result:
//! every generated name unique and within its Kubernetes format ([`names_are_valid`]), every
//! Service port reaching an intercepted container port going through the agent
//! ([`bypasses`]), the Pod Security level kept where the mode allows it
//! ([`pod_security_violations`], the rules of the Pod Security Standards), and the patched pods
//! re-checked independently (python `jsonpatch` and `kubernetes-validate`, see
//! `tests/src/kube/schemas.rs`).
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::core::admission::AdmissionReview;
use kube::core::DynamicObject;
use kubernetes::configmap::{self, AgentConfig, PortMode};
use kubernetes::patch::InjectSettings;
use kubernetes::ports::{self, Workload};
use kubernetes::webhook::{self, BoxFuture, ConfigSource, SourceError};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use tests::kube::fixtures::{named, num, service};
use tests::kube::schemas::{self, PatchedPod};

struct One(AgentConfig);

impl ConfigSource for One {
    fn agent_config<'a>(
        &'a self,
        _namespace: &'a str,
        _kind: &'a str,
        _name: &'a str,
        _pod: &'a Pod,
        _dry_run: bool,
    ) -> BoxFuture<'a, Result<Option<AgentConfig>, SourceError>> {
        Box::pin(async move { Ok(Some(self.0.clone())) })
    }
}

const TOKEN_VOLUME: &str = "kube-api-access-x7k2p";

/// A container as the API server has defaulted it: ports with protocol, terminationMessage*,
/// imagePullPolicy, resources and the service-account token mount.
fn ctr(name: &str, ports: &[(Option<&str>, i32)], extra: Value) -> Value {
    let mut c = json!({
        "name": name,
        "image": format!("registry.example/{name}:1.4.2"),
        "imagePullPolicy": "IfNotPresent",
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "volumeMounts": [{
            "name": TOKEN_VOLUME, "readOnly": true,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
        }],
    });
    if !ports.is_empty() {
        c["ports"] = ports
            .iter()
            .map(|(n, p)| {
                let mut v = json!({"containerPort": p, "protocol": "TCP"});
                if let Some(n) = n {
                    v["name"] = json!(n);
                }
                v
            })
            .collect();
    }
    if let Value::Object(m) = extra {
        for (k, v) in m {
            c[k] = v;
        }
    }
    c
}

/// What Pod Security `restricted` asks of a container.
fn restricted_ctr() -> Value {
    json!({"securityContext": {
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    }})
}

/// A pod of Deployment `app` as the ReplicaSet controller creates it and the API server hands it
/// to the webhook (after its own defaulting and the ServiceAccount admission plugin).
fn create_pod(app: &str, containers: Vec<Value>, init: Vec<Value>, pod_sc: Value) -> Value {
    let mut spec = json!({
        "containers": containers,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": pod_sc,
        "schedulerName": "default-scheduler",
        "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority",
        "priority": 0,
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ],
        "volumes": [
            {"name": "cache", "emptyDir": {}},
            {"name": TOKEN_VOLUME, "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}}
        ],
    });
    if !init.is_empty() {
        spec["initContainers"] = json!(init);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{app}-7d9f8b6c5d-"),
            "namespace": "shop",
            "labels": {"app": app, "pod-template-hash": "7d9f8b6c5d"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-01T10:00:00Z"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-7d9f8b6c5d"),
                "uid": "5b0c9d2e-8f1a-4c3b-9e7d-1a2b3c4d5e6f", "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": spec
    })
}

/// The pod-level securityContext of a pod that meets `restricted`.
fn restricted_pod_sc() -> Value {
    json!({"runAsNonRoot": true, "runAsUser": 1000, "fsGroup": 2000, "seccompProfile": {"type": "RuntimeDefault"}})
}

/// One webhook run: the plan from the pod's template and Services, the review, the patch.
struct Outcome {
    name: String,
    cfg: AgentConfig,
    original: Value,
    patch: Value,
    patched: Value,
    services: Vec<Service>,
    min_version: Option<&'static str>,
}

async fn inject(
    name: &str,
    pod: Value,
    services: Vec<Service>,
    min_version: Option<&'static str>,
) -> Outcome {
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let app = typed.metadata.labels.as_ref().unwrap()["app"].clone();
    let w = Workload {
        kind: ports::KIND_DEPLOYMENT,
        name: app,
        namespace: "shop".into(),
        template: k8s_openapi::api::core::v1::PodTemplateSpec {
            metadata: Some(typed.metadata.clone()),
            spec: typed.spec.clone(),
        },
    };
    let m = ports::match_ports(&w.template, &services.iter().collect::<Vec<_>>()).unwrap();
    let cfg = configmap::plan(&w, &m, "10.96.0.50:8081", "10.96.0.50:8082").unwrap();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0d7e5a51-3c1f-4b7e-a6d4-2f0c9b8e7a61",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    let settings = InjectSettings {
        agent_image: "registry.example/telepresence:0.1.0".into(),
        image_pull_policy: Some("IfNotPresent".into()),
        ..Default::default()
    };
    let out = webhook::review(&One(cfg.clone()), &settings, review.to_string().as_bytes()).await;
    let mut raw: Value = serde_json::from_slice(&out).unwrap();
    let wire = raw["response"].as_object_mut().unwrap().remove("patch");
    let r: AdmissionReview<DynamicObject> = serde_json::from_value(raw).unwrap();
    let resp = r.response.unwrap();
    assert!(resp.allowed);
    assert_eq!(resp.warnings, None, "{name}: injected without warnings");
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(wire.expect("a patch").as_str().unwrap())
        .unwrap();
    let patch: Value = serde_json::from_slice(&bytes).unwrap();
    let mut patched = pod.clone();
    json_patch::patch(
        &mut patched,
        &serde_json::from_value::<json_patch::Patch>(patch.clone()).unwrap(),
    )
    .unwrap();
    Outcome {
        name: name.into(),
        cfg,
        original: pod,
        patch,
        patched,
        services,
        min_version,
    }
}

fn arr(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn all_containers(pod: &Value) -> Vec<Value> {
    let mut v = arr(&pod["spec"]["initContainers"]);
    v.extend(arr(&pod["spec"]["containers"]));
    v
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Every name in the pod unique where Kubernetes wants it and in its format: container names
/// (DNS labels, unique over containers and init containers), port names (IANA_SVC_NAME, unique
/// in the pod so that a Service's named `targetPort` has one meaning), volume names (DNS labels,
/// unique), and the workload's ConfigMap key. Returns the problems.
fn names_are_valid(o: &Outcome) -> Vec<String> {
    let mut bad = Vec::new();
    let mut seen = BTreeSet::new();
    for c in all_containers(&o.patched) {
        let n = c["name"].as_str().unwrap().to_string();
        if !is_dns_label(&n) || !seen.insert(n.clone()) {
            bad.push(format!("container name {n:?} invalid or duplicate"));
        }
    }
    let mut ports = BTreeSet::new();
    for c in all_containers(&o.patched) {
        for p in arr(&c["ports"]) {
            if let Some(n) = p["name"].as_str() {
                if !configmap::is_port_name(n) {
                    bad.push(format!("port name {n:?} is not an IANA_SVC_NAME"));
                }
                if !ports.insert(n.to_string()) {
                    bad.push(format!("port name {n:?} duplicate"));
                }
            }
        }
    }
    let mut vols = BTreeSet::new();
    for v in arr(&o.patched["spec"]["volumes"]) {
        let n = v["name"].as_str().unwrap().to_string();
        if !is_dns_label(&n) || !vols.insert(n.clone()) {
            bad.push(format!("volume name {n:?} invalid or duplicate"));
        }
    }
    for c in all_containers(&o.patched) {
        for m in arr(&c["volumeMounts"]) {
            if !vols.contains(m["name"].as_str().unwrap()) {
                bad.push(format!("mount of unknown volume {}", m["name"]));
            }
        }
    }
    let key = &o.cfg.workload_name;
    if key.is_empty()
        || key.len() > 253
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        bad.push(format!("ConfigMap key {key:?} invalid"));
    }
    bad
}

/// The (container, port) a Service port reaches in `pod`, resolved the way the endpoints
/// controller does (a named `targetPort`: the first container port with that name and protocol).
fn endpoint(pod: &Value, sp: &k8s_openapi::api::core::v1::ServicePort) -> Option<(String, i64)> {
    let containers = arr(&pod["spec"]["containers"]);
    match &sp.target_port {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(n)) => {
            containers.iter().find_map(|c| {
                arr(&c["ports"]).iter().find_map(|p| {
                    (p["name"].as_str() == Some(n.as_str())).then(|| {
                        (
                            c["name"].as_str().unwrap().to_string(),
                            p["containerPort"].as_i64().unwrap(),
                        )
                    })
                })
            })
        }
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
            Some((String::new(), i64::from(*n)))
        }
        None => Some((String::new(), i64::from(sp.port))),
    }
}

/// The redirects the init container installs: app port → agent port.
fn redirects(pod: &Value) -> BTreeMap<i64, i64> {
    arr(&pod["spec"]["initContainers"])
        .iter()
        .filter(|c| c["name"] == "tel-agent-init")
        .flat_map(|c| arr(&c["env"]))
        .filter(|e| e["name"] == "TP_REDIRECTS")
        .flat_map(|e| {
            e["value"]
                .as_str()
                .unwrap()
                .split(',')
                .map(|p| {
                    let (a, b) = p.split_once(':').unwrap();
                    (a.parse().unwrap(), b.parse().unwrap())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Service ports that reach an intercepted container port in the original pod but, in the
/// patched pod, reach the app without passing the agent (neither the agent's container port nor
/// a port the init container redirects).
fn bypasses(o: &Outcome) -> Vec<String> {
    let intercepted: BTreeSet<i64> = o.cfg.ports.iter().map(|p| i64::from(p.app_port)).collect();
    let agent_ports: BTreeSet<i64> = o
        .cfg
        .ports
        .iter()
        .map(|p| i64::from(p.agent_port))
        .collect();
    let redirected = redirects(&o.patched);
    let mut bad = Vec::new();
    for svc in &o.services {
        for sp in svc.spec.as_ref().unwrap().ports.iter().flatten() {
            let Some((_, before)) = endpoint(&o.original, sp) else {
                continue;
            };
            if !intercepted.contains(&before) {
                continue;
            }
            let (container, after) = endpoint(&o.patched, sp).expect("still reaches a port");
            let through_agent = (container == "traffic-agent" && agent_ports.contains(&after))
                || redirected
                    .get(&after)
                    .is_some_and(|a| agent_ports.contains(a));
            if !through_agent {
                bad.push(format!(
                    "service {} port {} reaches {container}:{after} past the agent",
                    svc.metadata.name.as_deref().unwrap_or(""),
                    sp.port
                ));
            }
        }
    }
    bad
}

/// Capabilities `baseline` allows to add.
const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// What the Pod Security Standards (`baseline`, or `restricted` which includes it) find wrong
/// with a pod: the controls that concern containers, capabilities, users, seccomp and volumes.
fn pod_security_violations(pod: &Value, restricted: bool) -> Vec<String> {
    let spec = &pod["spec"];
    let psc = &spec["securityContext"];
    let mut bad = Vec::new();
    for k in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[k] == true {
            bad.push(k.to_string());
        }
    }
    for v in arr(&spec["volumes"]) {
        if v.get("hostPath").is_some() {
            bad.push("hostPath volume".into());
        }
        if restricted {
            let kinds = [
                "configMap",
                "csi",
                "downwardAPI",
                "emptyDir",
                "ephemeral",
                "persistentVolumeClaim",
                "projected",
                "secret",
            ];
            if !v
                .as_object()
                .unwrap()
                .keys()
                .all(|k| k == "name" || kinds.contains(&k.as_str()))
            {
                bad.push(format!("volume {} of a restricted type", v["name"]));
            }
        }
    }
    if psc["seccompProfile"]["type"] == "Unconfined" || (restricted && psc["runAsUser"] == 0) {
        bad.push("pod securityContext".into());
    }
    for c in all_containers(pod) {
        let n = c["name"].as_str().unwrap();
        let sc = &c["securityContext"];
        if sc["privileged"] == true {
            bad.push(format!("{n}: privileged"));
        }
        for p in arr(&c["ports"]) {
            if p["hostPort"].as_i64().unwrap_or(0) != 0 {
                bad.push(format!("{n}: hostPort"));
            }
        }
        let added: Vec<String> = arr(&sc["capabilities"]["add"])
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        for cap in &added {
            if !BASELINE_CAPS.contains(&cap.as_str()) {
                bad.push(format!("{n}: adds capability {cap} (baseline)"));
            }
        }
        if sc["seccompProfile"]["type"] == "Unconfined" {
            bad.push(format!("{n}: seccomp Unconfined"));
        }
        if sc.get("procMount").is_some_and(|p| p != "Default") {
            bad.push(format!("{n}: procMount"));
        }
        if !restricted {
            continue;
        }
        if sc["allowPrivilegeEscalation"] != false {
            bad.push(format!("{n}: allowPrivilegeEscalation != false"));
        }
        if !arr(&sc["capabilities"]["drop"]).contains(&json!("ALL")) {
            bad.push(format!("{n}: capabilities.drop must include ALL"));
        }
        if added.iter().any(|c| c != "NET_BIND_SERVICE") {
            bad.push(format!("{n}: adds capabilities beyond NET_BIND_SERVICE"));
        }
        let non_root = match sc.get("runAsNonRoot").and_then(Value::as_bool) {
            Some(b) => b,
            None => psc["runAsNonRoot"] == true,
        };
        if !non_root {
            bad.push(format!("{n}: runAsNonRoot != true"));
        }
        if sc["runAsUser"] == 0 {
            bad.push(format!("{n}: runAsUser=0"));
        }
        let seccomp = sc
            .get("seccompProfile")
            .map(|s| s["type"].clone())
            .unwrap_or_else(|| psc["seccompProfile"]["type"].clone());
        if seccomp != "RuntimeDefault" && seccomp != "Localhost" {
            bad.push(format!(
                "{n}: seccompProfile must be RuntimeDefault or Localhost"
            ));
        }
    }
    bad
}

fn agent(o: &Outcome) -> Value {
    arr(&o.patched["spec"]["containers"])
        .into_iter()
        .find(|c| c["name"] == "traffic-agent")
        .expect("agent injected")
}

/// Every case, injected.
async fn cases() -> Vec<Outcome> {
    let native_sidecar = ctr(
        "mesh-proxy",
        &[(Some("proxy-admin"), 15000)],
        json!({"restartPolicy": "Always", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}),
    );
    let migrate = ctr("migrate", &[], restricted_ctr());
    let mut out = Vec::new();

    // Port names cut to the same 15 characters, and a port already called like a renamed one.
    let pod = create_pod(
        "metrics",
        vec![
            ctr(
                "exporter",
                &[
                    (Some("http-metrics-a"), 9100),
                    (Some("http-metrics-b"), 9101),
                    (Some("http"), 8080),
                ],
                restricted_ctr(),
            ),
            ctr("helper", &[(Some("tm-http"), 8090)], restricted_ctr()),
        ],
        vec![migrate.clone(), native_sidecar.clone()],
        restricted_pod_sc(),
    );
    let svc = service(
        "shop",
        "metrics",
        "metrics",
        &[
            ("a", 9100, named("http-metrics-a")),
            ("b", 9101, named("http-metrics-b")),
            ("web", 80, named("http")),
        ],
        false,
    );
    out.push(inject("port-name-collision", pod, vec![svc], Some("1.29.0")).await);

    // Service ports `http:80 → "http"` and `alt:81 → 8080` reach the same container port, with
    // the named one numbered lower and higher.
    for (name, named_port, numeric_port) in [("shared-port", 80, 81), ("shared-port-rev", 81, 80)] {
        let pod = create_pod(
            "web",
            vec![ctr("app", &[(Some("http"), 8080)], restricted_ctr())],
            vec![migrate.clone()],
            restricted_pod_sc(),
        );
        let svc = service(
            "shop",
            "web",
            "web",
            &[
                ("http", named_port, named("http")),
                ("alt", numeric_port, num(8080)),
            ],
            false,
        );
        out.push(inject(name, pod, vec![svc], None).await);
    }

    // Several Services: one names the port (with appProtocol), another reaches it by number,
    // a headless one by name; a second container port only by name.
    let pod = create_pod(
        "api",
        vec![ctr(
            "api",
            &[(Some("http"), 8080), (Some("grpc"), 9090)],
            restricted_ctr(),
        )],
        vec![native_sidecar.clone()],
        restricted_pod_sc(),
    );
    let mut web = service(
        "shop",
        "api",
        "api",
        &[("http", 80, named("http")), ("grpc", 9090, named("grpc"))],
        false,
    );
    for p in web.spec.as_mut().unwrap().ports.as_mut().unwrap() {
        p.app_protocol = Some("kubernetes.io/h2c".into());
    }
    let internal = service(
        "shop",
        "api-internal",
        "api",
        &[("", 8080, num(8080))],
        false,
    );
    let peers = service(
        "shop",
        "api-peers",
        "api",
        &[("grpc", 9090, named("grpc"))],
        true,
    );
    out.push(
        inject(
            "several-services",
            pod,
            vec![web, internal, peers],
            Some("1.29.0"),
        )
        .await,
    );

    // A restricted pod intercepted by name only: it must stay restricted.
    let pod = create_pod(
        "shop",
        vec![
            ctr("shop", &[(Some("http"), 8080)], restricted_ctr()),
            ctr("metrics", &[(Some("metrics"), 9102)], restricted_ctr()),
        ],
        vec![migrate.clone()],
        restricted_pod_sc(),
    );
    let svc = service(
        "shop",
        "shop",
        "shop",
        &[("http", 80, named("http")), ("m", 9102, named("metrics"))],
        false,
    );
    out.push(inject("restricted-takeover", pod, vec![svc], None).await);

    // A root app without any securityContext (pod `securityContext: {}`), numeric target.
    let pod = create_pod(
        "legacy",
        vec![ctr("legacy", &[(None, 3000)], json!({}))],
        vec![],
        json!({}),
    );
    let svc = service("shop", "legacy", "legacy", &[("", 80, num(3000))], false);
    out.push(inject("root-app-redirect", pod, vec![svc], None).await);
    out
}

#[tokio::test]
async fn generated_names_are_unique_and_valid() {
    for o in cases().await {
        let bad = names_are_valid(&o);
        assert!(bad.is_empty(), "{}: {bad:?}", o.name);
    }
    // The collision case: both long names renamed apart, the existing `tm-http` left alone.
    let o = cases()
        .await
        .into_iter()
        .find(|o| o.name == "port-name-collision")
        .unwrap();
    let names: Vec<String> = arr(&o.patched["spec"]["containers"][0]["ports"])
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["tm-http-metrics", "tm-http-metri-2", "tm-http-2"]);
    assert_eq!(
        o.patched["spec"]["containers"][1]["ports"][0]["name"],
        "tm-http"
    );
    // The helper's own probes or references are not touched: only takeover ports are renamed.
    assert!(o.cfg.ports.iter().all(|p| p.mode == PortMode::Takeover));
}

#[test]
fn takeover_names_stay_valid_port_names() {
    let long = "abcdefghijklmno"; // 15: the longest valid port name
    for name in ["http", "a-very-long-port", long, "x1", "metrics-http-1"] {
        let mut taken = BTreeSet::new();
        for _ in 0..12 {
            let n = configmap::unique_takeover_name(name, |n| taken.contains(n));
            assert!(configmap::is_port_name(&n), "{name} -> {n}");
            assert!(taken.insert(n.clone()), "{name} -> {n} again");
        }
    }
    for bad in [
        "",
        "-a",
        "a-",
        "a--b",
        "1234",
        "Http",
        "abcdefghijklmnop",
        "a_b",
    ] {
        assert!(!configmap::is_port_name(bad), "{bad}");
    }
}

#[tokio::test]
async fn every_service_port_reaching_an_intercepted_port_goes_through_the_agent() {
    for o in cases().await {
        let bad = bypasses(&o);
        assert!(bad.is_empty(), "{}: {bad:?}", o.name);
    }
    for o in cases().await {
        let mode = |port: u16| {
            o.cfg
                .ports
                .iter()
                .find(|p| p.app_port == port)
                .map(|p| p.mode)
        };
        match o.name.as_str() {
            // A numeric service port shares the named one's container port: redirect, whichever
            // is numbered lower.
            "shared-port" | "shared-port-rev" => {
                assert_eq!(mode(8080), Some(PortMode::Redirect), "{}", o.name);
            }
            "several-services" => {
                assert_eq!(mode(8080), Some(PortMode::Redirect));
                assert_eq!(mode(9090), Some(PortMode::Redirect), "headless peers");
            }
            "restricted-takeover" | "port-name-collision" => {
                assert!(!o.cfg.needs_redirect(), "{}", o.name);
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_agent_keeps_the_pods_pod_security_level() {
    for o in cases().await {
        let restricted_before = pod_security_violations(&o.original, true).is_empty();
        let sc = &agent(&o)["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", o.name);
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", o.name);
        assert_eq!(sc["runAsNonRoot"], true, "{}", o.name);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{}", o.name);
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{}", o.name);
        let after_restricted = pod_security_violations(&o.patched, true);
        let after_baseline = pod_security_violations(&o.patched, false);
        if o.cfg.needs_redirect() {
            // The redirect's init container adds NET_ADMIN: no level but privileged admits it.
            assert!(
                after_baseline
                    .iter()
                    .any(|v| v.contains("tel-agent-init: adds capability NET_ADMIN")),
                "{}: {after_baseline:?}",
                o.name
            );
        } else {
            assert!(after_baseline.is_empty(), "{}: {after_baseline:?}", o.name);
            if restricted_before {
                assert!(
                    after_restricted.is_empty(),
                    "{}: {after_restricted:?}",
                    o.name
                );
            }
        }
        // Only the agent's securityContext was added: the pod's own is untouched.
        assert_eq!(
            o.patched["spec"]["securityContext"],
            o.original["spec"]["securityContext"]
        );
    }
    // The restricted cases were restricted before injection (the checker is not vacuous).
    let all = cases().await;
    let take = all
        .iter()
        .find(|o| o.name == "restricted-takeover")
        .unwrap();
    assert!(pod_security_violations(&take.original, true).is_empty());
    // The agent runs as the pod's user when the pod names one, as 65532 for a root app.
    assert!(agent(take)["securityContext"].get("runAsUser").is_none());
    let legacy = all.iter().find(|o| o.name == "root-app-redirect").unwrap();
    assert!(!pod_security_violations(&legacy.original, true).is_empty());
    assert_eq!(agent(legacy)["securityContext"]["runAsUser"], 65532);
}

#[tokio::test]
async fn patched_pods_pass_the_kubernetes_schemas_and_python_jsonpatch() {
    let pods: Vec<PatchedPod> = cases()
        .await
        .into_iter()
        .map(|o| PatchedPod {
            name: o.name,
            original: o.original,
            patch: o.patch,
            expected: o.patched,
            min_version: o.min_version,
        })
        .collect();
    schemas::check(
        "patched_pods_pass_the_kubernetes_schemas_and_python_jsonpatch",
        &pods,
        &[],
    );
}

/// Runs the `sh` program of [`runs_with_the_injected_security_context`] in new mount and
/// network namespaces (root filesystem read-only, as `readOnlyRootFilesystem` asks).
const POD_SCRIPT: &str = r#"
set -eu
mount --make-rprivate /
for m in / /tmp /work /root /home; do
  [ -d "$m" ] || continue
  mount -o remount,bind,ro "$m" 2>/dev/null || mount --bind -o ro "$m" "$m"
done
ip link set lo up 2>/dev/null || true
timeout 30 python3 -c '
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(s):
        s.send_response(200); s.end_headers(); s.wfile.write(b"app")
    def log_message(*a): pass
socketserver.TCPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()' "$APP_PORT" &
APP=$!
sleep 0.5
if touch /tmp/.tp-rofs-probe 2>/dev/null; then echo "root filesystem is writable"; exit 1; fi
env TP_REDIRECTS="$INIT_REDIRECTS" setpriv $INIT_PRIV "$TP_BIN" agent-init
setpriv $AGENT_PRIV "$TP_BIN" agent &
AGENT=$!
ok=""
for i in $(seq 1 50); do
  if python3 -c 'import urllib.request, sys; sys.exit(urllib.request.urlopen("http://127.0.0.1:%s/" % sys.argv[1], timeout=1).read() != b"app")' "$AGENT_PORT" 2>/dev/null; then ok=1; break; fi
  sleep 0.2
done
grep -E '^(Uid|CapEff|NoNewPrivs)' /proc/$AGENT/status
kill $AGENT $APP
[ -n "$ok" ] || { echo "the agent did not forward"; exit 1; }
echo "agent forwarded"
"#;

/// The injected containers run with exactly the securityContext the webhook wrote: the init
/// container as root with only NET_ADMIN installs its redirect, the agent as the non-root user
/// with no capability, no privilege escalation and a read-only root filesystem starts and
/// forwards to the app. Needs root, `unshare`, `setpriv`, python3 and the built binary; without
/// them it is skipped with the reason.
#[tokio::test]
async fn runs_with_the_injected_security_context() {
    let what = "runs_with_the_injected_security_context";
    let tp = tests::tp_bin();
    let usable = |c: &[&str]| {
        std::process::Command::new(c[0])
            .args(&c[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing = if !tp.exists() {
        Some(format!("no telepresence binary at {}", tp.display()))
    } else if !usable(&["unshare", "-mn", "true"]) {
        Some("cannot create mount and network namespaces (unshare -mn; needs root)".into())
    } else if !usable(&["setpriv", "--version"]) || !usable(&["python3", "--version"]) {
        Some("setpriv or python3 missing".into())
    } else {
        None
    };
    if let Some(why) = missing {
        if std::env::var("CI").as_deref() == Ok("true") && !tp.exists() {
            panic!("CI=true but {what}: {why}");
        }
        tests::skip(&format!("{what}: {why}"));
        return;
    }
    let all = cases().await;
    let o = all.iter().find(|o| o.name == "root-app-redirect").unwrap();
    let agent = agent(o);
    let init = arr(&o.patched["spec"]["initContainers"])
        .into_iter()
        .find(|c| c["name"] == "tel-agent-init")
        .unwrap();
    let priv_args = |c: &Value| {
        let sc = &c["securityContext"];
        let mut a = Vec::new();
        if let Some(u) = sc["runAsUser"].as_i64().filter(|u| *u != 0) {
            a.push(format!("--reuid {u} --regid {u} --clear-groups"));
        }
        if sc["allowPrivilegeEscalation"] == false {
            a.push("--no-new-privs".into());
        }
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        let caps: String = arr(&sc["capabilities"]["add"])
            .iter()
            .map(|c| format!(",+{}", c.as_str().unwrap().to_lowercase()))
            .collect();
        a.push(format!("--bounding-set -all{caps} --inh-caps -all{caps}"));
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        a.join(" ")
    };
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-mn", "sh", "-c", POD_SCRIPT])
        .env("TP_BIN", &tp)
        .env("APP_PORT", o.cfg.ports[0].app_port.to_string())
        .env("AGENT_PORT", o.cfg.ports[0].agent_port.to_string())
        .env("INIT_PRIV", priv_args(&init))
        .env("AGENT_PRIV", priv_args(&agent))
        .env(
            "INIT_REDIRECTS",
            arr(&init["env"])
                .iter()
                .find(|e| e["name"] == "TP_REDIRECTS")
                .unwrap()["value"]
                .as_str()
                .unwrap(),
        );
    for e in arr(&agent["env"]) {
        let v = match (e["value"].as_str(), &e["valueFrom"]) {
            (Some(v), _) => v.to_string(),
            (None, from) if from["fieldRef"]["fieldPath"] == "status.podIP" => "127.0.0.1".into(),
            // An optional Secret key (the agent token) that does not exist here: the kubelet
            // leaves the variable unset.
            (None, from) if from["secretKeyRef"]["optional"] == true => continue,
            (None, from) => panic!("unexpected env source {from}"),
        };
        cmd.env(e["name"].as_str().unwrap(), v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("agent forwarded"), "{text}");
    assert!(text.contains("Uid:\t65532"), "{text}");
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
}
