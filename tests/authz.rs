//! ext_authz end to end: a real Envoy asks Lifeguard about every request before the stub LLM is reached.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use lifeguard_e2e::*;
use serde_json::{Value, json};

const REAL_KEY: &str = "sk-real-provider-key-e2e";

fn hash(key: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{:x}", Sha256::digest(key.as_bytes()))
}

fn bundle(mode: &str) -> String {
    let jwks = workspace_root().join("tests/fixtures/jwt/jwks.json");
    format!(
        r#"
version: 1
name: e2e-authz
defaults: {{ mode: {mode} }}
providers:
  openai: {{ format: openai, credential: {{ env: E2E_OPENAI_KEY }}, header: authorization, prefix: "Bearer " }}
keys:
  - {{ id: search, hash: "{search}", team: search, env: prod, app: ranker, providers: [openai], models: ["gpt-4o-mini"] }}
  - {{ id: billing, hash: "{billing}", team: billing, env: prod }}
  - {{ id: revoked, hash: "{revoked}", team: search, revoked: true }}
  - {{ id: expired, hash: "{expired}", team: search, expires: "2021-01-01T00:00:00Z" }}
  - {{ id: burst, hash: "{burst}", team: search, rate_limit: {{ requests_per_minute: 60, burst: 3 }} }}
jwt:
  - issuer: https://idp.example.com
    audiences: [llm-gateway]
    jwks_file: {jwks}
    claims: {{ team: "groups[0]", app: azp }}
routes:
  - name: chat
    match: {{ path_prefix: /v1/chat/completions, methods: [POST] }}
    allow: [ {{ teams: [search] }} ]
  - name: completions
    match: {{ path_prefix: /v1/completions }}
    allow: [ {{ teams: [billing] }} ]
"#,
        search = hash("lgk-search"),
        billing = hash("lgk-billing"),
        revoked = hash("lgk-revoked"),
        expired = hash("lgk-expired"),
        burst = hash("lgk-burst"),
        jwks = jwks.display(),
    )
}

async fn stack(mode: &str) -> Stack {
    Stack::start(&bundle(mode), &[("E2E_OPENAI_KEY", REAL_KEY)])
        .await
        .expect("stack starts")
}

fn chat_body() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
}

async fn chat(stack: &Stack, path: &str, auth: &str) -> Response {
    http_post_json(&stack.url(path), &[("authorization", auth)], &chat_body())
        .await
        .expect("request completes")
}

fn assert_openai_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json().expect("error body is JSON");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"].is_string() && v["error"]["type"].is_string(),
        "{v}"
    );
    let id = v["error"]["decision_id"].as_str().expect("decision id");
    assert_eq!(id.len(), 32);
    assert_eq!(r.header("x-lifeguard-decision-id"), Some(id));
}

#[tokio::test]
async fn scoped_key_reaches_the_model_with_the_real_key_only() {
    let s = stack("enforce").await;
    let r = chat(&s, "/v1/chat/completions", "Bearer lgk-search").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let decision = r
        .header("x-lifeguard-decision-id")
        .expect("decision id on the answer")
        .to_string();
    let seen = s.stub.last_request().expect("upstream saw the request");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {REAL_KEY}").as_str())
    );
    assert_eq!(
        seen.header("x-lifeguard-decision-id"),
        Some(decision.as_str())
    );
    let raw = format!("{:?}", seen.headers);
    assert!(
        !raw.contains("lgk-search"),
        "the virtual key must not reach the provider: {raw}"
    );
    // The real key never reaches the caller.
    assert!(!r.text().contains(REAL_KEY) && !format!("{:?}", r.headers).contains(REAL_KEY));
}

#[tokio::test]
async fn refused_keys_get_json_errors_and_never_reach_the_model() {
    let s = stack("enforce").await;
    let cases = [
        (
            "/v1/chat/completions",
            "Bearer lgk-unknown",
            401,
            "invalid_api_key",
        ),
        (
            "/v1/chat/completions",
            "Bearer lgk-revoked",
            401,
            "key_revoked",
        ),
        (
            "/v1/chat/completions",
            "Bearer lgk-expired",
            401,
            "key_expired",
        ),
        (
            "/v1/chat/completions",
            "Bearer lgk-billing",
            403,
            "route_not_allowed",
        ),
        (
            "/v1/completions",
            "Bearer lgk-search",
            403,
            "route_not_allowed",
        ),
        ("/v1/messages", "Bearer lgk-search", 403, "no_route"),
    ];
    for (path, auth, status, code) in cases {
        let r = chat(&s, path, auth).await;
        assert_openai_error(&r, status, code);
        assert!(!r.text().contains("sha256"), "no hashes in answers");
    }
    let r = http_post_json(&s.url("/v1/chat/completions"), &[], &chat_body())
        .await
        .unwrap();
    assert_openai_error(&r, 401, "missing_api_key");
    assert!(
        s.stub.requests().is_empty(),
        "no refused request reached the upstream"
    );
}

