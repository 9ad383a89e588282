//! `tp-testapp`: the test workload and handler of the end-to-end tests and the benchmark.
//! It runs as PID 1 in a `FROM scratch` image (`tp-testapp:<tag>`), so it installs its own
//! SIGTERM/SIGINT handling.
//!
//! ```text
//! tp-testapp serve [--http PORT]... [--udp PORT]... [--name NAME] [--tick FILE] [--bind ADDR] [--log-requests]
//! tp-testapp get URL [--header K=V]...
//! tp-testapp bench-client URL [--requests N] [--concurrency C] [--size BYTES] [--warmup N] [--new-conn]
//! tp-testapp streams URL [--streams N] [--up] [--bytes B]
//! tp-testapp udp-echo-bench HOST:PORT [--count N] [--size BYTES]
//! tp-testapp download URL
//! tp-testapp seq URL [--h2] [--post BODY] --req 'PATH [K=V]...'...
//! tp-testapp raw URL --data ESCAPED [--chunk N --delay-ms MS] [--timeout S]
//! tp-testapp bench-headers URL [--header K=V]... [--requests N] [--concurrency C]
//! tp-testapp relay --listen PORT --to HOST:PORT
//! tp-testapp steady URL [--interval-ms MS] [--timeout S]
//! tp-testapp stranger --grpc HOST:PORT --tunnel HOST:PORT ...
//! ```
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tests::testapp::{self, App, Url};
use tokio::net::{TcpListener, UdpSocket};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(name = "tp-testapp", about = "Telepresence test application")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP and UDP echo (HTTP on 8080 when no port is given).
    Serve {
        /// HTTP port (repeatable).
        #[arg(long = "http")]
        http: Vec<u16>,
        /// UDP echo port (repeatable).
        #[arg(long = "udp")]
        udp: Vec<u16>,
        /// Name answered by `GET /` and prefixed to UDP echoes.
        #[arg(long, env = "TP_APP_NAME", default_value = "app")]
        name: String,
        /// Background work: write a counter to FILE every 100 ms (it stops moving while the
        /// process does not run, e.g. paused by `telepresence replace`).
        #[arg(long)]
        tick: Option<std::path::PathBuf>,
        /// Address to listen on (127.0.0.1: only the network namespace's own localhost).
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
        /// Print `<name> <METHOD> <path>` on stdout for every HTTP/1 request received.
        #[arg(long)]
        log_requests: bool,
    },
    /// GET a URL and print the body; exit 1 on a connection failure, 22 on a non-2xx status.
    Get {
        url: String,
        /// Request header `K=V` (or `K: V`), repeatable.
        #[arg(long = "header", short = 'H')]
        header: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        /// PUT this body instead of a GET.
        #[arg(long)]
        put: Option<String>,
    },
    /// Per-request latency over keep-alive connections; prints JSON {p50_us, p99_us, count, ...}.
    /// Requests `/bytes/<size>`, or the URL's path when it has one other than `/`.
    BenchClient {
        url: String,
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Response body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: u64,
        /// Unmeasured requests per connection before measuring.
        #[arg(long, default_value_t = 50)]
        warmup: usize,
        /// Every request on a new connection (connect, one request with `Connection: close`,
        /// close), one after the other; `--concurrency` and `--size` do not apply.
        #[arg(long)]
        new_conn: bool,
    },
    /// N concurrent streams one way, each on its own connection: downloads of `/bytes/<B>`
    /// or (`--up`) uploads of B bytes to `POST /discard`; prints JSON {streams, bytes, secs,
    /// gbit_per_s}.
    Streams {
        url: String,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Upload instead of download.
        #[arg(long)]
        up: bool,
        /// Body bytes per stream.
        #[arg(long, default_value_t = 256 * 1024 * 1024)]
        bytes: u64,
    },
    /// UDP echo latency to HOST:PORT (a `serve --udp` port), one datagram at a time (JSON with
    /// the percentiles 1 … 99.9).
    UdpEchoBench {
        target: String,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Datagram size in bytes (at least 8).
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 20)]
        warmup: usize,
    },
    /// GET a URL, discard the body and print JSON {bytes, secs, gbit_per_s}.
    Download { url: String },
    /// Several requests over ONE connection; prints `<status> <body>` per request.
    Seq {
        url: String,
        /// A request: `PATH [NAME=VALUE]...` (repeatable, in order).
        #[arg(long = "req")]
        req: Vec<String>,
        /// HTTP/2 with prior knowledge instead of HTTP/1.1 keep-alive.
        #[arg(long)]
        h2: bool,
        /// POST this body (gRPC-style over HTTP/2) instead of GET.
        #[arg(long)]
        post: Option<String>,
    },
    /// Send raw bytes (`\r \n \xHH {pad:N}` escapes) and print JSON {sent,total,received,closed}.
    Raw {
        url: String,
        #[arg(long)]
        data: String,
        /// Send this many bytes at a time (0: all at once).
        #[arg(long, default_value_t = 0)]
        chunk: usize,
        /// Pause between chunks.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Stop reading after this many seconds.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Latency and requests/s of GETs carrying headers over keep-alive connections (JSON).
    BenchHeaders {
        url: String,
        #[arg(long = "header", short = 'H')]
        header: Vec<String>,
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 20)]
        warmup: usize,
    },
    /// GET URL on a fresh connection every interval until stdin closes; print `ok <body>` or
    /// `err <reason>` per request as it completes, then `done <requests sent>`.
    Steady {
        url: String,
        #[arg(long, default_value_t = 25)]
        interval_ms: u64,
        /// Give each request this many seconds.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
    /// Relay every TCP connection on PORT to HOST:PORT (stands in for a published control
    /// plane in the Kubernetes tests).
    Relay {
        #[arg(long)]
        listen: u16,
        #[arg(long)]
        to: String,
    },
    /// Try every door of a traffic-manager without its credential (tests/src/stranger.rs);
    /// prints one JSON `Attempt` per line.
    Stranger {
        #[arg(long)]
        grpc: String,
        #[arg(long)]
        tunnel: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        workload: String,
        #[arg(long)]
        victim_session: String,
        #[arg(long)]
        victim_intercept_id: String,
        #[arg(long)]
        victim_intercept_name: String,
        #[arg(long)]
        outbound: String,
        /// Present this (made-up) token.
        #[arg(long)]
        token: Option<String>,
    },
    /// Send one UDP datagram to HOST:PORT and print the reply.
    UdpSend {
        target: String,
        message: String,
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
    /// Print the IPv4 addresses DNS gives for NAME, one per line; exit 1 when there are none.
    Lookup { name: String },
    /// DNS lookup latency of NAME (JSON).
    #[command(alias = "dns-bench")]
    LookupBench {
        name: String,
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
    /// TCP connect latency to HOST:PORT (JSON).
    ConnectBench {
        target: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Aggregate throughput of parallel GETs of URL (JSON).
    DownloadMany {
        url: String,
        #[arg(long, default_value_t = 100)]
        connections: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Clients run on one thread (lowest latency, no cross-thread wake-ups); the server uses
    // every core unless TP_TESTAPP_THREADS says otherwise.
    let threads = match (&cli.command, std::env::var("TP_TESTAPP_THREADS")) {
        (_, Ok(n)) => n.parse().unwrap_or(0),
        (Command::Serve { .. }, Err(_)) => 0,
        (_, Err(_)) => 1,
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tp-testapp: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let work = run(cli.command);
        tokio::select! {
            code = work => code,
            code = stop_signal() => code,
        }
    })
}

/// Resolves when SIGTERM or SIGINT arrives (as PID 1 the defaults would ignore them).
async fn stop_signal() -> ExitCode {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("tp-testapp: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    ExitCode::SUCCESS
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Stranger {
            grpc,
            tunnel,
            namespace,
            workload,
            victim_session,
            victim_intercept_id,
            victim_intercept_name,
            outbound,
            token,
        } => {
            let t = tests::stranger::Target {
                grpc,
                tunnel,
                token: token.and_then(|t| protocol::auth::Token::parse(&t).ok()),
                namespace,
                workload,
                victim_session,
                victim_intercept_id,
                victim_intercept_name,
                outbound,
            };
            for a in tests::stranger::try_everything(&t).await {
                println!("{}", serde_json::to_string(&a).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Command::Serve {
            http,
            udp,
            name,
            tick,
            bind,
            log_requests,
        } => {
            let mut app = App::new(name);
            app.log_requests = log_requests;
            serve(http, udp, app, tick, bind).await
        }
        Command::Get {
            url,
            header,
            timeout,
            put,
        } => get(&url, &header, timeout, put).await,
        Command::BenchClient {
            url,
            requests,
            concurrency,
            size,
            warmup,
            new_conn: false,
        } => {
            let url = match parse_url(&url) {
                Ok(u) => u,
                Err(code) => return code,
            };
            let path = (url.path != "/").then_some(url.path.as_str());
            match testapp::bench_client(&url, path, requests, concurrency, size, warmup).await {
                Ok(r) => print_json(&r),
                Err(e) => fail(&format!("bench-client: {e}")),
            }
        }
        Command::Seq { .. } | Command::Raw { .. } | Command::BenchHeaders { .. } => {
            personal_tools(command).await
        }
        Command::BenchClient { .. } | Command::Streams { .. } | Command::UdpEchoBench { .. } => {
            path_tools(command).await
        }
        Command::Relay { listen, to } => relay(listen, to).await,
        Command::Steady {
            url,
            interval_ms,
            timeout,
        } => {
            let url = match parse_url(&url) {
                Ok(u) => u,
                Err(code) => return code,
            };
            let sent = tests::testapp_steady::steady(
                &url,
                std::time::Duration::from_millis(interval_ms.max(1)),
                std::time::Duration::from_secs_f64(timeout.max(0.01)),
            )
            .await;
            println!("done {sent}");
            ExitCode::SUCCESS
        }
        Command::UdpSend {
            target,
            message,
            timeout,
        } => {
            let Some((host, port)) = target
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse().ok()?)))
            else {
                return fail(&format!("bad target {target:?}: use HOST:PORT"));
            };
            let limit = std::time::Duration::from_secs_f64(timeout.max(0.01));
            match tests::testapp_udp::udp_request(host, port, &message, limit).await {
                Ok(reply) => {
                    println!("{reply}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("udp-send {target}: {e}")),
            }
        }
        Command::Lookup { name } => match tests::testapp_udp::lookup(&name).await {
            Ok(ips) if !ips.is_empty() => {
                for ip in ips {
                    println!("{ip}");
                }
                ExitCode::SUCCESS
            }
            Ok(_) => fail(&format!("{name}: no address")),
            Err(e) => fail(&format!("lookup {name}: {e}")),
        },
        Command::LookupBench { name, count } => {
            match tests::testapp_load::lookup_bench(&name, count).await {
                Ok(r) => print_json(&r),
                Err(e) => fail(&format!("lookup-bench: {e}")),
            }
        }
        Command::ConnectBench { target, count } => {
            let Some((host, port)) = target
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse().ok()?)))
            else {
                return fail(&format!("bad target {target:?}: use HOST:PORT"));
            };
            match tests::testapp_load::connect_bench(host, port, count).await {
                Ok(r) => print_json(&r),
                Err(e) => fail(&format!("connect-bench: {e}")),
            }
        }
        Command::DownloadMany { url, connections } => {
            let url = match parse_url(&url) {
                Ok(u) => u,
                Err(code) => return code,
            };
            match tests::testapp_load::download_many(&url, connections).await {
                Ok(r) => print_json(&r),
                Err(e) => fail(&format!("download-many: {e}")),
            }
        }
        Command::Download { url } => {
            let url = match parse_url(&url) {
                Ok(u) => u,
                Err(code) => return code,
            };
            match testapp::download(&url).await {
                Ok(r) => print_json(&r),
                Err(e) => fail(&format!("download: {e}")),
            }
        }
    }
}

async fn relay(port: u16, to: String) -> ExitCode {
    let l = match TcpListener::bind(("0.0.0.0", port)).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("cannot listen on TCP port {port}: {e}")),
    };
    loop {
        let Ok((mut c, _)) = l.accept().await else {
            continue;
        };
        let to = to.clone();
        tokio::spawn(async move {
            if let Ok(mut t) = tokio::net::TcpStream::connect(&to).await {
                let _ = tokio::io::copy_bidirectional(&mut c, &mut t).await;
            }
        });
    }
}

