//! Personal data: e-mail, phone, payment card, IBAN, US SSN and IP address patterns, each with a validator so
//! that numbers which only look right (bad checksum, impossible range, a date or a version) are not reported.

use std::net::Ipv6Addr;
use std::ops::Range;
use std::str::FromStr;

use lifeguard_core::Category;
use serde::{Deserialize, Serialize};

use crate::regexset::{PRE_CONTEXT, PatternSpec, Validator};

/// The personal-data types a bundle can switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiType {
    Email,
    Phone,
    CreditCard,
    Iban,
    UsSsn,
    IpAddress,
}

impl PiiType {
    pub const ALL: [PiiType; 6] = [
        PiiType::Email,
        PiiType::Phone,
        PiiType::CreditCard,
        PiiType::Iban,
        PiiType::UsSsn,
        PiiType::IpAddress,
    ];

    /// The serde / config name (`credit_card`).
    pub fn as_str(self) -> &'static str {
        match self {
            PiiType::Email => "email",
            PiiType::Phone => "phone",
            PiiType::CreditCard => "credit_card",
            PiiType::Iban => "iban",
            PiiType::UsSsn => "us_ssn",
            PiiType::IpAddress => "ip_address",
        }
    }

    /// Redaction label (`CREDIT_CARD`).
    pub fn label(self) -> &'static str {
        match self {
            PiiType::Email => "EMAIL",
            PiiType::Phone => "PHONE",
            PiiType::CreditCard => "CREDIT_CARD",
            PiiType::Iban => "IBAN",
            PiiType::UsSsn => "US_SSN",
            PiiType::IpAddress => "IP_ADDRESS",
        }
    }

    /// Rule id (`pii.credit_card`).
    pub fn rule(self) -> &'static str {
        match self {
            PiiType::Email => "pii.email",
            PiiType::Phone => "pii.phone",
            PiiType::CreditCard => "pii.credit_card",
            PiiType::Iban => "pii.iban",
            PiiType::UsSsn => "pii.us_ssn",
            PiiType::IpAddress => "pii.ip_address",
        }
    }
}

impl std::fmt::Display for PiiType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an unknown PII type name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown pii type `{0}` (expected one of email, phone, credit_card, iban, us_ssn, ip_address)"
)]
pub struct UnknownPiiType(pub String);

impl FromStr for PiiType {
    type Err = UnknownPiiType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PiiType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownPiiType(s.to_string()))
    }
}

const B: &str = r"(?-u:\b)";

