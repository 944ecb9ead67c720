//! Reload latency on this machine, for the quickstart-sized configuration and for 1,000 routes
//! sharing the first-party plugins (jwt-auth and audit-log on every route, each route with its
//! own audit configuration so 1,000 pools are configured):
//! - `Gateway::reload()` (parse, check, compile cache hit, configure pools, build router, swap);
//! - a file write to the first request served with the new configuration (the file watcher's
//!   100 ms quiet period included).

use std::time::{Duration, Instant};

use portcullis_e2e::{JWT_CONFIG, TestGateway, config, echo_upstream, get, replace_file, route};

fn routes(n: usize, tag: &str) -> String {
    let mut toml = String::new();
    for i in 0..n {
        let audit = format!(r#"{{ headers = ["x-route-{i}"], redact = ["{tag}"] }}"#);
        toml.push_str(&route(
            &format!("r{i}"),
            &format!("/r{i}/"),
            &[("jwt", Some(JWT_CONFIG)), ("audit", Some(&audit))],
        ));
    }
    toml.push_str(&route("probe", "/probe/", &[("chaos", None)]));
    toml
}

async fn measure(n: usize) {
    let upstream = echo_upstream().await;
    let toml = |tag: &str| config(upstream, &routes(n, tag));
    let gw = TestGateway::start(&toml("x-a")).await;
    let mut explicit = Vec::new();
    for round in 0..5 {
        replace_file(&gw.config_file(), toml(if round % 2 == 0 { "x-b" } else { "x-a" }).as_bytes());
        let started = Instant::now();
        gw.gateway.reload().await.expect("reload");
        explicit.push(started.elapsed().as_secs_f64() * 1e3);
    }
    // From a file write to the new route being served.
    let mut watched = Vec::new();
    for round in 0..3 {
        let path = format!("/new{round}/x");
        let mut next = toml("x-a");
        next.push_str(&route(&format!("new{round}"), &format!("/new{round}/"), &[]));
        let started = Instant::now();
        replace_file(&gw.config_file(), next.as_bytes());
        while get(&gw.url(&path), &[]).await.status != 200 {
            assert!(started.elapsed() < Duration::from_secs(60));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        watched.push(started.elapsed().as_secs_f64() * 1e3);
    }
    explicit.sort_by(f64::total_cmp);
    watched.sort_by(f64::total_cmp);
    println!(
        "| {n} routes | {:.0} ms ({:.0}–{:.0}) | {:.0} ms ({:.0}–{:.0}) |",
        explicit[2], explicit[0], explicit[4], watched[1], watched[0], watched[2]
    );
    gw.stop().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("| configuration | reload() median (min–max, 5 runs) | file write → served, median (min–max, 3 runs) |");
    println!("|---|---|---|");
    measure(2).await;
    measure(1000).await;
}
