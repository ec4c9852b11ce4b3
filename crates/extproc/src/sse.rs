//! Streamed (SSE) responses inspected event by event without leaking a redacted value.
//!
//! Text deltas are fed to one incremental scan per channel (a choice's content, a tool call's arguments, an
//! Anthropic content block). An event is released once every byte of text it carries is past the point where a
//! later chunk could still turn it into part of a match; events leave in order. Tool-call arguments are held to
//! the end of the stream, so they are judged whole before anything downstream can act on them.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;

use lifeguard_core::{Action, Finding};
use lifeguard_detect::{Scanner, StreamScan, redact};
use serde_json::Value;

/// One text stream inside the SSE stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ChannelKey {
    Content(u64),
    ToolCall(u64, u64),
    Block(u64),
}

struct Channel {
    scan: StreamScan,
    len: usize,
    safe: usize,
    findings: Vec<Finding>,
    tool_call: bool,
    /// Whole text, kept for tool calls (judged at the end) only.
    text: String,
}

struct Piece {
    key: ChannelKey,
    pointer: String,
    range: Range<usize>,
}

struct Event {
    raw: Vec<u8>,
    json: Option<Value>,
    pieces: Vec<Piece>,
}

/// Decides what each finding means on this route (block, redact, flag, nothing).
pub type ActionOf<'a> = dyn Fn(&Finding) -> Option<Action> + 'a;

/// What one chunk produced.
#[derive(Debug, Default)]
pub struct Step {
    /// Bytes to send downstream now (may be empty: held back).
    pub out: Vec<u8>,
    /// The finding that blocked the stream, when one did now.
    pub blocked: Option<Finding>,
}

/// Incremental state of one streamed response.
pub struct SseInspector {
    buf: Vec<u8>,
    pending: VecDeque<Event>,
    channels: HashMap<ChannelKey, Channel>,
    blocked: bool,
    redaction_key: Option<Vec<u8>>,
    /// Every finding, for the decision record.
    pub findings: Vec<Finding>,
    pub events: usize,
}

impl SseInspector {
    pub fn new(redaction_key: Option<Vec<u8>>) -> Self {
        SseInspector {
            buf: Vec::new(),
            pending: VecDeque::new(),
            channels: HashMap::new(),
            blocked: false,
            redaction_key,
            findings: Vec::new(),
            events: 0,
        }
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Texts of the tool calls seen so far (judged whole at the end of the stream).
    pub fn tool_call_texts(&self) -> Vec<&str> {
        self.channels
            .values()
            .filter(|c| c.tool_call)
            .map(|c| c.text.as_str())
            .collect()
    }

    /// Feeds a chunk of the response body.
    pub fn push(&mut self, scanner: &Scanner, chunk: &[u8], action_of: &ActionOf<'_>) -> Step {
        if self.blocked {
            return Step::default();
        }
        self.buf.extend_from_slice(chunk);
        let mut step = Step::default();
        while let Some(end) = event_end(&self.buf) {
            let raw: Vec<u8> = self.buf.drain(..end).collect();
            if let Some(f) = self.add_event(scanner, raw, action_of) {
                return self.block(f);
            }
        }
        self.release(false, &mut step.out);
        step
    }

    /// End of the stream: everything left is scanned to the end and released (or blocked).
    pub fn finish(
        &mut self,
        scanner: &Scanner,
        action_of: &ActionOf<'_>,
        tool_verdict: &dyn Fn(&[&str]) -> Option<String>,
    ) -> Step {
        if self.blocked {
            return Step::default();
        }
        if !self.buf.is_empty() {
            let raw = std::mem::take(&mut self.buf);
            if let Some(f) = self.add_event(scanner, raw, action_of) {
                return self.block(f);
            }
        }
        let mut blocker = None;
        'channels: for ch in self.channels.values_mut() {
            let step = ch.scan.finish();
            ch.safe = ch.len;
            for f in step.findings {
                match action_of(&f) {
                    Some(Action::Block) => {
                        self.findings.push(f.clone());
                        blocker = Some(f);
                        break 'channels;
                    }
                    Some(Action::Redact) => ch.findings.push(f.clone()),
                    _ => {}
                }
                self.findings.push(f);
            }
        }
        if let Some(f) = blocker {
            return self.block(f);
        }
        if let Some(rule) = tool_verdict(&self.tool_call_texts()) {
            let f = Finding {
                category: lifeguard_core::Category::ToolCalls,
                rule,
                family: "tool_call".into(),
                label: "TOOL_CALL".into(),
                span: 0..0,
                weight: 1.0,
            };
            return self.block(f);
        }
        let mut step = Step::default();
        self.release(true, &mut step.out);
        step
    }

