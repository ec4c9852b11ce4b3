//! Bundle parsing and compilation: every problem at once, with file, line and path; examples stay valid.

use lifeguard_policy::{CompileOptions, Problem, compile_str, load};

const OFFLINE: CompileOptions = CompileOptions {
    read_external: false,
};

fn problems(yaml: &str) -> Vec<Problem> {
    match compile_str("b.yaml", yaml, OFFLINE) {
        Ok(_) => panic!("expected problems"),
        Err(p) => p,
    }
}

fn find<'a>(ps: &'a [Problem], path: &str) -> &'a Problem {
    ps.iter()
        .find(|p| p.path == path)
        .unwrap_or_else(|| panic!("no problem at {path}: {ps:#?}"))
}

const GOOD_HASH: &str = "sha256:e6ce55efbd155eb5088e23dca9fe058f53b585afa771cf70414adb27fae13f45";

#[test]
fn four_problems_reported_together_with_lines() {
    let yaml = format!(
        r#"version: 1
name: broken
providers:
  openai: {{ format: openai, credential: {{ env: X }}, header: authorization, prefix: "Bearer " }}
keys:
  - id: a
    hash: {GOOD_HASH}
    colour: blue
  - id: b
    hash: sha256:1234
  - id: c
    hash: {GOOD_HASH}
    models: ["gpt-4[", "ok"]
  - id: d
    hash: sha256:3bb263012d466f9c0e37e29b547d6d89da34eebc8139f3757150424447a5c42a
    providers: [opneai]
"#
    );
    let ps = problems(&yaml);
    let unknown = ps
        .iter()
        .find(|p| p.message.contains("unknown field `colour`"))
        .expect("unknown field");
    assert_eq!(unknown.line, Some(8), "{unknown}");
    assert!(unknown.path.starts_with("keys[0]"), "{unknown}");
    let hash = find(&ps, "keys[1].hash");
    assert_eq!(hash.line, Some(10));
    assert!(hash.message.contains("malformed hash"));
    let glob = find(&ps, "keys[2].models[0]");
    assert_eq!(glob.line, Some(13));
    assert!(glob.message.contains("invalid glob"));
    let prov = find(&ps, "keys[3].providers[0]");
    assert_eq!(prov.line, Some(16));
    assert_eq!(prov.message, "unknown provider \"opneai\"");
    assert_eq!(
        prov.to_string(),
        "b.yaml:16: keys[3].providers[0]: unknown provider \"opneai\""
    );
    assert_eq!(ps.len(), 4, "{ps:#?}");
}

#[test]
fn unknown_top_level_and_nested_fields_are_rejected() {
    let ps = problems("version: 1\nname: x\nrouts: []\ndetectors:\n  pii: { typs: [email] }\n");
    assert!(
        ps.iter().any(|p| p.path == "routs" && p.line == Some(3)),
        "{ps:#?}"
    );
    assert!(
        ps.iter()
            .any(|p| p.path.starts_with("detectors.pii") && p.line == Some(5)),
        "{ps:#?}"
    );
}

#[test]
fn semantic_checks() {
    let yaml = r#"version: 2
name: x
providers:
  a: { format: openai, credential: { env: A }, header: "bad header" }
  b: { format: openai, credential: { env: B }, header: authorization }
keys:
  - { id: k, hash: "sha256:e6ce55efbd155eb5088e23dca9fe058f53b585afa771cf70414adb27fae13f45", expires: "next tuesday", rate_limit: { requests_per_minute: 0 } }
  - { id: k, hash: "sha256:3bb263012d466f9c0e37e29b547d6d89da34eebc8139f3757150424447a5c42a" }
routes:
  - { name: r, match: { path_prefix: v1 } }
  - { name: r, provider: zz }
detectors:
  injection: { threshold: 1.5 }
  pii: { types: [email, passport] }
  custom:
    - { id: both, phrases: [x], regex: y, action: block }
    - { id: bad-re, regex: "(", action: redact }
"#;
    let ps = problems(yaml);
    let has = |path: &str, needle: &str| {
        ps.iter()
            .any(|p| p.path == path && p.message.contains(needle))
    };
    assert!(has("version", "unsupported version 2"), "{ps:#?}");
    assert!(has("providers.a.header", "invalid header name"), "{ps:#?}");
    assert!(has("keys[0].expires", "invalid time"), "{ps:#?}");
    assert!(
        has("keys[0].rate_limit.requests_per_minute", "greater than 0"),
        "{ps:#?}"
    );
    assert!(has("keys[1].id", "duplicate key id"), "{ps:#?}");
    assert!(
        has("routes[0].match.path_prefix", "must start with '/'"),
        "{ps:#?}"
    );
    assert!(
        has("routes[0].provider", "cannot tell which provider"),
        "{ps:#?}"
    );
    assert!(has("routes[1].name", "duplicate route name"), "{ps:#?}");
    assert!(has("routes[1].provider", "unknown provider"), "{ps:#?}");
    assert!(
        has("detectors.injection.threshold", "not between 0 and 1"),
        "{ps:#?}"
    );
    assert!(has("detectors.pii.types[1]", "unknown PII type"), "{ps:#?}");
    assert!(has("detectors.custom[0]", "not both"), "{ps:#?}");
    assert!(has("detectors.custom[1].regex", ""), "{ps:#?}");
    for p in &ps {
        assert!(p.line.is_some(), "every problem has a line: {p}");
    }
}

