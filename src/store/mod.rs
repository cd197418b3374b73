//! Postgres: the durable record (sales, orders, user_purchases,
//! stock_movements), migrations, and the write-behind worker.

pub mod events;
pub mod worker;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::gate::SaleConfig;
use crate::ids::SaleId;
pub use events::{Event, EventKind};

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
}

impl StoreError {
    /// True when retrying later can succeed (connection, overload, deadlock).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Timeout(_))
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

/// A sale as Postgres keeps it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SaleRow {
    pub sale_id: String,
    pub product_id: Option<String>,
    pub stock_limit: i64,
    pub per_user_limit: i32,
    pub hold_ttl_secs: i32,
    pub max_hold_secs: i32,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub sold_count: i64,
    /// The incarnation of the sale's Redis state whose orders are recorded
    /// (see `migrations/0002_sale_epoch.sql`).
    pub epoch: i64,
}

impl SaleRow {
    pub fn config(&self) -> SaleConfig {
        SaleConfig {
            stock: self.stock_limit,
            per_user_limit: u32::try_from(self.per_user_limit).unwrap_or(1),
            hold_ttl_ms: i64::from(self.hold_ttl_secs) * 1000,
            max_hold_ms: i64::from(self.max_hold_secs) * 1000,
            starts_ms: self.starts_at.map(|t| t.timestamp_millis()),
            ends_ms: self.ends_at.map(|t| t.timestamp_millis()),
            product_id: self.product_id.clone(),
        }
    }
}

/// One confirmed reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub reservation_id: Uuid,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: i32,
    pub confirmed_at: DateTime<Utc>,
    /// The sale's epoch the confirm ran in: recorded only while it is the
    /// sale's current one.
    pub epoch: i64,
}

/// What a write of orders did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Orders that were new.
    pub inserted: u64,
    /// Orders refused because their confirm ran in an epoch the sale has
    /// left (its Redis state was lost and rebuilt meanwhile) and that were
    /// not recorded before: their units were offered again.
    pub stale: Vec<Uuid>,
}

/// What a rebuild of a sale's Redis state starts from: its row locked
/// against every order write until [`Store::commit_rebuild`] (or a drop).
pub struct Rebuild {
    tx: Transaction<'static, Postgres>,
    pub snapshot: Snapshot,
}

/// What a lost sale is rebuilt from.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub sale: SaleRow,
    /// (user, units confirmed), every buyer with a purchase.
    pub bought: Vec<(String, i64)>,
    pub sold: i64,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    timeout: Duration,
}

/// The columns of [`SaleRow`], for `concat!` into static SQL.
macro_rules! sale_columns {
    () => {
        "sale_id, product_id, stock_limit, per_user_limit, hold_ttl_secs, max_hold_secs, starts_at, ends_at, sold_count, epoch"
    };
}

