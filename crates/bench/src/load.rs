//! The load engine: open loop at a fixed rate (latency from the INTENDED send time, so a stall is charged to
//! every request it delays, not hidden: no coordinated omission) or closed loop at N in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::procfs;

/// One operation (a Check, a whole ext_proc exchange, an HTTP request): `Err` carries a short reason.
pub type Op = Arc<dyn Fn(u64) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// A request every `1/rate` seconds whatever happens to earlier ones.
    Open { rate: f64 },
    /// `in_flight` workers, each sending its next request when its last one is answered.
    Closed { in_flight: usize },
}

/// When request `i` of an open-loop run is meant to leave: `start + i / rate`, computed from the start (never
/// accumulated, so rounding never drifts).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub rate: f64,
}

impl Schedule {
    pub fn intended(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// How many requests fall in `[start, start + d)`.
    pub fn count_within(&self, d: Duration) -> u64 {
        (d.as_secs_f64() * self.rate).ceil().max(0.0) as u64
    }
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub mode: Mode,
    pub duration: Duration,
    /// Process whose CPU time is charged to the run (Lifeguard, or the echo floor).
    pub pid: Option<u32>,
    /// Open loop: most requests outstanding at once; later ones wait (and their wait counts in their latency).
    pub max_in_flight: usize,
    /// How long to wait for stragglers once sending stops; those still out then are errors.
    pub drain: Duration,
}

#[derive(Debug, Clone)]
pub struct RunResult {
    /// Latency in nanoseconds.
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub cpu_seconds: Option<f64>,
}

impl RunResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e3
    }

    /// Lifeguard CPU per completed operation, in µs.
    pub fn cpu_us_per_op(&self) -> Option<f64> {
        let n = self.ok + self.errors;
        self.cpu_seconds
            .filter(|_| n > 0)
            .map(|s| s * 1e6 / n as f64)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.ok,
            "errors": self.errors,
            "first_error": self.first_error,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "rate": self.rate(),
            "p50_us": self.quantile_us(0.5),
            "p99_us": self.quantile_us(0.99),
            "p999_us": self.quantile_us(0.999),
            "max_us": self.hist.max() as f64 / 1e3,
            "cpu_seconds": self.cpu_seconds,
            "cpu_us_per_op": self.cpu_us_per_op(),
        })
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("static histogram bounds")
}

struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            hist: new_hist(),
            ok: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn add(&mut self, latency: Duration, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok += 1;
                self.hist.saturating_record(latency.as_nanos() as u64);
            }
            Err(e) => self.error(e),
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Runs `op` as configured and measures it.
pub async fn run(op: Op, cfg: &RunConfig) -> RunResult {
    let ticks = procfs::clock_ticks();
    let cpu = |pid: Option<u32>| pid.and_then(|p| procfs::cpu_seconds(p, ticks).ok());
    let cpu_before = cpu(cfg.pid);
    let start = Instant::now();
    let tally = match cfg.mode {
        Mode::Open { rate } => open_loop(op, cfg, Schedule { start, rate }).await,
        Mode::Closed { in_flight } => closed_loop(op, cfg, start, in_flight).await,
    };
    let elapsed = start.elapsed();
    let cpu_seconds = match (cpu_before, cpu(cfg.pid)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    RunResult {
        hist: tally.hist,
        ok: tally.ok,
        errors: tally.errors,
        first_error: tally.first_error,
        elapsed,
        cpu_seconds,
    }
}

async fn open_loop(op: Op, cfg: &RunConfig, schedule: Schedule) -> Tally {
    let total = schedule.count_within(cfg.duration);
    // The ticker is a plain thread: tokio's timer wheel has 1 ms granularity, thread::sleep is tens of µs.
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let ticker = std::thread::spawn(move || {
        for i in 0..total {
            let due = schedule.intended(i);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send((i, due)).is_err() {
                return;
            }
        }
    });
    let permits = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let mut tasks: JoinSet<(Duration, Result<(), String>)> = JoinSet::new();
    let mut tally = Tally::new();
    while let Some((i, due)) = rx.recv().await {
        while let Some(done) = tasks.try_join_next() {
            record(&mut tally, done);
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let fut = op(i);
        tasks.spawn(async move {
            let result = fut.await;
            drop(permit);
            (due.elapsed(), result)
        });
    }
    let _ = ticker.join();
    drain(&mut tasks, &mut tally, cfg.drain).await;
    tally
}

async fn closed_loop(op: Op, cfg: &RunConfig, start: Instant, in_flight: usize) -> Tally {
    let end = start + cfg.duration;
    let seq = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..in_flight.max(1) {
        let op = op.clone();
        let seq = seq.clone();
        workers.spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < end {
                let sent = Instant::now();
                let result = op(seq.fetch_add(1, Ordering::Relaxed)).await;
                tally.add(sent.elapsed(), result);
            }
            tally
        });
    }
    let mut tally = Tally::new();
    let deadline = end + cfg.drain;
    loop {
        let next = tokio::time::timeout_at(deadline.into(), workers.join_next()).await;
        match next {
            Ok(Some(Ok(t))) => tally.merge(t),
            Ok(Some(Err(e))) => tally.error(format!("worker failed: {e}")),
            Ok(None) => break,
            Err(_) => {
                let left = workers.len();
                workers.abort_all();
                for _ in 0..left {
                    tally.error("no answer before the drain deadline".into());
                }
                break;
            }
        }
    }
    tally
}

