//! The fuzz targets' properties (tests/src/fuzz.rs) as a deterministic test: every input of the
//! stored corpus (`fuzz/corpus/<target>/`, seeds plus every crash `cargo fuzz` found, kept as
//! regression inputs) and a fixed set of mutations of it (byte flips, truncations, insertions,
//! splices, from a seeded generator), so CI checks the parsers without cargo-fuzz or nightly.

use std::path::PathBuf;

/// Mutations per corpus input.
const MUTATIONS: usize = 3000;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// xorshift64*: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.truncate(rng.below(v.len() + 1)),
            2 => {
                let i = rng.below(v.len() + 1);
                let b =
                    [0u8, 0xff, b'"', b'\\', b'\n', b'\r', b'.', b':', b' ', 0x80][rng.below(10)];
                v.insert(i, b);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            4 => {
                let cut = rng.below(other.len() + 1);
                let at = rng.below(v.len() + 1);
                v.splice(at..at, other[..cut].iter().copied());
            }
            _ => {
                let i = rng.below(v.len() + 1);
                let j = i + rng.below(v.len() - i + 1);
                let chunk = v[i..j].to_vec();
                v.splice(j..j, chunk);
            }
        }
    }
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn every_fuzz_target_holds_on_its_corpus_and_its_mutations() {
    for (target, check) in tests::fuzz::TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "no corpus for {target}");
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
        for (k, (name, input)) in inputs.iter().enumerate() {
            let other = &inputs[(k + 1) % inputs.len()].1;
            let cases = std::iter::once(input.clone())
                .chain((0..MUTATIONS).map(|_| mutate(&mut rng, input, other)))
                .collect::<Vec<_>>();
            for case in cases {
                let r = std::panic::catch_unwind(|| check(&case));
                assert!(
                    r.is_ok(),
                    "{target}: input derived from {name} fails: {}",
                    hex(&case)
                );
            }
        }
    }
}
