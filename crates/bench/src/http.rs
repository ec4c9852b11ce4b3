//! Plain HTTP pieces: the stub LLM upstream, an OTLP sink that accepts and drops spans, the HTTP/1.1 load
//! client that goes through Envoy, and `POST /reload`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::FutureExt as _;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use crate::load::Op;
use crate::workload;

/// Answers every request with a small OpenAI chat completion, as soon as the request body is read.
pub async fn serve_stub(listener: TcpListener) -> anyhow::Result<()> {
    let answer = Bytes::from(workload::chat_answer(false));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = answer.clone();
                async move {
                    // Read the whole request, as an LLM API would.
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    if body.windows(14).any(|w| w == b"\"stream\":true") {
                        return Ok::<_, Infallible>(sse_answer());
                    }
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(answer).map_err(|e| match e {}).boxed())
                            .unwrap_or_default(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Tokens of the streamed answer, one SSE event each, [`SSE_GAP`] apart (the first at once).
pub const SSE_EVENTS: usize = 20;
pub const SSE_GAP: Duration = Duration::from_millis(10);

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// An OpenAI chat SSE answer, streamed like a model generating tokens.
fn sse_answer() -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for i in 0..=SSE_EVENTS {
            let data = if i == SSE_EVENTS {
                "data: [DONE]\n\n".to_string()
            } else {
                format!(
                    "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}}}}]}}\n\n"
                )
            };
            if tx.send(Ok(Frame::data(Bytes::from(data)))).await.is_err() {
                return;
            }
            tokio::time::sleep(SSE_GAP).await;
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
        .unwrap_or_default()
}

/// Time from sending a streamed chat call to the first body bytes of its answer (time to first token).
pub async fn time_to_first_token(addr: SocketAddr, key: &str) -> anyhow::Result<Duration> {
    let mut sender = connect(addr).await?;
    // The same clean prose as the load (the benchmark bundle blocks 10,000 generated phrases).
    let mut body: serde_json::Value = serde_json::from_slice(&workload::chat_body(512, false))?;
    body["stream"] = serde_json::Value::Bool(true);
    let req = Request::post(workload::PATH)
        .header("host", "llm.bench")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body.to_string())))?;
    let start = std::time::Instant::now();
    let resp = sender.send_request(req).await?;
    anyhow::ensure!(resp.status() == 200, "HTTP {}", resp.status());
    let mut body = resp.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        if frame?.data_ref().is_some_and(|d| !d.is_empty()) && first.is_none() {
            first = Some(start.elapsed());
        }
    }
    first.context("the answer had no body")
}

/// A gRPC endpoint that answers any unary call (OTLP `Export`) with an empty message and status OK: a
/// collector that is up and infinitely fast.
pub async fn serve_otlp_sink(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => continue,
        };
        tokio::spawn(async move {
            let service = service_fn(|req: Request<Incoming>| async move {
                let _ = req.into_body().collect().await;
                let mut trailers = hyper::HeaderMap::new();
                trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                    Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                    Ok(Frame::trailers(trailers)),
                ];
                let mut resp = Response::new(StreamBody::new(futures::stream::iter(frames)));
                resp.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("application/grpc"),
                );
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `POST path` with an empty body on a fresh connection; the status code.
pub async fn post_empty(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut sender = connect(addr).await?;
    let req = Request::post(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .context("POST timed out")??;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Keep-alive HTTP/1.1 connections: one request at a time each, opened on demand, reused when idle.
#[derive(Clone)]
struct Pool {
    addr: SocketAddr,
    idle: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

impl Pool {
    async fn get(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let popped = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
            match popped {
                Some(s) if !s.is_closed() => return Ok(s),
                Some(_) => continue,
                None => return connect(self.addr).await.map_err(|e| format!("{e:#}")),
            }
        }
    }

    fn put(&self, s: SendRequest<Full<Bytes>>) {
        if let Ok(mut v) = self.idle.lock() {
            v.push(s);
        }
    }
}

/// A chat call through Envoy with benchmark key `i % keys`; anything but a 200 is an error.
pub fn chat_op(addr: SocketAddr, body: Vec<u8>, keys: u64) -> Op {
    let pool = Pool {
        addr,
        idle: Arc::new(Mutex::new(Vec::new())),
    };
    let body = Bytes::from(body);
    Arc::new(move |i| {
        let pool = pool.clone();
        let body = body.clone();
        async move {
            let mut sender = pool.get().await?;
            sender
                .ready()
                .await
                .map_err(|e| format!("connection not ready: {e}"))?;
            let req = Request::post(workload::PATH)
                .header("host", "llm.bench")
                .header("content-type", "application/json")
                .header(
                    "authorization",
                    format!("Bearer {}", workload::key_plain(i % keys.max(1))),
                )
                .body(Full::new(body))
                .map_err(|e| e.to_string())?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("HTTP request failed: {e}"))?;
            let status = resp.status().as_u16();
            let got = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            pool.put(sender);
            if status == 200 {
                Ok(())
            } else {
                Err(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&got[..got.len().min(200)])
                ))
            }
        }
        .boxed()
    })
}
