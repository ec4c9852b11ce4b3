//! Decisions as OTLP spans: one span per decision, named after its phase, with one child span per check laid
//! out one after the other inside it, joined to Envoy's trace through the request's W3C `traceparent`.
//!
//! Key design decision: [`OtlpExporter::export`] never waits. It clones the record into a queue bounded in spans
//! (`OTEL_BSP_MAX_QUEUE_SIZE`) and returns; one background tokio task turns records into spans, batches them
//! (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`) and sends them with opentelemetry-otlp over gRPC.
//! A span that cannot be queued (queue full, exporter stopped) or whose batch the collector did not accept
//! (down, slow past the timeout, refusing) is dropped and counted, both in [`OtlpExporter::dropped`] and in
//! [`Metrics::spans_dropped`]. The SDK's own `BatchSpanProcessor` is not used because it neither exposes its drop
//! count nor lets a span carry a start time, end time and remote parent taken from a record.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lifeguard_core::{
    CheckRecord, CheckVerdict, DecisionRecord, DecisionSink, FailureMode, Mode, ShadowOutcome,
};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanExporter, SpanLinks,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::Metrics;

/// Service name when neither `OTEL_SERVICE_NAME` nor `service.name` in `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "lifeguard";

/// How long `shutdown` and `flush` wait for the worker's answer beyond their own deadline (the worker stops
/// exporting at the deadline; only counting and closing the channel remain).
const REPLY_GRACE: Duration = Duration::from_millis(250);

/// Where and how to send spans. [`OtlpConfig::new`] gives the OpenTelemetry defaults; [`OtlpConfig::from_env`]
/// reads the standard `OTEL_*` variables.
///
/// Headers (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`) and compression (`OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION`)
/// are read from the environment by opentelemetry-otlp itself. Only `http://` endpoints work: the crate is
/// built without a TLS feature, and an `https://` endpoint is refused by [`OtlpExporter::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// gRPC endpoint of the collector, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Further resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    /// Deadline of one export call, retries included (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`).
    pub timeout: Duration,
    /// Spans waiting to be exported before new ones are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub max_queue_spans: usize,
    /// Spans per export call (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub max_batch_spans: usize,
    /// How long a span may wait for its batch to fill (`OTEL_BSP_SCHEDULE_DELAY`).
    pub schedule_delay: Duration,
}