/// Patterns in priority order: at the same start the first one listed wins, and a rejected candidate falls back
/// to the next pattern that matches there (so a Luhn-invalid 12-digit number can still be a phone number).
pub(crate) fn specs(types: &[PiiType]) -> Vec<PatternSpec> {
    let mut out = Vec::new();
    let mut add = |t: PiiType, regex: String, v: Validator| {
        if types.contains(&t) {
            out.push(PatternSpec {
                rule: t.rule().to_string(),
                family: t.as_str().to_string(),
                label: t.label().to_string(),
                category: Category::Pii,
                regex,
                group: 0,
                validate: Some(v),
                generic: false,
                try_alternatives: true,
                weight: 1.0,
            });
        }
    };
    add(
        PiiType::Email,
        format!(
            r"(?i){B}[a-z0-9][a-z0-9._%+-]{{0,63}}@[a-z0-9](?:[a-z0-9-]{{0,61}}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{{0,61}}[a-z0-9])?){{0,6}}\.[a-z]{{2,24}}{B}"
        ),
        valid_email,
    );
    add(
        PiiType::Iban,
        format!(r"(?i){B}[a-z]{{2}}[0-9]{{2}}(?: ?[a-z0-9]{{4}}){{2,7}}(?: ?[a-z0-9]{{1,4}})?{B}"),
        valid_iban,
    );
    add(
        PiiType::IpAddress,
        format!(r"{B}[0-9]{{1,3}}(?:\.[0-9]{{1,3}}){{3}}(?:\.[0-9]+)*{B}"),
        valid_ipv4,
    );
    add(
        PiiType::IpAddress,
        r"(?i)(?:[0-9a-f]{1,4}|::)(?::{1,2}[0-9a-f]{1,4}){2,7}(?:::)?".to_string(),
        valid_ipv6,
    );
    add(
        PiiType::UsSsn,
        format!(r"{B}[0-9]{{3}}-[0-9]{{2}}-[0-9]{{4}}{B}"),
        valid_ssn,
    );
    add(
        PiiType::CreditCard,
        format!(
            r"{B}(?:[0-9]{{12,19}}|[0-9]{{4}}(?:[ -][0-9]{{4}}){{2}}[ -][0-9]{{1,7}}|[0-9]{{4}}[ -][0-9]{{6}}[ -][0-9]{{4,5}}){B}"
        ),
        valid_card,
    );
    // International (+CC ...), national formats with separators, bare national runs; then an extension, then
    // the word that follows (consumed only so the validator can tell "370 3911 Fourth Avenue" from a number).
    add(
        PiiType::Phone,
        format!(
            r"(?i)(?:\+[1-9][0-9]{{6,14}}|\+[0-9]{{1,3}}[ .-]?(?:\(0\)[ .-]?)?(?:\([0-9]{{1,5}}\)[ .-]?)?[0-9]{{1,5}}(?:[ .-][0-9]{{1,5}}){{0,5}}|(?:{B}00?1[ .-])?(?:\([0-9]{{1,5}}\)[ .-]?|{B}[0-9]{{1,5}}[ .-])[0-9]{{2,8}}(?:[ .-][0-9]{{2,8}}){{0,4}}|{B}0[0-9]{{9,10}}|{B}[2-9][0-9]{{9}})(?:[ ]?(?:x|ext\.?|\#)[ ]?[0-9]{{1,6}})?(?:[ ]{{1,2}}[a-z][a-z]{{0,19}})?{B}"
        ),
        valid_phone,
    );
    out
}

fn pre(hay: &str, start: usize) -> &[u8] {
    let from = start.saturating_sub(PRE_CONTEXT);
    &hay.as_bytes()[from..start]
}

fn valid_email(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let s = hay.get(span.clone())?;
    let (local, domain) = s.split_once('@')?;
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return None;
    }
    if domain.contains("..") {
        return None;
    }
    Some(span)
}

/// ISO 13616 lengths per country (the common ones; an unknown country code is rejected).
fn iban_length(cc: &str) -> Option<usize> {
    Some(match cc {
        "AD" => 24,
        "AE" => 23,
        "AL" => 28,
        "AT" => 20,
        "AZ" => 28,
        "BA" => 20,
        "BE" => 16,
        "BG" => 22,
        "BH" => 22,
        "BR" => 29,
        "BY" => 28,
        "CH" => 21,
        "CR" => 22,
        "CY" => 28,
        "CZ" => 24,
        "DE" => 22,
        "DK" => 18,
        "DO" => 28,
        "EE" => 20,
        "EG" => 29,
        "ES" => 24,
        "FI" => 18,
        "FO" => 18,
        "FR" => 27,
        "GB" => 22,
        "GE" => 22,
        "GI" => 23,
        "GL" => 18,
        "GR" => 27,
        "GT" => 28,
        "HR" => 21,
        "HU" => 28,
        "IE" => 22,
        "IL" => 23,
        "IQ" => 23,
        "IS" => 26,
        "IT" => 27,
        "JO" => 30,
        "KW" => 30,
        "KZ" => 20,
        "LB" => 28,
        "LC" => 32,
        "LI" => 21,
        "LT" => 20,
        "LU" => 20,
        "LV" => 21,
        "MC" => 27,
        "MD" => 24,
        "ME" => 22,
        "MK" => 19,
        "MR" => 27,
        "MT" => 31,
        "MU" => 30,
        "NL" => 18,
        "NO" => 15,
        "PK" => 24,
        "PL" => 28,
        "PS" => 29,
        "PT" => 25,
        "QA" => 29,
        "RO" => 24,
        "RS" => 22,
        "SA" => 24,
        "SC" => 31,
        "SE" => 24,
        "SI" => 19,
        "SK" => 24,
        "SM" => 27,
        "ST" => 25,
        "SV" => 28,
        "TL" => 23,
        "TN" => 24,
        "TR" => 26,
        "UA" => 29,
        "VA" => 22,
        "VG" => 24,
        "XK" => 20,
        _ => return None,
    })
}

