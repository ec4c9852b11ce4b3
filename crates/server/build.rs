//! Builds the FileDescriptorSet that gRPC server reflection serves, from the Envoy protos that envoy-types
//! ships in its crate source, so `buf curl` / `grpcurl` can call ext_authz and ext_proc without proto files.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_services.bin");
    match envoy_types_proto_dir().and_then(|root| compile(&root, &out)) {
        Ok(()) => {}
        Err(e) => {
            // Reflection is a convenience: without it the services still work, so degrade rather than fail.
            println!("cargo:warning=gRPC reflection will list no Envoy services: {e}");
            std::fs::write(&out, []).expect("write empty descriptor set");
        }
    }
}

/// The `proto/` directory of the envoy-types package this build resolved.
fn envoy_types_proto_dir() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = std::env::var("CARGO_MANIFEST_PATH").unwrap_or_else(|_| "Cargo.toml".into());
    let meta = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
            &manifest,
        ])
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    let text = String::from_utf8_lossy(&meta.stdout);
    // Find "manifest_path":".../envoy-types-x.y.z/Cargo.toml" without a JSON dependency in the build script.
    let needle = "/envoy-types-";
    let at = text
        .find(needle)
        .ok_or("envoy-types not in cargo metadata")?;
    let start = text[..at].rfind('"').ok_or("malformed metadata")? + 1;
    // The package directory ends at the first '/' after "envoy-types-<version>".
    let end = at + 1 + text[at + 1..].find('/').ok_or("malformed metadata")?;
    Ok(PathBuf::from(&text[start..end]).join("proto"))
}

fn compile(root: &std::path::Path, out: &std::path::Path) -> Result<(), String> {
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(|e| e.to_string())?;
    let includes = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec/proto",
        "opentelemetry-proto",
        "client_model",
    ];
    let mut cmd = Command::new(protoc);
    cmd.arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()));
    for inc in includes {
        cmd.arg(format!("-I{}", root.join(inc).display()));
    }
    cmd.args([
        "envoy/service/auth/v3/external_auth.proto",
        "envoy/service/ext_proc/v3/external_processor.proto",
    ]);
    let result = cmd.output().map_err(|e| format!("protoc: {e}"))?;
    if result.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&result.stderr).into_owned())
    }
}
