//! Every refusal reason, the credential swap, the hand-over, and malformed input.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use lifeguard_core::NullSink;
use lifeguard_policy::{CompileOptions, compile_str, hash_key};

use super::*;

fn hex(key: &str) -> String {
    hash_key(key).iter().map(|b| format!("{b:02x}")).collect()
}

fn bundle(mode: &str) -> String {
    format!(
        r#"
version: 1
name: unit
defaults: {{ mode: {mode} }}
providers:
  openai: {{ format: openai, credential: {{ env: LG_UNIT_OPENAI }}, header: authorization, prefix: "Bearer " }}
  anthropic: {{ format: anthropic, credential: {{ env: LG_UNIT_ANTHROPIC }}, header: x-api-key }}
keys:
  - {{ id: good, hash: "sha256:{good}", team: search, env: prod, app: ranker, providers: [openai], models: ["gpt-4o-mini"] }}
  - {{ id: revoked, hash: "sha256:{revoked}", team: search, revoked: true }}
  - {{ id: expired, hash: "sha256:{expired}", team: search, expires: "2020-01-01T00:00:00Z" }}
  - {{ id: future, hash: "sha256:{future}", team: search, not_before: "2999-01-01T00:00:00Z" }}
  - {{ id: billing, hash: "sha256:{billing}", team: billing }}
  - {{ id: limited, hash: "sha256:{limited}", team: search, rate_limit: {{ requests_per_minute: 60, burst: 2 }} }}
routes:
  - name: chat
    match: {{ path_prefix: /v1/chat/completions, methods: [POST] }}
    provider: openai
    allow: [ {{ teams: [search] }} ]
  - name: messages
    match: {{ path_prefix: /v1/messages }}
    provider: anthropic
"#,
        good = hex("k-good"),
        revoked = hex("k-revoked"),
        expired = hex("k-expired"),
        future = hex("k-future"),
        billing = hex("k-billing"),
        limited = hex("k-limited"),
    )
}

fn service(mode: &str) -> AuthzService {
    // The credentials come from .cargo/config.toml's [env], as they would from a Secret in a pod.
    let snap = compile_str(
        "unit.yaml",
        &bundle(mode),
        CompileOptions {
            read_external: true,
        },
    )
    .unwrap_or_else(|p| panic!("bundle compiles: {p:?}"));
    AuthzService::new(Arc::new(ArcSwap::from_pointee(snap)), Arc::new(NullSink))
}

fn facts(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestFacts {
    RequestFacts {
        method: method.into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        context: HashMap::new(),
    }
}

fn denied(resp: &CheckResponse) -> Option<(i32, serde_json::Value)> {
    match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => Some((
            d.status.as_ref().map(|s| s.code).unwrap_or_default(),
            serde_json::from_str(&d.body).expect("denial body is JSON"),
        )),
        _ => None,
    }
}

fn ok(resp: &CheckResponse) -> &OkHttpResponse {
    match &resp.http_response {
        Some(HttpResponse::OkResponse(o)) => o,
        other => panic!("expected OK, got {other:?}"),
    }
}

fn header<'a>(o: &'a OkHttpResponse, name: &str) -> Option<&'a str> {
    o.headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

#[test]
fn valid_key_is_allowed_and_swapped_for_the_real_credential() {
    let svc = service("enforce");
    let (resp, rec) = svc.check(&facts(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer k-good")],
    ));
    assert_eq!(resp.status.as_ref().map(|s| s.code), Some(0));
    let o = ok(&resp);
    assert_eq!(header(o, "authorization"), Some("Bearer sk-real-openai"));
    assert!(header(o, DECISION_HEADER).is_some());
    // Same header as the provider's: overwritten, not removed after being set.
    assert!(o.headers_to_remove.is_empty());
    let meta = Handover::from_struct(resp.dynamic_metadata.as_ref().expect("metadata"));
    assert_eq!(meta.key_id, "good");
    assert_eq!(meta.team, "search");
    assert_eq!(meta.route, "chat");
    assert_eq!(meta.provider, "openai");
    assert_eq!(meta.models, vec!["gpt-4o-mini".to_string()]);
    assert_eq!(meta.decision_id, rec.decision_id);
    assert_eq!(rec.verdict, Verdict::Allow);
    let ids: Vec<_> = rec.checks.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["route", "identity", "scope", "rate_limit"]);
}

#[test]
fn x_api_key_caller_header_is_removed_when_provider_uses_another() {
    let svc = service("enforce");
    let (resp, _) = svc.check(&facts(
        "POST",
        "/v1/chat/completions",
        &[("x-api-key", "k-good")],
    ));
    let o = ok(&resp);
    assert_eq!(o.headers_to_remove, vec!["x-api-key".to_string()]);
    assert_eq!(header(o, "authorization"), Some("Bearer sk-real-openai"));
}

