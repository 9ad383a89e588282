//! The intercepted-environment writer behind `telepresence intercept --env-file FILE
//! --env-syntax S` and `--env-json FILE`: renders a set of variables in one of ten syntaxes and
//! writes it atomically with mode 0600.
//!
//! Every syntax is written so that its own reader gets back exactly the values given, or the
//! variable is refused with an error that names it. The rules, per syntax:
//!
//! | syntax | line | names accepted | values |
//! |---|---|---|---|
//! | `docker` | `K=V` | no whitespace, no leading `#`, no U+FEFF | literal (docker's `--env-file` has no quoting or escapes); a value with `\n` or `\r` is refused, and so is a line over 65,535 bytes (the docker CLI's line limit) |
//! | `compose` | `K=V` / `K="…"` | `[A-Za-z_][A-Za-z0-9_.]*` | bare when only `[A-Za-z0-9_./:@%+,=-]`, else double-quoted with `\\ \" \$` and `\n` escaped; tab and CR are written raw inside the quotes (dotenvy 0.15 has no `\t`/`\r` escapes) |
//! | `sh`, `sh:export` | `K=…`, `export K=…` | `[A-Za-z_][A-Za-z0-9_]*` | bare when safe, else single-quoted, `'` written as `'\''` |
//! | `csh`, `csh:export` | `set K=…`, `setenv K …` | `[A-Za-z_][A-Za-z0-9_]*` | bare when only `[A-Za-z0-9_./-]`, else single-quoted; `'` as `'\''`, `!` as `\!` (history), newline as `\`+newline, `\` as `'\\'` (outside the quotes, so it cannot pair with a following `!` or newline) |
//! | `cmd` | `set K=V` (CRLF) | `[A-Za-z_][A-Za-z0-9_.-]*` | `%` as `%%` (batch-file semantics); outside `"…"` runs, `^ & \| < > ( )` get a `^`; `\n`/`\r` refused; assumes delayed expansion is off (the default), so `!` is literal |
//! | `ps` | `$Env:K='…'` | `[A-Za-z_][A-Za-z0-9_]*` | single-quoted; `'` and the typographic quotes `‘ ’ ‚ ‛` (which PowerShell also ends strings with) doubled; newlines kept inside the quotes |
//! | `ps:export` | `[Environment]::SetEnvironmentVariable('K', '…', 'User')` | `[A-Za-z_][A-Za-z0-9_.-]*` | as `ps` |
//! | `json` | a pretty JSON object | any | any |
//!
//! In every syntax a name must be non-empty without `=`, and neither names nor values may hold
//! NUL — no environment can. Windows cannot hold an empty variable: under `cmd`, `ps` and
//! `ps:export` an empty value unsets the variable. Keys are always written sorted.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// An `--env-syntax` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum EnvSyntax {
    /// `K=V`, read literally by `docker run --env-file`.
    #[value(name = "docker")]
    Docker,
    /// `K=V` with dotenv quoting, for compose `env_file:` and dotenv readers.
    #[value(name = "compose")]
    Compose,
    /// `K='v'` for POSIX shells.
    #[value(name = "sh")]
    Sh,
    /// `export K='v'` for POSIX shells.
    #[value(name = "sh:export")]
    ShExport,
    /// `set K='v'` for csh/tcsh.
    #[value(name = "csh")]
    Csh,
    /// `setenv K 'v'` for csh/tcsh.
    #[value(name = "csh:export")]
    CshExport,
    /// `set K=V` for a Windows batch file.
    #[value(name = "cmd")]
    Cmd,
    /// `$Env:K='v'` for PowerShell.
    #[value(name = "ps")]
    Ps,
    /// `[Environment]::SetEnvironmentVariable('K', 'v', 'User')` for PowerShell.
    #[value(name = "ps:export")]
    PsExport,
    /// A JSON object.
    #[value(name = "json")]
    Json,
}

impl EnvSyntax {
    /// Every syntax, in the order the CLI reference lists them.
    pub const ALL: [EnvSyntax; 10] = [
        EnvSyntax::Docker,
        EnvSyntax::Compose,
        EnvSyntax::Sh,
        EnvSyntax::ShExport,
        EnvSyntax::Csh,
        EnvSyntax::CshExport,
        EnvSyntax::Cmd,
        EnvSyntax::Ps,
        EnvSyntax::PsExport,
        EnvSyntax::Json,
    ];

    /// The name used on the command line (`sh:export`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EnvSyntax::Docker => "docker",
            EnvSyntax::Compose => "compose",
            EnvSyntax::Sh => "sh",
            EnvSyntax::ShExport => "sh:export",
            EnvSyntax::Csh => "csh",
            EnvSyntax::CshExport => "csh:export",
            EnvSyntax::Cmd => "cmd",
            EnvSyntax::Ps => "ps",
            EnvSyntax::PsExport => "ps:export",
            EnvSyntax::Json => "json",
        }
    }
}

impl fmt::Display for EnvSyntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EnvSyntax {
    type Err = EnvFileError;

    /// Accepts exactly the command-line names (case-sensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EnvSyntax::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| EnvFileError::UnknownSyntax(s.to_string()))
    }
}

/// Why an environment could not be rendered or written.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error(
        "unknown --env-syntax {0:?}; use one of docker, compose, sh, sh:export, csh, csh:export, cmd, ps, ps:export, json"
    )]
    UnknownSyntax(String),
    #[error(
        "environment variable name {key:?} cannot be written with --env-syntax {syntax}: {reason}"
    )]
    InvalidKey {
        key: String,
        syntax: EnvSyntax,
        reason: String,
    },
    #[error("environment variable {key} cannot be written with --env-syntax {syntax}: {reason}")]
    InvalidValue {
        key: String,
        syntax: EnvSyntax,
        reason: String,
    },
    #[error("writing {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("encoding the environment as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The longest line (without its newline) the docker CLI's `--env-file` reader accepts: it
