//! Lifeguard's ext_proc service (`envoy.service.ext_proc.v3.ExternalProcessor/Process`): what goes into the
//! model and what comes out, inspected in flight and blocked, redacted or flagged.
//!
//! Key design decision: one [`Exchange`] per gRPC stream, advanced message by message, holding the one snapshot
//! the stream started with. The inbound stream is read in one task that answers through a bounded channel; a
//! peer that hangs up is a normal end (the decision is still recorded), and a message out of order ends the
//! stream with a gRPC error so Envoy applies the route's failure mode.
#![forbid(unsafe_code)]

mod exchange;
mod formats;
mod sse;

use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use lifeguard_core::DecisionSink;
use lifeguard_policy::Snapshot;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
pub use exchange::Exchange;
pub use formats::{BodyFormat, Located, pieces, redact_located, request_pieces, response_pieces};
pub use sse::SseInspector;

/// The ext_proc service. Cheap to clone.
#[derive(Clone)]
pub struct ExtProcService {
    snapshots: Arc<ArcSwap<Snapshot>>,
    sink: Arc<dyn DecisionSink>,
}

impl ExtProcService {
    pub fn new(snapshots: Arc<ArcSwap<Snapshot>>, sink: Arc<dyn DecisionSink>) -> Self {
        ExtProcService { snapshots, sink }
    }
}

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        // One snapshot for the whole stream, request and response alike, even if a reload lands meanwhile.
        let snapshot = self.snapshots.load_full();
        let sink = self.sink.clone();
        tokio::spawn(async move {
            let mut exchange = Exchange::new(&snapshot, traceparent);
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    // Envoy closed the stream, or the peer went away: both are normal ends.
                    Ok(None) | Err(_) => break,
                };
                let answer = exchange.on_message(msg);
                let fatal = answer.is_err();
                if tx.send(answer).await.is_err() || fatal {
                    break;
                }
            }
            for record in exchange.finish() {
                sink.record(record);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests;
