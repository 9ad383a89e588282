//! Sessions that end with their connection: a client's `WatchDials` stream and an agent's
//! `WatchIntercepts` stream are bound to their session ([`bind`]), and when the stream ends —
//! the daemon or agent died, its connection broke, or HTTP/2 keepalive found it dead — the
//! session and (for a client) its intercepts are removed at once instead of when the lease
//! runs out. A live peer whose stream broke finds its session unknown and arrives again (the
//! daemon then re-creates its intercepts), so nothing routes to a client that cannot answer.

use crate::Manager;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio_stream::Stream;

/// Numbers streams so that only the newest stream of a session ends it.
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// A response stream that ends its session when dropped (see the module doc).
pub(crate) struct Bound<S> {
    inner: S,
    _guard: Guard,
}

struct Guard {
    mgr: Manager,
    session: String,
    epoch: u64,
}

/// Binds `session` to `stream`: from now on the session ends when this stream ends, unless
/// a newer stream is bound to it first.
pub(crate) fn bind<S>(mgr: &Manager, session: &str, stream: S) -> Bound<S> {
    let epoch = EPOCH.fetch_add(1, Ordering::Relaxed);
    mgr.inner
        .streams
        .lock()
        .unwrap()
        .insert(session.to_string(), epoch);
    Bound {
        inner: stream,
        _guard: Guard {
            mgr: mgr.clone(),
            session: session.to_string(),
            epoch,
        },
    }
}

impl<S: Stream + Unpin> Stream for Bound<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let current = {
            let mut streams = self.mgr.inner.streams.lock().unwrap();
            let current = streams.get(&self.session) == Some(&self.epoch);
            if current {
                streams.remove(&self.session);
            }
            current
        };
        if !current {
            return;
        }
        let (mgr, session) = (self.mgr.clone(), std::mem::take(&mut self.session));
        // Drop may run outside a runtime (a test tearing one down): then nothing to tell.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { mgr.end_session(&session).await });
        }
    }
}

impl Manager {
    /// Removes a session whose bound stream ended, with a client's intercepts.
    async fn end_session(&self, session: &str) {
        let mut st = self.inner.state.lock().await;
        if st.clients.contains_key(session) {
            tracing::info!(%session, "the client's connection ended; removing its intercepts");
            st.remove_client(session);
        } else if let Some(a) = st.agents.remove(session) {
            tracing::info!(%session, workload = %a.info.name, "the agent's connection ended");
        } else {
            return;
        }
        st.changed(&self.inner.generation);
    }
}
