//! The mutating admission webhook: `POST /traffic-agent` over HTTPS (rustls, cert and key read
//! from PEM files) answers pod CREATE reviews with the JSONPatch that injects the traffic-agent
//! (see [`super::patch`]). Which config a pod gets is asked of a [`ConfigSource`] (the provider,
//! or a fixed map in tests). A rotated certificate is picked up without a restart. A pod that cannot be injected is admitted unchanged with a warning:
//! the webhook never blocks a workload's rollout.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_rustls::rustls;

use super::configmap::AgentConfig;
use super::patch::{self, InjectSettings};
use super::ports::{KIND_DEPLOYMENT, KIND_REPLICASET, KIND_STATEFULSET};

/// The webhook's path.
pub const PATH: &str = "/traffic-agent";
/// Default certificate and key files (the chart mounts the TLS secret there).
pub const DEFAULT_CERT: &str = "/var/run/secrets/tls/tls.crt";
pub const DEFAULT_KEY: &str = "/var/run/secrets/tls/tls.key";

/// Largest AdmissionReview accepted (a pod is far smaller; the API server caps objects at ~3 MiB).
pub const MAX_REVIEW: usize = 8 * 1024 * 1024;

/// Boxed future returned by [`ConfigSource`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Decides which agent config, if any, a new pod gets.
pub trait ConfigSource: Send + Sync + 'static {
    /// The config for a pod of workload `kind/name` in `namespace`; `None`: no agent. `pod` is
    /// the pod being created (for its annotations). With `dry_run` nothing may be written.
    fn agent_config<'a>(
        &'a self,
        namespace: &'a str,
        kind: &'a str,
        name: &'a str,
        pod: &'a Pod,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Option<AgentConfig>, String>>;
}

/// The workload that controls a pod, from its owner reference: a ReplicaSet named
/// `<deployment>-<pod-template-hash>` belongs to that Deployment.
pub fn pod_workload(pod: &Pod) -> Option<(&'static str, String)> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
                Some(deploy) if !deploy.is_empty() => Some((KIND_DEPLOYMENT, deploy.to_string())),
                _ => Some((KIND_REPLICASET, owner.name.clone())),
            }
        }
        "StatefulSet" => Some((KIND_STATEFULSET, owner.name.clone())),
        _ => None,
    }
}

/// Answers one AdmissionReview (JSON in, JSON out).
pub async fn review(src: &dyn ConfigSource, settings: &InjectSettings, body: &[u8]) -> Vec<u8> {
    let response = match serde_json::from_slice::<AdmissionReview<Pod>>(body) {
        Err(e) => AdmissionResponse::invalid(format!("not an AdmissionReview: {e}")),
        Ok(review) => match TryInto::<AdmissionRequest<Pod>>::try_into(review) {
            Err(e) => AdmissionResponse::invalid(e.to_string()),
            Ok(req) => respond(src, settings, &req).await,
        },
    };
    wire_review(&response)
}

/// The review as the API server expects it: kube-core writes `response.patch` (Go `[]byte`) as
/// an array of numbers; every Go webhook sends it base64-encoded, so we do too.
fn wire_review(response: &AdmissionResponse) -> Vec<u8> {
    use base64::Engine;
    let mut v = serde_json::to_value(response.clone().into_review()).expect("review serializes");
    if let Some(p) = v.pointer_mut("/response/patch") {
        if let Ok(bytes) = serde_json::from_value::<Vec<u8>>(p.clone()) {
            *p = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    serde_json::to_vec(&v).expect("review serializes")
}

async fn respond(
    src: &dyn ConfigSource,
    settings: &InjectSettings,
    req: &AdmissionRequest<Pod>,
) -> AdmissionResponse {
    let allow = AdmissionResponse::from(req);
    let (Operation::Create, Some(pod)) = (&req.operation, &req.object) else {
        return allow;
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let Some((kind, name)) = pod_workload(pod) else {
        return allow;
    };
    let warn = |allow: AdmissionResponse, msg: String| {
        tracing::warn!(%namespace, workload = %name, "traffic-agent not injected: {msg}");
        let mut allow = allow;
        allow.warnings = Some(vec![format!(
            "telepresence: traffic-agent not injected: {msg}"
        )]);
        allow
    };
    let cfg = match src
        .agent_config(&namespace, kind, &name, pod, req.dry_run)
        .await
    {
        Ok(Some(cfg)) => cfg,
        Ok(None) => return allow,
        Err(e) => return warn(allow, e),
    };
    let after = match patch::inject(pod, &cfg, settings) {
        Ok(p) => p,
        Err(e) => return warn(allow, e.to_string()),
    };
    let ops = patch::diff(pod, &after);
    if ops.0.is_empty() {
        return allow;
    }
    tracing::info!(%namespace, workload = %name, "injecting the traffic-agent");
    match allow.clone().with_patch(ops) {
        Ok(r) => r,
        Err(e) => warn(allow, e.to_string()),
    }
}

/// Where the webhook's certificate and key are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `TP_WEBHOOK_CERT` / `TP_WEBHOOK_KEY`, else the chart's mount paths.
    pub fn from_env() -> TlsFiles {
        let get = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into()).into();
        TlsFiles {
            cert: get("TP_WEBHOOK_CERT", DEFAULT_CERT),
            key: get("TP_WEBHOOK_KEY", DEFAULT_KEY),
        }
    }
}

/// Reads the certificate chain and key (PEM).
fn load_key(
    files: &TlsFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| format!("cannot read webhook TLS file {}: {e}", p.display()))
    };
    let certs = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    rustls::sign::CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| format!("webhook certificate/key: {e}"))
}

