//! The audit sink end to end: the real gateway with the audit-log plugin writing its hash
//! chain, a torn last line left by a crash, a rotation by `mv` and `POST /reload`, a full
//! disk, signed checkpoints exported off the box, and fail-closed audit steps.

use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use portcullis::plugin::audit::{AuditSinks, verify, verify_signed};
use portcullis::plugin::checkpoint::{self, Checkpoint, VerifyingKey};
use portcullis_e2e::{
    TestGateway, config, config_with, echo_upstream, get, metric, plugin, route, scrape, send, write_config,
};

/// Records and last hash of the chain in `path`, which must be intact.
fn intact(path: &Path) -> (u64, String) {
    let file = std::io::BufReader::new(std::fs::File::open(path).expect("the audit file"));
    verify(file).expect("readable").unwrap_or_else(|broken| panic!("{}: {broken}", path.display()))
}

/// Lines of `path` marked by the host (`portcullis_audit`), by kind.
fn host_records(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["portcullis_audit"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_line_no_longer_stops_the_start_and_the_chain_records_the_repair() {
    let text = config(echo_upstream().await, &route("audited", "/", &[("audit", None)]));
    let (dir, file) = write_config(&text);
    // A chain of one record, then half a record: a crash or a full disk mid-write.
    let audit = dir.join("audit.jsonl");
    let sink = AuditSinks::default().open(Some(&audit), &Default::default()).unwrap();
    sink.append(r#"{"before":"crash"}"#).unwrap();
    sink.flush().unwrap();
    drop(sink);
    let whole = std::fs::read_to_string(&audit).unwrap();
    std::fs::write(&audit, format!("{whole}{{\"status\":200,\"prev\":\"9f")).unwrap();

    let gw = TestGateway::start_file(&file).await;
    assert_eq!(get(&gw.url("/x"), &[("x-request-id", "after-crash")]).await.status, 200);
    let records = gw.audit_records(3).await;
    assert!(records.iter().any(|r| r["request_id"] == "after-crash"), "{records:?}");
    assert_eq!(intact(&audit).0, 3, "the old record, the recovery, the new exchange");
    assert_eq!(host_records(&audit), ["recovered"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_audit_file_is_reopened_on_reload_and_the_chain_carries_across() {
    let gw = TestGateway::start(&config(echo_upstream().await, &route("audited", "/", &[("audit", None)]))).await;
    let audit = gw.dir().join("audit.jsonl");
    let rotated = gw.dir().join("audit.jsonl.1");
    assert_eq!(get(&gw.url("/x"), &[("x-request-id", "before-rotation")]).await.status, 200);
    gw.audit_records(1).await;
    std::fs::rename(&audit, &rotated).unwrap();
    // logrotate's `postrotate`: tell the gateway (SIGHUP does the same).
    let reload = http::Request::post(format!("http://{}/reload", gw.admin)).body(Full::<Bytes>::default()).unwrap();
    assert_eq!(send(reload).await.status, 200);
    assert_eq!(get(&gw.url("/x"), &[("x-request-id", "after-rotation")]).await.status, 200);
    let records = gw.audit_records(2).await;
    assert!(records.iter().any(|r| r["request_id"] == "after-rotation"), "the new file gets new records: {records:?}");
    let (old_count, old_last) = intact(&rotated);
    assert_eq!(old_count, 1, "the rotated file holds the record before the rotation");
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&audit).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["portcullis_audit"].as_str(), first["prev"].as_str()),
        (Some("continued"), Some(old_last.as_str()))
    );
    assert_eq!(intact(&audit).0, 2);

    let status = get(&format!("http://{}/status", gw.admin), &[]).await.json();
    let sink = status["audit_sinks"].as_array().unwrap().iter().find(|s| s["sink"] == audit.display().to_string());
    let sink = sink.unwrap_or_else(|| panic!("{status}"));
    assert_eq!((sink["written"].as_u64(), sink["failed"].as_u64()), (Some(2), Some(0)), "{sink}");
    let labels = format!("sink=\"{}\",result=\"written\"", audit.display());
    assert!(metric(&scrape(&gw).await, "portcullis_audit_records_total", &labels).is_some_and(|n| n >= 2.0));
    gw.stop().await;
}

/// A 64 KiB tmpfs mounted for one test and unmounted when dropped (lazily, even after a panic).
struct TinyDisk(std::path::PathBuf);

impl TinyDisk {
    /// Mounts it, or `None` where mounting is not permitted (not root).
    fn mount() -> Option<TinyDisk> {
        let dir = std::env::temp_dir().join(format!("portcullis-tinyfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| TinyDisk(dir))
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The `audit_sinks` entry of `/status` for `path`.
async fn sink_status(gw: &TestGateway, path: &Path) -> serde_json::Value {
    let status = get(&format!("http://{}/status", gw.admin), &[]).await.json();
    let sinks = status["audit_sinks"].as_array().cloned().unwrap_or_default();
    sinks.into_iter().find(|s| s["sink"] == path.display().to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_records_countably_and_the_chain_resumes_with_a_gap_record() {
    let Some(disk) = TinyDisk::mount() else {
        let root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
        assert!(!root, "running as root, mounting a 64 KiB tmpfs must work");
        println!("skipped: mounting a tmpfs needs root");
        return;
    };
    // The configuration, and so `audit.jsonl` beside it, on the tiny disk.
    let file = disk.0.join("gateway.toml");
    std::fs::write(&file, config(echo_upstream().await, &route("audited", "/", &[("audit", None)]))).unwrap();
    let gw = TestGateway::start_file(&file).await;
    let audit = disk.0.join("audit.jsonl");
    assert_eq!(get(&gw.url("/x"), &[("x-request-id", "before-full")]).await.status, 200);
    gw.audit_records(1).await;
    // Fill the disk.
    let filler = disk.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[b'x'; 512]).is_ok() {}
    }
    // The audit file's last page may still take a record or two; then writes fail.
    let failed_count = || async { sink_status(&gw, &audit).await["failed"].as_u64().unwrap_or(0) };
    let mut sent = 0;
    while failed_count().await == 0 {
        assert!(sent < 200, "no append failed on a full disk: {}", sink_status(&gw, &audit).await);
        let reply = get(&gw.url("/x"), &[("x-request-id", &format!("while-full-{sent}"))]).await;
        assert_eq!(reply.status, 200, "a fail-open logging step never fails the request");
        sent += 1;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for i in 0..3 {
        assert_eq!(get(&gw.url("/x"), &[("x-request-id", &format!("still-full-{i}"))]).await.status, 200);
    }
    let mut failed = 0;
    for _ in 0..100 {
        failed = failed_count().await;
        if failed >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(failed >= 4, "{}", sink_status(&gw, &audit).await);
    let written_before = sink_status(&gw, &audit).await["written"].as_u64().unwrap();
    let labels = format!("sink=\"{}\",result=\"failed\"", audit.display());
    assert_eq!(metric(&scrape(&gw).await, "portcullis_audit_records_total", &labels), Some(failed as f64));
    // Every record in the file is whole: the exchanges written, and the host's gap records
    // (a write that fails after an earlier failure was recovered from).
    let (before, _) = intact(&audit);
    let gaps_before = host_records(&audit).len() as u64;
    assert_eq!(before - gaps_before, written_before, "nothing half-written stays behind");
    // Space returns: the chain resumes, saying what it lost.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(get(&gw.url("/x"), &[("x-request-id", "after-full")]).await.status, 200);
    let records = gw.audit_records(usize::try_from(before).unwrap() + 2).await;
    assert!(records.iter().any(|r| r["request_id"] == "after-full"), "{records:?}");
    let lost: u64 =
        records.iter().filter(|r| r["portcullis_audit"] == "gap").filter_map(|r| r["lost_records"].as_u64()).sum();
    assert_eq!(lost, failed, "the gap records account for every lost record: {records:?}");
    assert_eq!(intact(&audit).0, before + 2, "a gap record, then the new exchange");
    assert!(sink_status(&gw, &audit).await["last_error"].is_null());
    gw.stop().await;
    drop(disk);
}

/// A `[plugin.ID]` table running the audit-log plugin, with `lines` (TOML) added to it.
fn audit_plugin(id: &str, lines: &str) -> String {
    let path = plugin("audit_log");
    format!("\n[plugin.{id}]\npath = \"{}\"\nkind = \"logging\"\ncapabilities = [\"audit\"]\n{lines}\n", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_trail_exports_checkpoints_that_find_a_cut_tail() {
    // Kept apart from the gateway's directory, which `stop` removes.
    let (keep, _) = write_config("");
    let (private, public) = checkpoint::generate().unwrap();
    let key_file = keep.join("audit.key");
    std::fs::write(&key_file, &private).unwrap();
    let (audit, exported) = (keep.join("signed.jsonl"), keep.join("signed.checkpoints.jsonl"));
    let extra = format!(
        "[secret.audit-signing]\nfile = \"{key}\"\n{plugin}\n[plugin.signed.audit_signing]\nalgorithm = \"ed25519\"\n\
         key = \"audit-signing\"\ncheckpoint_interval_ms = 50\ncheckpoint_file = \"{exported}\"\n",
        key = key_file.display(),
        plugin = audit_plugin("signed", &format!("audit_file = \"{}\"", audit.display())),
        exported = exported.display(),
    );
    let gw =
        TestGateway::start(&config_with(echo_upstream().await, &extra, &route("signed", "/", &[("signed", None)])))
            .await;
    for i in 0..3 {
        assert_eq!(get(&gw.url(&format!("/r/{i}")), &[]).await.status, 200);
    }
    // Within a few intervals a checkpoint covering the three records is signed and exported.
    let mut sink = serde_json::Value::Null;
    for _ in 0..100 {
        sink = sink_status(&gw, &audit).await;
        if sink["checkpoint"]["records"].as_u64() >= Some(3) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(sink["checkpoint"]["records"].as_u64() >= Some(3), "{sink}");
    let public_key = VerifyingKey::parse(public.as_bytes()).unwrap();
    assert_eq!(sink["signing"], format!("ed25519 key {}", public_key.key_id()), "{sink}");
    assert_eq!(sink["unsigned_records"], 0, "{sink}");
    assert!(!sink.to_string().contains("PRIVATE KEY"), "{sink}");
    assert_eq!(get(&gw.url("/r/last"), &[]).await.status, 200);
    // Logging steps observe after the response: wait for the fourth record to be appended.
    for _ in 0..100 {
        if sink_status(&gw, &audit).await["written"].as_u64() >= Some(4) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    gw.stop().await; // seals the last record with a final checkpoint

    let keys = [public_key];
    let exported: Vec<Checkpoint> = std::fs::read_to_string(&exported)
        .unwrap()
        .lines()
        .map(|l| Checkpoint::from_record(l).unwrap().unwrap())
        .collect();
    let check = |text: &str| verify_signed(std::io::Cursor::new(text.to_owned()), &keys, &exported).unwrap();
    let text = std::fs::read_to_string(&audit).unwrap();
    let report = check(&text).unwrap_or_else(|broken| panic!("{broken}\n{text}"));
    assert_eq!(report.records, 4 + report.checkpoints, "{text}");
    assert_eq!(report.unsigned(), 0, "shutdown signed the last record: {text}");
    assert_eq!(report.exported.map(|c| c.records), Some(report.records - 1), "the last checkpoint was exported");
    // The tail cut back to the first checkpoint: the file alone still verifies, the exported
    // checkpoints do not let it.
    let first = text.lines().position(|l| l.contains(r#""portcullis_audit":"checkpoint""#)).unwrap();
    let cut: String = text.lines().take(first + 1).map(|l| format!("{l}\n")).collect();
    assert!(verify_signed(std::io::Cursor::new(cut.clone()), &keys, &[]).unwrap().is_ok());
    let broken = check(&cut).unwrap_err();
    assert!(broken.reason.contains("its tail was cut"), "{broken}");
    let _ = std::fs::remove_dir_all(&keep);
}

/// A route whose only step is `plugin`, declared fail-closed.
fn fail_closed_route(id: &str, prefix: &str, plugin: &str) -> String {
    format!(
        "\n[[route]]\nid = \"{id}\"\npath_prefix = \"{prefix}\"\nupstream = \"app\"\n\n[[route.chain]]\n\
         plugin = \"{plugin}\"\nfailure_policy = \"fail-closed\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_closed_audit_step_records_before_responding_and_refuses_what_it_cannot_record() {
    // `/dev/full` fails every write with ENOSPC: a disk that is full.
    let extra = audit_plugin("full", "audit_file = \"/dev/full\"")
        + &audit_plugin("durable", "audit_file = \"durable.jsonl\"\naudit_fsync = \"always\"");
    let routes = fail_closed_route("regulated", "/regulated", "full")
        + &fail_closed_route("recorded", "/recorded", "durable")
        + &route("open", "/open", &[("full", None)]);
    let gw = TestGateway::start(&config_with(echo_upstream().await, &extra, &routes)).await;

    let refused = get(&gw.url("/regulated/x"), &[("x-request-id", "unrecorded")]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["type"], "urn:portcullis:problem:audit-unavailable", "{:?}", refused.body);
    assert_eq!(refused.headers["x-request-id"], "unrecorded");
    assert_eq!(get(&gw.url("/open/x"), &[]).await.status, 200, "a fail-open step on the same disk serves");
    assert!(sink_status(&gw, Path::new("/dev/full")).await["failed"].as_u64() >= Some(1));

    let served = get(&gw.url("/recorded/x"), &[("x-request-id", "recorded-first")]).await;
    assert_eq!(served.status, 200);
    // Written (and synced) before the response was sent: in the file as the response arrives,
    // without waiting for the 25 ms batch.
    let text = std::fs::read_to_string(gw.dir().join("durable.jsonl")).unwrap();
    assert!(text.contains(r#""request_id":"recorded-first""#), "{text}");
    let record: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!((record["status"].as_u64(), record["route"].as_str()), (Some(200), Some("recorded")));
    assert_eq!(sink_status(&gw, &gw.dir().join("durable.jsonl")).await["fsync"], "always");
    gw.stop().await;
}

/// A logging step whose plugin declared `audit.append-each-exchange` (audit-log) is never
/// called per exchange: the host appends its standard record, and no instance of it is ever
/// made for a call (the one that proved its configuration at load is let go). A logging plugin
/// that keeps `observe` (the trail-logger guest) on the same route is still called, with the
/// whole exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_standard_record_is_appended_by_the_host_and_observe_is_still_called_for_others() {
    let trail = plugin("trail_logger");
    let tag = plugin("tag_filter_a");
    // The base configuration's `audit` step is audit-log, writing `audit.jsonl`.
    let extra = format!(
        "\n[plugin.trail]\npath = \"{}\"\nkind = \"logging\"\ncapabilities = [\"audit\"]\naudit_file = \"trail.jsonl\"\n\
             \n[plugin.tag]\npath = \"{}\"\nkind = \"filter\"\n",
        trail.display(),
        tag.display()
    );
    let routes = route("logged", "/", &[("tag", None), ("audit", None), ("trail", None)]);
    let gw = TestGateway::start(&config_with(echo_upstream().await, &extra, &routes)).await;
    for id in ["first", "second"] {
        assert_eq!(get(&gw.url("/x"), &[("x-request-id", id)]).await.status, 200);
    }
    // Logging steps run after the response, and records are written in 25 ms batches.
    let (standard, trail) = (gw.dir().join("audit.jsonl"), gw.dir().join("trail.jsonl"));
    let lines = |path: &Path| std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
    for _ in 0..200 {
        if lines(&standard) >= 2 && lines(&trail) >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(intact(&standard).0, 2, "the host's records chain");
    // The two exchanges' logging tasks may finish in either order.
    let records = |path: &Path, key: &str| {
        let text = std::fs::read_to_string(path).unwrap();
        let mut records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        records.sort_by_key(|r| r[key].as_str().map(str::to_owned));
        (records, text)
    };
    let (written, text) = records(&standard, "request_id");
    for (record, id) in written.iter().zip(["first", "second"]) {
        assert_eq!((record["type"].as_str(), record["request_id"].as_str()), (Some("audit"), Some(id)), "{text}");
        assert_eq!(record["decisions"][0]["plugin"], "tag", "{text}");
        assert_eq!(record["decisions"][0]["decision"], "continue", "{text}");
    }
    let (seen, text) = records(&trail, "trail");
    assert_eq!(seen.len(), 2, "{text}");
    for (record, id) in seen.iter().zip(["first", "second"]) {
        assert_eq!(record["trail"], id, "{text}");
        assert_eq!((record["status"].as_u64(), record["route"].as_str()), (Some(200), Some("logged")), "{text}");
        assert_eq!(record["decisions"], serde_json::json!(["tag=continue"]), "{text}");
        // The response fields are lent to a called step (the standard record has none).
        assert_eq!(record["response"], serde_json::json!({"content-type": "application/json"}), "{text}");
    }
    let metrics = scrape(&gw).await;
    let instances = |plugin: &str, state: &str| {
        metric(&metrics, "portcullis_plugin_instances", &format!("plugin=\"{plugin}\",state=\"{state}\""))
    };
    assert_eq!((instances("audit", "idle"), instances("audit", "busy")), (Some(0.0), Some(0.0)), "{metrics}");
    assert!(instances("trail", "idle") >= Some(1.0), "the trail step's observe ran on a pooled instance: {metrics}");
    gw.stop().await;
}
