//! The harness itself works (Envoy + stub upstream, no Lifeguard needed), Envoy's failure modes
//! behave as configured when Lifeguard is down, and the lifeguard binary starts, reports ready
//! and stops cleanly on SIGTERM.

use std::time::{Duration, Instant};

use lifeguard_e2e::*;
use serde_json::json;

const SMOKE_BUNDLE: &str = r#"version: 1
name: smoke
providers:
  openai: { format: openai, credential: { env: OPENAI_API_KEY }, header: authorization, prefix: "Bearer " }
routes:
  - name: chat
    match: { path_prefix: /v1/chat/completions }
"#;

/// Envoy with both guards pointing at a port where nothing listens.
async fn envoy_without_lifeguard(template: &str, stub: &StubUpstream) -> Envoy {
    Envoy::start(template, &envoy_vars(unused_port(), stub.port()))
        .await
        .expect("start envoy")
}

fn chat_request(stream: bool) -> String {
    json!({"model": "gpt-4o", "stream": stream,
        "messages": [{"role": "user", "content": "Say hello."}]})
    .to_string()
}

#[tokio::test]
async fn healthz_route_reaches_the_stub_with_both_guards_off() {
    let stub = StubUpstream::start().unwrap();
    let envoy = envoy_without_lifeguard("lifeguard.yaml", &stub).await;

    let resp = http_get(&envoy.url("/healthz-envoy")).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json().unwrap()["from"], "stub-upstream");
    let seen = stub.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/healthz-envoy");

    let unrouted = http_get(&envoy.url("/admin")).await.unwrap();
    assert_eq!(unrouted.status, 404);
    assert_eq!(
        stub.requests().len(),
        1,
        "unrouted paths never reach the upstream"
    );
}

#[tokio::test]
async fn fail_closed_config_refuses_llm_traffic_when_lifeguard_is_down() {
    let stub = StubUpstream::start().unwrap();
    let envoy = envoy_without_lifeguard("lifeguard.yaml", &stub).await;

    let resp = http_post(
        &envoy.url("/v1/chat/completions"),
        &[("content-type", "application/json")],
        chat_request(false),
    )
    .await
    .unwrap();
    assert_eq!(
        resp.status,
        503,
        "status_on_error of ext_authz: {}",
        resp.text()
    );
    assert!(stub.requests().is_empty(), "nothing may reach the upstream");
}

#[tokio::test]
async fn fail_open_config_lets_llm_traffic_through_when_lifeguard_is_down() {
    let stub = StubUpstream::start().unwrap();
    let envoy = envoy_without_lifeguard("lifeguard-fail-open.yaml", &stub).await;

    let resp = http_post(
        &envoy.url("/v1/chat/completions"),
        &[("content-type", "application/json")],
        chat_request(false),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json().unwrap()["choices"][0]["message"]["content"],
        DEFAULT_ASSISTANT_TEXT
    );
    assert_eq!(
        stub.last_request().unwrap().json().unwrap()["model"],
        "gpt-4o"
    );

    // SSE passes through Envoy event by event, not buffered to the end.
    let delay = Duration::from_millis(150);
    stub.set_reply(Reply::sse_text(&["one ", "two ", "three"], delay));
    let streamed = http_post_streaming(
        &envoy.url("/v1/chat/completions"),
        &[("content-type", "application/json")],
        chat_request(true),
    )
    .await
    .unwrap();
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.header("content-type"), Some("text/event-stream"));
    assert_eq!(streamed.sse_content(), "one two three");
    let ttft = streamed.ttft().unwrap();
    let last = streamed.chunks.last().unwrap().at;
    assert!(
        last >= ttft + delay * 3,
        "events arrived together (ttft {ttft:?}, last {last:?}): Envoy buffered the stream"
    );
}

#[tokio::test]
async fn lifeguard_reports_ready_and_exits_cleanly_on_sigterm() {
    let bin = lifeguard_bin();
    assert!(
        bin.exists(),
        "the lifeguard binary is missing at {}: run `cargo build -p lifeguard` (make test does) or set LIFEGUARD_BIN",
        bin.display()
    );
    let mut lifeguard = Lifeguard::start(SMOKE_BUNDLE, &[("OPENAI_API_KEY", "sk-real-test-key")])
        .await
        .expect("start lifeguard");

    let healthz = lifeguard.admin_get("/healthz").await.unwrap();
    assert_eq!(healthz.status, 200, "{}", healthz.text());
    let readyz = lifeguard.admin_get("/readyz").await.unwrap();
    assert_eq!(readyz.status, 200, "{}", readyz.text());

    let started = Instant::now();
    let status = lifeguard.stop_within(Duration::from_secs(5)).unwrap();
    assert!(
        status.success(),
        "lifeguard exited with {status} after SIGTERM\n{}",
        lifeguard.log()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
