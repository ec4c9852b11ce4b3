//! Decisions explained as OTLP spans joined to Envoy's trace, and bundles hot-reloaded under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fake_opentelemetry_collector::FakeCollectorServer;
use lifeguard_e2e::*;
use serde_json::{Value, json};

fn hash(key: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{:x}", Sha256::digest(key.as_bytes()))
}

fn bundle(version_marker: &str) -> String {
    format!(
        r#"
# {version_marker}
version: 1
name: e2e-observability
providers:
  openai: {{ format: openai, credential: {{ env: E2E_OPENAI_KEY }}, header: authorization, prefix: "Bearer " }}
keys:
  - {{ id: search, hash: "{h}", team: search, env: prod, app: ranker }}
routes:
  - name: chat
    match: {{ path_prefix: /v1/chat/completions }}
    allow: [ {{ teams: [search] }} ]
    request: {{ injection: block, pii: redact }}
"#,
        h = hash("lgk-search")
    )
}

fn body() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_spans_join_envoys_trace_with_a_child_per_check() {
    let mut collector = FakeCollectorServer::start().await.expect("collector");
    let endpoint = collector.endpoint();
    let otlp_port: u16 = endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let stub = StubUpstream::start().unwrap();
    let lifeguard = Lifeguard::start(
        &bundle("v1"),
        &[
            ("E2E_OPENAI_KEY", "sk-real"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await
    .unwrap();
    let mut vars = envoy_vars(lifeguard.grpc_port(), stub.port());
    vars.push(("OTLP_PORT", otlp_port.to_string()));
    let envoy = Envoy::start("lifeguard-traced.yaml", &vars).await.unwrap();

    let r = http_post_json(
        &envoy.url("/v1/chat/completions"),
        &[("authorization", "Bearer lgk-search")],
        &body(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let decision = r.header("x-lifeguard-decision-id").unwrap().to_string();

    // Envoy's request span, its ext_authz / ext_proc client spans, and Lifeguard's decision + check spans.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut spans = Vec::new();
    while Instant::now() < deadline {
        spans.extend(
            collector
                .exported_spans(1, Duration::from_millis(500))
                .await,
        );
        let have_authz = spans.iter().any(|s| s.name == "lifeguard.authz");
        let have_envoy = spans.iter().any(|s| !s.name.starts_with("lifeguard."));
        if have_authz && have_envoy && spans.iter().any(|s| s.name == "lifeguard.extproc.request") {
            break;
        }
    }
    let authz = spans
        .iter()
        .find(|s| s.name == "lifeguard.authz")
        .unwrap_or_else(|| panic!("no authz span: {spans:#?}"));
    let envoy_spans: Vec<_> = spans
        .iter()
        .filter(|s| !s.name.starts_with("lifeguard."))
        .collect();
    assert!(
        !envoy_spans.is_empty(),
        "Envoy exported its spans: {spans:#?}"
    );
    assert!(
        envoy_spans.iter().any(|e| e.trace_id == authz.trace_id),
        "the decision sits in Envoy's trace: {authz:#?} vs {envoy_spans:#?}"
    );
    assert!(
        envoy_spans
            .iter()
            .any(|e| e.span_id == authz.parent_span_id),
        "the decision's parent is an Envoy span"
    );
    assert!(
        authz
            .attributes
            .get("lifeguard.decision_id")
            .is_some_and(|v| v.contains(&decision)),
        "{authz:#?}"
    );
    assert!(authz.attributes.contains_key("lifeguard.bundle.hash"));
    // One child per check, including those that passed.
    let children: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id == authz.span_id)
        .collect();
    let ids: Vec<String> = children
        .iter()
        .filter_map(|c| c.attributes.get("lifeguard.check.id").cloned())
        .collect();
    for want in ["route", "identity", "scope", "rate_limit"] {
        assert!(
            ids.iter().any(|i| i.contains(want)),
            "check {want} in {ids:?}"
        );
    }
    assert!(
        children
            .iter()
            .all(|c| c.attributes.contains_key("lifeguard.check.verdict")
                && c.attributes.contains_key("lifeguard.check.latency_us"))
    );
    let request = spans
        .iter()
        .find(|s| s.name == "lifeguard.extproc.request")
        .expect("ext_proc request span");
    assert_eq!(request.trace_id, authz.trace_id, "both gates in one trace");
    let all = format!("{spans:?}");
    assert!(
        !all.contains("hello there") && !all.contains("lgk-search") && !all.contains("sk-real"),
        "no raw text or keys in spans"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_reload_under_load_without_a_failed_request() {
    let s = Stack::start(&bundle("v0"), &[("E2E_OPENAI_KEY", "sk-real")])
        .await
        .unwrap();
    let url = s.url("/v1/chat/completions");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http_post_json(&url, &[("authorization", "Bearer lgk-search")], &body()).await
                {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let dir = s.lifeguard.bundle_path().parent().unwrap().to_path_buf();
    let mut expected_versions = 1u64;
    for i in 1..=12 {
        let text = if i % 3 == 0 {
            "version: 1\nname: broken\nroutes: [ {name: x, nonsense: 1} ]\n".to_string()
        } else {
            bundle(&format!("v{i}"))
        };
        // Rewrite through a temp file + rename (what editors and GitOps agents do); every 4th through a
        // ConfigMap-style symlink swap of the bundle file.
        let tmp = dir.join(format!(".bundle-{i}.yaml"));
        std::fs::write(&tmp, &text).unwrap();
        if i % 4 == 0 {
            let link = dir.join(".bundle-link");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&tmp, &link).unwrap();
            std::fs::rename(&link, s.lifeguard.bundle_path()).unwrap();
        } else {
            std::fs::rename(&tmp, s.lifeguard.bundle_path()).unwrap();
        }
        if i % 3 != 0 {
            expected_versions += 1;
            // The new version is in force within a second of the write.
            let deadline = Instant::now() + Duration::from_secs(1);
            loop {
                let ready: Value = s
                    .lifeguard
                    .admin_get("/readyz")
                    .await
                    .unwrap()
                    .json()
                    .unwrap();
                if ready["version"].as_u64() == Some(expected_versions) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "version {expected_versions} not in force within 1 s: {ready}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during reloads"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "load actually ran: {}",
        ok.load(Ordering::Relaxed)
    );
    let metrics = s.lifeguard.admin_get("/metrics").await.unwrap().text();
    let failed_reloads: u64 = metrics
        .lines()
        .find(|l| l.starts_with("lifeguard_reloads_total{result=\"failed\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(
        failed_reloads >= 4,
        "invalid bundles refused and counted: {failed_reloads}"
    );
    // Each request was decided by exactly one version: every audit line names one bundle version, and the
    // request and authz decisions of one request agree on it.
    let log = s.lifeguard.log();
    let mut by_id: std::collections::HashMap<String, Vec<u64>> = std::collections::HashMap::new();
    for line in log
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("\"audit\""))
    {
        let v: Value = serde_json::from_str(line).unwrap();
        by_id
            .entry(v["decision_id"].as_str().unwrap().to_string())
            .or_default()
            .push(v["bundle"]["version"].as_u64().unwrap());
    }
    assert!(by_id.len() > 50);
    let versions: std::collections::BTreeSet<u64> = by_id.values().flatten().copied().collect();
    assert!(
        versions.len() >= 3,
        "requests were decided by several versions over the run: {versions:?}"
    );
}
