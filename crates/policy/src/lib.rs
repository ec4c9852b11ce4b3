//! Lifeguard's policy: a YAML bundle is parsed into raw structs (unknown fields rejected), compiled into an
//! immutable [`Snapshot`], and requests are decided against it ([`decide`]) with a trace of every check.
//!
//! Key design decision: this crate is pure. It has no async runtime and no wire types, reads files only when
//! asked to load a bundle, and takes the clock as an argument, so every decision can be replayed offline
//! (`lifeguard explain`, `lifeguard diff`) exactly as the server made it.
#![forbid(unsafe_code)]

mod compile;
mod decide;
mod inspect;
pub mod jwt;
pub mod raw;
mod snapshot;
mod source;

pub use compile::{
    CompileOptions, DEFAULT_MAX_BODY_BYTES, bundle_hash, compile_sources, compile_str, hash_key,
    parse_hash,
};
pub use decide::{
    CheckDecision, CredentialHeader, Denial, MAX_CREDENTIAL_BYTES, ROUTE_CONTEXT_KEY, credential,
    decide, match_route,
};
pub use inspect::{Direction, Inspection, Piece, inspect, url_hosts};
pub use snapshot::{
    Actions, AllowRule, Format, Key, Matcher, ModelScope, Provider, RateLimit, Route, Secret,
    Snapshot, TierThresholds,
};
pub use source::{MAX_FILE_BYTES, Problem, SourceFile, read_sources};

use std::path::Path;

/// Reads and compiles a bundle file or directory, and the candidate bundle it names (evaluated in shadow).
/// A candidate that does not compile makes the bundle invalid: a rollout should not silently lose its shadow.
pub fn load(path: &Path, opts: CompileOptions) -> Result<Snapshot, Vec<Problem>> {
    let sources = read_sources(path)?;
    let mut snap = compile_sources(&sources, opts)?;
    if let Some(rel) = snap.candidate_path.clone() {
        let base = if path.is_dir() {
            path
        } else {
            path.parent().unwrap_or(Path::new("."))
        };
        let cpath = base.join(&rel);
        let candidate = read_sources(&cpath)
            .and_then(|s| compile_sources(&s, opts))
            .map_err(|problems| {
                let mut out = vec![Problem {
                    file: sources.first().map(|s| s.name.clone()).unwrap_or_default(),
                    line: None,
                    path: "candidate".into(),
                    message: format!(
                        "candidate bundle {} is invalid ({} problem(s) below)",
                        cpath.display(),
                        problems.len()
                    ),
                }];
                out.extend(problems);
                out
            })?;
        snap.candidate = Some(std::sync::Arc::new(candidate));
    }
    Ok(snap)
}

/// The JSON Schema of a bundle, generated from the raw types, for editors.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(raw::RawBundle);
    serde_json::to_value(&schema).unwrap_or_default()
}
