//! The shared vocabulary of Lifeguard: what a request looks like to policy ([`RequestFacts`]), a piece of text
//! with its trust tier ([`Segment`]), what a detector found ([`Finding`]), what a check decided ([`CheckRecord`])
//! and the explained outcome of a whole decision ([`Decision`]).
//!
//! Key design decision: this crate has no I/O, no async runtime and no wire types. Every other crate converts
//! to and from these types at its edge, so decision logic can be read, tested and benchmarked without a network.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether a decision is enforced or only recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// What happens when Lifeguard itself cannot decide (an internal fault, an unreadable body, a timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Refuse the request: nothing passes uninspected.
    #[default]
    Closed,
    /// Let the request through, recorded as uninspected.
    Open,
}

/// How much the author of a piece of text is trusted. Ordered from most to least trusted: injected instructions
/// matter more the less trusted the text they sit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    System,
    User,
    Assistant,
    ToolResult,
    Retrieved,
}

impl Tier {
    pub const ALL: [Tier; 5] = [
        Tier::System,
        Tier::User,
        Tier::Assistant,
        Tier::ToolResult,
        Tier::Retrieved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::System => "system",
            Tier::User => "user",
            Tier::Assistant => "assistant",
            Tier::ToolResult => "tool_result",
            Tier::Retrieved => "retrieved",
        }
    }
}

/// A piece of text to inspect, with the tier of whoever wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    pub text: &'a str,
    pub tier: Tier,
}

/// The detector family a finding belongs to; actions in a route are set per category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Injection,
    Jailbreak,
    Secrets,
    Pii,
    Custom,
    ToolCalls,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Injection => "injection",
            Category::Jailbreak => "jailbreak",
            Category::Secrets => "secrets",
            Category::Pii => "pii",
            Category::Custom => "custom",
            Category::ToolCalls => "tool_calls",
        }
    }
}

/// One thing a detector found. `span` is a byte range into the original (not normalised) text, so a
/// redaction replaces exactly those bytes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub category: Category,
    /// Stable rule id, e.g. `pii.email`, `secrets.aws_access_key`, `injection.override.en`, `custom.codenames`.
    pub rule: String,
    /// Signal family inside the category (e.g. `instruction_override`), or the entity type for PII/secrets.
    pub family: String,
    /// Placeholder label used by redaction, e.g. `EMAIL` gives `[REDACTED:EMAIL]`.
    pub label: String,
    pub span: Range<usize>,
    pub weight: f32,
}

/// What a route does with the findings of a category.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Look, record, change nothing.
    #[default]
    Allow,
    Flag,
    Redact,
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Flag => "flag",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

/// The outcome of one check inside a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckVerdict {
    Skipped,
    Pass,
    Flag,
    Redact,
    Block,
    Error,
}

impl CheckVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckVerdict::Skipped => "skipped",
            CheckVerdict::Pass => "pass",
            CheckVerdict::Flag => "flag",
            CheckVerdict::Redact => "redact",
            CheckVerdict::Block => "block",
            CheckVerdict::Error => "error",
        }
    }
}

impl From<Action> for CheckVerdict {
    fn from(a: Action) -> Self {
        match a {
            Action::Allow => CheckVerdict::Pass,
            Action::Flag => CheckVerdict::Flag,
            Action::Redact => CheckVerdict::Redact,
            Action::Block => CheckVerdict::Block,
        }
    }
}

/// One check that ran (or was skipped) and why it decided what it did. Never holds raw request text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckRecord {
    /// e.g. `identity`, `route`, `scope`, `rate_limit`, `model`, `injection`, `pii`, `custom.codenames`.
    pub id: String,
    pub verdict: CheckVerdict,
    /// Rule ids that matched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    pub latency_us: f64,
    /// Human-readable reason, safe to show to operators (no matched text).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Failure mode applied when the check errored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureMode>,
}

impl CheckRecord {
    pub fn new(id: impl Into<String>, verdict: CheckVerdict) -> Self {
        CheckRecord {
            id: id.into(),
            verdict,
            rules: Vec::new(),
            score: None,
            threshold: None,
            latency_us: 0.0,
            reason: String::new(),
            failure: None,
        }
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }
}

