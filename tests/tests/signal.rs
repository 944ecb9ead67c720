//! SIGHUP reloads, end to end. Its own test binary: the signal reaches every gateway in the
//! process, and the suites in `reload.rs` count their own reloads.

use std::time::{Duration, Instant};

use portcullis::reload::ReloadCause;
use portcullis_e2e::{TestGateway, config, echo_upstream, get, plugin, replace_file, route};

/// A gateway config whose `/tagged/` route runs the tag filter with `suffix`, no file watch.
fn tagged(upstream: std::net::SocketAddr, suffix: &str) -> String {
    let tag = format!(r#"{{ suffix = "{suffix}" }}"#);
    let plugin_table = format!(
        "[reload]\nwatch = false\n\n[plugin.tag]\npath = \"{}\"\nkind = \"filter\"\n",
        plugin("tag_filter_a").display()
    );
    config(upstream, &(plugin_table + &route("tagged", "/tagged/", &[("tag", Some(&tag))])))
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration() {
    let upstream = echo_upstream().await;
    let gw = TestGateway::start(&tagged(upstream, "-1")).await;
    let tag = || async { get(&gw.url("/tagged/x"), &[]).await.upstream_saw("x-tag").concat() };
    assert_eq!(tag().await, "a-1");
    replace_file(&gw.config_file(), tagged(upstream, "-2").as_bytes());
    let status = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    while tag().await != "a-2" {
        assert!(started.elapsed() < Duration::from_secs(5), "SIGHUP did not reload within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last = gw.gateway.reloads().pop().unwrap();
    assert_eq!((last.cause, last.result), (ReloadCause::Signal, "ok"));
    gw.stop().await;
}
