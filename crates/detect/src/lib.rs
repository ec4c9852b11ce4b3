//! Lifeguard's detectors: prompt injection and jailbreak (explainable scores), personal data, secrets and custom
//! rules, over whole texts or over texts that arrive in chunks.
//!
//! Key design decision: one [`Scanner`] is compiled per policy snapshot and every rule of a kind shares one
//! automaton. All literal phrases (signals and custom phrase lists) live in a single overlapping Aho-Corasick
//! automaton over folded text (NFKD, no marks, lower case, look-alikes and invisible characters folded, with
//! an offset map back to the original bytes), and all structured patterns of a kind in one multi-pattern regex.
//! A body is therefore scanned in a fixed number of passes however many rules there are, and because every
//! match depends only on a bounded neighbourhood, a [`StreamScan`] rescans only a short tail per chunk yet
//! reports exactly what a whole-text scan reports.
#![forbid(unsafe_code)]

mod custom;
mod encoded;
pub mod eval;
mod injection;
pub mod model;
mod normalize;
mod phrases;
mod pii;
mod redact;
mod regexset;
mod secrets;
mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lifeguard_core::{Category, Finding};
use serde::{Deserialize, Serialize};

pub use custom::{CustomKind, CustomRule};
pub use pii::{PiiType, UnknownPiiType};
pub use redact::redact;
pub use stream::{STREAM_CAP, StreamScan, StreamStep};

use crate::model::Model;
use crate::phrases::PhraseSet;
use crate::regexset::{RegexSet, SetCache};

/// What to detect; built by the policy crate from a bundle's `detectors:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    pub pii_types: Vec<PiiType>,
    pub secrets: bool,
    pub custom: Vec<CustomRule>,
}

impl Default for DetectorConfig {
    /// Every PII type, secrets on, no custom rules.
    fn default() -> Self {
        DetectorConfig {
            pii_types: PiiType::ALL.to_vec(),
            secrets: true,
            custom: Vec::new(),
        }
    }
}

/// One problem found while compiling a [`DetectorConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", rule_index.map(|i| format!("custom[{i}]: ")).unwrap_or_default())]
pub struct CompileError {
    /// Index into `DetectorConfig::custom` of the rule at fault, when the problem is in a custom rule.
    pub rule_index: Option<usize>,
    pub message: String,
}

/// A 0..=1 score with what raised it: rule ids with their weights, `model` with the model's probability, and
/// `model:<feature>` entries with that feature's contribution to the model's logit.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Score {
    pub value: f32,
    pub top: Vec<(String, f32)>,
}

/// Everything a whole-text scan found.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ScanReport {
    /// Sorted by span start, then end, then rule id.
    pub findings: Vec<Finding>,
    pub injection: Score,
    pub jailbreak: Score,
}

impl ScanReport {
    /// Findings of one category.
    pub fn of(&self, category: Category) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.category == category)
    }
}

/// Compiled detectors for one policy snapshot: immutable, `Send + Sync`, cheap to clone (shared).
#[derive(Clone)]
pub struct Scanner {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub phrases: PhraseSet,
    /// PII, secrets and custom regexes, each its own leftmost-first set (so one kind never hides another).
    pub sets: Vec<RegexSet>,
    pub model: &'static Model,
    /// Spare per-set caches for whole-text scans, so a scan does not allocate them each time.
    caches: Mutex<Vec<Vec<SetCache>>>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("regex_sets", &self.inner.sets.len())
            .finish_non_exhaustive()
    }
}

/// Texts longer than this are scored by the model on their first and last [`MODEL_EDGE`] bytes and around each
/// rule signal, instead of everywhere: the rules still see every byte, and the model is the costly pass.
const MODEL_FULL: usize = 16 * 1024;
const MODEL_EDGE: usize = 8 * 1024;
/// Text scored by the model around a rule signal in long texts, each side.
const MODEL_AROUND: usize = 2 * 1024;
/// Explaining model features reported per score.
const MODEL_TOP: usize = 3;

