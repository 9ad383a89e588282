//! Assembly of the handler's `docker run` command line for
//! `telepresence intercept --docker-run -- [docker run flags...] IMAGE [cmd...]`.
//!
//! Owns a model of `docker run`'s flag syntax (which options take a value, short-flag
//! groups such as `-it`, `--flag=value`, `-e=value`, `--`), enough to find where IMAGE
//! starts and which settings the user already gave. The handler gets
//! `--network container:<connection>`, `--rm`, `--name intercept-<intercept>-<port>`,
//! `--env-file <file>` and `--label k=v`; wherever the user gave a value of their own, theirs
//! wins and ours is left out.

use std::collections::HashSet;
use std::path::PathBuf;

/// What the handler container gets in addition to the user's arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerOpts {
    /// The daemon container whose network namespace the handler joins (`tp-<connection>`).
    pub connection: String,
    /// The intercept's name.
    pub intercept: String,
    /// The intercept's local port.
    pub port: u16,
    /// The intercepted environment, as a `docker run --env-file` file.
    pub env_file: Option<PathBuf>,
    /// Labels for the handler container (`--label k=v`); a user label with the same key wins.
    pub labels: Vec<(String, String)>,
}

/// The assembled command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    /// The full argv after `docker`: `["run", ...]`.
    pub args: Vec<String>,
    /// The container name (the user's `--name` when given).
    pub name: String,
    /// The image (or `IMAGE` placeholder) as the user wrote it.
    pub image: String,
    /// Things the user overrode that will probably keep the intercept from working
    /// (for example their own `--network`); show these to the user.
    pub warnings: Vec<String>,
    /// Where [`RunArgs::image`] is in [`RunArgs::args`].
    pub image_index: usize,
}

impl RunArgs {
    /// Runs `image` instead of the one given (`--docker-build` replaces the `IMAGE` placeholder).
    pub fn set_image(&mut self, image: &str) {
        self.args[self.image_index] = image.to_string();
        self.image = image.to_string();
    }

    /// Adds flags of ours right after `run`, before the user's (theirs win).
    pub fn add_flags(&mut self, flags: &[&str]) {
        self.args
            .splice(1..1, flags.iter().map(ToString::to_string));
        self.image_index += flags.len();
    }
}

/// Why the user's `docker run` arguments cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerRunError {
    /// No image after the flags.
    #[error("no image given: use `--docker-run -- [docker run flags] IMAGE [command...]`")]
    MissingImage,
    /// A flag that needs a value came last.
    #[error("docker run flag {0} needs a value")]
    MissingValue(String),
    /// `-d`/`--detach`.
    #[error("--docker-run runs the handler in the foreground; remove -d")]
    Detached,
    /// A flag this parser does not know, whose arity is therefore unknown.
    #[error(
        "unknown docker run flag {0}; if it takes a value write it as {0}=VALUE, \
         if it is a switch write {0}=true"
    )]
    UnknownFlag(String),
    /// A flag the engine rejects together with `--network container:…`.
    #[error(
        "docker run flag {flag} cannot be used with --docker-run: the handler shares the \
         network of the daemon container {connection}{hint}"
    )]
    ConflictsWithNetwork {
        /// The flag as the user wrote it.
        flag: String,
        /// The daemon container.
        connection: String,
        /// What to do instead (starts with "; " when present).
        hint: String,
    },
}

/// How an option of `docker run` consumes arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arity {
    /// A switch: `--rm`, `--rm=false`.
    Bool,
    /// Takes a value: `--name x`, `--name=x`.
    Value,
}

