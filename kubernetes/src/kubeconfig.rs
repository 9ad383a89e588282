//! The kubeconfig a `--docker` connection hands to its daemon container: loaded like kubectl
//! does (`--kubeconfig`, else `KUBECONFIG`, else `~/.kube/config`), reduced to the chosen
//! context, flattened (certificate/key/CA files and token files embedded), exec-credential
//! plugins run here on the host (their token or client certificate embedded in their place),
//! and loopback API servers (kind, minikube) rewritten to an address a container can reach.

use base64::Engine as _;
use kube::config::{AuthInfo, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot read the kubeconfig {0}: {1}")]
    Read(String, String),
    #[error("no kubeconfig found: set KUBECONFIG, pass --kubeconfig, or create ~/.kube/config")]
    NotFound,
    #[error("the kubeconfig has no current-context; pass --context NAME (contexts: {0})")]
    NoContext(String),
    #[error("context \"{0}\" not found in the kubeconfig; contexts: {1}")]
    UnknownContext(String, String),
    #[error("context \"{0}\" refers to cluster \"{1}\", which the kubeconfig does not define")]
    UnknownCluster(String, String),
    #[error("context \"{0}\" refers to user \"{1}\", which the kubeconfig does not define")]
    UnknownUser(String, String),
    #[error("cluster \"{0}\" has no server address")]
    NoServer(String),
    #[error("cannot read {what} file {path}: {err}")]
    File {
        what: &'static str,
        path: String,
        err: String,
    },
    #[error("the exec credential plugin {0:?} failed: {1}")]
    Exec(String, String),
    #[error("user \"{0}\" uses the auth-provider {1:?}, which is not supported; use an exec credential plugin")]
    AuthProvider(String, String),
}

/// The kubeconfig reduced to one context.
#[derive(Debug, Clone)]
pub struct Reduced {
    pub config: Kubeconfig,
    pub context: String,
    /// The context's namespace (`default` when it names none).
    pub namespace: String,
    /// The API server URL as the user's kubeconfig says (before any loopback rewrite).
    pub server: String,
}

/// Loads the kubeconfig the way kubectl does; `--kubeconfig` wins over `KUBECONFIG`.
pub fn load(path: Option<&str>) -> Result<Kubeconfig, KubeconfigError> {
    if let Some(p) = path {
        return Kubeconfig::read_from(p)
            .map_err(|e| KubeconfigError::Read(p.into(), e.to_string()));
    }
    if let Some(kc) = Kubeconfig::from_env()
        .map_err(|e| KubeconfigError::Read("$KUBECONFIG".into(), e.to_string()))?
    {
        return Ok(kc);
    }
    let default = dirs::home_dir()
        .map(|h| h.join(".kube/config"))
        .filter(|p| p.exists())
        .ok_or(KubeconfigError::NotFound)?;
    Kubeconfig::read_from(&default)
        .map_err(|e| KubeconfigError::Read(default.display().to_string(), e.to_string()))
}

fn names<T>(v: &[T], f: impl Fn(&T) -> &str) -> String {
    let n: Vec<&str> = v.iter().map(f).collect();
    if n.is_empty() {
        "none".into()
    } else {
        n.join(", ")
    }
}