/// mod-97 check of an IBAN without spaces (upper case).
pub(crate) fn iban_checksum_ok(iban: &str) -> bool {
    if iban.len() < 15 || !iban.is_ascii() {
        return false;
    }
    let (head, tail) = iban.split_at(4);
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn valid_iban(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let s = hay.get(span.clone())?;
    // The pattern may run into a following word ("... 06 and"): try the whole candidate, then shorter ones
    // ending at a group boundary.
    let mut end = s.len();
    loop {
        let cand = &s[..end];
        let compact: String = cand
            .chars()
            .filter(|c| *c != ' ')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if let Some(len) = compact.get(..2).and_then(iban_length)
            && compact.len() == len
            && iban_checksum_ok(&compact)
        {
            return Some(span.start..span.start + end);
        }
        match cand.rfind(' ') {
            Some(i) if i > 4 => end = i,
            _ => return None,
        }
    }
}

fn valid_ipv4(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let s = hay.get(span.clone())?;
    let parts: Vec<&str> = s.split('.').collect();
    // Five or more dotted numbers is a version or an OID, not an address.
    if parts.len() != 4 {
        return None;
    }
    for p in &parts {
        if p.len() > 1 && p.starts_with('0') {
            return None;
        }
        if p.parse::<u16>().ok()? > 255 {
            return None;
        }
    }
    // "v1.2.3.4" or "1.2.3.4" right after a dot are versions.
    if let Some(&b) = pre(hay, span.start).last()
        && (b == b'.' || b == b'v' || b == b'V')
    {
        return None;
    }
    Some(span)
}

fn valid_ipv6(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let s = hay.get(span.clone())?;
    if let Some(&b) = pre(hay, span.start).last()
        && (b.is_ascii_alphanumeric() || b == b':' || b == b'.' || b == b'_')
    {
        return None;
    }
    Ipv6Addr::from_str(s).ok()?;
    // "a::b" style fragments (C++ paths, timestamps) are not addresses: ask for three non-empty groups.
    let groups = s.split(':').filter(|g| !g.is_empty()).count();
    if groups < 3 {
        return None;
    }
    // All-decimal short groups look like times or ratios (12:30:45:10).
    if !s.contains("::") && groups < 8 {
        return None;
    }
    Some(span)
}

fn valid_ssn(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let s = hay.get(span.clone())?;
    let mut it = s.split('-');
    let area: u16 = it.next()?.parse().ok()?;
    let group: u16 = it.next()?.parse().ok()?;
    let serial: u16 = it.next()?.parse().ok()?;
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return None;
    }
    Some(span)
}

/// Luhn checksum over the digits of `s` (other characters ignored).
pub(crate) fn luhn_ok(s: &str) -> bool {
    let mut sum = 0u32;
    let mut n = 0usize;
    for (i, d) in s
        .bytes()
        .rev()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
        .enumerate()
    {
        n += 1;
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 { x - 9 } else { x }
        } else {
            d
        };
    }
    n > 0 && sum.is_multiple_of(10)
}

fn valid_card(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let s = hay.get(span.clone())?;
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    if !(12..=19).contains(&digits.len()) {
        return None;
    }
    // Issuer ranges start with 1-6 (UATP, Visa, Mastercard, Amex, Diners, JCB, Discover, Maestro ...).
    if !matches!(digits[0], b'1'..=b'6') {
        return None;
    }
    if digits.iter().all(|d| *d == digits[0]) {
        return None;
    }
    // "+44 7700..." is a phone, not a card.
    if let Some(&b) = pre(hay, span.start).last()
        && (b == b'+' || b == b'-' || b == b'.')
    {
        return None;
    }
    luhn_ok(s).then_some(span)
}

