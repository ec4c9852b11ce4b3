//! Redaction: replace each finding's span with `[REDACTED:<LABEL>]`, or with a keyed hash of the value
//! (`[REDACTED:EMAIL:1a2b3c4d]`) so the same value always gets the same placeholder and can still be joined on
//! in logs without being readable. Overlapping spans merge into one placeholder.

use lifeguard_core::Finding;
use sha2::{Digest, Sha256};

use crate::normalize::{ceil_char_boundary, floor_char_boundary};

/// HMAC-SHA-256 (RFC 2104), written out to avoid another dependency for ten lines.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// Replace every finding's span in `text`. Spans out of range or inside a character are clamped to the text
/// and widened to character boundaries; overlapping or touching spans become one placeholder, labelled by the
/// finding that starts first (the longest one on a tie).
pub fn redact(text: &str, findings: &[Finding], key: Option<&[u8]>) -> String {
    let mut spans: Vec<(usize, usize, &str)> = findings
        .iter()
        .filter_map(|f| {
            let s = floor_char_boundary(text, f.span.start.min(text.len()));
            let e = ceil_char_boundary(text, f.span.end.min(text.len()));
            (s < e).then_some((s, e, f.label.as_str()))
        })
        .collect();
    spans.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out = String::with_capacity(text.len());
    let mut at = 0usize;
    let mut i = 0;
    while i < spans.len() {
        let (s, mut e, label) = spans[i];
        i += 1;
        while i < spans.len() && spans[i].0 < e {
            e = e.max(spans[i].1);
            i += 1;
        }
        let s = s.max(at);
        if s >= e {
            continue;
        }
        out.push_str(&text[at..s]);
        out.push_str("[REDACTED:");
        out.push_str(label);
        if let Some(k) = key {
            let mac = hmac_sha256(k, &text.as_bytes()[s..e]);
            out.push(':');
            for b in &mac[..4] {
                out.push_str(&format!("{b:02x}"));
            }
        }
        out.push(']');
        at = e;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeguard_core::Category;

    fn f(label: &str, span: std::ops::Range<usize>) -> Finding {
        Finding {
            category: Category::Pii,
            rule: "t".into(),
            family: "t".into(),
            label: label.into(),
            span,
            weight: 1.0,
        }
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn merges_overlaps_and_clamps() {
        let t = "mail a@b.co now";
        let out = redact(t, &[f("EMAIL", 5..11), f("X", 7..9), f("Y", 40..50)], None);
        assert_eq!(out, "mail [REDACTED:EMAIL] now");
    }

    #[test]
    fn keyed_placeholders_are_stable() {
        let t = "a@b.co and a@b.co and c@d.co";
        let fs = [f("EMAIL", 0..6), f("EMAIL", 11..17), f("EMAIL", 22..28)];
        let out = redact(t, &fs, Some(b"k"));
        let parts: Vec<&str> = out.split(" and ").collect();
        assert_eq!(parts[0], parts[1]);
        assert_ne!(parts[0], parts[2]);
        assert!(parts[0].starts_with("[REDACTED:EMAIL:") && parts[0].len() == 25);
    }

    #[test]
    fn never_splits_characters() {
        let t = "héllo";
        assert_eq!(redact(t, &[f("X", 2..3)], None), "h[REDACTED:X]llo");
    }
}
