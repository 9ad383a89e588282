//! `telepresence gather-logs`: one zip file with the logs of every role, to attach to a bug
//! report — the CLI's log files (if any), each daemon container, the Docker-engine
//! traffic-managers and traffic-agents (found through `docker::logs`), and on a Kubernetes
//! connection the manager and agent pods (best effort). Also: the argument checks, the
//! anonymizer (`--anonymize`) and the zip writing (to a temporary file renamed at the end, so a
//! failed run leaves no file).

use crate::args::GatherLogsArgs;
use crate::info::{self, DaemonInfo};
use crate::output::CmdOutput;
use anyhow::{Context, Result};
use docker::logs::{self as dlogs, Ours};
use regex::Regex;
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The zip written when `-o` is not given, in the current directory (Telepresence's name).
pub const DEFAULT_FILE: &str = "telepresence_logs.zip";
/// The zip entry that says what was gathered and what was skipped.
pub const SUMMARY_ENTRY: &str = "gather-logs.txt";
/// How long one Kubernetes request may take before that part is skipped.
const KUBE_TIMEOUT: Duration = Duration::from_secs(15);

/// What `--daemons` or `--traffic-agents` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    None,
    /// Connection names (daemons) or parts of workload, container or pod names (agents).
    Names(Vec<String>),
}

impl Selection {
    fn names(&self) -> &[String] {
        match self {
            Selection::Names(n) => n,
            _ => &[],
        }
    }
}

/// Arguments that cannot be used: each message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatherError {
    /// The flag and the value.
    #[error("--{0} {1}: give either all, none, or names, not both")]
    Mixed(&'static str, String),
    #[error("--{0} needs a value: all, none, or names")]
    Empty(&'static str),
    /// The path given.
    #[error("{0} does not end in .zip: choose the output file with -o FILE.zip")]
    NotZip(String),
    #[error("cannot write {path}: {reason}; choose a writable file with -o FILE.zip")]
    Unwritable { path: String, reason: String },
    #[error(
        "no daemon named {name:?} (known: {known}); use --daemons all, none, or one of those names"
    )]
    UnknownDaemon { name: String, known: String },
    #[error("no traffic-agent matches {name:?} (known: {known}); use --traffic-agents all, none, or part of a workload or pod name")]
    UnknownAgent { name: String, known: String },
}

/// Parses `--daemons` / `--traffic-agents`: `all`, `none` (or Telepresence's `False`), or
/// names; case-insensitive keywords, empty items ignored.
pub fn parse_selection(flag: &'static str, values: &[String]) -> Result<Selection, GatherError> {
    let values: Vec<&str> = values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .collect();
    let keyword = |v: &str| match v.to_ascii_lowercase().as_str() {
        "all" => Some(Selection::All),
        "none" | "false" => Some(Selection::None),
        _ => None,
    };
    match values.as_slice() {
        [] => Err(GatherError::Empty(flag)),
        [one] if keyword(one).is_some() => Ok(keyword(one).expect("keyword")),
        many => {
            if let Some(k) = many.iter().find(|v| keyword(v).is_some()) {
                return Err(GatherError::Mixed(flag, k.to_string()));
            }
            Ok(Selection::Names(
                many.iter().map(ToString::to_string).collect(),
            ))
        }
    }
}

/// The zip to write: `-o` (relative to `cwd`), else [`DEFAULT_FILE`] in `cwd`; it must end in
/// `.zip` and its directory must exist.
pub fn output_path(arg: Option<&Path>, cwd: &Path) -> Result<PathBuf, GatherError> {
    let Some(p) = arg else {
        return Ok(cwd.join(DEFAULT_FILE));
    };
    let shown = p.display().to_string();
    if !p.extension().is_some_and(|e| e.eq_ignore_ascii_case("zip")) {
        return Err(GatherError::NotZip(shown));
    }
    let p = cwd.join(p);
    let unwritable = |reason: String| GatherError::Unwritable {
        path: shown.clone(),
        reason,
    };
    if p.is_dir() {
        return Err(unwritable("it is a directory".into()));
    }
    let dir = p.parent().unwrap_or(cwd);
    if !dir.is_dir() {
        return Err(unwritable(format!(
            "directory {} does not exist",
            dir.display()
        )));
    }
    Ok(p)
}

