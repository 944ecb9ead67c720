//! Replays each cargo-fuzz target's seed corpus (`fuzz/corpus/<target>/`) through the same
//! entry points the fuzzer drives (`portcullis::fuzzing`), then a bounded number of
//! deterministic mutations of every seed (byte flips, insertions of tokens that matter to the
//! target, truncations, splices), so the invariants are exercised on every `cargo test` without
//! a nightly toolchain. A failure prints the input as Rust bytes to add to the corpus.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions: a panic is the failure report")]

use std::path::PathBuf;

/// Mutations per seed.
const ROUNDS: usize = 300;

/// A small deterministic generator (SplitMix64), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "{} has no seeds", dir.display());
    seeds
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let token = tokens[rng.below(tokens.len())];
                out.splice(at..at, token.iter().copied());
            }
            2 => out.truncate(at),
            3 if !other.is_empty() => {
                let from = rng.below(other.len());
                let to = (from + rng.below(32)).min(other.len());
                out.splice(at..at, other[from..to].iter().copied());
            }
            _ => {
                let end = (at + rng.below(8)).min(out.len());
                out.drain(at..end);
            }
        }
    }
    out
}

fn run(target: &str, entry: fn(&[u8]), tokens: &[&[u8]]) {
    let seeds = seeds(target);
    let mut rng = Rng(0x5eed_0000 + target.len() as u64);
    let check = |name: &str, input: &[u8]| {
        if std::panic::catch_unwind(|| entry(input)).is_err() {
            panic!("{target}: invariant broken on {name}; input bytes: {input:?}");
        }
    };
    for (name, seed) in &seeds {
        check(name, seed);
    }
    for (i, (name, seed)) in seeds.iter().enumerate() {
        let other = &seeds[(i + 1) % seeds.len()].1;
        for round in 0..ROUNDS {
            let input = mutate(&mut rng, seed, other, tokens);
            check(&format!("{name} mutation {round}"), &input);
        }
    }
}

#[test]
fn config_corpus_keeps_its_invariants() {
    run(
        "config",
        portcullis::fuzzing::config,
        &[
            b"[[route]]\n",
            b"[listener.tls]\n",
            b"\"",
            b"=",
            b"\n",
            b"{ \"$file\" = \"x\" }",
            b"[",
            b"]",
            b"0",
            b"-1",
            b"99999999999999999999",
            b"\"/\"",
            b"path_prefix = ",
            b"\\u0000",
        ],
    );
}

#[test]
fn routing_corpus_keeps_its_invariants() {
    run(
        "routing",
        portcullis::fuzzing::routing,
        &[
            b"/", b"..", b".", b"%2e", b"%2E", b"%2f", b"%5c", b"%", b"//", b"admin", b"%61", b"\\", b"%00", b"?",
            b"#", b"%C3%A4",
        ],
    );
}

#[test]
fn plugin_output_corpus_keeps_its_invariants() {
    run(
        "plugin_output",
        portcullis::fuzzing::plugin_output,
        &[
            b"\xff",
            b"\r\n",
            b"\0",
            b"content-length",
            b"host",
            b"connection",
            b"x-user-id",
            b"transfer-encoding",
            b" ",
            b":",
            b"upgrade",
            b"\x00\xc8",
            b"\x01\xf4",
        ],
    );
}

#[test]
fn signature_keys_corpus_keeps_its_invariants() {
    run(
        "signature_keys",
        portcullis::fuzzing::signature_keys,
        &[
            b"\"kty\":\"RSA\"",
            b"\"kty\":\"EC\"",
            b"\"crv\":\"P-384\"",
            b"\"alg\":\"ES256\"",
            b"\"use\":\"enc\"",
            b"\"n\":\"AQAB\"",
            b"\"e\":\"\"",
            b"AAAA",
            b"=",
            b"-----BEGIN PUBLIC KEY-----\n",
            b"-----END PUBLIC KEY-----\n",
            b"-----BEGIN RSA PUBLIC KEY-----\n",
            b"\x00",
            b"\xff",
        ],
    );
}
