//! The per-stream state machine: request headers -> request body -> response headers -> response body, each
//! answered once, with the route's actions applied and the decisions recorded.

use std::collections::HashMap;
use std::io::Read;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use lifeguard_core::{
    Action, Category, CheckRecord, CheckVerdict, DecisionRecord, FailureMode, Finding, Mode, Phase,
    RequestFacts, ShadowOutcome, Verdict, decision_id,
};
use lifeguard_policy::{Direction, Piece, Route, Snapshot, inspect, match_route};
use lifeguard_wire::{
    AUTHZ_NAMESPACE, DECISION_HEADER, FLAGS_HEADER, Handover, error_body, set_header,
};
use serde_json::Value;
use tonic::Status;

use crate::formats::{pieces, redact_located, request_pieces, response_pieces};
use crate::sse::{SseInspector, error_event};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Done,
}

/// How the response body is handled, decided at response headers.
enum ResponseKind {
    /// Not inspected on this route, or nothing to inspect (not JSON or SSE).
    Pass,
    Json {
        gzip: bool,
    },
    Sse(Box<SseInspector>),
    /// Encoded in a way Lifeguard cannot read: handled per the failure mode.
    Unreadable(String),
}

/// The state of one ext_proc stream (one HTTP request and its response).
pub struct Exchange<'s> {
    snap: &'s Snapshot,
    stage: Stage,
    route: Option<&'s Route>,
    handover: Handover,
    id: String,
    traceparent: Option<String>,
    mode: Mode,
    failure: FailureMode,
    model: String,
    body: Vec<u8>,
    response: ResponseKind,
    request_record: Option<DecisionRecord>,
    response_started: Option<(Instant, u128)>,
    response_checks: Vec<CheckRecord>,
    response_flags: Vec<String>,
    response_blocked: Option<String>,
    chunks: usize,
    /// Time spent on this stream's SSE chunks so far.
    stream_us: f64,
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn headers_of(h: &Option<HeaderMap>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(map) = h {
        for hv in &map.headers {
            let value = if hv.raw_value.is_empty() {
                hv.value.clone()
            } else {
                String::from_utf8_lossy(&hv.raw_value).into_owned()
            };
            out.insert(hv.key.to_ascii_lowercase(), value);
        }
    }
    out
}

fn continue_headers(mutation: Option<HeaderMutation>) -> CommonResponse {
    CommonResponse {
        header_mutation: mutation,
        ..Default::default()
    }
}

fn replace_body(body: Vec<u8>, headers: Option<HeaderMutation>) -> CommonResponse {
    CommonResponse {
        header_mutation: headers,
        body_mutation: Some(BodyMutation {
            mutation: Some(Mutation::Body(body)),
        }),
        ..Default::default()
    }
}

/// The processing mode deploy/envoy configures, with the response phases this request needs.
fn mode(response_headers: HeaderSendMode, response_body: BodySendMode) -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        request_body_mode: BodySendMode::Buffered as i32,
        response_header_mode: response_headers as i32,
        response_body_mode: response_body as i32,
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

fn answer(a: Answer) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(a),
        ..Default::default()
    }
}

impl<'s> Exchange<'s> {
    /// `traceparent`: Envoy's span for this ext_proc stream (gRPC metadata), when tracing is on.
    pub fn new(snap: &'s Snapshot, traceparent: Option<String>) -> Self {
        Exchange {
            snap,
            stage: Stage::Start,
            route: None,
            handover: Handover::default(),
            id: String::new(),
            traceparent,
            mode: snap.mode,
            failure: snap.failure,
            model: String::new(),
            body: Vec::new(),
            response: ResponseKind::Pass,
            request_record: None,
            response_started: None,
            response_checks: Vec::new(),
            response_flags: Vec::new(),
            response_blocked: None,
            chunks: 0,
            stream_us: 0.0,
        }
    }

