//! The bundle exactly as written in YAML. Unknown fields are rejected; meaning is checked by `compile`.

use std::collections::BTreeMap;

use lifeguard_core::{Action, FailureMode, Mode};
use schemars::JsonSchema;
use serde::Deserialize;

/// A policy bundle, schema version 1.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBundle {
    /// Schema version; must be 1.
    pub version: u32,
    /// Bundle name, shown in every decision (e.g. `acme-prod`).
    pub name: String,
    #[serde(default)]
    pub defaults: RawDefaults,
    /// Upstream LLM providers and the real credentials Lifeguard puts on requests to them.
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// Virtual keys; only their SHA-256 is stored.
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// JWT issuers accepted as a second identity source.
    #[serde(default)]
    pub jwt: Vec<RawJwt>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub detectors: RawDetectors,
    /// A candidate bundle (path relative to this file) evaluated beside this one on real traffic, never
    /// enforced: every disagreement is recorded and counted. How a stricter policy is rolled out safely.
    #[serde(default)]
    pub candidate: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// `enforce` acts on decisions; `monitor` records what would have happened and lets the request through.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// `closed` refuses a request Lifeguard cannot inspect; `open` lets it through, recorded as uninspected.
    #[serde(default)]
    pub failure: Option<FailureMode>,
    /// Largest request body ext_proc inspects, in bytes (default 1 MiB).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawFormat {
    Openai,
    Anthropic,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Wire format of the provider's API.
    pub format: RawFormat,
    /// Where the real provider key is read from at load. It is never logged and never reaches the caller.
    pub credential: RawCredential,
    /// Upstream header that carries the credential (e.g. `authorization`, `x-api-key`).
    pub header: String,
    /// Text put before the credential in that header (e.g. `"Bearer "`).
    #[serde(default)]
    pub prefix: String,
    /// Model globs this provider serves; a request naming another model is refused (empty: any).
    #[serde(default)]
    pub models: Vec<String>,
}

/// Where a secret comes from: set exactly one of `env` and `file`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    /// Name of an environment variable of the Lifeguard process.
    #[serde(default)]
    pub env: Option<String>,
    /// Path of a file (e.g. a mounted Kubernetes Secret); surrounding whitespace is trimmed.
    #[serde(default)]
    pub file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    /// `sha256:` followed by 64 lower-case hex digits of the key's SHA-256 (see `lifeguard keys new`).
    pub hash: String,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub env: String,
    #[serde(default)]
    pub app: String,
    /// Providers this key may reach; empty means any.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Model glob patterns this key may use (e.g. `gpt-4.1-*`); empty means any.
    #[serde(default)]
    pub models: Vec<String>,
    /// RFC 3339 time after which the key is refused.
    #[serde(default)]
    pub expires: Option<String>,
    /// RFC 3339 time before which the key is refused.
    #[serde(default)]
    pub not_before: Option<String>,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests_per_minute: u32,
    /// Largest burst; defaults to one minute's worth.
    #[serde(default)]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub issuer: String,
    /// Accepted `aud` values; the token must carry at least one.
    pub audiences: Vec<String>,
    /// JWKS document (RS256, ES256 and EdDSA keys), read at load and reloaded with the bundle.
    pub jwks_file: String,
    /// How claims map to identity fields: a claim name, optionally with an index (`groups[0]`) or dotted path.
    #[serde(default)]
    pub claims: RawClaims,
    /// Providers JWT callers may reach; empty means any.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Model globs JWT callers may use; empty means any.
    #[serde(default)]
    pub models: Vec<String>,
    /// Allowed clock skew for exp/nbf in seconds (default 30).
    #[serde(default)]
    pub leeway_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClaims {
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub app: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    /// How a request is matched to this route; an Envoy route can also name it with the
    /// `lifeguard_route` context extension.
    #[serde(default, rename = "match")]
    pub matcher: RawMatch,
    /// Provider this route serves; may be omitted when the bundle has one provider, or one of the
    /// format the path implies (`/messages` is Anthropic, anything else OpenAI).
    #[serde(default)]
    pub provider: Option<String>,
    /// Who may use the route (any rule matching allows); empty means any authenticated caller.
    #[serde(default)]
    pub allow: Vec<RawAllow>,
    /// `false` lets unauthenticated callers through (e.g. a model list); default true.
    #[serde(default)]
    pub authenticate: Option<bool>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub failure: Option<FailureMode>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// What to do with findings in the request body.
    #[serde(default)]
    pub request: RawActions,
    /// What to do with findings in the response body; an empty section asks Envoy for no response phases.
    #[serde(default)]
    pub response: RawActions,
    /// Score thresholds for this route, overriding `detectors`.
    #[serde(default)]
    pub thresholds: RawThresholds,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_exact: Option<String>,
    /// HTTP methods (any when empty).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAllow {
    #[serde(default)]
    pub teams: Vec<String>,
    #[serde(default)]
    pub envs: Vec<String>,
    #[serde(default)]
    pub apps: Vec<String>,
    /// Virtual key ids or JWT subjects.
    #[serde(default)]
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawActions {
    #[serde(default)]
    pub injection: Option<Action>,
    #[serde(default)]
    pub jailbreak: Option<Action>,
    #[serde(default)]
    pub secrets: Option<Action>,
    #[serde(default)]
    pub pii: Option<Action>,
    /// Tool calls in model output (arguments inspected like prompts, URLs checked against the allowlist).
    #[serde(default)]
    pub tool_calls: Option<Action>,
    /// Custom rules: defaults to each rule's own action.
    #[serde(default)]
    pub custom: Option<Action>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawThresholds {
    #[serde(default)]
    pub injection: Option<RawTierThresholds>,
    #[serde(default)]
    pub jailbreak: Option<RawTierThresholds>,
}

/// A score threshold in 0..=1, optionally per trust tier of the text.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTierThresholds {
    #[serde(default)]
    pub threshold: Option<f32>,
    #[serde(default)]
    pub system: Option<f32>,
    #[serde(default)]
    pub user: Option<f32>,
    #[serde(default)]
    pub assistant: Option<f32>,
    #[serde(default)]
    pub tool_result: Option<f32>,
    #[serde(default)]
    pub retrieved: Option<f32>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDetectors {
    #[serde(default)]
    pub injection: Option<RawTierThresholds>,
    #[serde(default)]
    pub jailbreak: Option<RawTierThresholds>,
    #[serde(default)]
    pub pii: Option<RawPii>,
    #[serde(default)]
    pub secrets: Option<RawSecrets>,
    #[serde(default)]
    pub tool_calls: Option<RawToolCalls>,
    #[serde(default)]
    pub custom: Vec<RawCustom>,
    /// Key for stable hashed placeholders (`[REDACTED:EMAIL:1a2b3c4d]`); without it placeholders are plain.
    #[serde(default)]
    pub redaction_key: Option<RawCredential>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPii {
    /// Entity types: email, phone, credit_card, iban, us_ssn, ip_address (all when omitted).
    #[serde(default)]
    pub types: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawToolCalls {
    /// Hosts that URLs in tool-call arguments may name (`*.example.com` allowed); others are findings.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCustom {
    pub id: String,
    /// Literal phrases, matched case-insensitively after normalisation.
    #[serde(default)]
    pub phrases: Vec<String>,
    /// A regular expression (Rust `regex` syntax).
    #[serde(default)]
    pub regex: Option<String>,
    pub action: Action,
}