async fn serve(
    mut http: Vec<u16>,
    udp: Vec<u16>,
    app: App,
    tick: Option<std::path::PathBuf>,
    bind: std::net::IpAddr,
) -> ExitCode {
    if http.is_empty() && udp.is_empty() {
        http.push(8080);
    }
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(file) = tick {
        tasks.spawn(ticker(file));
    }
    for port in http {
        match TcpListener::bind((bind, port)).await {
            Ok(l) => {
                eprintln!("tp-testapp {}: HTTP on {bind}:{port}", app.name);
                tasks.spawn(testapp::serve_http(l, app.clone()));
            }
            Err(e) => return fail(&format!("cannot listen on TCP port {port}: {e}")),
        }
    }
    for port in udp {
        match UdpSocket::bind((bind, port)).await {
            Ok(s) => {
                eprintln!("tp-testapp {}: UDP echo on {bind}:{port}", app.name);
                tasks.spawn(testapp::serve_udp(s, app.clone()));
            }
            Err(e) => return fail(&format!("cannot listen on UDP port {port}: {e}")),
        }
    }
    match tasks.join_next().await {
        Some(Ok(Err(e))) => fail(&format!("server stopped: {e}")),
        Some(Err(e)) => fail(&format!("server stopped: {e}")),
        _ => ExitCode::SUCCESS,
    }
}