/// The zip being written: a temporary file beside the destination, renamed onto it by
/// [`Output::finish`]; dropped unfinished, it is removed.
pub struct Output {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<std::fs::File>,
}

impl Output {
    /// Creates the temporary file now, so an unwritable destination fails before any work.
    pub fn create(dest: &Path) -> Result<Output, GatherError> {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| DEFAULT_FILE.into());
        let tmp = dest.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| GatherError::Unwritable {
            path: dest.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Output {
            tmp,
            dest: dest.to_path_buf(),
            file: Some(file),
        })
    }

    /// Writes the entries and puts the zip in place.
    pub fn finish(mut self, entries: &[Entry]) -> Result<()> {
        let file = self.file.take().expect("output file");
        let file = write_zip(file, entries).context("writing the zip file")?;
        file.sync_all().context("writing the zip file")?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| GatherError::Unwritable {
            path: self.dest.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// One file of the zip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub content: String,
}

/// Writes `entries` (deflated, mode 0644) as a zip into `w`.
pub fn write_zip<W: Write + std::io::Seek>(w: W, entries: &[Entry]) -> zip::result::ZipResult<W> {
    let mut z = zip::ZipWriter::new(w);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for e in entries {
        z.start_file(e.name.as_str(), opts)?;
        z.write_all(e.content.as_bytes())?;
    }
    z.finish()
}

/// The entries of a zip file: names and contents, in archive order.
pub fn read_zip(path: &Path) -> Result<Vec<Entry>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut z = zip::ZipArchive::new(f).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i)?;
        let mut content = String::new();
        f.read_to_string(&mut content)?;
        out.push(Entry {
            name: f.name()?.to_string(),
            content,
        });
    }
    Ok(out)
}

/// Names that identify nothing and stay readable when anonymizing.
const NOT_IDENTIFYING: [&str; 5] = ["default", "ambassador", "kube-system", "docker", "bridge"];

/// Replaces known names (namespaces, workloads, pods, connections, contexts) and IP addresses
/// with placeholders (`namespace-1`, `ip-2`, …), the same original always by the same one.
/// Names match whole: not inside a longer word (`web` is replaced in `web-1`, `web.shop` and
/// `web_default`, not in `webhook`). Loopback and unspecified addresses are kept.
#[derive(Debug, Default)]
pub struct Anonymizer {
    names: HashMap<String, String>,
    counts: HashMap<&'static str, usize>,
    pattern: Option<Regex>,
}

impl Anonymizer {
    /// Registers a name of a kind (`namespace`, `workload`, `pod`, `connection`, `context`);
    /// the first registration of a name decides its placeholder.
    pub fn add(&mut self, kind: &'static str, name: &str) {
        if name.is_empty() || NOT_IDENTIFYING.contains(&name) || self.names.contains_key(name) {
            return;
        }
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        self.names.insert(name.to_string(), format!("{kind}-{n}"));
        self.pattern = None;
    }

    fn placeholder(&mut self, kind: &'static str, original: &str) -> String {
        if let Some(p) = self.names.get(original) {
            return p.clone();
        }
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        let p = format!("{kind}-{n}");
        self.names.insert(original.to_string(), p.clone());
        p
    }

    /// The text with every registered name and IP address replaced.
    pub fn anonymize(&mut self, text: &str) -> String {
        let names = self.replace_names(text);
        self.replace_ips(&names)
    }

    fn replace_names(&mut self, text: &str) -> String {
        if self.names.is_empty() {
            return text.to_string();
        }
        if self.pattern.is_none() {
            let mut known: Vec<&String> = self.names.keys().collect();
            // Longest first: at one position the longest name wins.
            known.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
            let alt: Vec<String> = known.iter().map(|n| regex::escape(n)).collect();
            self.pattern = Some(Regex::new(&alt.join("|")).expect("escaped names"));
        }
        let re = self.pattern.as_ref().expect("pattern");
        // `_` separates too: compose names networks `<project>_default`.
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        let mut out = String::with_capacity(text.len());
        let (mut copied, mut at) = (0, 0);
        while let Some(m) = re.find_at(text, at) {
            let before = text[..m.start()].chars().next_back();
            let after = text[m.end()..].chars().next();
            if word(before) || word(after) {
                at = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
                continue;
            }
            out.push_str(&text[copied..m.start()]);
            out.push_str(&self.names[m.as_str()]);
            copied = m.end();
            at = m.end();
        }
        out.push_str(&text[copied..]);
        out
    }