/// A request as policy sees it: built by the gRPC edge from Envoy's CheckRequest or ext_proc headers.
/// Header names are lower case (Envoy sends them so).
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    /// Envoy's per-route `context_extensions` (e.g. `lifeguard_route: chat`).
    pub context: HashMap<String, String>,
}

impl RequestFacts {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The path without its query string.
    pub fn path_only(&self) -> &str {
        self.path.split(['?', '#']).next().unwrap_or("")
    }
}

/// Where a caller's identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentitySource {
    Key,
    Jwt,
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Identity {
    pub source: Option<IdentitySource>,
    /// Virtual key id, or the JWT subject.
    pub id: String,
    pub team: String,
    pub env: String,
    pub app: String,
    /// Providers this caller may reach; empty means any.
    pub providers: Vec<String>,
    /// Model glob patterns this caller may use; empty means any.
    pub models: Vec<String>,
}

/// Which bundle decided: name, version and content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct BundleRef {
    pub name: String,
    pub version: u64,
    /// First 16 hex digits of the SHA-256 of the bundle's source files.
    pub hash: String,
}

/// The final word of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Flag,
    Redact,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Flag => "flag",
            Verdict::Redact => "redact",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which gate made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Authz,
    Request,
    Response,
}

impl Phase {
    /// The span name of a decision of this phase.
    pub fn span_name(self) -> &'static str {
        match self {
            Phase::Authz => "lifeguard.authz",
            Phase::Request => "lifeguard.extproc.request",
            Phase::Response => "lifeguard.extproc.response",
        }
    }
}

/// One explained decision: what telemetry turns into a span, an audit line and metrics.
/// Holds no raw prompt, response or key text.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    pub decision_id: String,
    pub phase: Phase,
    /// The verdict that took effect.
    pub verdict: Verdict,
    /// In monitor mode, what enforcement would have done (when it differs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_be: Option<Verdict>,
    pub mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureMode>,
    pub route: String,
    pub key_id: String,
    pub team: String,
    pub env: String,
    pub app: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// HTTP status returned to the caller when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Machine code of the refusal or of the deciding check.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub code: String,
    pub bundle: BundleRef,
    pub checks: Vec<CheckRecord>,
    /// W3C `traceparent` of the request, so the decision joins Envoy's trace.
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// Unix time of the start of the decision, in nanoseconds.
    pub start_unix_nanos: u128,
    pub duration_us: f64,
    /// Disagreements with a shadow (candidate) bundle, if one is evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowOutcome>,
}

/// What a candidate bundle evaluated beside the live one would have decided.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowOutcome {
    pub bundle: BundleRef,
    pub verdict: Verdict,
    pub agrees: bool,
}

/// Where services send their decisions (telemetry implements it). Must not block the request path.
pub trait DecisionSink: Send + Sync {
    fn record(&self, decision: DecisionRecord);
}

/// A sink that drops everything (tests, `explain`).
pub struct NullSink;

impl DecisionSink for NullSink {
    fn record(&self, _decision: DecisionRecord) {}
}

/// Make a fresh decision id: 128 random-looking bits as 32 hex digits (the same shape as a W3C trace id).
pub fn decision_id(seed: u128) -> String {
    format!("{seed:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn vocabulary_is_send_sync() {
        assert_send_sync::<Finding>();
        assert_send_sync::<CheckRecord>();
        assert_send_sync::<RequestFacts>();
        assert_send_sync::<Identity>();
    }

    #[test]
    fn tiers_order_from_trusted_to_untrusted() {
        assert!(Tier::System < Tier::User);
        assert!(Tier::User < Tier::ToolResult);
        assert!(Tier::ToolResult < Tier::Retrieved);
    }

    #[test]
    fn path_only_strips_query() {
        let f = RequestFacts {
            path: "/v1/chat/completions?x=1".into(),
            ..Default::default()
        };
        assert_eq!(f.path_only(), "/v1/chat/completions");
    }

    #[test]
    fn action_maps_to_check_verdict() {
        assert_eq!(CheckVerdict::from(Action::Block), CheckVerdict::Block);
        assert_eq!(CheckVerdict::from(Action::Allow), CheckVerdict::Pass);
    }
}
