//! Train the injection model from the `train` rows of a corpus and write it as text:
//! `cargo run --release -p lifeguard-detect --example train -- <corpus.jsonl> [--out model/injection.txt]
//! [--cv 5]`
//!
//! `--cv k` reports k-fold cross-validation on the train rows (rules + model, threshold 0.5) instead of writing.
//! Test rows are never read.

use std::collections::HashMap;

use lifeguard_core::Category;
use lifeguard_detect::model::{self, TrainConfig};
use lifeguard_detect::{DetectorConfig, Scanner};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = None;
    let mut out = "crates/detect/model/injection.txt".to_string();
    let mut cv = 0usize;
    let mut offset = 0f32;
    let mut cfg = TrainConfig::default();
    let mut i = 0;
    while i < args.len() {
        let next = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--out" => out = next,
            "--cv" => cv = next.parse().unwrap_or(5),
            "--offset" => offset = next.parse().unwrap_or(0.0),
            "--shift" => cfg.bias_shift = next.parse().unwrap_or(cfg.bias_shift),
            "--epochs" => cfg.epochs = next.parse().unwrap_or(cfg.epochs),
            "--lr" => cfg.learning_rate = next.parse().unwrap_or(cfg.learning_rate),
            "--l2" => cfg.l2 = next.parse().unwrap_or(cfg.l2),
            "--bits" => cfg.dim_bits = next.parse().unwrap_or(cfg.dim_bits),
            p => {
                path = Some(p.to_string());
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    let Some(path) = path else {
        eprintln!(
            "usage: train <corpus.jsonl> [--out FILE] [--cv K] [--epochs N] [--lr X] [--l2 X] [--bits N]"
        );
        std::process::exit(2);
    };
    let corpus = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    let rows = model::train_rows(&corpus);
    if cv == 0 {
        let m = model::train_with(&rows, cfg);
        if let Err(e) = std::fs::write(&out, m.to_text()) {
            eprintln!("{out}: {e}");
            std::process::exit(1);
        }
        println!("trained on {} train rows, wrote {out}", rows.len());
        return;
    }
    let scanner = Scanner::compile(&DetectorConfig::default()).expect("default config compiles");
    // Rule part of the score per row, as Scanner::score computes it.
    let rule_keep: Vec<f32> = rows
        .iter()
        .map(|(t, _)| {
            let mut per_rule: HashMap<String, f32> = HashMap::new();
            for f in scanner.findings(t) {
                if matches!(f.category, Category::Injection | Category::Jailbreak) {
                    let w = per_rule
                        .entry(format!("{:?}{}", f.category, f.rule))
                        .or_insert(0.0);
                    *w = w.max(f.weight);
                }
            }
            per_rule.values().map(|w| 1.0 - w).product()
        })
        .collect();
    let (mut tp, mut fp, mut tn, mut fnn) = (0, 0, 0, 0);
    let (mut mtp, mut mfp, mut mtn, mut mfn) = (0, 0, 0, 0);
    for fold in 0..cv {
        let train: Vec<(String, bool)> = rows
            .iter()
            .enumerate()
            .filter(|(k, _)| k % cv != fold)
            .map(|(_, r)| r.clone())
            .collect();
        let m = model::train_with(&train, cfg);
        for (k, (t, y)) in rows.iter().enumerate().filter(|(k, _)| k % cv == fold) {
            let p = m.predict(t, 0).probability;
            let p = 1.0 / (1.0 + ((-(p / (1.0 - p)).ln()) + offset).exp());
            let score = 1.0 - (1.0 - p) * rule_keep[k];
            if (score >= 0.5) != *y && std::env::var_os("SHOW").is_some() {
                let short: String = t.chars().take(150).collect();
                println!(
                    "{} {:.2} p={:.2} {:?}",
                    if *y { "FN" } else { "FP" },
                    score,
                    p,
                    short
                );
            }
            match (*y, score >= 0.5) {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                (false, false) => tn += 1,
                (true, false) => fnn += 1,
            }
            match (*y, p >= 0.5) {
                (true, true) => mtp += 1,
                (false, true) => mfp += 1,
                (false, false) => mtn += 1,
                (true, false) => mfn += 1,
            }
        }
    }
    let rep = |name: &str, tp: i32, fp: i32, tn: i32, fnn: i32| {
        println!(
            "{name:<14} TP {tp} FP {fp} TN {tn} FN {fnn}  recall {:.3} FPR {:.3} precision {:.3}",
            tp as f64 / (tp + fnn) as f64,
            fp as f64 / (fp + tn) as f64,
            tp as f64 / (tp + fp).max(1) as f64
        )
    };
    rep("model only", mtp, mfp, mtn, mfn);
    rep("rules + model", tp, fp, tn, fnn);
}
