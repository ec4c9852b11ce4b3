//! Every Envoy bootstrap in `deploy/envoy/` renders and passes `envoy --mode validate`, and the
//! fail-open variant differs from the fail-closed one only where it says so.

use std::fs;

use lifeguard_e2e::{TempDir, envoy_config_dir, envoy_validate, render_template, template_vars};

/// A value for every template variable: ports that are never bound (validation binds nothing).
fn dummy_value(name: &str) -> String {
    match name {
        "LISTEN_PORT" | "ADMIN_PORT" => "0".to_owned(),
        "LIFEGUARD_GRPC_PORT" => "50051".to_owned(),
        "UPSTREAM_PORT" => "18080".to_owned(),
        other if other.ends_with("_PORT") => "19000".to_owned(),
        other => panic!(
            "template variable ${{{other}}} has no dummy value: add one to tests/envoy_configs.rs"
        ),
    }
}

fn yaml_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(envoy_config_dir())
        .expect("read deploy/envoy")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_envoy_config_passes_envoy_validate() {
    let files = yaml_files();
    assert!(
        files.iter().any(|p| p.ends_with("lifeguard.yaml")),
        "deploy/envoy/lifeguard.yaml is missing: {files:?}"
    );
    let dir = TempDir::new("validate").unwrap();
    let mut failures = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let vars: Vec<(String, String)> = template_vars(&text)
            .into_iter()
            .map(|n| {
                let v = dummy_value(&n);
                (n, v)
            })
            .collect();
        let vars: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let rendered = render_template(&text, &vars).unwrap();
        let out = dir.path().join(file.file_name().unwrap());
        fs::write(&out, rendered).unwrap();
        if let Err(e) = envoy_validate(&out) {
            failures.push(format!("{}: {e:#}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Non-comment lines of a config.
fn config_lines(name: &str) -> Vec<String> {
    fs::read_to_string(envoy_config_dir().join(name))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn fail_open_config_differs_only_in_failure_mode_allow() {
    let closed = config_lines("lifeguard.yaml");
    let open = config_lines("lifeguard-fail-open.yaml");
    assert_eq!(
        closed.len(),
        open.len(),
        "the two configs have drifted apart"
    );
    let mut changed = 0;
    for (c, o) in closed.iter().zip(&open) {
        if c != o {
            assert_eq!(
                c.trim(),
                "failure_mode_allow: false",
                "unexpected difference: {c:?} vs {o:?}"
            );
            assert_eq!(
                o.trim(),
                "failure_mode_allow: true",
                "unexpected difference: {c:?} vs {o:?}"
            );
            changed += 1;
        }
    }
    assert_eq!(changed, 2, "both ext_authz and ext_proc must fail open");
    let closed_text = closed.join("\n");
    assert!(!closed_text.contains("failure_mode_allow: true"));
    assert_eq!(closed_text.matches("failure_mode_allow: false").count(), 2);
}