/// Keeps only the chosen context (`--context`, else `current-context`), its cluster and its user,
/// and makes it the current context.
pub fn reduce(kc: &Kubeconfig, context: Option<&str>) -> Result<Reduced, KubeconfigError> {
    let all_contexts = names(&kc.contexts, |c| c.name.as_str());
    let name = match context
        .map(str::to_string)
        .or_else(|| kc.current_context.clone())
    {
        Some(n) if !n.is_empty() => n,
        _ => return Err(KubeconfigError::NoContext(all_contexts)),
    };
    let ctx: &NamedContext = kc
        .contexts
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| KubeconfigError::UnknownContext(name.clone(), all_contexts.clone()))?;
    let body = ctx.context.clone().unwrap_or_default();
    let cluster: &NamedCluster = kc
        .clusters
        .iter()
        .find(|c| c.name == body.cluster)
        .ok_or_else(|| KubeconfigError::UnknownCluster(name.clone(), body.cluster.clone()))?;
    let server = cluster
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| KubeconfigError::NoServer(cluster.name.clone()))?;
    let user: Vec<NamedAuthInfo> = match &body.user {
        Some(u) if !u.is_empty() => vec![kc
            .auth_infos
            .iter()
            .find(|a| &a.name == u)
            .cloned()
            .ok_or_else(|| KubeconfigError::UnknownUser(name.clone(), u.clone()))?],
        _ => Vec::new(),
    };
    let namespace = body
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let config = Kubeconfig {
        clusters: vec![cluster.clone()],
        auth_infos: user,
        contexts: vec![ctx.clone()],
        current_context: Some(name.clone()),
        kind: Some("Config".into()),
        api_version: Some("v1".into()),
        ..Default::default()
    };
    Ok(Reduced {
        config,
        context: name,
        namespace,
        server,
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn read_file(what: &'static str, path: &str) -> Result<Vec<u8>, KubeconfigError> {
    std::fs::read(path).map_err(|e| KubeconfigError::File {
        what,
        path: path.into(),
        err: e.to_string(),
    })
}

/// Embeds every file the kubeconfig refers to: `certificate-authority`, `client-certificate`,
/// `client-key` become their `*-data` forms, `tokenFile` becomes `token`.
pub fn flatten(kc: &mut Kubeconfig) -> Result<(), KubeconfigError> {
    for c in kc.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
        if let Some(p) = c.certificate_authority.take() {
            c.certificate_authority_data = Some(b64(&read_file("certificate-authority", &p)?));
        }
    }
    for a in kc
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        if let Some(p) = a.client_certificate.take() {
            a.client_certificate_data = Some(b64(&read_file("client-certificate", &p)?));
        }
        if let Some(p) = a.client_key.take() {
            a.client_key_data = Some(SecretString::from(b64(&read_file("client-key", &p)?)));
        }
        if let Some(p) = a.token_file.take() {
            let t = String::from_utf8_lossy(&read_file("tokenFile", &p)?)
                .trim()
                .to_string();
            a.token = Some(SecretString::from(t));
        }
    }
    Ok(())
}

/// Where hosts keep their CA bundle (Debian/Ubuntu/Alpine, Fedora/RHEL, macOS/others).
const HOST_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Clusters that name no CA (their server certificate is from a public CA) get this host's CA
/// bundle embedded: the daemon's image is `FROM scratch` and has no system roots. Returns
/// whether a bundle was embedded.
pub fn embed_host_roots(kc: &mut Kubeconfig) -> bool {
    let Some(bundle) = HOST_CA_BUNDLES.iter().find_map(|p| std::fs::read(p).ok()) else {
        return false;
    };
    let mut done = false;
    for c in kc.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
        if c.certificate_authority_data.is_none()
            && c.certificate_authority.is_none()
            && c.insecure_skip_tls_verify != Some(true)
        {
            c.certificate_authority_data = Some(b64(&bundle));
            done = true;
        }
    }
    done
}

/// Credentials an exec plugin returned (`ExecCredential.status`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecStatus {
    pub token: Option<String>,
    pub client_certificate_data: Option<String>,
    pub client_key_data: Option<String>,
    pub expiration_timestamp: Option<String>,
}

