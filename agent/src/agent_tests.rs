//! Runtime tests against an in-process tonic stub of the manager, a stub tunnel listener and a
//! stub app: arrival, routing per connection, in-flight connections surviving snapshot changes,
//! re-arrival after the manager forgets the session, fallback when the tunnel is down, depart;
//! and (as root) the whole agent capturing real traffic in a pair of network namespaces.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

use super::*;
use protocol::manager::manager_server::{Manager, ManagerServer};
use protocol::manager::*;
use protocol::tunnel::{Role, TunnelHeader};
use std::pin::Pin;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::{wrappers::WatchStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Recorded {
    arrivals: Vec<AgentInfo>,
    sessions: Vec<String>,
    watched: Vec<String>,
    departed: Vec<String>,
    wiretap_reports: Vec<WiretapReport>,
}

struct Stub {
    rec: Arc<Mutex<Recorded>>,
    snapshots: watch::Receiver<InterceptSnapshot>,
    forget_session: Arc<std::sync::atomic::AtomicBool>,
}

type SnapStream = Pin<Box<dyn Stream<Item = Result<InterceptSnapshot, Status>> + Send>>;
type DialStream = Pin<Box<dyn Stream<Item = Result<DialRequest, Status>> + Send>>;

#[tonic::async_trait]
impl Manager for Stub {
    async fn version(&self, _: Request<Empty>) -> Result<Response<VersionInfo>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn arrive_as_client(
        &self,
        _: Request<ClientInfo>,
    ) -> Result<Response<ArriveResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn arrive_as_agent(
        &self,
        r: Request<AgentInfo>,
    ) -> Result<Response<ArriveResponse>, Status> {
        let mut rec = self.rec.lock().unwrap();
        rec.arrivals.push(r.into_inner());
        let id = format!("agent-session-{}", rec.arrivals.len());
        rec.sessions.push(id.clone());
        Ok(Response::new(ArriveResponse {
            session: Some(SessionInfo {
                session_id: id,
                lease_seconds: 1,
                ..Default::default()
            }),
            cluster: None,
        }))
    }
    async fn remain(&self, r: Request<SessionInfo>) -> Result<Response<Empty>, Status> {
        let s = r.into_inner();
        let current = self.rec.lock().unwrap().sessions.last().cloned();
        if self.forget_session.swap(false, Ordering::SeqCst)
            || Some(&s.session_id) != current.as_ref()
        {
            return Err(Status::not_found(format!("no session {}", s.session_id)));
        }
        Ok(Response::new(Empty {}))
    }
    async fn depart(&self, r: Request<SessionInfo>) -> Result<Response<Empty>, Status> {
        self.rec
            .lock()
            .unwrap()
            .departed
            .push(r.into_inner().session_id);
        Ok(Response::new(Empty {}))
    }
    async fn list_workloads(
        &self,
        _: Request<ListWorkloadsRequest>,
    ) -> Result<Response<WorkloadList>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn create_intercept(
        &self,
        _: Request<CreateInterceptRequest>,
    ) -> Result<Response<InterceptInfo>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn remove_intercept(
        &self,
        _: Request<RemoveInterceptRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn report_wiretaps(&self, r: Request<WiretapReport>) -> Result<Response<Empty>, Status> {
        self.rec
            .lock()
            .unwrap()
            .wiretap_reports
            .push(r.into_inner());
        Ok(Response::new(Empty {}))
    }
    async fn uninstall(&self, _: Request<UninstallRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("stub"))
    }
    type WatchInterceptsStream = SnapStream;
    async fn watch_intercepts(
        &self,
        r: Request<SessionInfo>,
    ) -> Result<Response<SnapStream>, Status> {
        self.rec
            .lock()
            .unwrap()
            .watched
            .push(r.into_inner().session_id);
        Ok(Response::new(Box::pin(
            WatchStream::new(self.snapshots.clone()).map(Ok),
        )))
    }
    type WatchDialsStream = DialStream;
    async fn watch_dials(&self, _: Request<SessionInfo>) -> Result<Response<DialStream>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn resolve(
        &self,
        _: Request<protocol::manager::ResolveRequest>,
    ) -> Result<Response<protocol::manager::ResolveResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn set_log_level(
        &self,
        _: Request<protocol::manager::LogLevelRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("stub"))
    }
}

