//! The CLI side of the outbound path: validating `--also-proxy`/`--never-proxy`/
//! `--allow-conflicting-subnets`, what the daemon container gets for DNS (`--dns`, search
//! domains, the upstream resolver), the DNS and Subnets blocks of `status`, and
//! `telepresence docker-run` / `telepresence curl`, which run a container on a connection's
//! network.

use crate::args::ConnectArgs;
use crate::output::kv_block;
use anyhow::{anyhow, bail, Result};
use docker::engine::{self, CONNECTION_LABEL, ROLE_LABEL};
use protocol::connector::{DaemonStatus, OutboundTcp};

/// Where the daemon serves DNS inside its network namespace (what `--dns` names).
pub const DNS_IP: &str = "127.0.0.1";
/// A curl image used by `telepresence curl` when it exists locally.
pub const CURL_IMAGE: &str = "curlimages/curl:latest";

/// Checks the subnet flags; returns the daemon container's environment for them.
pub fn subnet_env(args: &ConnectArgs) -> Result<Vec<String>> {
    let mut env = Vec::new();
    for (flag, key, list) in [
        (
            "--also-proxy",
            protocol::ports::env::ALSO_PROXY,
            &args.also_proxy,
        ),
        (
            "--never-proxy",
            protocol::ports::env::NEVER_PROXY,
            &args.never_proxy,
        ),
        (
            "--allow-conflicting-subnets",
            protocol::ports::env::ALLOW_CONFLICTING_SUBNETS,
            &args.allow_conflicting_subnets,
        ),
    ] {
        let joined = list.join(",");
        daemon_image::subnets::parse_list(&joined).map_err(|e| anyhow!("{flag}: {e}"))?;
        if !joined.is_empty() {
            env.push(format!("{key}={joined}"));
        }
    }
    Ok(env)
}

/// The resolvers a container on the default bridge would have had: the host's nameservers
/// except loopback ones (which mean nothing inside a container), else Docker's fallback.
pub fn upstream_resolvers(resolv_conf: &str) -> Vec<String> {
    let mut out: Vec<String> = protocol::resolv::ResolvConf::parse(resolv_conf)
        .nameservers
        .into_iter()
        .filter(|ip| !ip.is_loopback())
        .map(|ip| ip.to_string())
        .collect();
    if out.is_empty() {
        out = vec!["8.8.8.8".into(), "8.8.4.4".into()];
    }
    out
}

/// DNS settings of the daemon container: (environment, dns servers, search domains).
pub fn dns_settings(namespace: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let host = std::fs::read_to_string(protocol::resolv::PATH).unwrap_or_default();
    let mut env = vec![
        format!("TP_DNS_LISTEN={DNS_IP}:53"),
        format!("TP_DNS_UPSTREAM={}", upstream_resolvers(&host).join(",")),
    ];
    // Tuning knobs of the outbound stack, passed on when set (for benchmarking).
    for k in [
        protocol::ports::env::TUN_MTU,
        protocol::ports::env::TCP_BUFFER,
        protocol::ports::env::STACK_THREAD,
    ] {
        if let Ok(v) = std::env::var(k) {
            env.push(format!("{k}={v}"));
        }
    }
    let search = vec![
        format!("{namespace}.svc.cluster.local"),
        "svc.cluster.local".into(),
        "cluster.local".into(),
    ];
    (env, vec![DNS_IP.into()], search)
}

/// The DNS and Subnets rows of a status block, and the lines under each.
pub fn status_rows(st: &DaemonStatus) -> Vec<(&'static str, Option<String>, String)> {
    let Some(dns) = &st.dns else {
        return Vec::new();
    };
    let list = |v: &[String]| format!("[{}]", v.join(" "));
    let dns_block = kv_block(
        "    ",
        &[
            ("Remote IP", Some(dns.remote_ip.clone())),
            ("Exclude suffixes", Some(list(&dns.exclude_suffixes))),
            ("Include suffixes", Some(list(&dns.include_suffixes))),
            ("Timeout", Some(format!("{}s", dns.timeout_seconds))),
        ],
    );
    let subnets: String = st.subnets.iter().map(|s| format!("    - {s}\n")).collect();
    vec![
        ("DNS", None, dns_block),
        (
            "Subnets",
            Some(format!(
                "({} subnet{})",
                st.subnets.len(),
                if st.subnets.len() == 1 { "" } else { "s" }
            )),
            subnets,
        ),
        (
            "Outbound TCP",
            match st.outbound_tcp() {
                OutboundTcp::Kernel => Some(match st.kernel_forwards {
                    0 => "kernel (nf_tables redirect)".into(),
                    n => format!(
                        "kernel (nf_tables redirect; {n} destination{} forwarded in the kernel through the manager)",
                        if n == 1 { "" } else { "s" }
                    ),
                }),
                OutboundTcp::Userspace => Some("userspace stack (nf_tables unavailable)".into()),
                OutboundTcp::Unspecified => Some("none (no subnet routed)".into()),
            },
            String::new(),
        ),
    ]
}

