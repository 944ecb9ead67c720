//! Distributed tracing end to end: a real client's `traceparent`, spans exported over OTLP/HTTP
//! (protobuf) to a local receiver that decodes them with the OpenTelemetry protocol types,
//! `traceparent` arriving at the upstream and at a plugin's outbound JWKS fetch, and the trace
//! id in the JSON access record.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions: a panic is the failure report")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use portcullis::plugin::PluginEngine;
use portcullis::telemetry::{ExportSettings, Telemetry};
use portcullis_e2e::{
    TestGateway, capture_logs, captured_logs, claims, config_with, echo_upstream, get, mint, route, serve,
};
use prost::Message;
use serde_json::Value;

/// The client's trace: trace id and its own span id, sampled.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// A local OTLP/HTTP receiver: every span of every `POST /v1/traces`, and each request's
/// content type.
/// What the receiver collected: spans, and each request's content type.
type Received = (Arc<Mutex<Vec<Span>>>, Arc<Mutex<Vec<String>>>);

async fn otlp_receiver() -> (std::net::SocketAddr, Received) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let content_types = Arc::new(Mutex::new(Vec::new()));
    let (received, types) = (spans.clone(), content_types.clone());
    let (addr, _task) = serve(move |method, path, headers, body| {
        if method != http::Method::POST || path != "/v1/traces" {
            return (404, "text/plain", String::new());
        }
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        types.lock().unwrap().push(content_type);
        let Ok(request) = ExportTraceServiceRequest::decode(body) else {
            return (400, "text/plain", "not an ExportTraceServiceRequest".into());
        };
        let mut spans = received.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .any(|a| a.key == "service.name" && matches!(&a.value, Some(v) if v.value == Some(any_value::Value::StringValue("edge-gateway".into()))));
            assert!(service, "service.name comes from OTEL_SERVICE_NAME");
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        // An empty ExportTraceServiceResponse encodes to no bytes.
        (200, "application/x-protobuf", String::new())
    })
    .await;
    (addr, (spans, content_types))
}

/// An engine exporting to `receiver` as the standard variables would configure it.
fn exporting_engine(receiver: std::net::SocketAddr) -> Arc<PluginEngine> {
    let vars: HashMap<&str, String> = HashMap::from([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}")),
        ("OTEL_SERVICE_NAME", "edge-gateway".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
    ]);
    let settings = ExportSettings::from_vars(|name| vars.get(name).cloned()).unwrap().expect("export is configured");
    let telemetry = Telemetry::exporting(&settings).expect("building the exporter");
    PluginEngine::with_telemetry(&Default::default(), Arc::new(telemetry)).unwrap()
}

/// Waits up to 5 s for `count` spans.
async fn spans_received(spans: &Mutex<Vec<Span>>, count: usize) -> Vec<Span> {
    for _ in 0..250 {
        if spans.lock().unwrap().len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    spans.lock().unwrap().clone()
}

/// A JWKS server recording the `traceparent` of each fetch.
async fn jwks_server() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let jwks = std::fs::read_to_string(portcullis_e2e::root().join("examples/quickstart/keys/jwks.json")).unwrap();
    let recorded = seen.clone();
    let (addr, _task) = serve(move |_, _, headers, _| {
        let parent = headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
        recorded.lock().unwrap().push(parent);
        (200, "application/json", jwks.clone())
    })
    .await;
    (addr, seen)
}

