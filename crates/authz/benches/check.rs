//! The ext_authz decision path with 100,000 keys in the bundle: CheckRequest -> facts -> decision -> answer.

use std::collections::HashMap;
use std::fmt::Write;
use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use lifeguard_authz::{AuthzService, facts_from_check};
use lifeguard_core::NullSink;
use lifeguard_policy::{CompileOptions, compile_str, hash_key};

const KEYS: usize = 100_000;

fn bundle() -> String {
    let mut y = String::from(
        "version: 1\nname: bench\nproviders:\n  openai: { format: openai, credential: { env: LG_UNIT_OPENAI }, header: authorization, prefix: \"Bearer \" }\nroutes:\n  - name: chat\n    match: { path_prefix: /v1/chat/completions, methods: [POST] }\n    allow: [ { teams: [team-1, team-2, team-3] } ]\nkeys:\n",
    );
    for i in 0..KEYS {
        let h: String = hash_key(&format!("lgk-bench-{i}"))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let _ = writeln!(
            y,
            "  - {{ id: key-{i}, hash: \"sha256:{h}\", team: team-{}, models: [\"gpt-4o-mini\", \"gpt-4.1-*\"], rate_limit: {{ requests_per_minute: 1000000000 }} }}",
            i % 5
        );
    }
    y
}

fn check_request(key: &str) -> CheckRequest {
    let headers: HashMap<String, String> = [
        (":authority", "llm.internal"),
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("authorization", &format!("Bearer {key}")),
        ("content-type", "application/json"),
        ("user-agent", "openai-python/1.40.0"),
        ("x-request-id", "6d2f1c1e-2b7c-4a8e-9d7f-3f6c2a1b0e9d"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([(
                "lifeguard_route".to_string(),
                "chat".to_string(),
            )]),
            ..Default::default()
        }),
    }
}

fn bench(c: &mut Criterion) {
    let text = bundle();
    let mut g = c.benchmark_group("bundle");
    g.sample_size(10);
    g.bench_function("compile_100k_keys", |b| {
        b.iter(|| {
            compile_str(
                "b.yaml",
                black_box(&text),
                CompileOptions {
                    read_external: true,
                },
            )
            .is_ok()
        })
    });
    g.finish();

    let snap = compile_str(
        "b.yaml",
        &text,
        CompileOptions {
            read_external: true,
        },
    )
    .expect("bundle compiles");
    let svc = AuthzService::new(Arc::new(ArcSwap::from_pointee(snap)), Arc::new(NullSink));
    let mut g = c.benchmark_group("check_100k_keys");
    for (name, key) in [
        ("allow", "lgk-bench-4242"),
        ("deny_unknown_key", "lgk-nope"),
        ("deny_wrong_team", "lgk-bench-4244"),
    ] {
        let req = check_request(key);
        g.bench_function(name, |b| {
            b.iter(|| {
                let facts = facts_from_check(black_box(req.clone()));
                black_box(svc.check(&facts))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
