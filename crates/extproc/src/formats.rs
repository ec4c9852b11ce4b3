//! LLM body formats -> the text pieces to inspect, each with its trust tier and where it sits in the JSON (a JSON
//! pointer), so a redaction can rewrite exactly that string and the body stays valid JSON.

use lifeguard_core::{Finding, Tier};
use lifeguard_detect::redact;
use lifeguard_policy::Piece;
use serde_json::Value;

/// A string of a body: where it is, who wrote it, and whether it is a tool call's arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub pointer: String,
    pub tier: Tier,
    pub tool_call: bool,
}

/// The format a body was read as (recorded in the trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    OpenAiChat,
    OpenAiResponses,
    Anthropic,
    Completions,
    Unknown,
}

impl BodyFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyFormat::OpenAiChat => "openai.chat",
            BodyFormat::OpenAiResponses => "openai.responses",
            BodyFormat::Anthropic => "anthropic.messages",
            BodyFormat::Completions => "openai.completions",
            BodyFormat::Unknown => "json",
        }
    }
}

struct Collector {
    out: Vec<Located>,
}

impl Collector {
    fn push(&mut self, pointer: String, tier: Tier, tool_call: bool) {
        self.out.push(Located {
            pointer,
            tier,
            tool_call,
        });
    }

