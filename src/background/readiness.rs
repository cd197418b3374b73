//! What `/readyz` answers from: the dependencies probed in the background,
//! and the background tasks' own reports. A probe never runs on the
//! request: `/readyz` reads memory and answers at once, whatever Redis or
//! Postgres do (a probe with Kubernetes' 1 s timeout must not take an
//! instance out of rotation because Postgres hangs).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::gate::Gate;
use crate::store::Store;

/// How often the dependencies are probed, and the bound on one probe: a
/// dependency that has not answered within it counts as down.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One background task's health: failing since when, and why.
#[derive(Debug)]
pub struct TaskHealth {
    name: &'static str,
    running: AtomicBool,
    /// 0 while the last round succeeded, else when the failures began (ms).
    failing_since_ms: AtomicI64,
    /// When the stall was last logged (ms), 0 when not stalled.
    logged_ms: AtomicI64,
    last_error: Mutex<String>,
    stall_after: Duration,
}

impl TaskHealth {
    /// `stall_after`: how long failing goes on before it is a stall.
    pub fn new(name: &'static str, stall_after: Duration) -> Self {
        Self {
            name,
            running: AtomicBool::new(false),
            failing_since_ms: AtomicI64::new(0),
            logged_ms: AtomicI64::new(0),
            last_error: Mutex::new(String::new()),
            stall_after,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// A round (a pass over every sale) did all its work.
    pub fn succeeded(&self) {
        if self.failing_since_ms.swap(0, Ordering::Relaxed) != 0
            && self.logged_ms.swap(0, Ordering::Relaxed) != 0
        {
            tracing::warn!(task = self.name, "background task recovered");
        }
        crate::metrics::task_stalled(self.name, false);
    }

    /// A round left work undone: `error` says what.
    pub fn failed(&self, error: String) {
        let now = now_ms();
        let _ =
            self.failing_since_ms
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
        if let Some(reason) = self.stalled() {
            crate::metrics::task_stalled(self.name, true);
            // Loud, but once a minute, not once a round.
            let logged = self.logged_ms.load(Ordering::Relaxed);
            if now - logged >= 60_000 {
                self.logged_ms.store(now, Ordering::Relaxed);
                tracing::error!(task = self.name, %reason, "background task stalled");
            }
        }
    }

    /// Why the task is stalled (failing for longer than its bound), if it is.
    pub fn stalled(&self) -> Option<String> {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let secs = (now_ms() - since) / 1000;
        if Duration::from_secs(u64::try_from(secs).unwrap_or(0)) < self.stall_after {
            return None;
        }
        let error = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Some(format!("{} failing for {secs} s: {error}", self.name))
    }
}

/// The dependencies as last probed, and the tasks that report here.
#[derive(Debug)]
pub struct Readiness {
    redis_ok: AtomicBool,
    postgres_ok: AtomicBool,
    checked_ms: AtomicI64,
    tasks: Mutex<Vec<Arc<TaskHealth>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            redis_ok: AtomicBool::new(false),
            postgres_ok: AtomicBool::new(false),
            checked_ms: AtomicI64::new(0),
            tasks: Mutex::new(Vec::new()),
        }
    }
}

/// A snapshot for `/readyz`.
#[derive(Debug, Clone)]
pub struct Report {
    pub redis_ok: bool,
    pub postgres_ok: bool,
    /// Age of the probe results (ms).
    pub checked_ms_ago: i64,
    /// Stalled background tasks, one line each.
    pub stalls: Vec<String>,
}

impl Readiness {
    pub fn watch(&self, task: Arc<TaskHealth>) {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }

    pub fn report(&self) -> Report {
        let stalls = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|t| t.stalled())
            .collect();
        Report {
            redis_ok: self.redis_ok.load(Ordering::Relaxed),
            postgres_ok: self.postgres_ok.load(Ordering::Relaxed),
            checked_ms_ago: now_ms() - self.checked_ms.load(Ordering::Relaxed),
            stalls,
        }
    }

    /// Probes Redis and Postgres once, each bounded by [`PROBE_EVERY`].
    pub async fn probe(&self, gate: &Gate, store: &Store) {
        let (redis, pg) = tokio::join!(
            tokio::time::timeout(PROBE_EVERY, gate.ping()),
            tokio::time::timeout(PROBE_EVERY, store.ping())
        );
        self.redis_ok
            .store(matches!(redis, Ok(Ok(()))), Ordering::Relaxed);
        self.postgres_ok
            .store(matches!(pg, Ok(Ok(()))), Ordering::Relaxed);
        self.checked_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Probes every [`PROBE_EVERY`] until `shutdown`.
    pub async fn run(self: Arc<Self>, gate: Gate, store: Store, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PROBE_EVERY) => {}
            }
            self.probe(&gate, &store).await;
        }
    }
}
