//! The deployment artefacts: Istio objects in `deploy/istio/`, the Helm chart in `helm/lifeguard/`.
//!
//! Nothing here has a cluster, an Istio control plane or a helm CLI, so each artefact is checked by
//! the strongest tool that does run here:
//! * every EnvoyFilter's patches are applied (as istiod would) to a minimal Envoy bootstrap, which
//!   must pass `envoy --mode validate` (the real Envoy 1.40 parses every typed config);
//! * the patched-in settings agree with the reference bootstrap `deploy/envoy/lifeguard.yaml` and
//!   with the Service the chart creates;
//! * `scripts/deploy-check.sh` (helm lint, kubernetes-validate, yamllint) must pass;
//! * the hand-written `helm/lifeguard/rendered-example.yaml` is checked for what the templates
//!   promise: its bundle is values.yaml's and passes `lifeguard validate`, ports, mounts, probes and
//!   security settings agree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use lifeguard_e2e::{
    TempDir, envoy_config_dir, envoy_validate, lifeguard_bin, render_template, template_vars,
    workspace_root,
};
use serde::Deserialize;
use serde_json::{Value, json};

const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
const EXT_PROC: &str = "envoy.filters.http.ext_proc";
const ROUTER: &str = "envoy.filters.http.router";
const HCM: &str = "envoy.filters.network.http_connection_manager";

fn istio_dir() -> PathBuf {
    workspace_root().join("deploy/istio")
}

fn chart_dir() -> PathBuf {
    workspace_root().join("helm/lifeguard")
}

/// Every YAML document of a file, as JSON values (empty documents dropped).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn only_doc(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{} should hold one object", path.display());
    docs.remove(0)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v:#}"))
}

fn envoyfilter_files() -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(istio_dir())
        .expect("read deploy/istio")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("envoyfilter-") && n.ends_with(".yaml"))
        })
        .collect();
    files.sort();
    files
}

/// The HTTP filter list, the named routes and the added clusters after applying an EnvoyFilter's
/// patches the way istiod does, to an HCM whose only filter is the router.
struct Patched {
    context: String,
    http_filters: Vec<Value>,
    /// (route name from the patch's match, value MERGEd into that route)
    routes: Vec<(String, Value)>,
    clusters: Vec<Value>,
}

fn apply_patches(ef: &Value, file: &Path) -> Patched {
    assert_eq!(str_at(ef, "/apiVersion"), "networking.istio.io/v1alpha3");
    assert_eq!(str_at(ef, "/kind"), "EnvoyFilter");
    // Without a selector an EnvoyFilter applies to every proxy of its namespace (or of the whole
    // mesh, in the root namespace): never what we want for a filter that can refuse traffic.
    let selector = ef
        .pointer("/spec/workloadSelector/labels")
        .and_then(Value::as_object);
    assert!(
        selector.is_some_and(|s| !s.is_empty()),
        "{}: spec.workloadSelector.labels must name the guarded workload",
        file.display()
    );
    let patches = ef
        .pointer("/spec/configPatches")
        .and_then(Value::as_array)
        .expect("spec.configPatches");
    let mut out = Patched {
        context: String::new(),
        http_filters: vec![json!({
            "name": ROUTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }
        })],
        routes: Vec::new(),
        clusters: Vec::new(),
    };
    for patch in patches {
        let context = str_at(patch, "/match/context");
        if out.context.is_empty() {
            out.context = context.to_owned();
        }
        assert_eq!(
            context,
            out.context,
            "{}: all patches must target one context",
            file.display()
        );
        let value = patch.pointer("/patch/value").expect("patch.value").clone();
        let operation = str_at(patch, "/patch/operation");
        match (str_at(patch, "/applyTo"), operation) {
            ("HTTP_FILTER", "INSERT_BEFORE" | "INSERT_AFTER") => {
                let hcm = patch
                    .pointer("/match/listener/filterChain/filter")
                    .expect("match.listener.filterChain.filter");
                assert_eq!(str_at(hcm, "/name"), HCM);
                let anchor = str_at(hcm, "/subFilter/name");
                let at = out
                    .http_filters
                    .iter()
                    .position(|f| f["name"] == anchor)
                    .unwrap_or_else(|| {
                        panic!("{}: no filter {anchor} to insert at", file.display())
                    });
                let at = if operation == "INSERT_BEFORE" {
                    at
                } else {
                    at + 1
                };
                out.http_filters.insert(at, value);
            }
            ("HTTP_ROUTE", "MERGE") => {
                let name = str_at(patch, "/match/routeConfiguration/vhost/route/name");
                out.routes.push((name.to_owned(), value));
            }
            ("CLUSTER", "ADD") => out.clusters.push(value),
            (what, op) => panic!(
                "{}: patch {what}/{op} is not modelled by tests/deploy.rs; extend apply_patches",
                file.display()
            ),
        }
    }
    out
}