/// Writes 1, 2, 3, ... to `file` every 100 ms (whole-file replace through a rename).
async fn ticker(file: std::path::PathBuf) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    let mut n: u64 = 0;
    loop {
        n += 1;
        tokio::fs::write(&tmp, n.to_string()).await?;
        tokio::fs::rename(&tmp, &file).await?;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn get(url: &str, headers: &[String], timeout: f64, put: Option<String>) -> ExitCode {
    let url = match parse_url(url) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let mut parsed = Vec::new();
    for h in headers {
        let kv = h.split_once('=').or_else(|| h.split_once(':'));
        match kv {
            Some((k, v)) if !k.trim().is_empty() => {
                parsed.push((k.trim().to_string(), v.trim().to_string()));
            }
            _ => return fail(&format!("bad header {h:?}: use K=V")),
        }
    }
    let limit = std::time::Duration::from_secs_f64(timeout.max(0.001));
    let req = async {
        match &put {
            Some(body) => testapp::put(&url, &parsed, body.as_bytes()).await,
            None => testapp::get(&url, &parsed).await,
        }
    };
    match tokio::time::timeout(limit, req).await {
        Err(_) => fail(&format!("GET {}: timed out after {timeout}s", url.path)),
        Ok(Err(e)) => fail(&format!(
            "GET http://{}:{}{}: {e}",
            url.host, url.port, url.path
        )),
        Ok(Ok(resp)) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&resp.body);
            let _ = out.flush();
            if (200..300).contains(&resp.status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("tp-testapp: HTTP {}", resp.status);
                ExitCode::from(22)
            }
        }
    }
}

