//! Operator-defined rules: phrase lists (folded and matched like the built-in signals, on word boundaries) and
//! regexes (matched on the original text with Unicode semantics). Both report category `Custom`, rule
//! `custom.<id>` and label `<ID>`.

use lifeguard_core::Category;
use serde::{Deserialize, Serialize};

use crate::CompileError;
use crate::normalize::fold_phrase;
use crate::phrases::CustomPhraseRule;
use crate::regexset::PatternSpec;

/// One custom rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomRule {
    /// Lower-case id (`[a-z0-9_-]`, starting with a letter); gives rule `custom.<id>` and label `<ID>`.
    pub id: String,
    #[serde(flatten)]
    pub kind: CustomKind,
}

/// How a custom rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomKind {
    /// Case-insensitive phrases, matched on folded text at word boundaries.
    Phrases(Vec<String>),
    /// A regular expression (Rust `regex` syntax) matched on the original text.
    Regex(String),
}

impl CustomRule {
    pub fn phrases(id: impl Into<String>, phrases: &[&str]) -> CustomRule {
        CustomRule {
            id: id.into(),
            kind: CustomKind::Phrases(phrases.iter().map(|p| (*p).to_string()).collect()),
        }
    }

    pub fn regex(id: impl Into<String>, regex: impl Into<String>) -> CustomRule {
        CustomRule {
            id: id.into(),
            kind: CustomKind::Regex(regex.into()),
        }
    }
}

pub(crate) struct Split {
    pub phrases: Vec<(CustomPhraseRule, Vec<String>)>,
    pub regexes: Vec<PatternSpec>,
    /// For each regex spec, the index of its rule in the config.
    pub regex_owner: Vec<usize>,
}

fn valid_id(id: &str) -> bool {
    id.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && id.len() <= 64
}

/// Check custom rules and sort them into phrase lists and regex specs; problems go to `errors`.
pub(crate) fn split(rules: &[CustomRule], errors: &mut Vec<CompileError>) -> Split {
    let mut out = Split {
        phrases: Vec::new(),
        regexes: Vec::new(),
        regex_owner: Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        let err = |message: String| CompileError {
            rule_index: Some(i),
            message,
        };
        if !valid_id(&r.id) {
            errors.push(err(format!(
                "id `{}` must be 1-64 chars of a-z, 0-9, `_` or `-`, starting with a letter",
                r.id
            )));
            continue;
        }
        if !seen.insert(r.id.clone()) {
            errors.push(err(format!("duplicate custom rule id `{}`", r.id)));
            continue;
        }
        let meta = CustomPhraseRule {
            rule: format!("custom.{}", r.id),
            family: r.id.clone(),
            label: r.id.to_ascii_uppercase(),
        };
        match &r.kind {
            CustomKind::Phrases(list) => {
                if list.is_empty() {
                    errors.push(err("phrase list is empty".to_string()));
                    continue;
                }
                let mut bad = false;
                for (j, p) in list.iter().enumerate() {
                    if fold_phrase(p).is_empty() {
                        errors.push(err(format!(
                            "phrase {j} is empty once folded (only spaces or invisible characters)"
                        )));
                        bad = true;
                    }
                }
                if !bad {
                    out.phrases.push((meta, list.clone()));
                }
            }
            CustomKind::Regex(re) => {
                if re.is_empty() {
                    errors.push(err("regex is empty".to_string()));
                    continue;
                }
                out.regex_owner.push(i);
                out.regexes.push(PatternSpec {
                    rule: meta.rule,
                    family: meta.family,
                    label: meta.label,
                    category: Category::Custom,
                    regex: re.clone(),
                    group: 0,
                    validate: Some(non_empty),
                    generic: false,
                    try_alternatives: false,
                    weight: 1.0,
                });
            }
        }
    }
    out
}

fn non_empty(_: &str, span: std::ops::Range<usize>) -> Option<std::ops::Range<usize>> {
    (!span.is_empty()).then_some(span)
}