    fn replace_ips(&mut self, text: &str) -> String {
        static V4: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
        static V6: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
        let v4 = V4.get_or_init(|| Regex::new(r"\b\d{1,3}(?:\.\d{1,3}){3}\b").expect("v4"));
        let v6 = V6.get_or_init(|| Regex::new(r"[0-9A-Fa-f:]*:[0-9A-Fa-f:]*").expect("v6"));
        let once = v4.replace_all(text, |c: &regex::Captures| {
            let s = &c[0];
            match s.parse::<std::net::Ipv4Addr>() {
                Ok(ip) if !(ip.is_loopback() || ip.is_unspecified() || ip.octets()[0] == 255) => {
                    self.placeholder("ip", s)
                }
                _ => s.to_string(),
            }
        });
        let once = once.into_owned();
        v6.replace_all(&once, |c: &regex::Captures| {
            let m = c.get(0).expect("match");
            let s = m.as_str();
            // Not part of a longer word (`kube::api` is a path, not `::a`).
            let word = |ch: Option<char>| ch.is_some_and(|ch| ch.is_alphanumeric() || ch == '_');
            let bounded = !word(once[..m.start()].chars().next_back())
                && !word(once[m.end()..].chars().next());
            let is_v6 = bounded
                && (s.contains("::") || s.matches(':').count() == 7)
                && s.parse::<std::net::Ipv6Addr>()
                    .is_ok_and(|ip| !(ip.is_loopback() || ip.is_unspecified()));
            if is_v6 {
                self.placeholder("ip", s)
            } else {
                s.to_string()
            }
        })
        .into_owned()
    }
}

