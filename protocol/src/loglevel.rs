//! Changing a running process's log level (`telepresence loglevel`): the levels' text
//! ([`LogLevel`], `trace debug info warning error`), and the one hook per process that applies
//! a level to its log filter — installed by the binary's log setup (cli/src/main.rs) — with the
//! return to the start level after a duration. The daemon, the manager and the agents all call
//! [`set`]; the messages it logs make a change visible in each role's log.

use crate::manager::LogLevel;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Applies a level to the process's log filter; `None` = back to the start filter.
pub type Hook = Box<dyn Fn(Option<LogLevel>) -> Result<(), String> + Send + Sync>;

static HOOK: OnceLock<Hook> = OnceLock::new();
/// Bumped by every [`set`], so a pending return to the start level does not undo a later change.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// What [`set`] logs at debug level once a level is applied: seen only while debug is on.
pub const DEBUG_ON_LINE: &str = "debug logging is on";
/// What [`set`] logs at debug level after going back to the start level: seen only when the
/// start level itself shows debug lines.
pub const DEBUG_AFTER_REVERT_LINE: &str = "debug logging is still on after the return";
/// What [`set`] logs at info level after going back to the start level.
pub const REVERTED_LINE: &str = "log level back to the start level";

/// Why a level could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogLevelError {
    /// No hook was installed (a process without a reloadable log filter).
    #[error("this process's log level cannot be changed at runtime")]
    NoHook,
    /// The hook failed.
    #[error("cannot change the log level: {0}")]
    Apply(String),
}

impl LogLevel {
    /// The text users give and see: `trace`, `debug`, `info`, `warning`, `error`; empty when
    /// unspecified.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Unspecified => "",
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        }
    }

    /// The level [`Self::as_str`] prints as `text` (`warn` is accepted for `warning`).
    pub fn parse(text: &str) -> Option<LogLevel> {
        let t = text.to_ascii_lowercase();
        [
            LogLevel::Trace,
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warning,
            LogLevel::Error,
        ]
        .into_iter()
        .find(|l| l.as_str() == t || (t == "warn" && *l == LogLevel::Warning))
    }

    /// The `tracing` filter directive of the level (`warning` is `warn`); `None` when
    /// unspecified.
    pub fn directive(self) -> Option<&'static str> {
        match self {
            LogLevel::Unspecified => None,
            LogLevel::Warning => Some("warn"),
            other => Some(other.as_str()),
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Installs the process's hook (the first one wins).
pub fn install(hook: Hook) {
    let _ = HOOK.set(hook);
}

fn apply(level: Option<LogLevel>) -> Result<(), LogLevelError> {
    let hook = HOOK.get().ok_or(LogLevelError::NoHook)?;
    hook(level).map_err(LogLevelError::Apply)
}

fn back_to_start() -> Result<(), LogLevelError> {
    apply(None)?;
    tracing::info!("{REVERTED_LINE}");
    tracing::debug!("{DEBUG_AFTER_REVERT_LINE}");
    Ok(())
}

/// Sets the level ([`LogLevel::Unspecified`]: back to the start level); with `duration`, goes
/// back to the start level after it unless another `set` came meanwhile (needs a tokio runtime).
pub fn set(level: LogLevel, duration: Option<Duration>) -> Result<(), LogLevelError> {
    let epoch = EPOCH.fetch_add(1, Ordering::SeqCst) + 1;
    if level == LogLevel::Unspecified {
        return back_to_start();
    }
    apply(Some(level))?;
    match duration {
        Some(d) => tracing::info!("log level set to {level} for {d:?}"),
        None => tracing::info!("log level set to {level}"),
    }
    tracing::debug!("{DEBUG_ON_LINE}");
    if let Some(d) = duration {
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            if EPOCH.load(Ordering::SeqCst) == epoch {
                if let Err(e) = back_to_start() {
                    tracing::warn!("{e}");
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_keep_their_text() {
        for (l, t, d) in [
            (LogLevel::Trace, "trace", "trace"),
            (LogLevel::Debug, "debug", "debug"),
            (LogLevel::Info, "info", "info"),
            (LogLevel::Warning, "warning", "warn"),
            (LogLevel::Error, "error", "error"),
        ] {
            assert_eq!(l.to_string(), t);
            assert_eq!(LogLevel::parse(t), Some(l));
            assert_eq!(l.directive(), Some(d));
        }
        assert_eq!(LogLevel::parse("WARN"), Some(LogLevel::Warning));
        assert_eq!(LogLevel::parse("verbose"), None);
        assert_eq!(LogLevel::Unspecified.directive(), None);
    }

    #[tokio::test]
    async fn a_level_goes_back_after_its_duration_unless_changed_again() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        install(Box::new(move |l| {
            s.lock().unwrap().push(l);
            Ok(())
        }));
        set(LogLevel::Debug, Some(Duration::from_millis(20))).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(*seen.lock().unwrap(), [Some(LogLevel::Debug), None]);
        // A later change cancels the pending return.
        set(LogLevel::Trace, Some(Duration::from_millis(20))).unwrap();
        set(LogLevel::Error, None).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            seen.lock().unwrap()[2..],
            [Some(LogLevel::Trace), Some(LogLevel::Error)]
        );
    }
}