impl OtlpConfig {
    /// The OpenTelemetry defaults for `endpoint`, with service name `lifeguard`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        OtlpConfig {
            endpoint: endpoint.into(),
            service_name: DEFAULT_SERVICE_NAME.to_string(),
            resource_attributes: Vec::new(),
            timeout: Duration::from_secs(10),
            max_queue_spans: 2048,
            max_batch_spans: 512,
            schedule_delay: Duration::from_millis(5000),
        }
    }

    /// Reads the process environment; `None` when no endpoint is set or tracing is turned off.
    pub fn from_env() -> Option<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`OtlpConfig::from_env`], reading variables through `var`. `None` when neither
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` nor `OTEL_EXPORTER_OTLP_ENDPOINT` is set (or both are empty),
    /// when `OTEL_SDK_DISABLED=true`, or when `OTEL_TRACES_EXPORTER` is set and does not list `otlp`.
    /// Unparsable numbers fall back to their defaults.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        if let Some(exporters) = get("OTEL_TRACES_EXPORTER")
            && !exporters.split(',').any(|e| e.trim() == "otlp")
        {
            return None;
        }
        let endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        let mut config = OtlpConfig::new(endpoint);

        config.resource_attributes = get("OTEL_RESOURCE_ATTRIBUTES")
            .map(|s| parse_resource_attributes(&s))
            .unwrap_or_default();
        let from_attributes = config
            .resource_attributes
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty());
        if let Some(name) = get("OTEL_SERVICE_NAME").or(from_attributes) {
            config.service_name = name;
        }

        let millis = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        if let Some(ms) = millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| millis("OTEL_EXPORTER_OTLP_TIMEOUT"))
        {
            config.timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = millis("OTEL_BSP_SCHEDULE_DELAY") {
            config.schedule_delay = Duration::from_millis(ms);
        }
        let count = |name: &str| get(name).and_then(|v| v.parse::<usize>().ok());
        if let Some(n) = count("OTEL_BSP_MAX_QUEUE_SIZE") {
            config.max_queue_spans = n;
        }
        if let Some(n) = count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
            config.max_batch_spans = n;
        }
        Some(config)
    }
}

/// `key1=value1,key2=value2`; entries without `=` or with an empty key are skipped.
fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|entry| {
            let (k, v) = entry.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Why an exporter could not be built or stopped.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("the OTLP exporter must be created inside a tokio runtime")]
    NoRuntime,
    #[error("OTLP exporter configuration: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("OTLP exporter did not finish within {0:?}")]
    Timeout(Duration),
}

/// Counters shared between the request path and the worker.
struct Shared {
    /// Spans handed to the queue and not yet taken by the worker.
    queued: AtomicUsize,
    max_queue: usize,
    dropped: AtomicU64,
    exported: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn drop_spans(&self, n: usize) {
        let n = n as u64;
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.metrics.spans_dropped.fetch_add(n, Ordering::Relaxed);
    }
}

enum Control {
    Flush {
        deadline: Instant,
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        deadline: Instant,
        reply: oneshot::Sender<()>,
    },
}

/// Sends every decision to an OTLP collector as a span with a child per check. Cheap to call from the request
/// path; see the module documentation for the queue and how drops are counted.
pub struct OtlpExporter {
    records: mpsc::UnboundedSender<DecisionRecord>,
    control: mpsc::UnboundedSender<Control>,
    /// The shutdown deadline, seen by an export call already in flight so it stops waiting in time.
    stop: watch::Sender<Option<Instant>>,
    shared: Arc<Shared>,
}

impl OtlpExporter {
    /// Builds an exporter from the `OTEL_*` environment ([`OtlpConfig::from_env`]); `Ok(None)` when no endpoint
    /// is configured. Must be called inside a tokio runtime.
    pub fn from_env(metrics: Arc<Metrics>) -> Result<Option<Self>, OtlpError> {
        OtlpConfig::from_env()
            .map(|config| Self::new(config, metrics))
            .transpose()
    }

    /// Builds an exporter for `config` and starts its background task on the current tokio runtime. Does not
    /// connect: a collector that is down shows up later as dropped spans, never as an error here.
    pub fn new(config: OtlpConfig, metrics: Arc<Metrics>) -> Result<Self, OtlpError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
        // Built inside the runtime: tonic spawns its channel's worker here.
        let _guard = runtime.enter();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.timeout)
            .build()?;
        exporter.set_resource(&resource(&config));

        let max_queue = config.max_queue_spans.max(1);
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            max_queue,
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            metrics,
        });
        let (records, records_rx) = mpsc::unbounded_channel();
        let (control, control_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(None);
        let worker = Worker {
            exporter,
            records: records_rx,
            control: control_rx,
            stop: stop_rx,
            shared: Arc::clone(&shared),
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("lifeguard")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            max_batch: config.max_batch_spans.clamp(1, max_queue),
            delay: config.schedule_delay,
            timeout: config.timeout,
            batch: Vec::new(),
        };
        runtime.spawn(worker.run());
        Ok(OtlpExporter {
            records,
            control,
            stop,
            shared,
        })
    }

    /// Queues `decision` for export. Never blocks or awaits: when the queue is full or the exporter has stopped,
    /// the decision's spans (one plus one per check) are dropped and counted.
    pub fn export(&self, decision: &DecisionRecord) {
        if let Some(n) = self.reserve(decision) {
            self.send(decision.clone(), n);
        }
    }

    /// [`OtlpExporter::export`] without the clone, for callers that own the record.
    pub fn export_owned(&self, decision: DecisionRecord) {
        if let Some(n) = self.reserve(&decision) {
            self.send(decision, n);
        }
    }

    fn reserve(&self, decision: &DecisionRecord) -> Option<usize> {
        let n = decision.checks.len().saturating_add(1);
        let before = self.shared.queued.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.shared.max_queue {
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
            self.shared.drop_spans(n);
            return None;
        }
        Some(n)
    }

    fn send(&self, decision: DecisionRecord, n: usize) {
        if self.records.send(decision).is_err() {
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
            self.shared.drop_spans(n);
        }
    }

    /// Spans dropped so far: queue full, exporter stopped, or a batch the collector did not accept.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Spans the collector accepted so far.
    pub fn exported(&self) -> u64 {
        self.shared.exported.load(Ordering::Relaxed)
    }

    /// Exports everything queued so far, giving up (and counting the rest as dropped) after `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), OtlpError> {
        let deadline = Instant::now() + timeout;
        let (reply, answer) = oneshot::channel();
        self.call(
            Control::Flush { deadline, reply },
            answer,
            deadline,
            timeout,
        )
        .await
    }

    /// Exports everything queued so far and stops the background task; spans still unsent at `timeout` (an
    /// export call in flight included) are dropped and counted, and later [`OtlpExporter::export`] calls only
    /// count drops. Returns within `timeout` plus a fraction of a second. Calling it again is a no-op.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), OtlpError> {
        let deadline = Instant::now() + timeout;
        self.stop.send_if_modified(|stop| {
            let earlier = stop.is_none_or(|at| deadline < at);
            if earlier {
                *stop = Some(deadline);
            }
            earlier
        });
        let (reply, answer) = oneshot::channel();
        self.call(
            Control::Shutdown { deadline, reply },
            answer,
            deadline,
            timeout,
        )
        .await
    }

    async fn call(
        &self,
        message: Control,
        answer: oneshot::Receiver<()>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), OtlpError> {
        if self.control.send(message).is_err() {
            // Already stopped: nothing left to flush.
            return Ok(());
        }
        match tokio::time::timeout_at(deadline + REPLY_GRACE, answer).await {
            Ok(_) => Ok(()),
            Err(_) => Err(OtlpError::Timeout(timeout)),
        }
    }
}

