//! Builds every first-party plugin and every test guest for `wasm32-wasip2` (profile `plugin`)
//! in one cargo invocation, as wasmtime's `crates/test-programs` builds its guests, and tells
//! the tests where the components are (`PORTCULLIS_PLUGIN_DIR`).
//!
//! It shares the workspace's target directory, so the quickstart's plugin build and this one
//! reuse each other's artifacts. Needs the `wasm32-wasip2` target (`rustup target add
//! wasm32-wasip2`, which `.ci/run` does).

use std::path::PathBuf;
use std::process::Command;

/// Packages built for the tests: the plugins of `plugins/` and the guests of `tests/guests/`.
const PACKAGES: [&str; 13] = [
    "jwt-auth",
    "audit-log",
    "rate-limit",
    "rbac",
    "api-key-auth",
    "request-validation",
    "oauth2-introspection",
    "mtls-auth",
    "chaos-filter",
    "socket-filter",
    "tag-filter-a",
    "tag-filter-b",
    "legacy-filter",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("tests/ lives in the workspace root").to_path_buf();
    for dir in ["plugins", "sdk", "wit", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let dir = target_dir.join("wasm32-wasip2").join("plugin");
    println!("cargo:rustc-env=PORTCULLIS_PLUGIN_DIR={}", dir.display());
    // `cargo clippy` only checks the tests, which run nothing: the components are not needed,
    // and building them under clippy's environment would rebuild them for the next test run.
    println!("cargo:rerun-if-env-changed=RUSTC_WORKSPACE_WRAPPER");
    let wrapper = std::env::var_os("RUSTC_WORKSPACE_WRAPPER").map(PathBuf::from);
    if wrapper.is_some_and(|w| w.file_stem().is_some_and(|s| s.to_string_lossy().starts_with("clippy-driver"))) {
        return;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&root)
        .args(["build", "--profile", "plugin", "--target", "wasm32-wasip2"])
        .args(PACKAGES.iter().flat_map(|p| ["-p", p]))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    let status = build.status().expect("running cargo to build the test plugins");
    assert!(
        status.success(),
        "building the plugins for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );
}