fn parse_url(url: &str) -> Result<Url, ExitCode> {
    Url::parse(url).map_err(|e| fail(&e))
}

fn print_json(value: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string(value) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("tp-testapp: {msg}");
    ExitCode::FAILURE
}

/// Splits `HOST:PORT`.
fn host_port(target: &str) -> Result<(&str, u16), ExitCode> {
    target
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse().ok()?)))
        .ok_or_else(|| fail(&format!("bad target {target:?}: use HOST:PORT")))
}

/// `bench-client --new-conn`, `streams` and `udp-echo-bench` (the path benchmark).
async fn path_tools(command: Command) -> ExitCode {
    use tests::testapp_paths as paths;
    match command {
        Command::BenchClient {
            url,
            requests,
            warmup,
            ..
        } => {
            let url = match parse_url(&url) {
                Ok(u) => u,
                Err(code) => return code,
            };
            match paths::new_conn_bench(&url, &url.path, requests, warmup.min(requests)).await {
                Ok(r) => print_json(&r),
                Err(e) => fail(&format!("bench-client --new-conn: {e}")),
            }
        }
        Command::Streams {
            url,
            streams,
            up,
            bytes,
        } => {
            let url = match parse_url(&url) {
                Ok(u) => u,
                Err(code) => return code,
            };
            let dir = if up {
                paths::Direction::Up
            } else {
                paths::Direction::Down
            };
            match paths::streams(&url, streams, dir, bytes).await {
                Ok(r) => print_json(&r),
                Err(e) => fail(&format!("streams: {e}")),
            }
        }
        Command::UdpEchoBench {
            target,
            count,
            size,
            warmup,
        } => {
            let (host, port) = match host_port(&target) {
                Ok(hp) => hp,
                Err(code) => return code,
            };
            match paths::udp_echo_bench(host, port, count, size, warmup).await {
                Ok(r) => print_json(&r),
                Err(e) => fail(&format!("udp-echo-bench {target}: {e}")),
            }
        }
        _ => unreachable!("only path tools are dispatched here"),
    }
}

