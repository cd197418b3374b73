//! Postgres: the durable record (`sales`, `orders`, `user_purchases`,
//! `stock_movements`, `admin_actions`) and its migrations.
//!
//! - `mod.rs` (here): the store, its errors, the bounds on every call;
//! - `sales.rs`: sale rows, configuration, the rebuild of a lost sale;
//! - `orders.rs`: orders and stock movements, written exactly once;
//! - `group_commit.rs`: the confirm path's orders, committed in batches;
//! - `events.rs`: the events of a sale's Redis stream, as the
//!   write-behind reads them;
//! - `audit.rs`: the audit of admin changes (`admin_actions`);
//! - `listing.rs`: a sale's orders for its admins, by pages or streamed.

mod audit;
pub mod events;
mod group_commit;
mod listing;
mod orders;
mod sales;
mod totals;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

pub use audit::{reservation_json, sale_json, AdminAction, AuditEntry};
pub use events::{Event, EventKind};
pub use group_commit::{Committed, ConfirmQueue, GroupCommitConfig};
pub use orders::{Recorded, BATCH_SQL, PRESENT_SQL};
pub use sales::{Rebuild, SaleRow, Snapshot};
pub use totals::ItemTotals;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Postgres is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("Postgres did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Postgres rejected the statement")]
    Database(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The failure of a group commit, shared by every confirm of its batch.
    #[error(transparent)]
    Batch(Arc<StoreError>),
}

impl StoreError {
    /// True when retrying later can succeed (connection, overload, deadlock).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::Timeout(_) => true,
            Self::Batch(e) => e.is_transient(),
            Self::Database(_) | Self::Migrate(_) => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let transient = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                c.starts_with("08")
                    || c.starts_with("53")
                    || c.starts_with("57")
                    || c == "40001"
                    || c == "40P01"
            }),
            _ => false,
        };
        if transient {
            Self::Unavailable(e)
        } else {
            Self::Database(e)
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    timeout: Duration,
}

/// Bounds every statement of the current transaction on the server: a
/// statement still running (or waiting for a lock) when the client gives
/// up is cancelled by Postgres itself, so its transaction never commits
/// later behind the client's back, and its locks go with it.
async fn bound_statements(tx: &mut PgConnection, limit: Duration) -> Result<(), sqlx::Error> {
    set_statement_timeout(tx, limit, true).await
}

/// Postgres' `statement_timeout` set to `limit` (at least 1 ms): for the
/// transaction (`local`), or for the session.
async fn set_statement_timeout(
    conn: &mut PgConnection,
    limit: Duration,
    local: bool,
) -> Result<(), sqlx::Error> {
    let ms = limit.as_millis().clamp(1, i32::MAX as u128).to_string();
    sqlx::query("SELECT set_config('statement_timeout', $1, $2)")
        .bind(ms)
        .bind(local)
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

impl Store {
    /// Connects lazily: `serve` starts (not ready) while Postgres is down.
    pub fn connect_lazy(
        url: &str,
        timeout: Duration,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let opts: PgConnectOptions = url.parse().map_err(StoreError::Database)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_lazy_with(opts.application_name("flashgate"));
        Ok(Self { pool, timeout })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    async fn bounded<T>(
        &self,
        limit: Duration,
        fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }

    /// Commits a transaction within the store's bound.
    pub async fn commit(&self, tx: Transaction<'static, Postgres>) -> Result<(), StoreError> {
        self.bounded(self.timeout, tx.commit()).await
    }

    /// The bound on one statement outside the confirm path.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(self.timeout, sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }
}