/// Runs an exec credential plugin as kubectl would (non-interactive) and returns its status.
/// `cluster` is what the plugin gets in `spec.cluster` when it asks for it
/// (`provideClusterInfo: true`).
pub fn run_exec(
    exec: &kube::config::ExecConfig,
    cluster: Option<&kube::config::Cluster>,
) -> Result<ExecStatus, KubeconfigError> {
    let command = exec.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Err(KubeconfigError::Exec(command, "no command".into()));
    }
    let api_version = exec
        .api_version
        .clone()
        .unwrap_or_else(|| "client.authentication.k8s.io/v1".into());
    let mut cmd = std::process::Command::new(&command);
    cmd.args(exec.args.clone().unwrap_or_default());
    for env in exec.env.clone().unwrap_or_default() {
        if let (Some(k), Some(v)) = (env.get("name"), env.get("value")) {
            cmd.env(k, v);
        }
    }
    for k in exec.drop_env.clone().unwrap_or_default() {
        cmd.env_remove(k);
    }
    let mut info = serde_json::json!({
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": false},
    });
    if let (true, Some(c)) = (exec.provide_cluster_info, cluster) {
        let mut spec_cluster = serde_json::json!({"server": c.server});
        if let Some(ca) = &c.certificate_authority_data {
            spec_cluster["certificate-authority-data"] = serde_json::json!(ca);
        }
        if let Some(name) = &c.tls_server_name {
            spec_cluster["tls-server-name"] = serde_json::json!(name);
        }
        if c.insecure_skip_tls_verify == Some(true) {
            spec_cluster["insecure-skip-tls-verify"] = serde_json::json!(true);
        }
        info["spec"]["cluster"] = spec_cluster;
    }
    cmd.env("KUBERNETES_EXEC_INFO", info.to_string());
    cmd.stdin(std::process::Stdio::null());
    let out = cmd.output().map_err(|e| {
        let hint = exec
            .install_hint
            .as_deref()
            .map(|h| format!("; {}", h.trim()))
            .unwrap_or_default();
        KubeconfigError::Exec(command.clone(), format!("{e}{hint}"))
    })?;
    if !out.status.success() {
        return Err(KubeconfigError::Exec(
            command,
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    #[derive(serde::Deserialize)]
    struct Cred {
        status: Option<ExecStatus>,
    }
    let cred: Cred = serde_json::from_slice(&out.stdout).map_err(|e| {
        KubeconfigError::Exec(
            command.clone(),
            format!("its output is not an ExecCredential: {e}"),
        )
    })?;
    let st = cred.status.unwrap_or_default();
    if st.token.is_none() && st.client_certificate_data.is_none() {
        return Err(KubeconfigError::Exec(
            command,
            "it returned neither a token nor a client certificate".into(),
        ));
    }
    Ok(st)
}

/// Replaces each user's exec plugin by the credentials it returns now (run on this host, where
/// the plugin and its own configuration live). Returns the earliest expiry any plugin announced.
pub fn resolve_exec(kc: &mut Kubeconfig) -> Result<Option<String>, KubeconfigError> {
    let mut expiry: Option<String> = None;
    let cluster = kc.clusters.first().and_then(|c| c.cluster.clone());
    for named in &mut kc.auth_infos {
        let Some(a) = named.auth_info.as_mut() else {
            continue;
        };
        if let Some(p) = &a.auth_provider {
            return Err(KubeconfigError::AuthProvider(
                named.name.clone(),
                p.name.clone(),
            ));
        }
        let Some(exec) = a.exec.take() else { continue };
        let st = run_exec(&exec, cluster.as_ref())?;
        apply_exec_status(a, &st);
        if let Some(e) = st.expiration_timestamp {
            // RFC 3339 timestamps in UTC compare correctly as strings.
            if expiry.as_ref().is_none_or(|x| e < *x) {
                expiry = Some(e);
            }
        }
    }
    Ok(expiry)
}

fn apply_exec_status(a: &mut AuthInfo, st: &ExecStatus) {
    if let Some(t) = &st.token {
        a.token = Some(SecretString::from(t.clone()));
    }
    if let (Some(c), Some(k)) = (&st.client_certificate_data, &st.client_key_data) {
        // ExecCredential carries PEM text; kubeconfig `*-data` fields carry base64 of it.
        a.client_certificate_data = Some(b64(c.as_bytes()));
        a.client_key_data = Some(SecretString::from(b64(k.as_bytes())));
    }
}

/// `host` and `port` of an `https://127.0.0.1:PORT` / `https://localhost:PORT` / `[::1]` server.
pub fn loopback_server(server: &str) -> Option<(String, u16)> {
    let rest = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))?;
    let hostport = rest.split('/').next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback.then(|| (bare.to_string(), port))
}

/// Points the (single) cluster at `addr` (`ip:port` reachable from the daemon container) and
/// keeps TLS verification valid with `tls-server-name` = the original host.
pub fn rewrite_server(kc: &mut Kubeconfig, addr: &str) {
    for c in kc.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
        let Some(server) = c.server.clone() else {
            continue;
        };
        let Some((host, _)) = loopback_server(&server) else {
            continue;
        };
        let scheme = if server.starts_with("http://") {
            "http"
        } else {
            "https"
        };
        c.server = Some(format!("{scheme}://{addr}"));
        if c.tls_server_name.is_none() {
            c.tls_server_name = Some(host);
        }
    }
}

/// The kubeconfig as YAML text (what the daemon container gets).
pub fn to_yaml(kc: &Kubeconfig) -> Result<String, KubeconfigError> {
    // Secrets serialize through kube's own serializers; go through JSON to drop nulls.
    let v =
        serde_json::to_value(kc).map_err(|e| KubeconfigError::Read("-".into(), e.to_string()))?;
    yaml_serde::to_string(&strip_nulls(v))
        .map_err(|e| KubeconfigError::Read("-".into(), e.to_string()))
}

fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// The token of the reduced kubeconfig's user, if any (for tests and diagnostics).
pub fn token(kc: &Kubeconfig) -> Option<String> {
    kc.auth_infos
        .first()
        .and_then(|a| a.auth_info.as_ref())
        .and_then(|a| a.token.as_ref())
        .map(|t| t.expose_secret().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The exec plugin of the first user in `config`.
    fn first_exec(config: &mut Kubeconfig) -> &mut kube::config::ExecConfig {
        config.auth_infos[0]
            .auth_info
            .as_mut()
            .unwrap()
            .exec
            .as_mut()
            .unwrap()
    }

    /// A kubeconfig as kind and cloud CLIs write them: three contexts, file-referenced
    /// certificates (relative paths), an exec plugin.
    fn fixture(dir: &Path) -> std::path::PathBuf {
        std::fs::write(
            dir.join("ca.crt"),
            "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.crt"), "CLIENT-CERT").unwrap();
        std::fs::write(dir.join("client.key"), "CLIENT-KEY").unwrap();
        let plugin = dir.join("plugin.sh");
        std::fs::write(
            &plugin,
            "#!/bin/sh\n[ \"$1\" = get-token ] || exit 7\n[ \"$CLUSTER_ID\" = prod-1 ] || exit 8\necho \"$KUBERNETES_EXEC_INFO\" | grep -q ExecCredential || exit 9\ncat <<JSON\n{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{\"token\":\"tok-from-plugin\",\"expirationTimestamp\":\"2030-01-01T00:00:00Z\"}}\nJSON\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let kc = format!(
            r#"apiVersion: v1
kind: Config
current-context: kind-kind
clusters:
- name: kind-kind
  cluster:
    server: https://127.0.0.1:53564
    certificate-authority: ca.crt
- name: prod
  cluster:
    server: https://prod.example.com:6443
    certificate-authority-data: UFJPRC1DQQ==
contexts:
- name: kind-kind
  context:
    cluster: kind-kind
    user: kind-kind
- name: prod
  context:
    cluster: prod
    user: prod-user
    namespace: shop
- name: broken
  context:
    cluster: nowhere
    user: kind-kind
users:
- name: kind-kind
  user:
    client-certificate: client.crt
    client-key: client.key
- name: prod-user
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: {plugin}
      args: [get-token]
      env:
      - name: CLUSTER_ID
        value: prod-1
      interactiveMode: Never
"#,
            plugin = plugin.display()
        );
        let p = dir.join("config");
        std::fs::write(&p, kc).unwrap();
        p
    }

    #[test]
    fn reduces_to_current_context_and_embeds_files() {
        let dir = tempfile::tempdir().unwrap();
        let kc = load(Some(fixture(dir.path()).to_str().unwrap())).unwrap();
        let mut r = reduce(&kc, None).unwrap();
        assert_eq!(r.context, "kind-kind");
        assert_eq!(r.namespace, "default");
        assert_eq!(r.server, "https://127.0.0.1:53564");
        assert_eq!(r.config.contexts.len(), 1);
        assert_eq!(r.config.clusters.len(), 1);
        assert_eq!(r.config.auth_infos.len(), 1);
        flatten(&mut r.config).unwrap();
        let yaml = to_yaml(&r.config).unwrap();
        // Every file reference became data, and the data decodes to the files' contents.
        assert!(
            !yaml.contains("ca.crt") && !yaml.contains("client.crt"),
            "{yaml}"
        );
        let back = Kubeconfig::from_yaml(&yaml).unwrap();
        let c = back.clusters[0].cluster.as_ref().unwrap();
        let ca = base64::engine::general_purpose::STANDARD
            .decode(c.certificate_authority_data.as_ref().unwrap())
            .unwrap();
        assert!(String::from_utf8(ca).unwrap().contains("BEGIN CERTIFICATE"));
        let a = back.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(a.client_key_data.as_ref().unwrap().expose_secret())
                .unwrap(),
            b"CLIENT-KEY"
        );
        assert_eq!(back.current_context.as_deref(), Some("kind-kind"));
        assert!(back.contexts.iter().all(|c| c.name == "kind-kind"));
    }

    #[test]
    fn exec_plugin_runs_on_the_host_and_its_token_is_embedded() {
        let dir = tempfile::tempdir().unwrap();
        let kc = load(Some(fixture(dir.path()).to_str().unwrap())).unwrap();
        let mut r = reduce(&kc, Some("prod")).unwrap();
        assert_eq!(r.namespace, "shop");
        assert_eq!(r.server, "https://prod.example.com:6443");
        flatten(&mut r.config).unwrap();
        let expiry = resolve_exec(&mut r.config).unwrap();
        assert_eq!(expiry.as_deref(), Some("2030-01-01T00:00:00Z"));
        let back = Kubeconfig::from_yaml(&to_yaml(&r.config).unwrap()).unwrap();
        assert_eq!(token(&back).as_deref(), Some("tok-from-plugin"));
        assert!(back.auth_infos[0]
            .auth_info
            .as_ref()
            .unwrap()
            .exec
            .is_none());
        // Only the chosen context's cluster is left (the kind CA is not handed over).
        assert_eq!(back.clusters.len(), 1);
        assert_eq!(back.clusters[0].name, "prod");
    }

    #[test]
    fn plugins_asking_for_cluster_info_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let kc = load(Some(fixture(dir.path()).to_str().unwrap())).unwrap();
        let mut r = reduce(&kc, Some("prod")).unwrap();
        let exec = first_exec(&mut r.config);
        let script = dir.path().join("needs-cluster.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"$KUBERNETES_EXEC_INFO\" | grep -q '\"server\":\"https://prod.example.com:6443\"' || exit 5\necho \"$KUBERNETES_EXEC_INFO\" | grep -q 'UFJPRC1DQQ==' || exit 6\necho '{\"status\":{\"token\":\"with-cluster\"}}'\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        exec.command = Some(script.display().to_string());
        exec.args = None;
        exec.provide_cluster_info = true;
        resolve_exec(&mut r.config).unwrap();
        assert_eq!(token(&r.config).as_deref(), Some("with-cluster"));
        // Without provideClusterInfo the plugin gets no cluster (and this one refuses).
        let mut r = reduce(&kc, Some("prod")).unwrap();
        let exec = first_exec(&mut r.config);
        exec.command = Some(script.display().to_string());
        exec.args = None;
        let e = resolve_exec(&mut r.config).unwrap_err().to_string();
        assert!(e.contains("exit status: 5"), "{e}");
    }

    #[test]
    fn failing_plugin_and_bad_contexts_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let kc = load(Some(fixture(dir.path()).to_str().unwrap())).unwrap();
        let e = reduce(&kc, Some("nope")).unwrap_err().to_string();
        assert!(
            e.contains("\"nope\" not found") && e.contains("kind-kind, prod, broken"),
            "{e}"
        );
        let e = reduce(&kc, Some("broken")).unwrap_err().to_string();
        assert!(e.contains("cluster \"nowhere\""), "{e}");
        let mut r = reduce(&kc, Some("prod")).unwrap();
        first_exec(&mut r.config).args = Some(vec!["wrong".into()]);
        let e = resolve_exec(&mut r.config).unwrap_err().to_string();
        assert!(
            e.contains("plugin.sh") && e.contains("exit status: 7"),
            "{e}"
        );
        let mut no_ctx = kc.clone();
        no_ctx.current_context = None;
        assert!(reduce(&no_ctx, None)
            .unwrap_err()
            .to_string()
            .contains("--context"));
    }

    #[test]
    fn clusters_without_a_ca_get_the_host_roots_and_others_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let kc = load(Some(fixture(dir.path()).to_str().unwrap())).unwrap();
        let mut r = reduce(&kc, Some("prod")).unwrap();
        assert!(!embed_host_roots(&mut r.config), "prod names its CA");
        assert_eq!(
            r.config.clusters[0]
                .cluster
                .as_ref()
                .unwrap()
                .certificate_authority_data
                .as_deref(),
            Some("UFJPRC1DQQ==")
        );
        r.config.clusters[0]
            .cluster
            .as_mut()
            .unwrap()
            .certificate_authority_data = None;
        let host_has_roots = HOST_CA_BUNDLES.iter().any(|p| Path::new(p).exists());
        assert_eq!(embed_host_roots(&mut r.config), host_has_roots);
        if host_has_roots {
            let data = r.config.clusters[0]
                .cluster
                .as_ref()
                .unwrap()
                .certificate_authority_data
                .clone()
                .unwrap();
            let pem = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            assert!(String::from_utf8_lossy(&pem).contains("BEGIN CERTIFICATE"));
        }
    }

    #[test]
    fn loopback_servers_are_rewritten_with_a_valid_server_name() {
        assert_eq!(
            loopback_server("https://127.0.0.1:53564"),
            Some(("127.0.0.1".into(), 53564))
        );
        assert_eq!(
            loopback_server("https://localhost:8443/"),
            Some(("localhost".into(), 8443))
        );
        assert_eq!(
            loopback_server("https://[::1]:6443"),
            Some(("::1".into(), 6443))
        );
        assert_eq!(loopback_server("https://10.0.0.1:6443"), None);
        assert_eq!(loopback_server("https://prod.example.com:6443"), None);
        let dir = tempfile::tempdir().unwrap();
        let kc = load(Some(fixture(dir.path()).to_str().unwrap())).unwrap();
        let mut r = reduce(&kc, None).unwrap();
        rewrite_server(&mut r.config, "172.18.0.2:6443");
        let c = r.config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(c.server.as_deref(), Some("https://172.18.0.2:6443"));
        assert_eq!(c.tls_server_name.as_deref(), Some("127.0.0.1"));
    }
}
