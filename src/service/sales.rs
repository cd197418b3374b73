//! Sales: read one (giving back expired holds on the way), list them,
//! create or update one in Postgres and Redis together.

use sqlx::{Postgres, Transaction};

use super::{Service, ServiceError};
use crate::domain::{AdminOrigin, ConfigureOutcome, SaleConfig, SaleState};
use crate::gate::GateError;
use crate::ids::SaleId;
use crate::store::{sale_json, AdminAction};

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
    /// The change is audited (`admin_actions`) in the same transaction.
    pub async fn configure(
        &self,
        sale: &SaleId,
        cfg: &SaleConfig,
        origin: &AdminOrigin,
    ) -> Result<(bool, SaleState), ServiceError> {
        // A sale known to Postgres whose Redis state was lost is rebuilt
        // before it changes, or the update would reset what was sold.
        match self.rebuild_if_lost(sale).await {
            Ok(()) | Err(ServiceError::SaleNotFound) => {}
            Err(e) => return Err(e),
        }
        let (mut tx, existing) = self.store.begin_configure(sale).await?;
        // Lost again since: the script answers not_loaded (503, retry).
        let epoch = existing.as_ref().map_or(0, |row| row.epoch);
        let outcome = self
            .gate
            .configure(sale, cfg, existing.is_some(), epoch)
            .await?;
        let (created, epoch) = match outcome {
            ConfigureOutcome::BelowCommitted { sold, held, items } => {
                return Err(ServiceError::StockBelowCommitted { sold, held, items })
            }
            ConfigureOutcome::ShapeChange { sold, held } => {
                return Err(ServiceError::ShapeChange { sold, held })
            }
            ConfigureOutcome::CapAdded { sku } => return Err(ServiceError::CapAdded { sku }),
            ConfigureOutcome::Closed { ends_ms } => {
                return Err(ServiceError::SaleClosed {
                    ends_ms: Some(ends_ms),
                })
            }
            ConfigureOutcome::Created { epoch } => (true, epoch),
            ConfigureOutcome::Updated { epoch } => (false, epoch),
        };
        self.store.upsert_sale(&mut tx, sale, cfg, epoch).await?;
        // A PUT changes the configuration, never what admins steered.
        let steering = existing.as_ref().map(|row| row.steering);
        let change = (
            existing
                .as_ref()
                .map(|row| sale_json(&row.config, row.steering)),
            Some(sale_json(cfg, steering.unwrap_or_default())),
        );
        let action = AdminAction::Configure;
        self.store
            .audit(&mut tx, action, sale, change, origin)
            .await?;
        let state = self.commit_viewed(tx, sale).await?;
        Ok((created && existing.is_none(), state))
    }

    /// Commits an admin change of a sale and returns the sale as it left
    /// it: read while the row lock still holds back concurrent changes, so
    /// the answer shows this change, not a later one. The script has run:
    /// commit even if the read failed, and read again.
    pub(super) async fn commit_viewed(
        &self,
        tx: Transaction<'static, Postgres>,
        sale: &SaleId,
    ) -> Result<SaleState, ServiceError> {
        let state = self.view(sale).await;
        self.store.commit(tx).await?;
        match state {
            Ok(s) => Ok(s),
            Err(_) => self.view(sale).await,
        }
    }

    /// Rebuilds the sale from Postgres if Redis lost it (`SaleNotFound`:
    /// Postgres does not know it either). An admin change calls this
    /// before it locks the sale's row: the rebuild locks the row itself.
    pub(super) async fn rebuild_if_lost(&self, sale: &SaleId) -> Result<(), ServiceError> {
        match self.gate.sweep(sale).await {
            Err(GateError::NotLoaded) => self.restore(sale).await,
            _ => Ok(()),
        }
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
