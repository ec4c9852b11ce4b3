//! The `lifeguard` binary: serve the gRPC services behind Envoy, and the offline commands a platform team uses
//! on its bundles (validate, explain, eval, keys, schema).

mod admin;
mod commands;
mod diff;
mod serve;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lifeguard",
    version,
    about = "Secures LLM traffic behind Envoy: ext_authz + ext_proc"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ext_authz, ext_proc, gRPC health and the admin HTTP port.
    Serve(serve::ServeArgs),
    /// Check bundles: a one-line summary per valid bundle, every problem of an invalid one.
    Validate {
        /// Bundle files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also read provider credentials, JWKS files and the redaction key, as `serve` does.
        #[arg(long)]
        resolve: bool,
    },
    /// Explain the ext_authz decision for a request described in JSON (method, path, headers), without a server.
    Explain {
        #[arg(long)]
        bundle: PathBuf,
        /// JSON file: {"method": "POST", "path": "/v1/chat/completions", "headers": {...}, "context": {...}, "body": {...}}
        #[arg(long)]
        request: PathBuf,
    },
    /// Replay a corpus of requests (JSONL: method, path, headers, context, body) against two bundles and print
    /// what changes: requests newly blocked or allowed, by route and check.
    Diff {
        #[arg(long)]
        old: PathBuf,
        #[arg(long)]
        new: PathBuf,
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Measure the bundle's detectors on a labelled corpus (JSONL: `label` attack/benign or secret/clean, or
    /// `entities` spans): TP, FP, TN, FN, precision, recall, F1, false-positive rate and MB/s.
    Eval {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        corpus: PathBuf,
        /// Only rows of this split (e.g. `test`).
        #[arg(long)]
        split: Option<String>,
        /// Attack threshold on the injection / jailbreak score (default: the bundle's user-tier threshold).
        #[arg(long)]
        threshold: Option<f32>,
        #[arg(long)]
        json: bool,
    },
    /// Retrain the injection model from the `train` rows of a labelled corpus and write its weights.
    Train {
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long, default_value = "crates/detect/model/injection.txt")]
        out: PathBuf,
    },
    /// Virtual keys.
    Keys {
        #[command(subcommand)]
        command: commands::KeysCommand,
    },
    /// Print the bundle's JSON Schema.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Validate { paths, resolve } => commands::validate(&paths, resolve),
        Command::Explain { bundle, request } => commands::explain(&bundle, &request),
        Command::Keys { command } => commands::keys(command),
        Command::Eval {
            bundle,
            corpus,
            split,
            threshold,
            json,
        } => commands::eval(&bundle, &corpus, split.as_deref(), threshold, json),
        Command::Train { corpus, out } => commands::train(&corpus, &out),
        Command::Diff {
            old,
            new,
            corpus,
            json,
        } => diff::run(&old, &new, &corpus, json),
        Command::Schema => {
            println!("{:#}", lifeguard_policy::json_schema());
            ExitCode::SUCCESS
        }
    }
}
