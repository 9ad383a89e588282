//! A small Kubernetes API server stand-in for tests of the client side (no API server can run
//! here): real Kubernetes JSON over HTTP for the kinds `telepresence helm` applies (GET, list
//! with label selectors, server-side apply PATCH, POST, DELETE, `Status` errors), pods, and the
//! pod `portforward` subresource over WebSocket with the real `v4.channel.k8s.io` channel
//! protocol (channel byte on every frame, the port as 2 little-endian bytes on the first frame
//! of each channel), forwarding to a real local TCP server. Every request is recorded.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

/// One request the stand-in saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub content_type: String,
    pub body: String,
    /// The `Authorization` header, if any.
    pub authorization: String,
}

#[derive(Default)]
struct State {
    /// (collection path without the name, name) → object. The collection path is e.g.
    /// `/api/v1/namespaces/ns/configmaps` or `/apis/rbac.authorization.k8s.io/v1/clusterroles`.
    objects: BTreeMap<(String, String), Value>,
    seen: Vec<Seen>,
    /// Pod port → where the port-forward of any known pod connects.
    forward: HashMap<u16, SocketAddr>,
    /// Reads of each Deployment; it becomes available on the second read after an apply.
    deployment_reads: HashMap<String, u32>,
    resource_version: u64,
}

/// A running stand-in.
#[derive(Clone)]
pub struct KubeStandIn {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn status(code: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    json_response(code, &body)
}

fn json_response(code: u16, v: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

/// `kind` of a collection's items from its plural (the kinds we serve).
fn kind_of(plural: &str) -> &'static str {
    match plural {
        "pods" => "Pod",
        "namespaces" => "Namespace",
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        "services" => "Service",
        "serviceaccounts" => "ServiceAccount",
        "deployments" => "Deployment",
        "roles" => "Role",
        "rolebindings" => "RoleBinding",
        "clusterroles" => "ClusterRole",
        "clusterrolebindings" => "ClusterRoleBinding",
        "mutatingwebhookconfigurations" => "MutatingWebhookConfiguration",
        _ => "Unknown",
    }
}

/// An API path split into (collection path, plural, namespace, name, subresource).
type ApiPath = (String, String, String, Option<String>, Option<String>);

fn parse_path(path: &str) -> Option<ApiPath> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix_len, rest) = match *parts.first()? {
        "api" if parts.len() > 2 => (2, &parts[2..]),
        "apis" if parts.len() > 3 => (3, &parts[3..]),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, r @ ..] if !r.is_empty() => (ns.to_string(), r),
        r => (String::new(), r),
    };
    let (plural, name, sub) = match rest {
        [p] => (p.to_string(), None, None),
        [p, n] => (p.to_string(), Some(n.to_string()), None),
        [p, n, s] => (p.to_string(), Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    let mut coll = format!("/{}", parts[..prefix_len].join("/"));
    if !ns.is_empty() {
        coll.push_str(&format!("/namespaces/{ns}"));
    }
    coll.push_str(&format!("/{plural}"));
    Some((coll, plural, ns, name, sub))
}

fn query(uri: &hyper::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.replace("%3D", "=")
                    .replace("%2C", ",")
                    .replace("%2F", "/"),
            )
        })
        .collect()
}

