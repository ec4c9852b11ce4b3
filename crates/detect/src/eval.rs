//! Evaluation of a scanner over a labelled JSONL corpus (the formats of `shared/corpus`):
//! - `{"text","label":"attack"|"benign"}`: positive when the injection or jailbreak score reaches the threshold;
//! - `{"text","label":"secret"|"clean"}`: positive when any secret is found;
//! - `{"text","entities":[{"type","start","end"}]}` (character offsets): per structured entity type, a predicted
//!   span overlapping a gold span of that type is a true positive.
//!
//! Rows may carry `"split"`; `run(.., Some("test"), ..)` keeps only those rows.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use lifeguard_core::Category;
use serde::Serialize;

use crate::Scanner;

/// Gold entity types a pattern detector is expected to find, with the PII family that predicts each.
pub const ENTITY_TYPES: [(&str, &str); 6] = [
    ("EMAIL_ADDRESS", "email"),
    ("PHONE_NUMBER", "phone"),
    ("CREDIT_CARD", "credit_card"),
    ("IBAN_CODE", "iban"),
    ("US_SSN", "us_ssn"),
    ("IP_ADDRESS", "ip_address"),
];

/// Why a corpus could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("line {line}: {message}")]
    Row { line: usize, message: String },
    #[error("no rows to evaluate (check --split)")]
    Empty,
}

/// Confusion counts and the figures derived from them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Counts {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub fpr: f64,
}

impl Counts {
    fn finish(mut self) -> Counts {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        self.precision = ratio(self.tp, self.tp + self.fp);
        self.recall = ratio(self.tp, self.tp + self.fn_);
        self.f1 = if self.precision + self.recall == 0.0 {
            0.0
        } else {
            2.0 * self.precision * self.recall / (self.precision + self.recall)
        };
        self.fpr = ratio(self.fp, self.fp + self.tn);
        self
    }
}

/// A row the scanner got wrong (line number in the corpus, 1-based); text is not copied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mistake {
    pub line: usize,
    /// `fp` or `fn` (for entity rows: `fp:<TYPE>` / `fn:<TYPE>`).
    pub kind: String,
    pub score: f32,
}

/// The outcome of [`run`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub rows: usize,
    pub split: Option<String>,
    pub threshold: f32,
    /// Rows judged as attack/benign or secret/clean; entity rows are in `entities`.
    pub overall: Counts,
    /// Per entity type, for entity rows (TN unused).
    pub entities: BTreeMap<String, Counts>,
    pub bytes: usize,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub mistakes: Vec<Mistake>,
}

fn char_to_byte(text: &str, ch: usize) -> usize {
    text.char_indices().nth(ch).map_or(text.len(), |(b, _)| b)
}