/// Every `envoy_grpc.cluster_name` the HTTP filters call.
fn grpc_clusters(filters: &[Value]) -> Vec<String> {
    filters
        .iter()
        .filter_map(|f| f.pointer("/typed_config/grpc_service/envoy_grpc/cluster_name"))
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// A bootstrap with one listener whose HCM carries the patched filters, a route per patched
/// route (plus a catch-all), the added clusters, and for each cluster the filters call that no
/// patch adds (Istio's own `outbound|...` clusters) an HTTP/2 stand-in of that name.
fn bootstrap(p: &Patched) -> Value {
    let mut routes: Vec<Value> = p
        .routes
        .iter()
        .map(|(name, merge)| {
            let mut route = json!({
                "name": name,
                "match": { "prefix": format!("/{name}") },
                "route": { "cluster": "llm_upstream" }
            });
            for (k, v) in merge.as_object().expect("route patch value is a map") {
                route[k] = v.clone();
            }
            route
        })
        .collect();
    routes.push(json!({ "match": { "prefix": "/" }, "route": { "cluster": "llm_upstream" } }));
    let mut clusters = p.clusters.clone();
    let static_cluster = |name: &str, port: u16, h2: bool| {
        let protocol = if h2 {
            json!({ "http2_protocol_options": {} })
        } else {
            json!({ "http_protocol_options": {} })
        };
        json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "0.25s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": protocol
                }
            },
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                    "socket_address": { "address": "127.0.0.1", "port_value": port }
                }}}]}]
            }
        })
    };
    for name in grpc_clusters(&p.http_filters) {
        if !clusters.iter().any(|c| c["name"] == name.as_str()) {
            clusters.push(static_cluster(&name, 9000, true));
        }
    }
    clusters.push(static_cluster("llm_upstream", 18080, false));
    json!({
        "static_resources": {
            "listeners": [{
                "name": "patched",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
                "filter_chains": [{ "filters": [{
                    "name": HCM,
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "patched",
                        "route_config": {
                            "name": "patched",
                            "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }]
                        },
                        "http_filters": p.http_filters
                    }
                }]}]
            }],
            "clusters": clusters
        }
    })
}

