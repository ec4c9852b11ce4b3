//! Corpus checks: run `eval::run` over the shared corpora when they are present (paths relative to the crate),
//! and print a note instead of failing when they are not. Thresholds here are floors that catch regressions; the
//! reported figures are in DETECTION.md.

use std::path::PathBuf;

use lifeguard_detect::{DetectorConfig, Scanner, eval};

fn corpus(name: &str) -> Option<String> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpus")
        .join(name);
    match std::fs::read_to_string(&p) {
        Ok(s) => Some(s),
        Err(e) => {
            println!("note: skipping, {} not readable: {e}", p.display());
            None
        }
    }
}

fn scanner() -> Scanner {
    Scanner::compile(&DetectorConfig::default()).expect("compiles")
}

#[test]
fn presidio_structured_types() {
    let Some(c) = corpus("presidio.jsonl") else {
        return;
    };
    let r = eval::run(&scanner(), &c, None, 0.5).expect("eval");
    for (t, m) in &r.entities {
        assert!(m.precision >= 0.9 && m.recall >= 0.9, "{t}: {m:?}");
    }
}

#[test]
fn gitleaks_secrets() {
    let Some(c) = corpus("gitleaks.jsonl") else {
        return;
    };
    let r = eval::run(&scanner(), &c, None, 0.5).expect("eval");
    assert!(r.overall.recall >= 0.93, "{:?}", r.overall);
    assert!(r.overall.fpr <= 0.12, "{:?}", r.overall);
}

#[test]
fn deepset_train_rows() {
    // Train rows only: the test split is for reporting, never for tests that could steer tuning.
    let Some(c) = corpus("deepset.jsonl") else {
        return;
    };
    let r = eval::run(&scanner(), &c, Some("train"), 0.5).expect("eval");
    assert!(r.overall.recall >= 0.85, "{:?}", r.overall);
    assert!(r.overall.fpr <= 0.05, "{:?}", r.overall);
}

#[test]
fn checked_in_model_is_what_train_produces() {
    let Some(c) = corpus("deepset.jsonl") else {
        return;
    };
    let trained = lifeguard_detect::model::train(&c);
    assert_eq!(
        trained.to_text(),
        lifeguard_detect::model::DEFAULT_MODEL,
        "model/injection.txt is stale: rerun the train example"
    );
}