impl DecisionSink for OtlpExporter {
    fn record(&self, decision: DecisionRecord) {
        self.export_owned(decision);
    }
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("exported", &self.exported())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

fn resource(config: &OtlpConfig) -> Resource {
    Resource::builder_empty()
        .with_attributes(
            config
                .resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_attributes([
            KeyValue::new("telemetry.sdk.name", "opentelemetry"),
            KeyValue::new("telemetry.sdk.language", "rust"),
        ])
        .with_service_name(config.service_name.clone())
        .build()
}

/// The background half: takes records off the queue, turns them into spans and exports them in batches, one
/// export call at a time. While a call is in flight the queue fills, and new spans are dropped.
struct Worker {
    exporter: opentelemetry_otlp::SpanExporter,
    records: mpsc::UnboundedReceiver<DecisionRecord>,
    control: mpsc::UnboundedReceiver<Control>,
    stop: watch::Receiver<Option<Instant>>,
    shared: Arc<Shared>,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
    max_batch: usize,
    delay: Duration,
    timeout: Duration,
    batch: Vec<SpanData>,
}

impl Worker {
    async fn run(mut self) {
        let mut due: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                message = self.control.recv() => match message {
                    Some(Control::Flush { deadline, reply }) => {
                        self.drain_queue();
                        self.export_all(deadline).await;
                        due = None;
                        let _ = reply.send(());
                    }
                    Some(Control::Shutdown { deadline, reply }) => {
                        self.stop(deadline).await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        // The exporter was dropped without `shutdown`.
                        let deadline = Instant::now() + self.timeout;
                        self.stop(deadline).await;
                        return;
                    }
                },
                record = self.records.recv() => match record {
                    Some(record) => {
                        self.take(&record);
                        while self.batch.len() < self.max_batch {
                            match self.records.try_recv() {
                                Ok(record) => self.take(&record),
                                Err(_) => break,
                            }
                        }
                        if self.batch.len() >= self.max_batch {
                            self.export_full_batches().await;
                        }
                        if self.batch.is_empty() {
                            due = None;
                        } else if due.is_none() {
                            due = Some(Instant::now() + self.delay);
                        }
                    }
                    None => {
                        let deadline = Instant::now() + self.timeout;
                        self.stop(deadline).await;
                        return;
                    }
                },
                () = sleep_until(due), if due.is_some() => {
                    due = None;
                    let deadline = Instant::now() + self.timeout;
                    self.export_all(deadline).await;
                }
            }
        }
    }