#[test]
fn hostile_inputs_never_panic() {
    let bomb = "a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n";
    let deep = "[".repeat(100_000);
    let junk: String = (0..4096u32)
        .map(|i| char::from_u32(i * 7919 % 0x2FFF).unwrap_or('x'))
        .collect();
    for text in [
        "",
        "\0\0\0",
        "- a\n- b\n",
        "version: one",
        bomb,
        deep.as_str(),
        junk.as_str(),
        "version: 1\nname: x\nkeys: {a: 1}\n",
    ] {
        let r = compile_str("h.yaml", text, OFFLINE);
        assert!(
            r.is_err(),
            "hostile input must be refused: {:?}",
            &text[..text.len().min(40)]
        );
    }
}

#[test]
fn files_too_large_or_not_utf8_are_refused() {
    let dir = std::env::temp_dir().join(format!("lg-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("bin.yaml");
    std::fs::write(&bin, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let ps = load(&bin, OFFLINE).unwrap_err();
    assert!(ps[0].message.contains("not UTF-8"), "{ps:?}");
    let big = dir.join("big.yaml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(100 << 20).unwrap();
    let ps = load(&big, OFFLINE).unwrap_err();
    assert!(ps[0].message.contains("too large"), "{ps:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_of_files_is_merged() {
    let dir = std::env::temp_dir().join(format!("lg-policy-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("00-base.yaml"),
        "version: 1\nname: merged\nproviders:\n  openai: { format: openai, credential: { env: X }, header: authorization }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("10-keys.yaml"),
        format!("keys:\n  - {{ id: a, hash: \"{GOOD_HASH}\" }}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("20-routes.yaml"),
        "routes:\n  - { name: chat, match: { path_prefix: /v1/ } }\n",
    )
    .unwrap();
    std::fs::write(dir.join(".hidden.yaml"), "garbage: [").unwrap();
    let snap = load(&dir, OFFLINE).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(snap.bundle.name, "merged");
    assert_eq!(snap.key_count(), 1);
    assert_eq!(snap.routes.len(), 1);
    // A duplicate provider in another file is named with both places.
    std::fs::write(
        dir.join("30-dup.yaml"),
        "providers:\n  openai: { format: openai, credential: { env: Y }, header: authorization }\n",
    )
    .unwrap();
    let ps = load(&dir, OFFLINE).unwrap_err();
    assert!(
        ps[0].file.ends_with("30-dup.yaml") && ps[0].message.contains("also defined at"),
        "{ps:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_example_bundle_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            load(&path, OFFLINE).unwrap_or_else(|p| panic!("{}: {p:#?}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 3, "at least three example bundles");
}

#[test]
fn schema_describes_the_bundle() {
    let schema = lifeguard_policy::json_schema();
    let props = &schema["properties"];
    for field in [
        "version",
        "name",
        "defaults",
        "providers",
        "keys",
        "jwt",
        "routes",
        "detectors",
    ] {
        assert!(props.get(field).is_some(), "schema has {field}");
    }
    assert_eq!(
        schema["additionalProperties"],
        serde_json::Value::Bool(false)
    );
}
