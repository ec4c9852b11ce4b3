//! Every literal phrase of a scanner (injection and jailbreak signals, proximity-rule words, custom phrase
//! lists) in overlapping Aho-Corasick automata over folded text.
//!
//! Overlapping search reports every occurrence of every phrase, so whether a phrase matches at an offset depends
//! only on the bytes there (and one byte either side for word boundaries). That keeps the result independent of
//! the number of rules and of where a stream is cut. Proximity rules ("ignore ... previous ... instructions")
//! put their object words in the main automaton and their leads and qualifiers, which are common words, in a
//! small second automaton that only runs over the short stretch before an object.

use std::collections::HashMap;
use std::ops::Range;

use aho_corasick::{Input, MatchKind, dfa, nfa};
use lifeguard_core::{Category, Finding};

use crate::injection::{NEAR_MAX_GAP, SIGNALS, Shape, expand};
use crate::normalize::{
    Folded, ceil_char_boundary, deleet_range, floor_char_boundary, fold_phrase, leet_words,
};

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

/// The concrete automaton type is used (not `AhoCorasick`) so the search loop is monomorphised instead of
/// going through dynamic dispatch for every byte.
enum Engine {
    Dfa(dfa::DFA),
    Nfa(nfa::contiguous::NFA),
}

/// An automaton with its per-pattern owners and word-boundary flags.
struct Automaton {
    ac: Engine,
    /// Owners of pattern `i` are `owners[owner_at[i]..owner_at[i + 1]]`.
    owners: Vec<Owner>,
    owner_at: Vec<u32>,
    /// Per pattern: needs a word boundary before, after; is a built-in signal word (eligible for leetspeak).
    flags: Vec<(bool, bool, bool)>,
}

/// Collects phrases and their owners, folding and de-duplicating.
#[derive(Default)]
struct PatternTable {
    index: HashMap<String, usize>,
    patterns: Vec<String>,
    owners: Vec<Vec<Owner>>,
}

impl PatternTable {
    /// Adds a phrase; returns its folded length (0 if it folds to nothing).
    fn add(&mut self, phrase: &str, owner: Owner) -> usize {
        let folded = fold_phrase(phrase);
        if folded.is_empty() {
            return 0;
        }
        let n = folded.len();
        let id = match self.index.get(&folded) {
            Some(&id) => id,
            None => {
                self.patterns.push(folded.clone());
                self.owners.push(Vec::new());
                self.index.insert(folded, self.patterns.len() - 1);
                self.patterns.len() - 1
            }
        };
        if !self.owners[id].contains(&owner) {
            self.owners[id].push(owner);
        }
        n
    }

    fn build(self) -> Result<(Automaton, usize), aho_corasick::BuildError> {
        let max_len = self.patterns.iter().map(String::len).max().unwrap_or(0);
        let mut owners = Vec::new();
        let mut owner_at = Vec::with_capacity(self.owners.len() + 1);
        let mut flags = Vec::with_capacity(self.patterns.len());
        for (p, os) in self.patterns.iter().zip(&self.owners) {
            owner_at.push(owners.len() as u32);
            owners.extend_from_slice(os);
            let b = p.as_bytes();
            let signal = os.iter().any(|o| !matches!(o, Owner::Custom(_)));
            flags.push((is_word(b[0]), is_word(b[b.len() - 1]), signal));
        }
        owner_at.push(owners.len() as u32);
        // A full DFA is fastest to search; past ~50k phrases its memory grows too much and the contiguous NFA
        // is the better trade.
        let ac = if self.patterns.len() <= 50_000 {
            Engine::Dfa(
                dfa::Builder::new()
                    .match_kind(MatchKind::Standard)
                    .build(&self.patterns)?,
            )
        } else {
            Engine::Nfa(
                nfa::contiguous::Builder::new()
                    .match_kind(MatchKind::Standard)
                    .build(&self.patterns)?,
            )
        };
        Ok((
            Automaton {
                ac,
                owners,
                owner_at,
                flags,
            },
            max_len,
        ))
    }
}

impl Automaton {
    fn owners(&self, pid: usize) -> &[Owner] {
        let a = self.owner_at[pid] as usize;
        let b = self.owner_at[pid + 1] as usize;
        &self.owners[a..b]
    }

