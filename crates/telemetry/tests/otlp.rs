//! OTLP export against an in-process fake collector (fake-opentelemetry-collector, bound to 127.0.0.1:0), and
//! against a collector that is down.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fake_opentelemetry_collector::{ExportedSpan, FakeCollectorServer};
use lifeguard_core::{
    BundleRef, CheckRecord, CheckVerdict, DecisionRecord, DecisionSink, FailureMode, Mode, Phase,
    ShadowOutcome, Verdict,
};
use lifeguard_telemetry::{Metrics, OtlpConfig, OtlpExporter};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const ENVOY_SPAN_ID: &str = "00f067aa0ba902b7";
const START: u128 = 1_700_000_000_123_456_789;

fn check(id: &str, verdict: CheckVerdict, latency_us: f64) -> CheckRecord {
    let mut c = CheckRecord::new(id, verdict);
    c.latency_us = latency_us;
    c
}

fn decision(decision_id: &str, traceparent: Option<&str>) -> DecisionRecord {
    let mut pii = check("pii", CheckVerdict::Redact, 40.0).reason("2 emails redacted");
    pii.rules = vec!["pii.email".to_string(), "pii.phone".to_string()];
    let mut injection = check("injection", CheckVerdict::Error, 30.0).reason("detector timed out");
    injection.score = Some(0.5);
    injection.threshold = Some(0.75);
    injection.failure = Some(FailureMode::Open);
    DecisionRecord {
        decision_id: decision_id.to_string(),
        phase: Phase::Request,
        verdict: Verdict::Redact,
        would_be: Some(Verdict::Deny),
        mode: Mode::Monitor,
        failure: None,
        route: "chat".to_string(),
        key_id: "key-123".to_string(),
        team: "search".to_string(),
        env: "prod".to_string(),
        app: "assistant".to_string(),
        model: "gpt-4o".to_string(),
        status: Some(200),
        code: "pii_redacted".to_string(),
        bundle: BundleRef {
            name: "default".to_string(),
            version: 7,
            hash: "0123456789abcdef".to_string(),
        },
        checks: vec![check("identity", CheckVerdict::Pass, 10.0), pii, injection],
        traceparent: traceparent.map(str::to_string),
        start_unix_nanos: START,
        duration_us: 100.0,
        shadow: Some(ShadowOutcome {
            bundle: BundleRef {
                name: "candidate".to_string(),
                version: 8,
                hash: "fedcba9876543210".to_string(),
            },
            verdict: Verdict::Deny,
            agrees: false,
        }),
    }
}

/// The fake collector renders each attribute value with `Debug` of the protobuf `AnyValue`.
fn s(v: &str) -> String {
    format!("Some(AnyValue {{ value: Some(StringValue({v:?})) }})")
}
fn i(v: i64) -> String {
    format!("Some(AnyValue {{ value: Some(IntValue({v})) }})")
}
fn f(v: f64) -> String {
    format!("Some(AnyValue {{ value: Some(DoubleValue({v:?})) }})")
}
fn b(v: bool) -> String {
    format!("Some(AnyValue {{ value: Some(BoolValue({v})) }})")
}

fn attr<'a>(span: &'a ExportedSpan, key: &str) -> &'a str {
    span.attributes
        .get(key)
        .map(String::as_str)
        .unwrap_or_else(|| {
            panic!(
                "{} has no attribute {key}: {:?}",
                span.name, span.attributes
            )
        })
}

fn by_name<'a>(spans: &'a [ExportedSpan], name: &str) -> &'a ExportedSpan {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
}

