//! A sale's confirmed orders for its admins: by pages (keyset by
//! `(confirmed_at, reservation_id)`, see `migrations/0005_steer.sql`) and
//! all of them as a stream, read off the connection row by row.

use chrono::{DateTime, Utc};
use futures_util::{Stream, TryStreamExt};
use uuid::Uuid;

use super::orders::{order, OrderRow};
use super::{Store, StoreError};
use crate::domain::{Line, Order};

/// An order row with its lines as a cart (`sku:qty,...`, NULL for none).
type PageRow = (Uuid, String, String, i32, DateTime<Utc>, Option<String>);

/// The lines of the order of the row, as a cart (for `concat!`).
macro_rules! lines {
    () => {
        "(SELECT string_agg(oi.sku || ':' || oi.quantity, ',' ORDER BY oi.sku) FROM order_items oi WHERE oi.reservation_id = orders.reservation_id)"
    };
}
use crate::ids::SaleId;

impl Store {
    /// At most `limit` orders of a sale after `after` (the confirmation
    /// time and id of the last order of the page before), oldest first;
    /// and whether more follow.
    pub async fn confirmed_page(
        &self,
        sale: &SaleId,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> Result<(Vec<Order>, bool), StoreError> {
        // With each order's lines (a sale of several items), as a cart.
        let q = match after {
            None => sqlx::query_as::<_, PageRow>(concat!(
                "SELECT reservation_id, sale_id, user_id, quantity, confirmed_at, ",
                lines!(),
                " FROM orders WHERE sale_id = $1 ORDER BY confirmed_at, reservation_id LIMIT $2"
            ))
            .bind(sale.as_str())
            .bind(i64::from(limit) + 1),
            Some((at, rid)) => sqlx::query_as::<_, PageRow>(concat!(
                "SELECT reservation_id, sale_id, user_id, quantity, confirmed_at, ",
                lines!(),
                " FROM orders WHERE sale_id = $1 AND (confirmed_at, reservation_id) > ($3, $4)",
                " ORDER BY confirmed_at, reservation_id LIMIT $2"
            ))
            .bind(sale.as_str())
            .bind(i64::from(limit) + 1)
            .bind(at)
            .bind(rid),
        };
        let mut rows = self.bounded(self.timeout, q.fetch_all(&self.pool)).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let orders = rows
            .into_iter()
            .map(|(rid, sale, user, qty, at, lines)| {
                let mut o = order((rid, sale, user, qty, at));
                o.items =
                    Line::parse_cart(lines.as_deref().unwrap_or_default()).unwrap_or_default();
                o
            })
            .collect();
        Ok((orders, more))
    }

    /// Every order of a sale, oldest first, decoded as its row arrives: the
    /// caller holds one row at a time, whatever the number of orders.
    pub fn orders_stream<'a>(
        &'a self,
        sale: &'a SaleId,
    ) -> impl Stream<Item = Result<Order, StoreError>> + Send + 'a {
        sqlx::query_as::<_, OrderRow>(
            "SELECT reservation_id, sale_id, user_id, quantity, confirmed_at FROM orders
             WHERE sale_id = $1 ORDER BY confirmed_at, reservation_id",
        )
        .bind(sale.as_str())
        .fetch(&self.pool)
        .map_ok(order)
        .map_err(StoreError::from)
    }
}