    /// Settled matches in `text[range]` that respect word boundaries, as (pattern, start, end). A match starting
    /// at the range start is left context unless `open_start`; one ending at the range end is unsettled unless
    /// `open_end`.
    fn matches(
        &self,
        text: &str,
        range: Range<usize>,
        open_start: bool,
        open_end: bool,
        leet: bool,
        f: impl FnMut(usize, usize, usize),
    ) {
        match &self.ac {
            Engine::Dfa(a) => self.matches_in(a, text, range, open_start, open_end, leet, f),
            Engine::Nfa(a) => self.matches_in(a, text, range, open_start, open_end, leet, f),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn matches_in<A: aho_corasick::automaton::Automaton>(
        &self,
        aut: &A,
        text: &str,
        range: Range<usize>,
        open_start: bool,
        open_end: bool,
        leet: bool,
        mut f: impl FnMut(usize, usize, usize),
    ) {
        let bytes = text.as_bytes();
        let (lo, hi) = (range.start, range.end);
        // Standard match kind and an unanchored input: the search cannot fail.
        let Ok(iter) = aut.try_find_overlapping_iter(Input::new(text).range(range)) else {
            return;
        };
        for m in iter {
            let pid = m.pattern().as_usize();
            let (s, e) = (m.start(), m.end());
            let (need_left, need_right, signal) = self.flags[pid];
            if (leet && !signal) || (s == lo && !open_start) || (e == hi && !open_end) {
                continue;
            }
            if need_left && s > 0 && is_word(bytes[s - 1]) {
                continue;
            }
            if need_right && e < bytes.len() && is_word(bytes[e]) {
                continue;
            }
            f(pid, s, e);
        }
    }
}

pub(crate) struct PhraseSet {
    main: Automaton,
    near: Automaton,
    custom: Vec<CustomPhraseRule>,
    /// Folded bytes a match still in progress may reach back, plus one byte of left context.
    pub window: usize,
    /// How far before an object its lead may start (folded bytes).
    near_reach: usize,
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
        let mut main = PatternTable::default();
        let mut near = PatternTable::default();
        let mut max_lead = 0usize;
        let mut max_obj = 0usize;
        for (i, sig) in SIGNALS.iter().enumerate() {
            let i = i as u16;
            match &sig.shape {
                Shape::Phrases(ts) => {
                    for t in *ts {
                        for p in expand(t) {
                            main.add(&p, Owner::Signal(i));
                        }
                    }
                }
                Shape::Near {
                    lead,
                    qualifier,
                    object,
                    ..
                } => {
                    for t in *lead {
                        for p in expand(t) {
                            max_lead = max_lead.max(near.add(&p, Owner::Lead(i)));
                        }
                    }
                    for t in *qualifier {
                        for p in expand(t) {
                            near.add(&p, Owner::Qual(i));
                        }
                    }
                    for t in *object {
                        for p in expand(t) {
                            max_obj = max_obj.max(main.add(&p, Owner::Object(i)));
                        }
                    }
                }
            }
        }
        let mut custom_rules = Vec::with_capacity(custom.len());
        for (ci, (rule, phrases)) in custom.into_iter().enumerate() {
            for p in &phrases {
                main.add(p, Owner::Custom(ci as u32));
            }
            custom_rules.push(rule);
        }
        let (main, max_len) = main.build()?;
        let (near, _) = near.build()?;
        let near_reach = max_lead + NEAR_MAX_GAP;
        Ok(PhraseSet {
            main,
            near,
            custom: custom_rules,
            window: max_len.max(near_reach + max_obj) + 1,
            near_reach,
        })
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
        self.collect(text, 0..text.len(), at_start, eof, false, &mut hits);
        // Leetspeak: rescan only around the words that decoding changes (elsewhere the text is the same).
        let words = leet_words(text);
        if !words.is_empty() {
            let r = self.window;
            // (window, the words inside it)
            let mut windows: Vec<(Range<usize>, Range<usize>)> = Vec::new();
            for (k, c) in words.iter().enumerate() {
                let w = c.start.saturating_sub(r)..(c.end + r).min(text.len());
                match windows.last_mut() {
                    Some((last, ws)) if w.start <= last.end => {
                        last.end = last.end.max(w.end);
                        ws.end = k + 1;
                    }
                    _ => windows.push((w, k..k + 1)),
                }
            }
            for (w, ws) in windows {
                // Window edges on char boundaries (the folded text is mostly ASCII, but not always).
                let (a, b) = (
                    floor_char_boundary(text, w.start),
                    ceil_char_boundary(text, w.end),
                );
                let decoded = deleet_range(text, a..b, &words[ws]);
                let open_start = a == 0 && at_start;
                let open_end = b == text.len() && eof;
                let first = hits.len();
                self.collect(
                    &decoded,
                    0..decoded.len(),
                    open_start,
                    open_end,
                    true,
                    &mut hits,
                );
                for h in &mut hits[first..] {
                    h.start += a;
                    h.end += a;
                }
            }
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

    fn collect(
        &self,
        text: &str,
        range: Range<usize>,
        open_start: bool,
        open_end: bool,
        leet: bool,
        hits: &mut Vec<Hit>,
    ) {
        let lo = range.start;
        let mut objects: Vec<(u16, usize, usize)> = Vec::new();
        self.main
            .matches(text, range, open_start, open_end, leet, |pid, s, e| {
                for &o in self.main.owners(pid) {
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
                        Owner::Object(r) => objects.push((r, s, e)),
                        _ => {}
                    }
                }
            });
        if objects.is_empty() {
            return;
        }
        // Pair each object with the closest lead before it (same rule, same sentence, within the gap), with a
        // qualifier in between when the rule has qualifiers. Leads and qualifiers are searched only here.
        let bytes = text.as_bytes();
        let mut parts: Vec<(Owner, usize, usize)> = Vec::new();
        let mut searched: Option<Range<usize>> = None;
        for (r, so, eo) in objects {
            let Shape::Near {
                qualifier, max_gap, ..
            } = &SIGNALS[r as usize].shape
            else {
                continue;
            };
            let from = so.saturating_sub(self.near_reach).max(lo);
            // Consecutive objects share one search of the stretch before them.
            if searched
                .as_ref()
                .is_none_or(|s| s.start != from || s.end < so)
            {
                parts.clear();
                let open = from == lo && open_start;
                self.near
                    .matches(text, from..so, open, true, leet, |pid, s, e| {
                        for &o in self.near.owners(pid) {
                            parts.push((o, s, e));
                        }
                    });
                searched = Some(from..so);
            }
            let mut best: Option<usize> = None;
            for &(l, sl, el) in &parts {
                if l != Owner::Lead(r) || el > so || so - el > *max_gap {
                    continue;
                }
                if best.is_some_and(|b| b >= sl) {
                    continue;
                }
                if bytes[el..so]
                    .iter()
                    .any(|b| matches!(b, b'.' | b'!' | b'?' | b';'))
                {
                    continue;
                }
                let qualified = qualifier.is_empty()
                    || parts
                        .iter()
                        .any(|&(q, sq, eq)| q == Owner::Qual(r) && sq >= el && eq <= so);
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
