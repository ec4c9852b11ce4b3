//! `lifeguard-bench suite`: starts Lifeguard, the echo floor, the stub upstream and Envoy (pinned with
//! `taskset`), runs every scenario a few times, and writes the report with medians, ratios and budgets.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::grpc::{self, Connections, Exchange, ResponseBody};
use crate::load::{self, Mode, Op, RunConfig, RunResult};
use crate::workload::{self, Filters};
use crate::{http, procfs};

#[derive(clap::Args, Clone)]
pub struct SuiteArgs {
    /// The `lifeguard` binary (a release build).
    #[arg(long, default_value = "target/release/lifeguard")]
    lifeguard: PathBuf,
    /// Envoy; the through-Envoy section is skipped when it is missing.
    #[arg(long, default_value = ".venv/bin/envoy")]
    envoy: PathBuf,
    #[arg(long, default_value = "deploy/envoy/lifeguard.yaml")]
    envoy_template: PathBuf,
    /// Where the report goes.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Runs per figure (the report shows their median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    #[arg(long, default_value_t = 0.3)]
    warmup: f64,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 10_000)]
    phrases: usize,
    /// CPUs (a taskset list) for Lifeguard, the echo floor and Envoy; empty: no pinning.
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// CPUs for the stub upstream (this process is pinned by whoever starts it).
    #[arg(long, default_value = "1")]
    load_cpus: String,
    /// Requests in flight in closed-loop runs, over `connections` HTTP/2 connections.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=4))]
    connections: u64,
    /// Open-loop rate of Check latency runs.
    #[arg(long, default_value_t = 2000.0)]
    check_rate: f64,
    /// Open-loop rate of the ext_proc 4 KiB runs with and without reloads.
    #[arg(long, default_value_t = 500.0)]
    extproc_rate: f64,
    /// Open-loop rate of HTTP requests through Envoy.
    #[arg(long, default_value_t = 300.0)]
    http_rate: f64,
    /// SSE chunks per streamed answer.
    #[arg(long, default_value_t = 1000)]
    sse_chunks: usize,
    /// Sections to run (default all): grpc, reload, otlp, envoy.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Largest body of the body-size scenarios, in KiB (1024 = 1 MiB).
    #[arg(long, default_value_t = 1024)]
    max_body_kib: usize,
    /// The command line recorded in the report.
    #[arg(long, default_value = "make bench")]
    command: String,
    /// Where criterion keeps its results.
    #[arg(long, default_value = "target/criterion")]
    criterion_dir: PathBuf,
}

