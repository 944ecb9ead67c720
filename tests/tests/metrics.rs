//! `/metrics` after known traffic, parsed with a Prometheus text-format parser
//! (`prometheus-parse`): request counts by route, method and status class, latency
//! histograms, upstream errors, plugin decisions and call latencies, instance and connection
//! gauges. The gateway runs on its own engine, so no other test's traffic is counted.

use std::collections::HashMap;
use std::time::Duration;

use portcullis::plugin::PluginEngine;
use portcullis_e2e::{TestGateway, closed_port, config_with, echo_upstream, get, route};
use prometheus_parse::{Sample, Scrape, Value};

const KEY: &str = "k-metrics-0123456789";

/// The value of the sample `name` whose labels include every pair of `labels`; histograms
/// give their count.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matches = |s: &&Sample| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
    scrape.samples.iter().find(matches).map(|s| match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
        Value::Summary(_) => f64::NAN,
    })
}

async fn scrape(gw: &TestGateway) -> Scrape {
    let text = portcullis_e2e::scrape(gw).await;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Scrape::parse(lines).unwrap_or_else(|e| panic!("not the Prometheus text format ({e}):\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_by_route_status_plugin_and_upstream() {
    let upstream = echo_upstream().await;
    let dead = closed_port().await;
    let apikey = format!(r#"{{ keys = [{{ key = "{KEY}", subject = "svc" }}] }}"#);
    let extra = format!("[upstream.dead]\nendpoints = [\"{dead}\"]\nconnect_timeout_ms = 200\n");
    let routes = [
        route("public", "/public", &[]),
        route("keyed", "/keyed", &[("apikey", Some(&apikey))]),
        "\n[[route]]\nid = \"broken\"\npath_prefix = \"/broken\"\nupstream = \"dead\"\n".to_owned(),
    ]
    .concat();
    let engine = PluginEngine::new(&Default::default()).unwrap();
    let gw = TestGateway::start_with(&config_with(upstream, &extra, &routes), engine).await;

    for _ in 0..3 {
        assert_eq!(get(&gw.url("/public/a"), &[]).await.status, 200);
    }
    assert_eq!(portcullis_e2e::request("POST", &gw.url("/public/b"), &[], "x").await.status, 200);
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/nowhere"), &[]).await.status, 404);
        assert_eq!(get(&gw.url("/keyed/x"), &[]).await.status, 401);
    }
    assert_eq!(get(&gw.url("/keyed/x"), &[("x-api-key", KEY)]).await.status, 200);
    assert_eq!(get(&gw.url("/broken/x"), &[]).await.status, 502);

    // Requests are counted when their response body ends, just after the client has it.
    let mut scraped = scrape(&gw).await;
    for _ in 0..40 {
        if value(&scraped, "portcullis_http_requests_total", &[("route", "broken")]) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        scraped = scrape(&gw).await;
    }
    let s = &scraped;
    let requests = |route: &str, method: &str, class: &str| {
        value(s, "portcullis_http_requests_total", &[("route", route), ("method", method), ("status_class", class)])
    };
    assert_eq!(requests("public", "GET", "2xx"), Some(3.0));
    assert_eq!(requests("public", "POST", "2xx"), Some(1.0));
    assert_eq!(requests("-", "GET", "4xx"), Some(2.0), "unrouted requests are route `-`, never the raw path");
    assert_eq!(requests("keyed", "GET", "4xx"), Some(2.0));
    assert_eq!(requests("keyed", "GET", "2xx"), Some(1.0));
    assert_eq!(requests("broken", "GET", "5xx"), Some(1.0));
    assert_eq!(value(s, "portcullis_http_request_duration_seconds_count", &[("route", "public")]), Some(4.0));

    let echo = upstream.to_string();
    assert_eq!(
        value(s, "portcullis_upstream_request_duration_seconds_count", &[("upstream", "app"), ("endpoint", &echo)]),
        Some(5.0)
    );
    let dead = dead.to_string();
    assert_eq!(
        value(s, "portcullis_upstream_errors_total", &[("upstream", "dead"), ("endpoint", &dead), ("kind", "failed")]),
        Some(1.0)
    );
    assert_eq!(value(s, "portcullis_upstream_endpoint_available", &[("upstream", "app")]), Some(1.0));

    assert_eq!(
        value(
            s,
            "portcullis_plugin_decisions_total",
            &[("plugin", "apikey"), ("decision", "denied"), ("mode", "enforce")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            s,
            "portcullis_plugin_decisions_total",
            &[("plugin", "apikey"), ("decision", "authenticated"), ("mode", "enforce")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(s, "portcullis_plugin_call_duration_seconds_count", &[("plugin", "apikey"), ("phase", "request")]),
        Some(3.0)
    );
    let idle = value(s, "portcullis_plugin_instances", &[("plugin", "apikey"), ("state", "idle")]).unwrap();
    assert!(idle >= 1.0, "the apikey step keeps its instance pooled");
    assert_eq!(value(s, "portcullis_plugin_instances", &[("plugin", "apikey"), ("state", "busy")]), Some(0.0));
    assert!(value(s, "portcullis_listener_connections", &[]).is_some());

    // Every label value is bounded: no raw path ever appears.
    let labels: HashMap<&str, Vec<&str>> = s.samples.iter().fold(HashMap::new(), |mut all, sample| {
        for (k, v) in sample.labels.iter() {
            all.entry(k.as_str()).or_default().push(v.as_str());
        }
        all
    });
    assert!(labels.values().flatten().all(|v| !v.contains("/public/a") && !v.contains("/nowhere")), "{labels:?}");
    gw.stop().await;
}