#[test]
fn envoyfilter_patches_pass_envoy_validate() {
    let files = envoyfilter_files();
    let names: Vec<_> = files
        .iter()
        .filter_map(|f| f.file_name()?.to_str())
        .collect();
    assert_eq!(
        names,
        ["envoyfilter-gateway.yaml", "envoyfilter-sidecar.yaml"],
        "deploy/istio EnvoyFilters"
    );
    let dir = TempDir::new("deploy-envoyfilter").unwrap();
    let mut failures = Vec::new();
    for file in &files {
        for (i, ef) in yaml_docs(file).iter().enumerate() {
            let patched = apply_patches(ef, file);
            let order: Vec<_> = patched
                .http_filters
                .iter()
                .map(|f| str_at(f, "/name"))
                .collect();
            assert_eq!(
                order,
                [EXT_AUTHZ, EXT_PROC, ROUTER],
                "{}: filter order after the patches",
                file.display()
            );
            let expected_context = if file.ends_with("envoyfilter-gateway.yaml") {
                "GATEWAY"
            } else {
                "SIDECAR_INBOUND"
            };
            assert_eq!(patched.context, expected_context, "{}", file.display());
            let stem = file.file_stem().unwrap().to_string_lossy();
            let out = dir.path().join(format!("{stem}-{i}.json"));
            fs::write(
                &out,
                serde_json::to_string_pretty(&bootstrap(&patched)).unwrap(),
            )
            .unwrap();
            if let Err(e) = envoy_validate(&out) {
                failures.push(format!("{}: {e:#}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The reference bootstrap's http_filters, rendered with dummy ports so it parses as YAML.
fn reference_filters() -> Vec<Value> {
    let path = envoy_config_dir().join("lifeguard.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let vars: Vec<(String, String)> = template_vars(&text)
        .into_iter()
        .map(|n| (n, "1".to_owned()))
        .collect();
    let vars: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let rendered = render_template(&text, &vars).unwrap();
    let boot: Value = serde_norway::from_str(&rendered).unwrap();
    boot.pointer(
        "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters",
    )
    .and_then(Value::as_array)
    .expect("http_filters in deploy/envoy/lifeguard.yaml")
    .clone()
}

fn filter<'a>(filters: &'a [Value], name: &str) -> &'a Value {
    filters
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no filter {name}"))
}

/// `outbound|<port>||<host>`: the cluster istiod generates for a Service port.
fn istio_cluster_of_extension_provider() -> String {
    let provider = only_doc(&istio_dir().join("extension-provider.yaml"));
    let lifeguard = provider
        .pointer("/spec/meshConfig/extensionProviders")
        .and_then(Value::as_array)
        .and_then(|ps| ps.iter().find(|p| p["name"] == "lifeguard"))
        .expect("extension provider `lifeguard`");
    let grpc = &lifeguard["envoyExtAuthzGrpc"];
    let port = grpc["port"].as_u64().expect("envoyExtAuthzGrpc.port");
    format!("outbound|{port}||{}", str_at(grpc, "/service"))
}

#[test]
fn envoyfilters_agree_with_the_reference_bootstrap_and_the_service() {
    let reference = reference_filters();
    let expected_cluster = istio_cluster_of_extension_provider();
    // The chart's Service (default values) is the one the cluster name points at.
    let rendered = yaml_docs(&chart_dir().join("rendered-example.yaml"));
    let service = rendered
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("Service");
    let grpc_port = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .and_then(|ps| ps.iter().find(|p| p["name"] == "grpc"))
        .expect("Service port grpc");
    assert_eq!(grpc_port["appProtocol"], "grpc", "Istio needs HTTP/2 to it");
    let service_cluster = format!(
        "outbound|{}||{}.{}.svc.cluster.local",
        grpc_port["port"],
        str_at(service, "/metadata/name"),
        str_at(service, "/metadata/namespace")
    );
    assert_eq!(expected_cluster, service_cluster);

    for file in envoyfilter_files() {
        for ef in yaml_docs(&file) {
            let patched = apply_patches(&ef, &file);
            let f = &patched.http_filters;
            for name in grpc_clusters(f) {
                assert_eq!(name, expected_cluster, "{}", file.display());
            }
            // Same processing contract as the bootstrap the e2e tests run (the timeouts differ
            // on purpose: one network hop instead of localhost).
            for key in [
                "processing_mode",
                "allow_mode_override",
                "metadata_options",
                "failure_mode_allow",
                "status_on_error",
                "message_timeout",
            ] {
                assert_eq!(
                    filter(f, EXT_PROC)["typed_config"][key],
                    filter(&reference, EXT_PROC)["typed_config"][key],
                    "{}: ext_proc {key}",
                    file.display()
                );
            }
            for key in [
                "transport_api_version",
                "failure_mode_allow",
                "include_peer_certificate",
                "status_on_error",
            ] {
                assert_eq!(
                    filter(f, EXT_AUTHZ)["typed_config"][key],
                    filter(&reference, EXT_AUTHZ)["typed_config"][key],
                    "{}: ext_authz {key}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn deploy_check_script_passes() {
    // Installs its pinned Python tools into .tools/ when missing, so this needs PyPI once.
    let script = workspace_root().join("scripts/deploy-check.sh");
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(workspace_root())
        .output()
        .expect("run scripts/deploy-check.sh");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{log}");
    assert!(
        out.status.success(),
        "scripts/deploy-check.sh failed ({}):\n{log}",
        out.status
    );
}

fn values() -> Value {
    only_doc(&chart_dir().join("values.yaml"))
}

#[test]
fn rendered_example_bundle_is_the_default_and_valid() {
    let rendered = yaml_docs(&chart_dir().join("rendered-example.yaml"));
    let cm = rendered
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("ConfigMap");
    let bundle = str_at(cm, "/data/bundle.yaml");
    assert_eq!(
        bundle,
        str_at(&values(), "/bundle/inline"),
        "rendered-example.yaml's bundle differs from values.yaml bundle.inline"
    );
    let bin = lifeguard_bin();
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p lifeguard` (make test does)",
        bin.display()
    );
    let dir = TempDir::new("deploy-bundle").unwrap();
    let path = dir.path().join("bundle.yaml");
    fs::write(&path, bundle).unwrap();
    let out = Command::new(&bin)
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the chart's default bundle is invalid:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rendered_example_deployment_is_consistent_and_locked_down() {
    let rendered = yaml_docs(&chart_dir().join("rendered-example.yaml"));
    let kinds: Vec<_> = rendered.iter().map(|d| str_at(d, "/kind")).collect();
    assert_eq!(
        kinds,
        [
            "PodDisruptionBudget",
            "ServiceAccount",
            "ConfigMap",
            "Service",
            "Deployment"
        ],
        "objects the default values render (Helm's install order)"
    );
    // Every rendered kind comes from a template that declares it.
    let templates: String = fs::read_dir(chart_dir().join("templates"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for kind in &kinds {
        assert!(
            templates.contains(&format!("kind: {kind}\n")),
            "no template renders {kind}"
        );
    }

    let deploy = rendered.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let arg = |flag: &str| -> &str {
        let i = args
            .iter()
            .position(|a| *a == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        args[i + 1]
    };
    assert_eq!(args[0], "serve");
    let port_of = |name: &str| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("containerPort {name}"))
    };
    let v = values();
    assert_eq!(port_of("grpc"), v["ports"]["grpc"].as_u64().unwrap());
    assert_eq!(port_of("admin"), v["ports"]["admin"].as_u64().unwrap());
    assert_eq!(arg("--grpc"), format!("0.0.0.0:{}", port_of("grpc")));
    assert_eq!(arg("--admin"), format!("0.0.0.0:{}", port_of("admin")));
    assert_eq!(
        arg("--drain-seconds"),
        v["drainSeconds"].as_u64().unwrap().to_string()
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            c[probe]["grpc"]["port"].as_u64(),
            Some(port_of("grpc")),
            "{probe} uses grpc.health.v1 on the gRPC port"
        );
    }

    // The bundle is the ConfigMap, mounted as a directory (no subPath: kubelet would never update
    // it) at the path --bundle names.
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == arg("--bundle"))
        .expect("a volume mounted at --bundle");
    assert!(
        mount.get("subPath").is_none(),
        "bundle mounted with subPath"
    );
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vol| vol["name"] == mount["name"])
        .unwrap();
    let cm = rendered.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);

    // Credentials come from Secrets, never literal values.
    for env in c["env"].as_array().unwrap() {
        if env["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("_API_KEY"))
        {
            assert!(env.get("value").is_none(), "{env}: a key in plain text");
            assert!(env.pointer("/valueFrom/secretKeyRef/name").is_some());
        }
    }

    // Locked down.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["automountServiceAccountToken"], false);

    // The drain fits in the grace period: preStop sleep, then --drain-seconds.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let sleep = c
        .pointer("/lifecycle/preStop/sleep/seconds")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let drain: u64 = arg("--drain-seconds").parse().unwrap();
    assert!(
        sleep + drain < grace,
        "preStop {sleep}s + drain {drain}s must end before the {grace}s grace period"
    );
}

#[test]
fn dockerfile_cmd_matches_the_chart_paths() {
    // The image's default command and the chart's args serve the same bundle path and ports.
    let dockerfile = fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    let cmd = dockerfile
        .lines()
        .find(|l| l.starts_with("CMD "))
        .expect("CMD in Dockerfile");
    let cmd: Vec<String> = serde_json::from_str(cmd.trim_start_matches("CMD ")).unwrap();
    let flag = |f: &str| {
        let i = cmd.iter().position(|a| a == f).unwrap();
        cmd[i + 1].clone()
    };
    assert_eq!(cmd[0], "serve");
    assert_eq!(flag("--bundle"), "/etc/lifeguard/bundle");
    let v = values();
    assert_eq!(flag("--grpc"), format!("0.0.0.0:{}", v["ports"]["grpc"]));
    assert_eq!(flag("--admin"), format!("0.0.0.0:{}", v["ports"]["admin"]));
    assert!(dockerfile.contains("ENTRYPOINT [\"/lifeguard\"]"));
    assert!(
        dockerfile.contains(":nonroot"),
        "runs as distroless nonroot"
    );
}
