//! JWT identity: tokens verified against a JWKS file named in the bundle (RS256, ES256, EdDSA only).
//!
//! Istio's CUSTOM authorization provider cannot hand verified claims to an external authorizer, so Lifeguard
//! verifies the token itself, with the keys loaded (and reloaded) with the bundle.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lifeguard_core::{Identity, IdentitySource};
use serde_json::Value;

use crate::snapshot::ModelScope;

/// An issuer whose tokens are accepted.
pub struct JwtIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    keys: Vec<JwtKey>,
    pub claims: ClaimMap,
    pub providers: Vec<String>,
    pub models: ModelScope,
    pub leeway: u64,
}

impl std::fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtIssuer")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("keys", &self.keys.len())
            .finish()
    }
}

struct JwtKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Claim paths for team / env / app (`groups[0]`, `azp`, `org.team`).
#[derive(Debug, Clone, Default)]
pub struct ClaimMap {
    pub team: Option<String>,
    pub env: Option<String>,
    pub app: Option<String>,
}

/// Why a token was refused. Safe to show the caller: says nothing about keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtRefusal {
    Malformed,
    UnknownIssuer,
    UnsupportedAlgorithm,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
}

impl JwtRefusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            JwtRefusal::Malformed => "malformed token",
            JwtRefusal::UnknownIssuer => "no configured issuer has a key for this token",
            JwtRefusal::UnsupportedAlgorithm => "token algorithm not accepted",
            JwtRefusal::BadSignature => "token signature is invalid",
            JwtRefusal::Expired => "token has expired",
            JwtRefusal::NotYetValid => "token is not yet valid",
            JwtRefusal::WrongAudience => "token audience is not accepted",
            JwtRefusal::WrongIssuer => "token issuer is not accepted",
        }
    }
}

/// Parses a JWKS document into decoding keys, keeping only RS256, ES256 and EdDSA keys.
pub(crate) fn parse_jwks(
    text: &str,
) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("invalid JWKS: {e}"))?;
    let mut out = Vec::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            // Shared-secret keys do not belong in a published key set; unknown kinds are skipped.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("invalid key in JWKS: {e}"))?;
        out.push((jwk.common.key_id.clone(), alg, key));
    }
    if out.is_empty() {
        return Err("JWKS holds no RS256, ES256 or EdDSA key".into());
    }
    Ok(out)
}

impl JwtIssuer {
    pub(crate) fn new(
        issuer: String,
        audiences: Vec<String>,
        keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
        claims: ClaimMap,
        providers: Vec<String>,
        models: ModelScope,
        leeway: u64,
    ) -> Self {
        JwtIssuer {
            issuer,
            audiences,
            keys: keys
                .into_iter()
                .map(|(kid, alg, key)| JwtKey { kid, alg, key })
                .collect(),
            claims,
            providers,
            models,
            leeway,
        }
    }
}

/// True when `token` has the shape of a JWS compact token (so it is not treated as a virtual key).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

/// Verifies a token against the issuers and maps its claims to an identity.
pub fn verify(issuers: &[JwtIssuer], token: &str) -> Result<Identity, JwtRefusal> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| JwtRefusal::Malformed)?;
    if !matches!(
        header.alg,
        Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
    ) {
        return Err(JwtRefusal::UnsupportedAlgorithm);
    }
    let mut best = JwtRefusal::UnknownIssuer;
    for issuer in issuers {
        let candidates = issuer
            .keys
            .iter()
            .filter(|k| k.alg == header.alg && (header.kid.is_none() || k.kid == header.kid));
        for key in candidates {
            let mut v = Validation::new(header.alg);
            v.set_issuer(&[&issuer.issuer]);
            v.set_audience(&issuer.audiences);
            v.leeway = issuer.leeway;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            match jsonwebtoken::decode::<Value>(token, &key.key, &v) {
                Ok(data) => return Ok(identity(issuer, &data.claims)),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    let r = match e.kind() {
                        K::ExpiredSignature => JwtRefusal::Expired,
                        K::ImmatureSignature => JwtRefusal::NotYetValid,
                        K::InvalidAudience => JwtRefusal::WrongAudience,
                        K::InvalidIssuer => JwtRefusal::WrongIssuer,
                        K::InvalidSignature => JwtRefusal::BadSignature,
                        K::MissingRequiredClaim(_) => JwtRefusal::Malformed,
                        _ => JwtRefusal::BadSignature,
                    };
                    // A wrong issuer only means "try the next one"; anything else is the real reason.
                    if r != JwtRefusal::WrongIssuer || best == JwtRefusal::UnknownIssuer {
                        best = r;
                    }
                }
            }
        }
    }
    Err(best)
}

fn identity(issuer: &JwtIssuer, claims: &Value) -> Identity {
    let get = |path: &Option<String>| {
        path.as_deref()
            .and_then(|p| claim(claims, p))
            .unwrap_or_default()
    };
    Identity {
        source: Some(IdentitySource::Jwt),
        id: claim(claims, "sub").unwrap_or_default(),
        team: get(&issuer.claims.team),
        env: get(&issuer.claims.env),
        app: get(&issuer.claims.app),
        providers: issuer.providers.clone(),
        models: issuer.models.patterns.clone(),
    }
}

/// Reads a claim by path: `a.b`, `groups[0]`. Numbers and booleans are turned into text.
pub fn claim(claims: &Value, path: &str) -> Option<String> {
    let mut v = claims;
    for part in path.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.strip_suffix(']')?.parse::<usize>().ok()),
            None => (part, None),
        };
        if !name.is_empty() {
            v = v.get(name)?;
        }
        if let Some(i) = index {
            v = v.get(i)?;
        }
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Checks a claim path's syntax at compile time.
pub(crate) fn valid_claim_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').all(|part| match part.split_once('[') {
            Some((_, rest)) => rest
                .strip_suffix(']')
                .is_some_and(|i| i.parse::<usize>().is_ok()),
            None => !part.is_empty(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claim_paths() {
        let c = json!({"sub": "u1", "groups": ["search", "x"], "org": {"env": "prod"}, "n": 3});
        assert_eq!(claim(&c, "groups[0]").as_deref(), Some("search"));
        assert_eq!(claim(&c, "org.env").as_deref(), Some("prod"));
        assert_eq!(claim(&c, "n").as_deref(), Some("3"));
        assert_eq!(claim(&c, "groups[5]"), None);
        assert_eq!(claim(&c, "missing"), None);
        assert!(valid_claim_path("groups[0]"));
        assert!(!valid_claim_path("groups[x]"));
        assert!(!valid_claim_path("a..b"));
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJhbGciOi.eyJzdWIi.sig"));
        assert!(!looks_like_jwt("lgk_abc"));
    }
}
