//! The background sweeper: gives back the units of expired holds even when
//! no request touches their sale. Scripts also do it lazily, so a late sweep
//! never lets a buyer confirm an expired hold.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::gate::{Gate, GateError};

/// One pass over every indexed sale. Returns the holds released.
pub async fn sweep_all(gate: &Gate, batch: u32) -> Result<i64, GateError> {
    let mut released = 0;
    for sale in gate.indexed_sales().await? {
        // A sale with more expired holds than one batch is swept again.
        for _ in 0..100 {
            match gate.sweep(&sale).await {
                Ok(s) => {
                    released += s.released;
                    if s.released < i64::from(batch) {
                        break;
                    }
                }
                Err(GateError::NotLoaded) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(released)
}

pub async fn run(gate: Gate, every: Duration, batch: u32, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match sweep_all(&gate, batch).await {
            Ok(0) => {}
            Ok(n) => {
                crate::metrics::holds_expired("sweeper", n);
                tracing::debug!(released = n, "sweeper gave back expired holds");
            }
            Err(e) => tracing::warn!(error = %crate::error::chain(&e), "sweep failed"),
        }
    }
}
