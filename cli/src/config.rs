//! `telepresence config view`: the client configuration file
//! (`$XDG_CONFIG_HOME/telepresence/config.yml`, else `~/.config/telepresence/config.yml`, the
//! file `helm::configured_registry` reads `images.registry` from) laid over the defaults.

use crate::output::CmdOutput;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Where the client configuration file is (it need not exist).
pub fn config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("telepresence/config.yml"))
}

/// What this client uses when the file does not say otherwise. `images.registry` empty: the
/// image of this binary is expected on the cluster's nodes already (see `helm install`).
pub fn defaults() -> Value {
    json!({
        "images": {
            "registry": "",
        },
    })
}

/// `over` laid onto `base`: mappings merge key by key, anything else in `over` replaces;
/// keys the file sets that this client does not use are kept, so the user sees them.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// The effective configuration from the file's text (`None`: no file). An empty file counts
/// as no settings.
pub fn effective(file: Option<(&std::path::Path, &str)>) -> Result<Value> {
    let mut v = defaults();
    if let Some((path, text)) = file {
        let parsed: Value = yaml_serde::from_str(text)
            .with_context(|| format!("{} is not valid YAML", path.display()))?;
        match parsed {
            Value::Null => {}
            Value::Object(_) => merge(&mut v, parsed),
            _ => anyhow::bail!(
                "{} is not a YAML mapping: write settings like `images:\\n  registry: REGISTRY`",
                path.display()
            ),
        }
    }
    Ok(v)
}

/// `config view`: the effective configuration as YAML, and as data for `--output json|yaml`.
pub fn view() -> Result<CmdOutput> {
    let path = config_path();
    let text = match &path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        },
        None => None,
    };
    let file = path.as_deref().zip(text.as_deref());
    let v = effective(file)?;
    Ok(CmdOutput {
        text: yaml_serde::to_string(&v)?,
        data: Some(v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn no_file_gives_the_defaults() {
        assert_eq!(effective(None).unwrap(), defaults());
        let p = Path::new("/x/config.yml");
        assert_eq!(effective(Some((p, ""))).unwrap(), defaults());
    }

    #[test]
    fn file_values_win_and_unknown_keys_stay() {
        let p = Path::new("/x/config.yml");
        let v = effective(Some((
            p,
            "images:\n  registry: ghcr.io/me\n  agentImage: a:1\ntimeouts:\n  intercept: 10s\n",
        )))
        .unwrap();
        assert_eq!(v["images"]["registry"], "ghcr.io/me");
        assert_eq!(v["images"]["agentImage"], "a:1");
        assert_eq!(v["timeouts"]["intercept"], "10s");
    }

    #[test]
    fn bad_files_say_which_file() {
        let p = Path::new("/x/config.yml");
        let e = effective(Some((p, "images: [unclosed"))).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("/x/config.yml is not valid YAML"),
            "{e:#}"
        );
        let e = effective(Some((p, "- a\n- b\n"))).unwrap_err();
        assert!(e.to_string().contains("is not a YAML mapping"), "{e}");
    }
}
