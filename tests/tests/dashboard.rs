//! The operator dashboard (issue 17), rendered in a real headless Chromium (Debian's
//! `chromium`, installed by `.ci/run`; `PORTCULLIS_CHROMIUM` names another binary): on the
//! quickstart's configuration, the DOM it renders shows the routes, plugins and upstream, and a
//! screenshot is written to `target/dashboard.png`; behind an admin token, the page shows
//! nothing but the request for it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_e2e::{
    TestGateway, claims, config, echo_upstream, get, mint, root, route, start_quickstart, write_config,
};

/// The browser: `PORTCULLIS_CHROMIUM`, else `chromium` on the `PATH`.
///
/// # Panics
/// When there is none, saying how to install it.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("PORTCULLIS_CHROMIUM") {
        return path.into();
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("the dashboard test needs Chromium: `apt-get install chromium` (as .ci/run does), or set PORTCULLIS_CHROMIUM")
    })
}

/// Runs headless Chromium on `url` with `args`, its stdout into `out`, killed after 90 s.
fn run_chromium(url: &str, args: &[&str], out: &Path, profile: &Path) -> std::process::ExitStatus {
    let stdout = std::fs::File::create(out).expect("creating the browser's output file");
    let mut child = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .args(["--hide-scrollbars", "--virtual-time-budget=6000", "--window-size=1400,1800"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            return status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_quickstarts_routes_plugins_and_upstream_in_headless_chromium() {
    let upstream = echo_upstream().await;
    let quickstart = start_quickstart(upstream).await;
    let gateway = &quickstart.gateway;
    let base = format!("http://{}", gateway.listener_addrs()[0]);
    let admin = format!("http://{}/", gateway.admin_addr().unwrap());
    // Some traffic, so plugins have decisions and latencies to show.
    let mut alice = claims("alice");
    alice["sub"] = serde_json::json!(format!("dashboard-{}", std::process::id()));
    let auth = format!("Bearer {}", mint(&alice));
    assert_eq!(get(&format!("{base}/api/orders"), &[("authorization", &auth)]).await.status, 200);
    assert_eq!(get(&format!("{base}/api/orders"), &[]).await.status, 401);
    assert_eq!(get(&format!("{base}/public/x"), &[]).await.status, 200);

    // The page and its assets come with a policy that allows this origin only.
    let page = get(&admin, &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));

    let work = root().join(format!("target/dashboard-test-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let (dom_file, screenshot) = (work.join("dom.html"), root().join("target/dashboard.png"));
    let _ = std::fs::remove_file(&screenshot);
    let (url, profile) = (admin.clone(), work.join("profile"));
    let (dom_out, shot_out) = (dom_file.clone(), work.join("screenshot.log"));
    let shot_arg = format!("--screenshot={}", screenshot.display());
    let (dom_status, shot_status) = tokio::task::spawn_blocking(move || {
        let dom = run_chromium(&url, &["--dump-dom"], &dom_out, &profile);
        let shot = run_chromium(&url, &[&shot_arg], &shot_out, &profile);
        (dom, shot)
    })
    .await
    .unwrap();
    assert!(dom_status.success() && shot_status.success(), "chromium failed: {dom_status}, {shot_status}");

    let dom = std::fs::read_to_string(&dom_file).unwrap();
    assert!(dom.contains(r#"data-state="ready""#), "the page did not render the gateway's data:\n{dom}");
    for route in ["public", "api", "orders"] {
        assert!(dom.contains(&format!(r#"data-route="{route}""#)), "route {route} missing:\n{dom}");
    }
    for plugin in ["jwt", "rbac", "ratelimit", "validate", "audit"] {
        assert!(dom.contains(&format!(r#"<tr data-plugin="{plugin}">"#)), "plugin {plugin} missing:\n{dom}");
    }
    assert!(dom.contains(&format!(r#"data-upstream="demo" data-endpoint="{upstream}""#)), "upstream missing:\n{dom}");
    // The api route's chain in order, and the jwt plugin's decisions from /metrics.
    let api = &dom[dom.find(r#"data-route="api""#).unwrap()..];
    let api = &api[..api.find("</tr>").unwrap()];
    let order: Vec<_> = ["jwt", "rbac", "ratelimit", "audit"]
        .iter()
        .map(|p| api.find(&format!(r#"data-plugin="{p}""#)).unwrap_or(usize::MAX))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "the api chain is out of order: {api}");
    let jwt = &dom[dom.find(r#"<tr data-plugin="jwt">"#).unwrap()..];
    let jwt = &jwt[..jwt.find("</tr>").unwrap()];
    assert!(jwt.contains("authenticated") && jwt.contains("denied"), "jwt's decisions missing: {jwt}");
    // The chart library drew the request-rate chart.
    assert!(dom.contains("uplot"), "no request-rate chart:\n{dom}");

    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a screenshot: {} bytes", png.len());
    quickstart.stop().await;
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_admin_token_the_dashboard_shows_no_data_until_given_it() {
    let text = config(echo_upstream().await, &route("secret-route", "/", &[]));
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\n";
    let (dir, file) = write_config(&text.replacen(admin, &format!("{admin}token_file = \"admin-token\"\n"), 1));
    std::fs::write(dir.join("admin-token"), "dashboard-token").unwrap();
    let gw = TestGateway::start_file(&file).await;
    let url = format!("http://{}/", gw.admin);
    let (out, profile) = (dir.join("dom.html"), dir.join("profile"));
    let read = out.clone();
    let status =
        tokio::task::spawn_blocking(move || run_chromium(&url, &["--dump-dom"], &out, &profile)).await.unwrap();
    assert!(status.success(), "chromium failed: {status}");
    let dom = std::fs::read_to_string(read).unwrap();
    assert!(dom.contains(r#"data-state="unauthorized""#) && dom.contains("needs its token"), "{dom}");
    assert!(!dom.contains("secret-route") && !dom.contains("data-plugin"), "data shown without the token:\n{dom}");
    gw.stop().await;
}
