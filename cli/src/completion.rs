//! `telepresence completion bash|zsh|fish|powershell`: the shell completion script of the user
//! commands (the hidden role subcommands of the multi-call binary are left out).

use crate::args::{Cli, Shell};
use clap::CommandFactory;

/// The command tree users complete: [`Cli`] without its hidden subcommands (daemon-foreground,
/// traffic-manager, agent, …), at every level.
pub fn visible_command() -> clap::Command {
    without_hidden(Cli::command())
}

fn without_hidden(full: clap::Command) -> clap::Command {
    if !full.has_subcommands() {
        return full;
    }
    // clap cannot remove a subcommand: rebuild the command from what completion uses (name,
    // about, version, arguments) and its visible subcommands.
    let mut cmd = clap::Command::new(full.get_name().to_string())
        .subcommand_required(full.is_subcommand_required_set());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    if let Some(v) = full.get_version() {
        cmd = cmd.version(v.to_string());
    }
    for a in full.get_arguments() {
        cmd = cmd.arg(a.clone());
    }
    for s in full.get_subcommands().filter(|s| !s.is_hide_set()) {
        cmd = cmd.subcommand(without_hidden(s.clone()));
    }
    cmd
}

/// The completion script for `shell`.
pub fn script(shell: Shell) -> String {
    let mut cmd = visible_command();
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    match shell {
        Shell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, &mut out);
        }
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, &mut out),
        Shell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, &mut out);
        }
        Shell::Powershell => {
            clap_complete::generate(clap_complete::Shell::PowerShell, &mut cmd, name, &mut out);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of hidden subcommands that appear in no visible command's description.
    const HIDDEN: [&str; 5] = [
        "daemon-foreground",
        "agent-cleanup",
        "agent-init",
        "fs-sync",
        "curl-client",
    ];

    #[test]
    fn visible_command_has_no_hidden_subcommand() {
        let cmd = visible_command();
        let names: Vec<&str> = cmd.get_subcommands().map(clap::Command::get_name).collect();
        for hidden in [
            "daemon-foreground",
            "traffic-manager",
            "agent",
            "fs-sync",
            "curl-client",
        ] {
            assert!(!names.contains(&hidden), "{hidden} in {names:?}");
        }
        for shown in [
            "connect",
            "intercept",
            "completion",
            "config",
            "gather-logs",
            "helm",
        ] {
            assert!(names.contains(&shown), "{shown} missing from {names:?}");
        }
        // Nested commands keep their own subcommands and arguments.
        let helm = cmd.find_subcommand("helm").expect("helm");
        assert!(helm.get_subcommands().any(|s| s.get_name() == "install"));
        let gl = cmd.find_subcommand("gather-logs").expect("gather-logs");
        assert!(gl
            .get_arguments()
            .any(|a| a.get_long() == Some("anonymize")));
        assert!(cmd.get_arguments().any(|a| a.get_long() == Some("output")));
    }

    #[test]
    fn scripts_complete_user_commands_only() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish, Shell::Powershell] {
            let s = script(shell);
            assert!(s.contains("gather-logs"), "{shell:?}");
            assert!(s.contains("intercept"), "{shell:?}");
            for hidden in HIDDEN {
                assert!(!s.contains(hidden), "{shell:?} completes {hidden}");
            }
        }
        let bash = script(Shell::Bash);
        assert!(bash.contains("telepresence,gather-logs)"), "{bash}");
        assert!(!bash.contains("telepresence,traffic-manager)"));
        assert!(!bash.contains("telepresence,agent)"));
        let fish = script(Shell::Fish);
        assert!(!fish.contains("-a \"traffic-manager\""));
        assert!(!fish.contains("-a \"agent\""));
    }
}
