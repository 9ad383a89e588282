//! `telepresence loglevel` at the manager: the manager's own level changes at once
//! (`protocol::loglevel::set`), the agents' level travels in their intercept snapshots
//! (`InterceptSnapshot.agent_log_level`, applied by agent/src/session.rs), and both go back to
//! their start levels after the requested duration.

use crate::Manager;
use protocol::manager::{LogLevel, LogLevelRequest};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Status;

impl Manager {
    /// The level agents are asked to run at (unspecified = their start level).
    pub fn agent_log_level(&self) -> LogLevel {
        LogLevel::try_from(self.inner.agent_log_level.load(Ordering::SeqCst))
            .unwrap_or(LogLevel::Unspecified)
    }

    /// Asks every agent to run at `level` (their snapshots carry it).
    async fn set_agent_log_level(&self, level: LogLevel) {
        self.inner
            .agent_log_level
            .store(level as i32, Ordering::SeqCst);
        self.inner
            .state
            .lock()
            .await
            .changed(&self.inner.generation);
    }
}

/// Applies a `SetLogLevel` request to the manager and its agents.
pub async fn set(mgr: &Manager, req: &LogLevelRequest) -> Result<(), Status> {
    let level = req.level();
    let duration = (req.duration_ms > 0).then(|| Duration::from_millis(u64::from(req.duration_ms)));
    protocol::loglevel::set(level, duration)
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    let epoch = mgr.inner.log_epoch.fetch_add(1, Ordering::SeqCst) + 1;
    mgr.set_agent_log_level(level).await;
    if let Some(d) = duration {
        let mgr = mgr.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            if mgr.inner.log_epoch.load(Ordering::SeqCst) == epoch {
                mgr.set_agent_log_level(LogLevel::Unspecified).await;
            }
        });
    }
    Ok(())
}
