//! Many structured patterns in one leftmost-first multi-pattern regex, plus a lazy DFA of the same patterns used
//! only by the stream scanner to tell whether a match could still start (or grow) at a given offset.
//!
//! The search is written once for whole texts and stream windows: a match is processed only when no later byte
//! can change it (`live_from`), so a stream cut anywhere finds the same matches as the whole text.

use std::ops::Range;

use lifeguard_core::{Category, Finding};
use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::meta::{self, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, PatternID};

use crate::normalize::{ceil_char_boundary, floor_char_boundary};

/// Bytes before a match a validator may look at (kept in every stream window).
pub(crate) const PRE_CONTEXT: usize = 16;

/// Decides whether a candidate is real. Gets the whole haystack and the candidate span (the capture group when
/// the pattern has one); may narrow the span. Must look at no more than [`PRE_CONTEXT`] bytes before the span
/// and nothing after it.
pub(crate) type Validator = fn(&str, Range<usize>) -> Option<Range<usize>>;

/// Where a match of a set could start: the smallest offset `>= from` at which some pattern of the set might
/// match, or the haystack length. Must never skip a possible match start, including near the end of a stream
/// window (where the bytes that would decide are not there yet).
pub(crate) type Skip = fn(&[u8], usize) -> usize;

pub(crate) struct PatternSpec {
    pub rule: String,
    pub family: String,
    pub label: String,
    pub category: Category,
    pub regex: String,
    /// Capture group holding the sensitive part (0 = whole match).
    pub group: usize,
    pub validate: Option<Validator>,
    /// A catch-all pattern (e.g. `password = ...`): a specific pattern matching inside it is reported instead.
    pub generic: bool,
    /// On rejection, try the other patterns anchored at the same start (cheap for small sets such as PII).
    pub try_alternatives: bool,
    pub weight: f32,
}

pub(crate) struct RegexSet {
    re: Regex,
    live: DFA,
    specs: Vec<PatternSpec>,
    any_group: bool,
    skip: Option<Skip>,
}

/// Per-caller mutable state of a [`RegexSet`] (kept by a stream so searches don't go through a shared pool).
pub(crate) struct SetCache {
    re: meta::Cache,
    live: DfaCache,
    caps: Captures,
}

#[derive(Debug)]
pub(crate) struct BuildError {
    /// Index into the specs of the pattern at fault, when known.
    pub pattern: Option<usize>,
    pub message: String,
}

