//! The admin HTTP port: liveness, readiness, Prometheus metrics and `POST /reload`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use lifeguard_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::store::Store;

pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (store, metrics) = (store.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, store.clone(), metrics.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => {
            let snap = store.current.load();
            let body = serde_json::json!({
                "status": "ready",
                "bundle": snap.bundle.name,
                "version": snap.bundle.version,
                "hash": snap.bundle.hash,
            });
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        (&Method::POST, "/reload") => {
            let result = tokio::task::spawn_blocking(move || store.reload()).await;
            match result {
                Ok(Ok(summary)) => reply(
                    StatusCode::OK,
                    "application/json",
                    serde_json::json!({"status": "ok", "summary": summary}).to_string(),
                ),
                Ok(Err(problems)) => {
                    let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                    reply(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "application/json",
                        serde_json::json!({"status": "refused", "problems": list}).to_string(),
                    )
                }
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "reload task failed\n".into(),
                ),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}
