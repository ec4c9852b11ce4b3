//! `lifeguard-bench`: load for Lifeguard's gRPC port in Envoy's own protos, the echo floor to compare it with,
//! a stub LLM upstream, and `suite`, which runs everything `make bench` reports in BENCHMARKS.md.
//!
//! Key design decision: every latency is measured from the time a request was MEANT to leave (open loop on a
//! fixed schedule, recorded in an HDR histogram), and every Lifeguard figure is set beside the same client
//! against the echo floor on the same machine in the same run, so the numbers are ratios, not anecdotes.
#![forbid(unsafe_code)]

mod grpc;
mod http;
mod load;
mod procfs;
mod suite;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "lifeguard-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load one gRPC or HTTP target and print the result as JSON.
    Load(LoadArgs),
    /// The floor: answers Check OK and every ext_proc message CONTINUE.
    Echo(ServeArgs),
    /// A stub LLM upstream answering an OpenAI chat completion at once.
    Stub(ServeArgs),
    /// A gRPC sink that accepts OTLP exports and drops them.
    OtlpSink(ServeArgs),
    /// Write the benchmark bundle.
    GenBundle {
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        #[arg(long, default_value_t = 10_000)]
        phrases: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write an Envoy bootstrap template with some of Lifeguard's filters removed.
    EnvoyConfig {
        #[arg(long, default_value = "deploy/envoy/lifeguard.yaml")]
        template: PathBuf,
        #[arg(long, value_enum)]
        filters: workload::Filters,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the whole suite and write the report.
    Suite(suite::SuiteArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write {"addr": ADDR} here once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Workload {
    /// ext_authz Check calls.
    Check,
    /// Whole ext_proc exchanges (request headers, body, response headers, body).
    Extproc,
    /// HTTP/1.1 chat calls (through Envoy).
    Http,
}

#[derive(clap::Args)]
struct LoadArgs {
    /// gRPC port of Lifeguard or the echo floor; Envoy's listener for `--workload http`.
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum, default_value = "check")]
    workload: Workload,
    /// Request body size in bytes (ext_proc and http).
    #[arg(long, default_value_t = 4096)]
    body_size: usize,
    /// Put e-mail addresses (PII to redact) in the bodies.
    #[arg(long)]
    findings: bool,
    /// Answer with this many SSE chunks instead of one JSON body (ext_proc).
    #[arg(long, default_value_t = 0)]
    sse: usize,
    /// Open loop at this many requests per second (otherwise closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: requests in flight.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// HTTP/2 connections (gRPC).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=4))]
    connections: u64,
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    #[arg(long, default_value_t = 0.3)]
    warmup: f64,
    /// Process charged with the CPU time (utime+stime from /proc/<pid>/stat).
    #[arg(long)]
    pid: Option<u32>,
    /// Keys cycled through (`lgk-bench-<i>`).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lifeguard-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lifeguard-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn listen(args: &ServeArgs) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    if let Some(path) = &args.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::json!({"addr": addr.to_string()}).to_string(),
        )?;
        std::fs::rename(&tmp, path)?;
    }
    eprintln!("listening on {addr}");
    Ok(listener)
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Load(args) => {
            let result = load(&args).await?;
            println!("{}", result.to_json());
            Ok(())
        }
        Command::Echo(args) => grpc::serve_echo(listen(&args).await?).await,
        Command::Stub(args) => http::serve_stub(listen(&args).await?).await,
        Command::OtlpSink(args) => http::serve_otlp_sink(listen(&args).await?).await,
        Command::GenBundle { keys, phrases, out } => {
            std::fs::write(&out, workload::bundle(keys, phrases, 0))
                .with_context(|| format!("writing {}", out.display()))
        }
        Command::EnvoyConfig {
            template,
            filters,
            out,
        } => {
            let text = std::fs::read_to_string(&template)
                .with_context(|| format!("reading {}", template.display()))?;
            std::fs::write(&out, workload::envoy_variant(&text, filters)?)
                .with_context(|| format!("writing {}", out.display()))
        }
        Command::Suite(args) => suite::run(args).await,
    }
}

async fn load(args: &LoadArgs) -> anyhow::Result<load::RunResult> {
    let op = match args.workload {
        Workload::Check => grpc::check_op(
            grpc::Connections::open(args.target, args.connections as usize).await?,
            args.keys,
        ),
        Workload::Extproc => {
            let response = if args.sse > 0 {
                grpc::ResponseBody::Sse(workload::sse_chunks(args.sse))
            } else {
                grpc::ResponseBody::Json(workload::chat_answer(args.findings))
            };
            grpc::extproc_op(
                grpc::Connections::open(args.target, args.connections as usize).await?,
                grpc::Exchange {
                    request_body: workload::chat_body(args.body_size, args.findings),
                    response,
                    keys: args.keys,
                },
            )
        }
        Workload::Http => http::chat_op(
            args.target,
            workload::chat_body(args.body_size, args.findings),
            args.keys,
        ),
    };
    let mode = match args.rate {
        Some(rate) => load::Mode::Open { rate },
        None => load::Mode::Closed {
            in_flight: args.in_flight,
        },
    };
    suite::measure(
        op,
        mode,
        Duration::from_secs_f64(args.duration),
        Duration::from_secs_f64(args.warmup),
        args.pid,
    )
    .await
}
