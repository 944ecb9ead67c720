//! The audit sink end to end: the real gateway with the audit-log plugin writing its hash
//! chain, a torn last line left by a crash, and a rotation by `mv` and `POST /reload`.

use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use portcullis::plugin::audit::{AuditSinks, verify};
use portcullis_e2e::{TestGateway, config, echo_upstream, get, metric, route, scrape, send, write_config};

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
    AuditSinks::default().open(Some(&audit)).unwrap().append(r#"{"before":"crash"}"#).unwrap();
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
