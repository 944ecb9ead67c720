//! The `portcullis` binary's `validate`, `audit verify` and `audit keygen` commands.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions: a panic is the failure report")]

use std::process::Command;

/// An empty scratch directory for test `name`.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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
    let sink = portcullis::plugin::audit::AuditSinks::default().open(Some(&file), &Default::default()).unwrap();
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

/// What a forger who can write the file but holds no key does: rewrites `from` into `to` and
/// rehashes every record after it, moving each checkpoint's `head` onto the new chain (its
/// signature it cannot redo).
fn rehash(text: &str, from: &str, to: &str) -> String {
    use sha2::{Digest, Sha256};
    const SUFFIX: usize = 9 + 64 + 10 + 64 + 2;
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for line in text.lines() {
        let body = &line[..line.len() - SUFFIX];
        let old_prev = &line[line.len() - SUFFIX + 9..line.len() - SUFFIX + 73];
        let mut record = format!("{body}}}").replacen(from, to, 1);
        if record.starts_with(r#"{"portcullis_audit":"checkpoint""#) {
            record = record.replace(old_prev, &prev);
        }
        let hash: String = Sha256::new()
            .chain_update(prev.as_bytes())
            .chain_update(record.as_bytes())
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.push_str(&format!(
            "{body},\"prev\":\"{prev}\",\"hash\":\"{hash}\"}}\n",
            body = &record[..record.len() - 1]
        ));
        prev = hash;
    }
    out
}

#[test]
fn audit_verify_with_the_public_key_finds_a_rehashed_forgery_and_a_cut_tail() {
    use portcullis::plugin::audit::{AuditSinks, Signing, SinkOptions};
    use portcullis::plugin::checkpoint::SigningKey;
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let dir = scratch("signed");
    let keygen = Command::new(bin).args(["audit", "keygen"]).arg(dir.join("audit")).output().unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let (private, public) = (dir.join("audit.key"), dir.join("audit.pub"));
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let again = Command::new(bin).args(["audit", "keygen"]).arg(dir.join("audit")).output().unwrap();
    assert!(!again.status.success(), "keygen never overwrites a key");

    let (file, exported) = (dir.join("audit.jsonl"), dir.join("checkpoints.jsonl"));
    let key =
        SigningKey::new(portcullis::config::SigningAlgorithm::Ed25519, &std::fs::read(&private).unwrap()).unwrap();
    let signing = Signing { key, interval: std::time::Duration::from_secs(3600), export: Some(exported.clone()) };
    let options = SinkOptions { signing: Some(signing), ..Default::default() };
    let sink = AuditSinks::default().open(Some(&file), &options).unwrap();
    for status in [200, 403] {
        sink.append(&format!("{{\"status\":{status}}}")).unwrap();
    }
    sink.seal().unwrap();
    sink.append("{\"status\":200}").unwrap();
    drop(sink); // shutdown seals the last record with a second checkpoint
    let verify = |extra: &[&std::path::Path]| {
        let mut command = Command::new(bin);
        command.args(["audit", "verify"]).arg(&file);
        for (flag, path) in ["--key", "--checkpoints"].iter().zip(extra) {
            command.arg(flag).arg(path);
        }
        let output = command.output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (code, stdout) = verify(&[&public, &exported]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("2 checkpoints verified; the last covers 4 records; 0 records after it"), "{stdout}");
    assert!(stdout.contains("holds the 4 records of the checkpoint exported at"), "{stdout}");

    let original = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, rehash(&original, "\"status\":403", "\"status\":200")).unwrap();
    let (code, stdout) = verify(&[]);
    assert_eq!(code, Some(0), "a rehashed chain holds without the key: {stdout}");
    let (code, stdout) = verify(&[&public]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("record 3 (line 3): checkpoint: the signature does not verify"), "{stdout}");

    let lines: Vec<&str> = original.lines().collect();
    std::fs::write(&file, format!("{}\n", lines[..3].join("\n"))).unwrap();
    let (code, stdout) = verify(&[&public]);
    assert_eq!(code, Some(0), "a cut after a checkpoint looks whole in the file alone: {stdout}");
    let (code, stdout) = verify(&[&public, &exported]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("record 4 (line 4): missing") && stdout.contains("its tail was cut"), "{stdout}");

    // A key file that holds no usable key is refused, not treated as a key that fails.
    std::fs::write(&file, &original).unwrap();
    std::fs::write(dir.join("short"), "too short").unwrap();
    assert_eq!(verify(&[&dir.join("short")]).0, Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plugin_sign_and_verify_agree_with_each_other_and_refuse_a_changed_file() {
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let dir = scratch("sign");
    let run = |args: &[&std::ffi::OsStr]| {
        let output = Command::new(bin).args(args).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let path = |name: &str| dir.join(name).into_os_string();
    assert_eq!(run(&["audit".as_ref(), "keygen".as_ref(), &path("release")]).0, Some(0));
    // The smallest component: its preamble alone.
    std::fs::write(dir.join("p.wasm"), [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]).unwrap();
    let verify = |extra: &[&std::ffi::OsStr]| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["plugin".as_ref(), "verify".as_ref()];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (key, public, wasm, sig) = (path("release.key"), path("release.pub"), path("p.wasm"), path("p.sig"));
    let (code, stdout) = verify(&["--key".as_ref(), &public, &wasm]);
    assert_eq!(code, Some(1), "unsigned: {stdout}");
    assert!(stdout.contains("not signed"), "{stdout}");
    let sign = |extra: &[&std::ffi::OsStr]| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["plugin".as_ref(), "sign".as_ref(), "--key".as_ref(), &key];
        args.extend_from_slice(extra);
        run(&args).0
    };
    assert_eq!(sign(&["--detached".as_ref(), &sig, &wasm]), Some(0));
    let (code, stdout) = verify(&["--key".as_ref(), &public, "--signature".as_ref(), &sig, &wasm]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("signed by") && stdout.contains("release.pub"), "{stdout}");
    assert_eq!(sign(&[&wasm]), Some(0));
    assert_eq!(verify(&["--key".as_ref(), &public, &wasm]).0, Some(0), "embedded, in place");
    let mut changed = std::fs::read(dir.join("p.wasm")).unwrap();
    changed.extend_from_slice(&[0x00, 0x02, 0x01, b'x']);
    std::fs::write(dir.join("p.wasm"), changed).unwrap();
    let (code, stdout) = verify(&["--key".as_ref(), &public, &wasm]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("does not verify"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