    /// Every string under `v` (used for unknown shapes and tool-call argument objects).
    fn all_strings(
        &mut self,
        v: &Value,
        pointer: &str,
        tier: Tier,
        tool_call: bool,
        skip_keys: &[&str],
    ) {
        match v {
            Value::String(_) => self.push(pointer.to_string(), tier, tool_call),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.all_strings(item, &format!("{pointer}/{i}"), tier, tool_call, skip_keys);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    if !skip_keys.contains(&k.as_str()) {
                        self.all_strings(
                            item,
                            &format!("{pointer}/{}", escape(k)),
                            tier,
                            tool_call,
                            skip_keys,
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// Message content: a string, or a list of parts (`text`, `input_text`, `output_text`, Anthropic blocks).
    fn content(&mut self, v: &Value, pointer: &str, tier: Tier) {
        match v {
            Value::String(_) => self.push(pointer.to_string(), tier, false),
            Value::Array(parts) => {
                for (i, part) in parts.iter().enumerate() {
                    let p = format!("{pointer}/{i}");
                    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                    match kind {
                        "tool_result" => {
                            if let Some(c) = part.get("content") {
                                self.content(c, &format!("{p}/content"), Tier::ToolResult);
                            }
                        }
                        "tool_use" => {
                            if let Some(input) = part.get("input") {
                                self.all_strings(input, &format!("{p}/input"), tier, true, &[]);
                            }
                        }
                        "document" | "search_result" => {
                            self.all_strings(
                                part,
                                &p,
                                Tier::Retrieved,
                                false,
                                &["type", "media_type", "citations"],
                            );
                        }
                        "function_call_output" => {
                            if part.get("output").is_some() {
                                self.push(format!("{p}/output"), Tier::ToolResult, false);
                            }
                        }
                        _ => {
                            if part.get("text").is_some_and(Value::is_string) {
                                self.push(format!("{p}/text"), tier, false);
                            } else if part.is_string() {
                                self.push(p, tier, false);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// RFC 6901 escaping of a key inside a JSON pointer.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn role_tier(role: &str) -> Tier {
    match role {
        "system" | "developer" => Tier::System,
        "assistant" | "model" => Tier::Assistant,
        "tool" | "function" => Tier::ToolResult,
        _ => Tier::User,
    }
}

/// The strings of a request body, by format.
pub fn request_pieces(body: &Value) -> (BodyFormat, Vec<Located>) {
    let mut c = Collector { out: Vec::new() };
    let format = if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        let anthropic = body.get("system").is_some()
            || body.get("anthropic_version").is_some()
            || looks_anthropic(messages);
        if let Some(system) = body.get("system") {
            c.content(system, "/system", Tier::System);
        }
        for (i, m) in messages.iter().enumerate() {
            let p = format!("/messages/{i}");
            let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
            let tier = role_tier(role);
            if let Some(content) = m.get("content") {
                c.content(content, &format!("{p}/content"), tier);
            }
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                for (j, call) in calls.iter().enumerate() {
                    if call
                        .pointer("/function/arguments")
                        .is_some_and(Value::is_string)
                    {
                        c.push(
                            format!("{p}/tool_calls/{j}/function/arguments"),
                            Tier::Assistant,
                            true,
                        );
                    }
                }
            }
        }
        if anthropic {
            BodyFormat::Anthropic
        } else {
            BodyFormat::OpenAiChat
        }
    } else if body.get("input").is_some() {
        if body.get("instructions").is_some_and(Value::is_string) {
            c.push("/instructions".into(), Tier::System, false);
        }
        match body.get("input") {
            Some(Value::String(_)) => c.push("/input".into(), Tier::User, false),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("/input/{i}");
                    match item.get("type").and_then(Value::as_str) {
                        Some("function_call_output") => {
                            if item.get("output").is_some_and(Value::is_string) {
                                c.push(format!("{p}/output"), Tier::ToolResult, false);
                            }
                        }
                        Some("function_call") => {
                            if item.get("arguments").is_some_and(Value::is_string) {
                                c.push(format!("{p}/arguments"), Tier::Assistant, true);
                            }
                        }
                        _ => {
                            let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                            if let Some(content) = item.get("content") {
                                c.content(content, &format!("{p}/content"), role_tier(role));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        BodyFormat::OpenAiResponses
    } else if let Some(prompt) = body.get("prompt") {
        match prompt {
            Value::String(_) => c.push("/prompt".into(), Tier::User, false),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if item.is_string() {
                        c.push(format!("/prompt/{i}"), Tier::User, false);
                    }
                }
            }
            _ => {}
        }
        BodyFormat::Completions
    } else {
        c.all_strings(body, "", Tier::User, false, &["model"]);
        BodyFormat::Unknown
    };
    (format, c.out)
}

fn looks_anthropic(messages: &[Value]) -> bool {
    messages.iter().any(|m| {
        m.get("content")
            .and_then(Value::as_array)
            .is_some_and(|parts| {
                parts.iter().any(|p| {
                    matches!(
                        p.get("type").and_then(Value::as_str),
                        Some("tool_result" | "tool_use")
                    )
                })
            })
    })
}

/// The strings of a (non-streamed) response body, by format.
pub fn response_pieces(body: &Value) -> (BodyFormat, Vec<Located>) {
    let mut c = Collector { out: Vec::new() };
    let format = if let Some(choices) = body.get("choices").and_then(Value::as_array) {
        let mut chat = false;
        for (i, choice) in choices.iter().enumerate() {
            let p = format!("/choices/{i}");
            if let Some(m) = choice.get("message") {
                chat = true;
                for field in ["content", "refusal"] {
                    if m.get(field).is_some_and(Value::is_string) {
                        c.push(format!("{p}/message/{field}"), Tier::Assistant, false);
                    }
                }
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for (j, call) in calls.iter().enumerate() {
                        if call
                            .pointer("/function/arguments")
                            .is_some_and(Value::is_string)
                        {
                            c.push(
                                format!("{p}/message/tool_calls/{j}/function/arguments"),
                                Tier::Assistant,
                                true,
                            );
                        }
                    }
                }
            } else if choice.get("text").is_some_and(Value::is_string) {
                c.push(format!("{p}/text"), Tier::Assistant, false);
            }
        }
        if chat {
            BodyFormat::OpenAiChat
        } else {
            BodyFormat::Completions
        }
    } else if let Some(output) = body.get("output").and_then(Value::as_array) {
        for (i, item) in output.iter().enumerate() {
            let p = format!("/output/{i}");
            match item.get("type").and_then(Value::as_str) {
                Some("function_call") => {
                    if item.get("arguments").is_some_and(Value::is_string) {
                        c.push(format!("{p}/arguments"), Tier::Assistant, true);
                    }
                }
                _ => {
                    if let Some(content) = item.get("content") {
                        c.content(content, &format!("{p}/content"), Tier::Assistant);
                    }
                }
            }
        }
        BodyFormat::OpenAiResponses
    } else if body.get("content").is_some_and(Value::is_array)
        && body.get("type").and_then(Value::as_str) == Some("message")
    {
        if let Some(content) = body.get("content") {
            c.content(content, "/content", Tier::Assistant);
        }
        BodyFormat::Anthropic
    } else {
        c.all_strings(body, "", Tier::Assistant, false, &["model", "id", "object"]);
        BodyFormat::Unknown
    };
    (format, c.out)
}

/// The pieces to inspect: each located string, borrowed from the body.
pub fn pieces<'a>(json: &'a Value, located: &[Located]) -> Vec<Piece<'a>> {
    located
        .iter()
        .map(|l| Piece {
            text: json
                .pointer(&l.pointer)
                .and_then(Value::as_str)
                .unwrap_or_default(),
            tier: l.tier,
            tool_call: l.tool_call,
        })
        .collect()
}

/// Rewrites the located strings that have findings with their placeholders; the body stays valid JSON.
pub fn redact_located(
    json: &mut Value,
    located: &[Located],
    redactions: &[Vec<Finding>],
    key: Option<&[u8]>,
) {
    let rewritten: Vec<(&str, String)> = located
        .iter()
        .zip(redactions)
        .filter(|(_, found)| !found.is_empty())
        .filter_map(|(l, found)| {
            let text = json.pointer(&l.pointer)?.as_str()?;
            Some((l.pointer.as_str(), redact(text, found, key)))
        })
        .collect();
    for (pointer, text) in rewritten {
        if let Some(slot) = json.pointer_mut(pointer) {
            *slot = Value::String(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiers(pieces: &[Located]) -> Vec<(&str, Tier, bool)> {
        pieces
            .iter()
            .map(|l| (l.pointer.as_str(), l.tier, l.tool_call))
            .collect()
    }

    #[test]
    fn openai_chat_request() {
        let body = json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "result"}
        ]});
        let (f, p) = request_pieces(&body);
        assert_eq!(f, BodyFormat::OpenAiChat);
        assert_eq!(
            tiers(&p),
            vec![
                ("/messages/0/content", Tier::System, false),
                ("/messages/1/content/0/text", Tier::User, false),
                (
                    "/messages/2/tool_calls/0/function/arguments",
                    Tier::Assistant,
                    true
                ),
                ("/messages/3/content", Tier::ToolResult, false),
            ]
        );
    }

    #[test]
    fn anthropic_request_with_tool_result() {
        let body = json!({"model": "claude", "system": "sys", "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "doc"}]}]},
            {"role": "user", "content": "question"}
        ]});
        let (f, p) = request_pieces(&body);
        assert_eq!(f, BodyFormat::Anthropic);
        assert_eq!(
            tiers(&p),
            vec![
                ("/system", Tier::System, false),
                (
                    "/messages/0/content/0/content/0/text",
                    Tier::ToolResult,
                    false
                ),
                ("/messages/1/content", Tier::User, false),
            ]
        );
    }

    #[test]
    fn responses_and_completions_and_unknown() {
        let (f, p) = request_pieces(&json!({"model": "m", "instructions": "sys", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "q"}]},
            {"type": "function_call_output", "call_id": "c", "output": "tool says"}
        ]}));
        assert_eq!(f, BodyFormat::OpenAiResponses);
        assert_eq!(
            tiers(&p),
            vec![
                ("/instructions", Tier::System, false),
                ("/input/0/content/0/text", Tier::User, false),
                ("/input/1/output", Tier::ToolResult, false),
            ]
        );
        let (f, p) = request_pieces(&json!({"model": "m", "prompt": ["a", "b"]}));
        assert_eq!(f, BodyFormat::Completions);
        assert_eq!(p.len(), 2);
        let (f, p) = request_pieces(&json!({"model": "m", "query": {"a/b": ["x", 1]}}));
        assert_eq!(f, BodyFormat::Unknown);
        assert_eq!(tiers(&p), vec![("/query/a~1b/0", Tier::User, false)]);
    }

    #[test]
    fn chat_response_with_tool_call() {
        let body = json!({"choices": [{"message": {"role": "assistant", "content": "ok", "tool_calls": [
            {"function": {"name": "fetch", "arguments": "{\"url\":\"https://x\"}"}}]}}]});
        let (f, p) = response_pieces(&body);
        assert_eq!(f, BodyFormat::OpenAiChat);
        assert_eq!(
            tiers(&p),
            vec![
                ("/choices/0/message/content", Tier::Assistant, false),
                (
                    "/choices/0/message/tool_calls/0/function/arguments",
                    Tier::Assistant,
                    true
                ),
            ]
        );
        let (f, p) = response_pieces(
            &json!({"type": "message", "content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "input": {"q": "x"}}]}),
        );
        assert_eq!(f, BodyFormat::Anthropic);
        assert_eq!(
            tiers(&p),
            vec![
                ("/content/0/text", Tier::Assistant, false),
                ("/content/1/input/q", Tier::Assistant, true)
            ]
        );
    }
}