    /// Answers one message from Envoy. An error ends the stream (Envoy then applies its failure mode).
    pub fn on_message(&mut self, req: ProcessingRequest) -> Result<ProcessingResponse, Status> {
        let ProcessingRequest {
            request,
            metadata_context,
            ..
        } = req;
        match (self.stage, request) {
            (Stage::Start, Some(Msg::RequestHeaders(h))) => {
                if let Some(ns) = metadata_context
                    .as_ref()
                    .and_then(|m| m.filter_metadata.get(AUTHZ_NAMESPACE))
                {
                    self.handover = Handover::from_struct(ns);
                }
                Ok(self.request_headers(h))
            }
            (Stage::RequestBody, Some(Msg::RequestBody(b))) => Ok(self.request_body(b)),
            // A request with no body (or whose body phase is skipped) goes straight to its response.
            (Stage::RequestBody | Stage::ResponseHeaders, Some(Msg::ResponseHeaders(h))) => {
                if self.stage == Stage::RequestBody {
                    self.finish_request_without_body();
                }
                Ok(self.response_headers(h))
            }
            // A local reply from an earlier filter (an ext_authz denial) or after our own refusal: nothing of
            // ours to inspect, so let it through untouched and ask for no body.
            (Stage::Start | Stage::Done, Some(Msg::ResponseHeaders(_))) => {
                self.stage = Stage::Done;
                let mut resp = answer(Answer::ResponseHeaders(HeadersResponse::default()));
                resp.mode_override = Some(ProcessingMode {
                    response_body_mode: BodySendMode::None as i32,
                    response_trailer_mode: HeaderSendMode::Skip as i32,
                    ..Default::default()
                });
                Ok(resp)
            }
            (Stage::ResponseBody, Some(Msg::ResponseBody(b))) => Ok(self.response_body(b)),
            (Stage::Done, Some(Msg::ResponseBody(_))) => {
                Ok(answer(Answer::ResponseBody(BodyResponse::default())))
            }
            (_, Some(Msg::RequestTrailers(_))) => {
                Ok(answer(Answer::RequestTrailers(TrailersResponse::default())))
            }
            (_, Some(Msg::ResponseTrailers(_))) => Ok(answer(Answer::ResponseTrailers(
                TrailersResponse::default(),
            ))),
            (stage, Some(other)) => Err(Status::failed_precondition(format!(
                "ext_proc message {} out of order at stage {stage:?}",
                msg_name(&other)
            ))),
            (_, None) => Err(Status::invalid_argument(
                "ext_proc message without a request",
            )),
        }
    }

    fn request_headers(&mut self, h: HttpHeaders) -> ProcessingResponse {
        let headers = headers_of(&h.headers);
        if self.traceparent.is_none() {
            self.traceparent = headers.get("traceparent").cloned();
        }
        self.id = if self.handover.decision_id.is_empty() {
            decision_id(rand::random::<u128>())
        } else {
            self.handover.decision_id.clone()
        };
        let facts = RequestFacts {
            method: headers.get(":method").cloned().unwrap_or_default(),
            path: headers.get(":path").cloned().unwrap_or_default(),
            headers,
            context: HashMap::new(),
        };
        self.route = match self.handover.route.as_str() {
            "" => match_route(self.snap, &facts).0,
            name => self.snap.route_by_name(name),
        };
        let monitor_from_authz = self.handover.mode == "monitor";
        let Some(route) = self.route else {
            self.stage = Stage::Done;
            if monitor_from_authz || self.snap.mode == Mode::Monitor {
                return answer(Answer::RequestHeaders(HeadersResponse {
                    response: Some(continue_headers(None)),
                }));
            }
            let rec = CheckRecord::new("route", CheckVerdict::Block)
                .reason("no policy route for this request");
            self.request_record = Some(self.record(
                Phase::Request,
                Verdict::Deny,
                None,
                vec![rec],
                Some(403),
                "no_route",
                Instant::now(),
                now_nanos(),
            ));
            return self.immediate(
                403,
                "no_route",
                "permission_error",
                "no policy route matches this request",
            );
        };
        self.mode = route.mode;
        self.failure = route.failure;
        // Responses come back plain, so they can be read; compressed ones are the exception, not the rule.
        let mutation = HeaderMutation {
            remove_headers: vec!["accept-encoding".into()],
            ..Default::default()
        };
        let mut resp = answer(Answer::RequestHeaders(HeadersResponse {
            response: Some(continue_headers(Some(mutation))),
        }));
        // Ask Envoy only for the phases this route needs: a skipped round trip beats any optimisation.
        if !route.inspects_response() {
            resp.mode_override = Some(mode(HeaderSendMode::Skip, BodySendMode::None));
        }
        if h.end_of_stream {
            self.finish_request_without_body();
        } else {
            self.stage = Stage::RequestBody;
        }
        resp
    }

