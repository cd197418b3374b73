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
        "sale_id, product_id, stock_limit, per_user_limit, hold_ttl_secs, max_hold_secs, starts_at, ends_at, sold_count"
    };
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

    pub async fn get_sale(&self, sale: &SaleId) -> Result<Option<SaleRow>, StoreError> {
        let sql = concat!("SELECT ", sale_columns!(), " FROM sales WHERE sale_id = $1");
        self.bounded(
            self.timeout,
            sqlx::query_as::<_, SaleRow>(sql)
                .bind(sale.as_str())
                .fetch_optional(&self.pool),
        )
        .await
    }

    pub async fn list_sales(&self) -> Result<Vec<SaleRow>, StoreError> {
        let sql = concat!("SELECT ", sale_columns!(), " FROM sales ORDER BY sale_id");
        self.bounded(
            self.timeout,
            sqlx::query_as::<_, SaleRow>(sql).fetch_all(&self.pool),
        )
        .await
    }

    /// The sale and every buyer's confirmed total, read in one snapshot.
    pub async fn snapshot(&self, sale: &SaleId) -> Result<Option<Snapshot>, StoreError> {
        let fut = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
            let sql = concat!("SELECT ", sale_columns!(), " FROM sales WHERE sale_id = $1");
            let Some(row) = sqlx::query_as::<_, SaleRow>(sql)
                .bind(sale.as_str())
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            let bought: Vec<(String, i64)> = sqlx::query_as("SELECT user_id, quantity::int8 FROM user_purchases WHERE sale_id = $1 AND quantity > 0 ORDER BY user_id")
                .bind(sale.as_str())
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            let sold = bought.iter().map(|(_, q)| q).sum();
            Ok(Some(Snapshot {
                sale: row,
                bought,
                sold,
            }))
        };
        self.bounded(self.timeout * 2, fut).await
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

    pub async fn upsert_sale(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        sale: &SaleId,
        cfg: &SaleConfig,
    ) -> Result<(), StoreError> {
        let to_time = |ms: Option<i64>| ms.and_then(DateTime::<Utc>::from_timestamp_millis);
        let q = sqlx::query(
            "INSERT INTO sales (sale_id, product_id, stock_limit, per_user_limit, hold_ttl_secs, max_hold_secs, starts_at, ends_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (sale_id) DO UPDATE SET product_id = EXCLUDED.product_id, stock_limit = EXCLUDED.stock_limit,
               per_user_limit = EXCLUDED.per_user_limit, hold_ttl_secs = EXCLUDED.hold_ttl_secs,
               max_hold_secs = EXCLUDED.max_hold_secs, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
               updated_at = now()",
        )
        .bind(sale.as_str())
        .bind(cfg.product_id.as_deref())
        .bind(cfg.stock)
        .bind(i32::try_from(cfg.per_user_limit).unwrap_or(i32::MAX))
        .bind(i32::try_from(cfg.hold_ttl_ms / 1000).unwrap_or(i32::MAX))
        .bind(i32::try_from(cfg.max_hold_ms / 1000).unwrap_or(i32::MAX))
        .bind(to_time(cfg.starts_ms))
        .bind(to_time(cfg.ends_ms));
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
    /// new. Bounded by `limit`. Returns how many orders were new.
    pub async fn record_orders(
        &self,
        orders: &[Order],
        limit: Duration,
    ) -> Result<u64, StoreError> {
        let fut = async {
            let mut tx = self.pool.begin().await?;
            let n = insert_orders(&mut tx, orders).await?;
            tx.commit().await?;
            Ok(n)
        };
        self.bounded(limit, fut).await
    }

    /// Applies a batch of one sale's stream events in one transaction: the
    /// audit rows and the orders of its `confirmed` events. Replaying any
    /// part of it changes nothing.
    pub async fn apply_events(&self, events: &[Event]) -> Result<u64, StoreError> {
        let fut = async {
            let mut tx = self.pool.begin().await?;
            let n = insert_movements(&mut tx, events).await?;
            let orders: Vec<Order> = events.iter().filter_map(Event::order).collect();
            insert_orders(&mut tx, &orders).await?;
            tx.commit().await?;
            Ok(n)
        };
        self.bounded(self.timeout * 4, fut).await
    }
}

async fn insert_orders(
    tx: &mut Transaction<'static, Postgres>,
    orders: &[Order],
) -> Result<u64, sqlx::Error> {
    if orders.is_empty() {
        return Ok(0);
    }
    let mut rid = Vec::with_capacity(orders.len());
    let mut sale = Vec::with_capacity(orders.len());
    let mut user = Vec::with_capacity(orders.len());
    let mut qty = Vec::with_capacity(orders.len());
    let mut at = Vec::with_capacity(orders.len());
    for o in orders {
        rid.push(o.reservation_id);
        sale.push(o.sale_id.as_str());
        user.push(o.user_id.as_str());
        qty.push(o.quantity);
        at.push(o.confirmed_at);
    }
    // Data-modifying CTEs run exactly once each; user_purchases and sold_count
    // only move by the rows `ins` really inserted.
    let (n,): (i64,) = sqlx::query_as(
        "WITH input AS (
            SELECT DISTINCT ON (rid) rid, sale_id, user_id, qty, at
            FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[]) AS t(rid, sale_id, user_id, qty, at)
            ORDER BY rid
        ), ins AS (
            INSERT INTO orders (reservation_id, sale_id, user_id, quantity, confirmed_at)
            SELECT rid, sale_id, user_id, qty, at FROM input
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
        SELECT count(*) FROM ins",
    )
    .bind(&rid)
    .bind(&sale)
    .bind(&user)
    .bind(&qty)
    .bind(&at)
    .fetch_one(&mut **tx)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
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
