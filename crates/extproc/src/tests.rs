//! The per-stream state machine, message by message: order, bodies, failure modes, hand-over, records.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use lifeguard_core::{CheckVerdict, Phase, Verdict};
use lifeguard_policy::{CompileOptions, Snapshot, compile_str};
use lifeguard_wire::{AUTHZ_NAMESPACE, Handover};
use serde_json::{Value, json};

use crate::Exchange;

fn snapshot() -> Snapshot {
    let yaml = r#"
version: 1
name: unit
defaults: { max_body_bytes: 1024 }
providers:
  openai: { format: openai, credential: { env: LG_UNIT_OPENAI }, header: authorization, models: ["gpt-*"] }
keys:
  - { id: k, hash: "sha256:e6ce55efbd155eb5088e23dca9fe058f53b585afa771cf70414adb27fae13f45", models: ["gpt-4o-mini"] }
routes:
  - name: chat
    match: { path_prefix: /v1/chat/completions }
    request: { pii: redact }
    response: { pii: redact }
  - name: open
    match: { path_prefix: /v1/open }
    failure: open
    request: { pii: redact }
  - name: monitor
    match: { path_prefix: /v1/monitor }
    mode: monitor
    request: { pii: redact }
"#;
    compile_str(
        "unit.yaml",
        yaml,
        CompileOptions {
            read_external: true,
        },
    )
    .unwrap_or_else(|p| panic!("{p:#?}"))
}

fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> Msg {
    Msg::RequestHeaders(HttpHeaders {
        headers: Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.to_string(),
                    value: String::new(),
                    raw_value: v.as_bytes().to_vec(),
                })
                .collect(),
        }),
        end_of_stream,
        ..Default::default()
    })
}

fn post(path: &str) -> Msg {
    headers(
        &[
            (":method", "POST"),
            (":path", path),
            ("content-type", "application/json"),
        ],
        false,
    )
}

fn body(bytes: &[u8], end_of_stream: bool) -> Msg {
    Msg::RequestBody(HttpBody {
        body: bytes.to_vec(),
        end_of_stream,
        ..Default::default()
    })
}

fn response_headers(ctype: &str) -> Msg {
    let Msg::RequestHeaders(mut h) = headers(&[(":status", "200"), ("content-type", ctype)], false)
    else {
        unreachable!()
    };
    h.end_of_stream = false;
    Msg::ResponseHeaders(h)
}

fn response_body(bytes: &[u8], end_of_stream: bool) -> Msg {
    Msg::ResponseBody(HttpBody {
        body: bytes.to_vec(),
        end_of_stream,
        ..Default::default()
    })
}

fn send(ex: &mut Exchange<'_>, msg: Msg) -> Result<ProcessingResponse, tonic::Status> {
    ex.on_message(ProcessingRequest {
        request: Some(msg),
        ..Default::default()
    })
}

fn with_handover(msg: Msg, h: &Handover) -> ProcessingRequest {
    let mut md = Metadata::default();
    md.filter_metadata
        .insert(AUTHZ_NAMESPACE.to_string(), h.to_struct());
    ProcessingRequest {
        request: Some(msg),
        metadata_context: Some(md),
        ..Default::default()
    }
}

fn immediate_status(r: &ProcessingResponse) -> Option<(i32, Value)> {
    match &r.response {
        Some(Answer::ImmediateResponse(i)) => Some((
            i.status.as_ref().map(|s| s.code).unwrap_or_default(),
            serde_json::from_slice(&i.body).unwrap(),
        )),
        _ => None,
    }
}

fn replaced_body(r: &ProcessingResponse) -> Option<Vec<u8>> {
    let common = match &r.response {
        Some(Answer::RequestBody(b)) | Some(Answer::ResponseBody(b)) => b.response.as_ref()?,
        _ => return None,
    };
    match common.body_mutation.as_ref()?.mutation.as_ref()? {
        Mutation::Body(b) => Some(b.clone()),
        _ => None,
    }
}

fn set_header(r: &ProcessingResponse, name: &str) -> Option<String> {
    let common = match &r.response {
        Some(Answer::RequestBody(b)) | Some(Answer::ResponseBody(b)) => b.response.as_ref()?,
        Some(Answer::RequestHeaders(h)) | Some(Answer::ResponseHeaders(h)) => {
            h.response.as_ref()?
        }
        _ => return None,
    };
    common
        .header_mutation
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
}

#[test]
fn messages_out_of_order_end_the_stream_with_an_error() {
    let snap = snapshot();
    let mut ex = Exchange::new(&snap, None);
    let err = send(&mut ex, body(b"{}", true)).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let mut ex = Exchange::new(&snap, None);
    assert!(send(&mut ex, response_body(b"x", true)).is_err());
    let mut ex = Exchange::new(&snap, None);
    send(&mut ex, post("/v1/chat/completions")).unwrap();
    assert!(
        send(&mut ex, post("/v1/chat/completions")).is_err(),
        "request headers twice"
    );
    assert!(
        ex.on_message(ProcessingRequest::default()).is_err(),
        "a message with nothing in it"
    );
}

