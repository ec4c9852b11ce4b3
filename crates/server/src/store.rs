//! The bundle in force, and reloading it. A new snapshot is built off the request path and swapped in whole; a
//! bundle that does not compile is refused, logged and counted, and the last good one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use lifeguard_policy::{CompileOptions, Problem, Snapshot, bundle_hash, load, read_sources};
use lifeguard_telemetry::Metrics;
use parking_lot::Mutex;

pub struct Store {
    path: PathBuf,
    pub current: Arc<ArcSwap<Snapshot>>,
    generation: AtomicU64,
    metrics: Arc<Metrics>,
    /// One reload at a time; concurrent triggers (file watch, SIGHUP, POST /reload) queue behind it.
    reloading: Mutex<()>,
    /// Hash of the sources (bundle and candidate) of the snapshot in force.
    fingerprint: Mutex<Option<String>>,
}

/// Loads a bundle as `serve` does: reading credentials and key files.
pub fn load_for_serving(path: &Path) -> Result<Snapshot, Vec<Problem>> {
    load(
        path,
        CompileOptions {
            read_external: true,
        },
    )
}

impl Store {
    pub fn new(path: PathBuf, mut first: Snapshot, metrics: Arc<Metrics>) -> Self {
        let generation = AtomicU64::new(0);
        stamp(&generation, &metrics, &mut first);
        Store {
            fingerprint: Mutex::new(fingerprint(&path)),
            path,
            current: Arc::new(ArcSwap::from_pointee(first)),
            generation,
            metrics,
            reloading: Mutex::new(()),
        }
    }

    /// Re-reads the bundle. Blocking: call from a blocking thread. Unchanged sources are not recompiled, so a
    /// burst of triggers costs a read and a hash, not a compile.
    pub fn reload(&self) -> Result<String, Vec<Problem>> {
        let _one = self.reloading.lock();
        let print = fingerprint(&self.path);
        if print.is_some() && print == *self.fingerprint.lock() {
            return Ok(format!("unchanged ({})", self.current.load().bundle.hash));
        }
        let path = self.path.clone();
        match off_the_request_path(move || load_for_serving(&path)) {
            Ok(snap) => {
                if identity(&snap) == identity(&self.current.load()) {
                    return Ok(format!("unchanged ({})", snap.bundle.hash));
                }
                *self.fingerprint.lock() = print;
                let mut snap = snap;
                stamp(&self.generation, &self.metrics, &mut snap);
                let old = self.current.swap(Arc::new(snap));
                retire(old);
                let cur = self.current.load();
                tracing::info!(bundle = %cur.bundle.name, version = cur.bundle.version, hash = %cur.bundle.hash, "bundle reloaded");
                Ok(cur.summary())
            }
            Err(problems) => {
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                for p in &problems {
                    tracing::warn!(problem = %p, "bundle refused; the last good bundle keeps serving");
                }
                Err(problems)
            }
        }
    }
}

/// Gives a snapshot the next version number and records it as the bundle in force.
fn stamp(generation: &AtomicU64, metrics: &Metrics, snap: &mut Snapshot) {
    snap.bundle.version = generation.fetch_add(1, Ordering::SeqCst) + 1;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    metrics.set_bundle(
        &snap.bundle.name,
        snap.bundle.version,
        &snap.bundle.hash,
        now,
    );
    metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
}

/// What makes two loads the same version: the bundle's content hash and its candidate's.
fn identity(s: &Snapshot) -> (String, Option<String>) {
    (
        s.bundle.hash.clone(),
        s.candidate.as_ref().map(|c| c.bundle.hash.clone()),
    )
}

/// Watches the bundle for changes and reloads. A file bundle is watched through its directory, so editors'
/// atomic renames and a Kubernetes ConfigMap's `..data` symlink swap are seen; a burst of events is one reload.
pub fn watch(store: Arc<Store>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let target = if store.path.is_dir() {
        store.path.clone()
    } else {
        store
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = match notify::recommended_watcher(
        move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.send(());
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the bundle; reload with SIGHUP or POST /reload");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&target, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, path = %target.display(), "cannot watch the bundle; reload with SIGHUP or POST /reload");
        return None;
    }
    std::thread::Builder::new()
        .name("lifeguard-bundle-watch".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // Let a burst of events (write, rename, symlink swap) settle, then reload once.
                std::thread::sleep(std::time::Duration::from_millis(150));
                while rx.try_recv().is_ok() {}
                let _ = store.reload();
            }
        })
        .ok()?;
    Some(watcher)
}

/// Content hash of a bundle's files and of its candidate's, read without compiling; `None` if unreadable.
fn fingerprint(path: &Path) -> Option<String> {
    let sources = read_sources(path).ok()?;
    let mut print = bundle_hash(&sources);
    // The candidate's path is only known after parsing; hash every file next to the bundle that a
    // `candidate:` line names, cheaply, by looking for the key in the text.
    for s in &sources {
        for line in s.text.lines() {
            if let Some(rel) = line.trim().strip_prefix("candidate:") {
                let rel = rel.trim().trim_matches(['"', '\'']);
                let base = if path.is_dir() {
                    path
                } else {
                    path.parent().unwrap_or(Path::new("."))
                };
                if let Ok(c) = read_sources(&base.join(rel)) {
                    print.push('+');
                    print.push_str(&bundle_hash(&c));
                }
            }
        }
    }
    Some(print)
}

/// Runs a bundle build on its own thread at the lowest normal priority (nice 19), so that compiling a large bundle
/// yields the CPU to request threads: a reload does not delay requests, even on one core. Not SCHED_IDLE, which
/// could starve a reload forever on a saturated pod.
fn off_the_request_path(
    build: impl FnOnce() -> Result<Snapshot, Vec<Problem>> + Send,
) -> Result<Snapshot, Vec<Problem>> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("lifeguard-reload".into())
            .spawn_scoped(scope, move || {
                lowest_priority();
                build()
            });
        let failed = |why: &str| {
            Err(vec![Problem {
                file: String::new(),
                line: None,
                path: String::new(),
                message: format!("reload failed: {why}"),
            }])
        };
        match worker {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| failed("the build thread panicked")),
            Err(_) => failed("cannot start the build thread"),
        }
    })
}

/// Frees a replaced snapshot off the request path. Freeing a 100,000-key snapshot takes milliseconds; left to
/// whichever request dropped the last reference, it would land in that request's latency. Requests and streams
/// still holding it finish with it first.
fn retire(old: Arc<Snapshot>) {
    let spawned = std::thread::Builder::new()
        .name("lifeguard-retire".into())
        .spawn(move || {
            lowest_priority();
            // A stream can hold its snapshot for as long as a response streams; after that, let go anyway.
            for _ in 0..6000 {
                if Arc::strong_count(&old) == 1 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            drop(old);
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cannot start the retire thread; the old snapshot is freed by its last user");
    }
}

/// Puts the calling thread at the lowest normal priority (nice 19): background work that must not take the CPU
/// from requests, yet is never starved for good (unlike SCHED_IDLE).
fn lowest_priority() {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    let lowest = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
    if let Err(e) = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        lowest,
    ) {
        tracing::debug!(error = ?e, "background thread keeps normal priority");
    }
}
