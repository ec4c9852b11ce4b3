//! The audit log: one JSON line per decision, for SIEM pipelines that do not read traces. Lines are written by a
//! background thread; a full queue drops the line and counts it rather than slowing a request.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use lifeguard_core::DecisionRecord;

use crate::Metrics;

const QUEUE: usize = 8192;

/// Where audit lines go.
#[derive(Debug, Clone)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

pub struct AuditLog {
    tx: SyncSender<DecisionRecord>,
    metrics: Arc<Metrics>,
}

impl AuditLog {
    pub fn start(target: AuditTarget, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match &target {
            AuditTarget::Stdout => Box::new(std::io::stdout()),
            AuditTarget::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = sync_channel::<DecisionRecord>(QUEUE);
        std::thread::Builder::new()
            .name("lifeguard-audit".into())
            .spawn(move || {
                while let Ok(d) = rx.recv() {
                    write_line(&mut out, &d);
                    // Drain what queued meanwhile, then flush once, so a quiet server's lines are not held back.
                    while let Ok(next) = rx.try_recv() {
                        write_line(&mut out, &next);
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AuditLog { tx, metrics })
    }

    pub fn write(&self, d: DecisionRecord) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(d) {
            self.metrics.audit_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn write_line(out: &mut Box<dyn Write + Send>, d: &DecisionRecord) {
    let mut line = audit_line(d);
    line.push('\n');
    let _ = out.write_all(line.as_bytes());
}

/// One decision as a JSON object (`"audit": "lifeguard.decision"` tags the line for log routers).
pub fn audit_line(d: &DecisionRecord) -> String {
    let mut v = serde_json::to_value(d).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("audit".into(), serde_json::Value::from(d.phase.span_name()));
        if let Some(tp) = &d.traceparent {
            obj.insert("traceparent".into(), serde_json::Value::from(tp.as_str()));
        }
    }
    v.to_string()
}