/// The options of `docker run` (docker CLI 28 `docker run --help` plus the hidden and
/// Windows-only ones in the reference: `--net`, `--net-alias`, `--cpu-count`, …).
/// `(long, short, arity)`.
const OPTIONS: &[(&str, Option<char>, Arity)] = &[
    ("add-host", None, Arity::Value),
    ("annotation", None, Arity::Value),
    ("attach", Some('a'), Arity::Value),
    ("blkio-weight", None, Arity::Value),
    ("blkio-weight-device", None, Arity::Value),
    ("cap-add", None, Arity::Value),
    ("cap-drop", None, Arity::Value),
    ("cgroup-parent", None, Arity::Value),
    ("cgroupns", None, Arity::Value),
    ("cidfile", None, Arity::Value),
    ("cpu-count", None, Arity::Value),
    ("cpu-percent", None, Arity::Value),
    ("cpu-period", None, Arity::Value),
    ("cpu-quota", None, Arity::Value),
    ("cpu-rt-period", None, Arity::Value),
    ("cpu-rt-runtime", None, Arity::Value),
    ("cpu-shares", Some('c'), Arity::Value),
    ("cpus", None, Arity::Value),
    ("cpuset-cpus", None, Arity::Value),
    ("cpuset-mems", None, Arity::Value),
    ("credentialspec", None, Arity::Value),
    ("detach", Some('d'), Arity::Bool),
    ("detach-keys", None, Arity::Value),
    ("device", None, Arity::Value),
    ("device-cgroup-rule", None, Arity::Value),
    ("device-read-bps", None, Arity::Value),
    ("device-read-iops", None, Arity::Value),
    ("device-write-bps", None, Arity::Value),
    ("device-write-iops", None, Arity::Value),
    ("disable-content-trust", None, Arity::Bool),
    ("dns", None, Arity::Value),
    ("dns-opt", None, Arity::Value),
    ("dns-option", None, Arity::Value),
    ("dns-search", None, Arity::Value),
    ("domainname", None, Arity::Value),
    ("entrypoint", None, Arity::Value),
    ("env", Some('e'), Arity::Value),
    ("env-file", None, Arity::Value),
    ("expose", None, Arity::Value),
    ("gpus", None, Arity::Value),
    ("group-add", None, Arity::Value),
    ("health-cmd", None, Arity::Value),
    ("health-interval", None, Arity::Value),
    ("health-retries", None, Arity::Value),
    ("health-start-interval", None, Arity::Value),
    ("health-start-period", None, Arity::Value),
    ("health-timeout", None, Arity::Value),
    ("help", None, Arity::Bool),
    ("hostname", Some('h'), Arity::Value),
    ("init", None, Arity::Bool),
    ("interactive", Some('i'), Arity::Bool),
    ("io-maxbandwidth", None, Arity::Value),
    ("io-maxiops", None, Arity::Value),
    ("ip", None, Arity::Value),
    ("ip6", None, Arity::Value),
    ("ipc", None, Arity::Value),
    ("isolation", None, Arity::Value),
    ("kernel-memory", None, Arity::Value),
    ("label", Some('l'), Arity::Value),
    ("label-file", None, Arity::Value),
    ("link", None, Arity::Value),
    ("link-local-ip", None, Arity::Value),
    ("log-driver", None, Arity::Value),
    ("log-opt", None, Arity::Value),
    ("mac-address", None, Arity::Value),
    ("memory", Some('m'), Arity::Value),
    ("memory-reservation", None, Arity::Value),
    ("memory-swap", None, Arity::Value),
    ("memory-swappiness", None, Arity::Value),
    ("mount", None, Arity::Value),
    ("name", None, Arity::Value),
    ("net", None, Arity::Value),
    ("net-alias", None, Arity::Value),
    ("network", None, Arity::Value),
    ("network-alias", None, Arity::Value),
    ("no-healthcheck", None, Arity::Bool),
    ("oom-kill-disable", None, Arity::Bool),
    ("oom-score-adj", None, Arity::Value),
    ("pid", None, Arity::Value),
    ("pids-limit", None, Arity::Value),
    ("platform", None, Arity::Value),
    ("privileged", None, Arity::Bool),
    ("publish", Some('p'), Arity::Value),
    ("publish-all", Some('P'), Arity::Bool),
    ("pull", None, Arity::Value),
    ("quiet", Some('q'), Arity::Bool),
    ("read-only", None, Arity::Bool),
    ("restart", None, Arity::Value),
    ("rm", None, Arity::Bool),
    ("runtime", None, Arity::Value),
    ("security-opt", None, Arity::Value),
    ("shm-size", None, Arity::Value),
    ("sig-proxy", None, Arity::Bool),
    ("stop-signal", None, Arity::Value),
    ("stop-timeout", None, Arity::Value),
    ("storage-opt", None, Arity::Value),
    ("sysctl", None, Arity::Value),
    ("tmpfs", None, Arity::Value),
    ("tty", Some('t'), Arity::Bool),
    ("ulimit", None, Arity::Value),
    ("use-api-socket", None, Arity::Bool),
    ("user", Some('u'), Arity::Value),
    ("userns", None, Arity::Value),
    ("uts", None, Arity::Value),
    ("volume", Some('v'), Arity::Value),
    ("volume-driver", None, Arity::Value),
    ("volumes-from", None, Arity::Value),
    ("workdir", Some('w'), Arity::Value),
];

