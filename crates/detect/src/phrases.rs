//! Every literal phrase of a scanner (injection and jailbreak signals, proximity-rule words, custom phrase
//! lists) in one overlapping Aho-Corasick automaton over folded text.
//!
//! Overlapping search reports every occurrence of every phrase, so whether a phrase matches at an offset depends
//! only on the bytes there (and one byte either side for word boundaries). That keeps the result independent of
//! the number of rules and of where a stream is cut.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use lifeguard_core::{Category, Finding};

use crate::injection::{SIGNALS, Shape, expand};
use crate::normalize::{Folded, fold_phrase};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A literal phrase of `SIGNALS[i]`.
    Signal(u16),
    /// Lead / qualifier / object word of the proximity rule `SIGNALS[i]`.
    Lead(u16),
    Qual(u16),
    Object(u16),
    /// A phrase of custom rule `i`.
    Custom(u32),
}

/// What a custom phrase list reports.
pub(crate) struct CustomPhraseRule {
    pub rule: String,
    pub family: String,
    pub label: String,
}

pub(crate) struct PhraseSet {
    ac: AhoCorasick,
    /// Owners of pattern `i` are `owners[owner_at[i]..owner_at[i + 1]]`.
    owners: Vec<Owner>,
    owner_at: Vec<u32>,
    /// Per pattern: (needs a word boundary before, after, is a signal phrase (eligible for the leet pass)).
    flags: Vec<(bool, bool, bool)>,
    custom: Vec<CustomPhraseRule>,
    /// Folded bytes a match still in progress may reach back, plus one byte of left context.
    pub window: usize,
}

/// A phrase match in folded coordinates.
#[derive(Debug, Clone, Copy)]
struct Hit {
    owner: Owner,
    start: usize,
    end: usize,
}

#[inline]
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

impl PhraseSet {
    /// `custom`: (rule, phrases) per custom phrase list, in config order.
    pub fn build(
        custom: Vec<(CustomPhraseRule, Vec<String>)>,
    ) -> Result<PhraseSet, aho_corasick::BuildError> {
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut per_pattern: Vec<Vec<Owner>> = Vec::new();
        let mut patterns: Vec<String> = Vec::new();
        let mut add = |phrase: &str, owner: Owner| {
            let folded = fold_phrase(phrase);
            if folded.is_empty() {
                return;
            }
            let id = *index.entry(folded.clone()).or_insert_with(|| {
                patterns.push(folded);
                per_pattern.push(Vec::new());
                patterns.len() - 1
            });
            if !per_pattern[id].contains(&owner) {
                per_pattern[id].push(owner);
            }
        };
        let mut max_lead = 0usize;
        let mut max_obj = 0usize;
        for (i, sig) in SIGNALS.iter().enumerate() {
            let i = i as u16;
            match &sig.shape {
                Shape::Phrases(ts) => {
                    for t in *ts {
                        for p in expand(t) {
                            add(&p, Owner::Signal(i));
                        }
                    }
                }
                Shape::Near {
                    lead,
                    qualifier,
                    object,
                    ..
                } => {
                    for (ts, role) in [
                        (*lead, Owner::Lead(i)),
                        (*qualifier, Owner::Qual(i)),
                        (*object, Owner::Object(i)),
                    ] {
                        for t in ts {
                            for p in expand(t) {
                                let n = fold_phrase(&p).len();
                                match role {
                                    Owner::Lead(_) => max_lead = max_lead.max(n),
                                    Owner::Object(_) => max_obj = max_obj.max(n),
                                    _ => {}
                                }
                                add(&p, role);
                            }
                        }
                    }
                }
            }
        }
        let mut custom_rules = Vec::with_capacity(custom.len());
        for (ci, (rule, phrases)) in custom.into_iter().enumerate() {
            for p in &phrases {
                add(p, Owner::Custom(ci as u32));
            }
            custom_rules.push(rule);
        }
        let max_len = patterns.iter().map(String::len).max().unwrap_or(0);
        let near_span = max_lead + crate::injection::NEAR_MAX_GAP + max_obj;
        let mut owners = Vec::new();
        let mut owner_at = Vec::with_capacity(per_pattern.len() + 1);
        let mut flags = Vec::with_capacity(patterns.len());
        for (p, os) in patterns.iter().zip(&per_pattern) {
            owner_at.push(owners.len() as u32);
            owners.extend_from_slice(os);
            let b = p.as_bytes();
            let signal = os.iter().any(|o| !matches!(o, Owner::Custom(_)));
            flags.push((is_word(b[0]), is_word(b[b.len() - 1]), signal));
        }
        owner_at.push(owners.len() as u32);
        // A full DFA is fastest to search; past ~50k phrases its memory grows too much and the contiguous NFA
        // is the better trade.
        let kind = if patterns.len() <= 50_000 {
            Some(AhoCorasickKind::DFA)
        } else {
            None
        };
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(kind)
            .build(&patterns)?;
        Ok(PhraseSet {
            ac,
            owners,
            owner_at,
            flags,
            custom: custom_rules,
            window: max_len.max(near_span) + 1,
        })
    }

