//! Sales: read one (giving back expired holds on the way), list them,
//! create or update one in Postgres and Redis together.

use super::{Service, ServiceError};
use crate::domain::{ConfigureOutcome, SaleConfig, SaleState};
use crate::gate::GateError;
use crate::ids::SaleId;

impl Service {
    pub async fn view(&self, sale: &SaleId) -> Result<SaleState, ServiceError> {
        let state = self.loaded(sale, || self.gate.sweep(sale)).await?;
        crate::metrics::holds_expired("read", state.released);
        Ok(state)
    }

    /// Every sale Postgres knows, as Redis has it; a sale whose Redis is
    /// unavailable (its node away, on Redis Cluster) is named in the second
    /// list instead of failing the whole listing.
    pub async fn list(&self) -> Result<(Vec<(SaleId, SaleState)>, Vec<SaleId>), ServiceError> {
        let rows = self.store.list_sales().await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut unavailable = Vec::new();
        for row in rows {
            let Ok(id) = SaleId::parse(&row.sale_id) else {
                continue;
            };
            match self.view(&id).await {
                Ok(state) => out.push((id, state)),
                Err(
                    ServiceError::Rebuilding(_)
                    | ServiceError::Redis(
                        GateError::Unavailable(_)
                        | GateError::Timeout(_)
                        | GateError::OutOfMemory(_)
                        | GateError::NotLoaded,
                    ),
                ) => unavailable.push(id),
                Err(e) => return Err(e),
            }
        }
        Ok((out, unavailable))
    }

    /// Creates or updates a sale in Postgres and Redis together: the row is
    /// locked, the script decides (refusing a stock below sold + held), and
    /// the row commits only if the script accepted. Returns whether it was
    /// created, and the sale as this change left it.
    pub async fn configure(
        &self,
        sale: &SaleId,
        cfg: &SaleConfig,
    ) -> Result<(bool, SaleState), ServiceError> {
        // A sale known to Postgres whose Redis state was lost is rebuilt
        // before it changes, or the update would reset what was sold. Before
        // the configuration's own lock: the rebuild locks the row itself.
        if let Err(GateError::NotLoaded) = self.gate.sweep(sale).await {
            match self.restore(sale).await {
                Ok(()) | Err(ServiceError::SaleNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        let (mut tx, existing) = self.store.begin_configure(sale).await?;
        // Lost again since: the script answers not_loaded (503, retry).
        let epoch = existing.as_ref().map_or(0, |row| row.epoch);
        let outcome = self
            .gate
            .configure(sale, cfg, existing.is_some(), epoch)
            .await?;
        let (created, epoch) = match outcome {
            ConfigureOutcome::BelowCommitted { sold, held } => {
                return Err(ServiceError::StockBelowCommitted { sold, held })
            }
            ConfigureOutcome::Created { epoch } => (true, epoch),
            ConfigureOutcome::Updated { epoch } => (false, epoch),
        };
        self.store.upsert_sale(&mut tx, sale, cfg, epoch).await?;
        // Read the sale while the row lock still holds back concurrent
        // updates, so the answer shows this update, not a later one. The
        // script has run: commit even if the read failed, and read again.
        let state = self.view(sale).await;
        self.store.commit(tx).await?;
        let state = match state {
            Ok(s) => s,
            Err(_) => self.view(sale).await?,
        };
        Ok((created && existing.is_none(), state))
    }

    /// Loads every sale Postgres knows into Redis (no-op where present).
    pub async fn restore_all(&self) -> Result<usize, ServiceError> {
        let mut n = 0;
        for row in self.store.list_sales().await? {
            if let Ok(id) = SaleId::parse(&row.sale_id) {
                self.restore(&id).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}
