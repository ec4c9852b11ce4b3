//! The request-level decision (what ext_authz answers): route, identity, scope. Pure: the caller supplies the
//! clock, and stateful checks (rate limits) are applied by the service on top of this result.

use std::time::Instant;

use jiff::Timestamp;
use lifeguard_core::{CheckRecord, CheckVerdict, FailureMode, Identity, Mode, RequestFacts};
use subtle::ConstantTimeEq;

use crate::compile::hash_key;
use crate::jwt::{looks_like_jwt, verify};
use crate::snapshot::{Key, Matcher, Route, Snapshot};

/// Envoy's per-route `context_extensions` key that names the Lifeguard route directly.
pub const ROUTE_CONTEXT_KEY: &str = "lifeguard_route";

/// Longest credential we look at; anything longer is refused before hashing or parsing.
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// A refusal, in terms a client can act on. The message never says more than the caller may know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    /// Machine-readable code (OpenAI error `code`).
    pub code: &'static str,
    pub message: String,
    /// The check that refused.
    pub check: &'static str,
    /// Seconds until a retry may succeed (rate limits).
    pub retry_after: Option<u64>,
}

impl Denial {
    pub fn new(
        status: u16,
        code: &'static str,
        check: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Denial {
            status,
            code,
            message: message.into(),
            check,
            retry_after: None,
        }
    }

    /// OpenAI error `type` for this status.
    pub fn error_type(&self) -> &'static str {
        match self.status {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            400 => "invalid_request_error",
            _ => "api_error",
        }
    }
}

/// Which request header carried the caller's credential (removed before the request goes upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialHeader {
    Authorization,
    ApiKey,
}

impl CredentialHeader {
    pub fn name(self) -> &'static str {
        match self {
            CredentialHeader::Authorization => "authorization",
            CredentialHeader::ApiKey => "x-api-key",
        }
    }
}

/// The outcome of the request-level checks, with its trace.
#[derive(Debug)]
pub struct CheckDecision<'s> {
    pub route: Option<&'s Route>,
    pub identity: Option<Identity>,
    pub key: Option<&'s Key>,
    pub credential: Option<CredentialHeader>,
    /// The refusal these checks reached, whether or not the mode enforces it.
    pub denial: Option<Denial>,
    pub mode: Mode,
    pub failure: FailureMode,
    pub checks: Vec<CheckRecord>,
}

impl CheckDecision<'_> {
    /// The refusal to enforce: none in monitor mode.
    pub fn enforced(&self) -> Option<&Denial> {
        match self.mode {
            Mode::Enforce => self.denial.as_ref(),
            Mode::Monitor => None,
        }
    }

    /// Records a check and, when it refuses, the denial (the first refusal wins).
    pub fn record(&mut self, record: CheckRecord, denial: Option<Denial>) {
        self.checks.push(record);
        if self.denial.is_none() {
            self.denial = denial;
        }
    }
}

/// Runs route, identity and scope checks for one request.
pub fn decide<'s>(
    snapshot: &'s Snapshot,
    facts: &RequestFacts,
    now: Timestamp,
) -> CheckDecision<'s> {
    let mut d = CheckDecision {
        route: None,
        identity: None,
        key: None,
        credential: None,
        denial: None,
        mode: snapshot.mode,
        failure: snapshot.failure,
        checks: Vec::with_capacity(4),
    };

    let t = Instant::now();
    let (route, why) = match_route(snapshot, facts);
    let Some(route) = route else {
        let rec = timed(
            CheckRecord::new("route", CheckVerdict::Block).reason(why),
            t,
        );
        d.record(
            rec,
            Some(Denial::new(
                403,
                "no_route",
                "route",
                "no policy route matches this request",
            )),
        );
        return d;
    };
    d.route = Some(route);
    d.mode = route.mode;
    d.failure = route.failure;
    let mut rec = CheckRecord::new("route", CheckVerdict::Pass).reason(why);
    rec.rules.push(route.name.clone());
    d.record(timed(rec, t), None);

    let t = Instant::now();
    if !route.authenticate {
        d.record(
            timed(
                CheckRecord::new("identity", CheckVerdict::Skipped)
                    .reason("route does not authenticate"),
                t,
            ),
            None,
        );
        return d;
    }
    match identify(snapshot, facts, now) {
        Err((denial, reason)) => {
            d.record(
                timed(
                    CheckRecord::new("identity", CheckVerdict::Block).reason(reason),
                    t,
                ),
                Some(denial),
            );
            return d;
        }
        Ok((identity, key, header)) => {
            let mut rec = CheckRecord::new("identity", CheckVerdict::Pass).reason(match key {
                Some(_) => "virtual key",
                None => "jwt",
            });
            rec.rules.push(identity.id.clone());
            d.record(timed(rec, t), None);
            d.identity = Some(identity);
            d.key = key;
            d.credential = Some(header);
        }
    }

    let t = Instant::now();
    let Some(identity) = d.identity.as_ref() else {
        return d;
    };
    let provider = &snapshot.providers[route.provider].name;
    let (verdict, denial, reason) = if !route.allow.is_empty()
        && !route.allow.iter().any(|r| r.admits(identity))
    {
        (
            CheckVerdict::Block,
            Some(Denial::new(
                403,
                "route_not_allowed",
                "scope",
                format!("this credential may not use route {:?}", route.name),
            )),
            format!(
                "no allow rule of route {:?} admits team {:?} env {:?} app {:?}",
                route.name, identity.team, identity.env, identity.app
            ),
        )
    } else if !identity.providers.is_empty() && !identity.providers.iter().any(|p| p == provider) {
        (
            CheckVerdict::Block,
            Some(Denial::new(
                403,
                "provider_not_allowed",
                "scope",
                format!("this credential may not use provider {provider:?}"),
            )),
            format!("provider {provider:?} not in the credential's providers"),
        )
    } else {
        (
            CheckVerdict::Pass,
            None,
            format!("admitted to route {:?}, provider {provider:?}", route.name),
        )
    };
    d.record(
        timed(CheckRecord::new("scope", verdict).reason(reason), t),
        denial,
    );
    d
}

