//! Reading a compose tree: scalar and key text, the services of a project, the networks a
//! service is attached to (with their aliases and the names compose gives them on the engine),
//! and writing a tree back as YAML the compose tool reads literally (`$` escaped as `$$`).

use yaml_serde::{Mapping, Value};

/// A scalar as text (strings, numbers, booleans); `None` for null, lists and maps.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A mapping key as text (for paths in messages).
pub fn key_text(k: &Value) -> String {
    scalar_text(k).unwrap_or_else(|| "?".into())
}

/// The `services` mapping of a project tree.
pub fn services(tree: &Value) -> Option<&Mapping> {
    tree.get("services")?.as_mapping()
}

/// The names of a project's services, in file order.
pub fn service_names(tree: &Value) -> Vec<String> {
    services(tree)
        .map(|m| m.keys().map(key_text).collect())
        .unwrap_or_default()
}

/// One network a service is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The key under the project's `networks:` (`default` when the service names none).
    pub key: String,
    /// The network's name on the engine.
    pub name: String,
    /// Declared `external: true`: compose does not create it.
    pub external: bool,
    /// The names the service answers to there: its service name and its `aliases`.
    pub aliases: Vec<String>,
}

/// The networks `service` is attached to in project `project` (compose's rules: the listed
/// `networks:` or `default`; a network's engine name is its `name:`, else
/// `<project>_<key>`). Empty for `network_mode` services.
pub fn attachments(tree: &Value, project: &str, service: &str) -> Vec<Attachment> {
    let Some(svc) = services(tree).and_then(|s| s.get(service)) else {
        return Vec::new();
    };
    if svc.get("network_mode").is_some() {
        return Vec::new();
    }
    let listed: Vec<(String, Vec<String>)> = match svc.get("networks") {
        Some(Value::Sequence(s)) => s
            .iter()
            .filter_map(scalar_text)
            .map(|k| (k, Vec::new()))
            .collect(),
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                let aliases = v
                    .get("aliases")
                    .and_then(Value::as_sequence)
                    .map(|a| a.iter().filter_map(scalar_text).collect())
                    .unwrap_or_default();
                (key_text(k), aliases)
            })
            .collect(),
        _ => vec![("default".to_string(), Vec::new())],
    };
    listed
        .into_iter()
        .map(|(key, extra)| {
            let def = tree.get("networks").and_then(|n| n.get(key.as_str()));
            let external = def
                .and_then(|d| d.get("external"))
                .is_some_and(|e| e.as_bool() == Some(true) || e.is_mapping());
            let name = def
                .and_then(|d| d.get("name"))
                .and_then(scalar_text)
                .or_else(|| {
                    def.and_then(|d| d.get("external"))
                        .and_then(|e| e.get("name"))
                        .and_then(scalar_text)
                })
                .unwrap_or_else(|| {
                    if external {
                        key.clone()
                    } else {
                        format!("{project}_{key}")
                    }
                });
            let mut aliases = vec![service.to_string()];
            aliases.extend(extra);
            Attachment {
                key,
                name,
                external,
                aliases,
            }
        })
        .collect()
}

/// The project network definition `key` (null when it has none).
pub fn network_definition<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    tree.get("networks").and_then(|n| n.get(key))
}

/// The tree as YAML for the compose tool, which interpolates again: every `$` in a string is
/// written `$$` so the values stay what they are.
pub fn to_compose_yaml(tree: &Value) -> String {
    let mut t = tree.clone();
    escape_dollars(&mut t);
    yaml_serde::to_string(&t).unwrap_or_default()
}

fn escape_dollars(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
        Value::Sequence(seq) => seq.iter_mut().for_each(escape_dollars),
        Value::Mapping(m) => m.values_mut().for_each(escape_dollars),
        Value::Tagged(t) => escape_dollars(&mut t.value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_follow_compose_naming() {
        let tree: Value = yaml_serde::from_str(
            r"
services:
  web: {image: w}
  api:
    image: a
    networks:
      back: {aliases: [api-v1]}
      shared: {}
  host: {image: h, network_mode: host}
networks:
  back: {}
  shared: {external: true, name: company-net}
",
        )
        .unwrap();
        assert_eq!(
            attachments(&tree, "dev", "web"),
            vec![Attachment {
                key: "default".into(),
                name: "dev_default".into(),
                external: false,
                aliases: vec!["web".into()]
            }]
        );
        let api = attachments(&tree, "dev", "api");
        assert_eq!(api[0].name, "dev_back");
        assert_eq!(api[0].aliases, vec!["api", "api-v1"]);
        assert_eq!(api[1].name, "company-net");
        assert!(api[1].external);
        assert!(attachments(&tree, "dev", "host").is_empty());
    }

    #[test]
    fn dollars_survive_a_second_interpolation() {
        let tree: Value = yaml_serde::from_str("a: 'pa$word'\nb: 1\n").unwrap();
        let out = to_compose_yaml(&tree);
        assert!(out.contains("pa$$word"), "{out}");
    }
}
