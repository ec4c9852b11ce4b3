//! The offline commands: validate, explain, keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use clap::Subcommand;
use lifeguard_core::{Mode, RequestFacts};
use lifeguard_policy::{CompileOptions, Snapshot, decide, hash_key, load};
use serde::Deserialize;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Mint a fresh virtual key: prints the key once, and the bundle entry with its hash.
    New {
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "")]
        team: String,
        #[arg(long, default_value = "")]
        env: String,
        #[arg(long, default_value = "")]
        app: String,
        /// Providers the key may reach (repeat).
        #[arg(long = "provider")]
        providers: Vec<String>,
        /// Model globs the key may use (repeat).
        #[arg(long = "model")]
        models: Vec<String>,
    },
}

pub fn validate(paths: &[PathBuf], resolve: bool) -> ExitCode {
    let mut ok = true;
    for path in paths {
        match load(
            path,
            CompileOptions {
                read_external: resolve,
            },
        ) {
            Ok(snap) => println!("{}: ok: {}", path.display(), snap.summary()),
            Err(problems) => {
                ok = false;
                for p in &problems {
                    println!("{p}");
                }
                println!("{}: invalid: {} problem(s)", path.display(), problems.len());
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub fn keys(cmd: KeysCommand) -> ExitCode {
    let KeysCommand::New {
        id,
        team,
        env,
        app,
        providers,
        models,
    } = cmd;
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "lgk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hex_hash(&key);
    let list = |v: &[String]| {
        format!(
            "[{}]",
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    println!("# The key, shown once. Hand it to the caller; Lifeguard stores only its hash.");
    println!("{key}");
    println!();
    println!("# Paste under `keys:` in the bundle:");
    println!("  - id: {id}");
    println!("    hash: sha256:{hash}");
    for (field, value) in [("team", &team), ("env", &env), ("app", &app)] {
        if !value.is_empty() {
            println!("    {field}: {value}");
        }
    }
    if !providers.is_empty() {
        println!("    providers: {}", list(&providers));
    }
    if !models.is_empty() {
        println!("    models: {}", list(&models));
    }
    ExitCode::SUCCESS
}

fn hex_hash(key: &str) -> String {
    hash_key(key).iter().map(|b| format!("{b:02x}")).collect()
}

/// A request described in JSON (`explain`, and each line of a `diff` corpus).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDoc {
    /// A label for reports.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "post")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: HashMap<String, String>,
    /// Envoy's per-route context extensions (`lifeguard_route`).
    #[serde(default)]
    pub context: HashMap<String, String>,
    /// The JSON body, for request inspection.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

impl RequestDoc {
    pub fn facts(&self) -> RequestFacts {
        RequestFacts {
            method: self.method.clone(),
            path: self.path.clone(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            context: self.context.clone(),
        }
    }
}

/// Loads a bundle without reading secrets (the offline commands), printing its problems on failure.
pub fn load_offline(path: &Path) -> Result<Snapshot, ExitCode> {
    load(
        path,
        CompileOptions {
            read_external: false,
        },
    )
    .map_err(|problems| {
        for p in &problems {
            eprintln!("{p}");
        }
        ExitCode::FAILURE
    })
}

fn post() -> String {
    "POST".into()
}

pub fn explain(bundle: &Path, request: &Path) -> ExitCode {
    let snap = match load_offline(bundle) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let req: RequestDoc = match std::fs::read_to_string(request)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", request.display());
            return ExitCode::FAILURE;
        }
    };
    let facts = req.facts();
    let d = decide(&snap, &facts, jiff::Timestamp::now());
    let verdict = match (&d.denial, d.mode) {
        (None, _) => "ALLOW".to_string(),
        (Some(x), Mode::Enforce) => format!("DENY {} {}", x.status, x.code),
        (Some(x), Mode::Monitor) => format!("ALLOW (monitor; would deny {} {})", x.status, x.code),
    };
    println!("decision: {verdict}");
    println!("bundle:   {} ({})", snap.bundle.name, snap.bundle.hash);
    println!(
        "route:    {}",
        d.route.map(|r| r.name.as_str()).unwrap_or("-")
    );
    if let Some(id) = &d.identity {
        println!(
            "identity: {} (team {:?}, env {:?}, app {:?})",
            id.id, id.team, id.env, id.app
        );
    }
    println!("mode:     {:?}, failure: {:?}", d.mode, d.failure);
    println!("checks:");
    for c in &d.checks {
        let rules = if c.rules.is_empty() {
            String::new()
        } else {
            format!(" [{}]", c.rules.join(", "))
        };
        println!(
            "  {:<10} {:<8} {:>8.1}µs  {}{}",
            c.id,
            c.verdict.as_str(),
            c.latency_us,
            c.reason,
            rules
        );
    }
    if d.key.and_then(|k| k.rate_limit).is_some() {
        println!("  rate_limit (not evaluated offline: it depends on live traffic)");
    }
    if d.enforced().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

pub fn read(path: &Path) -> Result<String, ExitCode> {
    std::fs::read_to_string(path).map_err(|e| {
        eprintln!("{}: {e}", path.display());
        ExitCode::FAILURE
    })
}

pub fn eval(
    bundle: &Path,
    corpus: &Path,
    split: Option<&str>,
    threshold: Option<f32>,
    json: bool,
) -> ExitCode {
    let snap = match load_offline(bundle) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let text = match read(corpus) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let threshold = threshold.unwrap_or(snap.injection.get(lifeguard_core::Tier::User));
    match lifeguard_detect::eval::run(&snap.scanner, &text, split, threshold) {
        Ok(report) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("{}: {}", corpus.display(), report);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", corpus.display());
            ExitCode::FAILURE
        }
    }
}

pub fn train(corpus: &Path, out: &Path) -> ExitCode {
    let text = match read(corpus) {
        Ok(t) => t,
        Err(code) => return code,
    };
    // Only `train` rows are learned from; `test` rows stay unseen for evaluation.
    let model = lifeguard_detect::model::train(&text);
    match std::fs::write(out, model.to_text()) {
        Ok(()) => {
            println!("wrote {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
