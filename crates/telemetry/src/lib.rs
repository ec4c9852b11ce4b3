//! Lifeguard's telemetry: every decision becomes an audit log line and Prometheus metrics (and, with an OTLP
//! endpoint, a span per decision with a child per check).
//!
//! Key design decision: recording never blocks or fails a request. The sink only updates atomic counters and
//! hands the record to a bounded queue drained off the request path; when the queue is full the record is dropped
//! and counted.
#![forbid(unsafe_code)]

mod audit;
mod metrics;
pub mod otlp;

pub use audit::{AuditLog, AuditTarget};
pub use metrics::Metrics;
pub use otlp::{OtlpConfig, OtlpError, OtlpExporter};

use std::sync::Arc;

use lifeguard_core::{DecisionRecord, DecisionSink};

/// The sink the services write to: metrics always, the audit log when configured.
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    audit: Option<AuditLog>,
    otlp: Option<OtlpExporter>,
}

impl Telemetry {
    pub fn new(metrics: Arc<Metrics>, audit: Option<AuditLog>, otlp: Option<OtlpExporter>) -> Self {
        Telemetry {
            metrics,
            audit,
            otlp,
        }
    }

    /// Flushes spans still queued (on shutdown), waiting at most `timeout`.
    pub async fn shutdown(&self, timeout: std::time::Duration) {
        if let Some(otlp) = &self.otlp {
            let _ = otlp.shutdown(timeout).await;
        }
    }
}

impl DecisionSink for Telemetry {
    fn record(&self, decision: DecisionRecord) {
        self.metrics.observe(&decision);
        if let Some(otlp) = &self.otlp {
            otlp.export(&decision);
        }
        if let Some(audit) = &self.audit {
            audit.write(decision);
        }
    }
}