fn matches_selector(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

impl KubeStandIn {
    /// Starts the stand-in on 127.0.0.1 (ephemeral port).
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts the stand-in on `bind` (e.g. `0.0.0.0:0` to be reached from containers).
    pub async fn start_on(bind: &str) -> Self {
        Self::serve(bind, None).await
    }

    /// Starts the stand-in serving HTTPS with a certificate for `names` (DNS names or IP
    /// addresses) signed by a fresh CA; returns it and the CA certificate (PEM) for the
    /// kubeconfig's `certificate-authority-data`.
    pub async fn start_tls_on(bind: &str, names: &[&str]) -> (Self, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (Self::serve(bind, Some(acceptor)).await, ca_cert.pem())
    }

    async fn serve(bind: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let s = KubeStandIn {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(State::default())),
        };
        let me = s.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let me = me.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let me = me.clone();
                        async move { Ok::<_, std::convert::Infallible>(me.handle(req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                                .with_upgrades()
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(conn) = acceptor.accept(conn).await else {
                                return;
                            };
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                                .with_upgrades()
                                .await;
                        }
                    }
                });
            }
        });
        s
    }

    /// A `kube` client for the stand-in (plain HTTP, no auth).
    pub fn client(&self) -> kube::Client {
        let cfg = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(cfg).unwrap()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn clear_seen(&self) {
        self.state.lock().unwrap().seen.clear();
    }

    /// The stored object at `collection`/`name`.
    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&(collection.to_string(), name.to_string()))
            .cloned()
    }

    /// Names of every stored object, as `collection/name`.
    pub fn keys(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .objects
            .keys()
            .map(|(c, n)| format!("{c}/{n}"))
            .collect()
    }

    /// Stores an object directly (e.g. a namespace or a pod).
    pub fn put(&self, collection: &str, obj: Value) {
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        self.state
            .lock()
            .unwrap()
            .objects
            .insert((collection.to_string(), name), obj);
    }

    pub fn remove(&self, collection: &str, name: &str) {
        self.state
            .lock()
            .unwrap()
            .objects
            .remove(&(collection.to_string(), name.to_string()));
    }

    /// Adds a namespace.
    pub fn add_namespace(&self, ns: &str) {
        self.put(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }

    /// Adds a traffic-manager pod (ready or not) in `ns`.
    pub fn add_manager_pod(&self, ns: &str, name: &str, ready: bool, created: &str) {
        self.put(
            &format!("/api/v1/namespaces/{ns}/pods"),
            json!({
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
            }),
        );
    }

    /// Port-forwards of any known pod's `port` connect to `target`.
    pub fn forward_port(&self, port: u16, target: SocketAddr) {
        self.state.lock().unwrap().forward.insert(port, target);
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().to_string();
        let uri = req.uri().clone();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let path = uri.path().to_string();
        let q = query(&uri);
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if req.headers().contains_key("upgrade") {
            self.state.lock().unwrap().seen.push(Seen {
                method,
                uri: uri.to_string(),
                content_type,
                body: String::new(),
                authorization,
            });
            return self.upgrade(req, &path, &q).await;
        }
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body).to_string();
        self.state.lock().unwrap().seen.push(Seen {
            method: method.clone(),
            uri: uri.to_string(),
            content_type: content_type.clone(),
            body: body.clone(),
            authorization,
        });
        drop(parts);
        let Some((coll, plural, ns, name, sub)) = parse_path(&path) else {
            return status(
                404,
                "NotFound",
                &format!("the server could not find {path}"),
            );
        };
        if sub.is_some() {
            return status(404, "NotFound", "subresource not served");
        }
        let kind = kind_of(&plural);
        let mut st = self.state.lock().unwrap();
        match (method.as_str(), name) {
            ("GET", None) => {
                let sel = q.get("labelSelector").cloned().unwrap_or_default();
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((c, _), o)| *c == coll && matches_selector(o, &sel))
                    .map(|(_, o)| o.clone())
                    .collect();
                json_response(
                    200,
                    &json!({
                        "apiVersion": "v1", "kind": format!("{kind}List"),
                        "metadata": {"resourceVersion": st.resource_version.to_string()},
                        "items": items,
                    }),
                )
            }
            ("GET", Some(n)) => {
                let key = (coll.clone(), n.clone());
                let Some(mut obj) = st.objects.get(&key).cloned() else {
                    return status(404, "NotFound", &format!("{plural} \"{n}\" not found"));
                };
                if kind == "Deployment" {
                    // A rollout: unavailable at the first read after an apply, then available.
                    let reads = st
                        .deployment_reads
                        .entry(format!("{coll}/{n}"))
                        .or_default();
                    *reads += 1;
                    let gen = obj["metadata"]["generation"].as_i64().unwrap_or(1);
                    let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
                    obj["status"] = if *reads < 2 {
                        json!({"observedGeneration": gen, "replicas": want, "updatedReplicas": want, "availableReplicas": 0})
                    } else {
                        json!({"observedGeneration": gen, "replicas": want, "updatedReplicas": want, "readyReplicas": want, "availableReplicas": want})
                    };
                    st.objects.insert(key, obj.clone());
                }
                json_response(200, &obj)
            }
            ("PATCH", Some(n)) => {
                if content_type != "application/apply-patch+yaml" {
                    return status(
                        415,
                        "UnsupportedMediaType",
                        "only server-side apply is served",
                    );
                }
                if q.get("fieldManager").is_none_or(|m| m.is_empty()) {
                    return status(422, "Invalid", "fieldManager is required for apply");
                }
                let mut obj: Value = match serde_json::from_str(&body) {
                    Ok(v) => v,
                    Err(e) => return status(400, "BadRequest", &e.to_string()),
                };
                if obj["metadata"]["name"].as_str() != Some(n.as_str()) {
                    return status(
                        400,
                        "BadRequest",
                        "the name of the object does not match the URL",
                    );
                }
                if !ns.is_empty()
                    && obj["metadata"]["namespace"]
                        .as_str()
                        .is_some_and(|x| x != ns)
                {
                    return status(
                        400,
                        "BadRequest",
                        "the namespace of the object does not match the URL",
                    );
                }
                if !ns.is_empty()
                    && !st
                        .objects
                        .contains_key(&("/api/v1/namespaces".to_string(), ns.clone()))
                {
                    return status(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
                }
                st.resource_version += 1;
                let key = (coll.clone(), n.clone());
                let generation = st
                    .objects
                    .get(&key)
                    .and_then(|o| o["metadata"]["generation"].as_i64())
                    .unwrap_or(0)
                    + 1;
                obj["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
                obj["metadata"]["generation"] = json!(generation);
                obj["metadata"]["uid"] = json!(format!("uid-{}", st.resource_version));
                if !ns.is_empty() {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                st.deployment_reads.remove(&format!("{coll}/{n}"));
                st.objects.insert(key, obj.clone());
                json_response(200, &obj)
            }
            ("POST", None) => {
                let mut obj: Value = match serde_json::from_str(&body) {
                    Ok(v) => v,
                    Err(e) => return status(400, "BadRequest", &e.to_string()),
                };
                let n = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let key = (coll.clone(), n.clone());
                if st.objects.contains_key(&key) {
                    return status(
                        409,
                        "AlreadyExists",
                        &format!("{plural} \"{n}\" already exists"),
                    );
                }
                obj["apiVersion"] = json!("v1");
                obj["kind"] = json!(kind);
                st.objects.insert(key, obj.clone());
                json_response(201, &obj)
            }
            ("DELETE", Some(n)) => match st.objects.remove(&(coll.clone(), n.clone())) {
                Some(_) => json_response(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                ),
                None => status(404, "NotFound", &format!("{plural} \"{n}\" not found")),
            },
            _ => status(405, "MethodNotAllowed", &format!("{method} {path}")),
        }
    }

    /// The pod `portforward` subresource over WebSocket (`v4.channel.k8s.io`).
    async fn upgrade(
        &self,
        req: Request<Incoming>,
        path: &str,
        q: &HashMap<String, String>,
    ) -> Response<Full<Bytes>> {
        let Some((coll, plural, _ns, Some(pod), Some(sub))) = parse_path(path) else {
            return status(404, "NotFound", "not an upgradable resource");
        };
        if plural != "pods" || sub != "portforward" {
            return status(404, "NotFound", "only pods/portforward upgrades");
        }
        if self.get(&coll, &pod).is_none() {
            return status(404, "NotFound", &format!("pods \"{pod}\" not found"));
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
            return status(400, "BadRequest", "v4.channel.k8s.io is required");
        }
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return status(400, "BadRequest", "no Sec-WebSocket-Key");
        };
        let Ok(port) = q.get("ports").cloned().unwrap_or_default().parse::<u16>() else {
            return status(400, "BadRequest", "one port is served per forward");
        };
        let target = self.state.lock().unwrap().forward.get(&port).copied();
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
            .body(Full::new(Bytes::new()))
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
