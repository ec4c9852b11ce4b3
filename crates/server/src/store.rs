//! The bundle in force, and reloading it. A new snapshot is built off the request path and swapped in whole; a
//! bundle that does not compile is refused, logged and counted, and the last good one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use lifeguard_policy::{CompileOptions, Problem, Snapshot, load};
use lifeguard_telemetry::Metrics;
use parking_lot::Mutex;

pub struct Store {
    path: PathBuf,
    pub current: Arc<ArcSwap<Snapshot>>,
    generation: AtomicU64,
    metrics: Arc<Metrics>,
    /// One reload at a time; concurrent triggers (file watch, SIGHUP, POST /reload) queue behind it.
    reloading: Mutex<()>,
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
            path,
            current: Arc::new(ArcSwap::from_pointee(first)),
            generation,
            metrics,
            reloading: Mutex::new(()),
        }
    }

    /// Re-reads the bundle. Blocking: call from a blocking thread.
    pub fn reload(&self) -> Result<String, Vec<Problem>> {
        let _one = self.reloading.lock();
        match load_for_serving(&self.path) {
            Ok(snap) => {
                if snap.bundle.hash == self.current.load().bundle.hash {
                    return Ok(format!("unchanged ({})", snap.bundle.hash));
                }
                let mut snap = snap;
                stamp(&self.generation, &self.metrics, &mut snap);
                self.current.store(Arc::new(snap));
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