async fn exporter_for(collector: &FakeCollectorServer) -> (OtlpExporter, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let exporter = OtlpExporter::new(OtlpConfig::new(collector.endpoint()), Arc::clone(&metrics))
        .expect("exporter");
    (exporter, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_becomes_a_span_with_a_child_per_check_in_envoys_trace() {
    let mut collector = FakeCollectorServer::start().await.expect("fake collector");
    let (exporter, metrics) = exporter_for(&collector).await;

    let traceparent = format!("00-{TRACE_ID}-{ENVOY_SPAN_ID}-01");
    exporter.export(&decision("d-1", Some(&traceparent)));
    exporter
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shutdown");

    let spans = collector.exported_spans(4, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_eq!(exporter.exported(), 4);
    assert_eq!(exporter.dropped(), 0);
    assert_eq!(metrics.spans_dropped.load(Ordering::Relaxed), 0);

    let parent = by_name(&spans, "lifeguard.extproc.request");
    assert_eq!(parent.trace_id, TRACE_ID);
    assert_eq!(parent.parent_span_id, ENVOY_SPAN_ID);
    assert_eq!(parent.start_time_unix_nano, START as u64);
    assert_eq!(parent.end_time_unix_nano, START as u64 + 100_000);
    for (key, want) in [
        ("lifeguard.decision_id", s("d-1")),
        ("lifeguard.key_id", s("key-123")),
        ("lifeguard.team", s("search")),
        ("lifeguard.env", s("prod")),
        ("lifeguard.app", s("assistant")),
        ("lifeguard.route", s("chat")),
        ("lifeguard.model", s("gpt-4o")),
        ("lifeguard.mode", s("monitor")),
        ("lifeguard.verdict", s("redact")),
        ("lifeguard.would_be", s("deny")),
        ("lifeguard.status", i(200)),
        ("lifeguard.code", s("pii_redacted")),
        ("lifeguard.bundle.name", s("default")),
        ("lifeguard.bundle.version", i(7)),
        ("lifeguard.bundle.hash", s("0123456789abcdef")),
        ("lifeguard.shadow.bundle.name", s("candidate")),
        ("lifeguard.shadow.bundle.version", i(8)),
        ("lifeguard.shadow.bundle.hash", s("fedcba9876543210")),
        ("lifeguard.shadow.verdict", s("deny")),
        ("lifeguard.shadow.agrees", b(false)),
    ] {
        assert_eq!(attr(parent, key), want, "{key}");
    }
    // A check errored, so the decision's span is an error too.
    assert_eq!(
        parent.status.as_ref().map(|s| s.code.as_str()),
        Some("STATUS_CODE_ERROR")
    );

    let identity = by_name(&spans, "lifeguard.check identity");
    let pii = by_name(&spans, "lifeguard.check pii");
    let injection = by_name(&spans, "lifeguard.check injection");
    for child in [identity, pii, injection] {
        assert_eq!(child.trace_id, TRACE_ID);
        assert_eq!(child.parent_span_id, parent.span_id, "{}", child.name);
        assert!(child.start_time_unix_nano >= parent.start_time_unix_nano);
        assert!(child.end_time_unix_nano <= parent.end_time_unix_nano);
    }
    // Sequential, each as long as its latency.
    assert_eq!(identity.start_time_unix_nano, START as u64);
    assert_eq!(identity.end_time_unix_nano, START as u64 + 10_000);
    assert_eq!(pii.start_time_unix_nano, identity.end_time_unix_nano);
    assert_eq!(pii.end_time_unix_nano, pii.start_time_unix_nano + 40_000);
    assert_eq!(injection.start_time_unix_nano, pii.end_time_unix_nano);
    assert_eq!(
        injection.end_time_unix_nano,
        injection.start_time_unix_nano + 30_000
    );

    assert_eq!(attr(identity, "lifeguard.check.id"), s("identity"));
    assert_eq!(attr(identity, "lifeguard.check.verdict"), s("pass"));
    assert_eq!(attr(identity, "lifeguard.check.latency_us"), f(10.0));
    assert_eq!(
        identity.status.as_ref().map(|s| s.code.as_str()),
        Some("STATUS_CODE_UNSET")
    );

    assert_eq!(attr(pii, "lifeguard.check.verdict"), s("redact"));
    assert_eq!(attr(pii, "lifeguard.check.reason"), s("2 emails redacted"));
    let rules = attr(pii, "lifeguard.check.rules");
    assert!(
        rules.contains("ArrayValue")
            && rules.contains("StringValue(\"pii.email\")")
            && rules.contains("StringValue(\"pii.phone\")"),
        "{rules}"
    );

    assert_eq!(attr(injection, "lifeguard.check.verdict"), s("error"));
    assert_eq!(attr(injection, "lifeguard.check.score"), f(0.5));
    assert_eq!(attr(injection, "lifeguard.check.threshold"), f(0.75));
    assert_eq!(attr(injection, "lifeguard.check.failure"), s("open"));
    assert_eq!(
        attr(injection, "lifeguard.check.reason"),
        s("detector timed out")
    );
    assert_eq!(
        injection.status.as_ref().map(|s| s.code.as_str()),
        Some("STATUS_CODE_ERROR")
    );

    collector.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_traceparent_starts_a_new_root_trace() {
    let mut collector = FakeCollectorServer::start().await.expect("fake collector");
    let (exporter, _metrics) = exporter_for(&collector).await;

    // The decision id has the shape of a trace id, so the new trace is named after it.
    let decision_id = "0af7651916cd43dd8448eb211c80319c";
    let mut d = decision(decision_id, Some("00-not-a-traceparent-01"));
    d.phase = Phase::Authz;
    d.checks.truncate(1);
    exporter.export(&d);
    // A decision id that is no trace id, with a traceparent of the right length but upper-case digits.
    let mut d = decision(
        "d-2",
        Some(&format!(
            "00-{}-{ENVOY_SPAN_ID}-01",
            TRACE_ID.to_uppercase()
        )),
    );
    d.phase = Phase::Response;
    d.checks.clear();
    exporter.record(d);
    exporter
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shutdown");

    let spans = collector.exported_spans(3, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");

    let authz = by_name(&spans, "lifeguard.authz");
    assert_eq!(authz.parent_span_id, "");
    assert_eq!(authz.trace_id, decision_id);
    let child = by_name(&spans, "lifeguard.check identity");
    assert_eq!(child.parent_span_id, authz.span_id);
    assert_eq!(child.trace_id, decision_id);

    let response = by_name(&spans, "lifeguard.extproc.response");
    assert_eq!(response.parent_span_id, "");
    assert_eq!(response.trace_id.len(), 32);
    assert_ne!(response.trace_id, "0".repeat(32));
    assert_ne!(response.trace_id, TRACE_ID);
    assert_ne!(response.trace_id, decision_id);

    collector.abort();
}

/// The worker only runs when the test awaits (current-thread runtime), so a burst fills the queue exactly.
#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let mut collector = FakeCollectorServer::start().await.expect("fake collector");
    let metrics = Arc::new(Metrics::default());
    let mut config = OtlpConfig::new(collector.endpoint());
    config.max_queue_spans = 8; // two decisions of four spans
    let exporter = OtlpExporter::new(config, Arc::clone(&metrics)).expect("exporter");

    for n in 0..100 {
        exporter.export(&decision(&format!("d-{n}"), None));
    }
    assert_eq!(exporter.dropped(), 98 * 4);
    assert_eq!(metrics.spans_dropped.load(Ordering::Relaxed), 98 * 4);
    exporter
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shutdown");
    assert_eq!(exporter.exported(), 8);

    let spans = collector.exported_spans(8, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 8);

    // After shutdown nothing is queued any more, only counted.
    exporter.export(&decision("late", None));
    assert_eq!(exporter.dropped(), 99 * 4);
    collector.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_requests_nothing() {
    // A port that was just free: nothing listens on it.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let metrics = Arc::new(Metrics::default());
    let mut config = OtlpConfig::new(format!("http://127.0.0.1:{port}"));
    config.timeout = Duration::from_secs(2);
    let exporter = OtlpExporter::new(config, Arc::clone(&metrics)).expect("exporter");

    const DECISIONS: u64 = 10_000;
    let records: Vec<DecisionRecord> = (0..DECISIONS)
        .map(|n| decision(&format!("d-{n}"), None))
        .collect();
    let started = Instant::now();
    for d in &records {
        exporter.export(d);
    }
    let elapsed = started.elapsed();
    println!(
        "exported {DECISIONS} decisions to a dead collector in {elapsed:?} ({:?} per call); {} spans dropped at once",
        elapsed / DECISIONS as u32,
        exporter.dropped()
    );
    // The queue holds 2048 spans (plus the batch the worker is filling or sending): most of the 40,000 were
    // dropped on the spot rather than waited for.
    assert!(
        exporter.dropped() > 4 * DECISIONS / 2,
        "{}",
        exporter.dropped()
    );

    // Shorter than it takes to fail every queued batch (each is retried with back-off): the rest is counted.
    let started = Instant::now();
    let shutdown = exporter.shutdown(Duration::from_secs(2)).await;
    println!("shutdown took {:?}: {shutdown:?}", started.elapsed());
    shutdown.expect("shutdown within its timeout");

    // Every span is accounted for, and none arrived.
    assert_eq!(exporter.exported(), 0);
    assert_eq!(exporter.dropped(), 4 * DECISIONS);
    assert_eq!(metrics.spans_dropped.load(Ordering::Relaxed), 4 * DECISIONS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_does_not_hold_up_shutdown() {
    // Accepts connections (the kernel completes the handshake) but never speaks HTTP/2.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let metrics = Arc::new(Metrics::default());
    let mut config = OtlpConfig::new(format!("http://127.0.0.1:{port}"));
    config.timeout = Duration::from_secs(30);
    config.max_batch_spans = 8;
    let exporter = OtlpExporter::new(config, Arc::clone(&metrics)).expect("exporter");

    const DECISIONS: u64 = 1_000;
    for n in 0..DECISIONS {
        exporter.export(&decision(&format!("d-{n}"), None));
    }
    // Let the worker start an export call that will hang.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let shutdown = exporter.shutdown(Duration::from_secs(1)).await;
    let elapsed = started.elapsed();
    println!("shutdown with a hung export call took {elapsed:?}: {shutdown:?}");
    shutdown.expect("the hung call is abandoned at the shutdown deadline");
    assert_eq!(exporter.exported(), 0);
    assert_eq!(exporter.dropped(), 4 * DECISIONS);
    assert_eq!(metrics.spans_dropped.load(Ordering::Relaxed), 4 * DECISIONS);
    drop(listener);
}