    fn finish_request_without_body(&mut self) {
        let rec = CheckRecord::new("body", CheckVerdict::Skipped).reason("request has no body");
        self.request_record = Some(self.record(
            Phase::Request,
            Verdict::Allow,
            None,
            vec![rec],
            None,
            "",
            Instant::now(),
            now_nanos(),
        ));
        self.stage = Stage::ResponseHeaders;
    }

    fn request_body(&mut self, b: HttpBody) -> ProcessingResponse {
        let started = Instant::now();
        let start_nanos = now_nanos();
        let Some(route) = self.route else {
            return answer(Answer::RequestBody(BodyResponse::default()));
        };
        let HttpBody {
            body,
            end_of_stream,
            ..
        } = b;
        if (self.body.len() + body.len()) as u64 > route.max_body_bytes {
            self.stage = Stage::ResponseHeaders;
            let rec = CheckRecord::new("body_size", CheckVerdict::Error)
                .reason(format!("body over {} bytes", route.max_body_bytes));
            return self.unreadable_request(
                rec,
                413,
                "request_too_large",
                "the request body is larger than this route allows",
                started,
                start_nanos,
            );
        }
        self.body.extend_from_slice(&body);
        if !end_of_stream {
            // Streamed request body: hold each chunk back until the whole body is judged.
            return answer(Answer::RequestBody(BodyResponse {
                response: Some(replace_body(Vec::new(), None)),
            }));
        }
        self.stage = Stage::ResponseHeaders;
        let body = std::mem::take(&mut self.body);
        let mut json: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                let rec = CheckRecord::new("parse", CheckVerdict::Error).reason(format!(
                    "body is not valid JSON ({:?} at line {}, column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ));
                return self.unreadable_request(
                    rec,
                    400,
                    "invalid_json",
                    "the request body is not valid JSON",
                    started,
                    start_nanos,
                );
            }
        };
        let mut checks = Vec::new();
        // The model must be allowed for the caller and for the route's provider.
        let t = Instant::now();
        self.model = json
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let (model_rec, model_denial) = self.model_check(route);
        let mut model_rec = model_rec;
        model_rec.latency_us = t.elapsed().as_secs_f64() * 1e6;
        checks.push(model_rec);

        let (format, located) = request_pieces(&json);
        let pieces = pieces(&json, &located);
        let mut found = inspect(self.snap, route, Direction::Request, &pieces);
        if let Some(first) = found.checks.first_mut() {
            first.reason = format!("{} ({})", first.reason, format.as_str());
        }
        checks.append(&mut found.checks);

        let (verdict, status, code) = if model_denial.is_some() {
            (Verdict::Deny, Some(403), "model_not_allowed".to_string())
        } else if let Some(check) = &found.blocked_by {
            (Verdict::Deny, Some(403), format!("blocked_by_{check}"))
        } else {
            match found.action {
                Action::Redact => (Verdict::Redact, None, String::new()),
                Action::Flag => (Verdict::Flag, None, String::new()),
                _ => (Verdict::Allow, None, String::new()),
            }
        };
        let shadow = self.snap.candidate.as_ref().and_then(|candidate| {
            let theirs = candidate.route_by_name(&route.name)?;
            let blocked = inspect(candidate, theirs, Direction::Request, &pieces)
                .blocked_by
                .is_some();
            let ours = found.blocked_by.is_some() || model_denial.is_some();
            Some(ShadowOutcome {
                bundle: candidate.bundle.clone(),
                verdict: if blocked {
                    Verdict::Deny
                } else {
                    Verdict::Allow
                },
                agrees: blocked == ours,
            })
        });
        let enforce = self.mode == Mode::Enforce;
        let mut record = self.record(
            Phase::Request,
            if enforce { verdict } else { Verdict::Allow },
            (!enforce && verdict != Verdict::Allow).then_some(verdict),
            checks,
            status.filter(|_| enforce),
            &code,
            started,
            start_nanos,
        );
        record.shadow = shadow;
        self.request_record = Some(record);
        if !enforce {
            return answer(Answer::RequestBody(BodyResponse::default()));
        }
        if let Some(message) = model_denial {
            self.stage = Stage::Done;
            return self.immediate(403, "model_not_allowed", "permission_error", &message);
        }
        if let Some(check) = &found.blocked_by {
            self.stage = Stage::Done;
            let message = format!("the request was blocked by the {check} check");
            return self.immediate(
                403,
                &format!("blocked_by_{check}"),
                "permission_error",
                &message,
            );
        }
        let mut set = Vec::new();
        if !found.flags.is_empty() {
            set.push(set_header(FLAGS_HEADER, &found.flags.join(","), true));
        }
        if found.action == Action::Redact {
            let key = self
                .snap
                .redaction_key
                .as_ref()
                .map(|k| k.expose().as_bytes());
            redact_located(&mut json, &located, &found.redactions, key);
            let new_body = json.to_string().into_bytes();
            set.push(set_header(
                "content-length",
                &new_body.len().to_string(),
                true,
            ));
            return answer(Answer::RequestBody(BodyResponse {
                response: Some(replace_body(
                    new_body,
                    Some(HeaderMutation {
                        set_headers: set,
                        ..Default::default()
                    }),
                )),
            }));
        }
        let mutation = (!set.is_empty()).then(|| HeaderMutation {
            set_headers: set,
            ..Default::default()
        });
        answer(Answer::RequestBody(BodyResponse {
            response: Some(continue_headers(mutation)),
        }))
    }

