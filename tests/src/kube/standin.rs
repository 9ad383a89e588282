//! The Kubernetes API server stand-in of every test (no API server can run here), for the real
//! `kube::Client`. In-memory objects served in the API's own shapes: lists with
//! `metadata.resourceVersion` (items without apiVersion/kind, as the API server sends them),
//! `?watch=true` streams of newline-delimited ADDED / MODIFIED / DELETED / BOOKMARK events from a
//! resourceVersion, an `ERROR` event with a 410 `Status` when that version has been compacted away
//! (the watcher must relist), GET, POST (with `dryRun`), DELETE and PATCH (JSON merge patch, JSON
//! patch; strategic merge is applied as a merge patch, which is exact for the maps this project
//! patches; server-side apply needs a `fieldManager`, creates the object when it is missing, in an
//! existing namespace, and merges it otherwise), `labelSelector` equality and `fieldSelector` on
//! `metadata.name`/`metadata.namespace`. A Deployment applied by server-side apply rolls out: its
//! first read after the apply shows it unavailable, the next ones available. The pod
//! `portforward` subresource is served over WebSocket with the real `v4.channel.k8s.io` channel
//! protocol (channel byte on every frame, the port as 2 little-endian bytes on the first frame of
//! each channel), forwarding to a real local TCP server ([`StandIn::forward_port`]).
//!
//! Test controls: [`StandIn::put`] / [`StandIn::delete`] change objects as a controller would,
//! [`StandIn::compact_and`] applies changes, forgets every event so far and ends all watches (so a
//! resumed watch gets 410), [`StandIn::requests`] is the log of requests, [`StandIn::list_count`]
//! counts list calls per collection, [`StandIn::keys`] names every stored object by its API path.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

type Body = BoxBody<Bytes, Infallible>;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub content_type: String,
    pub body: String,
    /// The `Authorization` header, if any.
    pub authorization: String,
}

#[derive(Clone)]
struct Event {
    rv: u64,
    coll: String,
    kind: &'static str,
    obj: Value,
}

#[derive(Default)]
struct St {
    rv: u64,
    /// collection ("apps/v1/deployments") → (namespace, name) → object.
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    events: Vec<Event>,
    /// Versions at or below this are gone: a watch from them gets 410.
    compacted: u64,
    /// Bumped to end every open watch.
    epoch: u64,
    /// While set, watches deliver nothing and new ones wait.
    paused: bool,
    requests: Vec<Req>,
    lists: HashMap<String, usize>,
    /// 410 Gone answers sent, per collection.
    gone: HashMap<String, usize>,
    /// What a dry-run Service with an out-of-range clusterIP is told (None: accepted).
    service_range: Option<String>,
    /// Pod port → where the port-forward of any known pod connects.
    forward: HashMap<u16, SocketAddr>,
    /// Deployments applied by server-side apply ("coll/ns/name") → reads since the apply.
    rollouts: HashMap<String, u32>,
}

/// The stand-in server.
#[derive(Clone)]
pub struct StandIn {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://<addr>`, or `https://…` when served over TLS.
    pub url: String,
    root_cert: Option<Vec<u8>>,
    st: Arc<Mutex<St>>,
    changed: Arc<Notify>,
}

/// (kind, plural) of every kind served.
const KINDS: &[(&str, &str)] = &[
    ("Deployment", "deployments"),
    ("ReplicaSet", "replicasets"),
    ("StatefulSet", "statefulsets"),
    ("Pod", "pods"),
    ("Service", "services"),
    ("ConfigMap", "configmaps"),
    ("Secret", "secrets"),
    ("ServiceAccount", "serviceaccounts"),
    ("Namespace", "namespaces"),
    ("Node", "nodes"),
    ("ServiceCIDR", "servicecidrs"),
    ("Role", "roles"),
    ("RoleBinding", "rolebindings"),
    ("ClusterRole", "clusterroles"),
    ("ClusterRoleBinding", "clusterrolebindings"),
    (
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
    ),
];

/// The collection of an object: `<group/version>/<plural>`.
pub fn collection(api_version: &str, kind: &str) -> String {
    let plural = KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .unwrap_or_else(|| panic!("stand-in: unknown kind {kind}"))
        .1;
    format!("{api_version}/{plural}")
}