/// The stub manager, tunnel and app.
struct World {
    manager_addr: SocketAddr,
    tunnel_addr: SocketAddr,
    app_port: u16,
    rec: Arc<Mutex<Recorded>>,
    snapshots: watch::Sender<InterceptSnapshot>,
    forget_session: Arc<std::sync::atomic::AtomicBool>,
    tunnel_headers: Arc<Mutex<Vec<(Role, TunnelHeader)>>>,
    /// Every byte the tunnel stub received after the headers.
    tunnel_bytes: Arc<Mutex<Vec<u8>>>,
}

/// Echo server that first says `hello`.
async fn echo_server(listener: TcpListener, hello: &'static [u8]) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            s.write_all(hello).await.ok();
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn world(app_bind: &str) -> World {
    let app = TcpListener::bind(app_bind).await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    tokio::spawn(echo_server(app, b"app:"));

    let tunnel = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel_addr = tunnel.local_addr().unwrap();
    let tunnel_headers = Arc::new(Mutex::new(Vec::new()));
    let tunnel_bytes = Arc::new(Mutex::new(Vec::new()));
    let th = tunnel_headers.clone();
    let tb = tunnel_bytes.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tunnel.accept().await.unwrap();
            let th = th.clone();
            let tb = tb.clone();
            tokio::spawn(async move {
                let h = protocol::tunnel::read_header_timeout(&mut s, Duration::from_secs(5))
                    .await
                    .unwrap();
                let (id, answer) = (h.1.intercept_id.clone(), h.1.clone());
                th.lock().unwrap().push(h);
                // The manager's answer: "refused" stands for a client side that cannot be
                // reached, "dies" for a handler that reads the request and exits.
                let error = (id == "refused")
                    .then(|| protocol::tunnel::HeaderError::Other("client gone".into()));
                protocol::tunnel::write_header(&mut s, Role::Client, &answer.answer(error))
                    .await
                    .unwrap();
                if id == "refused" {
                    return;
                }
                if id == "dies" {
                    let mut req = [0u8; 5];
                    s.read_exact(&mut req).await.unwrap();
                    return;
                }
                s.write_all(b"tun:").await.unwrap();
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    tb.lock().unwrap().extend_from_slice(&buf[..n]);
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    let rec = Arc::new(Mutex::new(Recorded::default()));
    let (snapshots, snap_rx) = watch::channel(InterceptSnapshot::default());
    let forget_session = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stub = Stub {
        rec: rec.clone(),
        snapshots: snap_rx,
        forget_session: forget_session.clone(),
    };
    let ml = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let manager_addr = ml.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ManagerServer::new(stub))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(ml)),
    );
    World {
        manager_addr,
        tunnel_addr,
        app_port,
        rec,
        snapshots,
        forget_session,
        tunnel_headers,
        tunnel_bytes,
    }
}

impl World {
    fn config(&self) -> AgentConfig {
        AgentConfig {
            manager_addr: self.manager_addr.to_string(),
            tunnel_addr: self.tunnel_addr.to_string(),
            namespace: "shop".into(),
            workload: "web".into(),
            ports: vec![self.app_port],
            app_host: "127.0.0.1".into(),
            pod_ip: Some("10.1.2.3".into()),
            container: "web".into(),
            environment: [("GREETING".to_string(), "hi".to_string())].into(),
            mounts: vec![],
            redirect: false,
            drain_timeout: Duration::from_millis(300),
            manager_timeout: Duration::from_secs(10),
            port_map: vec![],
            token: None,
        }
    }

    fn intercept(&self, id: &str, state: &str) {
        self.snapshots.send_replace(InterceptSnapshot {
            intercepts: vec![InterceptInfo {
                spec: Some(InterceptSpec {
                    name: "web-8080".into(),
                    workload: "web".into(),
                    namespace: "shop".into(),
                    ..Default::default()
                }),
                id: id.into(),
                state: protocol::manager::InterceptState::parse(state).unwrap() as i32,
                service_port: u32::from(self.app_port),
                ..Default::default()
            }],
            ..Default::default()
        });
    }

    fn clear(&self) {
        self.snapshots.send_replace(InterceptSnapshot::default());
    }
}

/// Waits until `cond` holds on the agent's routes.
async fn wait_routes(agent: &Agent, what: &str, cond: impl Fn(&Routes) -> bool) {
    let mut rx = agent.routes();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| cond(r)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap();
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connects, returns the 4-byte greeting ("app:" or "tun:") and the open stream.
async fn open(addr: SocketAddr) -> (String, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut hello))
        .await
        .expect("greeting in time")
        .expect("greeting");
    (String::from_utf8_lossy(&hello).into_owned(), s)
}

async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, msg);
}

fn port_of(agent: &Agent) -> SocketAddr {
    let (_, l) = agent.listen_addrs()[0];
    SocketAddr::from(([127, 0, 0, 1], l.port()))
}