#[test]
fn every_refusal_reason_has_its_status_and_code() {
    let svc = service("enforce");
    // method, path, headers, status, code
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], i32, &'a str);
    let cases: &[Case<'_>] = &[
        ("POST", "/v1/chat/completions", &[], 401, "missing_api_key"),
        (
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer nope")],
            401,
            "invalid_api_key",
        ),
        (
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer k-revoked")],
            401,
            "key_revoked",
        ),
        (
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer k-expired")],
            401,
            "key_expired",
        ),
        (
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer k-future")],
            401,
            "key_not_yet_valid",
        ),
        (
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer k-billing")],
            403,
            "route_not_allowed",
        ),
        (
            "POST",
            "/v1/messages",
            &[("x-api-key", "k-good")],
            403,
            "provider_not_allowed",
        ),
        (
            "POST",
            "/v2/unknown",
            &[("authorization", "Bearer k-good")],
            403,
            "no_route",
        ),
        (
            "GET",
            "/v1/chat/completions",
            &[("authorization", "Bearer k-good")],
            403,
            "no_route",
        ),
    ];
    for (method, path, headers, status, code) in cases {
        let (resp, rec) = svc.check(&facts(method, path, headers));
        let (got_status, body) =
            denied(&resp).unwrap_or_else(|| panic!("{code}: expected a denial"));
        assert_eq!(got_status, *status, "{code}");
        assert_eq!(body["error"]["code"], *code);
        assert_eq!(body["error"]["decision_id"], rec.decision_id.as_str());
        assert!(body["error"]["type"].is_string());
        assert_eq!(rec.verdict, Verdict::Deny);
        // The answer never echoes the credential or any hash.
        let text = body.to_string();
        assert!(
            !text.contains("k-good") && !text.contains("sha256") && !text.contains("sk-real"),
            "{text}"
        );
    }
}

#[test]
fn rate_limit_answers_429_with_retry_after() {
    let svc = service("enforce");
    let f = facts(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer k-limited")],
    );
    assert!(denied(&svc.check(&f).0).is_none());
    assert!(denied(&svc.check(&f).0).is_none());
    let (resp, rec) = svc.check(&f);
    let (status, body) = denied(&resp).expect("third request is limited");
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else {
        unreachable!()
    };
    let retry = d
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "retry-after")
        .map(|h| h.value.clone());
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(
        rec.checks.last().map(|c| c.verdict),
        Some(CheckVerdict::Block)
    );
}

#[test]
fn monitor_mode_allows_and_records_the_would_be_denial() {
    let svc = service("monitor");
    let (resp, rec) = svc.check(&facts(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer k-billing")],
    ));
    let o = ok(&resp);
    assert_eq!(header(o, "authorization"), Some("Bearer sk-real-openai"));
    let meta = Handover::from_struct(resp.dynamic_metadata.as_ref().expect("metadata"));
    assert_eq!(meta.would_be, "403 route_not_allowed");
    assert_eq!(meta.mode, "monitor");
    assert_eq!(rec.verdict, Verdict::Allow);
    assert_eq!(rec.would_be, Some(Verdict::Deny));
    assert_eq!(rec.code, "route_not_allowed");
}

#[test]
fn context_extension_names_the_route() {
    let svc = service("enforce");
    let mut f = facts("POST", "/anything", &[("authorization", "Bearer k-good")]);
    f.context.insert("lifeguard_route".into(), "chat".into());
    assert!(denied(&svc.check(&f).0).is_none());
    f.context.insert("lifeguard_route".into(), "nope".into());
    assert_eq!(denied(&svc.check(&f).0).map(|d| d.0), Some(403));
}

#[test]
fn malformed_input_gets_a_defined_answer() {
    let svc = service("enforce");
    // No attributes at all.
    let (resp, _) = svc.check(&facts_from_check(CheckRequest::default()));
    assert_eq!(denied(&resp).map(|d| d.0), Some(403));
    // A 1 MB bearer token, huge headers, odd bytes.
    let big = "a".repeat(1 << 20);
    let bearer = format!("Bearer {big}");
    let (resp, _) = svc.check(&facts(
        "POST",
        "/v1/chat/completions",
        &[("authorization", bearer.as_str()), ("x-junk", big.as_str())],
    ));
    assert_eq!(
        denied(&resp).map(|d| (d.0, d.1["error"]["code"].clone())),
        Some((401, "invalid_api_key".into()))
    );
    let (resp, _) = svc.check(&facts(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer \u{fffd}\u{0}k-good")],
    ));
    assert_eq!(denied(&resp).map(|d| d.0), Some(401));
    let (resp, _) = svc.check(&facts(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer")],
    ));
    assert_eq!(denied(&resp).map(|d| d.0), Some(401));
    // Non-UTF-8 values arrive through header_map as raw bytes.
    let req = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    header_map: Some(envoy_types::pb::envoy::config::core::v3::HeaderMap {
                        headers: vec![envoy_types::pb::envoy::config::core::v3::HeaderValue {
                            key: "authorization".into(),
                            value: String::new(),
                            raw_value: b"Bearer \xff\xfek-good".to_vec(),
                        }],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let (resp, _) = svc.check(&facts_from_check(req));
    assert_eq!(denied(&resp).map(|d| d.0), Some(401));
}