    fn block(&mut self, f: Finding) -> Step {
        self.blocked = true;
        self.pending.clear();
        Step {
            out: Vec::new(),
            blocked: Some(f),
        }
    }

    /// Parses one event and feeds its texts; returns a finding that blocks, if any.
    fn add_event(
        &mut self,
        scanner: &Scanner,
        raw: Vec<u8>,
        action_of: &ActionOf<'_>,
    ) -> Option<Finding> {
        self.events += 1;
        let json = event_data(&raw).and_then(|d| serde_json::from_str::<Value>(d).ok());
        let mut pieces = Vec::new();
        if let Some(v) = &json {
            for (key, pointer, tool_call) in deltas(v) {
                let Some(text) = v.pointer(&pointer).and_then(Value::as_str) else {
                    continue;
                };
                let ch = self.channels.entry(key.clone()).or_insert_with(|| Channel {
                    scan: scanner.stream(),
                    len: 0,
                    safe: 0,
                    findings: Vec::new(),
                    tool_call,
                    text: String::new(),
                });
                let step = ch.scan.push(text);
                let start = ch.len;
                ch.len += text.len();
                if ch.tool_call {
                    ch.text.push_str(text);
                } else {
                    ch.safe = step.safe_len;
                }
                for f in step.findings {
                    match action_of(&f) {
                        Some(Action::Block) => {
                            self.findings.push(f.clone());
                            return Some(f);
                        }
                        Some(Action::Redact) => ch.findings.push(f.clone()),
                        _ => {}
                    }
                    self.findings.push(f);
                }
                pieces.push(Piece {
                    key,
                    pointer,
                    range: start..start + text.len(),
                });
            }
        }
        self.pending.push_back(Event { raw, json, pieces });
        None
    }

    /// Moves every event whose text is safe (or all, at the end) to `out`, redacted as the route says.
    fn release(&mut self, all: bool, out: &mut Vec<u8>) {
        while let Some(ev) = self.pending.front() {
            let ready = all
                || ev.pieces.iter().all(|p| {
                    self.channels
                        .get(&p.key)
                        .is_some_and(|c| !c.tool_call && p.range.end <= c.safe)
                });
            if !ready {
                break;
            }
            let Some(mut ev) = self.pending.pop_front() else {
                break;
            };
            let mut changed = false;
            if let Some(json) = ev.json.as_mut() {
                for p in &ev.pieces {
                    let Some(ch) = self.channels.get(&p.key) else {
                        continue;
                    };
                    let overlapping: Vec<&Finding> = ch
                        .findings
                        .iter()
                        .filter(|f| f.span.start < p.range.end && f.span.end > p.range.start)
                        .collect();
                    if overlapping.is_empty() {
                        continue;
                    }
                    let Some(Value::String(text)) = json.pointer_mut(&p.pointer) else {
                        continue;
                    };
                    *text = redact_piece(
                        text,
                        p.range.clone(),
                        &overlapping,
                        self.redaction_key.as_deref(),
                    );
                    changed = true;
                }
            }
            match (changed, &ev.json) {
                (true, Some(json)) => {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(json.to_string().as_bytes());
                    out.extend_from_slice(b"\n\n");
                }
                _ => out.extend_from_slice(&ev.raw),
            }
        }
    }
}