/// Words that may follow a phone number without making it part of an address.
const PHONE_WORDS: &[&str] = &[
    "office",
    "fax",
    "mobile",
    "cell",
    "home",
    "work",
    "tel",
    "phone",
    "desk",
    "direct",
    "or",
    "and",
    "to",
    "for",
    "if",
    "at",
    "is",
    "was",
    "ext",
    "extension",
    "mob",
    "main",
    "please",
    "call",
];

fn valid_phone(hay: &str, span: Range<usize>) -> Option<Range<usize>> {
    let s = hay.get(span.clone())?;
    // Split off the word that follows the number (consumed by the pattern only to look at it).
    let last_digit = s.rfind(|c: char| c.is_ascii_digit())?;
    let number = &s[..=last_digit];
    let trailing = s[last_digit + 1..].trim().to_ascii_lowercase();
    // Digits of the number itself, without an extension.
    let main = number
        .find(['x', 'X', '#'])
        .or_else(|| number.to_ascii_lowercase().find("ext"))
        .map_or(number, |i| number[..i].trim_end());
    let digits = main.bytes().filter(u8::is_ascii_digit).count();
    if !(7..=15).contains(&digits) {
        return None;
    }
    let intl = main.starts_with('+');
    if let Some(&b) = pre(hay, span.start).last()
        && (b.is_ascii_alphanumeric()
            || matches!(b, b'.' | b'/' | b'-' | b'_' | b'$' | b'#' | b':'))
        && !intl
    {
        return None;
    }
    if !intl {
        let groups: Vec<&str> = main
            .split([' ', '.', '-', '(', ')'])
            .filter(|g| !g.is_empty())
            .collect();
        if looks_like_date(main) || looks_like_version(main, &groups) {
            return None;
        }
        // Thousands grouping (1 234 567, 12 000 000) is an amount.
        if groups.len() >= 3
            && (groups[0].len() == 1 || groups[1..].contains(&"000"))
            && groups[1..].iter().all(|g| g.len() == 3)
            && !main.starts_with(['0', '('])
        {
            return None;
        }
        // 123-45-6789 is the SSN shape (a rejected SSN is no phone); 1234-56-7890 an id of the same family.
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if main.contains('-') && (lens == [3, 2, 4] || lens == [4, 2, 4]) {
            return None;
        }
        // Postal codes: 1234-567, 12345-678.
        if groups.len() == 2
            && main.contains('-')
            && (4..=5).contains(&groups[0].len())
            && groups[1].len() == 3
        {
            return None;
        }
        // "370 3911 Fourth Avenue": two numbers before a word are a street address.
        if groups.len() == 2
            && digits < 10
            && !main.starts_with('(')
            && !trailing.is_empty()
            && !PHONE_WORDS.contains(&trailing.as_str())
        {
            return None;
        }
    }
    Some(span.start..span.start + number.len())
}

/// YYYY-MM-DD or DD.MM.YYYY (or MM/DD/YYYY) at the start, whatever follows (a time, say).
fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    let sep = |i: usize| b.get(i).is_some_and(|c| matches!(c, b'-' | b'.' | b'/'));
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<u32>().ok()).unwrap_or(0);
    let ymd = digits(0..4)
        && sep(4)
        && digits(5..7)
        && b.get(7) == b.get(4)
        && digits(8..10)
        && (1..=12).contains(&num(5..7))
        && (1..=31).contains(&num(8..10))
        && b.get(10).is_none_or(|c| !c.is_ascii_digit());
    let dmy = digits(0..2)
        && sep(2)
        && digits(3..5)
        && b.get(5) == b.get(2)
        && digits(6..10)
        && (1..=31).contains(&num(0..2))
        && (1..=31).contains(&num(3..5))
        && (num(0..2) <= 12 || num(3..5) <= 12)
        && b.get(10).is_none_or(|c| !c.is_ascii_digit());
    ymd || dmy
}

fn looks_like_version(s: &str, groups: &[&str]) -> bool {
    // 1.22.333 or 10.0.19045.1234: dotted, with a short leading component.
    s.contains('.') && !s.contains(['-', ' ', '(']) && groups.first().is_some_and(|g| g.len() == 1)
}
