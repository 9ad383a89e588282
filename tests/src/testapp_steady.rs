//! The fault suite's caller (`tp-testapp steady URL`): one `GET` on a fresh connection every
//! interval, each on its own task so a slow answer never delays the next request, until its
//! stdin closes; then it waits for the requests in flight and exits. Every request prints one
//! line as it completes — `ok <body>` or `err start=<unix ms> <reason>` (when the failed request
//! began, on the wall clock the host shares) — so the test reading them (`tests/src/faults.rs`)
//! counts every request, sees when the answers changed and which failed requests were already
//! under way when a fault struck.

use crate::testapp::{get, Url};
use std::io::Write;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The prefix of a failed request's line, before its start time.
pub const ERR_START: &str = "err start=";

/// One request's outcome, as printed; `started` is when it began (ms since the Unix epoch).
pub fn line(result: &std::io::Result<crate::testapp::Response>, started: u128) -> String {
    match result {
        Ok(r) if (200..300).contains(&r.status) => {
            format!("ok {}", String::from_utf8_lossy(&r.body).trim())
        }
        Ok(r) => format!("{ERR_START}{started} status {}", r.status),
        Err(e) => format!("{ERR_START}{started} {}", e.to_string().replace('\n', " ")),
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: std::time::SystemTime) -> u128 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Sends `GET url` every `interval` (each given `timeout`) until stdin reaches its end, then
/// waits for the requests in flight. Returns how many were sent.
pub async fn steady(url: &Url, interval: Duration, timeout: Duration) -> usize {
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut sink = [0u8; 256];
        let mut stdin = tokio::io::stdin();
        while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
        let _ = done_tx.send(());
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut done_rx => break,
        }
        sent += 1;
        let url = url.clone();
        tasks.spawn(async move {
            let started = unix_ms(std::time::SystemTime::now());
            let r = match tokio::time::timeout(timeout, get(&url, &[])).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                )),
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", line(&r, started));
            let _ = out.flush();
        });
        // Reap finished tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    sent
}
