//! The traffic-manager chart shipped inside the binary (`charts/traffic-manager`), its values
//! (chart defaults ← `-f` files ← `--set` ← what the CLI fills in), and rendering it into
//! Kubernetes objects (JSON values in apply order).

use super::template::{TemplateError, Templates};
use serde_json::{Map, Value};

/// The chart's files, embedded at build time: (path below the chart directory, contents).
pub const FILES: &[(&str, &str)] = &[
    (
        "Chart.yaml",
        include_str!("../../../charts/traffic-manager/Chart.yaml"),
    ),
    (
        "values.yaml",
        include_str!("../../../charts/traffic-manager/values.yaml"),
    ),
    (
        "templates/_helpers.tpl",
        include_str!("../../../charts/traffic-manager/templates/_helpers.tpl"),
    ),
    (
        "templates/serviceaccount.yaml",
        include_str!("../../../charts/traffic-manager/templates/serviceaccount.yaml"),
    ),
    (
        "templates/rbac.yaml",
        include_str!("../../../charts/traffic-manager/templates/rbac.yaml"),
    ),
    (
        "templates/service.yaml",
        include_str!("../../../charts/traffic-manager/templates/service.yaml"),
    ),
    (
        "templates/deployment.yaml",
        include_str!("../../../charts/traffic-manager/templates/deployment.yaml"),
    ),
    (
        "templates/webhook.yaml",
        include_str!("../../../charts/traffic-manager/templates/webhook.yaml"),
    ),
];

/// The release name (one traffic-manager per manager namespace).
pub const RELEASE_NAME: &str = "traffic-manager";

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{0}: not valid YAML: {1}")]
    Yaml(String, String),
    #[error("invalid --set {0:?}: {1}")]
    Set(String, String),
    #[error("rendered {0}: an object without apiVersion, kind or metadata.name")]
    Incomplete(String),
}

fn file(path: &str) -> &'static str {
    FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, c)| *c)
        .unwrap_or_default()
}

fn yaml(name: &str, text: &str) -> Result<Value, ChartError> {
    let v: Value =
        yaml_serde::from_str(text).map_err(|e| ChartError::Yaml(name.into(), e.to_string()))?;
    Ok(v)
}

/// Chart.yaml.
pub fn chart_meta() -> Value {
    yaml("Chart.yaml", file("Chart.yaml")).unwrap_or(Value::Null)
}

/// The chart version (Chart.yaml `version`).
pub fn chart_version() -> String {
    chart_meta()["version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The chart's default values (values.yaml).
pub fn default_values() -> Value {
    yaml("values.yaml", file("values.yaml")).unwrap_or(Value::Null)
}

/// Parses a values file given with `-f`.
pub fn values_file(name: &str, text: &str) -> Result<Value, ChartError> {
    let v = yaml(name, text)?;
    Ok(if v.is_null() {
        Value::Object(Map::new())
    } else {
        v
    })
}

/// Merges `over` into `base`: maps merge key by key, anything else replaces.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(bv) if bv.is_object() && v.is_object() => merge(bv, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn scalar(s: &str) -> Value {
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        _ => match s.parse::<i64>() {
            Ok(n) if !(s.len() > 1 && s.starts_with('0')) => Value::from(n),
            _ => Value::String(s.to_string()),
        },
    }
}

/// Splits on commas that are not escaped (`\,`) and not inside `{…}`.
fn split_top(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut depth = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(',') => out.last_mut().unwrap().push(','),
                Some(n) => {
                    out.last_mut().unwrap().push('\\');
                    out.last_mut().unwrap().push(n);
                }
                None => out.last_mut().unwrap().push('\\'),
            },
            '{' => {
                depth += 1;
                out.last_mut().unwrap().push(c);
            }
            '}' => {
                depth -= 1;
                out.last_mut().unwrap().push(c);
            }
            ',' if depth == 0 => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// Parses one `--set` argument (`a.b=v`, several separated by commas, `{x,y}` lists,
/// `\.` in keys) into a values tree.
pub fn parse_set(arg: &str) -> Result<Value, ChartError> {
    let mut root = Value::Object(Map::new());
    for part in split_top(arg) {
        if part.is_empty() {
            continue;
        }
        let (key, val) = part
            .split_once('=')
            .ok_or_else(|| ChartError::Set(arg.into(), format!("{part:?} is not key=value")))?;
        if key.contains('[') {
            return Err(ChartError::Set(
                arg.into(),
                "list indexes (a[0]=x) are not supported; use a values file (-f)".into(),
            ));
        }
        let mut path = Vec::new();
        let mut cur = String::new();
        let mut chars = key.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\' && chars.peek() == Some(&'.') {
                cur.push('.');
                chars.next();
            } else if c == '.' {
                path.push(std::mem::take(&mut cur));
            } else {
                cur.push(c);
            }
        }
        path.push(cur);
        if path.iter().any(String::is_empty) {
            return Err(ChartError::Set(arg.into(), format!("empty key in {key:?}")));
        }
        let value = match val.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
            Some("") => Value::Array(Vec::new()),
            Some(inner) => Value::Array(inner.split(',').map(scalar).collect()),
            None => scalar(val),
        };
        let mut tree = value;
        for k in path.into_iter().rev() {
            let mut m = Map::new();
            m.insert(k, tree);
            tree = Value::Object(m);
        }
        merge(&mut root, tree);
    }
    Ok(root)
}

/// Renders the chart into objects, in the order they are applied (namespaced prerequisites
/// first, the webhook configuration last).
pub fn render(values: &Value, namespace: &str) -> Result<Vec<Value>, ChartError> {
    let data = render_data(values, namespace);
    let mut t = Templates::new();
    for (path, text) in FILES.iter().filter(|(p, _)| p.starts_with("templates/")) {
        t.add(path, text)?;
    }
    let mut objects = Vec::new();
    for name in t.names() {
        if name.rsplit('/').next().is_some_and(|f| f.starts_with('_')) {
            continue;
        }
        let text = t.render(&name, &data)?;
        for doc in split_documents(&text) {
            let v = yaml(&name, &doc)?;
            if v.is_null() {
                continue;
            }
            if v["apiVersion"].as_str().is_none()
                || v["kind"].as_str().is_none()
                || v["metadata"]["name"].as_str().is_none()
            {
                return Err(ChartError::Incomplete(name));
            }
            objects.push(v);
        }
    }
    objects.sort_by_key(|o| kind_order(o["kind"].as_str().unwrap_or_default()));
    Ok(objects)
}

/// What the templates see: `.Values`, `.Release`, `.Chart`, `.Capabilities`.
pub fn render_data(values: &Value, namespace: &str) -> Value {
    let meta = chart_meta();
    serde_json::json!({
        "Values": values,
        "Release": {"Name": RELEASE_NAME, "Namespace": namespace, "Service": "telepresence", "IsInstall": true},
        "Chart": {
            "Name": meta["name"],
            "Version": meta["version"],
            "AppVersion": meta["appVersion"],
        },
        "Capabilities": {"KubeVersion": {"Version": "v1.37.0"}},
    })
}

fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let d = docs.last_mut().unwrap();
            d.push_str(line);
            d.push('\n');
        }
    }
    docs.into_iter().filter(|d| !d.trim().is_empty()).collect()
}

/// Apply order (Helm's install order for the kinds the chart has).
pub fn kind_order(kind: &str) -> usize {
    [
        "Namespace",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "MutatingWebhookConfiguration",
    ]
    .iter()
    .position(|k| *k == kind)
    .unwrap_or(usize::MAX)
}