#[test]
fn a_full_exchange_is_answered_and_recorded() {
    let snap = snapshot();
    let mut ex = Exchange::new(
        &snap,
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    );
    let h = Handover {
        decision_id: "d".repeat(32),
        key_id: "k".into(),
        route: "chat".into(),
        ..Default::default()
    };
    let r = ex
        .on_message(with_handover(post("/v1/chat/completions"), &h))
        .unwrap();
    // The route inspects responses, so no phases are skipped; accept-encoding is removed.
    assert!(r.mode_override.is_none());
    let Some(Answer::RequestHeaders(hr)) = &r.response else {
        panic!()
    };
    assert_eq!(
        hr.response
            .as_ref()
            .unwrap()
            .header_mutation
            .as_ref()
            .unwrap()
            .remove_headers,
        vec!["accept-encoding".to_string()]
    );
    let req = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let r = send(&mut ex, body(req.to_string().as_bytes(), true)).unwrap();
    assert!(immediate_status(&r).is_none());
    let r = send(&mut ex, response_headers("application/json")).unwrap();
    assert_eq!(
        r.mode_override.map(|m| m.response_body_mode),
        Some(BodySendMode::Buffered as i32)
    );
    let answer = json!({"choices": [{"message": {"role": "assistant", "content": "hello"}}]});
    let r = send(&mut ex, response_body(answer.to_string().as_bytes(), true)).unwrap();
    assert_eq!(
        replaced_body(&r).map(|b| serde_json::from_slice::<Value>(&b).unwrap()),
        Some(answer)
    );
    let records = ex.finish();
    assert_eq!(
        records.iter().map(|r| r.phase).collect::<Vec<_>>(),
        vec![Phase::Request, Phase::Response]
    );
    assert!(
        records
            .iter()
            .all(|r| r.decision_id == "d".repeat(32) && r.key_id == "k" && r.route == "chat")
    );
    assert_eq!(records[0].model, "gpt-4o-mini");
    assert!(
        records[0]
            .traceparent
            .as_deref()
            .is_some_and(|t| t.contains("4bf92f35"))
    );
    assert!(
        records[0]
            .checks
            .iter()
            .any(|c| c.id == "model" && c.verdict == CheckVerdict::Pass)
    );
}

#[test]
fn routes_that_do_not_inspect_responses_skip_those_phases() {
    let snap = snapshot();
    let mut ex = Exchange::new(&snap, None);
    let r = send(&mut ex, post("/v1/open")).unwrap();
    let m = r.mode_override.expect("mode override");
    assert_eq!(m.response_header_mode, HeaderSendMode::Skip as i32);
    assert_eq!(m.response_body_mode, BodySendMode::None as i32);
}

#[test]
fn a_request_without_a_body_goes_straight_to_its_response() {
    let snap = snapshot();
    let mut ex = Exchange::new(&snap, None);
    send(
        &mut ex,
        headers(
            &[(":method", "GET"), (":path", "/v1/chat/completions")],
            true,
        ),
    )
    .unwrap();
    let r = send(&mut ex, response_headers("text/plain")).unwrap();
    assert_eq!(
        r.mode_override.map(|m| m.response_body_mode),
        Some(BodySendMode::None as i32)
    );
    let records = ex.finish();
    assert!(
        records[0]
            .checks
            .iter()
            .any(|c| c.id == "body" && c.verdict == CheckVerdict::Skipped)
    );
}

#[test]
fn unreadable_bodies_follow_the_failure_mode() {
    let snap = snapshot();
    // Fail closed: over the cap is 413, malformed JSON 400, both with the OpenAI error shape.
    let mut ex = Exchange::new(&snap, None);
    send(&mut ex, post("/v1/chat/completions")).unwrap();
    let (status, v) = immediate_status(&send(&mut ex, body(&[b'x'; 2048], true)).unwrap()).unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("request_too_large"))
    );
    let mut ex = Exchange::new(&snap, None);
    send(&mut ex, post("/v1/chat/completions")).unwrap();
    let (status, v) =
        immediate_status(&send(&mut ex, body(b"{\"model\":", true)).unwrap()).unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    // Invalid UTF-8 is malformed JSON too.
    let mut ex = Exchange::new(&snap, None);
    send(&mut ex, post("/v1/chat/completions")).unwrap();
    assert_eq!(
        immediate_status(&send(&mut ex, body(b"{\"a\":\"\xff\"}", true)).unwrap()).map(|x| x.0),
        Some(400)
    );
    // Fail open: let through, marked uninspected, recorded as such.
    let mut ex = Exchange::new(&snap, None);
    send(&mut ex, post("/v1/open")).unwrap();
    let r = send(&mut ex, body(b"not json", true)).unwrap();
    assert!(immediate_status(&r).is_none());
    assert_eq!(
        set_header(&r, "x-lifeguard-flags").as_deref(),
        Some("uninspected")
    );
    let rec = &ex.finish()[0];
    assert_eq!(rec.verdict, Verdict::Flag);
    assert_eq!(
        rec.checks[0].failure,
        Some(lifeguard_core::FailureMode::Open)
    );
}