/// Modification times of the certificate and key files.
fn stamps(files: &TlsFiles) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&files.cert)?, m(&files.key)?))
}

/// Serves the certificate files' current content: when their modification times change (a
/// rotated Secret), the next handshake after [`RELOAD_CHECK`] loads them again; a broken new
/// pair is logged and the previous one kept.
#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    provider: Arc<rustls::crypto::CryptoProvider>,
    state: std::sync::Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<rustls::sign::CertifiedKey>,
    stamps: Option<(SystemTime, SystemTime)>,
    checked: Instant,
}

/// How often handshakes look at the files' modification times.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

impl rustls::server::ResolvesServerCert for Reloading {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut st = self.state.lock().unwrap();
        if st.checked.elapsed() >= RELOAD_CHECK {
            st.checked = Instant::now();
            let now = stamps(&self.files);
            if now != st.stamps {
                match load_key(&self.files, &self.provider) {
                    Ok(k) => {
                        tracing::info!("webhook certificate reloaded");
                        st.key = Arc::new(k);
                        st.stamps = now;
                    }
                    Err(e) => tracing::warn!("keeping the previous webhook certificate: {e}"),
                }
            }
        }
        Some(st.key.clone())
    }
}

fn tls_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let stamps = stamps(files);
    let key = load_key(files, &provider)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Reloading {
            files: files.clone(),
            provider,
            state: std::sync::Mutex::new(Loaded {
                key: Arc::new(key),
                stamps,
                checked: Instant::now(),
            }),
        }));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

type Body = http_body_util::Full<hyper::body::Bytes>;

async fn handle(
    src: Arc<dyn ConfigSource>,
    settings: Arc<InjectSettings>,
    req: Request<Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    use http_body_util::BodyExt;
    let reply = |code: StatusCode, body: Vec<u8>| {
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = code;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::POST, PATH) => {
            let body = match http_body_util::Limited::new(req.into_body(), MAX_REVIEW)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        serde_json::json!({ "error": e.to_string() })
                            .to_string()
                            .into_bytes(),
                    ))
                }
            };
            Ok(reply(
                StatusCode::OK,
                review(src.as_ref(), &settings, &body).await,
            ))
        }
        (&Method::GET, "/healthz") => Ok(reply(StatusCode::OK, b"{}".to_vec())),
        _ => Ok(reply(
            StatusCode::NOT_FOUND,
            b"{\"error\":\"not found\"}".to_vec(),
        )),
    }
}

/// Binds the webhook listener (certificate and key are read now, so bad files fail at once).
pub async fn bind(
    addr: SocketAddr,
    files: &TlsFiles,
) -> Result<(tokio::net::TcpListener, tokio_rustls::TlsAcceptor), String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(files)?));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("webhook: cannot listen on {addr}: {e}"))?;
    Ok((listener, acceptor))
}

/// Serves the webhook on `listener` forever.
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    src: Arc<dyn ConfigSource>,
    settings: InjectSettings,
) {
    let settings = Arc::new(settings);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("webhook accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, src, settings) = (acceptor.clone(), src.clone(), settings.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, "webhook TLS handshake: {e}");
                    return;
                }
            };
            let svc =
                hyper::service::service_fn(move |req| handle(src.clone(), settings.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, "webhook connection: {e}");
            }
        });
    }
}
