//! RawBundle -> Snapshot. Every problem is collected, none stops the others from being found.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use jiff::Timestamp;
use lifeguard_core::{Action, BundleRef, FailureMode, Identity, IdentitySource, Mode, Tier};
use lifeguard_detect::{CustomKind, CustomRule, DetectorConfig, PiiType, Scanner};
use sha2::{Digest, Sha256};

use crate::jwt::{ClaimMap, JwtIssuer, parse_jwks, valid_claim_path};
use crate::raw::*;
use crate::snapshot::*;
use crate::source::{Loc, Parsed, Problem, SourceFile, parse};

/// Default cap on an inspected request body.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;

/// How much of the outside world compilation may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileOptions {
    /// Read provider credentials, JWKS files and the redaction key (what `serve` does). `validate` leaves this
    /// off by default so a GitOps pipeline without the secrets can check a bundle.
    pub read_external: bool,
}

/// Parses and compiles bundle sources into a snapshot, or returns every problem found.
pub fn compile_sources(
    sources: &[SourceFile],
    opts: CompileOptions,
) -> Result<Snapshot, Vec<Problem>> {
    let (parsed, mut problems) = parse(sources);
    let hash = bundle_hash(sources);
    let mut c = Compiler {
        p: &parsed,
        problems: Vec::new(),
        opts,
        globs: HashMap::new(),
    };
    let snapshot = c.bundle(hash);
    problems.extend(c.problems);
    match snapshot {
        Some(s) if problems.is_empty() => Ok(s),
        _ => Err(problems),
    }
}