/// scans with Go's `bufio.Scanner`, whose token limit is 64 KiB including the newline
/// (measured with docker CLI 28: 65,535 bytes read, 65,536 fail with "token too long").
pub const DOCKER_MAX_LINE: usize = 65_535;

/// Renders `env` in `syntax`, keys sorted, one variable per line (`json`: one pretty object),
/// ending with a newline. Fails on the first variable the syntax cannot represent exactly.
pub fn render(env: &BTreeMap<String, String>, syntax: EnvSyntax) -> Result<String, EnvFileError> {
    if syntax == EnvSyntax::Json {
        for (k, v) in env {
            check_common(k, v, syntax)?;
        }
        let mut out = serde_json::to_string_pretty(env)?;
        out.push('\n');
        return Ok(out);
    }
    let eol = if syntax == EnvSyntax::Cmd {
        "\r\n"
    } else {
        "\n"
    };
    let mut out = String::new();
    for (k, v) in env {
        out.push_str(&line(k, v, syntax)?);
        out.push_str(eol);
    }
    Ok(out)
}

/// Whether one variable can be written in `syntax`: the error `render` would give for it.
/// Lets a caller route the variables a syntax cannot hold another way (for example multi-line
/// or over-long values past a docker env file).
pub fn check(key: &str, value: &str, syntax: EnvSyntax) -> Result<(), EnvFileError> {
    if syntax == EnvSyntax::Json {
        check_common(key, value, syntax)
    } else {
        line(key, value, syntax).map(|_| ())
    }
}

