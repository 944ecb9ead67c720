//! Encodes each plugin kind's world (`auth-plugin`, `rate-limit-plugin`, …) from `../wit` as a
//! `component-type` custom section payload, the format wit-bindgen embeds in guest binaries.
//!
//! Why: the SDK's one `generate!` covers the `gateway` world, whose bindings embed only the
//! imports; each `export_*!` macro then embeds its kind's world from here, so `wasm-component-ld`
//! builds a component exporting exactly that kind.

use std::path::PathBuf;

const KIND_WORLDS: [&str; 5] =
    ["auth-plugin", "rate-limit-plugin", "validation-plugin", "logging-plugin", "filter-plugin"];

fn main() {
    let wit = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_path(&wit).unwrap_or_else(|e| panic!("parsing {}: {e:#}", wit.display()));
    for world in KIND_WORLDS {
        let id = resolve.select_world(&[package], Some(world)).unwrap_or_else(|e| panic!("world {world}: {e:#}"));
        let bytes = wit_component::metadata::encode(&resolve, id, wit_component::StringEncoding::UTF8, None)
            .unwrap_or_else(|e| panic!("encoding world {world}: {e:#}"));
        std::fs::write(out.join(format!("{world}.component-type")), bytes).expect("writing OUT_DIR");
    }
}
