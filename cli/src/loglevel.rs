//! `telepresence loglevel LEVEL [-d DURATION] [-l] [-r]`: changes the log level of the
//! connection's daemon and (unless `--local-only`) of the traffic-manager and its agents at
//! runtime, back to their start levels after `--duration` (`protocol::loglevel`).

use crate::commands::selected;
use crate::output::CmdOutput;
use crate::rpc::{connector, status_err};
use anyhow::{bail, Result};
use clap::Args;
use docker::engine;
use protocol::connector::LogLevelChange;
use protocol::manager::LogLevel;
use std::time::Duration;

/// `loglevel` arguments.
#[derive(Debug, Args)]
pub struct LoglevelArgs {
    /// trace, debug, info, warning or error.
    #[arg(value_parser = parse_level)]
    pub level: LogLevel,
    /// Go back to the start level after this long (e.g. 30s, 5m); default: until changed again.
    #[arg(short = 'd', long, value_parser = crate::helm::parse_duration)]
    pub duration: Option<Duration>,
    /// Only the daemon of this connection.
    #[arg(short = 'l', long)]
    pub local_only: bool,
    /// Only the traffic-manager and its traffic-agents.
    #[arg(short = 'r', long)]
    pub remote_only: bool,
}

fn parse_level(s: &str) -> Result<LogLevel, String> {
    LogLevel::parse(s)
        .ok_or_else(|| format!("invalid log level {s:?}: use trace, debug, info, warning or error"))
}

/// Runs the command.
pub async fn run(args: LoglevelArgs, use_: Option<&str>) -> Result<CmdOutput> {
    if args.local_only && args.remote_only {
        bail!("--local-only and --remote-only exclude each other: give at most one");
    }
    let duration_ms = args.duration.map_or(Ok(0), |d| {
        u32::try_from(d.as_millis()).map_err(|_| anyhow::anyhow!("--duration is too long"))
    })?;
    let docker = engine::connect().await?;
    let d = selected(&docker, use_, None).await?;
    let mut c = connector(d.port).await?;
    c.set_log_level(LogLevelChange {
        level: args.level as i32,
        duration_ms,
        local_only: args.local_only,
        remote_only: args.remote_only,
    })
    .await
    .map_err(status_err)?;
    Ok(CmdOutput::text(""))
}

#[cfg(test)]
mod tests {
    use crate::args::{Cli, Command};
    use clap::Parser;
    use protocol::manager::LogLevel;

    #[test]
    fn arguments() {
        let cli =
            Cli::try_parse_from(["telepresence", "loglevel", "debug", "-d", "2s", "-r"]).unwrap();
        let Command::Loglevel(a) = cli.command else {
            panic!("not loglevel")
        };
        assert_eq!(a.level, LogLevel::Debug);
        assert_eq!(a.duration, Some(std::time::Duration::from_secs(2)));
        assert!(a.remote_only && !a.local_only);
        let e = Cli::try_parse_from(["telepresence", "loglevel", "loud"]).unwrap_err();
        assert!(e.to_string().contains("use trace, debug"), "{e}");
    }
}