/// What the gathering found: the zip's entries and the notes of what was skipped.
#[derive(Debug, Default)]
struct Gathered {
    entries: Vec<Entry>,
    notes: Vec<String>,
    /// Names to anonymize: (kind, name).
    names: Vec<(&'static str, String)>,
}

impl Gathered {
    /// Adds a log, without its terminal colour codes.
    fn add(&mut self, name: String, content: String) {
        let content = strip_ansi(&content);
        self.entries.push(Entry { name, content });
    }
}

/// The text without ANSI escape sequences (the roles log in colour, also into `docker logs`;
/// left in, they would glue names to the codes and hide them from the anonymizer).
pub fn strip_ansi(text: &str) -> String {
    static CSI: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = CSI.get_or_init(|| Regex::new(r"\x1b\[[0-9;?]*[ -/]*[@-~]").expect("csi"));
    re.replace_all(text, "").into_owned()
}

/// `gather-logs`.
pub async fn run(args: GatherLogsArgs) -> Result<CmdOutput> {
    let daemons = parse_selection("daemons", &args.daemons)?;
    let agents = parse_selection("traffic-agents", &args.traffic_agents)?;
    let cwd = std::env::current_dir().context("finding the current directory")?;
    let dest = output_path(args.output_file.as_deref(), &cwd)?;
    let out = Output::create(&dest)?;

    let mut g = Gathered::default();
    cli_logs(&mut g);
    let infos = info::load_all();
    for d in &infos {
        g.names.push(("connection", d.name.clone()));
        g.names.push(("namespace", d.namespace.clone()));
        g.names.push(("namespace", d.manager_namespace.clone()));
        g.names.push(("context", d.context.clone()));
    }
    let mut agents_found: Vec<String> = Vec::new();
    match docker::engine::connect().await {
        Ok(engine) => {
            engine_logs(
                &engine,
                &daemons,
                args.traffic_manager,
                &agents,
                &mut g,
                &mut agents_found,
            )
            .await?;
        }
        Err(e) if daemons.names().is_empty() => g.notes.push(format!(
            "daemons, Docker-engine traffic-managers and agents: skipped ({e})"
        )),
        Err(e) => return Err(e.into()),
    }
    let kube: Vec<&DaemonInfo> = infos
        .iter()
        .filter(|d| d.cluster_type == "kubernetes")
        .collect();
    if kube.is_empty() {
        g.notes
            .push("Kubernetes pods: skipped (not connected to a Kubernetes cluster)".into());
    }
    for d in kube {
        kube_logs(d, args.traffic_manager, &agents, &mut g, &mut agents_found).await;
    }
    for name in agents.names() {
        if !agents_found.iter().any(|a| a.contains(name.as_str())) {
            return Err(GatherError::UnknownAgent {
                name: name.clone(),
                known: list_or_none(&agents_found),
            }
            .into());
        }
    }
    finish(out, &dest, g, args.anonymize)
}

/// Anonymizes if asked, adds the summary entry, writes the zip, and says what it holds.
fn finish(out: Output, dest: &Path, mut g: Gathered, anonymize: bool) -> Result<CmdOutput> {
    g.entries.sort_by(|a, b| a.name.cmp(&b.name));
    if anonymize {
        let mut a = Anonymizer::default();
        for (kind, name) in &g.names {
            a.add(kind, name);
        }
        for e in &mut g.entries {
            e.name = a.anonymize(&e.name);
            e.content = a.anonymize(&e.content);
        }
        g.notes = g.notes.iter().map(|n| a.anonymize(n)).collect();
    }
    let mut summary = format!(
        "telepresence gather-logs, client v{}\n{}\n",
        protocol::VERSION,
        if anonymize {
            "names and IP addresses anonymized"
        } else {
            "not anonymized"
        }
    );
    for e in &g.entries {
        summary.push_str(&format!(
            "gathered: {} ({} bytes)\n",
            e.name,
            e.content.len()
        ));
    }
    for n in &g.notes {
        summary.push_str(&format!("{n}\n"));
    }
    g.entries.push(Entry {
        name: SUMMARY_ENTRY.into(),
        content: summary,
    });
    out.finish(&g.entries)?;
    let mut text = String::new();
    for n in &g.notes {
        text.push_str(&format!("{n}\n"));
    }
    text.push_str(&format!(
        "Logs of {} components written to {}\n",
        g.entries.len() - 1,
        dest.display()
    ));
    Ok(CmdOutput {
        text,
        data: Some(json!({
            "file": dest.display().to_string(),
            "entries": g.entries.iter().map(|e| &e.name).collect::<Vec<_>>(),
            "skipped": g.notes,
        })),
    })
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Where the CLI's own log files would be (`~/.cache/telepresence/logs`).
pub fn cli_log_dir() -> PathBuf {
    info::cache_dir().join("logs")
}

/// The CLI's `*.log` files, if any (it logs to stderr; a file appears only when redirected there).
fn cli_logs(g: &mut Gathered) {
    let dir = cli_log_dir();
    let mut found = false;
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log") && p.is_file())
            .collect();
        files.sort();
        for p in files {
            if let Ok(bytes) = std::fs::read(&p) {
                let name = p.file_name().expect("file name").to_string_lossy();
                g.add(
                    format!("cli-{name}"),
                    String::from_utf8_lossy(&bytes).into(),
                );
                found = true;
            }
        }
    }
    if !found {
        g.notes.push(format!(
            "CLI: no log file in {} (the CLI logs to stderr)",
            dir.display()
        ));
    }
}

/// The connection a daemon container serves (its label, else its name without `tp-`).
fn connection_of(c: &Ours) -> String {
    if c.connection.is_empty() {
        c.name.strip_prefix("tp-").unwrap_or(&c.name).to_string()
    } else {
        c.connection.clone()
    }
}

/// The logs of our containers on the engine: daemons, traffic-managers, agents.
async fn engine_logs(
    engine: &bollard::Docker,
    daemons: &Selection,
    manager: bool,
    agents: &Selection,
    g: &mut Gathered,
    agents_found: &mut Vec<String>,
) -> Result<()> {
    let all_daemons = dlogs::containers_of_role(engine, dlogs::ROLE_DAEMON).await?;
    let known: Vec<String> = all_daemons.iter().map(connection_of).collect();
    for name in daemons.names() {
        let wanted = name.strip_prefix("tp-").unwrap_or(name);
        if !known.iter().any(|k| k == wanted) {
            return Err(GatherError::UnknownDaemon {
                name: name.clone(),
                known: list_or_none(&known),
            }
            .into());
        }
    }
    let chosen: Vec<&Ours> = all_daemons
        .iter()
        .filter(|c| match daemons {
            Selection::All => true,
            Selection::None => false,
            Selection::Names(n) => n
                .iter()
                .any(|n| n.strip_prefix("tp-").unwrap_or(n) == connection_of(c)),
        })
        .collect();
    if *daemons == Selection::All && chosen.is_empty() {
        g.notes.push("daemons: none found".into());
    }
    for c in chosen {
        g.names.push(("connection", connection_of(c)));
        g.names.push(("namespace", c.namespace.clone()));
        container_entry(engine, c, &format!("daemon-{}.log", connection_of(c)), g).await;
    }
    if manager {
        let managers = dlogs::containers_of_role(engine, dlogs::ROLE_TRAFFIC_MANAGER).await?;
        if managers.is_empty() {
            g.notes
                .push("Docker-engine traffic-managers: none found".into());
        }
        for c in &managers {
            g.names.push(("namespace", c.namespace.clone()));
            container_entry(
                engine,
                c,
                &format!("traffic-manager-{}.log", c.namespace),
                g,
            )
            .await;
        }
    }
    if *agents != Selection::None {
        let all = dlogs::containers_of_role(engine, dlogs::ROLE_AGENT).await?;
        for c in &all {
            agents_found.push(c.name.clone());
            let matches = match agents {
                Selection::Names(n) => n
                    .iter()
                    .any(|n| c.name.contains(n.as_str()) || c.workload == *n),
                _ => true,
            };
            if matches {
                g.names.push(("namespace", c.namespace.clone()));
                g.names.push(("workload", c.workload.clone()));
                let short = c.name.strip_prefix("tp-agent-").unwrap_or(&c.name);
                container_entry(engine, c, &format!("traffic-agent-{short}.log"), g).await;
            }
        }
        if all.is_empty() && *agents == Selection::All {
            g.notes
                .push("Docker-engine traffic-agents: none found".into());
        }
    }
    Ok(())
}

/// Adds one container's log, or a note saying why it could not be read.
async fn container_entry(engine: &bollard::Docker, c: &Ours, entry: &str, g: &mut Gathered) {
    match dlogs::container_log(engine, &c.name).await {
        Ok(log) => g.add(entry.to_string(), log),
        Err(e) => g.notes.push(format!("{}: log not read ({e})", c.name)),
    }
}

/// The traffic-manager and traffic-agent pods of a Kubernetes connection, best effort: what
/// fails becomes a note.
async fn kube_logs(
    d: &DaemonInfo,
    manager: bool,
    agents: &Selection,
    g: &mut Gathered,
    agents_found: &mut Vec<String>,
) {
    let client = match tokio::time::timeout(KUBE_TIMEOUT, kube_client(&d.context)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            g.notes.push(format!(
                "Kubernetes pods of context {}: skipped ({e:#})",
                d.context
            ));
            return;
        }
        Err(_) => {
            g.notes.push(format!(
                "Kubernetes pods of context {}: skipped (no answer within {KUBE_TIMEOUT:?})",
                d.context
            ));
            return;
        }
    };
    if manager {
        let sel = kubernetes::portforward::MANAGER_SELECTOR;
        match pods(&client, &d.manager_namespace, Some(sel)).await {
            Ok(ps) if ps.is_empty() => g.notes.push(format!(
                "Kubernetes traffic-manager: no pod in namespace {}",
                d.manager_namespace
            )),
            Ok(ps) => {
                for p in ps {
                    pod_entry(&client, &d.manager_namespace, &p, "traffic-manager", "", g).await;
                }
            }
            Err(e) => g
                .notes
                .push(format!("Kubernetes traffic-manager: skipped ({e:#})")),
        }
    }
    if *agents == Selection::None {
        return;
    }
    let agent = kubernetes::AGENT_CONTAINER;
    match pods(&client, &d.namespace, None).await {
        Ok(ps) => {
            let with_agent: Vec<String> = ps
                .into_iter()
                .filter(|(_, containers)| containers.iter().any(|c| c == agent))
                .map(|(p, _)| p)
                .collect();
            for p in with_agent {
                agents_found.push(p.clone());
                let wanted = match agents {
                    Selection::Names(n) => n.iter().any(|n| p.contains(n.as_str())),
                    _ => true,
                };
                if wanted {
                    pod_entry(
                        &client,
                        &d.namespace,
                        &(p, vec![]),
                        agent,
                        "traffic-agent-",
                        g,
                    )
                    .await;
                }
            }
        }
        Err(e) => g
            .notes
            .push(format!("Kubernetes traffic-agents: skipped ({e:#})")),
    }
}

