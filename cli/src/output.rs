//! Output shaping: the padded key/value blocks of the text layouts, and the machine formats
//! (`--output json|yaml`), with the `{"cmd","stdout","stderr","err"}` envelope for commands
//! other than `status` and `list`.

use crate::args::OutputFormat;
use serde::Serialize;

/// Renders `key: value` lines with keys padded to the longest key, each line prefixed by
/// `indent`. A `None` value renders the key alone (a sub-block header such as `DNS :`).
pub fn kv_block(indent: &str, rows: &[(&str, Option<String>)]) -> String {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let pad = width - k.chars().count();
        out.push_str(indent);
        out.push_str(k);
        out.push_str(&" ".repeat(pad));
        out.push(':');
        if let Some(v) = v {
            out.push(' ');
            // Continuation lines of a multi-line value start under the value column.
            let cont = format!("\n{}", " ".repeat(indent.chars().count() + width + 2));
            out.push_str(&v.replace('\n', &cont));
        }
        out.push('\n');
    }
    out
}

/// What a command produced: text for humans and, optionally, structured data for machines.
#[derive(Debug, Default)]
pub struct CmdOutput {
    pub text: String,
    pub data: Option<serde_json::Value>,
}

impl CmdOutput {
    pub fn text(t: impl Into<String>) -> Self {
        CmdOutput {
            text: t.into(),
            data: None,
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    cmd: &'a str,
    stdout: &'a str,
    stderr: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    err: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a serde_json::Value>,
}

/// Renders a command's result in the chosen format. `raw_data` commands (`status`, `list`)
/// print their data alone in machine formats; others are wrapped in the envelope. An error is
/// shown with its causes (`{:#}`).
pub fn render(
    format: OutputFormat,
    cmd: &str,
    raw_data: bool,
    result: &Result<CmdOutput, anyhow::Error>,
) -> String {
    let machine = |v: &serde_json::Value| match format {
        OutputFormat::Yaml => yaml_serde::to_string(v).unwrap_or_default(),
        _ => format!("{}\n", serde_json::to_string(v).unwrap_or_default()),
    };
    match (format, result) {
        (OutputFormat::Default, Ok(o)) => o.text.clone(),
        (OutputFormat::Default, Err(e)) => format!("telepresence {cmd}: error: {e:#}\n"),
        (_, Ok(o)) if raw_data && o.data.is_some() => machine(o.data.as_ref().expect("data")),
        (_, r) => {
            let message = r.as_ref().err().map(|e| format!("{e:#}"));
            let (stdout, data) = match r {
                Ok(o) => (o.text.as_str(), o.data.as_ref()),
                Err(_) => ("", None),
            };
            let err = message.as_deref();
            let env = Envelope {
                cmd,
                stdout,
                stderr: "",
                err,
                data,
            };
            machine(&serde_json::to_value(env).expect("envelope serializes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_values_continue_under_the_value_column() {
        let s = kv_block(
            "   ",
            &[
                ("Intercept name", Some("web".into())),
                (
                    "Intercepting",
                    Some("HTTP requests with headers\n  'x-id: a:web'".into()),
                ),
            ],
        );
        assert_eq!(
            s,
            "   Intercept name: web\n   Intercepting  : HTTP requests with headers\n                     'x-id: a:web'\n"
        );
    }

    #[test]
    fn block_is_padded() {
        let s = kv_block(
            "   ",
            &[
                ("Intercept name", Some("web".into())),
                ("State", Some("ACTIVE".into())),
            ],
        );
        assert_eq!(s, "   Intercept name: web\n   State         : ACTIVE\n");
    }

    #[test]
    fn envelope() {
        let ok = render(
            OutputFormat::Json,
            "leave",
            false,
            &Ok(CmdOutput::text("bye\n")),
        );
        let v: serde_json::Value = serde_json::from_str(&ok).unwrap();
        assert_eq!(v["cmd"], "leave");
        assert_eq!(v["stdout"], "bye\n");
        assert!(v.get("err").is_none());
        let err = render(
            OutputFormat::Json,
            "leave",
            false,
            &Err(anyhow::anyhow!("nope")),
        );
        let v: serde_json::Value = serde_json::from_str(&err).unwrap();
        assert_eq!(v["err"], "nope");
        let raw = render(
            OutputFormat::Json,
            "list",
            true,
            &Ok(CmdOutput {
                text: String::new(),
                data: Some(serde_json::json!([1])),
            }),
        );
        assert_eq!(raw.trim(), "[1]");
        let y = render(
            OutputFormat::Yaml,
            "version",
            false,
            &Ok(CmdOutput::text("v")),
        );
        assert!(y.contains("cmd: version"), "{y}");
    }
}