fn by_long(name: &str) -> Option<(&'static str, Arity)> {
    OPTIONS
        .iter()
        .find(|(long, _, _)| *long == name)
        .map(|(long, _, arity)| (*long, *arity))
}

fn by_short(c: char) -> Option<(&'static str, Arity)> {
    OPTIONS
        .iter()
        .find(|(_, short, _)| *short == Some(c))
        .map(|(long, _, arity)| (*long, *arity))
}

/// One option as the user gave it: its canonical long name, what they typed, and the value
/// (for switches: `None` means "true", `Some("false")` etc. when written `--x=false`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Given {
    long: &'static str,
    spelled: String,
    value: Option<String>,
}

impl Given {
    /// For switches: whether it is on.
    fn is_on(&self) -> bool {
        match self.value.as_deref() {
            None => true,
            Some(v) => !matches!(v, "false" | "0" | "f" | "F" | "FALSE" | "False"),
        }
    }
}

/// The user's arguments split into flags (kept verbatim), the options they set, the image and
/// the command.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    flags: Vec<String>,
    given: Vec<Given>,
    image: String,
    command: Vec<String>,
}

fn parse(user_args: &[String]) -> Result<Parsed, DockerRunError> {
    let mut r = FlagReader {
        args: user_args,
        i: 0,
        flags: Vec::new(),
        given: Vec::new(),
    };
    while r.i < user_args.len() {
        let arg = &user_args[r.i];
        r.i += 1;
        if arg == "--" {
            // End of flags; the image follows. It is not kept: we place IMAGE ourselves.
            break;
        }
        if let Some(rest) = arg.strip_prefix("--") {
            r.long(arg, rest)?;
        } else if arg.len() > 1 && arg.starts_with('-') {
            r.short_group(arg)?;
        } else {
            // The first argument that is not a flag is the image.
            r.i -= 1;
            break;
        }
    }
    let i = r.i;
    let image = user_args
        .get(i)
        .cloned()
        .filter(|s| !s.is_empty())
        .ok_or(DockerRunError::MissingImage)?;
    Ok(Parsed {
        flags: r.flags,
        given: r.given,
        image,
        command: user_args[i + 1..].to_vec(),
    })
}

/// Reads the user's flags: `i` is the next argument; every flag argument is kept verbatim in
/// `flags` and what it sets in `given`.
struct FlagReader<'a> {
    args: &'a [String],
    i: usize,
    flags: Vec<String>,
    given: Vec<Given>,
}

