//! The properties the fuzz targets check (`fuzz/fuzz_targets/`, run with `cargo fuzz`), one
//! function per parser that faces the network or the user's input: each takes arbitrary bytes
//! and panics when the parser crashes or breaks its contract. tests/tests/fuzz_corpus.rs runs
//! them on the stored corpus (`fuzz/corpus/<target>/`) and on deterministic mutations of it, so
//! CI checks them without cargo-fuzz.

use cli::envfile::{render, EnvSyntax};
use daemon_image::dns::{decide, Decision};
use protocol::tunnel::{encode_header, read_header, HeaderError};
use std::collections::BTreeMap;

/// A fuzz target: its corpus folder's name and the property it checks on one input.
pub type Target = (&'static str, fn(&[u8]));

/// The targets, by the name of their corpus folder.
pub const TARGETS: &[Target] = &[
    ("tunnel_header", tunnel_header),
    ("http_sniff", http_sniff),
    ("dns", dns),
    ("envfile", envfile),
    ("compose", compose),
];

/// The tunnel header codec (protocol/src/tunnel.rs): reading never panics nor reads past the
/// header bound, a header read re-encodes to one that reads back equal, and an error's wire
/// text parses back to a variant that prints the same text.
pub fn tunnel_header(data: &[u8]) {
    let mut r = data;
    if let Ok((role, h)) = futures::executor::block_on(read_header(&mut r)) {
        assert!(data.len() - r.len() <= 7 + protocol::tunnel::MAX_HEADER);
        let again = encode_header(role, &h);
        let mut r2 = &again[..];
        let (role2, h2) = futures::executor::block_on(read_header(&mut r2)).expect("re-read");
        assert_eq!((role2, &h2), (role, &h));
    }
    let text = String::from_utf8_lossy(data);
    assert_eq!(HeaderError::parse(&text).to_string(), text);
}

/// The agent's HTTP sniffer (agent/src/http_sniff.rs): never panics, and its decision is final
/// (once a prefix decides, every longer input decides the same).
pub fn http_sniff(data: &[u8]) {
    use agent::http_sniff::{sniff, sniff_stalled, Sniff};
    let whole = sniff(data);
    let mut decided = None;
    for i in 0..=data.len().min(agent::http_sniff::MAX_SNIFF + 1) {
        let s = sniff(&data[..i]);
        if let Some(d) = decided {
            assert_eq!(s, d, "the decision changed after {i} bytes");
        } else if s != Sniff::NeedMore {
            decided = Some(s);
        }
    }
    if let Some(d) = decided {
        assert_eq!(whole, d);
    }
    assert_ne!(sniff_stalled(data), Sniff::NeedMore);
}

/// The daemon's DNS server (daemon-image/src/dns.rs `decide`): never panics on any datagram,
/// and whatever it answers at once is a response to the query's id.
pub fn dns(data: &[u8]) {
    let subnets = ["10.96.0.0/12".parse().expect("cidr")];
    match decide(data, "shop", "cluster.local", &subnets) {
        Decision::Drop => {}
        Decision::Reply(bytes) => {
            let m = hickory_proto::op::Message::from_vec(&bytes).expect("a reply parses");
            assert_eq!(
                m.metadata.message_type,
                hickory_proto::op::MessageType::Response
            );
            if data.len() >= 2 {
                assert_eq!(m.metadata.id, u16::from_be_bytes([data[0], data[1]]));
            }
        }
        Decision::Route { .. } => {}
    }
    let name = String::from_utf8_lossy(data);
    let _ = daemon_image::dns::classify(&name, "shop", "cluster.local", &subnets);
}

/// The env-file writer (cli/src/envfile.rs): the input is `key NUL value` (or just a value of
/// `KEY`); every syntax either refuses the variable or renders it, and the readers we can run
/// here read back exactly the value: dotenvy for `compose`, docker's literal `K=V` for `docker`,
/// JSON for `json`.
pub fn envfile(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (key, value) = text.split_once('\0').unwrap_or(("KEY", &text));
    let env = BTreeMap::from([(key.to_string(), value.to_string())]);
    for syntax in EnvSyntax::ALL {
        let Ok(out) = render(&env, syntax) else {
            continue;
        };
        match syntax {
            EnvSyntax::Compose => {
                let back: BTreeMap<String, String> = dotenvy::from_read_iter(out.as_bytes())
                    .map(|r| r.expect("dotenvy reads what compose syntax wrote"))
                    .collect();
                assert_eq!(back, env, "{out:?}");
            }
            EnvSyntax::Docker => {
                let line = out.strip_suffix('\n').expect("one line");
                assert!(!line.contains('\n'));
                assert_eq!(line.split_once('='), Some((key, value)));
            }
            EnvSyntax::Json => {
                let back: BTreeMap<String, String> = serde_json::from_str(&out).expect("json");
                assert_eq!(back, env);
            }
            _ => assert!(out.ends_with('\n')),
        }
    }
}

/// The compose reader (compose/src/interpolate.rs, compose/src/xtele.rs): any text as a compose
/// file is interpolated and its `x-tele` read without panicking; every error names the file,
/// and a `$$` always stands for one literal `$`.
pub fn compose(data: &[u8]) {
    use std::collections::BTreeSet;
    let text = String::from_utf8_lossy(data);
    let lookup = |k: &str| (k == "SET").then(|| "value".to_string());
    let mut unset = BTreeSet::new();
    if let Ok(out) = compose::interpolate::interpolate_str(&text, &lookup, &mut unset) {
        let escaped = text.replace('$', "$$");
        let mut none = BTreeSet::new();
        assert_eq!(
            compose::interpolate::interpolate_str(&escaped, &lookup, &mut none).as_deref(),
            Ok(text.as_ref()),
            "$$ is a literal $"
        );
        let _ = out;
    }
    let Ok(mut tree) = yaml_serde::from_str::<yaml_serde::Value>(&text) else {
        return;
    };
    if !tree.is_mapping() {
        return;
    }
    let file = std::path::PathBuf::from("/fuzz/compose.yaml");
    if compose::interpolate::interpolate_tree(&mut tree, &lookup, &mut unset).is_err() {
        return;
    }
    let origin = tree
        .get("services")
        .and_then(|v| v.as_mapping())
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(|k| (k.to_string(), file.clone())))
                .chain([(String::new(), file.clone())])
                .collect()
        })
        .unwrap_or_default();
    let project = compose::project::Project {
        name: "fuzz".into(),
        dir: "/fuzz".into(),
        files: vec![file],
        tree,
        tele_origin: origin,
        unset,
    };
    if let Err(e) = compose::xtele::Tele::read(&project) {
        assert!(e.to_string().contains("compose.yaml"), "{e}");
    }
}