impl SuiteArgs {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

/// Runs `op` once untimed (warm-up) and then measured.
pub async fn measure(
    op: Op,
    mode: Mode,
    duration: Duration,
    warmup: Duration,
    pid: Option<u32>,
) -> anyhow::Result<RunResult> {
    if !warmup.is_zero() {
        let cfg = RunConfig {
            mode: Mode::Closed { in_flight: 4 },
            duration: warmup,
            pid: None,
            max_in_flight: 4,
            drain: Duration::from_secs(10),
        };
        let w = load::run(op.clone(), &cfg).await;
        if w.ok == 0 {
            bail!(
                "warm-up failed: {}",
                w.first_error
                    .unwrap_or_else(|| "no request completed".into())
            );
        }
    }
    let cfg = RunConfig {
        mode,
        duration,
        pid,
        max_in_flight: 4096,
        drain: Duration::from_secs(10),
    };
    Ok(load::run(op, &cfg).await)
}

// ------------------------------------------------------------------------------------------------
// Child processes
// ------------------------------------------------------------------------------------------------

/// A child process stopped by its PID (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(
        name: &str,
        cpus: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        dir: &Path,
    ) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        // taskset execs the program: the child's PID is the program's.
        let mut cmd = if cpus.is_empty() {
            Command::new(program)
        } else {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(program);
            c
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .current_dir(dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.into(),
            child,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits for a ready file `{"<field>": ADDR}`.
    async fn ready(
        &mut self,
        file: &Path,
        field: &str,
        limit: Duration,
    ) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(addr) = std::fs::read_to_string(file)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v.get(field)?.as_str()?.parse().ok())
            {
                return Ok(addr);
            }
            if !self.alive() {
                bail!("{} exited before it was ready:\n{}", self.name, self.tail());
            }
            if Instant::now() > deadline {
                bail!("{} not ready after {limit:?}:\n{}", self.name, self.tail());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Lifeguard {
    proc: Proc,
    grpc: SocketAddr,
    admin: SocketAddr,
    bundle: PathBuf,
    started: Duration,
}

async fn start_lifeguard(
    a: &SuiteArgs,
    dir: &Path,
    name: &str,
    bundle: &Path,
    otlp: Option<String>,
) -> anyhow::Result<Lifeguard> {
    let ready = dir.join(format!("{name}.ready.json"));
    let _ = std::fs::remove_file(&ready);
    let mut env = vec![
        ("OPENAI_API_KEY", "sk-bench".to_string()),
        ("LIFEGUARD_LOG", "warn".to_string()),
    ];
    if let Some(endpoint) = otlp {
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
    }
    let args: Vec<String> = [
        "serve",
        "--bundle",
        &bundle.display().to_string(),
        "--grpc",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--ready-file",
        &ready.display().to_string(),
        "--audit",
        "none",
        "--drain-seconds",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let t = Instant::now();
    let mut proc = Proc::spawn(name, &a.server_cpus, &a.lifeguard, &args, &env, dir)?;
    let grpc = proc.ready(&ready, "grpc", Duration::from_secs(120)).await?;
    let admin = proc.ready(&ready, "admin", Duration::from_secs(5)).await?;
    Ok(Lifeguard {
        proc,
        grpc,
        admin,
        bundle: bundle.to_path_buf(),
        started: t.elapsed(),
    })
}

async fn start_helper(
    a: &SuiteArgs,
    dir: &Path,
    what: &str,
    cpus: &str,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let ready = dir.join(format!("{what}.ready.json"));
    let me = std::env::current_exe()?;
    let args = vec![
        what.to_string(),
        "--ready-file".into(),
        ready.display().to_string(),
    ];
    let _ = a;
    let mut proc = Proc::spawn(what, cpus, &me, &args, &[], dir)?;
    let addr = proc.ready(&ready, "addr", Duration::from_secs(10)).await?;
    Ok((proc, addr))
}

// ------------------------------------------------------------------------------------------------
// Figures
// ------------------------------------------------------------------------------------------------

/// The median of each measure over several runs of one scenario.
#[derive(Debug, Clone, Default)]
struct Figure {
    name: String,
    target: String,
    mode: String,
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    cpu_us: Option<f64>,
    errors: u64,
    first_error: Option<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Figure {
    fn from_runs(name: &str, target: &str, mode: Mode, runs: &[RunResult]) -> Figure {
        let m = |f: &dyn Fn(&RunResult) -> f64| median(runs.iter().map(f).collect());
        let cpu: Vec<f64> = runs.iter().filter_map(RunResult::cpu_us_per_op).collect();
        Figure {
            name: name.into(),
            target: target.into(),
            mode: match mode {
                Mode::Open { rate } => format!("open {rate:.0}/s"),
                Mode::Closed { in_flight } => format!("closed {in_flight}"),
            },
            rate: m(&|r| r.rate()),
            p50: m(&|r| r.quantile_us(0.5)),
            p99: m(&|r| r.quantile_us(0.99)),
            p999: m(&|r| r.quantile_us(0.999)),
            cpu_us: (!cpu.is_empty()).then(|| median(cpu)),
            errors: runs.iter().map(|r| r.errors).sum(),
            first_error: runs.iter().find_map(|r| r.first_error.clone()),
        }
    }
}

struct Suite {
    a: SuiteArgs,
    figures: Vec<Figure>,
    notes: Vec<String>,
}

impl Suite {
    async fn scenario(
        &mut self,
        name: &str,
        target: &str,
        op: Op,
        mode: Mode,
        pid: Option<u32>,
        seconds: f64,
    ) -> anyhow::Result<Figure> {
        let mut runs = Vec::new();
        for _ in 0..self.a.runs.max(1) {
            let r = measure(
                op.clone(),
                mode,
                Duration::from_secs_f64(seconds),
                Duration::from_secs_f64(self.a.warmup),
                pid,
            )
            .await
            .with_context(|| format!("{name} on {target}"))?;
            runs.push(r);
        }
        let f = Figure::from_runs(name, target, mode, &runs);
        eprintln!(
            "  {name:<34} {target:<10} {:>10.0}/s p50 {:>8.1} µs p99 {:>8.1} µs cpu {:>8} µs/op errors {}",
            f.rate,
            f.p50,
            f.p99,
            f.cpu_us
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "-".into()),
            f.errors
        );
        self.figures.push(f.clone());
        Ok(f)
    }

    fn find(&self, name: &str, target: &str) -> Option<&Figure> {
        self.figures
            .iter()
            .rev()
            .find(|f| f.name == name && f.target == target)
    }
}

fn exchange(size: usize, findings: bool, sse: usize, keys: u64) -> Exchange {
    Exchange {
        request_body: workload::chat_body(size, findings),
        response: if sse > 0 {
            ResponseBody::Sse(workload::sse_chunks(sse))
        } else {
            ResponseBody::Json(workload::chat_answer(findings))
        },
        keys,
    }
}

fn size_label(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

// ------------------------------------------------------------------------------------------------
// The suite
// ------------------------------------------------------------------------------------------------

pub async fn run(mut a: SuiteArgs) -> anyhow::Result<()> {
    // Children run in a temp dir: make every path absolute first.
    a.lifeguard = std::path::absolute(&a.lifeguard)?;
    a.envoy = std::path::absolute(&a.envoy)?;
    anyhow::ensure!(
        a.lifeguard.is_file(),
        "no lifeguard binary at {} (cargo build --release -p lifeguard)",
        a.lifeguard.display()
    );
    let dir = std::env::temp_dir().join(format!("lifeguard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&a, &dir).await;
    if std::env::var_os("LIFEGUARD_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = result?;
    std::fs::write(&a.out, report).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

struct Extra {
    inspection_live: Option<bool>,
    startup: Duration,
    rss_start: Option<u64>,
    rss_peak: Option<u64>,
    reload: Option<ReloadFigures>,
    otlp: Vec<(String, Figure, Figure)>,
    envoy: Vec<Figure>,
    /// (filters, median time to first token) for a streamed answer through Envoy.
    ttft: Vec<(String, Duration)>,
}

struct ReloadFigures {
    base: Figure,
    with: Figure,
    ok: u64,
    refused: u64,
    mean_reload: Duration,
}

async fn run_in(a: &SuiteArgs, dir: &Path) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut s = Suite {
        a: a.clone(),
        figures: Vec::new(),
        notes: Vec::new(),
    };
    let bundle_text = [
        workload::bundle(a.keys, a.phrases, 0),
        workload::bundle(a.keys, a.phrases, 1),
    ];
    // The bundle gets a directory of its own: Lifeguard watches the bundle's directory, and logs or ready
    // files written next to it would trigger reloads.
    let bundle_dir = dir.join("bundle");
    std::fs::create_dir_all(&bundle_dir)?;
    let bundle = bundle_dir.join("bundle.yaml");
    std::fs::write(&bundle, &bundle_text[0])?;
    eprintln!(
        "bundle: {} keys, {} phrases, {:.1} MiB",
        a.keys,
        a.phrases,
        bundle_text[0].len() as f64 / 1048576.0
    );
    let lg = start_lifeguard(a, dir, "lifeguard", &bundle, None).await?;
    eprintln!(
        "lifeguard pid {} ready in {:.2?}",
        lg.proc.pid(),
        lg.started
    );
    let (echo, echo_addr) = start_helper(a, dir, "echo", &a.server_cpus).await?;
    let mut x = Extra {
        inspection_live: grpc::probe_redaction(lg.grpc).await.ok(),
        startup: lg.started,
        rss_start: procfs::peak_rss(lg.proc.pid()).ok(),
        rss_peak: None,
        reload: None,
        otlp: Vec::new(),
        envoy: Vec::new(),
        ttft: Vec::new(),
    };
    let secs = a.seconds;
    let closed = Mode::Closed {
        in_flight: a.in_flight,
    };
    let lg_conns = Connections::open(lg.grpc, a.connections as usize).await?;
    let echo_conns = Connections::open(echo_addr, a.connections as usize).await?;
    let targets = [
        ("echo", echo_conns.clone(), echo.pid()),
        ("lifeguard", lg_conns.clone(), lg.proc.pid()),
    ];

    if a.wants("grpc") {
        eprintln!("gRPC, direct:");
        for (t, c, pid) in &targets {
            s.scenario(
                "Check",
                t,
                grpc::check_op(c.clone(), a.keys),
                closed,
                Some(*pid),
                secs,
            )
            .await?;
        }
        for (t, c, pid) in &targets {
            let mode = Mode::Open { rate: a.check_rate };
            s.scenario(
                "Check",
                t,
                grpc::check_op(c.clone(), a.keys),
                mode,
                Some(*pid),
                secs,
            )
            .await?;
        }
        let mut sizes = vec![4096usize, 65536];
        if a.max_body_kib >= 1024 {
            sizes.push(a.max_body_kib << 10);
        }
        for size in sizes {
            let in_flight = if size > 65536 { 4 } else { a.in_flight };
            let mode = Mode::Closed { in_flight };
            for (t, c, pid) in &targets {
                let name = format!("ext_proc {} clean", size_label(size));
                let op = grpc::extproc_op(c.clone(), exchange(size, false, 0, a.keys));
                s.scenario(&name, t, op, mode, Some(*pid), secs).await?;
            }
            let name = format!("ext_proc {} with findings", size_label(size));
            let op = grpc::extproc_op(lg_conns.clone(), exchange(size, true, 0, a.keys));
            s.scenario(&name, "lifeguard", op, mode, Some(lg.proc.pid()), secs)
                .await?;
        }
        let name = format!("ext_proc SSE {} chunks", a.sse_chunks);
        for (t, c, pid) in &targets {
            let op = grpc::extproc_op(c.clone(), exchange(4096, false, a.sse_chunks, a.keys));
            s.scenario(
                &name,
                t,
                op,
                Mode::Closed { in_flight: 8 },
                Some(*pid),
                secs,
            )
            .await?;
        }
    }

    if a.wants("reload") {
        eprintln!("reload every second during load:");
        let mode = Mode::Open {
            rate: a.extproc_rate,
        };
        let run_secs = secs.max(3.0);
        let op = grpc::extproc_op(lg_conns.clone(), exchange(4096, false, 0, a.keys));
        let base = s
            .scenario(
                "ext_proc 4 KiB, no reloads",
                "lifeguard",
                op.clone(),
                mode,
                Some(lg.proc.pid()),
                run_secs,
            )
            .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let reloader = tokio::spawn(reload_loop(
            lg.admin,
            lg.bundle.clone(),
            bundle_text.clone(),
            stop.clone(),
        ));
        let with = s
            .scenario(
                "ext_proc 4 KiB, reload every 1 s",
                "lifeguard",
                op,
                mode,
                Some(lg.proc.pid()),
                run_secs,
            )
            .await;
        stop.store(true, Ordering::Relaxed);
        let (ok, refused, mean_reload) = reloader.await.unwrap_or((0, 0, Duration::ZERO));
        x.reload = Some(ReloadFigures {
            base,
            with: with?,
            ok,
            refused,
            mean_reload,
        });
    }
    x.rss_peak = procfs::peak_rss(lg.proc.pid()).ok();

    if a.wants("otlp") {
        eprintln!("OTLP export:");
        // A port nobody listens on: bound, then released.
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let (sink, sink_addr) = start_helper(a, dir, "otlp-sink", &a.load_cpus).await?;
        let variants = [
            ("off", None),
            ("collector down", Some(format!("http://{closed_port}"))),
            ("collector up (sink)", Some(format!("http://{sink_addr}"))),
        ];
        let mut base: Option<(Figure, Figure)> = None;
        for (label, endpoint) in variants {
            let name = format!("lifeguard-otlp-{}", label.split(' ').next().unwrap_or("x"));
            let other = start_lifeguard(a, dir, &name, &bundle, endpoint).await?;
            let conns = Connections::open(other.grpc, a.connections as usize).await?;
            let target = format!("otlp {label}");
            let c = s
                .scenario(
                    "Check",
                    &target,
                    grpc::check_op(conns.clone(), a.keys),
                    closed,
                    Some(other.proc.pid()),
                    secs,
                )
                .await?;
            let e = s
                .scenario(
                    "ext_proc 4 KiB clean",
                    &target,
                    grpc::extproc_op(conns, exchange(4096, false, 0, a.keys)),
                    closed,
                    Some(other.proc.pid()),
                    secs,
                )
                .await?;
            match &base {
                None => base = Some((c, e)),
                Some(_) => x.otlp.push((label.to_string(), c, e)),
            }
        }
        if let Some((c, e)) = base {
            x.otlp.insert(0, ("off".into(), c, e));
        }
        drop(sink);
    }

    if a.wants("envoy") {
        if a.envoy.is_file() {
            eprintln!(
                "through Envoy (open loop {:.0}/s, 4 KiB chat):",
                a.http_rate
            );
            let (stub, stub_addr) = start_helper(a, dir, "stub", &a.load_cpus).await?;
            let template = std::fs::read_to_string(&a.envoy_template)
                .with_context(|| format!("reading {}", a.envoy_template.display()))?;
            for filters in [Filters::None, Filters::Authz, Filters::Full] {
                let text = workload::envoy_variant(&template, filters)?;
                let envoy = start_envoy(a, dir, &text, filters, lg.grpc, stub_addr).await?;
                let op = http::chat_op(envoy.1, workload::chat_body(4096, false), a.keys);
                let f = s
                    .scenario(
                        &format!("HTTP via Envoy, {}", filters.label()),
                        "envoy",
                        op,
                        Mode::Open { rate: a.http_rate },
                        Some(envoy.0.pid()),
                        secs,
                    )
                    .await?;
                x.envoy.push(f);
                // Time to first token of a streamed answer, sequential calls on an idle Envoy.
                let mut samples = Vec::new();
                for _ in 0..15 {
                    match http::time_to_first_token(envoy.1, &workload::key_plain(7)).await {
                        Ok(d) => samples.push(d.as_secs_f64()),
                        Err(e) => eprintln!("  time to first token ({}): {e:#}", filters.label()),
                    }
                }
                if !samples.is_empty() {
                    x.ttft.push((
                        filters.label().to_string(),
                        Duration::from_secs_f64(median(samples)),
                    ));
                }
            }
            drop(stub);
        } else {
            s.notes.push(format!(
                "Envoy not found at {}: the through-Envoy section was skipped (`make setup` installs it).",
                a.envoy.display()
            ));
        }
    }
    drop(echo);
    drop(lg);
    let took = started.elapsed();
    Ok(report(&s, &x, took))
}

/// Rewrites the bundle (alternating two generations, so every reload swaps in a new hash) and POSTs /reload,
/// once a second until stopped. Returns (accepted, refused or failed, mean reload time).
async fn reload_loop(
    admin: SocketAddr,
    path: PathBuf,
    texts: [String; 2],
    stop: Arc<AtomicBool>,
) -> (u64, u64, Duration) {
    let texts = Arc::new(texts);
    let (mut ok, mut bad, mut total) = (0u64, 0u64, Duration::ZERO);
    let mut generation = 1usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (p, t) = (path.clone(), texts.clone());
        let g = generation;
        let written = tokio::task::spawn_blocking(move || {
            // Written beside the directory and renamed in, as a deploy tool would.
            let tmp = p
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."))
                .join("bundle.next");
            std::fs::write(&tmp, &t[g % 2]).and_then(|_| std::fs::rename(&tmp, &p))
        })
        .await;
        generation += 1;
        if !matches!(written, Ok(Ok(()))) {
            bad += 1;
            continue;
        }
        let t0 = Instant::now();
        match http::post_empty(admin, "/reload").await {
            Ok(200) => {
                ok += 1;
                total += t0.elapsed();
            }
            _ => bad += 1,
        }
    }
    let mean = if ok > 0 {
        total / ok as u32
    } else {
        Duration::ZERO
    };
    (ok, bad, mean)
}

async fn start_envoy(
    a: &SuiteArgs,
    dir: &Path,
    template: &str,
    filters: Filters,
    lifeguard: SocketAddr,
    upstream: SocketAddr,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut text = template.to_string();
    for (k, v) in [
        ("LISTEN_PORT", listen.port().to_string()),
        ("ADMIN_PORT", "0".to_string()),
        ("LIFEGUARD_GRPC_PORT", lifeguard.port().to_string()),
        ("UPSTREAM_PORT", upstream.port().to_string()),
    ] {
        text = text.replace(&format!("${{{k}}}"), &v);
    }
    anyhow::ensure!(
        !text.contains("${"),
        "unrendered variable left in the Envoy template"
    );
    let name = format!("envoy-{filters:?}").to_lowercase();
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, text)?;
    let args: Vec<String> = [
        "-c",
        &config.display().to_string(),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "-l",
        "warning",
        "--base-id",
        &(std::process::id() % 10_000).to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut proc = Proc::spawn(&name, &a.server_cpus, &a.envoy, &args, &[], dir)?;
    // Ready when a chat call goes through end to end.
    let probe = http::chat_op(listen, workload::chat_body(512, false), a.keys);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if !proc.alive() {
            bail!("{name} exited during start:\n{}", proc.tail());
        }
        match probe(0).await {
            Ok(()) => return Ok((proc, listen)),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{name} not answering after 30 s ({last}):\n{}", proc.tail())
}

// ------------------------------------------------------------------------------------------------
// The report
// ------------------------------------------------------------------------------------------------

fn us(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

struct Budget {
    what: String,
    target: String,
    measured: String,
    pass: Option<bool>,
}

fn report(s: &Suite, x: &Extra, took: Duration) -> String {
    let a = &s.a;
    let (model, cpus, kernel) = procfs::machine();
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# Benchmarks\n\nWritten by `{}` (scripts/bench.sh → `lifeguard-bench suite`); do not edit by hand. Every \
         figure is the median of {} run(s) of {:.1} s (after a {:.1} s warm-up); the whole suite took {:.0} s.\n",
        a.command,
        a.runs,
        a.seconds,
        a.warmup,
        took.as_secs_f64()
    );
    let _ = writeln!(r, "## Machine\n\n| | |\n|---|---|");
    let _ = writeln!(
        r,
        "| CPU | {model} |\n| logical CPUs (nproc) | {cpus} |\n| kernel | {kernel} |"
    );
    let _ = writeln!(
        r,
        "| pinning | Lifeguard, the echo floor and Envoy on CPU `{}`; the load tool and the stub upstream on CPU `{}` |",
        if a.server_cpus.is_empty() {
            "any"
        } else {
            &a.server_cpus
        },
        if a.load_cpus.is_empty() {
            "any"
        } else {
            &a.load_cpus
        }
    );
    let _ = writeln!(
        r,
        "| bundle | {} keys (`lgk-bench-<i>`, sha256), {} custom phrases (block), PII redact; compiled and serving in {:.2} s |",
        a.keys,
        a.phrases,
        x.startup.as_secs_f64()
    );
    let _ = writeln!(
        r,
        "| content inspection | {} |\n",
        match x.inspection_live {
            Some(true) => "live: a probe body with an e-mail address came back redacted",
            Some(false) =>
                "**NOT live**: a probe body with an e-mail address came back unchanged, so rows \"with findings\" \
                 measure clean-body cost only (the detector crate had not landed when this ran)",
            None => "unknown (the probe failed)",
        }
    );
    let _ = writeln!(
        r,
        "How to read: latency is from the time a request was *meant* to be sent (open loop) or was sent (closed \
         loop), into an HDR histogram, so a stall is charged to every request it delays. CPU is Lifeguard's own \
         `utime+stime` (from `/proc/<pid>/stat`, 10 ms ticks) over the run divided by the requests answered. \
         *Floor* is `lifeguard-bench echo`, a tonic server that answers Check OK and every ext_proc message \
         CONTINUE, driven by the same client over the same {} HTTP/2 connection(s): the cheapest gRPC answer this \
         machine can give.\n",
        a.connections
    );

    // Direct gRPC.
    let direct: Vec<&Figure> = s
        .figures
        .iter()
        .filter(|f| f.target == "echo" || f.target == "lifeguard")
        .collect();
    if !direct.is_empty() {
        let _ = writeln!(
            r,
            "## Lifeguard's gRPC port, direct\n\n| scenario | server | load | rate /s | p50 | p99 | p99.9 | CPU µs/req | errors | rate vs floor | CPU vs floor |\n|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"
        );
        for f in &direct {
            let floor = s
                .figures
                .iter()
                .find(|g| g.target == "echo" && g.mode == f.mode && g.name == f.name);
            let (rr, cr) = match (floor, f.target.as_str()) {
                (Some(g), "lifeguard") => (
                    format!("{:.0}%", 100.0 * f.rate / g.rate),
                    match (f.cpu_us, g.cpu_us) {
                        (Some(c), Some(e)) if e > 0.0 => format!("{:.2}×", c / e),
                        _ => "–".into(),
                    },
                ),
                _ => ("".into(), "".into()),
            };
            let _ = writeln!(
                r,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                f.name,
                f.target,
                f.mode,
                f.rate,
                us(f.p50),
                us(f.p99),
                us(f.p999),
                opt(f.cpu_us, |c| format!("{c:.1}")),
                f.errors,
                rr,
                cr
            );
        }
        let _ = writeln!(r);
        if let Some(f) = s
            .figures
            .iter()
            .find(|f| f.target == "lifeguard" && f.name.starts_with("ext_proc SSE"))
            && let Some(c) = f.cpu_us
        {
            let floor = s
                .find(&f.name, "echo")
                .and_then(|e| e.cpu_us)
                .map(|e| format!(" (floor: {:.2} µs)", e / a.sse_chunks as f64))
                .unwrap_or_default();
            let _ = writeln!(
                r,
                "SSE: {:.2} µs of Lifeguard CPU per chunk{floor} — the whole stream's CPU (request side included) \
                 divided by its {} chunks, each one ext_proc round trip.\n",
                c / a.sse_chunks as f64,
                a.sse_chunks
            );
        }
        let mut mbs = Vec::new();
        for f in s
            .figures
            .iter()
            .filter(|f| f.target == "lifeguard" && f.name.contains(" MiB"))
        {
            if let Some(c) = f.cpu_us {
                let bytes = a.max_body_kib as f64 * 1024.0;
                mbs.push(format!("{}: {:.0} MB/s", f.name, bytes / c));
            }
        }
        if !mbs.is_empty() {
            let _ = writeln!(
                r,
                "Inspection throughput, request body bytes per second of Lifeguard CPU (one core): {}.\n",
                mbs.join("; ")
            );
        }
    }

    if let Some(rl) = &x.reload {
        let _ = writeln!(
            r,
            "## Bundle reload every second under load\n\nThe bundle file is rewritten (alternating two \
             generations of the {}-key bundle) and `POST /reload` sent once a second while ext_proc 4 KiB \
             exchanges run open loop at {:.0}/s.\n\n| | p50 | p99 | p99.9 | CPU µs/req | errors |\n|---|--:|--:|--:|--:|--:|",
            a.keys, a.extproc_rate
        );
        for (label, f) in [("no reloads", &rl.base), ("reload every 1 s", &rl.with)] {
            let _ = writeln!(
                r,
                "| {label} | {} | {} | {} | {} | {} |",
                us(f.p50),
                us(f.p99),
                us(f.p999),
                opt(f.cpu_us, |c| format!("{c:.1}")),
                f.errors
            );
        }
        let _ = writeln!(
            r,
            "\nReloads accepted: {}, refused or failed: {}; mean `POST /reload` time {:.0} ms (a reload longer \
             than the 1 s period delays the next one). p99 with reloads / without: {:.2}×.\n",
            rl.ok,
            rl.refused,
            rl.mean_reload.as_secs_f64() * 1e3,
            rl.with.p99 / rl.base.p99
        );
    }

    let _ = writeln!(r, "## Memory\n");
    let _ = writeln!(
        r,
        "Peak RSS of Lifeguard (`VmHWM`) with {} keys and {} phrases: {} right after start, {} after the runs above{}.\n",
        a.keys,
        a.phrases,
        opt(x.rss_start.map(|b| b as f64), |b| mib(b as u64)),
        opt(x.rss_peak.map(|b| b as f64), |b| mib(b as u64)),
        if x.reload.is_some() {
            " (reloads included: old and new snapshot coexist while swapping)"
        } else {
            ""
        }
    );

    if !x.otlp.is_empty() {
        let _ = writeln!(
            r,
            "## OTLP span export\n\nA fresh Lifeguard per line, closed loop at {} in flight. *Collector down*: \
             `OTEL_EXPORTER_OTLP_ENDPOINT` points at a closed port on 127.0.0.1. *Collector up*: at \
             `lifeguard-bench otlp-sink`, which accepts every export and drops it.\n\n| export | Check /s | Check CPU µs | ext_proc 4 KiB /s | ext_proc CPU µs | throughput lost (Check / ext_proc) |\n|---|--:|--:|--:|--:|--:|",
            a.in_flight
        );
        let base = &x.otlp[0];
        for (label, c, e) in &x.otlp {
            let lost = if label == "off" {
                "–".to_string()
            } else {
                format!(
                    "{:.1}% / {:.1}%",
                    100.0 * (1.0 - c.rate / base.1.rate),
                    100.0 * (1.0 - e.rate / base.2.rate)
                )
            };
            let _ = writeln!(
                r,
                "| {label} | {:.0} | {} | {:.0} | {} | {lost} |",
                c.rate,
                opt(c.cpu_us, |v| format!("{v:.1}")),
                e.rate,
                opt(e.cpu_us, |v| format!("{v:.1}"))
            );
        }
        let _ = writeln!(r);
    }

    if !x.envoy.is_empty() {
        let _ = writeln!(
            r,
            "## Through Envoy\n\nHTTP/1.1 chat calls (4 KiB body, keep-alive connections opened as needed) at a \
             fixed {:.0}/s into Envoy 1.40 (`--concurrency 1`), to `lifeguard-bench stub`. The bootstraps are \
             `{}` with Lifeguard's filters removed as named. CPU is Envoy's own per request.\n\n| filters | rate /s | p50 | p99 | p99.9 | Envoy CPU µs/req | errors | p50 added | p50 ratio | p99 added |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
            a.http_rate,
            a.envoy_template.display()
        );
        let base = &x.envoy[0];
        for f in &x.envoy {
            let _ = writeln!(
                r,
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.2}× | {} |",
                f.name.trim_start_matches("HTTP via Envoy, "),
                f.rate,
                us(f.p50),
                us(f.p99),
                us(f.p999),
                opt(f.cpu_us, |c| format!("{c:.1}")),
                f.errors,
                us(f.p50 - base.p50),
                f.p50 / base.p50,
                us(f.p99 - base.p99)
            );
        }
        let _ = writeln!(
            r,
            "\nEnvoy's HTTP load client is this tool's (open loop, HDR), not wrk: wrk 4.1 is closed loop and would \
             hide queueing (coordinated omission).\n"
        );
    }
    if !x.ttft.is_empty() {
        let _ = writeln!(
            r,
            "### Time to first token\n\nA streamed answer ({} SSE events {} ms apart) through Envoy; median of 15 \
             sequential calls from request sent to first body bytes. With both filters the response is inspected \
             event by event (held back only while a match could still be forming).\n\n| filters | TTFT | added |\n|---|--:|--:|",
            http::SSE_EVENTS,
            http::SSE_GAP.as_millis()
        );
        let base = x.ttft[0].1;
        for (label, d) in &x.ttft {
            let _ = writeln!(
                r,
                "| {label} | {:.2} ms | {:+.2} ms |",
                d.as_secs_f64() * 1e3,
                (d.as_secs_f64() - base.as_secs_f64()) * 1e3
            );
        }
        let _ = writeln!(r);
    }

    // Budgets.
    let budgets = budgets(s, x);
    if !budgets.is_empty() {
        let _ = writeln!(
            r,
            "## Budgets\n\n| budget | target | measured | |\n|---|---|---|---|"
        );
        for b in &budgets {
            let _ = writeln!(
                r,
                "| {} | {} | {} | {} |",
                b.what,
                b.target,
                b.measured,
                match b.pass {
                    Some(true) => "met",
                    Some(false) => "**MISSED**",
                    None => "not measured",
                }
            );
        }
        let _ = writeln!(r);
    }

    let _ = writeln!(r, "## Criterion micro-benchmarks\n");
    let crit = criterion(&a.criterion_dir);
    if crit.is_empty() {
        let _ = writeln!(
            r,
            "No results in `{}`. Run `BENCH_CRITERION=1 make bench` (or `cargo bench --workspace` first) to fill this section.\n",
            a.criterion_dir.display()
        );
    } else {
        let _ = writeln!(
            r,
            "From `{}/**/new/estimates.json`.\n\n| benchmark | mean | median |\n|---|--:|--:|",
            a.criterion_dir.display()
        );
        for (name, mean, med) in crit {
            let _ = writeln!(r, "| {name} | {} | {} |", ns(mean), ns(med));
        }
        let _ = writeln!(r);
    }

    let errors: Vec<&Figure> = s.figures.iter().filter(|f| f.errors > 0).collect();
    if !errors.is_empty() || !s.notes.is_empty() {
        let _ = writeln!(r, "## Notes\n");
        for f in errors {
            let _ = writeln!(
                r,
                "- {} on {}: {} errors; first: `{}`",
                f.name,
                f.target,
                f.errors,
                f.first_error.as_deref().unwrap_or("?")
            );
        }
        for n in &s.notes {
            let _ = writeln!(r, "- {n}");
        }
    }
    r
}

fn ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} µs", v / 1e3)
    } else {
        format!("{v:.0} ns")
    }
}

fn budgets(s: &Suite, x: &Extra) -> Vec<Budget> {
    let a = &s.a;
    let mut out = Vec::new();
    let closed = format!("closed {}", a.in_flight);
    let pick = |name: &str, target: &str| {
        s.figures
            .iter()
            .find(|f| f.name == name && f.target == target && f.mode == closed)
    };
    if let (Some(lg), Some(echo)) = (pick("Check", "lifeguard"), pick("Check", "echo")) {
        out.push(Budget {
            what: "Check: Lifeguard CPU per call".into(),
            target: "< 25 µs".into(),
            measured: opt(lg.cpu_us, |c| format!("{c:.1} µs")),
            pass: lg.cpu_us.map(|c| c < 25.0),
        });
        out.push(Budget {
            what: "Check: throughput vs the echo floor".into(),
            target: "≥ 60%".into(),
            measured: format!(
                "{:.0}% ({:.0}/s vs {:.0}/s)",
                100.0 * lg.rate / echo.rate,
                lg.rate,
                echo.rate
            ),
            pass: Some(lg.rate / echo.rate >= 0.6),
        });
    }
    if let (Some(lg), Some(echo)) = (
        pick("ext_proc 4 KiB clean", "lifeguard"),
        pick("ext_proc 4 KiB clean", "echo"),
    ) && let (Some(c), Some(e)) = (lg.cpu_us, echo.cpu_us)
    {
        out.push(Budget {
            what: "ext_proc 4 KiB chat: CPU per stream vs the floor".into(),
            target: "≤ 2×".into(),
            measured: format!("{:.2}× ({c:.0} µs vs {e:.0} µs)", c / e),
            pass: Some(c / e <= 2.0),
        });
    }
    if a.max_body_kib >= 1024 {
        let name = format!("ext_proc {} clean", size_label(a.max_body_kib << 10));
        let f = s
            .figures
            .iter()
            .find(|f| f.name == name && f.target == "lifeguard");
        let mbs = f
            .and_then(|f| f.cpu_us)
            .map(|c| a.max_body_kib as f64 * 1024.0 / c);
        out.push(Budget {
            what: format!(
                "{} body with {} phrases",
                size_label(a.max_body_kib << 10),
                a.phrases
            ),
            target: "≥ 200 MB/s".into(),
            measured: opt(mbs, |m| format!("{m:.0} MB/s")),
            pass: mbs.map(|m| m >= 200.0),
        });
    }
    let sse = s
        .figures
        .iter()
        .find(|f| f.target == "lifeguard" && f.name.starts_with("ext_proc SSE"))
        .and_then(|f| f.cpu_us)
        .map(|c| c / a.sse_chunks as f64);
    if a.wants("grpc") {
        out.push(Budget {
            what: "SSE: CPU per chunk".into(),
            target: "< 10 µs".into(),
            measured: opt(sse, |c| format!("{c:.2} µs")),
            pass: sse.map(|c| c < 10.0),
        });
    }
    if let Some(rl) = &x.reload {
        let ratio = rl.with.p99 / rl.base.p99;
        out.push(Budget {
            what: "reload every second: errors".into(),
            target: "0".into(),
            measured: format!("{} ({} reloads)", rl.with.errors, rl.ok),
            pass: Some(rl.with.errors == 0 && rl.ok > 0),
        });
        out.push(Budget {
            what: "reload every second: p99 vs no reloads".into(),
            target: "within 10%".into(),
            measured: format!(
                "{:+.0}% ({} vs {})",
                100.0 * (ratio - 1.0),
                us(rl.with.p99),
                us(rl.base.p99)
            ),
            pass: Some(ratio <= 1.10),
        });
    }
    if x.otlp.len() > 1 {
        let base = &x.otlp[0];
        for (label, c, e) in &x.otlp[1..] {
            let lost = (1.0 - c.rate / base.1.rate).max(1.0 - e.rate / base.2.rate);
            out.push(Budget {
                what: format!("OTLP on ({label}): throughput lost"),
                target: "≤ 10%".into(),
                measured: format!("{:.1}% (worse of Check and ext_proc)", 100.0 * lost),
                pass: Some(lost <= 0.10),
            });
        }
    }
    out.push(Budget {
        what: format!("peak RSS, {} keys and {} phrases", a.keys, a.phrases),
        target: "< 256 MiB".into(),
        measured: opt(x.rss_peak.map(|b| b as f64), |b| mib(b as u64)),
        pass: x.rss_peak.map(|b| b < 256 << 20),
    });
    out
}

/// `(benchmark id, mean ns, median ns)` from every `new/estimates.json` under `dir`.
fn criterion(dir: &Path) -> Vec<(String, f64, f64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "report") {
                    continue;
                }
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "estimates.json")
                && p.parent()
                    .and_then(|q| q.file_name())
                    .is_some_and(|n| n == "new")
            {
                let Some(v) = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                else {
                    continue;
                };
                let get = |k: &str| v.get(k)?.get("point_estimate")?.as_f64();
                let id = p
                    .parent()
                    .and_then(Path::parent)
                    .and_then(|b| b.strip_prefix(dir).ok())
                    .map(|b| b.display().to_string())
                    .unwrap_or_default();
                if let (Some(mean), Some(med)) = (get("mean"), get("median")) {
                    out.push((id, mean, med));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn criterion_estimates_are_found() {
        let dir = std::env::temp_dir().join(format!("lgb-crit-{}", std::process::id()));
        let new = dir.join("scan/1 MiB/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"point_estimate":1500.0},"median":{"point_estimate":1400.0}}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("scan/1 MiB/base")).unwrap();
        let found = criterion(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found, vec![("scan/1 MiB".to_string(), 1500.0, 1400.0)]);
    }
}