impl FlagReader<'_> {
    /// The next argument as the value of flag `spelled` (kept verbatim too).
    fn value_of(&mut self, spelled: &str) -> Result<String, DockerRunError> {
        let v = self
            .args
            .get(self.i)
            .ok_or_else(|| DockerRunError::MissingValue(spelled.to_string()))?
            .clone();
        self.i += 1;
        self.flags.push(v.clone());
        Ok(v)
    }

    /// `--name`, `--name=value` or `--name value` (`rest`: `arg` without its dashes).
    fn long(&mut self, arg: &str, rest: &str) -> Result<(), DockerRunError> {
        let (name, inline) = match rest.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (rest, None),
        };
        let spelled = format!("--{name}");
        let Some((long, arity)) = by_long(name) else {
            if inline.is_some() {
                // Unknown, but self-contained: pass it through.
                self.flags.push(arg.to_string());
                return Ok(());
            }
            return Err(DockerRunError::UnknownFlag(spelled));
        };
        self.flags.push(arg.to_string());
        let value = match (arity, inline) {
            (_, Some(v)) => Some(v),
            (Arity::Bool, None) => None,
            (Arity::Value, None) => Some(self.value_of(&spelled)?),
        };
        self.given.push(Given {
            long,
            spelled,
            value,
        });
        Ok(())
    }

    /// A group of short flags: `-it`, `-e=X`, `-eX`, `-itp8080:80`, `-d=false`.
    fn short_group(&mut self, arg: &str) -> Result<(), DockerRunError> {
        self.flags.push(arg.to_string());
        let chars: Vec<char> = arg[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            let spelled = format!("-{c}");
            let (long, arity) =
                by_short(c).ok_or_else(|| DockerRunError::UnknownFlag(spelled.clone()))?;
            let rest: String = chars[j + 1..].iter().collect();
            let inline = rest.strip_prefix('=').map(str::to_string);
            match arity {
                Arity::Bool => {
                    let done = inline.is_some();
                    self.given.push(Given {
                        long,
                        spelled,
                        value: inline,
                    });
                    if done {
                        break;
                    }
                    j += 1;
                }
                Arity::Value => {
                    let value = if let Some(v) = inline {
                        v
                    } else if !rest.is_empty() {
                        rest
                    } else {
                        self.value_of(&spelled)?
                    };
                    self.given.push(Given {
                        long,
                        spelled,
                        value: Some(value),
                    });
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Flags the engine rejects together with `--network container:…`, and what to do instead.
const NETWORK_CONFLICTS: &[(&str, &str)] = &[
    (
        "publish",
        "; publish ports with `telepresence connect --docker --expose PORT`",
    ),
    (
        "publish-all",
        "; publish ports with `telepresence connect --docker --expose PORT`",
    ),
    ("expose", ""),
    (
        "hostname",
        "; set it with `telepresence connect --docker --hostname NAME`",
    ),
    ("dns", ""),
    ("dns-search", ""),
    ("dns-option", ""),
    ("dns-opt", ""),
    ("add-host", ""),
    ("mac-address", ""),
    ("link", ""),
    ("network-alias", ""),
    ("net-alias", ""),
    ("ip", ""),
    ("ip6", ""),
];

/// The warning for a user's `--network` that is not the connection's.
fn network_replaced(net: &Given, ours_network: &str) -> Option<String> {
    (net.value.as_deref() != Some(ours_network)).then(|| {
        format!(
            "{} {} replaces --network {}: the handler will not receive the intercepted \
             traffic nor reach the cluster",
            net.spelled,
            net.value.as_deref().unwrap_or_default(),
            ours_network
        )
    })
}

/// We join the daemon's network namespace: flags the engine rejects with that mode get a clear
/// error here instead of the engine's.
fn check_network_conflicts(parsed: &Parsed, opts: &HandlerOpts) -> Result<(), DockerRunError> {
    for (long, hint) in NETWORK_CONFLICTS {
        if let Some(g) = parsed.given.iter().find(|g| g.long == *long) {
            if g.long == "publish-all" && !g.is_on() {
                continue;
            }
            return Err(DockerRunError::ConflictsWithNetwork {
                flag: g.spelled.clone(),
                connection: opts.connection.clone(),
                hint: hint.to_string(),
            });
        }
    }
    Ok(())
}

/// `--label k=v` for each of our labels whose key the user does not set.
fn our_labels(parsed: &Parsed, opts: &HandlerOpts) -> Vec<String> {
    let user_label_keys: HashSet<&str> = parsed
        .given
        .iter()
        .filter(|g| g.long == "label")
        .filter_map(|g| g.value.as_deref())
        .map(|v| v.split_once('=').map_or(v, |(k, _)| k))
        .collect();
    let mut added = HashSet::new();
    let mut args = Vec::new();
    for (k, v) in &opts.labels {
        if !user_label_keys.contains(k.as_str()) && added.insert(k.as_str()) {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
    }
    args
}

/// The handler's `docker run` command line: our additions first, then the user's flags
/// verbatim, then IMAGE and the command. Where the user set something we would add, theirs
/// wins and ours is left out.
pub fn assemble(user_args: &[String], opts: &HandlerOpts) -> Result<RunArgs, DockerRunError> {
    let parsed = parse(user_args)?;
    let last = |long: &str| parsed.given.iter().rev().find(|g| g.long == long);

    if let Some(detach) = last("detach") {
        if detach.is_on() {
            return Err(DockerRunError::Detached);
        }
    }

    let mut warnings = Vec::new();
    let network = last("network").or_else(|| last("net"));
    let ours_network = format!("container:{}", opts.connection);
    match network {
        Some(net) => warnings.extend(network_replaced(net, &ours_network)),
        None => check_network_conflicts(&parsed, opts)?,
    }

    let mut args = vec!["run".to_string()];
    if network.is_none() {
        args.push("--network".into());
        args.push(ours_network);
    }
    if last("rm").is_none() {
        args.push("--rm".into());
    }
    let name = match last("name").and_then(|g| g.value.clone()) {
        Some(name) => name,
        None => {
            let name = format!("intercept-{}-{}", opts.intercept, opts.port);
            args.push("--name".into());
            args.push(name.clone());
            name
        }
    };
    if let Some(env_file) = &opts.env_file {
        // Before the user's own env files and -e flags, which take precedence.
        args.push("--env-file".into());
        args.push(env_file.to_string_lossy().into_owned());
    }
    args.extend(our_labels(&parsed, opts));
    args.extend(parsed.flags.iter().cloned());
    let image_index = args.len();
    args.push(parsed.image.clone());
    args.extend(parsed.command.iter().cloned());

    Ok(RunArgs {
        args,
        name,
        image: parsed.image,
        warnings,
        image_index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(args: &[&str]) -> Vec<String> {
        args.iter().map(ToString::to_string).collect()
    }

    fn opts() -> HandlerOpts {
        HandlerOpts {
            connection: "tp-shop-cn".into(),
            intercept: "web".into(),
            port: 9090,
            env_file: Some(PathBuf::from("/tmp/tp-env/web.env")),
            labels: vec![
                ("telepresence.io/managed-by".into(), "telepresence".into()),
                ("telepresence.io/intercept".into(), "web".into()),
            ],
        }
    }

    fn run(args: &[&str]) -> RunArgs {
        assemble(&s(args), &opts()).unwrap()
    }

    fn err(args: &[&str]) -> DockerRunError {
        assemble(&s(args), &opts()).unwrap_err()
    }

    #[test]
    fn plain_image_gets_everything() {
        let r = run(&["my-web:dev", "serve", "9090"]);
        assert_eq!(
            r.args,
            s(&[
                "run",
                "--network",
                "container:tp-shop-cn",
                "--rm",
                "--name",
                "intercept-web-9090",
                "--env-file",
                "/tmp/tp-env/web.env",
                "--label",
                "telepresence.io/managed-by=telepresence",
                "--label",
                "telepresence.io/intercept=web",
                "my-web:dev",
                "serve",
                "9090",
            ])
        );
        assert_eq!(r.name, "intercept-web-9090");
        assert_eq!(r.image, "my-web:dev");
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn no_env_file_no_labels() {
        let o = HandlerOpts {
            connection: "tp-c".into(),
            intercept: "x".into(),
            port: 8080,
            env_file: None,
            labels: vec![],
        };
        let r = assemble(&s(&["img"]), &o).unwrap();
        assert_eq!(
            r.args,
            s(&[
                "run",
                "--network",
                "container:tp-c",
                "--rm",
                "--name",
                "intercept-x-8080",
                "img"
            ])
        );
    }

    #[test]
    fn image_after_value_flags() {
        let r = run(&[
            "-e",
            "A=1",
            "-e=B=2",
            "--env",
            "C=3",
            "--env=D=4",
            "-v",
            "/src:/src",
            "-w",
            "/src",
            "-u",
            "1000:1000",
            "--entrypoint",
            "/bin/sh",
            "--mount",
            "type=tmpfs,dst=/x",
            "--platform",
            "linux/amd64",
            "--cap-add",
            "NET_ADMIN",
            "--env-file",
            "mine.env",
            "image:1",
            "-c",
            "echo hi",
        ]);
        assert_eq!(r.image, "image:1");
        let tail = &r.args[r.args.len() - 3..];
        assert_eq!(tail, s(&["image:1", "-c", "echo hi"]).as_slice());
        // The user's env file comes after ours so that it wins.
        let ours = r
            .args
            .iter()
            .position(|a| a == "/tmp/tp-env/web.env")
            .unwrap();
        let theirs = r.args.iter().position(|a| a == "mine.env").unwrap();
        assert!(ours < theirs);
    }

    #[test]
    fn command_flags_are_not_docker_flags() {
        // `-d` and `--name` after the image belong to the command.
        let r = run(&["img", "-d", "--name", "x", "--network", "host"]);
        assert_eq!(r.image, "img");
        assert_eq!(r.name, "intercept-web-9090");
        assert!(r.args.contains(&"container:tp-shop-cn".to_string()));
        assert!(r
            .args
            .ends_with(&s(&["img", "-d", "--name", "x", "--network", "host"])));
    }

    #[test]
    fn boolean_flags_do_not_eat_the_image() {
        for flag in [
            "-i",
            "-t",
            "--init",
            "--privileged",
            "--read-only",
            "--sig-proxy=false",
            "--no-healthcheck",
            "--oom-kill-disable",
            "-q",
        ] {
            let r = run(&[flag, "img", "arg"]);
            assert_eq!(r.image, "img", "after {flag}");
            assert_eq!(r.args.last().unwrap(), "arg");
        }
    }

    #[test]
    fn short_flag_groups() {
        assert_eq!(run(&["-it", "img"]).image, "img");
        assert_eq!(run(&["-ti", "img", "sh"]).image, "img");
        // A value-taking flag at the end of a group takes the next argument.
        let r = run(&["-ite", "A=1", "img"]);
        assert_eq!(r.image, "img");
        // ... or the rest of the group.
        let r = run(&["-itwsrc", "img"]);
        assert_eq!(r.image, "img");
        let r = run(&["-eFOO=bar", "img"]);
        assert_eq!(r.image, "img");
        assert!(r.args.contains(&"-eFOO=bar".to_string()));
    }

    #[test]
    fn detach_is_refused() {
        for args in [
            &["-d", "img"][..],
            &["--detach", "img"],
            &["-itd", "img"],
            &["-dit", "img"],
            &["--detach=true", "img"],
        ] {
            assert_eq!(err(args), DockerRunError::Detached, "{args:?}");
        }
        assert_eq!(
            DockerRunError::Detached.to_string(),
            "--docker-run runs the handler in the foreground; remove -d"
        );
        // Explicitly not detached is fine.
        assert_eq!(run(&["--detach=false", "img"]).image, "img");
        assert_eq!(run(&["-d=false", "img"]).image, "img");
    }

    #[test]
    fn missing_image() {
        assert_eq!(err(&[]), DockerRunError::MissingImage);
        assert_eq!(err(&["-it", "--rm"]), DockerRunError::MissingImage);
        assert_eq!(err(&["--"]), DockerRunError::MissingImage);
        assert!(DockerRunError::MissingImage.to_string().contains("IMAGE"));
    }

    #[test]
    fn missing_value() {
        assert_eq!(err(&["-e"]), DockerRunError::MissingValue("-e".into()));
        assert_eq!(
            err(&["-it", "--name"]),
            DockerRunError::MissingValue("--name".into())
        );
    }

    #[test]
    fn double_dash_ends_flags() {
        let r = run(&["-e", "A=1", "--", "img", "--rm"]);
        assert_eq!(r.image, "img");
        assert!(r.args.ends_with(&s(&["img", "--rm"])));
        // The `--` itself is not passed on before IMAGE.
        assert!(!r.args.contains(&"--".to_string()));
        // An image that looks like a flag after `--`.
        assert_eq!(run(&["--", "-weird"]).image, "-weird");
    }

    #[test]
    fn user_name_wins() {
        let r = run(&["--name", "mine", "img"]);
        assert_eq!(r.name, "mine");
        assert_eq!(r.args.iter().filter(|a| *a == "--name").count(), 1);
        assert!(!r.args.contains(&"intercept-web-9090".to_string()));

        let r = run(&["--name=other", "img"]);
        assert_eq!(r.name, "other");
        assert!(!r.args.contains(&"--name".to_string()));
    }

    #[test]
    fn user_rm_wins() {
        let r = run(&["--rm", "img"]);
        assert_eq!(r.args.iter().filter(|a| *a == "--rm").count(), 1);
        let r = run(&["--rm=false", "img"]);
        assert!(!r.args.contains(&"--rm".to_string()));
        assert!(r.args.contains(&"--rm=false".to_string()));
    }

    #[test]
    fn user_network_wins_with_a_warning() {
        for args in [
            &["--network", "host", "img"][..],
            &["--network=host", "img"],
            &["--net", "host", "img"],
            &["--net=host", "img"],
        ] {
            let r = run(args);
            assert!(
                !r.args.contains(&"container:tp-shop-cn".to_string()),
                "{args:?}"
            );
            assert_eq!(r.warnings.len(), 1, "{args:?}");
            assert!(r.warnings[0].contains("host"));
        }
        // Giving our own value explicitly is no reason to warn.
        let r = run(&["--network", "container:tp-shop-cn", "img"]);
        assert!(r.warnings.is_empty());
        assert_eq!(
            r.args
                .iter()
                .filter(|a| *a == "container:tp-shop-cn")
                .count(),
            1
        );
    }

    #[test]
    fn flags_conflicting_with_the_shared_network() {
        for (args, flag) in [
            (&["-p", "8080:80", "img"][..], "-p"),
            (&["--publish=8080:80", "img"], "--publish"),
            (&["-itp8080:80", "img"], "-p"),
            (&["-P", "img"], "-P"),
            (&["-h", "box", "img"], "-h"),
            (&["--hostname", "box", "img"], "--hostname"),
            (&["--dns", "1.1.1.1", "img"], "--dns"),
            (&["--add-host", "a:1.2.3.4", "img"], "--add-host"),
            (&["--expose", "80", "img"], "--expose"),
            (&["--link", "db", "img"], "--link"),
        ] {
            match err(args) {
                DockerRunError::ConflictsWithNetwork {
                    flag: f,
                    connection,
                    ..
                } => {
                    assert_eq!(f, flag, "{args:?}");
                    assert_eq!(connection, "tp-shop-cn");
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
        let msg = err(&["-p", "8080:80", "img"]).to_string();
        assert!(msg.contains("--expose"), "{msg}");
        // With their own network the engine may accept these: not our business.
        assert_eq!(
            run(&["--network", "bridge", "-p", "80", "img"]).image,
            "img"
        );
        assert_eq!(run(&["-P=false", "img"]).image, "img");
    }

    #[test]
    fn labels_user_keys_win() {
        let r = run(&["-l", "telepresence.io/intercept=mine", "img"]);
        assert!(!r
            .args
            .contains(&"telepresence.io/intercept=web".to_string()));
        assert!(r
            .args
            .contains(&"telepresence.io/managed-by=telepresence".to_string()));
        let r = run(&["--label=telepresence.io/managed-by", "img"]);
        assert!(!r
            .args
            .contains(&"telepresence.io/managed-by=telepresence".to_string()));
        assert!(r
            .args
            .contains(&"telepresence.io/intercept=web".to_string()));
    }

    #[test]
    fn unknown_flags() {
        assert_eq!(
            err(&["--frobnicate", "img"]),
            DockerRunError::UnknownFlag("--frobnicate".into())
        );
        assert_eq!(
            err(&["-Z", "img"]),
            DockerRunError::UnknownFlag("-Z".into())
        );
        // With an inline value it is self-contained and passed on.
        let r = run(&["--frobnicate=yes", "img"]);
        assert_eq!(r.image, "img");
        assert!(r.args.contains(&"--frobnicate=yes".to_string()));
    }

    #[test]
    fn user_flags_are_kept_in_order_before_the_image() {
        let user = s(&["-it", "-e", "X=1", "--init", "-v", "a:/b", "img", "c"]);
        let r = assemble(&user, &opts()).unwrap();
        let start = r.args.iter().position(|a| a == "-it").unwrap();
        assert_eq!(&r.args[start..], user.as_slice());
    }

    #[test]
    fn every_value_option_consumes_its_value() {
        // For each value-taking long option, `--opt VALUE img` must find img.
        for (long, _, arity) in OPTIONS {
            if *arity != Arity::Value || NETWORK_CONFLICTS.iter().any(|(l, _)| l == long) {
                continue;
            }
            let flag = format!("--{long}");
            let r = assemble(&s(&[&flag, "value-x", "img"]), &opts()).unwrap();
            assert_eq!(r.image, "img", "{flag}");
        }
    }
}