/// Evaluate `scanner` over a corpus. `threshold` decides attack vs benign on the raw scores.
pub fn run(
    scanner: &Scanner,
    corpus_jsonl: &str,
    split: Option<&str>,
    threshold: f32,
) -> Result<EvalReport, EvalError> {
    let mut overall = Counts::default();
    let mut ent: BTreeMap<String, Counts> = BTreeMap::new();
    let mut rows = 0usize;
    let mut bytes = 0usize;
    let mut seconds = 0f64;
    let mut mistakes = Vec::new();
    for (n, line) in corpus_jsonl.lines().enumerate() {
        let line_no = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Value = serde_json::from_str(line).map_err(|e| EvalError::Row {
            line: line_no,
            message: e.to_string(),
        })?;
        if let Some(want) = split
            && row.get("split").and_then(|s| s.as_str()) != Some(want)
        {
            continue;
        }
        let text = row
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| EvalError::Row {
                line: line_no,
                message: "missing \"text\"".into(),
            })?;
        rows += 1;
        bytes += text.len();
        let t0 = Instant::now();
        let report = scanner.scan(text);
        seconds += t0.elapsed().as_secs_f64();
        if let Some(label) = row.get("label").and_then(|l| l.as_str()) {
            let (expected, got, score) = match label {
                "attack" | "benign" => {
                    let s = report.injection.value.max(report.jailbreak.value);
                    (label == "attack", s >= threshold, s)
                }
                "secret" | "clean" => {
                    let got = report.of(Category::Secrets).next().is_some();
                    (label == "secret", got, if got { 1.0 } else { 0.0 })
                }
                other => {
                    return Err(EvalError::Row {
                        line: line_no,
                        message: format!("unknown label `{other}`"),
                    });
                }
            };
            match (expected, got) {
                (true, true) => overall.tp += 1,
                (false, false) => overall.tn += 1,
                (false, true) => {
                    overall.fp += 1;
                    mistakes.push(Mistake {
                        line: line_no,
                        kind: "fp".into(),
                        score,
                    });
                }
                (true, false) => {
                    overall.fn_ += 1;
                    mistakes.push(Mistake {
                        line: line_no,
                        kind: "fn".into(),
                        score,
                    });
                }
            }
        } else if let Some(list) = row.get("entities").and_then(|e| e.as_array()) {
            for (gold_type, family) in ENTITY_TYPES {
                let gold: Vec<std::ops::Range<usize>> = list
                    .iter()
                    .filter(|e| e.get("type").and_then(|t| t.as_str()) == Some(gold_type))
                    .filter_map(|e| {
                        let s = e.get("start")?.as_u64()? as usize;
                        let en = e.get("end")?.as_u64()? as usize;
                        Some(char_to_byte(text, s)..char_to_byte(text, en))
                    })
                    .collect();
                let pred: Vec<std::ops::Range<usize>> = report
                    .of(Category::Pii)
                    .filter(|f| f.family == family)
                    .map(|f| f.span.clone())
                    .collect();
                let c = ent.entry(gold_type.to_string()).or_default();
                let overlaps = |a: &std::ops::Range<usize>, b: &std::ops::Range<usize>| {
                    a.start < b.end && b.start < a.end
                };
                for g in &gold {
                    if pred.iter().any(|p| overlaps(p, g)) {
                        c.tp += 1;
                    } else {
                        c.fn_ += 1;
                        mistakes.push(Mistake {
                            line: line_no,
                            kind: format!("fn:{gold_type}"),
                            score: 0.0,
                        });
                    }
                }
                for p in &pred {
                    if !gold.iter().any(|g| overlaps(p, g)) {
                        c.fp += 1;
                        mistakes.push(Mistake {
                            line: line_no,
                            kind: format!("fp:{gold_type}"),
                            score: 1.0,
                        });
                    }
                }
                if gold.is_empty() && pred.is_empty() {
                    c.tn += 1;
                }
            }
        } else {
            return Err(EvalError::Row {
                line: line_no,
                message: "row has neither \"label\" nor \"entities\"".into(),
            });
        }
    }
    if rows == 0 {
        return Err(EvalError::Empty);
    }
    let entities = ent.into_iter().map(|(k, v)| (k, v.finish())).collect();
    Ok(EvalReport {
        rows,
        split: split.map(str::to_string),
        threshold,
        overall: overall.finish(),
        entities,
        bytes,
        seconds,
        mb_per_s: if seconds > 0.0 {
            bytes as f64 / 1e6 / seconds
        } else {
            0.0
        },
        mistakes,
    })
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rows {}  split {}  threshold {:.2}  {:.2} MB in {:.3}s = {:.1} MB/s",
            self.rows,
            self.split.as_deref().unwrap_or("all"),
            self.threshold,
            self.bytes as f64 / 1e6,
            self.seconds,
            self.mb_per_s
        )?;
        writeln!(
            f,
            "{:<14} {:>6} {:>6} {:>6} {:>6} {:>9} {:>7} {:>6} {:>6}",
            "", "TP", "FP", "TN", "FN", "precision", "recall", "F1", "FPR"
        )?;
        let mut line = |name: &str, c: &Counts| {
            writeln!(
                f,
                "{:<14} {:>6} {:>6} {:>6} {:>6} {:>9.3} {:>7.3} {:>6.3} {:>6.3}",
                name, c.tp, c.fp, c.tn, c.fn_, c.precision, c.recall, c.f1, c.fpr
            )
        };
        let o = &self.overall;
        if o.tp + o.fp + o.tn + o.fn_ > 0 {
            line("overall", o)?;
        }
        for (k, c) in &self.entities {
            line(k, c)?;
        }
        Ok(())
    }
}
