//! Incremental scanning of a text that arrives in chunks (an SSE response, a streamed request body).
//!
//! Each detector keeps the offset before which everything is settled and the stream keeps only the bytes from
//! the earliest of those offsets. A push folds and searches that tail plus the new chunk, never the history:
//! - phrases: a match is settled once one folded byte follows it; the tail is the longest phrase (or the
//!   longest lead-gap-object span of a proximity rule) plus one byte of context;
//! - regex sets: a lazy DFA of the same patterns says from which offset a match could still start or grow
//!   (usually the start of the last word), so only that is held;
//! - encoded runs: the run still open at the end.
//!
//! Matches are the same as a whole-text scan as long as none is longer than [`STREAM_CAP`] bytes: a tail that
//! grows past the cap (a private key block with no footer, a run of thousands of spaces inside a phrase) is cut
//! and what starts before the cut is no longer looked for.

use std::ops::Range;
use std::sync::Arc;

use lifeguard_core::Finding;

use crate::encoded::{self, RunState};
use crate::normalize::{ceil_char_boundary, floor_char_boundary, fold};
use crate::regexset::{PRE_CONTEXT, SetCache};
use crate::{Inner, sort_findings};

/// Most bytes a stream holds back (and the longest match it promises to find across chunks).
pub const STREAM_CAP: usize = 8 * 1024;

/// What one push or finish produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamStep {
    /// Findings settled by this step, spans in offsets of the whole stream, sorted.
    pub findings: Vec<Finding>,
    /// Bytes of the stream (from its start) that no later chunk can make part of a match: safe to release.
    pub safe_len: usize,
}

struct SetState {
    resume: usize,
    cache: SetCache,
}

/// Scanning state for one streamed text. Created by [`crate::Scanner::stream`]; owns a handle on the scanner.
pub struct StreamScan {
    inner: Arc<Inner>,
    /// Bytes of the stream from `base` on.
    buf: String,
    base: usize,
    /// Phrase window start (absolute, a char boundary) and whether it is the start of the stream.
    ph_from: usize,
    /// Phrase findings whose last folded byte comes from at or after this offset are not yet reported.
    ph_new_from: usize,
    /// Recently reported phrase findings (rule, span), to drop repeats where windows overlap.
    ph_recent: Vec<(String, Range<usize>)>,
    sets: Vec<SetState>,
    enc: RunState,
    finished: bool,
}

impl std::fmt::Debug for StreamScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamScan")
            .field("base", &self.base)
            .field("held", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl StreamScan {
    pub(crate) fn new(inner: Arc<Inner>) -> StreamScan {
        let sets = inner
            .sets
            .iter()
            .map(|s| SetState {
                resume: 0,
                cache: s.cache(),
            })
            .collect();
        StreamScan {
            inner,
            buf: String::new(),
            base: 0,
            ph_from: 0,
            ph_new_from: 0,
            ph_recent: Vec::new(),
            sets,
            enc: RunState {
                from: 0,
                skipping: false,
            },
            finished: false,
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> usize {
        self.base + self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feed the next chunk. Returns the findings completed so far (spans in offsets of the whole stream) and
    /// how many bytes of the stream so far can be released downstream.
    pub fn push(&mut self, chunk: &str) -> StreamStep {
        if self.finished {
            // A finished stream takes no more input; report nothing new rather than panic.
            return StreamStep {
                findings: Vec::new(),
                safe_len: self.len(),
            };
        }
        self.buf.push_str(chunk);
        self.step(false)
    }

    /// End of stream: everything left is settled and safe.
    pub fn finish(&mut self) -> StreamStep {
        if self.finished {
            return StreamStep {
                findings: Vec::new(),
                safe_len: self.len(),
            };
        }
        let step = self.step(true);
        self.finished = true;
        step
    }

    fn step(&mut self, eof: bool) -> StreamStep {
        let mut out = Vec::new();
        let total = self.len();
        let phrase_safe = self.step_phrases(eof, &mut out);
        let inner = &*self.inner;
        let mut safe = phrase_safe;
        for (set, st) in inner.sets.iter().zip(self.sets.iter_mut()) {
            let from = st.resume.saturating_sub(self.base).min(self.buf.len());
            let settled = if eof {
                self.buf.len()
            } else {
                set.live_from(&mut st.cache, &self.buf, from)
            };
            let next = set.search(&mut st.cache, &self.buf, self.base, from, settled, &mut out);
            st.resume = self.base + next;
            safe = safe.min(st.resume);
        }
        self.enc = encoded::scan_stream(
            &inner.phrases,
            &self.buf,
            self.base,
            self.enc,
            eof,
            &mut out,
        );
        safe = safe.min(self.enc.from);
        if eof {
            safe = total;
        }
        self.trim(total);
        sort_findings(&mut out);
        StreamStep {
            findings: out,
            safe_len: safe.min(total),
        }
    }

    /// Phrase pass over the window; returns the earliest offset an unreported phrase match could start at.
    fn step_phrases(&mut self, eof: bool, out: &mut Vec<Finding>) -> usize {
        let total = self.len();
        let rel = self.ph_from.saturating_sub(self.base).min(self.buf.len());
        let window = &self.buf[rel..];
        let folded = fold(window, self.ph_from);
        let len = folded.text.len();
        let new_from = folded.first_at_or_after(self.ph_new_from);
        let mut found = Vec::new();
        self.inner
            .phrases
            .scan(&folded, self.ph_from == 0, eof, new_from, &mut found);
        for f in found {
            if self
                .ph_recent
                .iter()
                .any(|(r, s)| *r == f.rule && *s == f.span)
            {
                continue;
            }
            self.ph_recent.push((f.rule.clone(), f.span.clone()));
            out.push(f);
        }
        if eof || len == 0 {
            return total;
        }
        // Matches touching the last folded byte are unsettled; all others were just reported.
        self.ph_new_from = folded.original_start(len - 1, total);
        let w = self.inner.phrases.window;
        let keep_from = len.saturating_sub(w);
        let mut next_from = folded.original_start(keep_from, total);
        if total - next_from > STREAM_CAP {
            let cut = total - STREAM_CAP;
            next_from = ceil_char_boundary(&self.buf, cut - self.base) + self.base;
        }
        let safe = folded.original_start(len.saturating_sub(w - 1), total);
        if next_from > self.ph_from {
            self.ph_from = next_from;
        }
        let from = self.ph_from;
        self.ph_recent.retain(|(_, s)| s.end > from);
        safe
    }

    /// Drop bytes no detector needs any more.
    fn trim(&mut self, total: usize) {
        let mut keep = self.ph_from.min(self.enc.from);
        for st in &self.sets {
            keep = keep.min(st.resume.saturating_sub(PRE_CONTEXT + 4));
        }
        // Never hold more than the cap (plus the context a cut needs).
        keep = keep.max(total.saturating_sub(STREAM_CAP + PRE_CONTEXT + 4));
        if keep <= self.base {
            return;
        }
        let cut = floor_char_boundary(&self.buf, keep - self.base);
        if cut == 0 {
            return;
        }
        self.buf.drain(..cut);
        self.base += cut;
        // Cut state that pointed before the kept bytes (only after hitting the cap).
        for st in &mut self.sets {
            st.resume = st.resume.max(self.base);
        }
        self.ph_from = self.ph_from.max(self.base);
        if self.enc.from < self.base {
            self.enc = RunState {
                from: self.base,
                skipping: true,
            };
        }
    }
}