#[tokio::test]
async fn routes_each_connection_by_the_snapshot_at_accept_time() {
    let w = world("127.0.0.1:0").await;
    let agent = Agent::start(w.config()).await.unwrap();
    let first_session = agent.session_id().unwrap();
    {
        let rec = w.rec.lock().unwrap();
        let a = &rec.arrivals[0];
        assert_eq!((a.name.as_str(), a.namespace.as_str()), ("web", "shop"));
        assert_eq!(a.ports, [u32::from(w.app_port)]);
        assert_eq!(a.pod_ip, "10.1.2.3");
        assert_eq!(a.version, protocol::VERSION);
        assert_eq!(
            rec.sessions.as_slice(),
            std::slice::from_ref(&first_session)
        );
    }
    let addr = port_of(&agent);

    // no intercept: the app answers
    let (who, mut s) = open(addr).await;
    assert_eq!(who, "app:");
    echo(&mut s, b"direct").await;

    // a WAITING intercept changes nothing
    w.intercept("ic-waiting", "WAITING");
    wait_until("the agent to watch", || {
        !w.rec.lock().unwrap().watched.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(open(addr).await.0, "app:");

    // ACTIVE: new connections go through the tunnel with an agent header
    w.intercept("ic-1", "ACTIVE");
    wait_routes(&agent, "ic-1 active", |r| !r.is_empty()).await;
    let (who, mut via_tunnel) = open(addr).await;
    assert_eq!(who, "tun:");
    echo(&mut via_tunnel, b"intercepted").await;
    {
        let hs = w.tunnel_headers.lock().unwrap();
        assert_eq!(hs.len(), 1);
        let (role, h) = &hs[0];
        assert_eq!(*role, Role::Agent);
        assert_eq!(h.intercept_id, "ic-1");
        assert_eq!(h.session_id, first_session);
        assert!(uuid::Uuid::parse_str(&h.conn_id).is_ok(), "{}", h.conn_id);
        assert!(h.error.is_none());
    }
    // the connection opened before the intercept still reaches the app
    echo(&mut s, b"still direct").await;

    // the intercept ends: new connections go to the app, the tunnelled one is not cut
    w.clear();
    wait_routes(&agent, "intercept cleared", super::routes::Routes::is_empty).await;
    let (who, _) = open(addr).await;
    assert_eq!(who, "app:");
    echo(&mut via_tunnel, b"still intercepted").await;
    wait_until("closed connections to be released", || {
        agent.active_connections() == 2
    })
    .await;

    // the manager forgets the session: the agent arrives again and watches with the new one
    w.forget_session.store(true, Ordering::SeqCst);
    wait_until("a second arrival", || {
        w.rec.lock().unwrap().arrivals.len() == 2
    })
    .await;
    let second = w.rec.lock().unwrap().sessions[1].clone();
    wait_until("a watch on the new session", || {
        w.rec.lock().unwrap().watched.contains(&second)
    })
    .await;
    assert_eq!(agent.session_id().as_deref(), Some(second.as_str()));
    w.intercept("ic-2", "ACTIVE");
    wait_routes(&agent, "ic-2 active", |r| {
        matches!(r.route(w.app_port), Route::Intercept { ref session_id, .. } if **session_id == *second)
    })
    .await;
    assert_eq!(open(addr).await.0, "tun:");
    {
        let hs = w.tunnel_headers.lock().unwrap();
        let (_, h) = hs.last().unwrap();
        assert_eq!(
            (h.intercept_id.as_str(), h.session_id.as_str()),
            ("ic-2", second.as_str())
        );
    }

    // shutdown departs with the current session, even with connections still open
    let started = Instant::now();
    agent.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(w.rec.lock().unwrap().departed, [second]);
    // the accept loops are gone
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn an_unreachable_tunnel_falls_back_to_the_app() {
    let mut w = world("127.0.0.1:0").await;
    // a port nobody listens on
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    w.tunnel_addr = dead.local_addr().unwrap();
    drop(dead);
    let agent = Agent::start(w.config()).await.unwrap();
    w.intercept("ic-1", "ACTIVE");
    wait_routes(&agent, "ic-1 active", |r| !r.is_empty()).await;
    let (who, mut s) = open(port_of(&agent)).await;
    assert_eq!(who, "app:");
    echo(&mut s, b"fallback").await;
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_app_resets_the_caller() {
    let w = world("127.0.0.1:0").await;
    let mut cfg = w.config();
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.ports = vec![dead.local_addr().unwrap().port()];
    drop(dead);
    let agent = Agent::start(cfg).await.unwrap();
    let mut s = TcpStream::connect(port_of(&agent)).await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_absent_manager_fails_start_with_a_clear_error() {
    let w = world("127.0.0.1:0").await;
    let mut cfg = w.config();
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.manager_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    cfg.manager_timeout = Duration::from_millis(400);
    let started = Instant::now();
    let err = match Agent::start(cfg.clone()).await {
        Ok(_) => panic!("started without a manager"),
        Err(e) => e.to_string(),
    };
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        err.starts_with(&format!(
            "the traffic-manager at {} did not answer within 0.4s",
            cfg.manager_addr
        )),
        "{err}"
    );
    assert!(err.contains("refused"), "the cause is kept: {err}");
}

#[tokio::test]
async fn run_until_stops_cleanly_even_while_waiting_for_the_manager() {
    let w = world("127.0.0.1:0").await;
    let mut cfg = w.config();
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.manager_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let started = Instant::now();
    run_until(cfg, tokio::time::sleep(Duration::from_millis(200)))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));

    // and with a manager: runs, then departs on shutdown
    run_until(w.config(), async {
        wait_until("arrival", || !w.rec.lock().unwrap().arrivals.is_empty()).await;
    })
    .await
    .unwrap();
    let rec = w.rec.lock().unwrap();
    assert_eq!(rec.departed, rec.sessions);
}

/// As root: the full agent in a namespace "A" with a real redirect, called from namespace "B"
/// over a veth pair. Intercepted connections reach the tunnel; after shutdown the table is gone
/// and the app answers callers directly.
#[test]
fn captures_real_traffic_in_a_network_namespace() {
    const SVC: u16 = 18090;
    crate::testns::in_fresh_netns("captures_real_traffic", || {
        let ns_a = crate::testns::current_netns().unwrap();
        crate::testns::unshare_net().unwrap();
        let ns_b = crate::testns::current_netns().unwrap();
        crate::testns::enter(&ns_a).unwrap();
        crate::testns::link_up("lo").unwrap();
        crate::testns::add_veth("tpa1", "tpb1", &ns_b).unwrap();
        crate::testns::add_addr("tpa1", std::net::Ipv4Addr::new(10, 213, 8, 1), 24).unwrap();
        crate::testns::link_up("tpa1").unwrap();

        // namespace B: the caller, on its own thread so this one stays in A
        let (tx, rx) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<String>>();
        let caller = std::thread::spawn(move || {
            crate::testns::enter(&ns_b).unwrap();
            crate::testns::add_addr("tpb1", std::net::Ipv4Addr::new(10, 213, 8, 2), 24).unwrap();
            crate::testns::link_up("tpb1").unwrap();
            // each request: connect to the workload's service port, report the greeting
            for reply in rx {
                let mut s = std::net::TcpStream::connect_timeout(
                    &SocketAddr::from(([10, 213, 8, 1], SVC)),
                    Duration::from_secs(5),
                )
                .unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut hello = [0u8; 4];
                std::io::Read::read_exact(&mut s, &mut hello).unwrap();
                reply
                    .send(String::from_utf8_lossy(&hello).into_owned())
                    .unwrap();
            }
        });
        let call = move || {
            let (rtx, rrx) = std::sync::mpsc::channel();
            tx.send(rtx).unwrap();
            rrx.recv_timeout(Duration::from_secs(10)).unwrap()
        };

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let w = world(&format!("0.0.0.0:{SVC}")).await;
            let mut cfg = w.config();
            cfg.redirect = true;
            let agent = Agent::start(cfg).await.unwrap();
            assert!(nft::table_exists(TABLE).unwrap());
            let rules = nft::list_rules(TABLE).unwrap();
            assert_eq!(rules.len(), 1);
            assert_eq!(
                rules[0].redirect,
                Some((SVC, agent.listen_addrs()[0].1.port()))
            );

            let call2 = call.clone();
            assert_eq!(tokio::task::spawn_blocking(call2).await.unwrap(), "app:");
            w.intercept("ic-1", "ACTIVE");
            wait_routes(&agent, "ic-1 active", |r| !r.is_empty()).await;
            let call2 = call.clone();
            assert_eq!(tokio::task::spawn_blocking(call2).await.unwrap(), "tun:");
            assert_eq!(w.tunnel_headers.lock().unwrap().len(), 1);

            agent.shutdown().await.unwrap();
            assert!(!nft::table_exists(TABLE).unwrap());
            // the intercept is still "active" at the stub, but nothing captures the port now
            assert_eq!(tokio::task::spawn_blocking(call).await.unwrap(), "app:");
            assert_eq!(w.tunnel_headers.lock().unwrap().len(), 1);
        });
        drop(rt);
        caller.join().unwrap();
    });
}