/// The API path of a stored object: `/api/v1/…` or `/apis/<group>/<version>/…`, with
/// `namespaces/<ns>/` for namespaced objects.
fn api_path(coll: &str, ns: &str, name: &str) -> String {
    let (gv, plural) = coll.rsplit_once('/').unwrap();
    let root = if gv == "v1" {
        "/api/v1".to_string()
    } else {
        format!("/apis/{gv}")
    };
    let ns = if ns.is_empty() {
        String::new()
    } else {
        format!("/namespaces/{ns}")
    };
    format!("{root}{ns}/{plural}/{name}")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// What a path addresses.
struct Target {
    coll: String,
    namespace: Option<String>,
    name: Option<String>,
    /// The subresource (`portforward`).
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let t = |res: &str, ns: Option<&str>, name: Option<&str>| Target {
        coll: format!("{gv}/{res}"),
        namespace: ns.map(str::to_string),
        name: name.map(str::to_string),
        sub: None,
    };
    Some(match rest {
        [res] => t(res, None, None),
        ["namespaces", name] => t("namespaces", None, Some(name)),
        ["namespaces", ns, res] => t(res, Some(ns), None),
        ["namespaces", ns, res, name] => t(res, Some(ns), Some(name)),
        ["namespaces", ns, res, name, sub] => Target {
            sub: Some(sub.to_string()),
            ..t(res, Some(ns), Some(name))
        },
        [res, name] => t(res, None, Some(name)),
        _ => return None,
    })
}

fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Some(n) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(n);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `obj` passes the request's selectors.
fn selected(obj: &Value, q: &HashMap<String, String>) -> bool {
    let meta = &obj["metadata"];
    if let Some(fs) = q.get("fieldSelector").filter(|s| !s.is_empty()) {
        for term in fs.split(',') {
            let Some((k, v)) = term.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim_end_matches('='), v.trim_start_matches('='));
            let actual = match k {
                "metadata.name" => meta["name"].as_str(),
                "metadata.namespace" => meta["namespace"].as_str(),
                other => panic!("stand-in: unsupported field selector {other}"),
            };
            if actual != Some(v) {
                return false;
            }
        }
    }
    if let Some(ls) = q.get("labelSelector").filter(|s| !s.is_empty()) {
        for term in ls.split(',') {
            let (k, v) = term
                .split_once('=')
                .expect("stand-in: only k=v label selectors");
            if meta["labels"][k].as_str() != Some(v.trim_start_matches('=')) {
                return false;
            }
        }
    }
    true
}

fn in_scope(ns: &Option<String>, obj_ns: &str) -> bool {
    ns.as_deref().is_none_or(|n| n == obj_ns)
}

impl St {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, coll: &str, kind: &'static str, obj: Value) {
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(self.rv);
        self.events.push(Event {
            rv,
            coll: coll.into(),
            kind,
            obj,
        });
    }

    fn put(&mut self, coll: String, mut obj: Value) -> Value {
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().expect("name").to_string();
        let rv = self.bump();
        let m = obj["metadata"].as_object_mut().unwrap();
        m.insert("resourceVersion".into(), json!(rv.to_string()));
        m.entry("uid")
            .or_insert_with(|| json!(format!("uid-{coll}-{ns}-{name}").replace('/', "-")));
        m.entry("creationTimestamp")
            .or_insert_with(|| json!("2026-11-24T06:00:00Z"));
        let existed = self
            .objects
            .entry(coll.clone())
            .or_default()
            .insert((ns, name), obj.clone())
            .is_some();
        self.record(
            &coll,
            if existed { "MODIFIED" } else { "ADDED" },
            obj.clone(),
        );
        obj
    }

    fn remove(&mut self, coll: &str, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .objects
            .get_mut(coll)?
            .remove(&(ns.to_string(), name.to_string()))?;
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(coll, "DELETED", obj.clone());
        Some(obj)
    }
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

