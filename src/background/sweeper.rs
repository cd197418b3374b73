//! The background sweeper: gives back the units of expired holds even when
//! no request touches their sale. Scripts also do it lazily, so a late sweep
//! never lets a buyer confirm an expired hold.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::directory::Directory;
use super::readiness::TaskHealth;
use crate::gate::{Gate, GateError};
use crate::telemetry::chain;

/// One pass over every known sale. Returns the holds released and, per
/// sale that could not be swept (its Redis node away, say), why; the
/// other sales are swept all the same.
pub async fn sweep_all(gate: &Gate, directory: &Directory, batch: u32) -> (i64, Vec<String>) {
    let listing = directory.sales().await;
    let mut problems: Vec<String> = listing.problem.into_iter().collect();
    let mut released = 0;
    for sale in listing.sales {
        // A sale with more expired holds than one batch is swept again.
        for _ in 0..100 {
            match gate.sweep(&sale).await {
                Ok(s) => {
                    released += s.released;
                    if s.released < i64::from(batch) {
                        break;
                    }
                }
                // Not in Redis (lost, or not yet rebuilt): nothing to give back.
                Err(GateError::NotLoaded) => break,
                Err(e) => {
                    problems.push(format!("sale {sale}: {}", chain(&e)));
                    break;
                }
            }
        }
    }
    (released, problems)
}

pub async fn run(
    gate: Gate,
    directory: Arc<Directory>,
    every: Duration,
    batch: u32,
    health: Arc<TaskHealth>,
    shutdown: CancellationToken,
) {
    health.set_running(true);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let (released, problems) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = sweep_all(&gate, &directory, batch) => r,
        };
        if released > 0 {
            crate::metrics::holds_expired("sweeper", released);
            tracing::debug!(released, "sweeper gave back expired holds");
        }
        if problems.is_empty() {
            health.succeeded();
        } else {
            let why = problems.join("; ");
            tracing::warn!(error = %why, "sweep failed for some sales");
            health.failed(why);
        }
    }
    health.set_running(false);
}