/// Kubernetes port takeover: the agent listens on the fixed port the webhook gave it, routes by
/// the service port, and forwards to the app's own port.
#[tokio::test]
async fn port_takeover_listens_on_its_port_and_forwards_to_the_app() {
    let w = world("127.0.0.1:0").await;
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_port = free.local_addr().unwrap().port();
    drop(free);
    let mut cfg = w.config();
    cfg.ports = vec![80];
    cfg.port_map = vec![crate::portmap::PortMapping {
        service_port: 80,
        agent_port,
        app_port: w.app_port,
    }];
    let agent = Agent::start(cfg).await.unwrap();
    assert_eq!(agent.listen_addrs()[0].0, 80);
    assert_eq!(agent.listen_addrs()[0].1.port(), agent_port);
    let addr = SocketAddr::from(([127, 0, 0, 1], agent_port));
    let (hello, mut s) = open(addr).await;
    assert_eq!(hello, "app:");
    echo(&mut s, b"to the app").await;

    w.snapshots.send_replace(InterceptSnapshot {
        intercepts: vec![InterceptInfo {
            spec: Some(InterceptSpec {
                name: "web".into(),
                workload: "web".into(),
                namespace: "shop".into(),
                ..Default::default()
            }),
            id: "s:web".into(),
            state: protocol::manager::InterceptState::Active as i32,
            service_port: 80,
            ..Default::default()
        }],
        ..Default::default()
    });
    wait_routes(&agent, "port 80 intercepted", |r| r.route(80) != Route::App).await;
    let (hello, mut t) = open(addr).await;
    assert_eq!(
        hello, "tun:",
        "routed by the service port, not the agent port"
    );
    echo(&mut t, b"to the client").await;
    assert_eq!(w.tunnel_headers.lock().unwrap()[0].1.intercept_id, "s:web");
    echo(&mut s, b"in-flight app connection untouched").await;
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_side_that_is_gone_or_dies_unanswered_costs_the_caller_nothing() {
    let w = world("127.0.0.1:0").await;
    let agent = Agent::start(w.config()).await.unwrap();
    let addr = port_of(&agent);

    // The manager says the client side cannot be reached: the app answers, nothing was sent.
    w.intercept("refused", "ACTIVE");
    wait_routes(&agent, "refused active", |r| !r.is_empty()).await;
    let (who, mut s) = open(addr).await;
    assert_eq!(who, "app:");
    echo(&mut s, b"fell back").await;

    // The handler takes the request and dies before answering: the request is replayed to
    // the app, which answers it.
    w.intercept("dies", "ACTIVE");
    wait_routes(&agent, "dies active", |r| {
        r.active().any(|(_, id)| id == "dies")
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("the app answers in time")
        .expect("the app answers");
    assert_eq!(&back, b"app:hello");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wiretapped_connection_is_answered_by_the_app_and_copied_to_the_tunnel() {
    let w = world("127.0.0.1:0").await;
    let agent = Agent::start(w.config()).await.unwrap();
    let addr = port_of(&agent);
    w.snapshots.send_replace(InterceptSnapshot {
        intercepts: vec![InterceptInfo {
            spec: Some(InterceptSpec {
                name: "tap".into(),
                workload: "web".into(),
                namespace: "shop".into(),
                kind: EngagementKind::Wiretap as i32,
                ..Default::default()
            }),
            id: "c:tap".into(),
            state: protocol::manager::InterceptState::Active as i32,
            service_port: u32::from(w.app_port),
            ..Default::default()
        }],
        ..Default::default()
    });
    wait_routes(&agent, "the wiretap", |r| !r.taps(w.app_port).is_empty()).await;
    let (who, mut s) = open(addr).await;
    assert_eq!(who, "app:", "the app still answers");
    echo(&mut s, b"first ").await;
    echo(&mut s, b"second").await;
    drop(s);
    wait_until("the copy", || {
        w.tunnel_bytes.lock().unwrap().as_slice() == b"first second"
    })
    .await;
    let headers = w.tunnel_headers.lock().unwrap().clone();
    assert_eq!(headers.len(), 1);
    let (role, h) = &headers[0];
    assert_eq!(*role, Role::Agent);
    assert_eq!(h.intercept_id, "c:tap");
    assert_eq!(h.target, w.app_port.to_string());
    assert!(
        w.rec.lock().unwrap().wiretap_reports.is_empty(),
        "nothing dropped"
    );
    agent.shutdown().await.unwrap();
}
