//! Payloads hidden in base64 or hex: runs of the encoding's alphabet are decoded and, when they decode to text,
//! rescanned for injection and jailbreak signals. A hit is reported on the encoded run in the original text.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use lifeguard_core::{Category, Finding};

use crate::injection::{ENCODED_FAMILY, ENCODED_RULE, ENCODED_WEIGHT};
use crate::normalize::fold;
use crate::phrases::{PhraseSet, label_for};

/// Shortest run worth decoding (16 base64 chars = 12 bytes of text).
const MIN_RUN: usize = 16;
/// Longest run decoded. Longer runs (images, archives) are skipped, whole or streamed alike.
pub(crate) const MAX_RUN: usize = 4096;

const ALPHABET: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_');
        b += 1;
    }
    t
};

#[inline]
fn is_alphabet(b: u8) -> bool {
    ALPHABET[b as usize]
}

/// Where a stream's encoded-run scan stands: the start of the run still open at the end of the data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunState {
    /// Absolute offset of the first byte not yet settled.
    pub from: usize,
    /// The open run is already too long to decode: skip the rest of it.
    pub skipping: bool,
}

/// Scan `text[rel_from..]` (absolute offset of `text` is `base`) for settled runs; returns the new state. With
/// `eof`, a run touching the end is settled.
pub(crate) fn scan_stream(
    phrases: &PhraseSet,
    text: &str,
    base: usize,
    state: RunState,
    eof: bool,
    out: &mut Vec<Finding>,
) -> RunState {
    let bytes = text.as_bytes();
    let mut i = state.from.saturating_sub(base).min(bytes.len());
    if state.skipping {
        while i < bytes.len() && is_alphabet(bytes[i]) {
            i += 1;
        }
        if i == bytes.len() && !eof {
            return RunState {
                from: base + i,
                skipping: true,
            };
        }
    }
    while i < bytes.len() {
        if !is_alphabet(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_alphabet(bytes[i]) && i - start <= MAX_RUN {
            i += 1;
        }
        if i - start > MAX_RUN {
            // Too long to be a hidden instruction: skip to its end, now or in later chunks.
            while i < bytes.len() && is_alphabet(bytes[i]) {
                i += 1;
            }
            if i == bytes.len() && !eof {
                return RunState {
                    from: base + i,
                    skipping: true,
                };
            }
            continue;
        }
        if i == bytes.len() && !eof {
            return RunState {
                from: base + start,
                skipping: false,
            };
        }
        if i - start >= MIN_RUN {
            check_run(phrases, &text[start..i], base + start, out);
        }
    }
    RunState {
        from: base + bytes.len(),
        skipping: false,
    }
}

/// Whole-text form of [`scan_stream`].
pub(crate) fn scan(
    phrases: &PhraseSet,
    text: &str,
    base: usize,
    from: usize,
    eof: bool,
    out: &mut Vec<Finding>,
) {
    scan_stream(
        phrases,
        text,
        base,
        RunState {
            from,
            skipping: false,
        },
        eof,
        out,
    );
}

fn decode(run: &str) -> Option<String> {
    let bytes = if run.len().is_multiple_of(2) && run.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..run.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&run[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        let engines = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD];
        engines.iter().find_map(|e| e.decode(run).ok())?
    };
    let text = String::from_utf8(bytes).ok()?;
    // Decoded natural language: printable, with spaces between words.
    let printable = text
        .chars()
        .filter(|c| !c.is_control() || c.is_whitespace())
        .count();
    let total = text.chars().count();
    if total == 0 || printable * 10 < total * 9 || !text.contains(' ') {
        return None;
    }
    Some(text)
}

fn check_run(phrases: &PhraseSet, run: &str, abs_start: usize, out: &mut Vec<Finding>) {
    let Some(decoded) = decode(run) else { return };
    let folded = fold(&decoded, 0);
    let mut inner = Vec::new();
    phrases.scan(&folded, true, true, 0, &mut inner);
    let span = abs_start..abs_start + run.len();
    let mut any = false;
    let mut seen: Vec<String> = Vec::new();
    for f in inner {
        if !matches!(f.category, Category::Injection | Category::Jailbreak)
            || seen.contains(&f.rule)
        {
            continue;
        }
        seen.push(f.rule.clone());
        any = true;
        out.push(Finding {
            span: span.clone(),
            ..f
        });
    }
    if any {
        out.push(Finding {
            category: Category::Injection,
            rule: ENCODED_RULE.to_string(),
            family: ENCODED_FAMILY.to_string(),
            label: label_for(Category::Injection).to_string(),
            span,
            weight: ENCODED_WEIGHT,
        });
    }
}