impl RegexSet {
    /// `unicode`: built-in patterns are ASCII-only (faster, and the lazy DFA then never gives up on non-ASCII
    /// text); custom patterns keep Unicode semantics.
    pub fn build(specs: Vec<PatternSpec>, unicode: bool) -> Result<RegexSet, Vec<BuildError>> {
        let syn = syntax::Config::new().unicode(unicode).utf8(unicode);
        let mut errors = Vec::new();
        // Check every pattern on its own first so each error names its pattern.
        for (i, s) in specs.iter().enumerate() {
            if let Err(e) = Regex::builder().syntax(syn).build(&s.regex) {
                errors.push(BuildError {
                    pattern: Some(i),
                    message: e.to_string(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let pats: Vec<&str> = specs.iter().map(|s| s.regex.as_str()).collect();
        let any_group = specs
            .iter()
            .any(|s| s.group > 0 || s.try_alternatives || s.generic);
        let re = Regex::builder()
            .syntax(syn)
            .configure(
                Regex::config()
                    .match_kind(MatchKind::LeftmostFirst)
                    .nfa_size_limit(Some(64 << 20)),
            )
            .build_many(&pats)
            .map_err(|e| {
                vec![BuildError {
                    pattern: None,
                    message: e.to_string(),
                }]
            })?;
        let live = DFA::builder()
            .syntax(syn)
            .configure(
                DFA::config()
                    .match_kind(MatchKind::LeftmostFirst)
                    .unicode_word_boundary(true)
                    .cache_capacity(4 << 20),
            )
            .thompson(regex_automata::nfa::thompson::Config::new().nfa_size_limit(Some(64 << 20)))
            .build_many(&pats)
            .map_err(|e| {
                vec![BuildError {
                    pattern: None,
                    message: e.to_string(),
                }]
            })?;
        Ok(RegexSet {
            re,
            live,
            specs,
            any_group,
            skip: None,
        })
    }

    /// A cheap byte scan that finds where matches could start, so the regex runs only from there.
    pub fn with_skip(mut self, skip: Option<Skip>) -> RegexSet {
        self.skip = skip;
        self
    }

    pub fn cache(&self) -> SetCache {
        SetCache {
            re: self.re.create_cache(),
            live: self.live.create_cache(),
            caps: self.re.create_captures(),
        }
    }

    /// Smallest offset `>= from` where a match could still start or change given more input after `hay`.
    /// Offsets before it are settled.
    pub fn live_from(&self, cache: &mut SetCache, hay: &str, from: usize) -> usize {
        let bytes = hay.as_bytes();
        let mut p = from;
        while p < bytes.len() {
            if self.alive_at(&mut cache.live, bytes, p) {
                return p;
            }
            p += 1;
        }
        bytes.len()
    }

    fn alive_at(&self, cache: &mut DfaCache, hay: &[u8], p: usize) -> bool {
        let input = Input::new(hay).range(p..).anchored(Anchored::Yes);
        let Ok(mut sid) = self.live.start_state_forward(cache, &input) else {
            return true;
        };
        if sid.is_dead() {
            return false;
        }
        for &b in &hay[p..] {
            match self.live.next_state(cache, sid, b) {
                Ok(s) => sid = s,
                // Giving up means "don't know": stay conservative and hold the bytes.
                Err(_) => return true,
            }
            if sid.is_tagged() {
                if sid.is_dead() {
                    return false;
                }
                if sid.is_quit() {
                    return true;
                }
            }
        }
        true
    }

    /// Find every settled match in `hay[from..]` whose start is below `settled` (a relative offset: `hay.len()`
    /// at end of input). Spans in findings are `base + relative`. Returns where the next search must resume.
    pub fn search(
        &self,
        cache: &mut SetCache,
        hay: &str,
        base: usize,
        from: usize,
        settled: usize,
        out: &mut Vec<Finding>,
    ) -> usize {
        let mut at = from;
        while at < hay.len() {
            // No match starts before `start`, so searching from there finds the same leftmost match.
            let start = self
                .skip
                .map_or(at, |f| f(hay.as_bytes(), at).clamp(at, hay.len()));
            let input = Input::new(hay).range(start..);
            let Some(m) = self.re.search_with(&mut cache.re, &input) else {
                return settled.max(at);
            };
            if m.start() >= settled {
                return settled.max(at);
            }
            match self.process(cache, hay, base, m.pattern(), m.range(), settled, out) {
                Some(next) => at = next,
                // A generic match whose inner token could still grow: redo it with more input.
                None => return m.start(),
            }
        }
        at.max(settled.min(hay.len()))
    }

    /// Validate one match (and its fall-backs) and push what is real. Returns where the search goes on, or
    /// `None` (nothing pushed) when the outcome depends on bytes not seen yet.
    #[allow(clippy::too_many_arguments)]
    fn process(
        &self,
        cache: &mut SetCache,
        hay: &str,
        base: usize,
        pid: PatternID,
        whole: Range<usize>,
        settled: usize,
        out: &mut Vec<Finding>,
    ) -> Option<usize> {
        let spec = &self.specs[pid.as_usize()];
        let next = whole.end.max(whole.start + 1);
        let accepted = self.accept(cache, hay, pid, whole.clone());
        if spec.generic {
            // A provider-specific token starting inside a generic assignment gets its own rule (it may run past
            // the generic match, whose value stops at the first unusual byte).
            let inner_from = accepted
                .as_ref()
                .map_or(whole.start + 1, |r| r.start)
                .max(whole.start + 1);
            let mut inner = Vec::new();
            let mut at = inner_from;
            let mut end = next;
            while at < whole.end {
                let input = Input::new(hay).range(at..);
                let Some(m) = self.re.search_with(&mut cache.re, &input) else {
                    break;
                };
                if m.start() >= whole.end {
                    break;
                }
                if m.start() >= settled {
                    return None;
                }
                let p = m.pattern();
                if self.specs[p.as_usize()].generic {
                    at = m.start() + 1;
                    continue;
                }
                if let Some(span) = self.accept(cache, hay, p, m.range()) {
                    inner.push(self.finding(p, base, span));
                }
                end = end.max(m.end());
                at = m.end().max(m.start() + 1);
            }
            if !inner.is_empty() {
                out.extend(inner);
                return Some(end);
            }
        }
        if let Some(span) = accepted {
            out.push(self.finding(pid, base, span));
            return Some(next);
        }
        if spec.try_alternatives {
            for (i, s) in self.specs.iter().enumerate() {
                if i == pid.as_usize() || s.generic {
                    continue;
                }
                let alt = PatternID::new_unchecked(i);
                let input = Input::new(hay)
                    .range(whole.start..)
                    .anchored(Anchored::Pattern(alt));
                if let Some(m2) = self.re.search_with(&mut cache.re, &input)
                    && let Some(span) = self.accept(cache, hay, alt, m2.range())
                {
                    out.push(self.finding(alt, base, span));
                    return Some(next.max(m2.end()));
                }
            }
        }
        Some(next)
    }

    /// Capture group extraction and validation for one pattern's match.
    fn accept(
        &self,
        cache: &mut SetCache,
        hay: &str,
        pid: PatternID,
        whole: Range<usize>,
    ) -> Option<Range<usize>> {
        let spec = &self.specs[pid.as_usize()];
        let mut span = whole.clone();
        if spec.group > 0 && self.any_group {
            let input = Input::new(hay)
                .range(whole.clone())
                .anchored(Anchored::Pattern(pid));
            self.re
                .search_captures_with(&mut cache.re, &input, &mut cache.caps);
            span = cache.caps.get_group(spec.group)?.range();
        }
        // Patterns are ASCII-only or UTF-8 aware, but never hand out a span that splits a character.
        span = floor_char_boundary(hay, span.start)..ceil_char_boundary(hay, span.end);
        if span.is_empty() {
            return None;
        }
        match spec.validate {
            Some(v) => v(hay, span),
            None => Some(span),
        }
    }

    fn finding(&self, pid: PatternID, base: usize, span: Range<usize>) -> Finding {
        let s = &self.specs[pid.as_usize()];
        Finding {
            category: s.category,
            rule: s.rule.clone(),
            family: s.family.clone(),
            label: s.label.clone(),
            span: base + span.start..base + span.end,
            weight: s.weight,
        }
    }
}
