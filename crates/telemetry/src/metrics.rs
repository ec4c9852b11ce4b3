//! Prometheus metrics, rendered in the text exposition format. Hand-rolled: a handful of counter families and
//! one histogram do not need a registry crate.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use lifeguard_core::DecisionRecord;
use parking_lot::Mutex;

/// Upper bounds (µs) of the check latency histogram.
const BUCKETS_US: [f64; 12] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS_US.len()],
    count: u64,
    sum: f64,
}

/// Decisions per route.
type RouteCounts = HashMap<String, u64>;

/// Counts of one check by verdict, and its latency histogram.
#[derive(Default)]
struct CheckStats {
    by_verdict: HashMap<&'static str, u64>,
    latency: Histogram,
}

/// All metrics of one process. Hot-path updates look keys up by `&str` and allocate only the first time a
/// route or check is seen.
#[derive(Default)]
pub struct Metrics {
    /// (phase, verdict) -> route -> count.
    decisions: Mutex<HashMap<(&'static str, &'static str), RouteCounts>>,
    checks: Mutex<HashMap<String, CheckStats>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub last_reload_unix: AtomicU64,
    pub spans_dropped: AtomicU64,
    pub audit_dropped: AtomicU64,
    pub shadow_disagreements: AtomicU64,
    bundle: Mutex<(String, u64, String)>,
}

impl Metrics {
    pub fn observe(&self, d: &DecisionRecord) {
        {
            let mut m = self.decisions.lock();
            let routes = m
                .entry((d.phase.span_name(), d.verdict.as_str()))
                .or_default();
            match routes.get_mut(d.route.as_str()) {
                Some(n) => *n += 1,
                None => {
                    routes.insert(d.route.clone(), 1);
                }
            }
        }
        let mut checks = self.checks.lock();
        for c in &d.checks {
            let stats = match checks.get_mut(c.id.as_str()) {
                Some(s) => s,
                None => checks.entry(c.id.clone()).or_default(),
            };
            *stats.by_verdict.entry(c.verdict.as_str()).or_default() += 1;
            let h = &mut stats.latency;
            h.count += 1;
            h.sum += c.latency_us;
            if let Some(i) = BUCKETS_US.iter().position(|b| c.latency_us <= *b) {
                h.counts[i] += 1;
            }
        }
        drop(checks);
        if d.shadow.as_ref().is_some_and(|s| !s.agrees) {
            self.shadow_disagreements.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records the bundle now in force.
    pub fn set_bundle(&self, name: &str, version: u64, hash: &str, unix_time: u64) {
        *self.bundle.lock() = (name.to_string(), version, hash.to_string());
        self.last_reload_unix.store(unix_time, Ordering::Relaxed);
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP lifeguard_decisions_total Decisions by phase, verdict and route."
        );
        let _ = writeln!(out, "# TYPE lifeguard_decisions_total counter");
        let mut decisions: Vec<(&str, &str, String, u64)> = Vec::new();
        for ((phase, verdict), routes) in self.decisions.lock().iter() {
            for (route, n) in routes {
                decisions.push((phase, verdict, route.clone(), *n));
            }
        }
        decisions.sort();
        for (phase, verdict, route, n) in decisions {
            let _ = writeln!(
                out,
                "lifeguard_decisions_total{{phase=\"{}\",verdict=\"{}\",route=\"{}\"}} {n}",
                esc(phase),
                esc(verdict),
                esc(&route)
            );
        }
        let checks = self.checks.lock();
        let mut ids: Vec<&String> = checks.keys().collect();
        ids.sort();
        let _ = writeln!(
            out,
            "# HELP lifeguard_checks_total Checks by id and verdict."
        );
        let _ = writeln!(out, "# TYPE lifeguard_checks_total counter");
        for id in &ids {
            let mut verdicts: Vec<_> = checks[*id].by_verdict.iter().collect();
            verdicts.sort();
            for (verdict, n) in verdicts {
                let _ = writeln!(
                    out,
                    "lifeguard_checks_total{{check=\"{}\",verdict=\"{}\"}} {n}",
                    esc(id),
                    esc(verdict)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP lifeguard_check_latency_microseconds Time each check took."
        );
        let _ = writeln!(out, "# TYPE lifeguard_check_latency_microseconds histogram");
        for id in ids {
            let h = &checks[id].latency;
            let mut cum = 0;
            for (i, b) in BUCKETS_US.iter().enumerate() {
                cum += h.counts[i];
                let _ = writeln!(
                    out,
                    "lifeguard_check_latency_microseconds_bucket{{check=\"{}\",le=\"{b}\"}} {cum}",
                    esc(id)
                );
            }
            let _ = writeln!(
                out,
                "lifeguard_check_latency_microseconds_bucket{{check=\"{}\",le=\"+Inf\"}} {}",
                esc(id),
                h.count
            );
            let _ = writeln!(
                out,
                "lifeguard_check_latency_microseconds_sum{{check=\"{}\"}} {}",
                esc(id),
                h.sum
            );
            let _ = writeln!(
                out,
                "lifeguard_check_latency_microseconds_count{{check=\"{}\"}} {}",
                esc(id),
                h.count
            );
        }
        drop(checks);
        let (name, version, hash) = self.bundle.lock().clone();
        let _ = writeln!(
            out,
            "# HELP lifeguard_bundle_info The policy bundle in force."
        );
        let _ = writeln!(out, "# TYPE lifeguard_bundle_info gauge");
        let _ = writeln!(
            out,
            "lifeguard_bundle_info{{name=\"{}\",version=\"{version}\",hash=\"{}\"}} 1",
            esc(&name),
            esc(&hash)
        );
        for (name, help, kind, v) in [
            (
                "lifeguard_reloads_total{result=\"ok\"}",
                "Bundle loads by result.",
                "counter",
                &self.reloads_ok,
            ),
            (
                "lifeguard_reloads_total{result=\"failed\"}",
                "",
                "",
                &self.reloads_failed,
            ),
            (
                "lifeguard_last_reload_timestamp_seconds",
                "Unix time of the last good bundle load.",
                "gauge",
                &self.last_reload_unix,
            ),
            (
                "lifeguard_spans_dropped_total",
                "Decision spans dropped because the exporter queue was full.",
                "counter",
                &self.spans_dropped,
            ),
            (
                "lifeguard_audit_dropped_total",
                "Audit lines dropped because the writer queue was full.",
                "counter",
                &self.audit_dropped,
            ),
            (
                "lifeguard_shadow_disagreements_total",
                "Decisions where the candidate bundle disagreed with the live one.",
                "counter",
                &self.shadow_disagreements,
            ),
        ] {
            let family = name.split('{').next().unwrap_or(name);
            if !help.is_empty() {
                let _ = writeln!(out, "# HELP {family} {help}");
                let _ = writeln!(out, "# TYPE {family} {kind}");
            }
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        out
    }
}

/// Escapes a Prometheus label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
