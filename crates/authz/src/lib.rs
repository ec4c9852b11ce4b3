//! Lifeguard's ext_authz service (`envoy.service.auth.v3.Authorization/Check`): who is calling, and may they
//! make this call, decided on every request before the model is reached.
//!
//! Key design decision: the gRPC handler only converts. `CheckRequest` becomes [`RequestFacts`] at the edge, the
//! pure policy crate decides against one snapshot loaded once per request, the stateful rate limit is applied on
//! top, and the outcome becomes a `CheckResponse`: a credential swap plus hand-over metadata on allow, an
//! OpenAI-shaped JSON error on deny.
#![forbid(unsafe_code)]

mod ratelimit;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use lifeguard_core::{
    CheckRecord, CheckVerdict, DecisionRecord, DecisionSink, Mode, Phase, RequestFacts,
    ShadowOutcome, Verdict, decision_id,
};
use lifeguard_policy::{CheckDecision, Denial, Snapshot, decide};
use lifeguard_wire::{DECISION_HEADER, Handover, error_body, set_header};

pub use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
pub use ratelimit::RateLimiter;

/// gRPC status codes Envoy reads from a CheckResponse.
const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// The Check service. Cheap to clone; all state is shared.
#[derive(Clone)]
pub struct AuthzService {
    snapshots: Arc<ArcSwap<Snapshot>>,
    limiter: Arc<RateLimiter>,
    sink: Arc<dyn DecisionSink>,
}

impl AuthzService {
    pub fn new(snapshots: Arc<ArcSwap<Snapshot>>, sink: Arc<dyn DecisionSink>) -> Self {
        AuthzService {
            snapshots,
            limiter: Arc::new(RateLimiter::default()),
            sink,
        }
    }

    /// Decides one request: the answer for Envoy and the explained decision.
    pub fn check(&self, facts: &RequestFacts) -> (CheckResponse, DecisionRecord) {
        let started = Instant::now();
        let start_unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let snapshot = self.snapshots.load();
        let now = jiff::Timestamp::now();
        let mut decision = decide(&snapshot, facts, now);
        self.rate_limit(&mut decision, started);
        // A candidate bundle is decided beside the live one, never enforced; disagreements are recorded.
        let shadow = snapshot.candidate.as_ref().map(|candidate| {
            let theirs = decide(candidate, facts, now).denial.is_some();
            let ours = decision.denial.is_some();
            ShadowOutcome {
                bundle: candidate.bundle.clone(),
                verdict: if theirs {
                    Verdict::Deny
                } else {
                    Verdict::Allow
                },
                agrees: theirs == ours,
            }
        });
        let id = decision_id(rand::random::<u128>());
        let response = respond(&snapshot, &decision, &id);
        let identity = decision.identity.clone().unwrap_or_default();
        let record = DecisionRecord {
            decision_id: id,
            phase: Phase::Authz,
            verdict: if decision.enforced().is_some() {
                Verdict::Deny
            } else {
                Verdict::Allow
            },
            would_be: match (decision.mode, &decision.denial) {
                (Mode::Monitor, Some(_)) => Some(Verdict::Deny),
                _ => None,
            },
            mode: decision.mode,
            failure: None,
            route: decision.route.map(|r| r.name.clone()).unwrap_or_default(),
            key_id: identity.id,
            team: identity.team,
            env: identity.env,
            app: identity.app,
            model: String::new(),
            status: decision.enforced().map(|d| d.status),
            code: decision
                .denial
                .as_ref()
                .map(|d| d.code.to_string())
                .unwrap_or_default(),
            bundle: snapshot.bundle.clone(),
            checks: decision.checks,
            traceparent: facts.headers.get("traceparent").cloned(),
            start_unix_nanos,
            duration_us: started.elapsed().as_secs_f64() * 1e6,
            shadow,
        };
        (response, record)
    }

    fn rate_limit(&self, decision: &mut CheckDecision<'_>, now: Instant) {
        let Some(key) = decision.key else { return };
        let t = Instant::now();
        let (verdict, denial, reason) = match key.rate_limit {
            None => (
                CheckVerdict::Skipped,
                None,
                "key has no rate limit".to_string(),
            ),
            Some(limit) if decision.denial.is_some() => {
                let _ = limit;
                (
                    CheckVerdict::Skipped,
                    None,
                    "request already refused".to_string(),
                )
            }
            Some(limit) => match self.limiter.take(&key.hash, limit, now) {
                Ok(()) => (
                    CheckVerdict::Pass,
                    None,
                    format!("{} requests per minute", limit.per_minute),
                ),
                Err(retry) => {
                    let mut d = Denial::new(
                        429,
                        "rate_limit_exceeded",
                        "rate_limit",
                        "rate limit exceeded for this key",
                    );
                    d.retry_after = Some(retry);
                    (
                        CheckVerdict::Block,
                        Some(d),
                        format!("over {} requests per minute", limit.per_minute),
                    )
                }
            },
        };
        let mut rec = CheckRecord::new("rate_limit", verdict).reason(reason);
        rec.latency_us = t.elapsed().as_secs_f64() * 1e6;
        decision.record(rec, denial);
    }
}

