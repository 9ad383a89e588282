//! Client modes of the test app for the path benchmark (`bench_paths.rs`): the latency of new
//! connections (`bench-client --new-conn`: connect, one small request, close), N concurrent
//! streams one way (`streams`: downloads of `GET /bytes/<n>` or uploads to `POST /discard`,
//! aggregate Gbit/s), UDP echo latency (`udp-echo-bench`), and the percentile line (1 … 99.9)
//! every latency client prints so the benchmark can chart the distributions ([`percentile_line`]).

use crate::testapp::{connect, percentile, resolve, Client, Url};
use serde::Serialize;
use std::io;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The percentiles of [`percentile_line`]: 1 … 99, then 99.5 and 99.9.
pub fn percentile_points() -> Vec<f64> {
    let mut v: Vec<f64> = (1..=99).map(f64::from).collect();
    v.extend([99.5, 99.9]);
    v
}

/// `[percentile, microseconds]` for every [`percentile_points`] of sorted samples.
pub fn percentile_line(sorted: &[Duration]) -> Vec<[f64; 2]> {
    percentile_points()
        .into_iter()
        .map(|p| [p, percentile(sorted, p).as_secs_f64() * 1e6])
        .collect()
}

/// Latency figures of one run, in microseconds, with the distribution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyRun {
    /// Operations measured.
    pub count: usize,
    /// Operations that got no answer (UDP).
    pub lost: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
    /// `[percentile, µs]`, percentiles 1 … 99.9.
    pub percentiles: Vec<[f64; 2]>,
}

impl LatencyRun {
    /// The figures of `samples` (in any order).
    pub fn of(mut samples: Vec<Duration>, lost: usize) -> LatencyRun {
        samples.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let mean = if samples.is_empty() {
            0.0
        } else {
            samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len() as f64
        };
        LatencyRun {
            count: samples.len(),
            lost,
            p50_us: us(percentile(&samples, 50.0)),
            p99_us: us(percentile(&samples, 99.0)),
            mean_us: mean,
            max_us: samples.last().map_or(0.0, |d| us(*d)),
            percentiles: percentile_line(&samples),
        }
    }
}

/// `url` with its host resolved once (so that a run of connections measures no lookups).
async fn resolved(url: &Url) -> io::Result<Url> {
    let addr = *resolve(&url.host, url.port).await?.first().ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("{}: no address", url.host))
    })?;
    let mut url = url.clone();
    url.host = addr.ip().to_string();
    Ok(url)
}

/// `count` times (after `warmup` unmeasured): a new connection, `GET path` with
/// `Connection: close`, the whole answer read, the connection closed. Each sample runs from
/// the connect call to the last byte of the answer.
pub async fn new_conn_bench(
    url: &Url,
    path: &str,
    count: usize,
    warmup: usize,
) -> io::Result<LatencyRun> {
    let url = resolved(url).await?;
    let close = [("Connection".to_string(), "close".to_string())];
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let start = Instant::now();
        let mut c = Client::connect(&url).await?;
        let r = c.request("GET", path, &close, b"").await?;
        let took = start.elapsed();
        drop(c);
        if r.status != 200 {
            return Err(io::Error::other(format!("{path}: HTTP {}", r.status)));
        }
        if i >= warmup {
            samples.push(took);
        }
    }
    Ok(LatencyRun::of(samples, 0))
}

/// Which way the bytes of [`streams`] go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Server to client: `GET /bytes/<n>`.
    Down,
    /// Client to server: `POST /discard` with an n-byte body.
    Up,
}

/// Aggregate throughput of [`streams`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamsResult {
    pub streams: usize,
    pub direction: Direction,
    /// Body bytes moved, all streams together.
    pub bytes: u64,
    /// From the first connect to the end of the last stream.
    pub secs: f64,
    pub gbit_per_s: f64,
}

/// How long a stream's connect may take (the kernel would retry SYNs for minutes).
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// Size of the buffer each stream reads into or writes from.
const STREAM_BUF: usize = 256 * 1024;
static ZEROS: [u8; STREAM_BUF] = [0; STREAM_BUF];

