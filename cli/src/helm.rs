//! `telepresence helm install|upgrade|uninstall|template`: renders the chart shipped in this
//! binary (`charts/traffic-manager`, no `helm` binary needed), applies it with server-side apply,
//! records the release in ConfigMap `telepresence-release`, and waits for the manager;
//! `template` prints the objects `install` would apply, for GitOps tools to commit.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

use crate::output::CmdOutput;
use apply::{ObjectRef, Release};
use kubernetes::helm::{agents, apply, chart};

#[derive(Debug, Args)]
pub struct HelmArgs {
    #[command(subcommand)]
    pub command: HelmCommand,
}

#[derive(Debug, Subcommand)]
pub enum HelmCommand {
    /// Install the traffic-manager in the cluster.
    Install(InstallArgs),
    /// Upgrade (re-apply) the installed traffic-manager with new values or this binary's image.
    Upgrade(InstallArgs),
    /// Remove the traffic-manager and everything its release applied.
    Uninstall(TargetArgs),
    /// Print the manifests `helm install` would apply (for Argo CD, Flux and other GitOps
    /// tools); nothing is sent to a cluster.
    Template(TemplateArgs),
}

#[derive(Debug, Args, Clone, Default)]
pub struct TemplateArgs {
    /// Namespace the traffic-manager is rendered for.
    #[arg(short = 'n', long = "namespace", default_value = "ambassador")]
    pub namespace: String,
    /// Set a chart value (`a.b=v`, several separated by commas, `{x,y}` for lists); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Set a chart value to a file's content (`agentInjector.certificate.crt=tls.crt`);
    /// repeatable.
    #[arg(long = "set-file", value_name = "KEY=FILE")]
    pub set_file: Vec<String>,
    /// A values file (YAML); repeatable, later files win.
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Make personal intercepts (`--http-header=auto`) the default.
    #[arg(long)]
    pub team_mode: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct TargetArgs {
    /// Namespace of the traffic-manager.
    #[arg(long, default_value = "ambassador")]
    pub manager_namespace: String,
    /// Kubernetes context (default: the kubeconfig's current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Kubeconfig file.
    #[arg(long)]
    pub kubeconfig: Option<String>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct InstallArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Set a chart value (`a.b=v`, several separated by commas, `{x,y}` for lists); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// A values file (YAML); repeatable, later files win.
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Set a chart value to a file's content (`agentInjector.certificate.crt=tls.crt`);
    /// repeatable.
    #[arg(long = "set-file", value_name = "KEY=FILE")]
    pub set_file: Vec<String>,
    /// Create the manager namespace when it does not exist.
    #[arg(long)]
    pub create_namespace: bool,
    /// Make personal intercepts (`--http-header=auto`) the default.
    #[arg(long)]
    pub team_mode: bool,
    /// How long to wait for the traffic-manager to be ready (e.g. 90s, 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the manifests that would be applied (as `helm template` does, with this cluster's
    /// release and certificate), and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A `--timeout` value that does not parse (the value given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {0:?}: use e.g. 90s or 5m")]
    Invalid(String),
    #[error("invalid duration {0:?}: give a unit (s, m, h)")]
    NoUnit(String),
}

/// Parses `90`, `90s`, `5m`, `1h`, `2m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(s.to_string());
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| invalid())?;
        num.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(invalid()),
        };
    }
    if !num.is_empty() {
        return Err(DurationError::NoUnit(s.to_string()));
    }
    Ok(Duration::from_secs(total))
}