fn remote_jwt(jwks: std::net::SocketAddr) -> (String, String) {
    let extra = portcullis_e2e::outbound_auth_plugin("jwt-remote", "jwt_auth", jwks);
    let step = format!(r#"{{ issuer = "https://demo.portcullis.invalid", jwks_url = "http://{jwks}/jwks.json" }}"#);
    (extra, step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_exports_its_span_tree_and_carries_the_trace_to_the_upstream_and_plugin_calls() {
    capture_logs();
    let (receiver, (spans, content_types)) = otlp_receiver().await;
    let (jwks, jwks_parents) = jwks_server().await;
    let upstream = echo_upstream().await;
    let (extra, step) = remote_jwt(jwks);
    let routes = route(
        "api",
        "/api/",
        &[
            ("jwt-remote", Some(&step)),
            ("rbac", Some(r#"{ rules = [{ path = "/api/**", roles = ["reader"] }] }"#)),
            ("legacy", Some("{}")),
        ],
    );
    let gw = TestGateway::start_with(&config_with(upstream, &extra, &routes), exporting_engine(receiver)).await;

    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let token = format!("Bearer {}", mint(&claims("alice")));
    let reply = get(
        &gw.url("/api/orders?api_key=secret"),
        &[("authorization", &token), ("traceparent", &traceparent), ("tracestate", "vendor=abc")],
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let request_id = reply.headers["x-request-id"].to_str().unwrap().to_owned();

    // The request span; jwt-auth's step; rbac's request step (a filter without a response
    // hook, so never called on the response); the 0.1.0 legacy filter's steps in the request
    // and the response phase (0.1.0 declares no hooks: both are called); the JWKS fetch; the
    // upstream exchange.
    let spans = spans_received(&spans, 7).await;
    assert!(content_types.lock().unwrap().iter().all(|t| t == "application/x-protobuf"));
    let by_name = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let [server] = by_name("GET api")[..] else { panic!("one request span: {spans:#?}") };
    assert_eq!(hex(&server.trace_id), TRACE_ID, "the client's trace continues");
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN, "under the client's span");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(attribute(server, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attribute(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attribute(server, "url.path").as_deref(), Some("/api/orders"));
    assert_eq!(attribute(server, "portcullis.request_id"), Some(request_id.clone()));
    assert_eq!(attribute(server, "enduser.id").as_deref(), Some("alice"));
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);

    let [jwt] = by_name("plugin jwt-remote")[..] else { panic!("one jwt-auth step span: {spans:#?}") };
    let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
    let phase = |s: &&&Span| attribute(s, "portcullis.plugin.phase");
    let [rbac] = by_name("plugin rbac")[..] else { panic!("one rbac span, in the request phase: {names:?}") };
    let legacy_steps = by_name("plugin legacy");
    let [legacy] =
        legacy_steps.iter().filter(|s| phase(s).as_deref() == Some("request")).copied().collect::<Vec<_>>()[..]
    else {
        panic!("one legacy request-phase span: {names:?}")
    };
    let [legacy_response] =
        legacy_steps.iter().filter(|s| phase(s).as_deref() == Some("response")).copied().collect::<Vec<_>>()[..]
    else {
        panic!("one legacy response-phase span: {names:?}")
    };
    assert_eq!(legacy_response.parent_span_id, server.span_id);
    for (step, kind, decision) in
        [(jwt, "auth", "authenticated"), (rbac, "filter", "continue"), (legacy, "filter", "continue")]
    {
        assert_eq!(step.parent_span_id, server.span_id, "{} is a child of the request", step.name);
        assert_eq!(step.kind, SpanKind::Internal as i32);
        assert_eq!(attribute(step, "portcullis.plugin.kind").as_deref(), Some(kind));
        assert_eq!(attribute(step, "portcullis.plugin.decision").as_deref(), Some(decision));
        assert_eq!(attribute(step, "portcullis.plugin.phase").as_deref(), Some("request"));
        assert!(step.start_time_unix_nano >= server.start_time_unix_nano);
    }
    assert!(rbac.start_time_unix_nano >= jwt.end_time_unix_nano, "steps run in chain order");
    assert!(legacy.start_time_unix_nano >= rbac.end_time_unix_nano, "steps run in chain order");

    let clients: Vec<_> = spans.iter().filter(|s| s.kind == SpanKind::Client as i32).collect();
    assert_eq!(clients.len(), 2, "{clients:#?}");
    let fetch =
        clients.iter().find(|s| s.parent_span_id == jwt.span_id).expect("the JWKS fetch is a child of the jwt step");
    let exchange = clients
        .iter()
        .find(|s| s.parent_span_id == server.span_id)
        .expect("the upstream exchange is a child of the request");
    assert_eq!(attribute(fetch, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attribute(exchange, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attribute(exchange, "server.address").as_deref(), Some("127.0.0.1"));
    assert!(
        legacy_response.start_time_unix_nano >= exchange.end_time_unix_nano,
        "the response phase follows the exchange"
    );

    // Both outbound requests continue the trace from their own client span.
    assert_eq!(reply.upstream_saw("traceparent"), [format!("00-{TRACE_ID}-{}-01", hex(&exchange.span_id))]);
    assert_eq!(reply.upstream_saw("tracestate"), ["vendor=abc"]);
    assert_eq!(*jwks_parents.lock().unwrap(), [format!("00-{TRACE_ID}-{}-01", hex(&fetch.span_id))]);

    // Nothing secret went into a span: no query string anywhere, no token.
    let dump = format!("{spans:?}");
    assert!(!dump.contains("secret") && !dump.contains(&token[7..40]), "{dump}");

    // The access record carries the trace and the request span's id.
    let logs = captured_logs();
    let access = logs
        .iter()
        .find(|l| l["fields"]["request_id"] == Value::String(request_id.clone()) && l["target"] == "portcullis::access")
        .expect("an access record");
    assert_eq!(access["fields"]["trace_id"], TRACE_ID);
    assert_eq!(access["fields"]["span_id"], hex(&server.span_id));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trace_context_is_ignored_where_the_listener_does_not_accept_it() {
    let (receiver, (spans, _)) = otlp_receiver().await;
    let upstream = echo_upstream().await;
    let config = config_with(upstream, "", &route("open", "/", &[])).replacen(
        "[[listener]]\naddress = \"127.0.0.1:0\"",
        "[[listener]]\naddress = \"127.0.0.1:0\"\naccept_trace_context = \"never\"",
        1,
    );
    let gw = TestGateway::start_with(&config, exporting_engine(receiver)).await;
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let reply = get(&gw.url("/x"), &[("traceparent", &traceparent), ("tracestate", "vendor=abc")]).await;
    assert_eq!(reply.status, 200);
    let spans = spans_received(&spans, 2).await;
    let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).expect("a request span");
    assert_ne!(hex(&server.trace_id), TRACE_ID, "a new trace");
    assert!(server.parent_span_id.is_empty(), "a root span");
    let forwarded = reply.upstream_saw("traceparent");
    assert_eq!(forwarded.len(), 1);
    assert!(forwarded[0].starts_with(&format!("00-{}-", hex(&server.trace_id))), "{forwarded:?}");
    assert!(reply.upstream_saw("tracestate").is_empty(), "the client's tracestate is gone too");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_export_the_trace_context_still_flows() {
    let upstream = echo_upstream().await;
    let gw = TestGateway::start(&config_with(upstream, "", &route("open", "/", &[]))).await;
    // An accepted context passes through unchanged: nothing is recorded, so there is no new
    // span to be the parent.
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let reply = get(&gw.url("/x"), &[("traceparent", &traceparent)]).await;
    assert_eq!(reply.upstream_saw("traceparent"), [traceparent]);
    // A malformed one is replaced by a new, unsampled trace (W3C Trace Context §4.3).
    let reply = get(&gw.url("/x"), &[("traceparent", "00-not-a-trace-01")]).await;
    let forwarded = reply.upstream_saw("traceparent");
    assert_eq!(forwarded.len(), 1);
    let fields: Vec<&str> = forwarded[0].split('-').collect();
    assert_eq!((fields[0], fields[1].len(), fields[2].len(), fields[3]), ("00", 32, 16, "00"), "{forwarded:?}");
    gw.stop().await;
}