#[tokio::test]
async fn a_burst_over_the_rate_limit_gets_429_with_retry_after() {
    let s = stack("enforce").await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let r = chat(&s, "/v1/chat/completions", "Bearer lgk-burst").await;
        if r.status == 429 {
            assert_openai_error(&r, 429, "rate_limit_exceeded");
            retry_after = r.header("retry-after").map(str::to_string);
        }
        statuses.push(r.status);
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    let secs: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((1..=60).contains(&secs));
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jwt(claims: Value) -> String {
    let pem = std::fs::read(workspace_root().join("tests/fixtures/jwt/es256.pem")).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".into());
    encode(&header, &claims, &EncodingKey::from_ec_pem(&pem).unwrap()).unwrap()
}

fn claims() -> Value {
    json!({"iss": "https://idp.example.com", "aud": "llm-gateway", "sub": "alice", "exp": now() + 300, "groups": ["search"], "azp": "notebook"})
}

#[tokio::test]
async fn jwt_callers_are_verified_by_lifeguard() {
    let s = stack("enforce").await;
    let good = jwt(claims());
    let r = chat(&s, "/v1/chat/completions", &format!("Bearer {good}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.stub.last_request().unwrap();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {REAL_KEY}").as_str())
    );

    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let mut wrong_aud = claims();
    wrong_aud["aud"] = json!("another-gateway");
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[2] = parts[2].chars().rev().collect();
    let tampered = parts.join(".");
    for token in [jwt(expired), jwt(wrong_aud), tampered] {
        let r = chat(&s, "/v1/chat/completions", &format!("Bearer {token}")).await;
        assert_openai_error(&r, 401, "invalid_token");
    }
    assert_eq!(s.stub.requests().len(), 1);
}

#[tokio::test]
async fn monitor_mode_lets_a_would_be_denial_through_and_records_it() {
    let s = stack("monitor").await;
    let r = chat(&s, "/v1/chat/completions", "Bearer lgk-billing").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.stub.last_request().expect("reached the upstream");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {REAL_KEY}").as_str())
    );
    let id = r.header("x-lifeguard-decision-id").unwrap().to_string();
    // The audit log (stdout) records the would-be denial under that decision id.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = s
            .lifeguard
            .log()
            .lines()
            .find(|l| l.contains(&id) && l.contains("lifeguard.authz"))
            .map(str::to_string);
        if let Some(line) = line {
            let v: Value = serde_json::from_str(&line).expect("audit line is JSON");
            assert_eq!(v["verdict"], "allow");
            assert_eq!(v["would_be"], "deny");
            assert_eq!(v["code"], "route_not_allowed");
            assert_eq!(v["mode"], "monitor");
            let checks: Vec<&str> = v["checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap())
                .collect();
            assert!(checks.contains(&"scope"), "{checks:?}");
            assert!(
                !line.contains("lgk-billing"),
                "no key text in the audit log"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no audit line for {id}: {}",
            s.lifeguard.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = s.lifeguard.admin_get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains("lifeguard_checks_total{check=\"scope\",verdict=\"block\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn revoking_a_key_and_reloading_takes_effect_at_once() {
    let s = stack("enforce").await;
    assert_eq!(
        chat(&s, "/v1/chat/completions", "Bearer lgk-search")
            .await
            .status,
        200
    );
    let revoked = bundle("enforce").replace("app: ranker,", "app: ranker, revoked: true,");
    s.lifeguard.write_bundle(&revoked).unwrap();
    let r = s.lifeguard.reload().await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_openai_error(
        &chat(&s, "/v1/chat/completions", "Bearer lgk-search").await,
        401,
        "key_revoked",
    );
    // A broken bundle is refused and the last good one keeps serving.
    s.lifeguard
        .write_bundle("version: 1\nname: broken\nkeys: [ {id: x} ]\n")
        .unwrap();
    let r = s.lifeguard.reload().await.unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    assert_openai_error(
        &chat(&s, "/v1/chat/completions", "Bearer lgk-search").await,
        401,
        "key_revoked",
    );
    assert_eq!(
        chat(&s, "/v1/chat/completions", "Bearer lgk-unknown")
            .await
            .status,
        401
    );
}