/// A client for a kubeconfig context (as `helm` makes one).
async fn kube_client(context: &str) -> Result<kube::Client> {
    let kc = kubernetes::kubeconfig::load(None)?;
    let reduced = kubernetes::kubeconfig::reduce(&kc, Some(context))?;
    let cfg = kube::Config::from_custom_kubeconfig(
        reduced.config,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("cannot use context {context}"))?;
    Ok(kube::Client::try_from(cfg)?)
}

/// Pods of a namespace (name and container names), optionally by label selector.
async fn pods(
    client: &kube::Client,
    namespace: &str,
    selector: Option<&str>,
) -> Result<Vec<(String, Vec<String>)>> {
    use k8s_openapi::api::core::v1::Pod;
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let mut lp = kube::api::ListParams::default();
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    let list = tokio::time::timeout(KUBE_TIMEOUT, api.list(&lp))
        .await
        .context("no answer from the API server")??;
    Ok(list
        .items
        .into_iter()
        .map(|p| {
            let containers = p
                .spec
                .map(|s| s.containers.into_iter().map(|c| c.name).collect())
                .unwrap_or_default();
            (p.metadata.name.unwrap_or_default(), containers)
        })
        .collect())
}

/// Adds one pod container's log as `<prefix><pod>.<namespace>.log`, or a note.
async fn pod_entry(
    client: &kube::Client,
    namespace: &str,
    pod: &(String, Vec<String>),
    container: &str,
    prefix: &str,
    g: &mut Gathered,
) {
    use k8s_openapi::api::core::v1::Pod;
    let name = &pod.0;
    g.names.push(("pod", name.clone()));
    g.names.push(("namespace", namespace.to_string()));
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let lp = kube::api::LogParams {
        container: Some(container.to_string()),
        ..Default::default()
    };
    match tokio::time::timeout(KUBE_TIMEOUT, api.logs(name, &lp)).await {
        Ok(Ok(log)) => g.add(format!("{prefix}{name}.{namespace}.log"), log),
        Ok(Err(e)) => g
            .notes
            .push(format!("pod {name}.{namespace}: log not read ({e})")),
        Err(_) => g.notes.push(format!(
            "pod {name}.{namespace}: log not read (no answer within {KUBE_TIMEOUT:?})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(v: &[&str]) -> Result<Selection, GatherError> {
        parse_selection(
            "daemons",
            &v.iter().map(ToString::to_string).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn selections() {
        assert_eq!(sel(&["all"]).unwrap(), Selection::All);
        assert_eq!(sel(&["ALL"]).unwrap(), Selection::All);
        assert_eq!(sel(&["none"]).unwrap(), Selection::None);
        assert_eq!(sel(&["False"]).unwrap(), Selection::None);
        assert_eq!(
            sel(&["a", " b", ""]).unwrap(),
            Selection::Names(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            sel(&["a", "all"]).unwrap_err().to_string(),
            "--daemons all: give either all, none, or names, not both"
        );
        assert!(matches!(sel(&[""]), Err(GatherError::Empty("daemons"))));
    }

    #[test]
    fn clap_parses_the_flags() {
        use crate::args::{Cli, Command};
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut v = vec!["telepresence", "gather-logs"];
            v.extend_from_slice(extra);
            match Cli::try_parse_from(v).unwrap().command {
                Command::GatherLogs(a) => a,
                _ => panic!("not gather-logs"),
            }
        };
        let d = parse(&[]);
        assert_eq!(d.daemons, vec!["all"]);
        assert_eq!(d.traffic_agents, vec!["all"]);
        assert!(d.traffic_manager && !d.anonymize && d.output_file.is_none());
        let a = parse(&[
            "-o",
            "x.zip",
            "--daemons",
            "a,b",
            "--traffic-manager=False",
            "--traffic-agents",
            "none",
            "-a",
        ]);
        assert_eq!(a.output_file.as_deref(), Some(Path::new("x.zip")));
        assert_eq!(a.daemons, vec!["a", "b"]);
        assert!(!a.traffic_manager && a.anonymize);
        assert_eq!(a.traffic_agents, vec!["none"]);
        assert!(parse(&["--traffic-manager"]).traffic_manager);
        assert_eq!(parse(&["--daemons", "a", "b"]).daemons, vec!["a", "b"]);
    }

    #[test]
    fn output_paths() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        assert_eq!(output_path(None, cwd).unwrap(), cwd.join(DEFAULT_FILE));
        assert_eq!(
            output_path(Some(Path::new("l.ZIP")), cwd).unwrap(),
            cwd.join("l.ZIP")
        );
        assert_eq!(
            output_path(Some(Path::new("logs.tar")), cwd).unwrap_err(),
            GatherError::NotZip("logs.tar".into())
        );
        let e = output_path(Some(Path::new("nope/l.zip")), cwd).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot write nope/l.zip: directory "),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("choose a writable file with -o FILE.zip"),
            "{e}"
        );
        std::fs::create_dir(cwd.join("d.zip")).unwrap();
        let e = output_path(Some(Path::new("d.zip")), cwd).unwrap_err();
        assert!(e.to_string().contains("it is a directory"), "{e}");
    }

    #[test]
    fn unfinished_output_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t.zip");
        drop(Output::create(&dest).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn unwritable_directory_fails_early() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let dest = ro.join("t.zip");
        // root may write anywhere: then there is nothing to check.
        if let Err(e) = Output::create(&dest) {
            assert!(matches!(e, GatherError::Unwritable { .. }), "{e}");
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _ = std::fs::remove_file(&dest);
    }

    #[test]
    fn zip_round_trip_lists_the_entries() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t.zip");
        let entries = vec![
            Entry {
                name: "daemon-a.log".into(),
                content: "hello\n".repeat(100),
            },
            Entry {
                name: "empty.log".into(),
                content: String::new(),
            },
        ];
        Output::create(&dest).unwrap().finish(&entries).unwrap();
        assert_eq!(read_zip(&dest).unwrap(), entries);
        // Only the zip: the temporary file is gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn anonymizer_replaces_names_consistently() {
        let mut a = Anonymizer::default();
        a.add("namespace", "shop");
        a.add("workload", "web");
        a.add("pod", "web-5d9f-abcde");
        a.add("namespace", "default");
        a.add("workload", "shop"); // first kind wins
        let t = a.anonymize(
            "pod web-5d9f-abcde of web in shop; web.shop.svc; webhook shopping default tp-agent-shop-web-1 shop_default",
        );
        assert_eq!(
            t,
            "pod pod-1 of workload-1 in namespace-1; workload-1.namespace-1.svc; webhook shopping default tp-agent-namespace-1-workload-1-1 namespace-1_default"
        );
        assert_eq!(a.anonymize("shop"), "namespace-1");
    }

    #[test]
    fn colour_codes_are_stripped_before_anonymizing() {
        let line = "\x1b[2m2026-01-01T00:00:00Z\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2mmanager\x1b[0m\x1b[2m:\x1b[0m agent up \x1b[3mnamespace\x1b[0m\x1b[2m=\x1b[0mshop\n";
        let plain = strip_ansi(line);
        assert_eq!(
            plain,
            "2026-01-01T00:00:00Z  INFO manager: agent up namespace=shop\n"
        );
        let mut a = Anonymizer::default();
        a.add("namespace", "shop");
        assert!(a.anonymize(&plain).ends_with("namespace=namespace-1\n"));
        let mut g = Gathered::default();
        g.add("x.log".into(), line.into());
        assert_eq!(g.entries[0].content, plain);
    }

    #[test]
    fn anonymizer_replaces_ips_consistently() {
        let mut a = Anonymizer::default();
        let t = a.anonymize(
            "from 172.18.0.5:8080 to 10.96.0.0/16 and 172.18.0.5, not 127.0.0.1 0.0.0.0 or v1.2.3; fd00::5 and fe80::1%eth0 ::1 at 10:22:33.123 in cli::connect and dead::beef",
        );
        assert_eq!(
            t,
            "from ip-1:8080 to ip-2/16 and ip-1, not 127.0.0.1 0.0.0.0 or v1.2.3; ip-3 and ip-4%eth0 ::1 at 10:22:33.123 in cli::connect and ip-5"
        );
        assert_eq!(a.anonymize("999.1.1.1"), "999.1.1.1");
    }
}
