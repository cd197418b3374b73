//! The totals `reconcile` checks: what a sale's orders add up to, and the
//! counters Postgres derives from them (`sold_count`, `user_purchases`,
//! `user_item_purchases`), which it can rebuild from the orders.

use std::collections::BTreeMap;

use super::sales::read_items;
use super::{Store, StoreError};
use crate::domain::{item_buyer, Item};
use crate::ids::SaleId;

/// A sale's items as Postgres has them, for `reconcile`.
#[derive(Debug, Clone, Default)]
pub struct ItemTotals {
    /// The items (none for a one-item sale).
    pub items: Vec<Item>,
    /// Units confirmed per sku (`order_items`).
    pub sold: BTreeMap<String, i64>,
    /// Per [`item_buyer`] of the items with their own cap: units in
    /// `order_items`, and in `user_item_purchases`.
    pub bought: BTreeMap<String, i64>,
    pub purchases: BTreeMap<String, i64>,
}

impl Store {
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

    /// What `reconcile` checks of a sale's items, for `reconcile`.
    pub async fn item_totals(&self, sale: &SaleId) -> Result<ItemTotals, StoreError> {
        let fut = async {
            let mut conn = self.pool.acquire().await?;
            let items = read_items(&mut conn, sale).await?;
            let sold: Vec<(String, i64)> = sqlx::query_as("SELECT oi.sku, sum(oi.quantity)::int8 FROM order_items oi JOIN orders o ON o.reservation_id = oi.reservation_id WHERE o.sale_id = $1 GROUP BY oi.sku")
                .bind(sale.as_str())
                .fetch_all(&mut *conn)
                .await?;
            let bought: Vec<(String, String, i64)> = sqlx::query_as(concat!(
                "SELECT oi.sku, o.user_id, sum(oi.quantity)::int8 FROM order_items oi",
                " JOIN orders o ON o.reservation_id = oi.reservation_id",
                " JOIN sale_items si ON si.sale_id = o.sale_id AND si.sku = oi.sku AND si.per_user_limit IS NOT NULL",
                " WHERE o.sale_id = $1 GROUP BY oi.sku, o.user_id"
            ))
            .bind(sale.as_str())
            .fetch_all(&mut *conn)
            .await?;
            let purchases: Vec<(String, String, i64)> = sqlx::query_as("SELECT sku, user_id, quantity::int8 FROM user_item_purchases WHERE sale_id = $1 AND quantity > 0")
                .bind(sale.as_str())
                .fetch_all(&mut *conn)
                .await?;
            let keyed = |rows: Vec<(String, String, i64)>| {
                rows.into_iter()
                    .map(|(sku, user, n)| (item_buyer(&sku, &user), n))
                    .collect()
            };
            Ok(ItemTotals {
                items,
                sold: sold.into_iter().collect(),
                bought: keyed(bought),
                purchases: keyed(purchases),
            })
        };
        self.bounded(self.timeout * 2, fut).await
    }

    /// Recomputes `user_purchases` and `sales.sold_count` from `orders`,
    /// and `user_item_purchases` from `order_items`.
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
            sqlx::query("DELETE FROM user_item_purchases WHERE sale_id = $1")
                .bind(sale.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query(concat!(
                "INSERT INTO user_item_purchases (sale_id, sku, user_id, quantity)",
                " SELECT o.sale_id, oi.sku, o.user_id, sum(oi.quantity)::int4 FROM order_items oi",
                " JOIN orders o ON o.reservation_id = oi.reservation_id",
                " JOIN sale_items si ON si.sale_id = o.sale_id AND si.sku = oi.sku AND si.per_user_limit IS NOT NULL",
                " WHERE o.sale_id = $1 GROUP BY o.sale_id, oi.sku, o.user_id"
            ))
            .bind(sale.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        };
        self.bounded(self.timeout * 2, fut).await
    }
}
