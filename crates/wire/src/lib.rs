//! Small helpers for Envoy's wire types that both gRPC services need: header options, `google.protobuf.Struct`
//! metadata, OpenAI-shaped error bodies, and the fields ext_authz hands over to ext_proc.
//!
//! Key design decision: the hand-over is a contract between two services that Envoy carries as dynamic metadata
//! (`envoy.filters.http.ext_authz`, forwarded to ext_proc through `metadata_options.forwarding_namespaces`), so its
//! field names live here, in one place, and both sides read and write them only through [`Handover`].
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value};

/// Dynamic metadata namespace ext_authz writes and ext_proc reads.
pub const AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// Header carrying the decision id upstream and back to the caller.
pub const DECISION_HEADER: &str = "x-lifeguard-decision-id";
/// Header listing the checks that flagged a request or response.
pub const FLAGS_HEADER: &str = "x-lifeguard-flags";

/// A header to set, replacing any value already there. `raw` puts the value in `raw_value` (ext_proc wants that).
pub fn set_header(key: &str, value: &str, raw: bool) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: if raw {
                String::new()
            } else {
                value.to_string()
            },
            raw_value: if raw {
                value.as_bytes().to_vec()
            } else {
                Vec::new()
            },
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The body of an error answer, in the OpenAI error shape, with the decision id.
pub fn error_body(message: &str, error_type: &str, code: &str, decision_id: &str) -> String {
    serde_json::json!({
        "error": {
            "message": message,
            "type": error_type,
            "code": code,
            "decision_id": decision_id,
        }
    })
    .to_string()
}

/// What ext_authz tells ext_proc about a request it allowed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Handover {
    pub decision_id: String,
    pub key_id: String,
    pub team: String,
    pub env: String,
    pub app: String,
    pub route: String,
    pub provider: String,
    /// Providers the caller may use (empty: any).
    pub providers: Vec<String>,
    /// Model globs the caller may use (empty: any).
    pub models: Vec<String>,
    pub mode: String,
    /// In monitor mode, the denial enforcement would have made (`403 route_not_allowed`), else empty.
    pub would_be: String,
    /// Content hash of the bundle that decided, so ext_proc can tell whether it sees the same one.
    pub bundle_hash: String,
}

impl Handover {
    pub fn to_struct(&self) -> Struct {
        let mut fields = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            fields.insert(k.to_string(), string(v));
        };
        put("decision_id", &self.decision_id);
        put("key_id", &self.key_id);
        put("team", &self.team);
        put("env", &self.env);
        put("app", &self.app);
        put("route", &self.route);
        put("provider", &self.provider);
        put("mode", &self.mode);
        put("bundle_hash", &self.bundle_hash);
        if !self.would_be.is_empty() {
            put("would_be", &self.would_be);
        }
        fields.insert("providers".into(), list(&self.providers));
        fields.insert("models".into(), list(&self.models));
        Struct {
            fields: fields.into_iter().collect(),
        }
    }

    /// Reads the hand-over back; unknown or missing fields are left empty.
    pub fn from_struct(s: &Struct) -> Handover {
        let text = |k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => v.clone(),
            _ => String::new(),
        };
        let strings = |k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(Kind::ListValue(l)) => l
                .values
                .iter()
                .filter_map(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Handover {
            decision_id: text("decision_id"),
            key_id: text("key_id"),
            team: text("team"),
            env: text("env"),
            app: text("app"),
            route: text("route"),
            provider: text("provider"),
            providers: strings("providers"),
            models: strings("models"),
            mode: text("mode"),
            would_be: text("would_be"),
            bundle_hash: text("bundle_hash"),
        }
    }
}

fn string(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.to_string())),
    }
}

fn list(items: &[String]) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue {
            values: items.iter().map(|s| string(s)).collect(),
        })),
    }
}

/// Wraps a struct as `{namespace: struct}` metadata.
pub fn namespaced(namespace: &str, inner: Struct) -> Struct {
    let mut fields = std::collections::HashMap::new();
    fields.insert(
        namespace.to_string(),
        Value {
            kind: Some(Kind::StructValue(inner)),
        },
    );
    Struct {
        fields: fields.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_round_trips() {
        let h = Handover {
            decision_id: "d1".into(),
            key_id: "k".into(),
            team: "search".into(),
            route: "chat".into(),
            providers: vec!["openai".into()],
            models: vec!["gpt-4o-mini".into(), "gpt-4.1-*".into()],
            mode: "enforce".into(),
            ..Default::default()
        };
        assert_eq!(Handover::from_struct(&h.to_struct()), h);
    }

    #[test]
    fn error_body_is_openai_shaped() {
        let v: serde_json::Value =
            serde_json::from_str(&error_body("no", "permission_error", "x", "d")).unwrap();
        assert_eq!(v["error"]["code"], "x");
        assert_eq!(v["error"]["decision_id"], "d");
        assert_eq!(v["error"]["type"], "permission_error");
    }
}