    /// Moves one record from the queue into the batch as spans.
    fn take(&mut self, record: &DecisionRecord) {
        let n = record.checks.len().saturating_add(1);
        self.shared.queued.fetch_sub(n, Ordering::AcqRel);
        decision_spans(record, &self.ids, &self.scope, &mut self.batch);
    }

    fn drain_queue(&mut self) {
        while let Ok(record) = self.records.try_recv() {
            self.take(&record);
        }
    }

    async fn stop(&mut self, deadline: Instant) {
        self.drain_queue();
        self.export_all(deadline).await;
        // From here on `export` finds the channel closed and counts its spans as dropped; count what slipped in
        // between the drain and the close.
        self.records.close();
        self.drain_queue();
        let late = std::mem::take(&mut self.batch);
        self.shared.drop_spans(late.len());
        let _ = self.exporter.shutdown();
    }

    async fn export_full_batches(&mut self) {
        while self.batch.len() >= self.max_batch {
            let chunk: Vec<SpanData> = self.batch.drain(..self.max_batch).collect();
            let deadline = Instant::now() + self.timeout;
            self.export_chunk(chunk, deadline).await;
        }
    }

    /// Exports the whole batch before `deadline`; what is left at the deadline is dropped.
    async fn export_all(&mut self, deadline: Instant) {
        while !self.batch.is_empty() {
            let end = self.batch.len().min(self.max_batch);
            let chunk: Vec<SpanData> = self.batch.drain(..end).collect();
            if Instant::now() >= deadline {
                self.shared.drop_spans(chunk.len());
                continue;
            }
            let deadline = deadline.min(Instant::now() + self.timeout);
            self.export_chunk(chunk, deadline).await;
        }
    }

