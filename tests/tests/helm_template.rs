//! `telepresence helm template`: the objects it prints are exactly what `helm install` with the
//! same values applies (against the API stand-in), when the webhook certificate is the user's
//! own (`--set-file` / values); without one it generates a certificate as `install` does; its
//! YAML output parses back to the same objects.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use cli::helm::{self, InstallArgs, TargetArgs, TemplateArgs};
use serde_json::Value;
use std::time::Duration;
use tests::kube::standin::StandIn;

#[tokio::test]
async fn template_prints_what_install_applies() {
    let dir = tempfile::tempdir().unwrap();
    let tls = helm::generate_tls("tm").unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let values = write(
        "values.yaml",
        &format!(
            "logLevel: debug\nagentInjector:\n  certificate:\n    caCrt: {:?}\n",
            tls.ca_crt
        ),
    );
    let crt = write("tls.crt", &tls.crt);
    let key = write("tls.key", &tls.key);
    let set = vec!["rbac.clusterWide=false,managedNamespaces={tm,shop}".to_string()];
    let set_file = vec![
        format!("agentInjector.certificate.crt={}", crt.display()),
        format!("agentInjector.certificate.key={}", key.display()),
    ];

    let k = StandIn::start().await;
    k.add_namespace("shop");
    helm::install(
        &k.client(),
        "test",
        InstallArgs {
            target: TargetArgs {
                manager_namespace: "tm".into(),
                ..Default::default()
            },
            create_namespace: true,
            set: set.clone(),
            set_file: set_file.clone(),
            values: vec![values.clone()],
            timeout: Duration::from_secs(30),
            ..Default::default()
        },
        false,
        &mut |_| {},
    )
    .await
    .unwrap();
    let applied: Vec<Value> = k
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && !r.uri.contains("/configmaps/telepresence-release"))
        .map(|r| yaml_serde::from_str(&r.body).unwrap())
        .collect();

    let args = TemplateArgs {
        namespace: "tm".into(),
        set,
        set_file,
        values: vec![values],
        team_mode: false,
    };
    let objects = helm::template_objects(&args).unwrap();
    assert_eq!(objects.len(), applied.len());
    for (t, a) in objects.iter().zip(&applied) {
        assert_eq!(t, a, "template and install differ");
    }
    // The user's certificate, not a generated one.
    let secret = objects.iter().find(|o| o["kind"] == "Secret").unwrap();
    let data = serde_json::to_string(secret).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&tls.crt);
    assert!(
        data.contains(&b64) || data.contains(&tls.crt.replace('\n', "\\n")),
        "{data}"
    );

    // The printed YAML documents are the same objects, in the same order.
    let out = helm::template(&args).unwrap();
    let docs: Vec<Value> = out
        .text
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| yaml_serde::from_str(d).unwrap())
        .collect();
    assert_eq!(docs, objects);
    assert_eq!(out.data, Some(Value::Array(objects.clone())));

    // Without a certificate in the values, one is generated for the namespace's Service name.
    let plain = helm::template_objects(&TemplateArgs {
        namespace: "tm".into(),
        ..Default::default()
    })
    .unwrap();
    let hook = plain
        .iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    assert!(hook["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));

    // A `--set-file` without `=` is refused with how to write it.
    let e = helm::template_objects(&TemplateArgs {
        set_file: vec!["agentInjector.certificate.crt".into()],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "--set-file \"agentInjector.certificate.crt\": use KEY=FILE"
    );
}

/// `helm install --dry-run` prints the plan `helm template` prints (with the user's own
/// certificate: the same objects), reading the cluster but sending it no write.
#[tokio::test]
async fn install_dry_run_prints_the_plan_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tls = helm::generate_tls("tm").unwrap();
    let mut set_file = Vec::new();
    for (key, text) in [("caCrt", &tls.ca_crt), ("crt", &tls.crt), ("key", &tls.key)] {
        let p = dir.path().join(key);
        std::fs::write(&p, text).unwrap();
        set_file.push(format!("agentInjector.certificate.{key}={}", p.display()));
    }
    let set = vec!["agent.logLevel=debug,agent.image.pullSecrets={regcred}".to_string()];
    let k = StandIn::start().await;
    let out = helm::install(
        &k.client(),
        "test",
        InstallArgs {
            target: TargetArgs {
                manager_namespace: "tm".into(),
                ..Default::default()
            },
            set: set.clone(),
            set_file: set_file.clone(),
            dry_run: true,
            timeout: Duration::from_secs(30),
            ..Default::default()
        },
        false,
        &mut |_| {},
    )
    .await
    .unwrap();
    let writes: Vec<String> = k
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect();
    assert!(writes.is_empty(), "dry run wrote: {writes:?}");
    let template = helm::template(&TemplateArgs {
        namespace: "tm".into(),
        set,
        set_file,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(out.text, template.text);
    assert_eq!(out.data, template.data);
    assert!(out.text.contains("TP_AGENT_PULL_SECRETS"), "{}", out.text);
}
