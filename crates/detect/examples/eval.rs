//! Evaluate the default scanner over a corpus:
//! `cargo run --release -p lifeguard-detect --example eval -- <corpus.jsonl> [--split test] [--threshold 0.5]
//! [--json] [--show-errors]`
//!
//! This runs the same `lifeguard_detect::eval::run` as `lifeguard eval`.

use lifeguard_detect::{DetectorConfig, Scanner, eval};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = None;
    let mut split = None;
    let mut threshold = 0.5f32;
    let mut json = false;
    let mut show = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--split" => {
                i += 1;
                split = args.get(i).cloned();
            }
            "--threshold" => {
                i += 1;
                threshold = args.get(i).and_then(|t| t.parse().ok()).unwrap_or(0.5);
            }
            "--json" => json = true,
            "--show-errors" => show = true,
            p => path = Some(p.to_string()),
        }
        i += 1;
    }
    let Some(path) = path else {
        eprintln!(
            "usage: eval <corpus.jsonl> [--split test] [--threshold 0.5] [--json] [--show-errors]"
        );
        std::process::exit(2);
    };
    let corpus = match std::fs::read_to_string(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    let scanner = match Scanner::compile(&DetectorConfig::default()) {
        Ok(s) => s,
        Err(errs) => {
            for e in errs {
                eprintln!("{e}");
            }
            std::process::exit(1);
        }
    };
    match eval::run(&scanner, &corpus, split.as_deref(), threshold) {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{report}");
            }
            if show {
                let lines: Vec<&str> = corpus.lines().collect();
                for m in &report.mistakes {
                    let text = lines
                        .get(m.line - 1)
                        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                        .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(str::to_string))
                        .unwrap_or_default();
                    let short: String = text.chars().take(160).collect();
                    let r = scanner.scan(&text);
                    let rules: Vec<String> = r
                        .findings
                        .iter()
                        .map(|f| format!("{}@{:?}", f.rule, f.span))
                        .collect();
                    println!(
                        "{:>5} {:<16} {:.2} {:?} {:?}",
                        m.line, m.kind, m.score, short, rules
                    );
                }
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
