//! Configuration refusals that need real plugins, and the quickstart example staying valid.

use portcullis::config;
use portcullis::snapshot::Snapshot;
use portcullis_e2e::{config as gateway_config, engine, plugin, root, route, write_config};

/// A listener and an upstream, nothing else.
const MINIMAL: &str = "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[upstream.app]\nendpoints = [\"127.0.0.1:9\"]\n";

async fn build(toml: &str) -> Result<Snapshot, String> {
    let (_dir, file) = write_config(toml);
    let loaded = config::load(&file).map_err(|e| e.to_string())?;
    Snapshot::build(&loaded, &engine()).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_example_is_valid() {
    let file = root().join("examples/quickstart/portcullis.toml");
    let loaded = config::load(&file).unwrap();
    let snapshot = Snapshot::build(&loaded, &engine()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.routes.len(), 3);
    assert_eq!(snapshot.plugins.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_refusing_its_step_config_is_reported_with_the_field() {
    let routes = route(
        "api",
        "/api/",
        &[("jwt", Some(r#"{ issuer = "x", keys = [{ alg = "HS256", secret = "too-short" }] }"#))],
    );
    let error = build(&gateway_config("127.0.0.1:9".parse().unwrap(), &routes)).await.unwrap_err();
    assert!(error.contains("route[0].chain[0].config/keys/0/secret"), "{error}");
    assert!(error.contains("refused by plugin `jwt`"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_without_the_configured_kind_is_refused() {
    let toml = format!("{MINIMAL}\n[plugin.confused]\npath = \"{}\"\nkind = \"auth\"\n", plugin("rbac").display());
    let error = build(&toml).await.unwrap_err();
    assert!(error.contains("plugin.confused.path"), "{error}");
    assert!(error.contains("does not export"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_invalid_plugin_files_are_refused() {
    let (dir, _) = write_config("");
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let toml = format!(
        r#"{MINIMAL}
[plugin.missing]
path = "/nonexistent/plugin.wasm"
kind = "auth"

[plugin.junk]
path = "{}"
kind = "auth"
"#,
        junk.display()
    );
    let error = build(&toml).await.unwrap_err();
    assert!(error.contains("plugin.missing.path: cannot read"), "{error}");
    assert!(error.contains("plugin.junk.path") && error.contains("not a valid component"), "{error}");
}