/// Bounds every statement of the current transaction on the server: a
/// statement still running (or waiting for a lock) when the client gives
/// up is cancelled by Postgres itself, so its transaction never commits
/// later behind the client's back, and its locks go with it.
async fn bound_statements(
    tx: &mut Transaction<'static, Postgres>,
    limit: Duration,
) -> Result<(), sqlx::Error> {
    let ms = limit.as_millis().clamp(1, i32::MAX as u128).to_string();
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(ms)
        .execute(&mut **tx)
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

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(self.timeout, sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }

    pub async fn list_sales(&self) -> Result<Vec<SaleRow>, StoreError> {
        let sql = concat!("SELECT ", sale_columns!(), " FROM sales ORDER BY sale_id");
        self.bounded(
            self.timeout,
            sqlx::query_as::<_, SaleRow>(sql).fetch_all(&self.pool),
        )
        .await
    }

    /// Starts a rebuild of the sale's Redis state: locks its row (waiting
    /// for order writes in flight, which hold it `FOR KEY SHARE`, and
    /// holding back new ones), then reads every buyer's confirmed total,
    /// which now includes everything committed. `None`: no such sale.
    pub async fn begin_rebuild(&self, sale: &SaleId) -> Result<Option<Rebuild>, StoreError> {
        let limit = self.timeout * 2;
        let fut = async {
            let mut tx = self.pool.begin().await?;
            bound_statements(&mut tx, limit).await?;
            let sql = concat!(
                "SELECT ",
                sale_columns!(),
                " FROM sales WHERE sale_id = $1 FOR UPDATE"
            );
            let Some(row) = sqlx::query_as::<_, SaleRow>(sql)
                .bind(sale.as_str())
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            // READ COMMITTED: this statement sees every write that held the
            // row before the lock above was granted.
            let bought: Vec<(String, i64)> = sqlx::query_as("SELECT user_id, quantity::int8 FROM user_purchases WHERE sale_id = $1 AND quantity > 0 ORDER BY user_id")
                .bind(sale.as_str())
                .fetch_all(&mut *tx)
                .await?;
            let sold = bought.iter().map(|(_, q)| q).sum();
            Ok(Some(Rebuild {
                tx,
                snapshot: Snapshot {
                    sale: row,
                    bought,
                    sold,
                },
            }))
        };
        self.bounded(limit, fut).await
    }

    /// Gives up a rebuild (another instance did it first): unlocks the row.
    pub async fn abandon_rebuild(&self, rebuild: Rebuild) {
        if let Err(e) = self.bounded(self.timeout, rebuild.tx.rollback()).await {
            // The connection goes back to the pool and rolls back there.
            tracing::debug!(error = %crate::error::chain(&e), "rollback of an abandoned rebuild failed");
        }
    }

    /// Commits a rebuild: from now on only orders of `epoch` are recorded.
    pub async fn commit_rebuild(
        &self,
        mut rebuild: Rebuild,
        sale: &SaleId,
        epoch: i64,
    ) -> Result<(), StoreError> {
        let fut = async {
            sqlx::query("UPDATE sales SET epoch = $2 WHERE sale_id = $1")
                .bind(sale.as_str())
                .bind(epoch)
                .execute(&mut *rebuild.tx)
                .await?;
            rebuild.tx.commit().await
        };
        self.bounded(self.timeout, fut).await
    }

    /// The order of one reservation, if it was recorded.
    pub async fn order(&self, sale: &SaleId, rid: &Uuid) -> Result<Option<Order>, StoreError> {
        let q = sqlx::query_as::<_, (Uuid, String, String, i32, DateTime<Utc>)>(
            "SELECT reservation_id, sale_id, user_id, quantity, confirmed_at FROM orders WHERE reservation_id = $1 AND sale_id = $2",
        )
        .bind(rid)
        .bind(sale.as_str())
        .fetch_optional(&self.pool);
        Ok(self.bounded(self.timeout, q).await?.map(
            |(reservation_id, sale_id, user_id, quantity, confirmed_at)| Order {
                reservation_id,
                sale_id,
                user_id,
                quantity,
                confirmed_at,
                epoch: 0,
            },
        ))
    }

    /// Opens the transaction of a configuration change and locks the sale's
    /// row (if any), so concurrent PUTs of one sale apply one after another.
    pub async fn begin_configure(
        &self,
        sale: &SaleId,
    ) -> Result<(Transaction<'static, Postgres>, Option<SaleRow>), StoreError> {
        let fut = async {
            let mut tx = self.pool.begin().await?;
            let sql = concat!(
                "SELECT ",
                sale_columns!(),
                " FROM sales WHERE sale_id = $1 FOR UPDATE"
            );
            let row = sqlx::query_as::<_, SaleRow>(sql)
                .bind(sale.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            Ok((tx, row))
        };
        self.bounded(self.timeout, fut).await
    }

    /// `epoch`: the Redis state's (see `lua/configure.lua`).
    pub async fn upsert_sale(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        sale: &SaleId,
        cfg: &SaleConfig,
        epoch: i64,
    ) -> Result<(), StoreError> {
        let to_time = |ms: Option<i64>| ms.and_then(DateTime::<Utc>::from_timestamp_millis);
        let q = sqlx::query(
            "INSERT INTO sales (sale_id, product_id, stock_limit, per_user_limit, hold_ttl_secs, max_hold_secs, starts_at, ends_at, epoch)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (sale_id) DO UPDATE SET product_id = EXCLUDED.product_id, stock_limit = EXCLUDED.stock_limit,
               per_user_limit = EXCLUDED.per_user_limit, hold_ttl_secs = EXCLUDED.hold_ttl_secs,
               max_hold_secs = EXCLUDED.max_hold_secs, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
               epoch = EXCLUDED.epoch, updated_at = now()",
        )
        .bind(sale.as_str())
        .bind(cfg.product_id.as_deref())
        .bind(cfg.stock)
        .bind(i32::try_from(cfg.per_user_limit).unwrap_or(i32::MAX))
        .bind(i32::try_from(cfg.hold_ttl_ms / 1000).unwrap_or(i32::MAX))
        .bind(i32::try_from(cfg.max_hold_ms / 1000).unwrap_or(i32::MAX))
        .bind(to_time(cfg.starts_ms))
        .bind(to_time(cfg.ends_ms))
        .bind(epoch);
        self.bounded(self.timeout, q.execute(&mut **tx))
            .await
            .map(|_| ())
    }

    /// Per buyer: units in `orders` (the base fact) and in `user_purchases`.
    pub async fn totals(
        &self,
        sale: &SaleId,
    ) -> Result<(BTreeMap<String, i64>, BTreeMap<String, i64>, i64), StoreError> {
        let fut = async {
            let orders: Vec<(String, i64)> = sqlx::query_as("SELECT user_id, sum(quantity)::int8 FROM orders WHERE sale_id = $1 GROUP BY user_id").bind(sale.as_str()).fetch_all(&self.pool).await?;
            let purchases: Vec<(String, i64)> = sqlx::query_as("SELECT user_id, quantity::int8 FROM user_purchases WHERE sale_id = $1 AND quantity > 0").bind(sale.as_str()).fetch_all(&self.pool).await?;
            let sold: Option<(i64,)> =
                sqlx::query_as("SELECT sold_count FROM sales WHERE sale_id = $1")
                    .bind(sale.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
            Ok((
                orders.into_iter().collect(),
                purchases.into_iter().collect(),
                sold.map_or(0, |s| s.0),
            ))
        };
        self.bounded(self.timeout * 2, fut).await
    }

    /// Which of these reservations already have an order row.
    pub async fn orders_present(&self, rids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
        if rids.is_empty() {
            return Ok(HashSet::new());
        }
        let q = sqlx::query_as::<_, (Uuid,)>(
            "SELECT reservation_id FROM orders WHERE reservation_id = ANY($1)",
        )
        .bind(rids)
        .fetch_all(&self.pool);
        Ok(self
            .bounded(self.timeout, q)
            .await?
            .into_iter()
            .map(|r| r.0)
            .collect())
    }

    /// Recomputes `user_purchases` and `sales.sold_count` from `orders`.
    pub async fn rebuild_totals(&self, sale: &SaleId) -> Result<(), StoreError> {
        let fut = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT 1 FROM sales WHERE sale_id = $1 FOR UPDATE")
                .bind(sale.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM user_purchases WHERE sale_id = $1")
                .bind(sale.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO user_purchases (sale_id, user_id, quantity) SELECT sale_id, user_id, sum(quantity)::int4 FROM orders WHERE sale_id = $1 GROUP BY sale_id, user_id").bind(sale.as_str()).execute(&mut *tx).await?;
            sqlx::query("UPDATE sales SET sold_count = (SELECT coalesce(sum(quantity), 0) FROM orders WHERE sale_id = $1), updated_at = now() WHERE sale_id = $1").bind(sale.as_str()).execute(&mut *tx).await?;
            tx.commit().await
        };
        self.bounded(self.timeout * 2, fut).await
    }

    /// Records confirmed orders exactly once each (by reservation id),
    /// advancing user_purchases and sales.sold_count only for rows that were
    /// new, and only orders of their sale's current epoch.
    ///
    /// Within `limit` it either commits or certainly never will: the write
    /// runs under a server-side `statement_timeout` that ends before the
    /// caller's own bound, so Postgres cancels a write that waits (for a
    /// lock, say) instead of letting it commit after the answer went out.
    pub async fn record_orders(
        &self,
        orders: &[Order],
        limit: Duration,
    ) -> Result<Recorded, StoreError> {
        let deadline = tokio::time::Instant::now() + limit;
        let fut = async {
            let mut tx = self.pool.begin().await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            bound_statements(&mut tx, left.saturating_sub(STATEMENT_MARGIN)).await?;
            let recorded = insert_orders(&mut tx, orders).await?;
            tx.commit().await?;
            Ok(recorded)
        };
        // The server's bound fires first; this one only guards against a
        // Postgres that stops answering altogether (the write is then
        // cancelled by the server's timeout, or was never received).
        self.bounded(limit + CLIENT_GRACE, fut).await
    }

    /// Applies a batch of one sale's stream events in one transaction: the
    /// audit rows and the orders of its `confirmed` events. Replaying any
    /// part of it changes nothing.
    pub async fn apply_events(&self, events: &[Event]) -> Result<Recorded, StoreError> {
        let limit = self.timeout * 4;
        let fut = async {
            let mut tx = self.pool.begin().await?;
            bound_statements(&mut tx, limit).await?;
            let orders: Vec<Order> = events.iter().filter_map(Event::order).collect();
            // Orders first: they lock the sales' rows (FOR KEY SHARE)
            // before anything else, as every order write does.
            let recorded = insert_orders(&mut tx, &orders).await?;
            insert_movements(&mut tx, events).await?;
            tx.commit().await?;
            Ok(recorded)
        };
        self.bounded(limit + CLIENT_GRACE, fut).await
    }
}

/// How much earlier than the caller's deadline the server cancels a write.
const STATEMENT_MARGIN: Duration = Duration::from_millis(50);
/// How long past its deadline the client waits for the server's own
/// cancellation before giving up on the connection.
const CLIENT_GRACE: Duration = Duration::from_millis(500);

async fn insert_orders(
    tx: &mut Transaction<'static, Postgres>,
    orders: &[Order],
) -> Result<Recorded, sqlx::Error> {
    if orders.is_empty() {
        return Ok(Recorded::default());
    }
    let mut rid = Vec::with_capacity(orders.len());
    let mut sale = Vec::with_capacity(orders.len());
    let mut user = Vec::with_capacity(orders.len());
    let mut qty = Vec::with_capacity(orders.len());
    let mut at = Vec::with_capacity(orders.len());
    let mut epoch = Vec::with_capacity(orders.len());
    for o in orders {
        rid.push(o.reservation_id);
        sale.push(o.sale_id.as_str());
        user.push(o.user_id.as_str());
        qty.push(o.quantity);
        at.push(o.confirmed_at);
        epoch.push(o.epoch);
    }
    // Data-modifying CTEs run exactly once each; user_purchases and sold_count
    // only move by the rows `ins` really inserted.
    //
    // `fence` locks the sales' rows FOR KEY SHARE (in one order, so writers
    // never deadlock; they do not block one another) and keeps only orders
    // of each sale's current epoch: a rebuild (which takes the row FOR
    // UPDATE) either waits for this write, and then reads it, or bumped
    // the epoch first, and then this write records nothing of the lost
    // state. An order of a sale Postgres does not know is recorded as
    // before (there is nothing to rebuild it from).
    let (n, stale): (i64, Vec<Uuid>) = sqlx::query_as(
        "WITH input AS (
            SELECT DISTINCT ON (rid) rid, sale_id, user_id, qty, at, epoch
            FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[], $6::int8[]) AS t(rid, sale_id, user_id, qty, at, epoch)
            ORDER BY rid
        ), fence AS (
            SELECT s.sale_id, s.epoch FROM sales s
            WHERE s.sale_id IN (SELECT sale_id FROM input)
            ORDER BY s.sale_id
            FOR KEY SHARE
        ), current AS (
            SELECT i.* FROM input i LEFT JOIN fence f ON f.sale_id = i.sale_id
            WHERE f.sale_id IS NULL OR f.epoch = i.epoch
        ), ins AS (
            INSERT INTO orders (reservation_id, sale_id, user_id, quantity, confirmed_at)
            SELECT rid, sale_id, user_id, qty, at FROM current
            ON CONFLICT (reservation_id) DO NOTHING
            RETURNING sale_id, user_id, quantity
        ), buyers AS (
            INSERT INTO user_purchases (sale_id, user_id, quantity)
            SELECT sale_id, user_id, sum(quantity)::int4 FROM ins GROUP BY sale_id, user_id ORDER BY sale_id, user_id
            ON CONFLICT (sale_id, user_id) DO UPDATE
              SET quantity = user_purchases.quantity + EXCLUDED.quantity, updated_at = now()
            RETURNING 1
        ), sold AS (
            UPDATE sales s SET sold_count = s.sold_count + x.q, updated_at = now()
            FROM (SELECT sale_id, sum(quantity) AS q FROM ins GROUP BY sale_id) x
            WHERE s.sale_id = x.sale_id
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM ins),
               ARRAY(SELECT i.rid FROM input i
                     WHERE NOT EXISTS (SELECT 1 FROM current c WHERE c.rid = i.rid)
                       AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.reservation_id = i.rid))",
    )
    .bind(&rid)
    .bind(&sale)
    .bind(&user)
    .bind(&qty)
    .bind(&at)
    .bind(&epoch)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Recorded {
        inserted: u64::try_from(n).unwrap_or(0),
        stale,
    })
}

async fn insert_movements(
    tx: &mut Transaction<'static, Postgres>,
    events: &[Event],
) -> Result<u64, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let n = events.len();
    let (mut sale, mut id, mut kind, mut rid, mut user, mut qty) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut sold, mut held, mut stock, mut at) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in events {
        sale.push(e.sale_id.as_str());
        id.push(e.event_id.as_str());
        kind.push(e.kind.as_str());
        rid.push(e.reservation_id);
        user.push(e.user_id.as_deref());
        qty.push(e.quantity);
        sold.push(e.sold_after);
        held.push(e.held_after);
        stock.push(e.stock_after);
        at.push(e.occurred_at);
    }
    let done = sqlx::query(
        "INSERT INTO stock_movements (sale_id, event_id, kind, reservation_id, user_id, quantity, sold_after, held_after, stock_after, occurred_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::int4[], $7::int8[], $8::int8[], $9::int8[], $10::timestamptz[])
         ON CONFLICT (sale_id, event_id) DO NOTHING",
    )
    .bind(&sale)
    .bind(&id)
    .bind(&kind)
    .bind(&rid)
    .bind(&user)
    .bind(&qty)
    .bind(&sold)
    .bind(&held)
    .bind(&stock)
    .bind(&at)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}