    fn owners(&self, pid: usize) -> &[Owner] {
        let a = self.owner_at[pid] as usize;
        let b = self.owner_at[pid + 1] as usize;
        &self.owners[a..b]
    }

    /// Findings in a folded window whose last folded byte is at or after `new_from` (earlier ones were reported
    /// by a previous window). `at_start`: folded byte 0 is the start of the whole text (otherwise it is left
    /// context only). `eof`: nothing follows the window (otherwise a match touching its end is unsettled).
    pub fn scan(
        &self,
        folded: &Folded<'_>,
        at_start: bool,
        eof: bool,
        new_from: usize,
        out: &mut Vec<Finding>,
    ) {
        let text = folded.text.as_ref();
        let mut hits = Vec::new();
        self.collect(text, at_start, eof, false, &mut hits);
        // Leetspeak pass: only signal phrases, only when some word mixes letters and leet symbols.
        if let Some(leet) = crate::normalize::deleet(text) {
            self.collect(&leet, at_start, eof, true, &mut hits);
        }
        let start_len = out.len();
        for h in &hits {
            if h.end == 0 || h.end - 1 < new_from {
                continue;
            }
            let f = match h.owner {
                Owner::Signal(i) => {
                    let s = &SIGNALS[i as usize];
                    Finding {
                        category: s.category,
                        rule: s.rule.to_string(),
                        family: s.family.to_string(),
                        label: label_for(s.category).to_string(),
                        span: folded.original(h.start..h.end),
                        weight: s.weight,
                    }
                }
                Owner::Custom(i) => {
                    let c = &self.custom[i as usize];
                    Finding {
                        category: Category::Custom,
                        rule: c.rule.clone(),
                        family: c.family.clone(),
                        label: c.label.clone(),
                        span: folded.original(h.start..h.end),
                        weight: 1.0,
                    }
                }
                _ => continue,
            };
            if !out[start_len..]
                .iter()
                .any(|g| g.rule == f.rule && g.span == f.span)
            {
                out.push(f);
            }
        }
    }

    fn collect(&self, text: &str, at_start: bool, eof: bool, leet: bool, hits: &mut Vec<Hit>) {
        let bytes = text.as_bytes();
        let len = bytes.len();
        // Proximity-rule words, per rule: (role, start, end).
        let mut parts: Vec<(Owner, usize, usize)> = Vec::new();
        for m in self.ac.find_overlapping_iter(text) {
            let pid = m.pattern().as_usize();
            let (s, e) = (m.start(), m.end());
            let (need_left, need_right, signal) = self.flags[pid];
            if leet && !signal {
                continue;
            }
            if s == 0 && !at_start {
                continue;
            }
            if e == len && !eof {
                // The next byte decides the word boundary (and maybe a longer phrase): wait for it.
                continue;
            }
            if need_left && s > 0 && is_word(bytes[s - 1]) {
                continue;
            }
            if need_right && e < len && is_word(bytes[e]) {
                continue;
            }
            for &o in self.owners(pid) {
                match o {
                    Owner::Signal(_) => hits.push(Hit {
                        owner: o,
                        start: s,
                        end: e,
                    }),
                    Owner::Custom(_) if !leet => hits.push(Hit {
                        owner: o,
                        start: s,
                        end: e,
                    }),
                    Owner::Custom(_) => {}
                    _ => parts.push((o, s, e)),
                }
            }
        }
        if parts.is_empty() {
            return;
        }
        // Pair every object with the closest lead before it (same rule, same sentence, within the gap), with a
        // qualifier in between when the rule has qualifiers. `parts` is in order of match end (the order of an
        // overlapping search), so the candidates for an object are a short run just before it.
        for (k, &(o, so, eo)) in parts.iter().enumerate() {
            let Owner::Object(r) = o else { continue };
            let Shape::Near {
                qualifier, max_gap, ..
            } = &SIGNALS[r as usize].shape
            else {
                continue;
            };
            let near: Vec<&(Owner, usize, usize)> = parts[..k]
                .iter()
                .rev()
                .take_while(|p| p.2 + max_gap >= so)
                .collect();
            let mut best: Option<usize> = None;
            for &&(l, sl, el) in &near {
                if l != Owner::Lead(r) || el > so || best.is_some_and(|b| b >= sl) {
                    continue;
                }
                if bytes[el..so]
                    .iter()
                    .any(|b| matches!(b, b'.' | b'!' | b'?' | b';'))
                {
                    continue;
                }
                let qualified = qualifier.is_empty()
                    || near
                        .iter()
                        .any(|&&(q, sq, eq)| q == Owner::Qual(r) && sq >= el && eq <= so);
                if qualified {
                    best = Some(sl);
                }
            }
            if let Some(sl) = best {
                hits.push(Hit {
                    owner: Owner::Signal(r),
                    start: sl,
                    end: eo,
                });
            }
        }
    }
}

pub(crate) fn label_for(c: Category) -> &'static str {
    match c {
        Category::Injection => "INJECTION",
        Category::Jailbreak => "JAILBREAK",
        Category::Secrets => "SECRET",
        Category::Pii => "PII",
        Category::Custom => "CUSTOM",
        Category::ToolCalls => "TOOL_CALL",
    }
}
