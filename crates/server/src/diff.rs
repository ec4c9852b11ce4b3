//! `lifeguard diff`: replays a corpus of requests against two bundles and says what a policy change does
//! (requests newly blocked or newly allowed, by route and check): the check a team runs on a policy pull request.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use lifeguard_extproc::{pieces, request_pieces};
use lifeguard_policy::{Direction, Snapshot, decide, inspect};

use crate::commands::{RequestDoc, load_offline, read};

/// What a bundle does with one request: allowed, or blocked by (route, check).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Allow,
    Block { route: String, check: String },
}

fn outcome(snap: &Snapshot, row: &RequestDoc, now: jiff::Timestamp) -> Outcome {
    let facts = row.facts();
    let d = decide(snap, &facts, now);
    let route_name = d
        .route
        .map(|r| r.name.clone())
        .unwrap_or_else(|| "-".into());
    if let Some(denial) = d.enforced() {
        return Outcome::Block {
            route: route_name,
            check: format!("{}:{}", denial.check, denial.code),
        };
    }
    let (Some(route), Some(body)) = (d.route, &row.body) else {
        return Outcome::Allow;
    };
    if route.mode == lifeguard_core::Mode::Monitor {
        return Outcome::Allow;
    }
    let (_, located) = request_pieces(body);
    let pieces = pieces(body, &located);
    match inspect(snap, route, Direction::Request, &pieces).blocked_by {
        Some(check) => Outcome::Block {
            route: route_name,
            check,
        },
        None => Outcome::Allow,
    }
}

pub fn run(old: &Path, new: &Path, corpus: &Path, json: bool) -> ExitCode {
    let bundles = match (load_offline(old), load_offline(new)) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let text = match read(corpus) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let now = jiff::Timestamp::now();
    let mut newly_blocked: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut newly_allowed: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut changed = Vec::new();
    let mut rows = 0u64;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row: RequestDoc = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}:{}: {e}", corpus.display(), i + 1);
                return ExitCode::FAILURE;
            }
        };
        rows += 1;
        let (a, b) = (
            outcome(&bundles[0], &row, now),
            outcome(&bundles[1], &row, now),
        );
        if a == b {
            continue;
        }
        let label = row
            .name
            .clone()
            .unwrap_or_else(|| format!("line {}", i + 1));
        match (&a, &b) {
            (Outcome::Allow, Outcome::Block { route, check }) => {
                *newly_blocked
                    .entry((route.clone(), check.clone()))
                    .or_default() += 1;
                changed.push(format!(
                    "{label}: newly blocked on route {route} by {check}"
                ));
            }
            (Outcome::Block { route, check }, Outcome::Allow) => {
                *newly_allowed
                    .entry((route.clone(), check.clone()))
                    .or_default() += 1;
                changed.push(format!(
                    "{label}: newly allowed on route {route} (was blocked by {check})"
                ));
            }
            (Outcome::Block { check: c1, .. }, Outcome::Block { route, check: c2 }) => {
                changed.push(format!(
                    "{label}: still blocked on route {route}, now by {c2} (was {c1})"
                ));
            }
            _ => {}
        }
    }
    if json {
        let list = |m: &BTreeMap<(String, String), u64>| {
            m.iter()
                .map(|((r, c), n)| serde_json::json!({"route": r, "check": c, "requests": n}))
                .collect::<Vec<_>>()
        };
        let out = serde_json::json!({
            "old": {"name": bundles[0].bundle.name, "hash": bundles[0].bundle.hash},
            "new": {"name": bundles[1].bundle.name, "hash": bundles[1].bundle.hash},
            "rows": rows,
            "newly_blocked": list(&newly_blocked),
            "newly_allowed": list(&newly_allowed),
            "changes": changed,
        });
        println!("{out:#}");
    } else {
        println!(
            "{} rows replayed: old {} ({}) -> new {} ({})",
            rows,
            bundles[0].bundle.name,
            bundles[0].bundle.hash,
            bundles[1].bundle.name,
            bundles[1].bundle.hash
        );
        println!("newly blocked: {}", newly_blocked.values().sum::<u64>());
        for ((r, c), n) in &newly_blocked {
            println!("  route {r:<16} check {c:<32} {n}");
        }
        println!("newly allowed: {}", newly_allowed.values().sum::<u64>());
        for ((r, c), n) in &newly_allowed {
            println!("  route {r:<16} check {c:<32} {n}");
        }
        for c in &changed {
            println!("  {c}");
        }
    }
    ExitCode::SUCCESS
}