/// The content hash that names a bundle version: the first 16 hex digits of SHA-256 over its files' texts.
pub fn bundle_hash(sources: &[SourceFile]) -> String {
    let mut hasher = Sha256::new();
    for s in sources {
        hasher.update((s.text.len() as u64).to_le_bytes());
        hasher.update(s.text.as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Compiles one YAML text (named `name` in problems).
pub fn compile_str(name: &str, text: &str, opts: CompileOptions) -> Result<Snapshot, Vec<Problem>> {
    compile_sources(
        &[SourceFile {
            name: name.to_string(),
            text: text.to_string(),
        }],
        opts,
    )
}

struct Compiler<'a> {
    p: &'a Parsed,
    problems: Vec<Problem>,
    opts: CompileOptions,
    globs: HashMap<Vec<String>, Option<Arc<GlobSet>>>,
}

impl Compiler<'_> {
    fn err(&mut self, loc: &Loc, sub: &str, msg: impl Into<String>) {
        let p = self.p.problem(loc, sub, msg);
        self.problems.push(p);
    }

    fn section_err(&mut self, section: &str, sub: &str, msg: impl Into<String>) {
        let p = self.p.section_problem(section, sub, msg);
        self.problems.push(p);
    }

    fn bundle(&mut self, hash: String) -> Option<Snapshot> {
        let raw = &self.p.bundle;
        if raw.version != 1 && self.p.sections.contains_key("version") {
            self.section_err(
                "version",
                "",
                format!(
                    "unsupported version {}: this Lifeguard reads version 1",
                    raw.version
                ),
            );
        }
        if raw.name.trim().is_empty() && self.p.sections.contains_key("name") {
            self.section_err("name", "", "must not be empty");
        }
        let mode = raw.defaults.mode.unwrap_or_default();
        let failure = raw.defaults.failure.unwrap_or_default();
        let max_body_bytes = raw
            .defaults
            .max_body_bytes
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            self.section_err("defaults", "max_body_bytes", "must be greater than 0");
        }

        let providers = self.providers();
        let provider_index: HashMap<&str, usize> = providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let (keys, key_ids) = self.keys(&provider_index);
        let jwt = self.jwt(&provider_index);
        let section = |name: &str| {
            self.p.sections.get(name).cloned().unwrap_or(Loc {
                file: 0,
                path: name.to_string(),
            })
        };
        let (inj_loc, jb_loc) = (
            section("detectors.injection"),
            section("detectors.jailbreak"),
        );
        let injection = self.thresholds(
            raw.detectors.injection.as_ref(),
            default_thresholds(0.5),
            &inj_loc,
            "",
        );
        let jailbreak = self.thresholds(
            raw.detectors.jailbreak.as_ref(),
            default_thresholds(0.5),
            &jb_loc,
            "",
        );
        let routes = self.routes(
            &providers,
            &provider_index,
            (injection, jailbreak),
            (mode, failure, max_body_bytes),
        );
        let (scanner, custom_actions) = self.detectors();
        let tool_hosts = raw
            .detectors
            .tool_calls
            .as_ref()
            .map(|t| {
                t.allowed_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        let redaction_key = match &raw.detectors.redaction_key {
            Some(cred) if self.opts.read_external => {
                let loc = self
                    .p
                    .sections
                    .get("detectors.redaction_key")
                    .cloned()
                    .unwrap_or_default();
                self.credential(cred, &loc, "")
            }
            _ => None,
        };
        Some(Snapshot {
            bundle: BundleRef {
                name: raw.name.clone(),
                version: 0,
                hash,
            },
            mode,
            failure,
            max_body_bytes,
            providers,
            routes,
            jwt,
            scanner: scanner?,
            custom_actions,
            injection,
            jailbreak,
            tool_hosts,
            redaction_key,
            candidate_path: raw.candidate.clone(),
            candidate: None,
            keys,
            key_ids,
        })
    }

    fn credential(&mut self, cred: &RawCredential, loc: &Loc, sub: &str) -> Option<Secret> {
        let value = match (&cred.env, &cred.file) {
            (Some(var), None) => match std::env::var(var) {
                Ok(v) => v,
                Err(_) => {
                    self.err(loc, sub, format!("environment variable {var} is not set"));
                    return None;
                }
            },
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(v) => v.trim().to_string(),
                Err(e) => {
                    self.err(loc, sub, format!("cannot read credential file {path}: {e}"));
                    return None;
                }
            },
            _ => return None,
        };
        if value.is_empty() {
            self.err(loc, sub, "credential is empty");
            return None;
        }
        Some(Secret(value))
    }

    /// A credential names exactly one source; checked even when credentials are not read.
    fn credential_shape(&mut self, cred: &RawCredential, loc: &Loc, sub: &str) {
        if cred.env.is_some() == cred.file.is_some() {
            self.err(loc, sub, "set exactly one of `env` and `file`");
        }
    }

    fn providers(&mut self) -> Vec<Provider> {
        let mut out = Vec::new();
        for (name, raw) in &self.p.bundle.providers {
            let loc = self.p.providers.get(name).cloned().unwrap_or_default();
            let models = self.model_scope(&raw.models, &loc, "models");
            self.credential_shape(&raw.credential, &loc, "credential");
            let header = raw.header.to_ascii_lowercase();
            if header.is_empty()
                || !header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                self.err(
                    &loc,
                    "header",
                    format!("invalid header name {:?}", raw.header),
                );
            }
            let value = if self.opts.read_external {
                self.credential(&raw.credential, &loc, "credential")
                    .map(|s| Secret(format!("{}{}", raw.prefix, s.0)))
            } else {
                None
            };
            out.push(Provider {
                name: name.clone(),
                format: match raw.format {
                    RawFormat::Openai => Format::OpenAi,
                    RawFormat::Anthropic => Format::Anthropic,
                },
                header,
                value,
                models,
            });
        }
        out
    }

    fn model_scope(&mut self, patterns: &[String], loc: &Loc, sub: &str) -> ModelScope {
        if let Some(set) = self.globs.get(patterns) {
            return ModelScope::new(patterns.to_vec(), set.clone());
        }
        let set = if patterns.is_empty() {
            None
        } else {
            let mut b = GlobSetBuilder::new();
            let mut ok = true;
            for (i, pat) in patterns.iter().enumerate() {
                match Glob::new(pat) {
                    Ok(g) => {
                        b.add(g);
                    }
                    Err(e) => {
                        ok = false;
                        self.err(
                            loc,
                            &format!("{sub}[{i}]"),
                            format!("invalid glob {pat:?}: {}", e.kind()),
                        );
                    }
                }
            }
            match b.build() {
                Ok(set) if ok => Some(Arc::new(set)),
                _ => None,
            }
        };
        self.globs.insert(patterns.to_vec(), set.clone());
        ModelScope::new(patterns.to_vec(), set)
    }

    fn known_providers(&mut self, list: &[String], index: &HashMap<&str, usize>, loc: &Loc) {
        for (i, p) in list.iter().enumerate() {
            if !index.contains_key(p.as_str()) {
                self.err(
                    loc,
                    &format!("providers[{i}]"),
                    format!("unknown provider {p:?}"),
                );
            }
        }
    }

    fn timestamp(&mut self, text: &Option<String>, loc: &Loc, sub: &str) -> Option<Timestamp> {
        let text = text.as_ref()?;
        match text.parse::<Timestamp>() {
            Ok(t) => Some(t),
            Err(_) => {
                self.err(
                    loc,
                    sub,
                    format!("invalid time {text:?}: use RFC 3339, e.g. 2027-06-30T00:00:00Z"),
                );
                None
            }
        }
    }

    fn keys(
        &mut self,
        providers: &HashMap<&str, usize>,
    ) -> (HashMap<[u8; 32], Key>, HashMap<String, [u8; 32]>) {
        let mut keys = HashMap::with_capacity(self.p.bundle.keys.len());
        let mut ids = HashMap::with_capacity(self.p.bundle.keys.len());
        for (raw, loc) in self.p.bundle.keys.iter().zip(&self.p.keys) {
            if raw.id.trim().is_empty() {
                self.err(loc, "id", "must not be empty");
            }
            let hash = parse_hash(&raw.hash);
            if hash.is_none() {
                self.err(loc, "hash", "malformed hash: expected \"sha256:\" and 64 hex digits (see `lifeguard keys new`)");
            }
            self.known_providers(&raw.providers, providers, loc);
            let models = self.model_scope(&raw.models, loc, "models");
            let expires = self.timestamp(&raw.expires, loc, "expires");
            let not_before = self.timestamp(&raw.not_before, loc, "not_before");
            let rate_limit = raw.rate_limit.as_ref().and_then(|r| {
                if r.requests_per_minute == 0 {
                    self.err(
                        loc,
                        "rate_limit.requests_per_minute",
                        "must be greater than 0 (use `revoked: true` to refuse a key)",
                    );
                    return None;
                }
                Some(RateLimit {
                    per_minute: r.requests_per_minute,
                    burst: r.burst.unwrap_or(r.requests_per_minute).max(1),
                })
            });
            let Some(hash) = hash else { continue };
            if ids.contains_key(&raw.id) {
                self.err(loc, "id", format!("duplicate key id {:?}", raw.id));
                continue;
            }
            if keys.contains_key(&hash) {
                self.err(loc, "hash", "the same key hash appears twice");
                continue;
            }
            ids.insert(raw.id.clone(), hash);
            keys.insert(
                hash,
                Key {
                    hash,
                    identity: Identity {
                        source: Some(IdentitySource::Key),
                        id: raw.id.clone(),
                        team: raw.team.clone(),
                        env: raw.env.clone(),
                        app: raw.app.clone(),
                        providers: raw.providers.clone(),
                        models: raw.models.clone(),
                    },
                    models,
                    expires,
                    not_before,
                    revoked: raw.revoked,
                    rate_limit,
                },
            );
        }
        (keys, ids)
    }

    fn jwt(&mut self, providers: &HashMap<&str, usize>) -> Vec<JwtIssuer> {
        let mut out = Vec::new();
        for (raw, loc) in self.p.bundle.jwt.iter().zip(&self.p.jwt) {
            if raw.issuer.is_empty() {
                self.err(loc, "issuer", "must not be empty");
            }
            if raw.audiences.is_empty() {
                self.err(loc, "audiences", "name at least one audience");
            }
            for (field, path) in [
                ("team", &raw.claims.team),
                ("env", &raw.claims.env),
                ("app", &raw.claims.app),
            ] {
                if let Some(p) = path
                    && !valid_claim_path(p)
                {
                    self.err(
                        loc,
                        &format!("claims.{field}"),
                        format!("invalid claim path {p:?}"),
                    );
                }
            }
            self.known_providers(&raw.providers, providers, loc);
            let models = self.model_scope(&raw.models, loc, "models");
            let keys = if self.opts.read_external {
                match std::fs::read_to_string(&raw.jwks_file) {
                    Ok(text) => match parse_jwks(&text) {
                        Ok(k) => k,
                        Err(e) => {
                            self.err(loc, "jwks_file", format!("{}: {e}", raw.jwks_file));
                            Vec::new()
                        }
                    },
                    Err(e) => {
                        self.err(
                            loc,
                            "jwks_file",
                            format!("cannot read {}: {e}", raw.jwks_file),
                        );
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            out.push(JwtIssuer::new(
                raw.issuer.clone(),
                raw.audiences.clone(),
                keys,
                ClaimMap {
                    team: raw.claims.team.clone(),
                    env: raw.claims.env.clone(),
                    app: raw.claims.app.clone(),
                },
                raw.providers.clone(),
                models,
                raw.leeway_seconds.unwrap_or(30),
            ));
        }
        out
    }

    /// Reads per-tier thresholds at `loc` + `sub`, starting from `base`.
    fn thresholds(
        &mut self,
        raw: Option<&RawTierThresholds>,
        base: TierThresholds,
        loc: &Loc,
        sub: &str,
    ) -> TierThresholds {
        let Some(raw) = raw else { return base };
        let mut t = match raw.threshold {
            Some(v) => default_thresholds(v),
            None => base,
        };
        let fields = [
            ("threshold", raw.threshold, None),
            ("system", raw.system, Some(Tier::System)),
            ("user", raw.user, Some(Tier::User)),
            ("assistant", raw.assistant, Some(Tier::Assistant)),
            ("tool_result", raw.tool_result, Some(Tier::ToolResult)),
            ("retrieved", raw.retrieved, Some(Tier::Retrieved)),
        ];
        for (name, value, tier) in fields {
            let Some(v) = value else { continue };
            if !(0.0..=1.0).contains(&v) || v.is_nan() {
                let path = if sub.is_empty() {
                    name.to_string()
                } else {
                    format!("{sub}.{name}")
                };
                self.err(loc, &path, format!("threshold {v} is not between 0 and 1"));
            } else if let Some(tier) = tier {
                t.0[tier as usize] = v;
            }
        }
        t
    }

    fn routes(
        &mut self,
        providers: &[Provider],
        index: &HashMap<&str, usize>,
        (injection, jailbreak): (TierThresholds, TierThresholds),
        (mode, failure, max_body): (Mode, FailureMode, u64),
    ) -> Vec<Route> {
        let mut out = Vec::new();
        let mut names = HashSet::new();
        for (raw, loc) in self.p.bundle.routes.iter().zip(&self.p.routes) {
            if raw.name.is_empty() {
                self.err(loc, "name", "must not be empty");
            } else if !names.insert(raw.name.clone()) {
                self.err(loc, "name", format!("duplicate route name {:?}", raw.name));
            }
            let m = &raw.matcher;
            for (field, v) in [
                ("path_prefix", &m.path_prefix),
                ("path_exact", &m.path_exact),
            ] {
                if let Some(v) = v
                    && !v.starts_with('/')
                {
                    self.err(
                        loc,
                        &format!("match.{field}"),
                        format!("{v:?} must start with '/'"),
                    );
                }
            }
            let methods: Vec<String> = m.methods.iter().map(|x| x.to_ascii_uppercase()).collect();
            for (i, x) in methods.iter().enumerate() {
                if x.is_empty() || !x.bytes().all(|b| b.is_ascii_uppercase()) {
                    self.err(
                        loc,
                        &format!("match.methods[{i}]"),
                        format!("invalid method {x:?}"),
                    );
                }
            }
            let provider = match &raw.provider {
                Some(name) => match index.get(name.as_str()) {
                    Some(i) => Some(*i),
                    None => {
                        self.err(loc, "provider", format!("unknown provider {name:?}"));
                        None
                    }
                },
                None => infer_provider(
                    providers,
                    m.path_exact.as_deref().or(m.path_prefix.as_deref()),
                ),
            };
            if provider.is_none() && raw.provider.is_none() {
                if providers.is_empty() {
                    self.err(
                        loc,
                        "",
                        "the bundle defines no provider for this route to serve",
                    );
                } else {
                    self.err(
                        loc,
                        "provider",
                        "cannot tell which provider this route serves: set `provider`",
                    );
                }
            }
            let max_body_bytes = raw.max_body_bytes.unwrap_or(max_body);
            if max_body_bytes == 0 {
                self.err(loc, "max_body_bytes", "must be greater than 0");
            }
            let route_injection = self.thresholds(
                raw.thresholds.injection.as_ref(),
                injection,
                loc,
                "thresholds.injection",
            );
            let route_jailbreak = self.thresholds(
                raw.thresholds.jailbreak.as_ref(),
                jailbreak,
                loc,
                "thresholds.jailbreak",
            );
            out.push(Route {
                name: raw.name.clone(),
                matcher: Matcher {
                    path_prefix: m.path_prefix.clone(),
                    path_exact: m.path_exact.clone(),
                    methods,
                    headers: m
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                        .collect(),
                },
                provider: provider.unwrap_or(0),
                allow: raw
                    .allow
                    .iter()
                    .map(|a| AllowRule {
                        teams: a.teams.clone(),
                        envs: a.envs.clone(),
                        apps: a.apps.clone(),
                        ids: a.ids.clone(),
                    })
                    .collect(),
                authenticate: raw.authenticate.unwrap_or(true),
                mode: raw.mode.unwrap_or(mode),
                failure: raw.failure.unwrap_or(failure),
                max_body_bytes,
                request: actions(&raw.request),
                response: actions(&raw.response),
                injection: route_injection,
                jailbreak: route_jailbreak,
            });
        }
        out
    }

    fn detectors(&mut self) -> (Option<Scanner>, HashMap<String, Action>) {
        let d = &self.p.bundle.detectors;
        let mut pii_types = Vec::new();
        match d.pii.as_ref().and_then(|p| p.types.as_ref()) {
            None => pii_types.extend(ALL_PII),
            Some(types) => {
                for (i, t) in types.iter().enumerate() {
                    match t.parse::<PiiType>() {
                        Ok(t) => pii_types.push(t),
                        Err(_) => {
                            let p = self.p.section_problem(
                                "detectors.pii",
                                &format!("types[{i}]"),
                                format!("unknown PII type {t:?}: expected email, phone, credit_card, iban, us_ssn or ip_address"),
                            );
                            self.problems.push(p);
                        }
                    }
                }
            }
        }
        let mut custom = Vec::new();
        let mut custom_actions = HashMap::new();
        for (raw, loc) in d.custom.iter().zip(&self.p.custom) {
            if raw.id.is_empty()
                || !raw
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                self.err(
                    loc,
                    "id",
                    format!(
                        "invalid rule id {:?}: use letters, digits, '-' and '_'",
                        raw.id
                    ),
                );
            }
            if custom_actions.insert(raw.id.clone(), raw.action).is_some() {
                self.err(loc, "id", format!("duplicate custom rule id {:?}", raw.id));
            }
            let kind = match (&raw.regex, raw.phrases.is_empty()) {
                (Some(_), false) => {
                    self.err(loc, "", "set either `phrases` or `regex`, not both");
                    continue;
                }
                (None, true) => {
                    self.err(loc, "", "set `phrases` or `regex`");
                    continue;
                }
                (Some(re), true) => CustomKind::Regex(re.clone()),
                (None, false) => CustomKind::Phrases(raw.phrases.clone()),
            };
            custom.push((
                loc.clone(),
                CustomRule {
                    id: raw.id.clone(),
                    kind,
                },
            ));
        }
        let cfg = DetectorConfig {
            pii_types,
            secrets: d.secrets.as_ref().and_then(|s| s.enabled).unwrap_or(true),
            custom: custom.iter().map(|(_, r)| r.clone()).collect(),
        };
        match Scanner::compile(&cfg) {
            Ok(s) => (Some(s), custom_actions),
            Err(errors) => {
                for e in errors {
                    match e.rule_index.and_then(|i| custom.get(i)) {
                        Some((loc, rule)) => {
                            let sub = if matches!(rule.kind, CustomKind::Regex(_)) {
                                "regex"
                            } else {
                                "phrases"
                            };
                            self.err(loc, sub, e.message);
                        }
                        None => self.section_err("detectors", "", e.message),
                    }
                }
                (None, custom_actions)
            }
        }
    }
}

const ALL_PII: [PiiType; 6] = [
    PiiType::Email,
    PiiType::Phone,
    PiiType::CreditCard,
    PiiType::Iban,
    PiiType::UsSsn,
    PiiType::IpAddress,
];

fn actions(raw: &RawActions) -> Actions {
    Actions {
        injection: raw.injection,
        jailbreak: raw.jailbreak,
        secrets: raw.secrets,
        pii: raw.pii,
        tool_calls: raw.tool_calls,
        custom: raw.custom,
    }
}

/// A base threshold for user and assistant text; untrusted tiers get a lower one, the system prompt is trusted.
fn default_thresholds(base: f32) -> TierThresholds {
    let untrusted = base * 0.7;
    TierThresholds([1.0, base, base, untrusted, untrusted])
}

/// The provider a route serves when it does not say: the only one, or the only one of the format its path implies.
fn infer_provider(providers: &[Provider], path: Option<&str>) -> Option<usize> {
    if providers.len() == 1 {
        return Some(0);
    }
    let wanted = match path {
        Some(p) if p.contains("/messages") => Format::Anthropic,
        _ => Format::OpenAi,
    };
    let mut matching = providers
        .iter()
        .enumerate()
        .filter(|(_, p)| p.format == wanted);
    match (matching.next(), matching.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

/// `sha256:<64 lower-case hex>` -> bytes.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.strip_prefix("sha256:")?;
    if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// The hash to put in a bundle for a virtual key.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}