/// Redacts the part of a channel's findings that falls in this piece. A finding that starts here becomes its
/// placeholder; the continuation of one that started in an earlier event becomes nothing.
fn redact_piece(
    text: &str,
    range: Range<usize>,
    findings: &[&Finding],
    key: Option<&[u8]>,
) -> String {
    let local: Vec<Finding> = findings
        .iter()
        .map(|f| {
            let start = f.span.start.max(range.start) - range.start;
            let end = f.span.end.min(range.end) - range.start;
            let mut g = (*f).clone();
            g.span = start..end;
            if f.span.start < range.start {
                g.label = String::new();
            }
            g
        })
        .collect();
    let (continuing, starting): (Vec<Finding>, Vec<Finding>) =
        local.into_iter().partition(|f| f.label.is_empty());
    // Cut continuations first (they sit at the start of the piece), then placeholder the rest.
    let mut s = text.to_string();
    let mut cut = 0;
    for f in &continuing {
        let end = f.span.end.min(s.len());
        if s.is_char_boundary(end) {
            s.replace_range(..end, "");
            cut = cut.max(end);
        }
    }
    let shifted: Vec<Finding> = starting
        .into_iter()
        .filter(|f| f.span.start >= cut)
        .map(|mut f| {
            f.span = f.span.start - cut..f.span.end - cut;
            f
        })
        .collect();
    redact(&s, &shifted, key)
}

/// Byte index just past the first complete event (blank-line terminated), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `data:` payload of an event (single-line data, the shape every LLM provider sends).
fn event_data(raw: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(raw).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("data:").map(str::trim))
}

/// The text deltas an event carries: channel, JSON pointer, whether it is tool-call arguments.
fn deltas(v: &Value) -> Vec<(ChannelKey, String, bool)> {
    let mut out = Vec::new();
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        for (i, c) in choices.iter().enumerate() {
            let idx = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
            if c.pointer("/delta/content").is_some_and(Value::is_string) {
                out.push((
                    ChannelKey::Content(idx),
                    format!("/choices/{i}/delta/content"),
                    false,
                ));
            }
            if c.get("text").is_some_and(Value::is_string) {
                out.push((
                    ChannelKey::Content(idx),
                    format!("/choices/{i}/text"),
                    false,
                ));
            }
            if let Some(calls) = c.pointer("/delta/tool_calls").and_then(Value::as_array) {
                for (j, call) in calls.iter().enumerate() {
                    let tidx = call
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(j as u64);
                    if call
                        .pointer("/function/arguments")
                        .is_some_and(Value::is_string)
                    {
                        out.push((
                            ChannelKey::ToolCall(idx, tidx),
                            format!("/choices/{i}/delta/tool_calls/{j}/function/arguments"),
                            true,
                        ));
                    }
                }
            }
        }
    } else if v.get("type").and_then(Value::as_str) == Some("content_block_delta") {
        let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        if v.pointer("/delta/text").is_some_and(Value::is_string) {
            out.push((ChannelKey::Block(idx), "/delta/text".into(), false));
        } else if v
            .pointer("/delta/partial_json")
            .is_some_and(Value::is_string)
        {
            out.push((
                ChannelKey::ToolCall(u64::MAX, idx),
                "/delta/partial_json".into(),
                true,
            ));
        }
    } else if v.get("type").and_then(Value::as_str) == Some("response.output_text.delta")
        && v.get("delta").is_some_and(Value::is_string)
    {
        let idx = v.get("output_index").and_then(Value::as_u64).unwrap_or(0);
        out.push((ChannelKey::Content(idx), "/delta".into(), false));
    } else if v.get("type").and_then(Value::as_str)
        == Some("response.function_call_arguments.delta")
        && v.get("delta").is_some_and(Value::is_string)
    {
        let idx = v.get("output_index").and_then(Value::as_u64).unwrap_or(0);
        out.push((
            ChannelKey::ToolCall(u64::MAX - 1, idx),
            "/delta".into(),
            true,
        ));
    }
    out
}

/// A well-formed SSE error event that ends a blocked stream, OpenAI-shaped.
pub fn error_event(body: &str) -> Vec<u8> {
    format!("data: {body}\n\ndata: [DONE]\n\n").into_bytes()
}