/// `seq`, `raw` and `bench-headers` (tests of personal intercepts).
async fn personal_tools(command: Command) -> ExitCode {
    use tests::testapp_h2 as h2;
    match command {
        Command::Seq {
            url,
            req,
            h2: http2,
            post,
        } => {
            let url = match parse_url(&url) {
                Ok(u) => u,
                Err(code) => return code,
            };
            let steps: Result<Vec<_>, _> = req.iter().map(|r| h2::Step::parse(r)).collect();
            let steps = match steps {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            match h2::sequence(&url, &steps, http2, post.as_deref()).await {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("seq: {e}")),
            }
        }
        Command::Raw {
            url,
            data,
            chunk,
            delay_ms,
            timeout,
        } => {
            let url = match parse_url(&url) {
                Ok(u) => u,
                Err(code) => return code,
            };
            let bytes = match h2::unescape(&data) {
                Ok(b) => b,
                Err(e) => return fail(&e),
            };
            let r = h2::raw(
                &url,
                &bytes,
                chunk,
                std::time::Duration::from_millis(delay_ms),
                std::time::Duration::from_secs_f64(timeout.max(0.001)),
            )
            .await;
            match r {
                Ok(r) => print_json(&r),
                Err(e) => fail(&format!("raw: {e}")),
            }
        }
        Command::BenchHeaders {
            url,
            header,
            requests,
            concurrency,
            warmup,
        } => {
            let url = match parse_url(&url) {
                Ok(u) => u,
                Err(code) => return code,
            };
            let mut headers = Vec::new();
            for h in &header {
                match h.split_once('=') {
                    Some((k, v)) => headers.push((k.to_string(), v.to_string())),
                    None => return fail(&format!("bad header {h:?}: use K=V")),
                }
            }
            match h2::bench_headers(&url, &headers, requests, concurrency, warmup).await {
                Ok(r) => print_json(&r),
                Err(e) => fail(&format!("bench-headers: {e}")),
            }
        }
        _ => unreachable!("only personal tools are dispatched here"),
    }
}
