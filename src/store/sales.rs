//! Sale rows: listing, configuration (under the row's lock), and the
//! rebuild of a sale whose Redis state was lost.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};

use super::{bound_statements, Store, StoreError};
use crate::domain::{Admission, Item, SaleConfig, Steering};
use crate::ids::SaleId;

/// A time of the scripts (ms) as Postgres keeps it.
pub(super) fn to_time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(DateTime::<Utc>::from_timestamp_millis)
}

/// A sale as Postgres keeps it.
#[derive(Debug, Clone)]
pub struct SaleRow {
    pub sale_id: String,
    pub config: SaleConfig,
    pub sold_count: i64,
    /// The incarnation of the sale's Redis state whose orders are recorded
    /// (see `migrations/0002_sale_epoch.sql`).
    pub epoch: i64,
    /// Paused, closed (see `migrations/0005_steer.sql`).
    pub steering: Steering,
}

impl<'r> sqlx::FromRow<'r, PgRow> for SaleRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let secs_ms = |col: &str| -> Result<i64, sqlx::Error> {
            Ok(i64::from(row.try_get::<i32, _>(col)?) * 1000)
        };
        let ms = |col: &str| -> Result<Option<i64>, sqlx::Error> {
            Ok(row
                .try_get::<Option<DateTime<Utc>>, _>(col)?
                .map(|t| t.timestamp_millis()))
        };
        Ok(Self {
            sale_id: row.try_get("sale_id")?,
            config: SaleConfig {
                stock: row.try_get("stock_limit")?,
                per_user_limit: u32::try_from(row.try_get::<i32, _>("per_user_limit")?)
                    .unwrap_or(1),
                hold_ttl_ms: secs_ms("hold_ttl_secs")?,
                max_hold_ms: secs_ms("max_hold_secs")?,
                starts_ms: ms("starts_at")?,
                ends_ms: ms("ends_at")?,
                product_id: row.try_get("product_id")?,
                admission: match row.try_get::<&str, _>("admission")? {
                    "queue" => Admission::Queue {
                        per_sec: u32::try_from(row.try_get::<i32, _>("admit_per_sec")?)
                            .unwrap_or(1),
                        window_ms: secs_ms("admission_window_secs")?,
                        opens_ms: ms("queue_opens_at")?,
                    },
                    _ => Admission::Open,
                },
                // Read apart (`sale_items`), where they are needed.
                items: Vec::new(),
            },
            sold_count: row.try_get("sold_count")?,
            epoch: row.try_get("epoch")?,
            steering: Steering {
                paused: row.try_get("paused")?,
                closed_ms: ms("closed_at")?,
            },
        })
    }
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
    /// A sale of several items: units confirmed per sku.
    pub item_sold: std::collections::HashMap<String, i64>,
    /// (sku, user, units confirmed) of every item with its own cap.
    pub item_bought: Vec<(String, String, i64)>,
}

/// The items of a sale (none for a one-item sale), in their order.
pub(super) async fn read_items(
    conn: &mut sqlx::PgConnection,
    sale: &SaleId,
) -> Result<Vec<Item>, sqlx::Error> {
    let rows: Vec<(String, i64, Option<i32>)> = sqlx::query_as(
        "SELECT sku, stock, per_user_limit FROM sale_items WHERE sale_id = $1 ORDER BY position",
    )
    .bind(sale.as_str())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(sku, stock, cap)| Item {
            sku,
            stock,
            per_user_limit: cap.and_then(|c| u32::try_from(c).ok()),
        })
        .collect())
}

/// The columns of [`SaleRow`], for `concat!` into static SQL.
macro_rules! sale_columns {
    () => {
        "sale_id, product_id, stock_limit, per_user_limit, hold_ttl_secs, max_hold_secs, starts_at, ends_at, sold_count, epoch, admission, admit_per_sec, admission_window_secs, queue_opens_at, paused, closed_at"
    };
}

impl Store {
    pub async fn list_sales(&self) -> Result<Vec<SaleRow>, StoreError> {
        let sql = concat!("SELECT ", sale_columns!(), " FROM sales ORDER BY sale_id");
        self.bounded(
            self.timeout,
            sqlx::query_as::<_, SaleRow>(sql).fetch_all(&self.pool),
        )
        .await
    }

