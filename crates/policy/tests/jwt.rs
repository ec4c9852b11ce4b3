//! JWT identity: RS256, ES256 and EdDSA tokens against a JWKS file; every refusal reason.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use lifeguard_core::RequestFacts;
use lifeguard_policy::{CompileOptions, compile_str, decide};
use serde_json::json;

fn fixture(name: &str) -> String {
    format!(
        "{}/../../tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn bundle() -> String {
    format!(
        r#"
version: 1
name: jwt
providers:
  openai: {{ format: openai, credential: {{ env: LG_UNIT_OPENAI }}, header: authorization, prefix: "Bearer " }}
jwt:
  - issuer: https://idp.example.com
    audiences: [llm-gateway]
    jwks_file: {jwks}
    claims: {{ team: "groups[0]", app: azp, env: "ctx.env" }}
    models: ["gpt-4o*"]
routes:
  - name: chat
    match: {{ path_prefix: /v1/ }}
    allow: [ {{ teams: [search] }} ]
"#,
        jwks = fixture("jwks.json")
    )
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn token(alg: Algorithm, kid: &str, pem: &str, claims: serde_json::Value) -> String {
    let pem = std::fs::read(fixture(pem)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    encode(&header, &claims, &key).unwrap()
}

fn claims() -> serde_json::Value {
    json!({"iss": "https://idp.example.com", "aud": "llm-gateway", "sub": "alice", "exp": now() + 300,
           "groups": ["search", "ops"], "azp": "notebook", "ctx": {"env": "prod"}})
}

fn check(
    token: &str,
) -> (
    Option<u16>,
    Option<&'static str>,
    Option<lifeguard_core::Identity>,
) {
    let snap = compile_str(
        "jwt.yaml",
        &bundle(),
        CompileOptions {
            read_external: true,
        },
    )
    .unwrap_or_else(|p| panic!("{p:#?}"));
    let facts = RequestFacts {
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        headers: HashMap::from([("authorization".to_string(), format!("Bearer {token}"))]),
        context: HashMap::new(),
    };
    let d = decide(&snap, &facts, jiff::Timestamp::now());
    (
        d.denial.as_ref().map(|x| x.status),
        d.denial.as_ref().map(|x| x.code),
        d.identity,
    )
}

#[test]
fn each_algorithm_verifies_and_maps_claims() {
    for (alg, kid, pem) in [
        (Algorithm::RS256, "rsa-1", "rs256.pem"),
        (Algorithm::ES256, "ec-1", "es256.pem"),
        (Algorithm::EdDSA, "ed-1", "ed25519.pem"),
    ] {
        let (status, _, identity) = check(&token(alg, kid, pem, claims()));
        assert_eq!(status, None, "{alg:?}");
        let id = identity.expect("identity");
        assert_eq!(
            (
                id.id.as_str(),
                id.team.as_str(),
                id.app.as_str(),
                id.env.as_str()
            ),
            ("alice", "search", "notebook", "prod")
        );
        assert_eq!(id.models, vec!["gpt-4o*".to_string()]);
    }
}

#[test]
fn refusals() {
    let mut c = claims();
    c["exp"] = json!(now() - 3600);
    assert_eq!(
        check(&token(Algorithm::ES256, "ec-1", "es256.pem", c)).1,
        Some("invalid_token")
    );

    let mut c = claims();
    c["aud"] = json!("someone-else");
    assert_eq!(
        check(&token(Algorithm::ES256, "ec-1", "es256.pem", c)).0,
        Some(401)
    );

    let mut c = claims();
    c["nbf"] = json!(now() + 3600);
    assert_eq!(
        check(&token(Algorithm::ES256, "ec-1", "es256.pem", c)).0,
        Some(401)
    );

    let mut c = claims();
    c["iss"] = json!("https://evil.example.com");
    assert_eq!(
        check(&token(Algorithm::ES256, "ec-1", "es256.pem", c)).0,
        Some(401)
    );

    // Tampered: payload swapped after signing.
    let good = token(Algorithm::RS256, "rsa-1", "rs256.pem", claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut evil = claims();
    evil["groups"] = json!(["admin"]);
    let forged = base64_url(&serde_json::to_vec(&evil).unwrap());
    parts[1] = &forged;
    assert_eq!(check(&parts.join(".")).0, Some(401));

    // Signed by a key the JWKS does not hold for that kid.
    assert_eq!(
        check(&token(Algorithm::ES256, "rsa-1", "es256.pem", claims())).0,
        Some(401)
    );

    // HS256 with the public key as secret (the classic confusion) is refused outright.
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"x"),
    )
    .unwrap();
    assert_eq!(check(&hs).0, Some(401));

    // Valid token, wrong team for the route: 403, not 401.
    let mut c = claims();
    c["groups"] = json!(["billing"]);
    assert_eq!(
        check(&token(Algorithm::EdDSA, "ed-1", "ed25519.pem", c)).0,
        Some(403)
    );
}

#[test]
fn clock_skew_is_tolerated() {
    let mut c = claims();
    c["exp"] = json!(now() - 10);
    assert_eq!(
        check(&token(Algorithm::EdDSA, "ed-1", "ed25519.pem", c)).0,
        None
    );
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
