//! The compiled, immutable form of a bundle that the services read. Built once per load, shared by `Arc`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use globset::GlobSet;
use jiff::Timestamp;
use lifeguard_core::{Action, BundleRef, Category, FailureMode, Identity, Mode, Tier};
use lifeguard_detect::Scanner;

use crate::jwt::JwtIssuer;

/// A credential read at load. Its `Debug` never shows the value, so it cannot leak through a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(crate) String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenAi,
    Anthropic,
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub format: Format,
    /// Upstream header for the real credential (lower case).
    pub header: String,
    /// `prefix` + credential, ready to set; `None` when the bundle was compiled without reading credentials.
    pub value: Option<Secret>,
    /// Models this provider serves (empty: any).
    pub models: ModelScope,
}

/// Model globs, compiled once and shared by every key that names the same list.
#[derive(Debug, Clone)]
pub struct ModelScope {
    pub patterns: Vec<String>,
    set: Option<Arc<GlobSet>>,
}

impl ModelScope {
    pub(crate) fn new(patterns: Vec<String>, set: Option<Arc<GlobSet>>) -> Self {
        ModelScope { patterns, set }
    }

    /// Compiles globs handed over at run time (e.g. a JWT issuer's models in ext_authz metadata). Invalid
    /// patterns match nothing, so a bad hand-over narrows access rather than widening it.
    pub fn from_patterns(patterns: &[String]) -> Self {
        if patterns.is_empty() {
            return ModelScope {
                patterns: Vec::new(),
                set: None,
            };
        }
        let mut b = globset::GlobSetBuilder::new();
        for p in patterns {
            if let Ok(g) = globset::Glob::new(p) {
                b.add(g);
            }
        }
        let set = b.build().unwrap_or_else(|_| GlobSet::empty());
        ModelScope {
            patterns: patterns.to_vec(),
            set: Some(Arc::new(set)),
        }
    }

    /// True when the scope allows `model` (an empty scope allows any).
    pub fn allows(&self, model: &str) -> bool {
        match &self.set {
            None => true,
            Some(set) => set.is_match(model),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

#[derive(Debug)]
pub struct Key {
    pub hash: [u8; 32],
    pub identity: Identity,
    pub models: ModelScope,
    pub expires: Option<Timestamp>,
    pub not_before: Option<Timestamp>,
    pub revoked: bool,
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub path_prefix: Option<String>,
    pub path_exact: Option<String>,
    /// Upper case.
    pub methods: Vec<String>,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct AllowRule {
    pub teams: Vec<String>,
    pub envs: Vec<String>,
    pub apps: Vec<String>,
    pub ids: Vec<String>,
}

impl AllowRule {
    pub fn admits(&self, id: &Identity) -> bool {
        let ok = |list: &Vec<String>, v: &str| list.is_empty() || list.iter().any(|x| x == v);
        ok(&self.teams, &id.team)
            && ok(&self.envs, &id.env)
            && ok(&self.apps, &id.app)
            && ok(&self.ids, &id.id)
    }
}

/// What a route does with the findings of each category; `None` means the category is not inspected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions {
    pub injection: Option<Action>,
    pub jailbreak: Option<Action>,
    pub secrets: Option<Action>,
    pub pii: Option<Action>,
    pub tool_calls: Option<Action>,
    /// `None`: each custom rule's own action (request) / custom rules not applied (response).
    pub custom: Option<Action>,
}

impl Actions {
    pub fn get(&self, c: Category) -> Option<Action> {
        match c {
            Category::Injection => self.injection,
            Category::Jailbreak => self.jailbreak,
            Category::Secrets => self.secrets,
            Category::Pii => self.pii,
            Category::ToolCalls => self.tool_calls,
            Category::Custom => self.custom,
        }
    }

    pub fn any(&self) -> bool {
        [
            self.injection,
            self.jailbreak,
            self.secrets,
            self.pii,
            self.tool_calls,
            self.custom,
        ]
        .iter()
        .any(|a| a.is_some_and(|a| a != Action::Allow))
    }
}

/// A score threshold per trust tier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierThresholds(pub [f32; 5]);

impl TierThresholds {
    pub fn get(&self, tier: Tier) -> f32 {
        self.0[tier as usize]
    }
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: Matcher,
    /// Index into `Snapshot::providers`.
    pub provider: usize,
    pub allow: Vec<AllowRule>,
    pub authenticate: bool,
    pub mode: Mode,
    pub failure: FailureMode,
    pub max_body_bytes: u64,
    pub request: Actions,
    pub response: Actions,
    pub injection: TierThresholds,
    pub jailbreak: TierThresholds,
}

impl Route {
    /// Whether ext_proc must see responses on this route (otherwise Envoy is told to skip those phases).
    pub fn inspects_response(&self) -> bool {
        self.response.any()
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub bundle: BundleRef,
    pub mode: Mode,
    pub failure: FailureMode,
    pub max_body_bytes: u64,
    pub providers: Vec<Provider>,
    pub routes: Vec<Route>,
    pub jwt: Vec<JwtIssuer>,
    pub scanner: Scanner,
    /// Action of each custom rule by id.
    pub custom_actions: HashMap<String, Action>,
    /// The bundle-wide injection and jailbreak thresholds (`detectors:`), before route overrides.
    pub injection: TierThresholds,
    pub jailbreak: TierThresholds,
    /// Hosts tool-call URLs may name; empty means any.
    pub tool_hosts: Vec<String>,
    pub redaction_key: Option<Secret>,
    /// The candidate bundle's path as written (relative to the bundle file), if one is named.
    pub candidate_path: Option<String>,
    /// The candidate bundle, evaluated in shadow beside this one (loaded by [`crate::load`]).
    pub candidate: Option<Arc<Snapshot>>,
    pub(crate) keys: HashMap<[u8; 32], Key>,
    pub(crate) key_ids: HashMap<String, [u8; 32]>,
}

impl Snapshot {
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The key with this id (for ext_proc, which learns the key id from ext_authz metadata).
    pub fn key_by_id(&self, id: &str) -> Option<&Key> {
        self.key_ids.get(id).and_then(|h| self.keys.get(h))
    }

    pub fn route_by_name(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }

    pub fn provider(&self, route: &Route) -> &Provider {
        &self.providers[route.provider]
    }

    /// True when `host` is allowed in tool-call URLs.
    pub fn tool_host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.tool_hosts.is_empty()
            || self.tool_hosts.iter().any(|h| match h.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")) || host == suffix,
                None => *h == host,
            })
    }

    /// One line for `validate` and logs.
    pub fn summary(&self) -> String {
        format!(
            "bundle {:?} v{} ({}): {} providers, {} keys, {} jwt issuers, {} routes, {} custom rules",
            self.bundle.name,
            self.bundle.version,
            self.bundle.hash,
            self.providers.len(),
            self.keys.len(),
            self.jwt.len(),
            self.routes.len(),
            self.custom_actions.len()
        )
    }
}