/// Turns a decision into Envoy's answer.
fn respond(snapshot: &Snapshot, decision: &CheckDecision<'_>, id: &str) -> CheckResponse {
    if let Some(denial) = decision.enforced() {
        return deny(denial, id);
    }
    let mut headers: Vec<HeaderValueOption> = vec![set_header(DECISION_HEADER, id, false)];
    let mut remove = Vec::new();
    let mut handover = Handover {
        decision_id: id.to_string(),
        mode: match decision.mode {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
        .to_string(),
        would_be: decision
            .denial
            .as_ref()
            .map(|d| format!("{} {}", d.status, d.code))
            .unwrap_or_default(),
        bundle_hash: snapshot.bundle.hash.clone(),
        ..Default::default()
    };
    if let Some(identity) = &decision.identity {
        handover.key_id = identity.id.clone();
        handover.team = identity.team.clone();
        handover.env = identity.env.clone();
        handover.app = identity.app.clone();
        handover.providers = identity.providers.clone();
        handover.models = identity.models.clone();
    }
    if let Some(route) = decision.route {
        let provider = snapshot.provider(route);
        handover.route = route.name.clone();
        handover.provider = provider.name.clone();
        // The caller's credential never reaches the provider; the real one is set in its place.
        if let Some(header) = decision.credential
            && header.name() != provider.header
        {
            remove.push(header.name().to_string());
        }
        if let Some(value) = &provider.value {
            headers.push(set_header(&provider.header, value.expose(), false));
        }
    }
    let metadata = handover.to_struct();
    CheckResponse {
        status: Some(RpcStatus {
            code: GRPC_OK,
            ..Default::default()
        }),
        dynamic_metadata: Some(metadata),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: remove,
            response_headers_to_add: vec![set_header(DECISION_HEADER, id, false)],
            ..Default::default()
        })),
    }
}

fn deny(denial: &Denial, id: &str) -> CheckResponse {
    let mut headers = vec![
        set_header("content-type", "application/json", false),
        set_header(DECISION_HEADER, id, false),
    ];
    if let Some(secs) = denial.retry_after {
        headers.push(set_header("retry-after", &secs.to_string(), false));
    }
    if denial.status == 401 {
        headers.push(set_header("www-authenticate", "Bearer", false));
    }
    CheckResponse {
        status: Some(RpcStatus {
            code: if denial.status == 401 {
                GRPC_UNAUTHENTICATED
            } else {
                GRPC_PERMISSION_DENIED
            },
            message: denial.code.to_string(),
            ..Default::default()
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(denial.status),
            }),
            headers,
            body: error_body(&denial.message, denial.error_type(), denial.code, id),
        })),
    }
}

/// Envoy's CheckRequest -> the facts policy reads. Missing parts become empty values, never an error: a request
/// without headers is decided (and refused) like any other.
pub fn facts_from_check(req: CheckRequest) -> RequestFacts {
    let CheckRequest { attributes } = req;
    let AttributeContext {
        request,
        context_extensions,
        ..
    } = attributes.unwrap_or_default();
    let http = request.and_then(|r| r.http).unwrap_or_default();
    let mut headers = http.headers;
    // With `encode_raw_headers`, Envoy sends headers as bytes; values that are not UTF-8 are kept lossily
    // (they can never match a credential or a route header, which are UTF-8).
    if let Some(map) = http.header_map {
        for h in map.headers {
            let value = if h.raw_value.is_empty() {
                h.value
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            };
            headers.insert(h.key.to_ascii_lowercase(), value);
        }
    }
    let path = if http.path.is_empty() {
        headers.get(":path").cloned().unwrap_or_default()
    } else {
        http.path
    };
    RequestFacts {
        method: http.method,
        path,
        headers,
        context: context_extensions.into_iter().collect(),
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        // Envoy's span for this ext_authz call travels in the gRPC metadata; prefer it to the request's own
        // header so the decision sits under Envoy's span.
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let facts = facts_from_check(request.into_inner());
        let (response, mut record) = AuthzService::check(self, &facts);
        if traceparent.is_some() {
            record.traceparent = traceparent;
        }
        self.sink.record(record);
        Ok(tonic::Response::new(response))
    }
}

#[cfg(test)]
mod tests;