impl Scanner {
    /// Compile a configuration, reporting every problem at once.
    pub fn compile(cfg: &DetectorConfig) -> Result<Scanner, Vec<CompileError>> {
        let mut errors = Vec::new();
        let parts = custom::split(&cfg.custom, &mut errors);
        let phrases = match PhraseSet::build(parts.phrases) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(CompileError {
                    rule_index: None,
                    message: format!("phrase automaton: {e}"),
                });
                None
            }
        };
        let mut sets = Vec::new();
        let mut build = |specs: Vec<regexset::PatternSpec>,
                         skip: Option<regexset::Skip>,
                         unicode: bool,
                         owners: Option<&[usize]>,
                         errors: &mut Vec<CompileError>| {
            if specs.is_empty() {
                return;
            }
            match RegexSet::build(specs, unicode) {
                Ok(s) => sets.push(s.with_skip(skip)),
                Err(es) => errors.extend(es.into_iter().map(|e| CompileError {
                    rule_index: owners.and_then(|o| e.pattern.and_then(|p| o.get(p).copied())),
                    message: e.message,
                })),
            }
        };
        build(
            injection::regex_signals(),
            Some(injection::spaced_letters_start),
            false,
            None,
            &mut errors,
        );
        let mut pii_types = cfg.pii_types.clone();
        pii_types.sort();
        pii_types.dedup();
        build(pii::specs(&pii_types), None, false, None, &mut errors);
        if cfg.secrets {
            build(secrets::specs(), None, false, None, &mut errors);
        }
        build(
            parts.regexes,
            None,
            true,
            Some(&parts.regex_owner),
            &mut errors,
        );
        match phrases {
            Some(phrases) if errors.is_empty() => Ok(Scanner {
                inner: Arc::new(Inner {
                    phrases,
                    sets,
                    model: Model::default_model(),
                    caches: Mutex::new(Vec::new()),
                }),
            }),
            _ => Err(errors),
        }
    }

    /// Scan a whole text.
    pub fn scan(&self, text: &str) -> ScanReport {
        let findings = self.findings(text);
        let (injection, jailbreak) = self.score(text, &findings);
        ScanReport {
            findings,
            injection,
            jailbreak,
        }
    }

    /// Findings only (no scores): what [`Scanner::scan`] reports, without running the model.
    pub fn findings(&self, text: &str) -> Vec<Finding> {
        let inner = &*self.inner;
        let mut out = Vec::new();
        let folded = normalize::fold(text, 0);
        inner.phrases.scan(&folded, true, true, 0, &mut out);
        drop(folded);
        let mut caches = inner
            .caches
            .lock()
            .ok()
            .and_then(|mut c| c.pop())
            .unwrap_or_else(|| inner.sets.iter().map(RegexSet::cache).collect());
        for (set, cache) in inner.sets.iter().zip(caches.iter_mut()) {
            set.search(cache, text, 0, 0, text.len(), &mut out);
        }
        if let Ok(mut c) = inner.caches.lock()
            && c.len() < 64
        {
            c.push(caches);
        }
        encoded::scan(&inner.phrases, text, 0, 0, true, &mut out);
        sort_findings(&mut out);
        out
    }

    /// Injection and jailbreak scores of a text from its findings (as returned by [`Scanner::findings`] or
    /// gathered from a stream) plus the learned model.
    pub fn score(&self, text: &str, findings: &[Finding]) -> (Score, Score) {
        let model = self.model_prediction(text, findings);
        let injection = combine(findings, Category::Injection, Some(&model));
        let jailbreak = combine(findings, Category::Jailbreak, None);
        (injection, jailbreak)
    }

    fn model_prediction(&self, text: &str, findings: &[Finding]) -> model::Prediction {
        let m = self.inner.model;
        if text.len() <= MODEL_FULL {
            return m.predict(text, MODEL_TOP);
        }
        let mut windows = vec![0..MODEL_EDGE, text.len() - MODEL_EDGE..text.len()];
        for f in findings {
            if matches!(f.category, Category::Injection | Category::Jailbreak) {
                windows.push(
                    f.span.start.saturating_sub(MODEL_AROUND)
                        ..(f.span.end + MODEL_AROUND).min(text.len()),
                );
            }
        }
        windows
            .into_iter()
            .take(64)
            .map(|w| {
                let a = normalize::floor_char_boundary(text, w.start);
                let b = normalize::floor_char_boundary(text, w.end);
                m.predict(&text[a..b], MODEL_TOP)
            })
            .max_by(|a, b| a.probability.total_cmp(&b.probability))
            .unwrap_or(model::Prediction {
                probability: 0.0,
                top: Vec::new(),
            })
    }

    /// Incremental scanning state for one text arriving in chunks.
    pub fn stream(&self) -> StreamScan {
        StreamScan::new(self.inner.clone())
    }
}

pub(crate) fn sort_findings(v: &mut [Finding]) {
    v.sort_by(|a, b| {
        (a.span.start, a.span.end, &a.rule, a.category).cmp(&(
            b.span.start,
            b.span.end,
            &b.rule,
            b.category,
        ))
    });
}

/// How much the learned model's probability counts as evidence. Below 0.5 it says "benign" and adds nothing; above
/// it, its evidence grows to 0.95 at certainty. The model was trained on one small corpus, so on text it has never
/// seen a middling probability (an imperative "Translate this sentence") must not be enough to block: rules are
/// the general signals, the model confirms them and catches what it is sure of.
fn model_evidence(p: f32) -> f32 {
    ((p.clamp(0.0, 1.0) - 0.5) * 2.0).max(0.0) * 0.95
}

/// Noisy-or of the strongest weight of each distinct rule of `category`, and of the model's evidence.
fn combine(findings: &[Finding], category: Category, model: Option<&model::Prediction>) -> Score {
    let mut per_rule: HashMap<&str, f32> = HashMap::new();
    for f in findings.iter().filter(|f| f.category == category) {
        let w = per_rule.entry(f.rule.as_str()).or_insert(0.0);
        *w = w.max(f.weight.clamp(0.0, 1.0));
    }
    let mut keep = 1.0f32;
    let mut top: Vec<(String, f32)> = per_rule
        .into_iter()
        .map(|(r, w)| {
            keep *= 1.0 - w;
            (r.to_string(), w)
        })
        .collect();
    if let Some(m) = model {
        let evidence = model_evidence(m.probability);
        keep *= 1.0 - evidence;
        top.push(("model".to_string(), evidence));
    }
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if let Some(m) = model {
        top.extend(m.top.iter().cloned());
    }
    Score {
        value: (1.0 - keep).clamp(0.0, 1.0),
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn assert_send_sync<T: Send + Sync>() {}
    const _: () = assert_send_sync::<Scanner>();
    const _: () = assert_send_sync::<StreamScan>();
    const _: () = assert_send_sync::<ScanReport>();

    #[test]
    fn default_config_compiles() {
        let s = Scanner::compile(&DetectorConfig::default()).expect("compile");
        let r = s.scan("hello");
        assert!(r.findings.is_empty());
    }
}