fn record(tally: &mut Tally, done: Result<(Duration, Result<(), String>), tokio::task::JoinError>) {
    match done {
        Ok((latency, result)) => tally.add(latency, result),
        Err(e) => tally.error(format!("request task failed: {e}")),
    }
}

async fn drain(
    tasks: &mut JoinSet<(Duration, Result<(), String>)>,
    tally: &mut Tally,
    limit: Duration,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(done)) => record(tally, done),
            Ok(None) => return,
            Err(_) => {
                let left = tasks.len();
                tasks.abort_all();
                for _ in 0..left {
                    tally.error("no answer before the drain deadline".into());
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_computed_from_the_start() {
        let start = Instant::now();
        let s = Schedule { start, rate: 3.0 };
        assert_eq!(s.intended(0), start);
        // 1/3 s does not add up exactly; the millionth request is still where it should be.
        let d = s.intended(3_000_000) - start;
        assert_eq!(d, Duration::from_secs(1_000_000));
        assert_eq!(s.count_within(Duration::from_secs(2)), 6);
        assert_eq!(s.count_within(Duration::from_millis(2100)), 7);
    }

    fn sleeper(ms: u64) -> Op {
        Arc::new(move |_| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            })
        })
    }

    #[tokio::test(flavor = "current_thread")]
    async fn open_loop_charges_queueing_to_latency() {
        // 200/s for 0.5 s against a server that takes 20 ms and holds one request at a time: requests queue,
        // and the latency seen must grow well past the 20 ms service time (no coordinated omission).
        let cfg = RunConfig {
            mode: Mode::Open { rate: 200.0 },
            duration: Duration::from_millis(500),
            pid: Some(std::process::id()),
            max_in_flight: 1,
            drain: Duration::from_secs(10),
        };
        let r = run(sleeper(20), &cfg).await;
        assert_eq!(r.ok, 100);
        assert_eq!(r.errors, 0);
        assert!(
            r.quantile_us(0.99) > 1_000_000.0,
            "p99 {}",
            r.quantile_us(0.99)
        );
        assert!(r.cpu_seconds.is_some());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn closed_loop_counts_and_errors() {
        let failing: Op = Arc::new(|i| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if i % 2 == 0 {
                    Ok(())
                } else {
                    Err(format!("odd {i}"))
                }
            })
        });
        let cfg = RunConfig {
            mode: Mode::Closed { in_flight: 2 },
            duration: Duration::from_millis(100),
            pid: None,
            max_in_flight: 2,
            drain: Duration::from_secs(5),
        };
        let r = run(failing, &cfg).await;
        assert!(r.ok > 5 && r.errors > 5, "{r:?}");
        assert!(r.first_error.unwrap().starts_with("odd"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stragglers_become_errors() {
        let cfg = RunConfig {
            mode: Mode::Open { rate: 100.0 },
            duration: Duration::from_millis(30),
            pid: None,
            max_in_flight: 10,
            drain: Duration::from_millis(50),
        };
        let r = run(sleeper(10_000), &cfg).await;
        assert_eq!(r.ok, 0);
        assert_eq!(r.errors, 3);
    }
}
