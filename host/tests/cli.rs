//! The `portcullis` binary's `validate` and `audit verify` commands.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions: a panic is the failure report")]

use std::process::Command;

fn validate(config: &str) -> std::process::Output {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, config).unwrap();
    let output =
        Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["validate", "--config"]).arg(&file).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    output
}

#[test]
fn validate_names_a_misspelt_field_and_fails() {
    let output = validate(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[upstream.app]\nendpoints = [\"127.0.0.1:9\"]\n\n[[route]]\nid = \"a\"\npath_prefx = \"/a/\"\nupstream = \"app\"\n",
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gateway.toml: route[0].path_prefx (line 9): unknown field `path_prefx`"), "{stderr}");
}

#[test]
fn validate_lists_every_semantic_problem() {
    let output = validate(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nid = \"a\"\npath_prefix = \"/a/\"\nupstream = \"nowhere\"\n\n[[route.chain]]\nplugin = \"ghost\"\n",
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("route[0].upstream: no [upstream.nowhere] is defined"), "{stderr}");
    assert!(stderr.contains("route[0].chain[0].plugin: no [plugin.ghost] is defined"), "{stderr}");
}

#[test]
fn validate_accepts_a_plugin_free_configuration() {
    let output = validate(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[upstream.app]\nendpoints = [\"127.0.0.1:9\"]\n\n[[route]]\nid = \"a\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration is valid (1 routes, 0 plugins)"));
}

#[test]
fn audit_verify_accepts_an_intact_chain_and_names_the_first_broken_record() {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("audit.jsonl");
    let sink = portcullis::plugin::audit::AuditSinks::default().open(Some(&file)).unwrap();
    for status in [200, 403, 200] {
        sink.append(&format!("{{\"status\":{status}}}")).unwrap();
    }
    sink.flush().unwrap();
    let verify =
        || Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["audit", "verify"]).arg(&file).output().unwrap();
    let intact = verify();
    assert!(intact.status.success(), "{intact:?}");
    assert!(String::from_utf8_lossy(&intact.stdout).contains("intact, 3 records"));
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("403", "200", 1)).unwrap();
    let broken = verify();
    assert!(!broken.status.success());
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert!(stdout.contains("record 2 (line 2)") && stdout.contains("was changed"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