/// One stream: `bytes` body bytes one way on a new connection; returns when the server's
/// answer (download: the last body byte; upload: the answer after the last body byte) is in.
async fn one_stream(url: &Url, dir: Direction, bytes: u64) -> io::Result<u64> {
    let mut s = tokio::time::timeout(CONNECT_LIMIT, connect(url))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connect {}:{}: no answer within {CONNECT_LIMIT:?}",
                    url.host, url.port
                ),
            )
        })??;
    let host = &url.host;
    let mut buf = vec![0u8; STREAM_BUF];
    match dir {
        Direction::Down => {
            let req =
                format!("GET /bytes/{bytes} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await?;
            let mut got = 0u64;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            // The answer's head is not body.
            got.checked_sub(bytes)
                .filter(|head| *head < 4096)
                .map(|_| bytes)
                .ok_or_else(|| {
                    io::Error::other(format!("download: {got} bytes for a {bytes}-byte body"))
                })
        }
        Direction::Up => {
            let head = format!(
                "POST /discard HTTP/1.1\r\nHost: {host}\r\nContent-Length: {bytes}\r\nConnection: close\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await?;
            let mut left = bytes;
            while left > 0 {
                let take = left.min(STREAM_BUF as u64) as usize;
                s.write_all(&ZEROS[..take]).await?;
                left -= take as u64;
            }
            let n = s.read(&mut buf).await?;
            if !buf[..n].starts_with(b"HTTP/1.1 200") {
                return Err(io::Error::other(format!(
                    "upload: answer {:?}",
                    String::from_utf8_lossy(&buf[..n.min(40)])
                )));
            }
            Ok(bytes)
        }
    }
}

/// `streams` concurrent connections moving `bytes_each` body bytes each, all one way.
pub async fn streams(
    url: &Url,
    streams: usize,
    dir: Direction,
    bytes_each: u64,
) -> io::Result<StreamsResult> {
    let url = resolved(url).await?;
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..streams.max(1) {
        let url = url.clone();
        set.spawn(async move { one_stream(&url, dir, bytes_each).await });
    }
    let mut bytes = 0;
    while let Some(r) = set.join_next().await {
        bytes += r.map_err(io::Error::other)??;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(StreamsResult {
        streams: streams.max(1),
        direction: dir,
        bytes,
        secs,
        gbit_per_s: bytes as f64 * 8.0 / secs.max(1e-9) / 1e9,
    })
}

/// How long [`udp_echo_bench`] waits for one echo before counting it lost.
const UDP_WAIT: Duration = Duration::from_secs(1);

/// `count` datagrams of `size` bytes to the echo server at `host:port`, one at a time (after
/// `warmup` unmeasured ones), each measured from send to its echo; a datagram without an echo
/// within a second is counted as lost (a late echo is told apart by its sequence number).
pub async fn udp_echo_bench(
    host: &str,
    port: u16,
    count: usize,
    size: usize,
    warmup: usize,
) -> io::Result<LatencyRun> {
    let sock = crate::testapp_udp::connected_udp(host, port).await?;
    let addr = sock.peer_addr()?;
    let mut msg = vec![b'u'; size.max(8)];
    let mut buf = vec![0u8; 65536];
    let (mut samples, mut lost) = (Vec::with_capacity(count), 0);
    for i in 0..(warmup + count) as u64 {
        msg[..8].copy_from_slice(&i.to_be_bytes());
        let start = Instant::now();
        sock.send(&msg).await?;
        let echoed = tokio::time::timeout(UDP_WAIT, async {
            loop {
                let n = sock.recv(&mut buf).await?;
                // The echo is `<name>:<datagram>`: ours ends with this datagram.
                if n >= msg.len() && buf[n - msg.len()..n] == msg[..] {
                    return Ok::<_, io::Error>(());
                }
            }
        })
        .await;
        let took = start.elapsed();
        match echoed {
            Ok(r) => r?,
            Err(_) => {
                if i >= warmup as u64 {
                    lost += 1;
                }
                continue;
            }
        }
        if i >= warmup as u64 {
            samples.push(took);
        }
    }
    if samples.is_empty() && count > 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no UDP echo came back from {addr}"),
        ));
    }
    Ok(LatencyRun::of(samples, lost))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testapp::{serve_http, serve_udp, App};
    use tokio::net::TcpListener;

    async fn http() -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_http(listener, App::new("p")));
        Url::parse(&format!("http://{addr}/")).unwrap()
    }

    #[test]
    fn percentile_lines_are_ordered() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let line = percentile_line(&samples);
        assert_eq!(line.len(), 101);
        let near = |got: [f64; 2], want: [f64; 2]| {
            assert!(
                got[0] == want[0] && (got[1] - want[1]).abs() < 1e-6,
                "{got:?} != {want:?}"
            );
        };
        near(line[0], [1.0, 10.0]);
        near(line[49], [50.0, 500.0]);
        near(line[100], [99.9, 999.0]);
        assert!(line
            .windows(2)
            .all(|w| w[0][0] < w[1][0] && w[0][1] <= w[1][1]));
        let run = LatencyRun::of(samples.into_iter().rev().collect(), 2);
        assert_eq!(
            (run.count, run.lost, run.p50_us, run.max_us),
            (1000, 2, 500.0, 1000.0)
        );
    }

    #[tokio::test]
    async fn new_connections_are_counted() {
        let url = http().await;
        let r = new_conn_bench(&url, "/", 20, 2).await.unwrap();
        assert_eq!(r.count, 20);
        assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us);
        assert!(new_conn_bench(&url, "/nope", 1, 0).await.is_err());
    }

    #[tokio::test]
    async fn streams_move_every_byte_both_ways() {
        let url = http().await;
        for dir in [Direction::Down, Direction::Up] {
            let r = streams(&url, 3, dir, 3_000_000).await.unwrap();
            assert_eq!((r.streams, r.bytes), (3, 9_000_000));
            assert!(r.gbit_per_s > 0.0);
        }
    }

    #[tokio::test]
    async fn udp_echoes_are_timed() {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        tokio::spawn(serve_udp(sock, App::new("u")));
        let r = udp_echo_bench("127.0.0.1", port, 50, 64, 5).await.unwrap();
        assert_eq!((r.count, r.lost), (50, 0));
        assert_eq!(r.percentiles.len(), 101);
    }
}
