//! Load clients of the test app for the outbound benchmark: DNS lookup latency
//! (`lookup-bench`), TCP connect latency (`connect-bench`) and the aggregate throughput of many
//! parallel downloads (`download-many`). Each prints one JSON object; the latency ones with
//! their distribution (percentiles 1 … 99.9).

use crate::testapp::{
    dns_query, download, parse_dns_answer, percentile, resolve, DnsAnswer, ResolvConf, Url,
};
use serde::Serialize;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpStream, UdpSocket};

/// Latency figures in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub count: usize,
    /// The first (uncached) operation.
    pub first_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// `[percentile, µs]`, percentiles 1 … 99.9.
    pub percentiles: Vec<[f64; 2]>,
}

fn latency(first: Duration, mut all: Vec<Duration>) -> Latency {
    all.sort();
    Latency {
        count: all.len(),
        first_us: first.as_secs_f64() * 1e6,
        p50_us: percentile(&all, 50.0).as_secs_f64() * 1e6,
        p99_us: percentile(&all, 99.0).as_secs_f64() * 1e6,
        percentiles: crate::testapp_paths::percentile_line(&all),
    }
}

/// `count` A queries for exactly `name` (no search list) to the first resolv.conf nameserver,
/// one at a time; fails unless every answer has an address.
pub async fn lookup_bench(name: &str, count: usize) -> io::Result<Latency> {
    let conf = ResolvConf::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let server = conf.nameservers[0];
    let sock = UdpSocket::bind("0.0.0.0:0").await?;
    sock.connect(server).await?;
    let mut buf = vec![0u8; 4096];
    let mut times = Vec::with_capacity(count);
    let mut first = Duration::ZERO;
    for i in 0..=count {
        let id = i as u16;
        let q = dns_query(id, name).map_err(io::Error::other)?;
        let start = Instant::now();
        sock.send(&q).await?;
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no DNS answer"))??;
        let took = start.elapsed();
        match parse_dns_answer(id, &buf[..n]) {
            DnsAnswer::Found(_) => {}
            other => return Err(io::Error::other(format!("{name}: {other:?}"))),
        }
        if i == 0 {
            first = took;
        } else {
            times.push(took);
        }
    }
    Ok(latency(first, times))
}

/// `count` TCP connects to `host:port`, one at a time, each closed right after.
pub async fn connect_bench(host: &str, port: u16, count: usize) -> io::Result<Latency> {
    let addr: SocketAddr = resolve(host, port).await?[0];
    let mut times = Vec::with_capacity(count);
    let mut first = Duration::ZERO;
    for i in 0..=count {
        let start = Instant::now();
        let s = TcpStream::connect(addr).await?;
        let took = start.elapsed();
        drop(s);
        if i == 0 {
            first = took;
        } else {
            times.push(took);
        }
    }
    Ok(latency(first, times))
}

/// Aggregate throughput of parallel downloads.
#[derive(Debug, Serialize)]
pub struct Aggregate {
    pub connections: usize,
    pub bytes: u64,
    pub secs: f64,
    pub gbit_per_s: f64,
}

/// `connections` parallel GETs of `url`.
pub async fn download_many(url: &Url, connections: usize) -> io::Result<Aggregate> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let url = url.clone();
        set.spawn(async move { download(&url).await });
    }
    let mut bytes = 0;
    while let Some(r) = set.join_next().await {
        bytes += r.map_err(io::Error::other)??.bytes;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Aggregate {
        connections,
        bytes,
        secs,
        gbit_per_s: bytes as f64 * 8.0 / secs / 1e9,
    })
}
