//! Content inspection: the detectors' findings on a body's segments, judged against a route's actions and
//! thresholds, into one check per category and the action to take. Pure; ext_proc and `lifeguard diff` share it.

use std::collections::BTreeMap;
use std::time::Instant;

use lifeguard_core::{Action, Category, CheckRecord, CheckVerdict, Finding, Tier};

use crate::snapshot::{Actions, Route, Snapshot, TierThresholds};

/// A piece of a body to inspect.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub tier: Tier,
    /// Arguments of a tool call in model output: judged by the `tool_calls` action too.
    pub tool_call: bool,
}

/// Which way the body flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// The verdict on a body, with its trace.
#[derive(Debug, Default)]
pub struct Inspection {
    pub checks: Vec<CheckRecord>,
    /// The strongest action any check reached.
    pub action: Action,
    /// The check that blocked, when one did.
    pub blocked_by: Option<String>,
    /// Per piece: the findings to redact (spans into that piece's text).
    pub redactions: Vec<Vec<Finding>>,
    /// Ids of the checks that flagged.
    pub flags: Vec<String>,
}

impl Inspection {
    fn apply(&mut self, mut rec: CheckRecord, action: Action, started: Instant) {
        rec.latency_us += started.elapsed().as_secs_f64() * 1e6;
        if action > self.action {
            self.action = action;
        }
        if action == Action::Block && self.blocked_by.is_none() {
            self.blocked_by = Some(rec.id.clone());
        }
        if action == Action::Flag {
            self.flags.push(rec.id.clone());
        }
        self.checks.push(rec);
    }
}