fn timed(mut rec: CheckRecord, start: Instant) -> CheckRecord {
    rec.latency_us = start.elapsed().as_secs_f64() * 1e6;
    rec
}

/// The route for a request: named by Envoy's context extension, else the first whose matcher matches.
pub fn match_route<'s>(
    snapshot: &'s Snapshot,
    facts: &RequestFacts,
) -> (Option<&'s Route>, String) {
    if let Some(name) = facts.context.get(ROUTE_CONTEXT_KEY) {
        return match snapshot.route_by_name(name) {
            Some(r) => (
                Some(r),
                format!("named by Envoy context extension {ROUTE_CONTEXT_KEY}"),
            ),
            None => (
                None,
                format!("Envoy names route {name:?}, which the bundle does not define"),
            ),
        };
    }
    match snapshot.routes.iter().find(|r| matches(&r.matcher, facts)) {
        Some(r) => (Some(r), "matched path, method and headers".into()),
        None => (None, "no route matches path, method and headers".into()),
    }
}

fn matches(m: &Matcher, facts: &RequestFacts) -> bool {
    let path = facts.path_only();
    m.path_exact.as_ref().is_none_or(|p| p == path)
        && m.path_prefix
            .as_ref()
            .is_none_or(|p| path.starts_with(p.as_str()))
        && (m.methods.is_empty()
            || m.methods
                .iter()
                .any(|x| x.eq_ignore_ascii_case(&facts.method)))
        && m.headers
            .iter()
            .all(|(k, v)| facts.header(k) == Some(v.as_str()))
}

type Identified<'s> = (Identity, Option<&'s Key>, CredentialHeader);

fn identify<'s>(
    snapshot: &'s Snapshot,
    facts: &RequestFacts,
    now: Timestamp,
) -> Result<Identified<'s>, (Denial, String)> {
    let unauthorized = |code: &'static str, message: &str, reason: &str| {
        Err((
            Denial::new(401, code, "identity", message),
            reason.to_string(),
        ))
    };
    let (token, header) = match credential(facts) {
        Some(found) => found,
        None => {
            return unauthorized(
                "missing_api_key",
                "no API key or bearer token was provided",
                "no credential in authorization or x-api-key",
            );
        }
    };
    if token.len() > MAX_CREDENTIAL_BYTES || token.is_empty() {
        return unauthorized(
            "invalid_api_key",
            "the credential is malformed",
            "credential empty or longer than the limit",
        );
    }
    if !snapshot.jwt.is_empty() && looks_like_jwt(token) {
        return match verify(&snapshot.jwt, token) {
            Ok(identity) => Ok((identity, None, header)),
            Err(r) => unauthorized("invalid_token", r.as_str(), r.as_str()),
        };
    }
    let hash = hash_key(token);
    let Some(key) = snapshot.keys.get(&hash) else {
        return unauthorized(
            "invalid_api_key",
            "the API key is not valid",
            "unknown virtual key",
        );
    };
    // The map lookup found it by hash; compare the full digest in constant time as well, so no timing
    // difference depends on how much of a guessed key is right.
    if !bool::from(key.hash.ct_eq(&hash)) {
        return unauthorized(
            "invalid_api_key",
            "the API key is not valid",
            "unknown virtual key",
        );
    }
    if key.revoked {
        return unauthorized("key_revoked", "the API key has been revoked", "key revoked");
    }
    if key.expires.is_some_and(|e| now >= e) {
        return unauthorized("key_expired", "the API key has expired", "key expired");
    }
    if key.not_before.is_some_and(|nb| now < nb) {
        return unauthorized(
            "key_not_yet_valid",
            "the API key is not valid yet",
            "key not yet valid",
        );
    }
    Ok((key.identity.clone(), Some(key), header))
}

/// The caller's credential: `Authorization: Bearer ...`, else `x-api-key`.
pub fn credential(facts: &RequestFacts) -> Option<(&str, CredentialHeader)> {
    if let Some(v) = facts.header("authorization") {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some((v[7..].trim(), CredentialHeader::Authorization));
        }
    }
    facts
        .header("x-api-key")
        .map(|v| (v.trim(), CredentialHeader::ApiKey))
}