/// `images.registry` from `~/.config/telepresence/config.yml` (empty when unset).
pub fn configured_registry() -> Result<String> {
    let Some(path) = dirs::config_dir().map(|d| d.join("telepresence/config.yml")) else {
        return Ok(String::new());
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(String::new());
    };
    let v: Value = yaml_serde::from_str(&text)
        .with_context(|| format!("{} is not valid YAML", path.display()))?;
    Ok(v["images"]["registry"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// The image tag of this binary (`<version>-<digest>`, as `connect` builds it).
pub fn own_tag() -> Result<String> {
    let exe = std::env::current_exe().context("locating the telepresence executable")?;
    let tag = docker::image::image_tag(crate::connect::IMAGE_REPO, &exe)?;
    Ok(tag
        .rsplit_once(':')
        .map(|(_, t)| t.to_string())
        .unwrap_or(tag))
}

/// A CA and a serving certificate for the webhook at `traffic-manager.<ns>.svc`, PEM.
pub struct WebhookTls {
    pub ca_crt: String,
    pub crt: String,
    pub key: String,
}

pub fn generate_tls(namespace: &str) -> Result<WebhookTls> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("telepresence agent injector CA {namespace}"),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.not_before = rcgen::date_time_ymd(2024, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let svc = "traffic-manager";
    let mut leaf = CertificateParams::new(vec![
        format!("{svc}.{namespace}.svc"),
        format!("{svc}.{namespace}.svc.cluster.local"),
        format!("{svc}.{namespace}"),
        svc.to_string(),
    ])?;
    leaf.distinguished_name
        .push(DnType::CommonName, format!("{svc}.{namespace}.svc"));
    leaf.not_before = rcgen::date_time_ymd(2024, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(WebhookTls {
        ca_crt: ca_cert.pem(),
        crt: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The webhook TLS of an existing installation (kept on upgrade so the CA stays valid).
async fn existing_tls(client: &kube::Client, namespace: &str) -> Option<WebhookTls> {
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), namespace);
    let s = api.get_opt("traffic-manager-tls").await.ok()??;
    let data = s.data?;
    let get = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|s| !s.is_empty())
    };
    Some(WebhookTls {
        ca_crt: get("ca.crt")?,
        crt: get("tls.crt")?,
        key: get("tls.key")?,
    })
}

/// The user's values: `-f` files then `--set`, then `--set-file`, then `--team-mode`.
pub fn user_values(args: &InstallArgs) -> Result<Value> {
    let mut v = json!({});
    for f in &args.values {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read values file {}", f.display()))?;
        chart::merge(&mut v, chart::values_file(&f.display().to_string(), &text)?);
    }
    for s in &args.set {
        chart::merge(&mut v, chart::parse_set(s)?);
    }
    for s in &args.set_file {
        let Some((key, file)) = s
            .split_once('=')
            .filter(|(k, f)| !k.is_empty() && !f.is_empty())
        else {
            bail!("--set-file {s:?}: use KEY=FILE");
        };
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --set-file file {file}"))?;
        let mut one = Value::String(text);
        for part in key.rsplit('.') {
            one = json!({ part: one });
        }
        chart::merge(&mut v, one);
    }
    if args.team_mode {
        chart::merge(&mut v, json!({"teamMode": true}));
    }
    Ok(v)
}

/// The webhook TLS the user gives in `agentInjector.certificate` (`caCrt`, `crt`, `key`, all
/// three), for GitOps users who keep their own: then neither `install` nor `template` makes one.
pub fn given_tls(user: &Value) -> Option<WebhookTls> {
    let c = &user["agentInjector"]["certificate"];
    let get = |k: &str| {
        c[k].as_str()
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
    };
    Some(WebhookTls {
        ca_crt: get("caCrt")?,
        crt: get("crt")?,
        key: get("key")?,
    })
}

/// All values: chart defaults ← user values ← what the CLI fills in when left empty (image
/// registry from config, image tag of this binary) ← the webhook TLS.
pub fn effective_values(user: &Value, registry: &str, tag: &str, tls: &WebhookTls) -> Value {
    let mut v = chart::default_values();
    chart::merge(&mut v, user.clone());
    if v["image"]["registry"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
        && !registry.is_empty()
    {
        v["image"]["registry"] = json!(registry);
    }
    if v["image"]["tag"].as_str().unwrap_or_default().is_empty() {
        v["image"]["tag"] = json!(tag);
    }
    chart::merge(
        &mut v,
        json!({"agentInjector": {"certificate": {"caCrt": tls.ca_crt, "crt": tls.crt, "key": tls.key}}}),
    );
    v
}

/// A client for the kubeconfig's chosen context (exec plugins run by kube as kubectl would).
pub async fn client(t: &TargetArgs) -> Result<(kube::Client, String)> {
    let kc = kubernetes::kubeconfig::load(t.kubeconfig.as_deref())?;
    let reduced = kubernetes::kubeconfig::reduce(&kc, t.context.as_deref())?;
    let cfg = kube::Config::from_custom_kubeconfig(
        reduced.config,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("cannot use context {}", reduced.context))?;
    Ok((kube::Client::try_from(cfg)?, reduced.context))
}

pub async fn run(args: HelmArgs) -> Result<CmdOutput> {
    match args.command {
        HelmCommand::Install(a) => {
            let (c, ctx) = client(&a.target).await?;
            install(&c, &ctx, a, false, &mut |l| eprintln!("{l}")).await
        }
        HelmCommand::Upgrade(a) => {
            let (c, ctx) = client(&a.target).await?;
            install(&c, &ctx, a, true, &mut |l| eprintln!("{l}")).await
        }
        HelmCommand::Uninstall(t) => {
            let (c, ctx) = client(&t).await?;
            uninstall(&c, &ctx, &t.manager_namespace).await
        }
        HelmCommand::Template(t) => template(&t),
    }
}

/// The objects `install` with the same values would apply, in its order: rendered with the same
/// effective values (registry from config, this binary's image tag) and a webhook certificate
/// generated as `install` generates it, unless the values carry one.
pub fn template_objects(args: &TemplateArgs) -> Result<Vec<Value>> {
    let install = InstallArgs {
        target: TargetArgs {
            manager_namespace: args.namespace.clone(),
            ..Default::default()
        },
        set: args.set.clone(),
        set_file: args.set_file.clone(),
        values: args.values.clone(),
        team_mode: args.team_mode,
        ..Default::default()
    };
    let user = user_values(&install)?;
    let tls = match given_tls(&user) {
        Some(t) => t,
        None => generate_tls(&args.namespace)?,
    };
    let values = effective_values(&user, &configured_registry()?, &own_tag()?, &tls);
    Ok(chart::render(&values, &args.namespace)?)
}

/// `helm template`: the objects as YAML documents (`---`-separated), or as JSON with `--output`.
pub fn template(args: &TemplateArgs) -> Result<CmdOutput> {
    manifests(template_objects(args)?)
}

/// The objects as YAML documents (`---`-separated), or as JSON with `--output`: what `template`
/// and `install --dry-run` print.
fn manifests(objects: Vec<Value>) -> Result<CmdOutput> {
    let mut text = String::new();
    for o in &objects {
        text.push_str("---\n");
        text.push_str(&yaml_serde::to_string(o).context("objects serialize as YAML")?);
    }
    Ok(CmdOutput {
        text,
        data: Some(Value::Array(objects)),
    })
}

/// Install (or, with `upgrade`, re-apply) the chart.
pub async fn install(
    client: &kube::Client,
    context: &str,
    args: InstallArgs,
    upgrade: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<CmdOutput> {
    let ns = args.target.manager_namespace.clone();
    let user = user_values(&args)?;
    let registry = configured_registry()?;
    let tag = own_tag()?;
    let previous = apply::read_release(client, &ns).await?;
    check_release(previous.as_ref(), upgrade, &ns)?;
    // Everything is rendered (and so validated) before anything is changed.
    let tls = match (given_tls(&user), existing_tls(client, &ns).await) {
        (Some(t), _) => t,
        (None, Some(t)) if upgrade => t,
        _ => generate_tls(&ns)?,
    };
    let values = effective_values(&user, &registry, &tag, &tls);
    if values["image"]["registry"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
        && context.starts_with("kind-")
    {
        progress(&format!(
            "No images.registry: the nodes must already have image {}:{tag} (kind: `kind load docker-image {}:{tag} --name {}`)",
            crate::connect::IMAGE_REPO,
            crate::connect::IMAGE_REPO,
            context.trim_start_matches("kind-")
        ));
    }
    let objects = chart::render(&values, &ns)?;
    if args.dry_run {
        // Reads only (release, certificate): the plan against this cluster, nothing applied.
        return manifests(objects);
    }
    if !apply::namespace_exists(client, &ns).await? {
        if !args.create_namespace {
            bail!("namespace {ns} does not exist; pass --create-namespace to create it");
        }
        apply::create_namespace(client, &ns).await?;
        progress(&format!("Created namespace {ns}"));
    }
    let refs = apply_objects(client, &objects, previous.as_ref(), progress).await?;
    let release = Release {
        chart: format!("traffic-manager-{}", chart::chart_version()),
        revision: previous.as_ref().map(|r| r.revision + 1).unwrap_or(1),
        values: yaml_serde::to_string(&user).unwrap_or_default(),
        objects: refs,
    };
    apply::write_release(client, &ns, &release).await?;
    apply::wait_ready(client, &ns, args.timeout, progress).await?;
    let image = agent_image(&values);
    let verb = if upgrade { "upgraded" } else { "installed" };
    Ok(CmdOutput {
        text: format!(
            "Traffic Manager {verb} successfully (context {context}, namespace {ns}, revision {}, image {image})\n",
            release.revision
        ),
        data: Some(json!({
            "namespace": ns,
            "context": context,
            "revision": release.revision,
            "chart": release.chart,
            "image": image,
            "objects": release.objects,
        })),
    })
}

/// Install needs no release in `ns`, upgrade needs one.
fn check_release(previous: Option<&Release>, upgrade: bool, ns: &str) -> Result<()> {
    match (previous, upgrade) {
        (Some(r), false) => bail!(
            "the traffic-manager is already installed in namespace {ns} (revision {}); use `telepresence helm upgrade`",
            r.revision
        ),
        (None, true) => bail!(
            "the traffic-manager is not installed in namespace {ns}; use `telepresence helm install`"
        ),
        _ => Ok(()),
    }
}

/// Applies the rendered objects, then deletes those of the previous revision that this one no
/// longer renders; the objects of the new revision.
async fn apply_objects(
    client: &kube::Client,
    objects: &[serde_json::Value],
    previous: Option<&Release>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<ObjectRef>> {
    let refs: Vec<ObjectRef> = objects.iter().map(ObjectRef::of).collect();
    for (o, r) in objects.iter().zip(&refs) {
        apply::apply(client, o).await?;
        progress(&format!("Applied {} {}", r.kind, r.name));
    }
    if let Some(prev) = previous {
        for old in prev.objects.iter().filter(|o| !refs.contains(o)) {
            apply::delete(client, old).await?;
            progress(&format!("Deleted {} {}", old.kind, old.name));
        }
    }
    Ok(refs)
}

/// The agent image the values select (as the chart's `tm.agentImage`): `agent.image` when it is
/// a string, else `[image.registry/](agent.image.name or image.name):(agent.image.tag or
/// image.tag)`.
pub fn agent_image(values: &serde_json::Value) -> String {
    let or = |a: &serde_json::Value, b: &serde_json::Value| {
        a.as_str()
            .filter(|s| !s.is_empty())
            .or(b.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let a = &values["agent"]["image"];
    if let Some(s) = a.as_str() {
        if !s.is_empty() {
            return s.to_string();
        }
    }
    let reg = values["image"]["registry"].as_str().unwrap_or_default();
    let name = or(&a["name"], &values["image"]["name"]);
    let tag = or(&a["tag"], &values["image"]["tag"]);
    if reg.is_empty() {
        format!("{name}:{tag}")
    } else {
        format!("{}/{name}:{tag}", reg.trim_end_matches('/'))
    }
}

pub async fn uninstall(client: &kube::Client, context: &str, ns: &str) -> Result<CmdOutput> {
    let Some(release) = apply::read_release(client, ns).await? else {
        return Err(anyhow!(
            "the traffic-manager is not installed in namespace {ns} (no ConfigMap {} there); pass --manager-namespace if it is elsewhere",
            apply::RELEASE_CONFIGMAP
        ));
    };
    let retry = |what: &str| {
        format!("the traffic-manager in namespace {ns} is not fully uninstalled: {what}; fix the error and run `telepresence helm uninstall` again")
    };
    // Everything the agents' removal reads is watched before anything is deleted.
    let provider = agents::watch(client, ns, agents::served_namespaces(&release.values))
        .await
        .with_context(|| format!("nothing was uninstalled from namespace {ns}"))?;
    let mut objs = release.objects.clone();
    objs.sort_by_key(|o| std::cmp::Reverse(chart::kind_order(&o.kind)));
    // The webhook configuration first: no new pod (the rollouts' ones included) gets an agent
    // or is sent to a manager that is going away.
    let (webhooks, rest): (Vec<ObjectRef>, Vec<ObjectRef>) = objs
        .iter()
        .cloned()
        .partition(|o| o.kind == "MutatingWebhookConfiguration");
    for o in &webhooks {
        apply::delete(client, o).await?;
    }
    // Then the agents: their entries go and their workloads roll out.
    let agents = agents::remove_all(&provider)
        .await
        .with_context(|| retry("the agent injector is removed but some traffic-agents are not"))?;
    drop(provider);
    for o in &rest {
        apply::delete(client, o).await?;
    }
    apply::delete_release(client, ns).await?;
    Ok(CmdOutput {
        text: format!(
            "Traffic Manager uninstalled successfully (context {context}, namespace {ns}; agents removed from {agents} workloads)\n"
        ),
        data: Some(json!({"namespace": ns, "context": context, "deleted": objs, "agentsRemoved": agents})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    #[test]
    fn template_flags_parse() {
        let cli = Cli::try_parse_from([
            "telepresence",
            "helm",
            "template",
            "-n",
            "tm",
            "--set",
            "logLevel=debug",
            "--set-file",
            "agentInjector.certificate.crt=tls.crt",
            "-f",
            "a.yaml",
            "--values",
            "b.yaml",
        ])
        .unwrap();
        let Command::Helm(HelmArgs {
            command: HelmCommand::Template(t),
        }) = cli.command
        else {
            panic!("not helm template")
        };
        assert_eq!(t.namespace, "tm");
        assert_eq!(t.set, ["logLevel=debug"]);
        assert_eq!(t.set_file, ["agentInjector.certificate.crt=tls.crt"]);
        assert_eq!(t.values, [PathBuf::from("a.yaml"), PathBuf::from("b.yaml")]);
        let cli = Cli::try_parse_from(["telepresence", "helm", "template"]).unwrap();
        let Command::Helm(HelmArgs {
            command: HelmCommand::Template(t),
        }) = cli.command
        else {
            panic!("not helm template")
        };
        assert_eq!(t.namespace, "ambassador");
    }
}