/// Renders `env` (see [`render`]) and writes it to `path` atomically: a temporary file with
/// mode 0600 in the same directory, synced, then renamed over `path`. The result has mode 0600
/// whatever the old file had; on any error the old file is left as it was.
pub fn write_file(
    path: &Path,
    env: &BTreeMap<String, String>,
    syntax: EnvSyntax,
) -> Result<(), EnvFileError> {
    let text = render(env, syntax)?;
    write_atomic(path, text.as_bytes()).map_err(|source| EnvFileError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path does not name a file",
        ));
    }
    let dir = dir_of(path);
    let mut attempt = 0;
    let (tmp, mut file) = loop {
        let tmp = dir.join(format!(
            ".tp-envfile-{}-{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let result = (|| {
        // The umask can only clear bits, but be explicit: exactly 0600.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename durable; a failure here does not undo a complete write.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The directory `path` is in (`.` for a bare file name): where the temporary file goes, so
/// that the rename stays within one file system.
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// One line (no line ending) for `key=value` in a line-based syntax.
fn line(key: &str, value: &str, syntax: EnvSyntax) -> Result<String, EnvFileError> {
    check_common(key, value, syntax)?;
    if let Some(reason) = key_problem(key, syntax) {
        return Err(EnvFileError::InvalidKey {
            key: key.to_string(),
            syntax,
            reason: reason.to_string(),
        });
    }
    if let Some(reason) = value_problem(key, value, syntax) {
        return Err(EnvFileError::InvalidValue {
            key: key.to_string(),
            syntax,
            reason,
        });
    }
    Ok(format_line(key, value, syntax))
}

/// Why `syntax` cannot hold the name `key`, if it cannot.
fn key_problem(key: &str, syntax: EnvSyntax) -> Option<&'static str> {
    let ident = |extra: &[char], rule: &'static str| (!is_ident(key, extra)).then_some(rule);
    match syntax {
        EnvSyntax::Docker => {
            if key.chars().any(char::is_whitespace) {
                Some("docker's --env-file cannot hold a name with whitespace")
            } else if key.starts_with('#') {
                Some("docker's --env-file reads a line starting with '#' as a comment")
            } else if key.contains('\u{feff}') {
                Some("docker's --env-file strips a byte-order mark (U+FEFF)")
            } else {
                None
            }
        }
        EnvSyntax::Compose => ident(
            &['.'],
            "compose (dotenv) names must match [A-Za-z_][A-Za-z0-9_.]*",
        ),
        EnvSyntax::Sh | EnvSyntax::ShExport => ident(
            &[],
            "shell variable names must match [A-Za-z_][A-Za-z0-9_]*",
        ),
        EnvSyntax::Csh | EnvSyntax::CshExport => {
            ident(&[], "csh variable names must match [A-Za-z_][A-Za-z0-9_]*")
        }
        EnvSyntax::Cmd => ident(
            &['.', '-'],
            "cmd variable names must match [A-Za-z_][A-Za-z0-9_.-]*",
        ),
        EnvSyntax::Ps => ident(
            &[],
            "PowerShell $Env: names must match [A-Za-z_][A-Za-z0-9_]*",
        ),
        EnvSyntax::PsExport => ident(
            &['.', '-'],
            "ps:export names must match [A-Za-z_][A-Za-z0-9_.-]*",
        ),
        EnvSyntax::Json => unreachable!("json is not line-based"),
    }
}

/// Why `syntax` cannot hold `key`'s value, if it cannot.
fn value_problem(key: &str, value: &str, syntax: EnvSyntax) -> Option<String> {
    match syntax {
        EnvSyntax::Docker => {
            if value.contains(['\n', '\r']) {
                return Some(format!(
                    "its value contains a {}, and docker's --env-file reads values literally, one per line; use another --env-syntax (e.g. compose or json)",
                    if value.contains('\n') { "newline" } else { "carriage return" }
                ));
            }
            let len = key.len() + 1 + value.len();
            (len > DOCKER_MAX_LINE).then(|| format!(
                "its line would be {len} bytes and docker's --env-file reader stops at {DOCKER_MAX_LINE}; use another --env-syntax (e.g. compose or json)"
            ))
        }
        EnvSyntax::Cmd => value.contains(['\n', '\r']).then(|| {
            "its value contains a line break, which a cmd `set` line cannot hold; use another --env-syntax (e.g. ps or json)".into()
        }),
        _ => None,
    }
}

/// The line, once `key` and `value` are known to fit `syntax`.
fn format_line(key: &str, value: &str, syntax: EnvSyntax) -> String {
    match syntax {
        EnvSyntax::Docker => format!("{key}={value}"),
        EnvSyntax::Compose => format!("{key}={}", compose_quote(value)),
        EnvSyntax::Sh => format!("{key}={}", sh_quote(value)),
        EnvSyntax::ShExport => format!("export {key}={}", sh_quote(value)),
        EnvSyntax::Csh => format!("set {key}={}", csh_quote(value)),
        EnvSyntax::CshExport => format!("setenv {key} {}", csh_quote(value)),
        EnvSyntax::Cmd => format!("set {key}={}", cmd_escape(value)),
        EnvSyntax::Ps => format!("$Env:{key}={}", ps_quote(value)),
        EnvSyntax::PsExport => format!(
            "[Environment]::SetEnvironmentVariable({}, {}, 'User')",
            ps_quote(key),
            ps_quote(value)
        ),
        EnvSyntax::Json => unreachable!("json is not line-based"),
    }
}

/// Rules no environment can break, whatever the syntax.
fn check_common(key: &str, value: &str, syntax: EnvSyntax) -> Result<(), EnvFileError> {
    let reason = if key.is_empty() {
        "the name is empty"
    } else if key.contains('=') {
        "a name cannot contain '='"
    } else if key.contains('\0') {
        "a name cannot contain NUL"
    } else {
        if value.contains('\0') {
            return Err(EnvFileError::InvalidValue {
                key: key.to_string(),
                syntax,
                reason: "its value contains NUL, which no environment can hold".into(),
            });
        }
        return Ok(());
    };
    Err(EnvFileError::InvalidKey {
        key: key.to_string(),
        syntax,
        reason: reason.into(),
    })
}

/// `[A-Za-z_][A-Za-z0-9_<extra>]*`.
fn is_ident(key: &str, extra: &[char]) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
}

fn all_of(value: &str, extra: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// dotenv: bare when safe; else `"…"` with `\\ \" \$ \n` (the escapes dotenvy 0.15 knows).
fn compose_quote(value: &str) -> String {
    if all_of(value, "_./:@%+,=-") {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// POSIX shell: bare when safe; else `'…'` with `'` as `'\''`.
fn sh_quote(value: &str) -> String {
    if all_of(value, "_./:@%+,=-") {
        return value.to_string();
    }
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// csh/tcsh: bare when safe; else single quotes, with `!` → `\!`, newline → `\`+newline, `'`
/// → `'\''` and `\` → `'\\'` (outside the quotes, so it never pairs with what follows).
fn csh_quote(value: &str) -> String {
    if all_of(value, "_./-") && !value.starts_with('-') {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str(r"'\''"),
            '\\' => out.push_str(r"'\\'"),
            '!' => out.push_str(r"\!"),
            '\n' => out.push_str("\\\n"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// cmd batch `set K=V`: `%` → `%%`; outside double-quoted runs (cmd toggles its quote state at
/// every `"`), `^ & | < > ( )` get a `^`. Inside a quoted run a caret would be kept literally.
fn cmd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                out.push(c);
            }
            '%' => out.push_str("%%"),
            '^' | '&' | '|' | '<' | '>' | '(' | ')' if !quoted => {
                out.push('^');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// PowerShell single-quoted string: every quote character PowerShell accepts (`'` and the
/// typographic `‘ ’ ‚ ‛`) doubled; nothing else is special.
fn ps_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    //! Round trips through each syntax's own reader: dotenvy for compose, the docker CLI (and
    //! a port of its parser) for docker, real `sh`/`bash`/`csh`/`tcsh` where installed, serde
    //! for json; exact expected text for cmd and PowerShell, which have no interpreter here.

    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Values that break naive quoting in at least one syntax.
    fn hostile() -> BTreeMap<String, String> {
        map(&[
            ("SQ", "it's a 'quoted' value"),
            ("DQ", r#"say "hi" and \"escaped\""#),
            ("DOLLAR", "$HOME ${HOME} $(id) $$ $1 $"),
            ("BACKTICK", "`id` and \\`x\\`"),
            ("BACKSLASH", r"C:\path\to\ and \\server\share\n\t"),
            ("BS_END", "ends with a backslash\\"),
            ("BS_BANG", "\\!"),
            ("BS_QUOTE", "\\'"),
            ("BANG", "hello! !! !$ !-1 !x"),
            ("HIST", "^a^b"),
            ("NEWLINE", "line1\nline2\n"),
            ("NL_FIRST", "\nstarts with a newline"),
            ("NL_HIST", "a\n^a^b\n!!\\\nz"),
            ("CRLF", "a\r\nb\r\n"),
            ("CR", "a\rb\r"),
            ("TAB", "a\tb\t"),
            ("UNICODE", "héllo wörld 日本語 🚀 👨‍👩‍👧 ﬁ"),
            ("RTL", "שלום עולם مرحبا \u{200f}\u{202e}x\u{2066}"),
            ("TYPO_QUOTES", "‘single’ “double” ‚low‛"),
            ("BOM", "\u{feff}bom"),
            ("LINE_SEP", "a\u{2028}b\u{85}c"),
            ("EQ", "a=b=c=="),
            ("EMPTY", ""),
            ("SPACES", "  leading and trailing  "),
            ("ONE_SPACE", " "),
            ("HASH", "# not a comment #"),
            ("HASH_AFTER", "value #comment"),
            ("GLOB", "* ? [a-z] {a,b} ~ ~root a:~/b"),
            ("OPERATORS", "a; b && c || d | e > f < g & (h)"),
            ("PERCENT", "%PATH% 100% %%"),
            ("CARET", "^ ^^ ^& ^"),
            ("DASH", "-n"),
            ("DASHES", "--"),
            ("ONLY_SQ", "'"),
            ("ONLY_DQ", "\""),
            ("MIXED", "'\"'\"'\\\"\\\\$`!#%^&*()"),
            ("PLAIN", "just-plain_value.1/2:3@4%5+6,7=8"),
            ("LONG", &"x'y\"z$ ".repeat(2_000)),
            ("lower_case", "lower"),
            ("_UNDERSCORE", "u"),
            ("A1", "1"),
        ])
    }

    fn without_line_breaks(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        env.iter()
            .filter(|(_, v)| !v.contains(['\n', '\r']))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn which(name: &str) -> Option<PathBuf> {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    fn write_tmp(dir: &Path, name: &str, env: &BTreeMap<String, String>, s: EnvSyntax) -> PathBuf {
        let p = dir.join(name);
        write_file(&p, env, s).unwrap_or_else(|e| panic!("writing {s}: {e}"));
        p
    }

    fn parse_nul_pairs(out: &[u8]) -> BTreeMap<String, String> {
        let text = String::from_utf8(out.to_vec()).expect("utf-8 output");
        text.split('\0')
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (k, v) = e.split_once('=').expect("K=V");
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn only_keys(
        all: BTreeMap<String, String>,
        keys: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        all.into_iter()
            .filter(|(k, _)| keys.contains_key(k))
            .collect()
    }

    // ---- readers -------------------------------------------------------------------------

    fn read_dotenvy(text: &str) -> BTreeMap<String, String> {
        dotenvy::from_read_iter(text.as_bytes())
            .map(|r| r.unwrap_or_else(|e| panic!("dotenvy: {e}\n{text}")))
            .collect()
    }

    /// The docker CLI refused an env file: its error output.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct DockerRejected(String);

    /// Why the docker CLI would reject an env file (its messages, or what it would do instead).
    #[derive(Debug, thiserror::Error)]
    enum DockerParseError {
        #[error("bufio.Scanner: token too long")]
        TooLong,
        #[error("no '=' (would read the host env)")]
        NoEquals,
        #[error("bad variable {0:?}")]
        BadVariable(String),
    }

    /// The docker CLI's `--env-file` parser (`kvfile.Parse`), ported: lines split on `\n` with
    /// one trailing `\r` dropped, 64 KiB line limit, a BOM dropped on line 1, leading
    /// whitespace trimmed, `#` lines skipped, split at the first `=`, value kept literally.
    fn read_docker_port(text: &str) -> Result<BTreeMap<String, String>, DockerParseError> {
        let mut out = BTreeMap::new();
        let body = text.strip_suffix('\n').unwrap_or(text);
        if body.is_empty() {
            return Ok(out);
        }
        for (i, raw) in body.split('\n').enumerate() {
            if raw.len() > DOCKER_MAX_LINE {
                return Err(DockerParseError::TooLong);
            }
            let mut line = raw.strip_suffix('\r').unwrap_or(raw);
            if i == 0 {
                line = line.strip_prefix('\u{feff}').unwrap_or(line);
            }
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or(DockerParseError::NoEquals)?;
            let k = k.trim_start_matches([' ', '\t']);
            if k.contains([' ', '\t']) || k.is_empty() {
                return Err(DockerParseError::BadVariable(k.to_string()));
            }
            out.insert(k.to_string(), v.to_string());
        }
        Ok(out)
    }

    /// Runs a POSIX shell that sources `file` in an empty environment and dumps the variables
    /// of `want`: `export` checks the real environment (`env -0`), otherwise shell variables.
    fn read_sh(
        shell: &Path,
        file: &Path,
        want: &BTreeMap<String, String>,
        export: bool,
        locale: &str,
    ) -> BTreeMap<String, String> {
        let mut script = String::from(". \"$1\" || exit 97\n");
        if export {
            script.push_str("exec env -0\n");
        } else {
            for k in want.keys() {
                script.push_str(&format!(
                    "if [ \"${{{k}+set}}\" = set ]; then printf '%s=%s\\0' {k} \"${k}\"; fi\n"
                ));
            }
        }
        let out = Command::new(shell)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", locale)
            .arg("-c")
            .arg(&script)
            .arg("sh")
            .arg(file)
            .output()
            .expect("spawn shell");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{} failed ({}): {}",
            shell.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        only_keys(parse_nul_pairs(&out.stdout), want)
    }

    /// Runs csh/tcsh on a script that sources `file` and dumps `want` into a file, either as
    /// a script (non-interactive) or fed on stdin to `-i` (interactive: history expansion on).
    fn read_csh(
        csh: &Path,
        file: &Path,
        want: &BTreeMap<String, String>,
        export: bool,
        interactive: bool,
        locale: &str,
    ) -> BTreeMap<String, String> {
        let dir = file.parent().unwrap();
        let dump = dir.join(format!("dump-{export}-{interactive}"));
        let _ = std::fs::remove_file(&dump);
        let q = |p: &Path| format!("'{}'", p.display());
        let mut script = format!("source {}\n", q(file));
        if export {
            script.push_str(&format!("env -0 > {}\n", q(&dump)));
        } else {
            script.push_str(&format!("printf '' > {}\n", q(&dump)));
            for k in want.keys() {
                script.push_str(&format!(
                    "if ($?{k}) printf '%s=%s\\0' {k} ${k}:q >> {}\n",
                    q(&dump)
                ));
            }
        }
        let script_path = dir.join("dump.csh");
        std::fs::write(&script_path, &script).unwrap();
        let mut cmd = Command::new(csh);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", locale)
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if interactive {
            cmd.arg("-i")
                .stdin(std::fs::File::open(&script_path).unwrap());
        } else {
            cmd.arg(&script_path).stdin(Stdio::null());
        }
        let out = cmd.output().expect("spawn csh");
        // Interactive csh without a tty warns about job control; anything else is a failure.
        let stderr: String = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.contains("no access to tty") && !l.contains("no job control"))
            .collect();
        assert!(
            out.status.success() && stderr.is_empty(),
            "{} (interactive={interactive}) failed ({}): {stderr}\nfile:\n{}",
            csh.display(),
            out.status,
            std::fs::read_to_string(file).unwrap()
        );
        let bytes = std::fs::read(&dump).expect("csh wrote no dump");
        only_keys(parse_nul_pairs(&bytes), want)
    }

    fn cshells() -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = Vec::new();
        for name in ["tcsh", "csh"] {
            if let Some(p) = which(name) {
                let real = std::fs::canonicalize(&p).unwrap_or(p.clone());
                if !found
                    .iter()
                    .any(|f| std::fs::canonicalize(f).unwrap_or(f.clone()) == real)
                {
                    found.push(p);
                }
            }
        }
        found
    }

    /// Creates (never starts) a container from an empty local image with `--env-file` and
    /// reads back the environment the docker CLI parsed. None when no engine is reachable.
    struct DockerProbe {
        image: String,
    }

    impl DockerProbe {
        fn new() -> Option<Self> {
            let ok = Command::new("docker")
                .args(["version", "--format", "{{.Server.Version}}"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !ok {
                return None;
            }
            let image = format!(
                "tp-envfile-test:{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            );
            let mut child = Command::new("docker")
                .args(["import", "-", &image])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("docker import");
            // An empty tar archive: two zero blocks.
            child.stdin.take().unwrap().write_all(&[0u8; 1024]).unwrap();
            assert!(
                child.wait().unwrap().success(),
                "docker import of an empty image failed"
            );
            Some(DockerProbe { image })
        }

        fn read(&self, file: &Path) -> Result<BTreeMap<String, String>, DockerRejected> {
            let out = Command::new("docker")
                .args(["create", "--env-file"])
                .arg(file)
                .args([&self.image, "/none"])
                .output()
                .unwrap();
            if !out.status.success() {
                return Err(DockerRejected(
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
            let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
            let inspect = Command::new("docker")
                .args(["inspect", "--format", "{{json .Config.Env}}", &id])
                .output()
                .unwrap();
            let _ = Command::new("docker").args(["rm", "-f", &id]).output();
            assert!(inspect.status.success());
            let list: Option<Vec<String>> = serde_json::from_slice(&inspect.stdout).unwrap();
            Ok(list
                .unwrap_or_default()
                .into_iter()
                .map(|e| {
                    let (k, v) = e.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect())
        }
    }

    impl Drop for DockerProbe {
        fn drop(&mut self) {
            let _ = Command::new("docker")
                .args(["rmi", "-f", &self.image])
                .output();
        }
    }

    // ---- names ---------------------------------------------------------------------------

    #[test]
    fn syntax_names_parse_and_match_clap() {
        use clap::ValueEnum;
        let names = [
            "docker",
            "compose",
            "sh",
            "sh:export",
            "csh",
            "csh:export",
            "cmd",
            "ps",
            "ps:export",
            "json",
        ];
        assert_eq!(EnvSyntax::ALL.map(super::EnvSyntax::as_str), names);
        for s in EnvSyntax::value_variants() {
            let name = s.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(name, s.as_str());
            assert_eq!(name.parse::<EnvSyntax>().unwrap(), *s);
            assert_eq!(
                <EnvSyntax as ValueEnum>::from_str(&name, false).unwrap(),
                *s
            );
            assert_eq!(s.to_string(), name);
        }
        for bad in [
            "",
            "Docker",
            "sh-export",
            "export",
            "sh:",
            "powershell",
            "json ",
        ] {
            let e = bad.parse::<EnvSyntax>().unwrap_err().to_string();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("sh:export"),
                "{e}"
            );
        }
    }

    // ---- docker ----------------------------------------------------------------------------

    #[test]
    fn docker_refuses_line_breaks_naming_the_variable() {
        for (k, v, what) in [
            ("MULTI", "a\nb", "newline"),
            ("CR", "a\rb", "carriage return"),
        ] {
            let e = render(&map(&[("OK", "fine"), (k, v)]), EnvSyntax::Docker).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, EnvFileError::InvalidValue { .. }), "{e:?}");
            assert!(
                msg.contains(k)
                    && msg.contains(what)
                    && msg.contains("--env-syntax")
                    && msg.contains("compose"),
                "{msg}"
            );
        }
        // Every multi-line hostile value is refused, one at a time.
        for (k, v) in hostile().iter().filter(|(_, v)| v.contains(['\n', '\r'])) {
            let e = check(k, v, EnvSyntax::Docker).unwrap_err();
            assert!(e.to_string().contains(k.as_str()), "{e}");
        }
    }

    #[test]
    fn docker_reads_back_literally_with_its_own_parser() {
        let env = without_line_breaks(&hostile());
        let text = render(&env, EnvSyntax::Docker).unwrap();
        assert_eq!(read_docker_port(&text).unwrap(), env);
        // Literal: no quoting at all.
        assert!(text.contains("SQ=it's a 'quoted' value\n"));
        assert!(text.contains("SPACES=  leading and trailing  \n"));
    }

    #[test]
    fn docker_names_and_line_limit() {
        for bad in ["has space", "#hash", "tab\tkey", "\u{feff}BOM", "A=B", ""] {
            let e = check(bad, "v", EnvSyntax::Docker).unwrap_err();
            assert!(
                matches!(e, EnvFileError::InvalidKey { .. }),
                "{bad:?}: {e:?}"
            );
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        for good in ["my-var", "a.b", "lower", "Ünïcode", "1ABC"] {
            check(good, "v", EnvSyntax::Docker).unwrap();
        }
        let fits = "v".repeat(DOCKER_MAX_LINE - "K=".len());
        check("K", &fits, EnvSyntax::Docker).unwrap();
        let e = check("K", &format!("{fits}v"), EnvSyntax::Docker).unwrap_err();
        assert!(e.to_string().contains("65535"), "{e}");
    }

    #[test]
    fn docker_cli_reads_back_exactly() {
        let Some(probe) = DockerProbe::new() else {
            eprintln!("SKIP docker_cli_reads_back_exactly: no docker engine reachable");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut env = without_line_breaks(&hostile());
        // The longest line our writer accepts is the longest the CLI reads.
        env.insert("MAX".into(), "m".repeat(DOCKER_MAX_LINE - "MAX=".len()));
        let file = write_tmp(dir.path(), "env", &env, EnvSyntax::Docker);
        assert_eq!(probe.read(&file).unwrap(), env);
        // One byte more and the docker CLI fails, which is why the writer refuses it.
        std::fs::write(&file, format!("MAX={}\n", "m".repeat(DOCKER_MAX_LINE - 3))).unwrap();
        let err = probe.read(&file).unwrap_err().to_string();
        assert!(err.contains("too long"), "{err}");
    }

    // ---- compose ---------------------------------------------------------------------------

    #[test]
    fn compose_reads_back_exactly_with_dotenvy() {
        let env = hostile();
        let text = render(&env, EnvSyntax::Compose).unwrap();
        assert_eq!(read_dotenvy(&text), env);
        // One variable per line, even multi-line ones; plain values bare.
        assert_eq!(text.lines().count(), env.len(), "{text}");
        assert!(text.contains("PLAIN=just-plain_value.1/2:3@4%5+6,7=8\n"));
        assert!(text.contains("NEWLINE=\"line1\\nline2\\n\"\n"));
        assert!(text.contains("EMPTY=\"\"\n"));
    }

    #[test]
    fn compose_names() {
        for good in ["a.b", "_x", "A1", "export"] {
            let env = map(&[(good, "v w")]);
            assert_eq!(
                read_dotenvy(&render(&env, EnvSyntax::Compose).unwrap()),
                env
            );
        }
        for bad in ["my-var", "1ABC", "a b", "é"] {
            let e = check(bad, "v", EnvSyntax::Compose).unwrap_err();
            assert!(
                e.to_string().contains(&format!("{bad:?}")) && e.to_string().contains("compose"),
                "{e}"
            );
        }
    }

    // ---- sh --------------------------------------------------------------------------------

    fn shells() -> Vec<PathBuf> {
        let mut v = vec![PathBuf::from("/bin/sh")];
        v.extend(which("bash"));
        v
    }

    #[test]
    fn sh_is_read_back_exactly_by_real_shells() {
        let dir = tempfile::tempdir().unwrap();
        let env = hostile();
        for (syntax, export) in [(EnvSyntax::Sh, false), (EnvSyntax::ShExport, true)] {
            let file = write_tmp(dir.path(), syntax.as_str(), &env, syntax);
            for shell in shells() {
                for locale in ["C", "C.UTF-8"] {
                    let got = read_sh(&shell, &file, &env, export, locale);
                    assert_eq!(got, env, "{syntax} via {} LC_ALL={locale}", shell.display());
                }
            }
        }
    }

    #[test]
    fn sh_plain_variables_are_not_exported() {
        let dir = tempfile::tempdir().unwrap();
        let env = map(&[("PLAIN_ONE", "x"), ("QUOTED_ONE", "a b")]);
        let file = write_tmp(dir.path(), "sh", &env, EnvSyntax::Sh);
        // `env -0` sees only exported variables.
        assert!(read_sh(Path::new("/bin/sh"), &file, &env, true, "C").is_empty());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "PLAIN_ONE=x\nQUOTED_ONE='a b'\n"
        );
    }

    #[test]
    fn sh_csh_names() {
        for syntax in [
            EnvSyntax::Sh,
            EnvSyntax::ShExport,
            EnvSyntax::Csh,
            EnvSyntax::CshExport,
            EnvSyntax::Ps,
        ] {
            for bad in ["my-var", "a.b", "1ABC", "a b", "é", "A=B", ""] {
                let e = check(bad, "v", syntax).unwrap_err();
                assert!(
                    matches!(e, EnvFileError::InvalidKey { .. }),
                    "{syntax} {bad:?}"
                );
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("{bad:?}")) && msg.contains(syntax.as_str()),
                    "{msg}"
                );
            }
            check("_ok_Name9", "v", syntax).unwrap();
        }
    }

    // ---- csh -------------------------------------------------------------------------------

    #[test]
    fn csh_is_read_back_exactly_by_real_csh() {
        let shells = cshells();
        if shells.is_empty() {
            eprintln!("SKIP csh_is_read_back_exactly_by_real_csh: neither tcsh nor csh is installed (Debian: apt-get install tcsh)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let env = hostile();
        for (syntax, export) in [(EnvSyntax::Csh, false), (EnvSyntax::CshExport, true)] {
            let file = write_tmp(dir.path(), syntax.as_str(), &env, syntax);
            for csh in &shells {
                for interactive in [false, true] {
                    for locale in ["C", "C.UTF-8"] {
                        let got = read_csh(csh, &file, &env, export, interactive, locale);
                        assert_eq!(
                            got,
                            env,
                            "{syntax} via {} interactive={interactive} LC_ALL={locale}",
                            csh.display()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn csh_escapes_history_and_newlines() {
        let text = render(&map(&[("K", "a!b\nc\\d'e")]), EnvSyntax::Csh).unwrap();
        assert_eq!(text, "set K='a\\!b\\\nc'\\\\'d'\\''e'\n");
        let text = render(&map(&[("K", "plain"), ("L", "-n")]), EnvSyntax::CshExport).unwrap();
        assert_eq!(text, "setenv K plain\nsetenv L '-n'\n");
    }

    // ---- cmd / PowerShell (no interpreter here: exact text) -------------------------------

    #[test]
    fn cmd_exact_text() {
        let cases = [
            ("plain", "set K=plain\r\n"),
            ("a&b|c<d>e^f(g)", "set K=a^&b^|c^<d^>e^^f^(g^)\r\n"),
            ("100% %PATH%", "set K=100%% %%PATH%%\r\n"),
            // Inside a "…" run cmd takes & and ^ literally, so no carets there.
            ("say \"a&b^\" & c", "set K=say \"a&b^\" ^& c\r\n"),
            ("  spaced  ", "set K=  spaced  \r\n"),
            (
                "it's $HOME !x! `id` = \\",
                "set K=it's $HOME !x! `id` = \\\r\n",
            ),
            ("", "set K=\r\n"),
            ("日本語 🚀", "set K=日本語 🚀\r\n"),
        ];
        for (v, want) in cases {
            assert_eq!(
                render(&map(&[("K", v)]), EnvSyntax::Cmd).unwrap(),
                want,
                "{v:?}"
            );
        }
        for v in ["a\nb", "a\rb"] {
            let e = render(&map(&[("MULTI", v)]), EnvSyntax::Cmd)
                .unwrap_err()
                .to_string();
            assert!(e.contains("MULTI") && e.contains("line break"), "{e}");
        }
        check("my-var.x", "v", EnvSyntax::Cmd).unwrap();
        for bad in ["a b", "a%b", "a!b", "1ABC", "a&b"] {
            assert!(check(bad, "v", EnvSyntax::Cmd)
                .unwrap_err()
                .to_string()
                .contains(&format!("{bad:?}")));
        }
    }

    #[test]
    fn ps_exact_text() {
        let cases = [
            ("plain", "$Env:K='plain'\n"),
            ("it's", "$Env:K='it''s'\n"),
            ("‘a’ ‚b‛ \"c\"", "$Env:K='‘‘a’’ ‚‚b‛‛ \"c\"'\n"),
            ("$HOME `n $(x) \\", "$Env:K='$HOME `n $(x) \\'\n"),
            ("line1\nline2\r\n", "$Env:K='line1\nline2\r\n'\n"),
            ("", "$Env:K=''\n"),
        ];
        for (v, want) in cases {
            assert_eq!(
                render(&map(&[("K", v)]), EnvSyntax::Ps).unwrap(),
                want,
                "{v:?}"
            );
        }
        assert_eq!(
            render(&map(&[("my-var", "it's\nx")]), EnvSyntax::PsExport).unwrap(),
            "[Environment]::SetEnvironmentVariable('my-var', 'it''s\nx', 'User')\n"
        );
        // Everything hostile renders (PowerShell strings hold any character but NUL).
        let env: BTreeMap<_, _> = hostile()
            .into_iter()
            .filter(|(k, _)| is_ident(k, &[]))
            .collect();
        render(&env, EnvSyntax::Ps).unwrap();
        render(&env, EnvSyntax::PsExport).unwrap();
    }

    // ---- json ------------------------------------------------------------------------------

    #[test]
    fn json_round_trips_sorted_and_pretty() {
        let mut env = hostile();
        env.insert("my-var.x".into(), "any name".into());
        let text = render(&env, EnvSyntax::Json).unwrap();
        let back: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, env);
        assert!(text.starts_with("{\n  \"A1\": \"1\",\n"), "{text}");
        let keys: Vec<usize> = env
            .keys()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys not in order");
    }

    // ---- everything ------------------------------------------------------------------------

    #[test]
    fn keys_are_sorted_in_every_line_syntax() {
        let env = map(&[("B", "2"), ("A", "1"), ("C", "3"), ("_Z", "4")]);
        for syntax in EnvSyntax::ALL.into_iter().filter(|s| *s != EnvSyntax::Json) {
            let text = render(&env, syntax).unwrap();
            let pos: Vec<usize> = ["A", "B", "C", "_Z"]
                .iter()
                .map(|k| {
                    text.find(&format!(
                        "{k}{}",
                        if syntax == EnvSyntax::CshExport {
                            " "
                        } else {
                            "="
                        }
                    ))
                    .or_else(|| text.find(&format!("'{k}'")))
                    .unwrap()
                })
                .collect();
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "{syntax}: {text}");
        }
    }

    #[test]
    fn nul_and_bad_names_are_refused_everywhere() {
        for syntax in EnvSyntax::ALL {
            let e = render(&map(&[("K", "a\0b")]), syntax)
                .unwrap_err()
                .to_string();
            assert!(e.contains("K") && e.contains("NUL"), "{syntax}: {e}");
            for bad in ["", "A=B", "A\0"] {
                let e = render(&map(&[(bad, "v")]), syntax).unwrap_err();
                assert!(
                    matches!(e, EnvFileError::InvalidKey { .. }),
                    "{syntax} {bad:?}: {e:?}"
                );
            }
        }
    }

    #[test]
    fn empty_env_renders_empty() {
        for syntax in EnvSyntax::ALL {
            let text = render(&BTreeMap::new(), syntax).unwrap();
            assert_eq!(
                text,
                if syntax == EnvSyntax::Json {
                    "{}\n"
                } else {
                    ""
                },
                "{syntax}"
            );
        }
    }

    // ---- the file --------------------------------------------------------------------------

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn dir_entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn file_is_created_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.env");
        let env = map(&[("A", "1")]);
        write_file(&p, &env, EnvSyntax::Docker).unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "A=1\n");
        assert_eq!(dir_entries(dir.path()), ["new.env"]);
    }

    #[test]
    fn existing_file_is_replaced_and_set_to_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.env");
        std::fs::write(&p, "OLD=content that is longer than the new one\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_file(&p, &map(&[("N", "1")]), EnvSyntax::Compose).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "N=1\n");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(dir_entries(dir.path()), ["old.env"]);
    }

    #[test]
    fn refused_env_leaves_the_old_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keep.env");
        std::fs::write(&p, "KEEP=1\n").unwrap();
        let e = write_file(&p, &map(&[("M", "a\nb")]), EnvSyntax::Docker).unwrap_err();
        assert!(matches!(e, EnvFileError::InvalidValue { .. }));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "KEEP=1\n");
        assert_eq!(dir_entries(dir.path()), ["keep.env"]);
    }

    #[test]
    fn io_errors_name_the_path_and_leave_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/x.env");
        let e = write_file(&missing, &map(&[("A", "1")]), EnvSyntax::Json).unwrap_err();
        assert!(
            matches!(e, EnvFileError::Io { .. }) && e.to_string().contains("no/such/dir/x.env"),
            "{e}"
        );
        // The target is a directory: the rename fails, the temp file is removed.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = write_file(&sub, &map(&[("A", "1")]), EnvSyntax::Sh).unwrap_err();
        assert!(matches!(e, EnvFileError::Io { .. }), "{e:?}");
        assert_eq!(dir_entries(dir.path()), ["sub"]);
    }

    #[test]
    fn temp_file_goes_next_to_the_target() {
        assert_eq!(dir_of(Path::new("x.env")), Path::new("."));
        assert_eq!(dir_of(Path::new("./x.env")), Path::new("."));
        assert_eq!(dir_of(Path::new("a/b/x.env")), Path::new("a/b"));
        assert_eq!(dir_of(Path::new("/x.env")), Path::new("/"));
        let e = write_file(Path::new("/"), &BTreeMap::new(), EnvSyntax::Json).unwrap_err();
        assert!(matches!(e, EnvFileError::Io { .. }), "{e:?}");
    }

    // ---- arbitrary values ------------------------------------------------------------------

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Arbitrary printable, format (RTL, BOM, ZWJ) and whitespace characters through the
        /// real readers: dotenvy (compose), /bin/sh (sh:export), the docker parser port, and
        /// csh when installed.
        #[test]
        fn arbitrary_values_round_trip(
            env in proptest::collection::btree_map(
                "K_[A-Za-z0-9_]{0,6}",
                "[\\PC\\p{Cf}\\t\\n\\r ]{0,24}",
                1..5,
            )
        ) {
            let compose = render(&env, EnvSyntax::Compose).unwrap();
            prop_assert_eq!(&read_dotenvy(&compose), &env);

            let single = without_line_breaks(&env);
            let docker = render(&single, EnvSyntax::Docker).unwrap();
            prop_assert_eq!(&read_docker_port(&docker).unwrap(), &single);
            prop_assert_eq!(render(&env, EnvSyntax::Docker).is_ok(), single.len() == env.len());

            let dir = tempfile::tempdir().unwrap();
            let file = write_tmp(dir.path(), "sh", &env, EnvSyntax::ShExport);
            prop_assert_eq!(&read_sh(Path::new("/bin/sh"), &file, &env, true, "C.UTF-8"), &env);

            if let Some(csh) = cshells().first() {
                let file = write_tmp(dir.path(), "csh", &env, EnvSyntax::CshExport);
                prop_assert_eq!(&read_csh(csh, &file, &env, true, false, "C.UTF-8"), &env);
            }
        }
    }
}