#[test]
fn streamed_request_chunks_are_held_until_the_whole_body_is_judged() {
    let snap = snapshot();
    let mut ex = Exchange::new(&snap, None);
    send(&mut ex, post("/v1/chat/completions")).unwrap();
    let whole = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
        .to_string();
    let (a, b) = whole.as_bytes().split_at(10);
    let r = send(&mut ex, body(a, false)).unwrap();
    assert_eq!(replaced_body(&r), Some(Vec::new()), "first chunk held back");
    let r = send(&mut ex, body(b, true)).unwrap();
    assert!(immediate_status(&r).is_none());
}

#[test]
fn the_model_must_be_in_the_callers_and_the_providers_scope() {
    let snap = snapshot();
    for (model, allowed) in [
        ("gpt-4o-mini", true),
        ("gpt-4o", false),
        ("claude-3", false),
    ] {
        let mut ex = Exchange::new(&snap, None);
        let h = Handover {
            key_id: "k".into(),
            route: "chat".into(),
            ..Default::default()
        };
        ex.on_message(with_handover(post("/v1/chat/completions"), &h))
            .unwrap();
        let r = send(
            &mut ex,
            body(
                json!({"model": model, "messages": []})
                    .to_string()
                    .as_bytes(),
                true,
            ),
        )
        .unwrap();
        match immediate_status(&r) {
            None => assert!(allowed, "{model}"),
            Some((status, v)) => {
                assert!(!allowed, "{model}");
                assert_eq!(
                    (status, v["error"]["code"].as_str()),
                    (403, Some("model_not_allowed"))
                );
            }
        }
    }
    // A JWT caller's model globs arrive in the hand-over.
    let mut ex = Exchange::new(&snap, None);
    let h = Handover {
        key_id: "alice".into(),
        route: "chat".into(),
        models: vec!["gpt-3*".into()],
        ..Default::default()
    };
    ex.on_message(with_handover(post("/v1/chat/completions"), &h))
        .unwrap();
    let r = send(&mut ex, body(br#"{"model": "gpt-4o-mini"}"#, true)).unwrap();
    assert_eq!(immediate_status(&r).map(|x| x.0), Some(403));
}

#[test]
fn monitor_mode_changes_nothing() {
    let snap = snapshot();
    let mut ex = Exchange::new(&snap, None);
    send(&mut ex, post("/v1/monitor")).unwrap();
    let r = send(&mut ex, body(br#"{"model": "claude-3"}"#, true)).unwrap();
    assert!(immediate_status(&r).is_none() && replaced_body(&r).is_none());
    let rec = &ex.finish()[0];
    assert_eq!(
        (rec.verdict, rec.would_be),
        (Verdict::Allow, Some(Verdict::Deny))
    );
}

#[test]
fn a_local_reply_of_an_earlier_filter_passes_untouched() {
    let snap = snapshot();
    let mut ex = Exchange::new(&snap, None);
    let r = send(&mut ex, response_headers("application/json")).unwrap();
    assert!(matches!(r.response, Some(Answer::ResponseHeaders(_))));
    assert!(ex.finish().is_empty(), "nothing of ours was decided");
}

#[test]
fn a_stream_cut_off_by_envoy_still_records_what_it_saw() {
    let snap = snapshot();
    let mut ex = Exchange::new(&snap, None);
    send(&mut ex, post("/v1/chat/completions")).unwrap();
    send(&mut ex, body(br#"{"model": "gpt-4o-mini"}"#, true)).unwrap();
    send(&mut ex, response_headers("text/event-stream")).unwrap();
    send(
        &mut ex,
        response_body(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par",
            false,
        ),
    )
    .unwrap();
    let records = ex.finish();
    let response = records
        .iter()
        .find(|r| r.phase == Phase::Response)
        .expect("response record");
    assert!(
        response
            .checks
            .iter()
            .any(|c| c.id == "stream" && c.verdict == CheckVerdict::Error)
    );
}

#[test]
fn sse_events_pass_through_unchanged_when_nothing_is_found() {
    let snap = snapshot();
    let mut ex = Exchange::new(&snap, None);
    send(&mut ex, post("/v1/chat/completions")).unwrap();
    send(
        &mut ex,
        body(br#"{"model": "gpt-4o-mini", "stream": true}"#, true),
    )
    .unwrap();
    let r = send(
        &mut ex,
        response_headers("text/event-stream; charset=utf-8"),
    )
    .unwrap();
    assert_eq!(
        r.mode_override.map(|m| m.response_body_mode),
        Some(BodySendMode::Streamed as i32)
    );
    let mut out = Vec::new();
    let events = [
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"}}]}\n\n",
        "data: [DONE]\n\n",
    ];
    for (i, e) in events.iter().enumerate() {
        let r = send(&mut ex, response_body(e.as_bytes(), i == events.len() - 1)).unwrap();
        match replaced_body(&r) {
            Some(b) => out.extend(b),
            None => out.extend(e.as_bytes()),
        }
    }
    assert_eq!(String::from_utf8(out).unwrap(), events.concat());
}