impl StandIn {
    /// Starts the server on 127.0.0.1 (plain HTTP).
    pub async fn start() -> StandIn {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts the server on `bind` (plain HTTP; e.g. `0.0.0.0:0` to be reached from containers).
    pub async fn start_on(bind: &str) -> StandIn {
        Self::serve(bind, None).await
    }

    /// Starts the server on 127.0.0.1 over HTTPS with this certificate (DER) and key (PEM),
    /// as API servers are reached; [`StandIn::client`] then trusts exactly that certificate.
    pub async fn start_tls(cert_der: Vec<u8>, key_pem: &str) -> StandIn {
        use rustls::pki_types::pem::PemObject;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let mut s = Self::serve("127.0.0.1:0", Some(tls_acceptor(cert_der.clone(), key))).await;
        s.url = s.url.replace("http://127.0.0.1", "https://localhost");
        s.root_cert = Some(cert_der);
        s
    }

    /// Starts the server on `bind` over HTTPS with a certificate for `names` (DNS names or IP
    /// addresses) signed by a fresh CA; returns it and the CA certificate (PEM) for a
    /// kubeconfig's `certificate-authority-data`.
    pub async fn start_tls_on(bind: &str, names: &[&str]) -> (StandIn, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(
            names
                .iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>(),
        )
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
        let acceptor = tls_acceptor(
            leaf.der().to_vec(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        );
        let mut s = Self::serve(bind, Some(acceptor)).await;
        s.url = s.url.replace("http://", "https://");
        s.root_cert = Some(ca_cert.der().to_vec());
        (s, ca_cert.pem())
    }

    async fn serve(bind: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> StandIn {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = StandIn {
            addr,
            url: format!("http://{addr}"),
            root_cert: None,
            st: Arc::new(Mutex::new(St {
                rv: 100,
                ..Default::default()
            })),
            changed: Arc::new(Notify::new()),
        };
        let server = s.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                                .with_upgrades()
                                .await
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await
                        }
                    };
                });
            }
        });
        s
    }

    /// A `kube::Client` for this server.
    pub fn client(&self) -> kube::Client {
        let mut cfg = kube::Config::new(self.url.parse().unwrap());
        cfg.root_cert = self.root_cert.clone().map(|c| vec![c]);
        kube::Client::try_from(cfg).unwrap()
    }

    /// Names of every stored object, as API paths (`/api/v1/namespaces/tm/pods/x`).
    pub fn keys(&self) -> Vec<String> {
        let st = self.st.lock().unwrap();
        st.objects
            .iter()
            .flat_map(|(coll, m)| m.keys().map(move |(ns, name)| api_path(coll, ns, name)))
            .collect()
    }

    /// Adds a namespace.
    pub fn add_namespace(&self, ns: &str) {
        self.put(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }

    /// Adds a traffic-manager pod (ready or not) in `ns`.
    pub fn add_manager_pod(&self, ns: &str, name: &str, ready: bool, created: &str) {
        self.put(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": ns, "creationTimestamp": created,
                "labels": {"app": "traffic-manager", "telepresence.io/managed-by": "telepresence"},
            },
            "spec": {"containers": [{"name": "traffic-manager", "image": "telepresence:t"}]},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }));
    }

    /// Port-forwards of any known pod's `port` connect to `target`.
    pub fn forward_port(&self, port: u16, target: SocketAddr) {
        self.st.lock().unwrap().forward.insert(port, target);
    }

    /// Forgets the requests so far.
    pub fn clear_requests(&self) {
        self.st.lock().unwrap().requests.clear();
    }

    /// Creates or replaces an object (any `k8s-openapi` resource), as a controller would.
    pub fn put<T: serde::Serialize>(&self, obj: &T) -> Value {
        let v = serde_json::to_value(obj).unwrap();
        let coll = collection(
            v["apiVersion"].as_str().expect("apiVersion"),
            v["kind"].as_str().expect("kind"),
        );
        let out = self.st.lock().unwrap().put(coll, v);
        self.changed.notify_waiters();
        out
    }

    /// Deletes an object.
    pub fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) {
        let coll = collection(api_version, kind);
        self.st.lock().unwrap().remove(&coll, ns, name);
        self.changed.notify_waiters();
    }

    /// Applies `f` to the store, then forgets every event so far and ends every open watch: a
    /// watcher resuming from its last resourceVersion gets 410 Gone and must relist to see
    /// what `f` changed.
    pub fn compact_and(&self, f: impl FnOnce(&StandIn)) {
        {
            let mut st = self.st.lock().unwrap();
            st.paused = true;
            st.epoch += 1;
        }
        self.changed.notify_waiters();
        f(self);
        let mut st = self.st.lock().unwrap();
        st.compacted = st.rv;
        st.events.clear();
        st.epoch += 1;
        st.paused = false;
        drop(st);
        self.changed.notify_waiters();
    }

    /// The stored object, typed.
    pub fn get<T: serde::de::DeserializeOwned>(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Option<T> {
        let st = self.st.lock().unwrap();
        st.objects
            .get(&collection(api_version, kind))?
            .get(&(ns.to_string(), name.to_string()))
            .map(|v| serde_json::from_value(v.clone()).unwrap())
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Req> {
        self.st.lock().unwrap().requests.clone()
    }

    /// The requests made with `method` on a path starting with `uri_prefix`, in order.
    pub fn requests_matching(&self, method: &str, uri_prefix: &str) -> Vec<Req> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.uri.starts_with(uri_prefix))
            .collect()
    }

    /// List calls made on a collection ("apps/v1/deployments").
    pub fn list_count(&self, coll: &str) -> usize {
        self.st
            .lock()
            .unwrap()
            .lists
            .get(coll)
            .copied()
            .unwrap_or(0)
    }

    /// 410 Gone watch answers sent for a collection.
    pub fn gone_count(&self, coll: &str) -> usize {
        self.st.lock().unwrap().gone.get(coll).copied().unwrap_or(0)
    }

    /// Makes dry-run Services with an out-of-range clusterIP fail like kube-apiserver with
    /// this service range (`None`: they are accepted).
    pub fn set_service_range(&self, range: Option<&str>) {
        self.st.lock().unwrap().service_range = range.map(str::to_string);
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (ct, authorization) = (header("content-type"), header("authorization"));
        let q = query(uri.query());
        let not_found = || {
            respond(
                404,
                &status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            )
        };
        if req.headers().contains_key("upgrade") {
            self.st.lock().unwrap().requests.push(Req {
                method: method.to_string(),
                uri: uri.to_string(),
                content_type: ct,
                body: String::new(),
                authorization,
            });
            return match parse_path(uri.path()) {
                Some(t) => self.upgrade(req, t, &q),
                None => not_found(),
            };
        }
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body_s = String::from_utf8_lossy(&body).into_owned();
        self.st.lock().unwrap().requests.push(Req {
            method: method.to_string(),
            uri: uri.to_string(),
            content_type: ct.clone(),
            body: body_s.clone(),
            authorization,
        });
        let Some(t) = parse_path(uri.path()).filter(|t| t.sub.is_none()) else {
            return not_found();
        };
        match method {
            Method::GET
                if t.name.is_none()
                    && matches!(q.get("watch").map(String::as_str), Some("true" | "1")) =>
            {
                self.watch(t, q)
            }
            Method::GET if t.name.is_none() => self.list(&t, &q),
            Method::GET => self.get_one(&t),
            Method::POST => self.create(&t, &q, &body_s),
            Method::PATCH if ct.starts_with("application/apply-patch+yaml") => {
                self.apply(&t, &q, &body_s)
            }
            Method::PATCH => self.patch(&t, &ct, &body_s),
            Method::DELETE => self.delete_one(&t),
            _ => respond(405, &status(405, "MethodNotAllowed", "method not allowed")),
        }
    }

    fn list(&self, t: &Target, q: &HashMap<String, String>) -> Response<Body> {
        let mut st = self.st.lock().unwrap();
        *st.lists.entry(t.coll.clone()).or_default() += 1;
        let items: Vec<Value> = st
            .objects
            .get(&t.coll)
            .map(|m| {
                m.iter()
                    .filter(|((ns, _), o)| in_scope(&t.namespace, ns) && selected(o, q))
                    .map(|(_, o)| {
                        let mut o = o.clone();
                        let m = o.as_object_mut().unwrap();
                        m.remove("apiVersion");
                        m.remove("kind");
                        o
                    })
                    .collect()
            })
            .unwrap_or_default();
        let rv = st.rv;
        let kind = format!("{}List", api_kind(&t.coll).1);
        respond(
            200,
            &json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        )
    }

    fn get_one(&self, t: &Target) -> Response<Body> {
        let mut st = self.st.lock().unwrap();
        let ns = t.namespace.clone().unwrap_or_default();
        let name = t.name.clone().unwrap();
        let rollout = format!("{}/{ns}/{name}", t.coll);
        let Some(obj) = st
            .objects
            .get_mut(&t.coll)
            .and_then(|m| m.get_mut(&(ns, name.clone())))
        else {
            let plural = t.coll.rsplit_once('/').unwrap().1;
            return respond(
                404,
                &status(404, "NotFound", &format!("{plural} \"{name}\" not found")),
            );
        };
        let mut obj = obj.clone();
        if let Some(reads) = st.rollouts.get_mut(&rollout) {
            // A rollout: unavailable at the first read after an apply, then available.
            *reads += 1;
            let gen = obj["metadata"]["generation"].as_i64().unwrap_or(1);
            let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            obj["status"] = if *reads < 2 {
                json!({"observedGeneration": gen, "replicas": want, "updatedReplicas": want, "availableReplicas": 0})
            } else {
                json!({"observedGeneration": gen, "replicas": want, "updatedReplicas": want, "readyReplicas": want, "availableReplicas": want})
            };
            let ns = t.namespace.clone().unwrap_or_default();
            if let Some(stored) = st
                .objects
                .get_mut(&t.coll)
                .and_then(|m| m.get_mut(&(ns, name)))
            {
                *stored = obj.clone();
            }
        }
        respond(200, &obj)
    }

    /// Server-side apply: creates the object (in an existing namespace) or merges into it.
    fn apply(&self, t: &Target, q: &HashMap<String, String>, body: &str) -> Response<Body> {
        if q.get("fieldManager")
            .is_none_or(std::string::String::is_empty)
        {
            return respond(
                422,
                &status(422, "Invalid", "fieldManager is required for apply"),
            );
        }
        let mut patch: Value =
            match serde_json::from_str(body).or_else(|_| yaml_serde::from_str(body)) {
                Ok(v) => v,
                Err(e) => return respond(400, &status(400, "BadRequest", &e.to_string())),
            };
        let ns = t.namespace.clone().unwrap_or_default();
        let name = t.name.clone().unwrap_or_default();
        if patch["metadata"]["name"].as_str() != Some(name.as_str()) {
            return respond(
                400,
                &status(
                    400,
                    "BadRequest",
                    "the name of the object does not match the URL",
                ),
            );
        }
        if !ns.is_empty() {
            if patch["metadata"]["namespace"]
                .as_str()
                .is_some_and(|x| x != ns)
            {
                return respond(
                    400,
                    &status(
                        400,
                        "BadRequest",
                        "the namespace of the object does not match the URL",
                    ),
                );
            }
            patch["metadata"]["namespace"] = json!(ns);
        }
        let mut st = self.st.lock().unwrap();
        let key = (ns.clone(), name.clone());
        let existing = st.objects.get(&t.coll).and_then(|m| m.get(&key)).cloned();
        if existing.is_none()
            && !ns.is_empty()
            && !st
                .objects
                .get("v1/namespaces")
                .is_some_and(|m| m.contains_key(&(String::new(), ns.clone())))
        {
            return respond(
                404,
                &status(404, "NotFound", &format!("namespaces \"{ns}\" not found")),
            );
        }
        let generation = existing
            .as_ref()
            .and_then(|o| o["metadata"]["generation"].as_i64())
            .unwrap_or(0)
            + 1;
        let mut obj = match existing {
            Some(mut o) => {
                merge(&mut o, &patch);
                o
            }
            None => patch,
        };
        obj["metadata"]["generation"] = json!(generation);
        if obj["kind"] == "Deployment" {
            st.rollouts.insert(format!("{}/{ns}/{name}", t.coll), 0);
        }
        let out = st.put(t.coll.clone(), obj);
        drop(st);
        self.changed.notify_waiters();
        respond(200, &out)
    }

    fn create(&self, t: &Target, q: &HashMap<String, String>, body: &str) -> Response<Body> {
        let mut obj: Value = match serde_json::from_str(body) {
            Ok(v) => v,
            Err(e) => return respond(400, &status(400, "BadRequest", &e.to_string())),
        };
        if let Some(ns) = &t.namespace {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let (api_version, kind) = api_kind(&t.coll);
        for (field, value) in [("apiVersion", api_version), ("kind", kind)] {
            if obj[field].is_null() {
                obj[field] = json!(value);
            }
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut st = self.st.lock().unwrap();
        if q.get("dryRun").is_some() {
            if let (true, Some(range), Some(ip)) = (
                t.coll == "v1/services",
                st.service_range.clone(),
                obj["spec"]["clusterIP"].as_str(),
            ) {
                let msg = format!(
                    "Service \"{name}\" is invalid: spec.clusterIPs: Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}"
                );
                return respond(422, &status(422, "Invalid", &msg));
            }
            return respond(201, &obj);
        }
        let ns = t.namespace.clone().unwrap_or_default();
        if st
            .objects
            .get(&t.coll)
            .is_some_and(|m| m.contains_key(&(ns, name.clone())))
        {
            return respond(
                409,
                &status(409, "AlreadyExists", &format!("\"{name}\" already exists")),
            );
        }
        let out = st.put(t.coll.clone(), obj);
        drop(st);
        self.changed.notify_waiters();
        respond(201, &out)
    }

    fn patch(&self, t: &Target, ct: &str, body: &str) -> Response<Body> {
        let ns = t.namespace.clone().unwrap_or_default();
        let name = t.name.clone().unwrap_or_default();
        let mut st = self.st.lock().unwrap();
        let Some(mut obj) = st
            .objects
            .get(&t.coll)
            .and_then(|m| m.get(&(ns, name.clone())))
            .cloned()
        else {
            return respond(
                404,
                &status(404, "NotFound", &format!("\"{name}\" not found")),
            );
        };
        let patch: Value = match serde_json::from_str(body).or_else(|_| yaml_serde::from_str(body))
        {
            Ok(v) => v,
            Err(e) => return respond(400, &status(400, "BadRequest", &e.to_string())),
        };
        match ct.split(';').next().unwrap_or("") {
            "application/json-patch+json" => {
                let p: json_patch::Patch = match serde_json::from_value(patch) {
                    Ok(p) => p,
                    Err(e) => return respond(400, &status(400, "BadRequest", &e.to_string())),
                };
                if let Err(e) = json_patch::patch(&mut obj, &p) {
                    return respond(422, &status(422, "Invalid", &e.to_string()));
                }
            }
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                merge(&mut obj, &patch);
            }
            other => {
                return respond(
                    415,
                    &status(
                        415,
                        "UnsupportedMediaType",
                        &format!("unsupported patch type {other}"),
                    ),
                )
            }
        }
        let out = st.put(t.coll.clone(), obj);
        drop(st);
        self.changed.notify_waiters();
        respond(200, &out)
    }

    fn delete_one(&self, t: &Target) -> Response<Body> {
        let ns = t.namespace.clone().unwrap_or_default();
        let name = t.name.clone().unwrap_or_default();
        let removed = self.st.lock().unwrap().remove(&t.coll, &ns, &name);
        self.changed.notify_waiters();
        match removed {
            Some(o) => respond(200, &o),
            None => respond(
                404,
                &status(404, "NotFound", &format!("\"{name}\" not found")),
            ),
        }
    }

    /// The events of the watched collection after resource version `last` that the watch's
    /// scope and selectors match, the current resource version, and whether the watch has
    /// ended (the stand-in was reset since `epoch`, or is paused).
    fn events_after(
        &self,
        t: &Target,
        q: &HashMap<String, String>,
        last: u64,
        epoch: u64,
    ) -> (Vec<Event>, u64, bool) {
        let st = self.st.lock().unwrap();
        let batch: Vec<Event> = st
            .events
            .iter()
            .filter(|e| e.rv > last && e.coll == t.coll)
            .filter(|e| {
                in_scope(
                    &t.namespace,
                    e.obj["metadata"]["namespace"].as_str().unwrap_or(""),
                ) && selected(&e.obj, q)
            })
            .cloned()
            .collect();
        (batch, st.rv, st.epoch != epoch || st.paused)
    }

    fn watch(&self, t: Target, q: HashMap<String, String>) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        let me = self.clone();
        tokio::spawn(async move {
            let line = |v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
            let (epoch, gone, compacted) = loop {
                let notified = me.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let st = me.st.lock().unwrap();
                    if !st.paused {
                        break (st.epoch, from < st.compacted, st.compacted);
                    }
                }
                notified.await;
            };
            if gone {
                *me.st
                    .lock()
                    .unwrap()
                    .gone
                    .entry(t.coll.clone())
                    .or_default() += 1;
                let s = status(
                    410,
                    "Expired",
                    &format!("too old resource version: {from} ({compacted})"),
                );
                let _ = tx.send(line(json!({"type": "ERROR", "object": s}))).await;
                return;
            }
            let mut last = from;
            let mut bookmarked = false;
            loop {
                let notified = me.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let (batch, current_rv, ended) = me.events_after(&t, &q, last, epoch);
                if ended {
                    return;
                }
                for e in batch {
                    last = last.max(e.rv);
                    if tx
                        .send(line(json!({"type": e.kind, "object": e.obj})))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if bookmarks && !bookmarked {
                    bookmarked = true;
                    let (api_version, kind) = api_kind(&t.coll);
                    let bm = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
                        "metadata": {"resourceVersion": current_rv.to_string()}}});
                    if tx.send(line(bm)).await.is_err() {
                        return;
                    }
                    last = last.max(current_rv);
                }
                notified.await;
            }
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
        let mut r = Response::new(body);
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    }
}

