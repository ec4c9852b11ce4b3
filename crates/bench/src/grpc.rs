//! Speaking Envoy's protos to a gRPC port, as Envoy does: ext_authz `Check` calls and whole ext_proc
//! exchanges, over a few HTTP/2 connections; and the echo floor, the cheapest correct answer to both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
    TrailersResponse,
};
use envoy_types::pb::google::rpc;
use futures::FutureExt as _;
use lifeguard_wire::{AUTHZ_NAMESPACE, Handover};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Endpoint};

use crate::load::Op;
use crate::workload::{self, PATH, ROUTE, TEAM};

/// Largest gRPC message either side accepts (a 1 MiB body plus its envelope fits with room to spare).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// `n` HTTP/2 connections to `addr`, used in turn.
#[derive(Clone)]
pub struct Connections {
    channels: Arc<Vec<Channel>>,
    next: Arc<AtomicUsize>,
}

impl Connections {
    pub async fn open(addr: SocketAddr, n: usize) -> anyhow::Result<Self> {
        let mut channels = Vec::new();
        for _ in 0..n.max(1) {
            let ch = Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            channels.push(ch);
        }
        Ok(Connections {
            channels: Arc::new(channels),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn pick(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.into(),
        raw_value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A Check as Envoy's ext_authz filter sends it for a chat call with benchmark key `i % keys`.
pub fn check_request(i: u64, keys: u64) -> CheckRequest {
    let key = workload::key_plain(i % keys.max(1));
    let headers: HashMap<String, String> = [
        (":authority", "llm.bench"),
        (":method", "POST"),
        (":path", PATH),
        (":scheme", "http"),
        ("content-type", "application/json"),
        ("x-request-id", "00000000-0000-4000-8000-000000000000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([("authorization".to_string(), format!("Bearer {key}"))])
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: i.to_string(),
                    method: "POST".into(),
                    path: PATH.into(),
                    host: "llm.bench".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("lifeguard_route".to_string(), ROUTE.to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
    }
}

/// Check calls; anything but an OK status is an error (every benchmark key is allowed).
pub fn check_op(conns: Connections, keys: u64) -> Op {
    Arc::new(move |i| {
        let mut client = AuthorizationClient::new(conns.pick());
        async move {
            let resp = client
                .check(check_request(i, keys))
                .await
                .map_err(|s| format!("Check failed: {:?} {}", s.code(), s.message()))?
                .into_inner();
            match resp.status {
                Some(rpc::Status { code: 0, .. }) => Ok(()),
                Some(rpc::Status { code, message, .. }) => {
                    Err(format!("Check denied: code {code} {message}"))
                }
                None => Err("Check answer without a status".into()),
            }
        }
        .boxed()
    })
}

/// The response side of an ext_proc exchange.
#[derive(Debug, Clone)]
pub enum ResponseBody {
    /// One buffered `application/json` body.
    Json(Vec<u8>),
    /// `text/event-stream`, one message per chunk.
    Sse(Vec<Vec<u8>>),
}

/// Everything one ext_proc exchange sends, built once and shared by every stream.
#[derive(Debug)]
pub struct Exchange {
    pub request_body: Vec<u8>,
    pub response: ResponseBody,
    pub keys: u64,
}

impl Exchange {
    fn request_headers(&self, i: u64) -> ProcessingRequest {
        let k = i % self.keys.max(1);
        let handover = Handover {
            decision_id: format!("bench-{i}"),
            key_id: workload::key_id(k),
            team: TEAM.into(),
            route: ROUTE.into(),
            provider: "openai".into(),
            mode: "enforce".into(),
            ..Default::default()
        };
        let metadata = Metadata {
            filter_metadata: [(AUTHZ_NAMESPACE.to_string(), handover.to_struct())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let headers = [
            (":authority", "llm.bench".to_string()),
            (":method", "POST".to_string()),
            (":path", PATH.to_string()),
            (":scheme", "http".to_string()),
            ("content-type", "application/json".to_string()),
            ("content-length", self.request_body.len().to_string()),
            ("accept-encoding", "gzip".to_string()),
        ];
        ProcessingRequest {
            request: Some(Msg::RequestHeaders(HttpHeaders {
                headers: Some(HeaderMap {
                    headers: headers.iter().map(|(k, v)| header(k, v)).collect(),
                }),
                end_of_stream: false,
                ..Default::default()
            })),
            metadata_context: Some(metadata),
            ..Default::default()
        }
    }

    fn response_headers(&self) -> ProcessingRequest {
        let (ctype, len) = match &self.response {
            ResponseBody::Json(b) => ("application/json", Some(b.len())),
            ResponseBody::Sse(_) => ("text/event-stream", None),
        };
        let mut headers = vec![header(":status", "200"), header("content-type", ctype)];
        if let Some(len) = len {
            headers.push(header("content-length", &len.to_string()));
        }
        ProcessingRequest {
            request: Some(Msg::ResponseHeaders(HttpHeaders {
                headers: Some(HeaderMap { headers }),
                end_of_stream: false,
                ..Default::default()
            })),
            ..Default::default()
        }
    }
}

fn body(bytes: &[u8], end_of_stream: bool, request: bool) -> ProcessingRequest {
    let b = HttpBody {
        body: bytes.to_vec(),
        end_of_stream,
        ..Default::default()
    };
    ProcessingRequest {
        request: Some(if request {
            Msg::RequestBody(b)
        } else {
            Msg::ResponseBody(b)
        }),
        ..Default::default()
    }
}

fn kind(a: &Option<Answer>) -> &'static str {
    match a {
        Some(Answer::RequestHeaders(_)) => "request_headers",
        Some(Answer::ResponseHeaders(_)) => "response_headers",
        Some(Answer::RequestBody(_)) => "request_body",
        Some(Answer::ResponseBody(_)) => "response_body",
        Some(Answer::RequestTrailers(_)) => "request_trailers",
        Some(Answer::ResponseTrailers(_)) => "response_trailers",
        Some(Answer::ImmediateResponse(_)) => "immediate_response",
        Some(_) => "other",
        None => "nothing",
    }
}

/// Sends one message and waits for its answer, which must be of the `want` kind (an immediate response, a
/// refusal, is an error here: every benchmark body is meant to pass, redacted or not).
async fn round(
    tx: &mpsc::Sender<ProcessingRequest>,
    inbound: &mut tonic::Streaming<ProcessingResponse>,
    msg: Option<ProcessingRequest>,
    want: &'static str,
) -> Result<ProcessingResponse, String> {
    if let Some(msg) = msg {
        tx.send(msg)
            .await
            .map_err(|_| format!("stream closed before {want}"))?;
    }
    let resp = inbound
        .message()
        .await
        .map_err(|s| format!("ext_proc error at {want}: {:?} {}", s.code(), s.message()))?
        .ok_or_else(|| format!("ext_proc stream ended before the {want} answer"))?;
    let got = kind(&resp.response);
    if got != want {
        let detail = match &resp.response {
            Some(Answer::ImmediateResponse(r)) => {
                format!(" (status {:?})", r.status.as_ref().map(|s| s.code))
            }
            _ => String::new(),
        };
        return Err(format!("expected a {want} answer, got {got}{detail}"));
    }
    Ok(resp)
}

async fn one_exchange(ch: Channel, x: Arc<Exchange>, i: u64) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(4);
    // The first message is queued before the call, so the stream opens with it as Envoy's does.
    tx.send(x.request_headers(i))
        .await
        .map_err(|_| "channel closed".to_string())?;
    let mut client = ExternalProcessorClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let mut inbound = client
        .process(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("ext_proc open failed: {:?} {}", s.code(), s.message()))?
        .into_inner();
    round(&tx, &mut inbound, None, "request_headers").await?;
    round(
        &tx,
        &mut inbound,
        Some(body(&x.request_body, true, true)),
        "request_body",
    )
    .await?;
    let headers = round(
        &tx,
        &mut inbound,
        Some(x.response_headers()),
        "response_headers",
    )
    .await?;
    let skip_body = headers
        .mode_override
        .is_some_and(|m| m.response_body_mode == BodySendMode::None as i32);
    if !skip_body {
        match &x.response {
            ResponseBody::Json(b) => {
                round(
                    &tx,
                    &mut inbound,
                    Some(body(b, true, false)),
                    "response_body",
                )
                .await?;
            }
            ResponseBody::Sse(chunks) => {
                let last = chunks.len().saturating_sub(1);
                for (n, c) in chunks.iter().enumerate() {
                    round(
                        &tx,
                        &mut inbound,
                        Some(body(c, n == last, false)),
                        "response_body",
                    )
                    .await?;
                }
            }
        }
    }
    // Half-close as Envoy does at the end of the HTTP stream, and let the server end its side.
    drop(tx);
    match inbound.message().await {
        Ok(None) => Ok(()),
        Ok(Some(extra)) => Err(format!(
            "unexpected {} answer after the exchange",
            kind(&extra.response)
        )),
        Err(s) => Err(format!(
            "ext_proc ended with {:?} {}",
            s.code(),
            s.message()
        )),
    }
}

/// Whole ext_proc exchanges, one stream each.
pub fn extproc_op(conns: Connections, x: Exchange) -> Op {
    let x = Arc::new(x);
    Arc::new(move |i| one_exchange(conns.pick(), x.clone(), i).boxed())
}

/// The floor: Check says OK, every ext_proc message is answered CONTINUE, nothing is looked at.
#[derive(Clone, Default)]
pub struct Echo;

#[tonic::async_trait]
impl Authorization for Echo {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            ..Default::default()
        }))
    }
}

fn continue_for(msg: Msg) -> Answer {
    match msg {
        Msg::RequestHeaders(_) => Answer::RequestHeaders(HeadersResponse::default()),
        Msg::ResponseHeaders(_) => Answer::ResponseHeaders(HeadersResponse::default()),
        Msg::RequestBody(_) => Answer::RequestBody(BodyResponse::default()),
        Msg::ResponseBody(_) => Answer::ResponseBody(BodyResponse::default()),
        Msg::RequestTrailers(_) => Answer::RequestTrailers(TrailersResponse::default()),
        Msg::ResponseTrailers(_) => Answer::ResponseTrailers(TrailersResponse::default()),
    }
}

#[tonic::async_trait]
impl ExternalProcessor for Echo {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, tonic::Status>>;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        // Same shape as Lifeguard's service: one reader task answering through a bounded channel.
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let Some(m) = msg.request else { break };
                let answer = ProcessingResponse {
                    response: Some(continue_for(m)),
                    ..Default::default()
                };
                if tx.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the echo floor on `listener` until the process ends.
pub async fn serve_echo(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(AuthorizationServer::new(Echo).max_decoding_message_size(MAX_MESSAGE))
        .add_service(ExternalProcessorServer::new(Echo).max_decoding_message_size(MAX_MESSAGE))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
        .context("echo server")
}

/// Whether the target rewrites a request body holding an e-mail address (is content inspection live?).
pub async fn probe_redaction(addr: SocketAddr) -> anyhow::Result<bool> {
    let conns = Connections::open(addr, 1).await?;
    let x = Exchange {
        request_body: workload::chat_body(4096, true),
        response: ResponseBody::Json(workload::chat_answer(false)),
        keys: 1,
    };
    let (tx, rx) = mpsc::channel(4);
    tx.send(x.request_headers(0)).await?;
    let mut client =
        ExternalProcessorClient::new(conns.pick()).max_decoding_message_size(MAX_MESSAGE);
    let mut inbound = client.process(ReceiverStream::new(rx)).await?.into_inner();
    round(&tx, &mut inbound, None, "request_headers")
        .await
        .map_err(anyhow::Error::msg)?;
    let answer = round(
        &tx,
        &mut inbound,
        Some(body(&x.request_body, true, true)),
        "request_body",
    )
    .await
    .map_err(anyhow::Error::msg)?;
    Ok(matches!(
        answer.response,
        Some(Answer::RequestBody(BodyResponse { response: Some(ref c) })) if c.body_mutation.is_some()
    ))
}