    /// Starts a rebuild of the sale's Redis state: locks its row (waiting
    /// for order writes in flight, which hold it `FOR NO KEY UPDATE`, and
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
            let Some(mut row) = sqlx::query_as::<_, SaleRow>(sql)
                .bind(sale.as_str())
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            row.config.items = read_items(&mut tx, sale).await?;
            // READ COMMITTED: this statement sees every write that held the
            // row before the lock above was granted.
            let bought: Vec<(String, i64)> = sqlx::query_as("SELECT user_id, quantity::int8 FROM user_purchases WHERE sale_id = $1 AND quantity > 0 ORDER BY user_id")
                .bind(sale.as_str())
                .fetch_all(&mut *tx)
                .await?;
            let sold = bought.iter().map(|(_, q)| q).sum();
            let item_sold: Vec<(String, i64)> = sqlx::query_as("SELECT oi.sku, sum(oi.quantity)::int8 FROM order_items oi JOIN orders o ON o.reservation_id = oi.reservation_id WHERE o.sale_id = $1 GROUP BY oi.sku")
                .bind(sale.as_str())
                .fetch_all(&mut *tx)
                .await?;
            let item_bought: Vec<(String, String, i64)> = sqlx::query_as("SELECT sku, user_id, quantity::int8 FROM user_item_purchases WHERE sale_id = $1 AND quantity > 0 ORDER BY sku, user_id")
                .bind(sale.as_str())
                .fetch_all(&mut *tx)
                .await?;
            Ok(Some(Rebuild {
                tx,
                snapshot: Snapshot {
                    sale: row,
                    bought,
                    sold,
                    item_sold: item_sold.into_iter().collect(),
                    item_bought,
                },
            }))
        };
        self.bounded(limit, fut).await
    }

    /// Gives up a rebuild (another instance did it first): unlocks the row.
    pub async fn abandon_rebuild(&self, rebuild: Rebuild) {
        if let Err(e) = self.bounded(self.timeout, rebuild.tx.rollback()).await {
            // The connection goes back to the pool and rolls back there.
            tracing::debug!(error = %crate::telemetry::chain(&e), "rollback of an abandoned rebuild failed");
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
            let mut row = sqlx::query_as::<_, SaleRow>(sql)
                .bind(sale.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = row.as_mut() {
                row.config.items = read_items(&mut tx, sale).await?;
            }
            Ok((tx, row))
        };
        self.bounded(self.timeout, fut).await
    }

    /// Writes what an admin steered (`lua/steer.lua` decided it): paused,
    /// and for a close, its end and when it was closed.
    pub async fn steer_sale(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        sale: &SaleId,
        steering: Steering,
        ends_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let q = sqlx::query(
            "UPDATE sales SET paused = $2, ends_at = $3, closed_at = $4, updated_at = now() WHERE sale_id = $1",
        )
        .bind(sale.as_str())
        .bind(steering.paused)
        .bind(to_time(ends_ms))
        .bind(to_time(steering.closed_ms));
        self.bounded(self.timeout, q.execute(&mut **tx))
            .await
            .map(|_| ())
    }

    /// Whether Postgres knows the sale.
    pub async fn sale_exists(&self, sale: &SaleId) -> Result<bool, StoreError> {
        let q =
            sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM sales WHERE sale_id = $1)")
                .bind(sale.as_str())
                .fetch_one(&self.pool);
        self.bounded(self.timeout, q).await
    }

    /// `epoch`: the Redis state's (see `lua/configure.lua`).
    pub async fn upsert_sale(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        sale: &SaleId,
        cfg: &SaleConfig,
        epoch: i64,
    ) -> Result<(), StoreError> {
        let secs = |ms: i64| i32::try_from(ms / 1000).unwrap_or(i32::MAX);
        let (rate, window, opens) = match &cfg.admission {
            Admission::Open => (50, 120, None),
            Admission::Queue {
                per_sec,
                window_ms,
                opens_ms,
            } => (
                i32::try_from(*per_sec).unwrap_or(i32::MAX),
                secs(*window_ms),
                *opens_ms,
            ),
        };
        let q = sqlx::query(
            "INSERT INTO sales (sale_id, product_id, stock_limit, per_user_limit, hold_ttl_secs, max_hold_secs, starts_at, ends_at, epoch,
                admission, admit_per_sec, admission_window_secs, queue_opens_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (sale_id) DO UPDATE SET product_id = EXCLUDED.product_id, stock_limit = EXCLUDED.stock_limit,
               per_user_limit = EXCLUDED.per_user_limit, hold_ttl_secs = EXCLUDED.hold_ttl_secs,
               max_hold_secs = EXCLUDED.max_hold_secs, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
               epoch = EXCLUDED.epoch, admission = EXCLUDED.admission, admit_per_sec = EXCLUDED.admit_per_sec,
               admission_window_secs = EXCLUDED.admission_window_secs, queue_opens_at = EXCLUDED.queue_opens_at,
               updated_at = now()",
        )
        .bind(sale.as_str())
        .bind(cfg.product_id.as_deref())
        .bind(cfg.stock)
        .bind(i32::try_from(cfg.per_user_limit).unwrap_or(i32::MAX))
        .bind(secs(cfg.hold_ttl_ms))
        .bind(secs(cfg.max_hold_ms))
        .bind(to_time(cfg.starts_ms))
        .bind(to_time(cfg.ends_ms))
        .bind(epoch)
        .bind(cfg.admission.as_str())
        .bind(rate)
        .bind(window)
        .bind(to_time(opens));
        self.bounded(self.timeout, q.execute(&mut **tx)).await?;
        self.upsert_items(tx, sale, &cfg.items).await
    }

    /// Writes a sale's items (the whole list: an item left out goes; the
    /// script refused that if it had units sold or held).
    async fn upsert_items(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        sale: &SaleId,
        items: &[Item],
    ) -> Result<(), StoreError> {
        let skus: Vec<&str> = items.iter().map(|i| i.sku.as_str()).collect();
        let stock: Vec<i64> = items.iter().map(|i| i.stock).collect();
        let caps: Vec<Option<i32>> = items
            .iter()
            .map(|i| i.per_user_limit.and_then(|c| i32::try_from(c).ok()))
            .collect();
        let fut = async {
            sqlx::query("DELETE FROM sale_items WHERE sale_id = $1 AND NOT (sku = ANY($2))")
                .bind(sale.as_str())
                .bind(&skus)
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "INSERT INTO sale_items (sale_id, sku, position, stock, per_user_limit)
                 SELECT $1, sku, pos::int4, stock, cap
                 FROM UNNEST($2::text[], $3::int8[], $4::int4[]) WITH ORDINALITY AS t(sku, stock, cap, pos)
                 ON CONFLICT (sale_id, sku) DO UPDATE SET position = EXCLUDED.position, stock = EXCLUDED.stock,
                   per_user_limit = EXCLUDED.per_user_limit, updated_at = now()",
            )
            .bind(sale.as_str())
            .bind(&skus)
            .bind(&stock)
            .bind(&caps)
            .execute(&mut **tx)
            .await
        };
        self.bounded(self.timeout, fut).await.map(|_| ())
    }
}