/// Inspects `pieces` for `route` in `direction`.
pub fn inspect(
    snapshot: &Snapshot,
    route: &Route,
    direction: Direction,
    pieces: &[Piece<'_>],
) -> Inspection {
    let actions = match direction {
        Direction::Request => route.request,
        Direction::Response => route.response,
    };
    let mut out = Inspection {
        redactions: vec![Vec::new(); pieces.len()],
        ..Default::default()
    };
    let t = Instant::now();
    let reports: Vec<_> = pieces
        .iter()
        .map(|p| snapshot.scanner.scan(p.text))
        .collect();
    let mut scan = CheckRecord::new("scan", CheckVerdict::Pass).reason(format!(
        "{} segment(s), {} bytes",
        pieces.len(),
        pieces.iter().map(|p| p.text.len()).sum::<usize>()
    ));
    scan.latency_us = t.elapsed().as_secs_f64() * 1e6;
    out.checks.push(scan);

    for (category, thresholds) in [
        (Category::Injection, Some(route.injection)),
        (Category::Jailbreak, Some(route.jailbreak)),
        (Category::Secrets, None),
        (Category::Pii, None),
    ] {
        let t = Instant::now();
        let Some(action) = actions.get(category) else {
            out.checks.push(
                CheckRecord::new(category.as_str(), CheckVerdict::Skipped)
                    .reason("not enabled on this route"),
            );
            continue;
        };
        let mut rec = CheckRecord::new(category.as_str(), CheckVerdict::Pass);
        let mut hit = false;
        for (i, (piece, report)) in pieces.iter().zip(&reports).enumerate() {
            let found: Vec<&Finding> = report
                .findings
                .iter()
                .filter(|f| f.category == category)
                .collect();
            let piece_hit = match thresholds {
                Some(th) => score_hit(&mut rec, category, piece.tier, report, th),
                None => !found.is_empty(),
            };
            if !piece_hit {
                continue;
            }
            hit = true;
            for f in &found {
                if !rec.rules.contains(&f.rule) {
                    rec.rules.push(f.rule.clone());
                }
            }
            if action == Action::Redact {
                out.redactions[i].extend(found.into_iter().cloned());
            }
        }
        if hit {
            rec.verdict = action.into();
            if rec.reason.is_empty() {
                rec.reason = format!("{} finding(s)", rec.rules.len());
            }
            out.apply(rec, action, t);
        } else {
            out.apply(rec, Action::Allow, t);
        }
    }
    custom_checks(snapshot, direction, &actions, &reports, &mut out);
    tool_call_check(snapshot, route, &actions, pieces, &reports, &mut out);
    out
}

/// Scores a piece against its tier's threshold; records the highest score seen.
fn score_hit(
    rec: &mut CheckRecord,
    category: Category,
    tier: Tier,
    report: &lifeguard_detect::ScanReport,
    th: TierThresholds,
) -> bool {
    let score = match category {
        Category::Injection => &report.injection,
        _ => &report.jailbreak,
    };
    let threshold = th.get(tier);
    if rec.score.is_none_or(|s| score.value > s) {
        rec.score = Some(score.value);
        rec.threshold = Some(threshold);
    }
    let hit = score.value >= threshold;
    if hit {
        rec.reason = format!(
            "score {:.2} >= {:.2} at tier {}",
            score.value,
            threshold,
            tier.as_str()
        );
        for (feature, _) in score.top.iter().take(3) {
            if !rec.rules.contains(feature) {
                rec.rules.push(feature.clone());
            }
        }
    }
    hit
}

fn custom_checks(
    snapshot: &Snapshot,
    direction: Direction,
    actions: &Actions,
    reports: &[lifeguard_detect::ScanReport],
    out: &mut Inspection,
) {
    // Custom rules apply to requests with their own action, to responses only when the route asks.
    if direction == Direction::Response && actions.custom.is_none() {
        return;
    }
    let t = Instant::now();
    let mut by_rule: BTreeMap<&str, Vec<(usize, &Finding)>> = BTreeMap::new();
    for (i, report) in reports.iter().enumerate() {
        for f in report
            .findings
            .iter()
            .filter(|f| f.category == Category::Custom)
        {
            by_rule.entry(f.rule.as_str()).or_default().push((i, f));
        }
    }
    for (rule, found) in by_rule {
        let id = rule.strip_prefix("custom.").unwrap_or(rule);
        let action = actions
            .custom
            .or_else(|| snapshot.custom_actions.get(id).copied())
            .unwrap_or(Action::Flag);
        let mut rec =
            CheckRecord::new(rule, action.into()).reason(format!("{} match(es)", found.len()));
        rec.rules.push(rule.to_string());
        if action == Action::Redact {
            for (i, f) in found {
                out.redactions[i].push(f.clone());
            }
        }
        out.apply(rec, action, t);
    }
}

fn tool_call_check(
    snapshot: &Snapshot,
    route: &Route,
    actions: &Actions,
    pieces: &[Piece<'_>],
    reports: &[lifeguard_detect::ScanReport],
    out: &mut Inspection,
) {
    if !pieces.iter().any(|p| p.tool_call) {
        return;
    }
    let t = Instant::now();
    let Some(action) = actions.tool_calls else {
        out.checks.push(
            CheckRecord::new("tool_calls", CheckVerdict::Skipped)
                .reason("not enabled on this route"),
        );
        return;
    };
    let mut rec = CheckRecord::new("tool_calls", CheckVerdict::Pass);
    let mut reasons = Vec::new();
    for (piece, report) in pieces.iter().zip(reports).filter(|(p, _)| p.tool_call) {
        for f in &report.findings {
            if matches!(f.category, Category::Secrets | Category::Pii)
                && !rec.rules.contains(&f.rule)
            {
                rec.rules.push(f.rule.clone());
                reasons.push(format!("{} in arguments", f.rule));
            }
        }
        if report.injection.value >= route.injection.get(Tier::ToolResult) {
            rec.rules.push("injection".into());
            reasons.push(format!(
                "injection score {:.2} in arguments",
                report.injection.value
            ));
        }
        for host in url_hosts(piece.text) {
            if !snapshot.tool_host_allowed(host) {
                let rule = format!("url_host:{host}");
                if !rec.rules.contains(&rule) {
                    reasons.push(format!("URL to host {host:?} outside the allowlist"));
                    rec.rules.push(rule);
                }
            }
        }
    }
    if reasons.is_empty() {
        out.apply(rec, Action::Allow, t);
    } else {
        rec.verdict = action.into();
        rec.reason = reasons.join("; ");
        out.apply(rec, action, t);
    }
}

/// Hosts of the http(s) URLs in a text.
pub fn url_hosts(text: &str) -> impl Iterator<Item = &str> {
    let lower_starts =
        |s: &str, p: &str| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p);
    let mut rest = text;
    std::iter::from_fn(move || {
        loop {
            let at = rest.find(['h', 'H'])?;
            let tail = &rest[at..];
            let skip = if lower_starts(tail, "https://") {
                8
            } else if lower_starts(tail, "http://") {
                7
            } else {
                rest = &rest[at + 1..];
                continue;
            };
            let after = &tail[skip..];
            let end = after
                .find(|c: char| {
                    !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '@' || c == ':')
                })
                .unwrap_or(after.len());
            let authority = &after[..end];
            rest = &after[end..];
            let host = authority.rsplit('@').next().unwrap_or(authority);
            let host = host.split(':').next().unwrap_or(host);
            if !host.is_empty() {
                return Some(host);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::url_hosts;

    #[test]
    fn finds_url_hosts() {
        let hosts: Vec<_> = url_hosts(
            "fetch https://evil.example.com/x?y and HTTP://user@10.0.0.1:8080/ and http:// end",
        )
        .collect();
        assert_eq!(hosts, vec!["evil.example.com", "10.0.0.1"]);
    }
}