/// Puts `lines` right after the line of `block` that starts with `prefix`.
pub fn insert_after(block: &str, prefix: &str, lines: &str) -> String {
    let mut out = String::with_capacity(block.len() + lines.len());
    for l in block.lines() {
        out.push_str(l);
        out.push('\n');
        if l.starts_with(prefix) {
            out.push_str(lines);
        }
    }
    out
}

/// `docker run` arguments that would take the container off the connection's network.
fn check_user_args(args: &[String]) -> Result<()> {
    for a in args {
        if a == "--" || !a.starts_with('-') {
            break;
        }
        let flag = a.split('=').next().unwrap_or(a);
        if matches!(flag, "--network" | "--net") {
            bail!("docker-run joins the connection's network itself (--network container:tp-<connection>); remove {flag}");
        }
    }
    Ok(())
}

/// `telepresence docker-run ARGS` (`curl` = false) or `telepresence curl ARGS`: runs the
/// container on the selected connection's network with the docker CLI, attached to this
/// terminal; returns its exit code.
pub async fn run_on_connection(args: &[String], curl: bool, use_: Option<&str>) -> i32 {
    match prepare(args, curl, use_).await {
        Ok(argv) => match std::process::Command::new("docker").args(&argv).status() {
            Ok(s) => s.code().unwrap_or(1),
            Err(e) => {
                eprintln!("telepresence: cannot run docker: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!(
                "telepresence {}: error: {e:#}",
                if curl { "curl" } else { "docker-run" }
            );
            1
        }
    }
}

async fn prepare(args: &[String], curl: bool, use_: Option<&str>) -> Result<Vec<String>> {
    if !curl {
        if args.is_empty() {
            bail!("say what to run: telepresence docker-run [docker run flags] IMAGE [command...]");
        }
        check_user_args(args)?;
    }
    let docker = engine::connect().await?;
    let all = crate::commands::live_daemons(&docker).await;
    let d = crate::info::select(&all, use_, None)?.clone();
    let mut argv = vec![
        "run".to_string(),
        "--network".into(),
        format!("container:{}", d.container),
        "--label".into(),
        format!("{ROLE_LABEL}=handler"),
        "--label".into(),
        format!("{CONNECTION_LABEL}={}", d.name),
    ];
    if curl {
        argv.push("--rm".into());
        if docker.inspect_image(CURL_IMAGE).await.is_ok() {
            argv.push(CURL_IMAGE.into());
        } else {
            let exe = std::env::current_exe()?;
            let image = docker::image::ensure_image(
                &docker,
                crate::connect::IMAGE_REPO,
                &exe,
                &mut |l: &str| eprintln!("{l}"),
            )
            .await?;
            argv.push(image);
            argv.push("curl-client".into());
        }
        argv.extend(args.iter().cloned());
    } else {
        argv.extend(args.iter().cloned());
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_skips_loopback() {
        assert_eq!(
            upstream_resolvers("nameserver 127.0.0.53\nnameserver 10.1.2.3\nsearch x\n"),
            vec!["10.1.2.3"]
        );
        assert_eq!(
            upstream_resolvers("nameserver 127.0.0.53\n"),
            vec!["8.8.8.8", "8.8.4.4"]
        );
    }

    #[test]
    fn subnet_flags_are_checked() {
        let mut a = ConnectArgs {
            also_proxy: vec!["10.0.0.0/8".into()],
            ..Default::default()
        };
        assert_eq!(subnet_env(&a).unwrap(), vec!["TP_ALSO_PROXY=10.0.0.0/8"]);
        a.never_proxy = vec!["nope".into()];
        let e = subnet_env(&a).unwrap_err().to_string();
        assert!(
            e.starts_with("--never-proxy: invalid subnet \"nope\""),
            "{e}"
        );
    }

    #[test]
    fn status_blocks() {
        let st = DaemonStatus {
            subnets: vec!["172.20.0.0/16".into()],
            dns: Some(protocol::connector::DnsStatus {
                remote_ip: "10.0.0.2".into(),
                exclude_suffixes: vec![".com".into(), ".io".into()],
                timeout_seconds: 4,
                ..Default::default()
            }),
            ..Default::default()
        };
        let rows = status_rows(&st);
        assert_eq!(rows[0].0, "DNS");
        assert!(
            rows[0].2.contains("    Exclude suffixes: [.com .io]\n"),
            "{}",
            rows[0].2
        );
        assert!(rows[0].2.contains("    Timeout         : 4s\n"));
        assert_eq!(rows[1].1.as_deref(), Some("(1 subnet)"));
        assert_eq!(rows[1].2, "    - 172.20.0.0/16\n");
        assert_eq!(insert_after("a\nb\nc\n", "b", "x\n"), "a\nb\nx\nc\n");
    }

    #[test]
    fn docker_run_keeps_its_network() {
        assert!(check_user_args(&["--network=host".into(), "img".into()]).is_err());
        assert!(check_user_args(&["--rm".into(), "img".into(), "--network".into()]).is_ok());
    }
}