fn api_kind(coll: &str) -> (String, String) {
    let (gv, plural) = coll.rsplit_once('/').unwrap();
    let kind = KINDS
        .iter()
        .find(|(_, p)| *p == plural)
        .unwrap_or_else(|| panic!("stand-in: unknown collection {plural}"))
        .0;
    (gv.to_string(), kind.to_string())
}

/// A TLS acceptor serving this certificate (DER) and key.
fn tls_acceptor(
    cert_der: Vec<u8>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> tokio_rustls::TlsAcceptor {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert_der.into()], key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

impl StandIn {
    /// The pod `portforward` subresource over WebSocket (`v4.channel.k8s.io`).
    fn upgrade(
        &self,
        req: Request<Incoming>,
        t: Target,
        q: &HashMap<String, String>,
    ) -> Response<Body> {
        let (Some(pod), Some(sub)) = (&t.name, &t.sub) else {
            return respond(404, &status(404, "NotFound", "not an upgradable resource"));
        };
        if t.coll != "v1/pods" || sub != "portforward" {
            return respond(
                404,
                &status(404, "NotFound", "only pods/portforward upgrades"),
            );
        }
        let ns = t.namespace.clone().unwrap_or_default();
        if self.get::<Value>("v1", "Pod", &ns, pod).is_none() {
            return respond(
                404,
                &status(404, "NotFound", &format!("pods \"{pod}\" not found")),
            );
        }
        let protocols = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !protocols
            .split(',')
            .any(|p| p.trim() == "v4.channel.k8s.io")
        {
            return respond(
                400,
                &status(400, "BadRequest", "v4.channel.k8s.io is required"),
            );
        }
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return respond(400, &status(400, "BadRequest", "no Sec-WebSocket-Key"));
        };
        let Ok(port) = q.get("ports").cloned().unwrap_or_default().parse::<u16>() else {
            return respond(
                400,
                &status(400, "BadRequest", "one port is served per forward"),
            );
        };
        let target = self.st.lock().unwrap().forward.get(&port).copied();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        tokio::spawn(async move {
            let Ok(upgraded) = hyper::upgrade::on(req).await else {
                return;
            };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            relay(ws, port, target).await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", accept)
            .header("sec-websocket-protocol", "v4.channel.k8s.io")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap()
    }
}

/// Relays one forwarded connection: channel 0 = data, channel 1 = error.
async fn relay<S>(ws: tokio_tungstenite::WebSocketStream<S>, port: u16, target: Option<SocketAddr>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures::{SinkExt, StreamExt};
    let (mut sink, mut stream) = ws.split();
    let p = port.to_le_bytes();
    // First frame of each channel: the port.
    if sink
        .send(Message::binary(vec![0, p[0], p[1]]))
        .await
        .is_err()
        || sink
            .send(Message::binary(vec![1, p[0], p[1]]))
            .await
            .is_err()
    {
        return;
    }
    let tcp = match target {
        Some(t) => tokio::net::TcpStream::connect(t).await.ok(),
        None => None,
    };
    let Some(tcp) = tcp else {
        let mut msg = vec![1u8];
        msg.extend_from_slice(
            format!("error forwarding port {port} to pod: connection refused").as_bytes(),
        );
        let _ = sink.send(Message::binary(msg)).await;
        let _ = sink.send(Message::Close(None)).await;
        return;
    };
    let (mut rd, mut wr) = tcp.into_split();
    let to_pod = async move {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Binary(b)
                    if b.len() > 1 && b[0] == 0 && wr.write_all(&b[1..]).await.is_err() =>
                {
                    break;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut frame = Vec::with_capacity(n + 1);
                    frame.push(0);
                    frame.extend_from_slice(&buf[..n]);
                    if sink.send(Message::binary(frame)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    tokio::join!(to_pod, from_pod);
}
