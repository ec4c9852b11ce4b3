//! `lifeguard serve`: one gRPC port (ext_authz, ext_proc, health), one admin HTTP port, graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use lifeguard_authz::{AuthorizationServer, AuthzService};
use lifeguard_core::DecisionSink;
use lifeguard_extproc::{ExtProcService, ExternalProcessorServer};
use lifeguard_telemetry::{AuditLog, AuditTarget, Metrics, OtlpExporter, Telemetry};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin;
use crate::store::{Store, load_for_serving};

/// Descriptors of envoy.service.auth.v3 and envoy.service.ext_proc.v3 (built by build.rs from envoy-types' protos).
const ENVOY_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_services.bin"));

#[derive(Args)]
pub struct ServeArgs {
    /// Bundle file or directory.
    #[arg(long, env = "LIFEGUARD_BUNDLE")]
    bundle: PathBuf,
    /// gRPC address for ext_authz, ext_proc and health.
    #[arg(long, default_value = "127.0.0.1:9000")]
    grpc: SocketAddr,
    /// Admin HTTP address: /healthz, /readyz, /metrics, POST /reload.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Write {"grpc": ADDR, "admin": ADDR} here once both ports listen (useful with port 0).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Audit log of decisions: `stdout`, `none`, or a file path.
    #[arg(long, default_value = "stdout")]
    audit: String,
    /// Do not watch the bundle for changes (reload only on SIGHUP or POST /reload).
    #[arg(long)]
    no_watch: bool,
    /// Longest wait for in-flight requests on SIGTERM.
    #[arg(long, default_value = "10")]
    drain_seconds: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub fn run(args: ServeArgs) -> ExitCode {
    init_logs(args.log_format);
    // Refuse to start on a bad bundle, with the same messages as `validate`.
    let first = match load_for_serving(&args.bundle) {
        Ok(s) => s,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "lifeguard: refusing to start: {} problem(s) in {}",
                problems.len(),
                args.bundle.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lifeguard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, first)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lifeguard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIFEGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(args: ServeArgs, first: lifeguard_policy::Snapshot) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let audit = match args.audit.as_str() {
        "none" => None,
        "stdout" => Some(AuditLog::start(AuditTarget::Stdout, metrics.clone())?),
        path => Some(
            AuditLog::start(AuditTarget::File(path.into()), metrics.clone())
                .with_context(|| format!("opening audit log {path}"))?,
        ),
    };
    // Spans go to OTEL_EXPORTER_OTLP_ENDPOINT when it is set; decisions always reach metrics and the audit log.
    let otlp = OtlpExporter::from_env(metrics.clone()).context("configuring the OTLP exporter")?;
    match &otlp {
        Some(_) => tracing::info!("exporting decision spans over OTLP"),
        None => tracing::info!("no OTLP endpoint set: decisions go to metrics and the audit log"),
    }
    let telemetry = Arc::new(Telemetry::new(metrics.clone(), audit, otlp));
    let sink: Arc<dyn DecisionSink> = telemetry.clone();
    tracing::info!(summary = %first.summary(), "bundle loaded");
    let store = Arc::new(Store::new(args.bundle.clone(), first, metrics.clone()));
    // Kept alive for the life of the server; dropping it stops watching.
    let _watcher = if args.no_watch {
        None
    } else {
        crate::store::watch(store.clone())
    };

    let grpc = TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("binding gRPC {}", args.grpc))?;
    let admin_listener = TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("binding admin {}", args.admin))?;
    let grpc_addr = grpc.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AuthorizationServer<AuthzService>>()
        .await;
    health
        .set_serving::<ExternalProcessorServer<ExtProcService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    // Server reflection lists Envoy's two services and health, so `buf curl` / grpcurl work without protos.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ENVOY_DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let authz = AuthzService::new(store.current.clone(), sink.clone());
    let extproc = ExtProcService::new(store.current.clone(), sink.clone());
    let mut stop_grpc = shutdown_rx.clone();
    // Small request/response exchanges: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms per call
    // when few calls are in flight. (Server::tcp_nodelay does not reach a custom incoming stream.)
    let incoming = TcpListenerStream::new(grpc).map(|conn| {
        conn.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    let grpc_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(AuthorizationServer::new(authz))
        .add_service(ExternalProcessorServer::new(extproc))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_grpc.wait_for(|s| *s).await;
        });
    let grpc_task = tokio::spawn(grpc_server);
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        store.clone(),
        metrics.clone(),
        shutdown_rx.clone(),
    ));

    if let Some(path) = &args.ready_file {
        let body =
            serde_json::json!({"grpc": grpc_addr.to_string(), "admin": admin_addr.to_string()})
                .to_string();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, path))
            .context("writing ready file")?;
    }
    tracing::info!(%grpc_addr, %admin_addr, "lifeguard listening");

    wait_for_signals(store.clone()).await;
    tracing::info!("shutting down: draining in-flight requests");
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let _ = shutdown_tx.send(true);
    let drain = Duration::from_secs(args.drain_seconds);
    match tokio::time::timeout(drain, grpc_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::warn!(
            seconds = args.drain_seconds,
            "drain timed out; closing remaining streams"
        ),
    }
    admin_task.abort();
    telemetry.shutdown(Duration::from_secs(2)).await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT; reloads the bundle on SIGHUP meanwhile.
async fn wait_for_signals(store: Arc<Store>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; waiting for Ctrl-C only");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = store.reload();
                });
            }
        }
    }
}