    /// A request body Lifeguard cannot judge (too large, not JSON): refused when failing closed, let through
    /// and flagged as uninspected when failing open. Never passed as if inspected.
    fn unreadable_request(
        &mut self,
        mut rec: CheckRecord,
        status: u16,
        code: &str,
        message: &str,
        started: Instant,
        start_nanos: u128,
    ) -> ProcessingResponse {
        rec.failure = Some(self.failure);
        let refuse = self.failure == FailureMode::Closed && self.mode == Mode::Enforce;
        let verdict = if refuse { Verdict::Deny } else { Verdict::Flag };
        self.request_record = Some(self.record(
            Phase::Request,
            verdict,
            None,
            vec![rec],
            refuse.then_some(status),
            code,
            started,
            start_nanos,
        ));
        if refuse {
            self.stage = Stage::Done;
            let kind = if status == 413 {
                "request_too_large"
            } else {
                "invalid_request_error"
            };
            return self.immediate(status, code, kind, message);
        }
        let mutation = HeaderMutation {
            set_headers: vec![set_header(FLAGS_HEADER, "uninspected", true)],
            ..Default::default()
        };
        answer(Answer::RequestBody(BodyResponse {
            response: Some(continue_headers(Some(mutation))),
        }))
    }

    fn model_check(&self, route: &Route) -> (CheckRecord, Option<String>) {
        let provider = self.snap.provider(route);
        // The key's compiled scope is borrowed from the snapshot; only a JWT caller's globs (handed over by
        // ext_authz) are compiled here.
        let key_scope = match self.snap.key_by_id(&self.handover.key_id) {
            Some(key) => Some(std::borrow::Cow::Borrowed(&key.models)),
            None if !self.handover.models.is_empty() => Some(std::borrow::Cow::Owned(
                lifeguard_policy::ModelScope::from_patterns(&self.handover.models),
            )),
            None => None,
        };
        let model = self.model.as_str();
        let mut rec = CheckRecord::new("model", CheckVerdict::Pass);
        rec.rules.push(model.to_string());
        let restricted = key_scope.as_ref().is_some_and(|s| !s.patterns.is_empty())
            || !provider.models.patterns.is_empty();
        if model.is_empty() {
            return if restricted {
                rec.verdict = CheckVerdict::Block;
                (
                    rec.reason("the body names no model"),
                    Some("the request must name a model".into()),
                )
            } else {
                (rec.reason("no model named; none required"), None)
            };
        }
        if let Some(scope) = &key_scope
            && !scope.allows(model)
        {
            rec.verdict = CheckVerdict::Block;
            return (
                rec.reason("model not in the credential's models"),
                Some(format!(
                    "model {model:?} is not allowed for this credential"
                )),
            );
        }
        if !provider.models.allows(model) {
            rec.verdict = CheckVerdict::Block;
            return (
                rec.reason(format!("model not served by provider {:?}", provider.name)),
                Some(format!("model {model:?} is not available on this route")),
            );
        }
        (
            rec.reason(format!(
                "allowed for the credential and provider {:?}",
                provider.name
            )),
            None,
        )
    }

