//! Merging several `-f` files into one project tree, as compose merges them: mappings merge
//! key by key, later files win for scalars and most lists; `ports`, `expose`, `dns`,
//! `dns_search`, `external_links`, `tmpfs`, `cap_add`, `cap_drop` and `devices` are
//! concatenated; `environment`, `labels`, `extra_hosts`, `sysctls` and `build.args` merge as
//! maps (list or map form); `volumes` of a service merge by their target path.

use yaml_serde::{Mapping, Value};

/// Service keys whose lists are concatenated (duplicates dropped).
const CONCAT: [&str; 8] = [
    "ports",
    "expose",
    "dns",
    "dns_search",
    "external_links",
    "tmpfs",
    "cap_add",
    "cap_drop",
];
/// Service keys that hold `KEY=VALUE` lists or maps.
const MAP_LIKE: [&str; 5] = ["environment", "labels", "extra_hosts", "sysctls", "args"];
/// Service keys the later file replaces as a whole.
const REPLACE: [&str; 3] = ["command", "entrypoint", "healthcheck"];

/// Merges the file tree `over` into `base`.
pub fn merge_files(base: &mut Value, over: Value) {
    let Value::Mapping(over) = over else {
        return;
    };
    if !base.is_mapping() {
        *base = Value::Mapping(Mapping::new());
    }
    let b = base.as_mapping_mut().expect("mapping");
    for (k, v) in over {
        if k.as_str() == Some("services") {
            let services = b.entry(k).or_insert_with(|| Value::Mapping(Mapping::new()));
            merge_services(services, v);
        } else {
            match b.get_mut(&k) {
                Some(existing) => deep_merge(existing, v),
                None => {
                    b.insert(k, v);
                }
            }
        }
    }
}

fn merge_services(base: &mut Value, over: Value) {
    let (Some(b), Value::Mapping(o)) = (base.as_mapping_mut(), over) else {
        return;
    };
    for (name, svc) in o {
        match b.get_mut(&name) {
            Some(existing) => merge_service(existing, svc),
            None => {
                b.insert(name, svc);
            }
        }
    }
}

/// Merges one service definition into another.
pub fn merge_service(base: &mut Value, over: Value) {
    let (Some(b), Value::Mapping(o)) = (base.as_mapping_mut(), over.clone()) else {
        *base = over;
        return;
    };
    for (k, v) in o {
        let key = k.as_str().unwrap_or_default().to_string();
        let Some(existing) = b.get_mut(&k) else {
            b.insert(k, v);
            continue;
        };
        if CONCAT.contains(&key.as_str()) {
            concat(existing, v);
        } else if MAP_LIKE.contains(&key.as_str()) {
            merge_map_like(existing, v);
        } else if key == "volumes" {
            merge_volumes(existing, v);
        } else if key == "build" {
            merge_build(existing, v);
        } else if REPLACE.contains(&key.as_str()) {
            *existing = v;
        } else {
            deep_merge(existing, v);
        }
    }
}

fn merge_build(base: &mut Value, over: Value) {
    match (base.as_mapping_mut(), over) {
        (Some(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match (k.as_str() == Some("args"), b.get_mut(&k)) {
                    (true, Some(existing)) => merge_map_like(existing, v),
                    (_, Some(existing)) => *existing = v,
                    (_, None) => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (_, o) => *base = o,
    }
}

/// Mappings merge key by key (later wins); anything else is replaced.
pub fn deep_merge(base: &mut Value, over: Value) {
    match (base.as_mapping_mut(), over) {
        (Some(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (_, o) => *base = o,
    }
}

fn concat(base: &mut Value, over: Value) {
    match (base.as_sequence_mut(), over) {
        (Some(b), Value::Sequence(o)) => {
            for item in o {
                if !b.contains(&item) {
                    b.push(item);
                }
            }
        }
        (_, o) => *base = o,
    }
}

/// `[K=V, K2]` or `{K: V}` as a mapping (`K2` without a value maps to null).
pub fn to_map(v: &Value) -> Mapping {
    match v {
        Value::Mapping(m) => m.clone(),
        Value::Sequence(s) => s
            .iter()
            .filter_map(|item| {
                let text = crate::model::scalar_text(item)?;
                Some(match text.split_once('=') {
                    Some((k, v)) => (Value::String(k.into()), Value::String(v.into())),
                    None => (Value::String(text), Value::Null),
                })
            })
            .collect(),
        _ => Mapping::new(),
    }
}

fn merge_map_like(base: &mut Value, over: Value) {
    let mut b = to_map(base);
    for (k, v) in to_map(&over) {
        b.insert(k, v);
    }
    *base = Value::Mapping(b);
}

/// The container path a service volume entry mounts at (`src:dst[:mode]`, or `target:`).
fn volume_target(v: &Value) -> Option<String> {
    crate::volumes::entry(v).map(|e| e.target)
}

fn merge_volumes(base: &mut Value, over: Value) {
    let (Some(b), Value::Sequence(o)) = (base.as_sequence_mut(), over.clone()) else {
        *base = over;
        return;
    };
    for item in o {
        let target = volume_target(&item);
        match b
            .iter_mut()
            .find(|x| target.is_some() && volume_target(x) == target)
        {
            Some(existing) => *existing = item,
            None => b.push(item),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Value {
        yaml_serde::from_str(s).unwrap()
    }

    #[test]
    fn override_file_merges_like_compose() {
        let mut base = y(r"
services:
  web:
    image: web:1
    command: [serve, a]
    ports: ['8080:8080']
    environment: [A=1, B=2]
    volumes: ['./src:/app', 'data:/data']
    x-tele: {type: connect}
x-other: {keep: me}
");
        let over = y(r"
services:
  web:
    image: web:2
    command: [serve, b]
    ports: ['9090:9090']
    environment: {B: three, C: '4'}
    volumes: ['./other:/app']
  cache:
    image: cache
");
        merge_files(&mut base, over);
        let want = y(r"
services:
  web:
    image: web:2
    command: [serve, b]
    ports: ['8080:8080', '9090:9090']
    environment: {A: '1', B: three, C: '4'}
    volumes: ['./other:/app', 'data:/data']
    x-tele: {type: connect}
  cache:
    image: cache
x-other: {keep: me}
");
        assert_eq!(base, want);
    }

    #[test]
    fn env_list_entries_without_value_map_to_null() {
        let m = to_map(&y("[A=1, B, C=x=y]"));
        assert_eq!(m.get("A"), Some(&Value::String("1".into())));
        assert_eq!(m.get("B"), Some(&Value::Null));
        assert_eq!(m.get("C"), Some(&Value::String("x=y".into())));
    }
}