    /// One export call, abandoned at `deadline` or at the shutdown deadline, whichever comes first.
    async fn export_chunk(&self, chunk: Vec<SpanData>, deadline: Instant) {
        let n = chunk.len();
        let mut stop = self.stop.clone();
        let export = self.exporter.export(chunk);
        tokio::pin!(export);
        let result = loop {
            let limit = stop
                .borrow_and_update()
                .map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                result = tokio::time::timeout_at(limit, export.as_mut()) => break result,
                changed = stop.changed() => if changed.is_err() {
                    // The exporter is gone; no shutdown deadline will come.
                    break tokio::time::timeout_at(limit, export.as_mut()).await;
                },
            }
        };
        match result {
            Ok(Ok(())) => {
                self.shared.exported.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, spans = n, "OTLP export failed; spans dropped");
                self.shared.drop_spans(n);
            }
            Err(_) => {
                tracing::debug!(spans = n, "OTLP export timed out; spans dropped");
                self.shared.drop_spans(n);
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Parses a W3C `traceparent` header value (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`) into a
/// remote span context. `None` for anything malformed: wrong length or version `ff`, upper-case or non-hex
/// digits, all-zero ids. A later version's extra fields after the fourth are ignored, as the spec asks.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    let bytes = value.as_bytes();
    if bytes.len() < 55 {
        return None;
    }
    let version = value.get(0..2)?;
    if !is_lower_hex(version) || version == "ff" {
        return None;
    }
    if (version == "00" && bytes.len() != 55) || (bytes.len() > 55 && bytes[55] != b'-') {
        return None;
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let (trace_id, span_id, flags) = (value.get(3..35)?, value.get(36..52)?, value.get(53..55)?);
    if !(is_lower_hex(trace_id) && is_lower_hex(span_id) && is_lower_hex(flags)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::NONE,
    );
    context.is_valid().then_some(context)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The decision's span followed by one span per check, appended to `out`.
///
/// The trace is Envoy's when `traceparent` parses; otherwise a new root whose trace id is the decision id when
/// that is a valid trace id (so an audit line leads to its trace), else random. Spans are always marked sampled:
/// a decision is a security event whatever Envoy's sampler chose.
fn decision_spans(
    d: &DecisionRecord,
    ids: &RandomIdGenerator,
    scope: &InstrumentationScope,
    out: &mut Vec<SpanData>,
) {
    let remote = d.traceparent.as_deref().and_then(parse_traceparent);
    let (trace_id, parent_span_id, parent_is_remote) = match &remote {
        Some(parent) => (parent.trace_id(), parent.span_id(), true),
        None => {
            let own = Some(d.decision_id.as_str())
                .filter(|id| id.len() == 32 && is_lower_hex(id))
                .and_then(|id| TraceId::from_hex(id).ok())
                .filter(|id| *id != TraceId::INVALID);
            (
                own.unwrap_or_else(|| ids.new_trace_id()),
                SpanId::INVALID,
                false,
            )
        }
    };
    let context = |span_id| {
        SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    };

    let duration = micros(d.duration_us);
    let start = match u64::try_from(d.start_unix_nanos) {
        Ok(0) => SystemTime::now()
            .checked_sub(duration)
            .unwrap_or(UNIX_EPOCH),
        Ok(nanos) => UNIX_EPOCH
            .checked_add(Duration::from_nanos(nanos))
            .unwrap_or(UNIX_EPOCH),
        Err(_) => UNIX_EPOCH
            .checked_add(Duration::from_nanos(u64::MAX))
            .unwrap_or(UNIX_EPOCH),
    };
    let end = start.checked_add(duration).unwrap_or(start);

    let check_failed = d.checks.iter().any(|c| c.verdict == CheckVerdict::Error);
    let status = if d.failure.is_some() {
        Status::error("lifeguard could not decide; failure mode applied")
    } else if check_failed {
        Status::error("a check errored")
    } else {
        Status::Unset
    };

    let decision_span_id = ids.new_span_id();
    out.reserve(d.checks.len() + 1);
    out.push(SpanData {
        span_context: context(decision_span_id),
        parent_span_id,
        parent_span_is_remote: parent_is_remote,
        span_kind: SpanKind::Internal,
        name: Cow::Borrowed(d.phase.span_name()),
        start_time: start,
        end_time: end,
        attributes: decision_attributes(d),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    });

    let mut cursor = start;
    for check in &d.checks {
        let check_start = cursor.min(end);
        let check_end = check_start
            .checked_add(micros(check.latency_us))
            .unwrap_or(end)
            .min(end);
        cursor = check_end;
        out.push(SpanData {
            span_context: context(ids.new_span_id()),
            parent_span_id: decision_span_id,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Owned(format!("lifeguard.check {}", check.id)),
            start_time: check_start,
            end_time: check_end,
            attributes: check_attributes(check),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if check.verdict == CheckVerdict::Error {
                Status::error("check errored")
            } else {
                Status::Unset
            },
            instrumentation_scope: scope.clone(),
        });
    }
}

/// Microseconds as a duration; negative, NaN and infinite values count as zero, huge ones saturate.
fn micros(us: f64) -> Duration {
    let nanos = us * 1000.0;
    if nanos.is_finite() && nanos > 0.0 {
        // `as` saturates at u64::MAX.
        Duration::from_nanos(nanos as u64)
    } else {
        Duration::ZERO
    }
}

fn text(key: &'static str, value: &str) -> KeyValue {
    KeyValue::new(key, value.to_string())
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn mode_str(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Monitor => "monitor",
    }
}

fn failure_str(failure: FailureMode) -> &'static str {
    match failure {
        FailureMode::Closed => "closed",
        FailureMode::Open => "open",
    }
}

fn decision_attributes(d: &DecisionRecord) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(24);
    attrs.push(text("lifeguard.decision_id", &d.decision_id));
    attrs.push(text("lifeguard.key_id", &d.key_id));
    attrs.push(text("lifeguard.team", &d.team));
    attrs.push(text("lifeguard.env", &d.env));
    attrs.push(text("lifeguard.app", &d.app));
    attrs.push(text("lifeguard.route", &d.route));
    if !d.model.is_empty() {
        attrs.push(text("lifeguard.model", &d.model));
    }
    attrs.push(KeyValue::new("lifeguard.mode", mode_str(d.mode)));
    attrs.push(KeyValue::new("lifeguard.verdict", d.verdict.as_str()));
    if let Some(would_be) = d.would_be {
        attrs.push(KeyValue::new("lifeguard.would_be", would_be.as_str()));
    }
    if let Some(failure) = d.failure {
        attrs.push(KeyValue::new("lifeguard.failure", failure_str(failure)));
    }
    if let Some(status) = d.status {
        attrs.push(KeyValue::new("lifeguard.status", i64::from(status)));
    }
    if !d.code.is_empty() {
        attrs.push(text("lifeguard.code", &d.code));
    }
    attrs.push(text("lifeguard.bundle.name", &d.bundle.name));
    attrs.push(KeyValue::new(
        "lifeguard.bundle.version",
        int(d.bundle.version),
    ));
    attrs.push(text("lifeguard.bundle.hash", &d.bundle.hash));
    if let Some(ShadowOutcome {
        bundle,
        verdict,
        agrees,
    }) = &d.shadow
    {
        attrs.push(text("lifeguard.shadow.bundle.name", &bundle.name));
        attrs.push(KeyValue::new(
            "lifeguard.shadow.bundle.version",
            int(bundle.version),
        ));
        attrs.push(text("lifeguard.shadow.bundle.hash", &bundle.hash));
        attrs.push(KeyValue::new("lifeguard.shadow.verdict", verdict.as_str()));
        attrs.push(KeyValue::new("lifeguard.shadow.agrees", *agrees));
    }
    attrs
}

fn check_attributes(c: &CheckRecord) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(8);
    attrs.push(text("lifeguard.check.id", &c.id));
    attrs.push(KeyValue::new("lifeguard.check.verdict", c.verdict.as_str()));
    if !c.rules.is_empty() {
        let rules = c.rules.iter().cloned().map(StringValue::from).collect();
        attrs.push(KeyValue::new(
            "lifeguard.check.rules",
            Value::Array(Array::String(rules)),
        ));
    }
    if let Some(score) = c.score {
        attrs.push(KeyValue::new("lifeguard.check.score", f64::from(score)));
    }
    if let Some(threshold) = c.threshold {
        attrs.push(KeyValue::new(
            "lifeguard.check.threshold",
            f64::from(threshold),
        ));
    }
    attrs.push(KeyValue::new("lifeguard.check.latency_us", c.latency_us));
    if !c.reason.is_empty() {
        attrs.push(text("lifeguard.check.reason", &c.reason));
    }
    if let Some(failure) = c.failure {
        attrs.push(KeyValue::new(
            "lifeguard.check.failure",
            failure_str(failure),
        ));
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeguard_core::{BundleRef, Phase, Verdict};

    fn record(checks: Vec<CheckRecord>) -> DecisionRecord {
        DecisionRecord {
            decision_id: "0af7651916cd43dd8448eb211c80319c".to_string(),
            phase: Phase::Request,
            verdict: Verdict::Allow,
            would_be: None,
            mode: Mode::Enforce,
            failure: None,
            route: "chat".to_string(),
            key_id: "k1".to_string(),
            team: "t".to_string(),
            env: "prod".to_string(),
            app: "a".to_string(),
            model: String::new(),
            status: None,
            code: String::new(),
            bundle: BundleRef::default(),
            checks,
            traceparent: None,
            start_unix_nanos: 1_700_000_000_000_000_000,
            duration_us: 100.0,
            shadow: None,
        }
    }

    fn spans(d: &DecisionRecord) -> Vec<SpanData> {
        let mut out = Vec::new();
        let scope = InstrumentationScope::builder("t").build();
        decision_spans(d, &RandomIdGenerator::default(), &scope, &mut out);
        out
    }

    #[test]
    fn parses_valid_traceparent() {
        let c =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            c.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(c.span_id(), SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert!(c.is_sampled());
        assert!(c.is_remote());
        // A future version may append fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn rejects_malformed_traceparent() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\u{e9}",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn checks_are_laid_out_in_order_inside_the_decision() {
        let mut a = CheckRecord::new("identity", CheckVerdict::Pass);
        a.latency_us = 30.0;
        let mut b = CheckRecord::new("pii", CheckVerdict::Error);
        b.latency_us = 50.0;
        let mut c = CheckRecord::new("injection", CheckVerdict::Pass);
        c.latency_us = 1e9; // longer than the decision: clamped to its end
        let out = spans(&record(vec![a, b, c]));
        assert_eq!(out.len(), 4);
        let (parent, children) = (&out[0], &out[1..]);
        assert_eq!(parent.parent_span_id, SpanId::INVALID);
        assert_eq!(
            parent.span_context.trace_id(),
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
        );
        assert_eq!(children[0].start_time, parent.start_time);
        assert_eq!(children[0].end_time, children[1].start_time);
        assert_eq!(children[1].end_time, children[2].start_time);
        assert_eq!(children[2].end_time, parent.end_time);
        assert_eq!(
            children[0]
                .end_time
                .duration_since(children[0].start_time)
                .unwrap(),
            Duration::from_micros(30)
        );
        assert!(matches!(children[1].status, Status::Error { .. }));
        assert!(matches!(parent.status, Status::Error { .. }));
        for child in children {
            assert_eq!(child.parent_span_id, parent.span_context.span_id());
        }
    }

    #[test]
    fn odd_numbers_do_not_panic() {
        let mut c = CheckRecord::new("x", CheckVerdict::Pass);
        c.latency_us = f64::NAN;
        c.score = Some(f32::INFINITY);
        let mut d = record(vec![c]);
        d.start_unix_nanos = u128::MAX;
        d.duration_us = f64::INFINITY;
        d.decision_id = "not hex".to_string();
        d.traceparent = Some("00-".to_string());
        d.bundle.version = u64::MAX;
        let out = spans(&d);
        assert_eq!(out.len(), 2);
        assert!(out[0].span_context.trace_id() != TraceId::INVALID);
        d.start_unix_nanos = 0;
        d.duration_us = -5.0;
        assert_eq!(spans(&d).len(), 2);
    }

    #[test]
    fn config_from_vars() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(OtlpConfig::from_vars(vars(&[])), None);
        assert_eq!(
            OtlpConfig::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            None
        );
        let c = OtlpConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,bad, =x",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "nope"),
        ]))
        .unwrap();
        assert_eq!(c.endpoint, "http://b:4317");
        assert_eq!(c.service_name, "lifeguard");
        assert_eq!(
            c.resource_attributes,
            vec![("deployment.environment".to_string(), "prod".to_string())]
        );
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.max_queue_spans, 2048);
        let c = OtlpConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"),
        ]))
        .unwrap();
        assert_eq!(c.service_name, "from-attrs");
        let c = OtlpConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"),
            ("OTEL_SERVICE_NAME", "guard"),
        ]))
        .unwrap();
        assert_eq!(c.service_name, "guard");
        assert_eq!(
            OtlpConfig::from_vars(vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ])),
            None
        );
        assert_eq!(
            OtlpConfig::from_vars(vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
                ("OTEL_SDK_DISABLED", "true"),
            ])),
            None
        );
    }

    #[test]
    fn new_outside_a_runtime_is_an_error() {
        let err = OtlpExporter::new(OtlpConfig::new("http://127.0.0.1:4317"), Arc::default());
        assert!(matches!(err, Err(OtlpError::NoRuntime)));
    }

    #[test]
    fn exporter_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<OtlpExporter>();
    }
}