    fn response_headers(&mut self, h: HttpHeaders) -> ProcessingResponse {
        self.response_started = Some((Instant::now(), now_nanos()));
        let headers = headers_of(&h.headers);
        let ctype = headers
            .get("content-type")
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default();
        let encoding = headers
            .get("content-encoding")
            .map(|s| s.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let inspects = self.route.is_some_and(Route::inspects_response);
        let sse = ctype.starts_with("text/event-stream");
        let json = ctype.contains("json");
        self.response = if !inspects || h.end_of_stream || !(sse || json) {
            ResponseKind::Pass
        } else if !(encoding.is_empty() || encoding == "identity" || (encoding == "gzip" && json)) {
            ResponseKind::Unreadable(format!(
                "content-encoding {encoding} on a {} response",
                if sse { "streamed" } else { "JSON" }
            ))
        } else if sse {
            let key = self
                .snap
                .redaction_key
                .as_ref()
                .map(|k| k.expose().as_bytes().to_vec());
            ResponseKind::Sse(Box::new(SseInspector::new(key)))
        } else {
            ResponseKind::Json {
                gzip: encoding == "gzip",
            }
        };
        let body_mode = match &self.response {
            ResponseKind::Pass | ResponseKind::Unreadable(_) => BodySendMode::None,
            ResponseKind::Json { .. } => BodySendMode::Buffered,
            ResponseKind::Sse(_) => BodySendMode::Streamed,
        };
        let mut mutation = HeaderMutation::default();
        mutation
            .set_headers
            .push(set_header(DECISION_HEADER, &self.id, true));
        if let ResponseKind::Unreadable(why) = &self.response {
            let why = why.clone();
            let mut rec = CheckRecord::new("decode", CheckVerdict::Error).reason(why);
            rec.failure = Some(self.failure);
            self.response_checks.push(rec);
            if self.failure == FailureMode::Closed && self.mode == Mode::Enforce {
                self.stage = Stage::Done;
                self.response_blocked = Some("decode".into());
                return self.immediate(
                    502,
                    "unreadable_response",
                    "api_error",
                    "the model's response could not be inspected",
                );
            }
            self.response_flags.push("uninspected".into());
            mutation
                .set_headers
                .push(set_header(FLAGS_HEADER, "uninspected", true));
        }
        if matches!(self.response, ResponseKind::Json { .. }) {
            // The body may be rewritten; Envoy sets the new length from the body response.
            mutation.remove_headers.push("content-length".into());
        }
        self.stage = if body_mode == BodySendMode::None {
            Stage::Done
        } else {
            Stage::ResponseBody
        };
        let mut resp = answer(Answer::ResponseHeaders(HeadersResponse {
            response: Some(continue_headers(Some(mutation))),
        }));
        if inspects {
            resp.mode_override = Some(mode(HeaderSendMode::Send, body_mode));
        }
        resp
    }

    fn response_body(&mut self, b: HttpBody) -> ProcessingResponse {
        let HttpBody {
            body,
            end_of_stream,
            ..
        } = b;
        self.chunks += 1;
        match &mut self.response {
            ResponseKind::Sse(_) => self.sse_chunk(body, end_of_stream),
            ResponseKind::Json { gzip } => {
                let gzip = *gzip;
                self.body.extend_from_slice(&body);
                if !end_of_stream {
                    return answer(Answer::ResponseBody(BodyResponse {
                        response: Some(replace_body(Vec::new(), None)),
                    }));
                }
                self.stage = Stage::Done;
                let raw = std::mem::take(&mut self.body);
                self.json_response(raw, gzip)
            }
            _ => answer(Answer::ResponseBody(BodyResponse::default())),
        }
    }

    fn json_response(&mut self, raw: Vec<u8>, gzip: bool) -> ProcessingResponse {
        let Some(route) = self.route else {
            return answer(Answer::ResponseBody(BodyResponse::default()));
        };
        let decoded = if gzip {
            let mut out = Vec::new();
            let limit = route.max_body_bytes.saturating_mul(16);
            match flate2::read::GzDecoder::new(raw.as_slice())
                .take(limit)
                .read_to_end(&mut out)
            {
                Ok(_) => Some(out),
                Err(_) => None,
            }
        } else {
            Some(raw.clone())
        };
        let parsed = decoded
            .as_ref()
            .and_then(|d| serde_json::from_slice::<Value>(d).ok());
        let Some(mut json) = parsed else {
            let mut rec = CheckRecord::new("parse", CheckVerdict::Error).reason(if gzip {
                "gzip body could not be decoded as JSON"
            } else {
                "response is not valid JSON"
            });
            rec.failure = Some(self.failure);
            self.response_checks.push(rec);
            if self.failure == FailureMode::Closed && self.mode == Mode::Enforce {
                self.response_blocked = Some("parse".into());
                return self.immediate(
                    502,
                    "unreadable_response",
                    "api_error",
                    "the model's response could not be inspected",
                );
            }
            self.response_flags.push("uninspected".into());
            return answer(Answer::ResponseBody(BodyResponse {
                response: Some(replace_body(
                    raw,
                    Some(HeaderMutation {
                        set_headers: vec![set_header(FLAGS_HEADER, "uninspected", true)],
                        ..Default::default()
                    }),
                )),
            }));
        };
        let (_, located) = response_pieces(&json);
        let pieces = pieces(&json, &located);
        let mut found = inspect(self.snap, route, Direction::Response, &pieces);
        self.response_checks.append(&mut found.checks);
        self.response_flags.extend(found.flags.iter().cloned());
        if self.mode == Mode::Monitor {
            self.response_blocked = found.blocked_by.clone();
            return answer(Answer::ResponseBody(BodyResponse::default()));
        }
        if let Some(check) = &found.blocked_by {
            self.response_blocked = Some(check.clone());
            let message = format!("the model's response was blocked by the {check} check");
            return self.immediate(
                403,
                &format!("blocked_by_{check}"),
                "permission_error",
                &message,
            );
        }
        let mut mutation = HeaderMutation::default();
        if !found.flags.is_empty() {
            mutation
                .set_headers
                .push(set_header(FLAGS_HEADER, &found.flags.join(","), true));
        }
        let new_body = if found.action == Action::Redact {
            let key = self
                .snap
                .redaction_key
                .as_ref()
                .map(|k| k.expose().as_bytes());
            redact_located(&mut json, &located, &found.redactions, key);
            json.to_string().into_bytes()
        } else if gzip {
            raw
        } else {
            decoded.unwrap_or_default()
        };
        if gzip && found.action == Action::Redact {
            mutation.remove_headers.push("content-encoding".into());
        }
        mutation.set_headers.push(set_header(
            "content-length",
            &new_body.len().to_string(),
            true,
        ));
        answer(Answer::ResponseBody(BodyResponse {
            response: Some(replace_body(new_body, Some(mutation))),
        }))
    }

    fn sse_chunk(&mut self, chunk: Vec<u8>, end: bool) -> ProcessingResponse {
        let t = Instant::now();
        let snap = self.snap;
        let Some(route) = self.route else {
            return answer(Answer::ResponseBody(BodyResponse::default()));
        };
        let actions = route.response;
        let action_of = |f: &Finding| -> Option<Action> {
            match f.category {
                Category::Custom => actions.custom,
                Category::Injection | Category::Jailbreak => None,
                c => actions.get(c),
            }
        };
        let tool_verdict = |texts: &[&str]| -> Option<String> {
            if actions.tool_calls != Some(Action::Block) || texts.is_empty() {
                return None;
            }
            let pieces: Vec<Piece<'_>> = texts
                .iter()
                .map(|t| Piece {
                    text: t,
                    tier: lifeguard_core::Tier::Assistant,
                    tool_call: true,
                })
                .collect();
            let found = inspect(snap, route, Direction::Response, &pieces);
            found
                .checks
                .iter()
                .find(|c| c.id == "tool_calls" && c.verdict == CheckVerdict::Block)
                .map(|c| c.rules.join(","))
        };
        let ResponseKind::Sse(inspector) = &mut self.response else {
            return answer(Answer::ResponseBody(BodyResponse::default()));
        };
        let monitor = self.mode == Mode::Monitor;
        let mut step = inspector.push(&snap.scanner, &chunk, &action_of);
        if end && step.blocked.is_none() {
            // The last chunk carries data too: scan it, then close every channel.
            let last = inspector.finish(&snap.scanner, &action_of, &tool_verdict);
            step.out.extend(last.out);
            step.blocked = last.blocked;
        }
        let mut out = step.out;
        if let Some(f) = &step.blocked {
            let check = match f.category {
                Category::Custom => f.rule.clone(),
                c => c.as_str().to_string(),
            };
            self.response_blocked = Some(check.clone());
            let body = error_body(
                &format!("the model's response was blocked by the {check} check"),
                "permission_error",
                &format!("blocked_by_{check}"),
                &self.id,
            );
            out = error_event(&body);
        }
        if end {
            self.stage = Stage::Done;
            // In a stream, the end of the text tells whether held-back tool calls or late findings matter.
            let mut rec = CheckRecord::new("stream", CheckVerdict::Pass).reason(format!(
                "{} events in {} chunks",
                inspector.events, self.chunks
            ));
            let mut worst = Action::Allow;
            for f in &inspector.findings {
                if !rec.rules.contains(&f.rule) {
                    rec.rules.push(f.rule.clone());
                }
                worst = worst.max(action_of(f).unwrap_or(Action::Allow));
            }
            rec.verdict = if step.blocked.is_some() || self.response_blocked.is_some() {
                CheckVerdict::Block
            } else {
                worst.into()
            };
            // The stream's cost is the sum over its chunks, not the last one alone.
            self.stream_us += t.elapsed().as_secs_f64() * 1e6;
            rec.latency_us = self.stream_us;
            self.response_checks.push(rec);
        } else {
            self.stream_us += t.elapsed().as_secs_f64() * 1e6;
        }
        if monitor {
            // Record what would have happened; change nothing.
            return answer(Answer::ResponseBody(BodyResponse::default()));
        }
        if out == chunk && step.blocked.is_none() {
            return answer(Answer::ResponseBody(BodyResponse::default()));
        }
        answer(Answer::ResponseBody(BodyResponse {
            response: Some(replace_body(out, None)),
        }))
    }

    fn immediate(&self, status: u16, code: &str, kind: &str, message: &str) -> ProcessingResponse {
        answer(Answer::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers: Some(HeaderMutation {
                set_headers: vec![
                    set_header("content-type", "application/json", true),
                    set_header(DECISION_HEADER, &self.id, true),
                ],
                ..Default::default()
            }),
            body: error_body(message, kind, code, &self.id).into_bytes(),
            details: format!("lifeguard_{code}"),
            ..Default::default()
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        phase: Phase,
        verdict: Verdict,
        would_be: Option<Verdict>,
        checks: Vec<CheckRecord>,
        status: Option<u16>,
        code: &str,
        started: Instant,
        start_unix_nanos: u128,
    ) -> DecisionRecord {
        DecisionRecord {
            decision_id: self.id.clone(),
            phase,
            verdict,
            would_be,
            mode: self.mode,
            failure: checks.iter().find_map(|c| c.failure),
            route: self.route.map(|r| r.name.clone()).unwrap_or_default(),
            key_id: self.handover.key_id.clone(),
            team: self.handover.team.clone(),
            env: self.handover.env.clone(),
            app: self.handover.app.clone(),
            model: self.model.clone(),
            status,
            code: code.to_string(),
            bundle: self.snap.bundle.clone(),
            checks,
            traceparent: self.traceparent.clone(),
            start_unix_nanos,
            duration_us: started.elapsed().as_secs_f64() * 1e6,
            shadow: None,
        }
    }

    /// The decisions of this stream, as far as it got (a stream cut off by Envoy still records what it saw).
    pub fn finish(mut self) -> Vec<DecisionRecord> {
        let mut out = Vec::new();
        if let Some(r) = self.request_record.take() {
            out.push(r);
        }
        if let Some((started, nanos)) = self.response_started {
            if self.stage != Stage::Done {
                self.response_checks.push(
                    CheckRecord::new("stream", CheckVerdict::Error)
                        .reason("stream ended before the response did"),
                );
            }
            let would_block = self.response_blocked.is_some();
            let verdict = if would_block {
                Verdict::Deny
            } else if self
                .response_checks
                .iter()
                .any(|c| c.verdict == CheckVerdict::Redact)
            {
                Verdict::Redact
            } else if !self.response_flags.is_empty()
                || self
                    .response_checks
                    .iter()
                    .any(|c| c.verdict == CheckVerdict::Flag)
            {
                Verdict::Flag
            } else {
                Verdict::Allow
            };
            let enforce = self.mode == Mode::Enforce;
            let checks = std::mem::take(&mut self.response_checks);
            let code = self
                .response_blocked
                .as_ref()
                .map(|c| format!("blocked_by_{c}"))
                .unwrap_or_default();
            let mut rec = self.record(
                Phase::Response,
                if enforce { verdict } else { Verdict::Allow },
                (!enforce && verdict != Verdict::Allow).then_some(verdict),
                checks,
                None,
                &code,
                started,
                nanos,
            );
            rec.duration_us = started.elapsed().as_secs_f64() * 1e6;
            out.push(rec);
        }
        out
    }
}

fn msg_name(m: &Msg) -> &'static str {
    match m {
        Msg::RequestHeaders(_) => "request_headers",
        Msg::ResponseHeaders(_) => "response_headers",
        Msg::RequestBody(_) => "request_body",
        Msg::ResponseBody(_) => "response_body",
        Msg::RequestTrailers(_) => "request_trailers",
        Msg::ResponseTrailers(_) => "response_trailers",
    }
}
