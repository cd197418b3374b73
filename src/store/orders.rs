//! Orders and stock movements: every confirmed reservation recorded
//! exactly once (idempotent by reservation id), and only in its sale's
//! current epoch.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Acquire, PgConnection};
use uuid::Uuid;

use super::{bound_statements, Event, Store, StoreError};
use crate::domain::{Line, Order, Record, Status};
use crate::ids::SaleId;

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

/// An order as read back: reservation_id, sale_id, user_id, quantity,
/// confirmed_at.
pub(super) type OrderRow = (Uuid, String, String, i32, DateTime<Utc>);

/// The order of a row read back (its epoch is not kept: 0).
pub(super) fn order((reservation_id, sale_id, user_id, quantity, confirmed_at): OrderRow) -> Order {
    Order {
        reservation_id,
        sale_id,
        user_id,
        quantity,
        confirmed_at,
        epoch: 0,
        items: Vec::new(),
    }
}

/// Which of these reservations already have an order row: one index probe
/// each, whatever the plan (a scalar subquery, which Postgres does not turn
/// into a join). `reservation_id = ANY($1)` was run as a scan of every
/// order, each compared with every id of the array in turn: in a profile
/// of 20,000 confirms, 16 % of the machine's CPU went to those comparisons.
/// Which of `$1` (reservation ids) have an order row (see [`present`]);
/// public so that a test can check its plan.
pub const PRESENT_SQL: &str = "SELECT r.id FROM UNNEST($1::uuid[]) AS r(id)
     WHERE (SELECT count(*) FROM orders o WHERE o.reservation_id = r.id) > 0";

async fn present(conn: &mut PgConnection, rids: &[Uuid]) -> Result<HashSet<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid,)> = sqlx::query_as(PRESENT_SQL)
        .bind(rids)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Rows of (sku, quantity) as a cart's lines.
fn lines(rows: Vec<(String, i32)>) -> Vec<Line> {
    rows.into_iter()
        .map(|(sku, q)| Line {
            sku,
            quantity: u32::try_from(q).unwrap_or(0),
        })
        .collect()
}

/// How much earlier than the caller's deadline the server cancels a write.
pub(super) const STATEMENT_MARGIN: Duration = Duration::from_millis(50);
/// How long past its deadline the client waits for the server's own
/// cancellation before giving up on the connection.
pub(super) const CLIENT_GRACE: Duration = Duration::from_millis(500);

impl Store {
    /// An order's lines (none for a one-item sale's order), unbounded: the
    /// caller bounds the whole lookup.
    async fn order_lines(&self, rid: &Uuid) -> Result<Vec<Line>, sqlx::Error> {
        let rows: Vec<(String, i32)> = sqlx::query_as(
            "SELECT sku, quantity FROM order_items WHERE reservation_id = $1 ORDER BY sku",
        )
        .bind(rid)
        .fetch_all(&self.pool)
        .await?;
        Ok(lines(rows))
    }

    /// A final reservation as Postgres recorded it: its order (confirmed),
    /// or its `cancelled` / `expired` event. What lookups fall back to once
    /// Redis dropped the reservation's record (the write-behind drops
    /// confirmed, cancelled and expired records once their event is
    /// committed).
    pub async fn final_record(
        &self,
        sale: &SaleId,
        rid: &Uuid,
    ) -> Result<Option<Record>, StoreError> {
        // A cart's cancel or expiry is one movement per line: their sum is
        // the reservation's quantity, their skus its lines (an order's lines
        // are in order_items).
        let fut = async {
            let Some((kind, user, qty, at, by_admin)) =
                sqlx::query_as::<_, (String, String, i64, DateTime<Utc>, bool)>(
                    "SELECT kind, user_id, quantity, at, by_admin FROM (
                        SELECT 'confirmed' AS kind, user_id, quantity::bigint AS quantity,
                               confirmed_at AS at, false AS by_admin, 0 AS rank
                        FROM orders WHERE reservation_id = $1 AND sale_id = $2
                        UNION ALL
                        SELECT m.kind, min(m.user_id), sum(m.quantity)::bigint, max(m.occurred_at), EXISTS (
                            SELECT 1 FROM admin_actions a WHERE a.reservation_id = $1 AND a.action = 'cancel'), 1
                        FROM stock_movements m
                        WHERE m.reservation_id = $1 AND m.sale_id = $2 AND m.kind IN ('cancelled', 'expired')
                          AND m.user_id IS NOT NULL
                        GROUP BY m.kind
                    ) x ORDER BY rank LIMIT 1",
                )
                .bind(rid)
                .bind(sale.as_str())
                .fetch_optional(&self.pool)
                .await?
            else {
                return Ok(None);
            };
            let items = if kind == "confirmed" {
                self.order_lines(rid).await?
            } else {
                let rows: Vec<(String, i32)> = sqlx::query_as(
                    "SELECT sku, quantity FROM stock_movements
                     WHERE reservation_id = $1 AND sale_id = $2 AND kind = $3 AND sku IS NOT NULL
                     ORDER BY sku",
                )
                .bind(rid)
                .bind(sale.as_str())
                .bind(&kind)
                .fetch_all(&self.pool)
                .await?;
                lines(rows)
            };
            let at_ms = at.timestamp_millis();
            Ok(Some(Record {
                user,
                qty: u32::try_from(qty).unwrap_or(0),
                status: match kind.as_str() {
                    "confirmed" => Status::Confirmed,
                    "cancelled" => Status::Cancelled,
                    _ => Status::Expired,
                },
                expires_ms: at_ms,
                at_ms,
                epoch: 0,
                by_admin,
                items,
            }))
        };
        self.bounded(self.timeout, fut).await
    }

    /// Which of these reservations already have an order row.
    pub async fn orders_present(&self, rids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
        if rids.is_empty() {
            return Ok(HashSet::new());
        }
        let fut = async {
            let mut conn = self.pool.acquire().await?;
            present(&mut conn, rids).await
        };
        self.bounded(self.timeout, fut).await
    }

    /// Records confirmed orders exactly once each (by reservation id),
    /// advancing user_purchases and sales.sold_count only for rows that were
    /// new, and only orders of their sale's current epoch.
    ///
    /// Every statement before the COMMIT runs under a server-side
    /// `statement_timeout` that ends before the caller's own bound, so
    /// Postgres cancels a write that waits (for a lock, say) instead of
    /// letting it commit after the answer went out; the COMMIT is sent only
    /// while some of `limit` is left. Postgres does not bound the COMMIT
    /// itself: one that takes longer than what is left (a slow WAL flush)
    /// can land after the caller gave up, and the retry then finds the row.
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
            // Postgres does not bound a COMMIT (a WAL flush, a synchronous
            // replica): one sent this late could land after the caller's
            // 503. Rolled back instead; the retry writes it.
            if deadline.saturating_duration_since(tokio::time::Instant::now()) < STATEMENT_MARGIN {
                tx.rollback().await?;
                return Ok(None);
            }
            tx.commit().await?;
            Ok(Some(recorded))
        };
        // The server's bound fires first; this one only guards against a
        // Postgres that stops answering altogether (the write is then
        // cancelled by the server's timeout, or was never received).
        self.bounded(limit + CLIENT_GRACE, fut)
            .await?
            .ok_or(StoreError::Timeout(limit))
    }

    /// Applies a batch of one sale's stream events: the audit rows, then
    /// the orders of its `confirmed` events that are not recorded yet (two
    /// transactions). Replaying any part of it changes nothing.
    pub async fn apply_events(&self, events: &[Event]) -> Result<Recorded, StoreError> {
        let limit = self.timeout * 4;
        let fut = async {
            let mut conn = self.pool.acquire().await?;
            // The audit rows first, in a transaction of their own: it takes
            // no sale's row, so the orders' transaction below holds its
            // sales' rows (which the confirm path's batches wait for) only
            // for its one insert and commit. Both are idempotent, and the
            // batch is acknowledged only once both committed.
            let mut tx = conn.begin().await?;
            bound_statements(&mut tx, limit).await?;
            insert_movements(&mut tx, events).await?;
            tx.commit().await?;

            let mut orders: Vec<Order> = events.iter().filter_map(Event::order).collect();
            if orders.is_empty() {
                return Ok(Recorded::default());
            }
            // The confirm path (group commit) usually wrote these orders
            // already: one index lookup, no lock, and only the others are
            // written. One committed meanwhile is a no-op of the insert.
            let rids: Vec<Uuid> = orders.iter().map(|o| o.reservation_id).collect();
            let present = present(&mut conn, &rids).await?;
            orders.retain(|o| !present.contains(&o.reservation_id));
            if orders.is_empty() {
                return Ok(Recorded::default());
            }
            let mut tx = conn.begin().await?;
            bound_statements(&mut tx, limit).await?;
            let recorded = insert_orders(&mut tx, &orders).await?;
            tx.commit().await?;
            Ok(recorded)
        };
        self.bounded(limit + CLIENT_GRACE, fut).await
    }
}

/// The statement of [`insert_orders`]: $1..$6 the orders (reservation,
/// sale, buyer, quantity, time, epoch), $7..$9 their lines (reservation,
/// sku, quantity); returns the rows inserted and the reservations refused
/// as stale. Public so that a test can check its plan.
///
/// Data-modifying CTEs run exactly once each; user_purchases and sold_count
/// only move by the rows `ins` really inserted, and so do order_items and
/// user_item_purchases (the lines of those orders; per buyer only for
/// items with their own cap).
///
/// `fence` locks the sales' rows FOR NO KEY UPDATE, sorted by sale id,
/// and keeps only orders of each sale's current epoch: a rebuild (which
/// takes the row FOR UPDATE) either waits for this write, and then
/// reads it, or bumped the epoch first, and then this write records
/// nothing of the lost state. An order of a sale Postgres does not know
/// is recorded as before (there is nothing to rebuild it from).
///
/// `stale`: the orders of a left epoch that are not recorded. Only the
/// rows `current` left out are looked up in `orders`, one index probe
/// each (a scalar subquery, which Postgres does not turn into a join,
/// behind a CASE, so it is not evaluated for the other rows):
/// a NOT EXISTS anti-join there was planned as a hash of the whole
/// `orders` table, read in full by every batch.
///
/// No deadlock between writers (the confirm path's group commit, the
/// write-behind, `reconcile --fix`): the only row locks they wait for
/// are these, taken first and in one order. The `sold` update later
/// touches only rows already locked here, and two writes that share a
/// buyer's user_purchases row share its sale's row, so the second one
/// waits at the fence, before it touches any buyer.
pub const BATCH_SQL: &str = "WITH input AS (
            SELECT DISTINCT ON (rid) rid, sale_id, user_id, qty, at, epoch
            FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[], $6::int8[]) AS t(rid, sale_id, user_id, qty, at, epoch)
            ORDER BY rid
        ), fence AS (
            SELECT s.sale_id, s.epoch FROM sales s
            WHERE s.sale_id IN (SELECT sale_id FROM input)
            ORDER BY s.sale_id
            FOR NO KEY UPDATE
        ), current AS (
            SELECT i.* FROM input i LEFT JOIN fence f ON f.sale_id = i.sale_id
            WHERE f.sale_id IS NULL OR f.epoch = i.epoch
        ), ins AS (
            INSERT INTO orders (reservation_id, sale_id, user_id, quantity, confirmed_at)
            SELECT rid, sale_id, user_id, qty, at FROM current
            ON CONFLICT (reservation_id) DO NOTHING
            RETURNING reservation_id, sale_id, user_id, quantity
        ), lines AS (
            SELECT l.rid, l.sku, l.qty, i.sale_id, i.user_id
            FROM UNNEST($7::uuid[], $8::text[], $9::int4[]) AS l(rid, sku, qty)
            JOIN ins i ON i.reservation_id = l.rid
        ), line_rows AS (
            INSERT INTO order_items (reservation_id, sku, quantity)
            SELECT rid, sku, qty FROM lines
            ON CONFLICT (reservation_id, sku) DO NOTHING
            RETURNING 1
        ), item_buyers AS (
            INSERT INTO user_item_purchases (sale_id, sku, user_id, quantity)
            SELECT l.sale_id, l.sku, l.user_id, sum(l.qty)::int4 FROM lines l
            JOIN sale_items si ON si.sale_id = l.sale_id AND si.sku = l.sku AND si.per_user_limit IS NOT NULL
            GROUP BY l.sale_id, l.sku, l.user_id ORDER BY l.sale_id, l.sku, l.user_id
            ON CONFLICT (sale_id, sku, user_id) DO UPDATE
              SET quantity = user_item_purchases.quantity + EXCLUDED.quantity, updated_at = now()
            RETURNING 1
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
               ARRAY(SELECT i.rid FROM input i JOIN fence f ON f.sale_id = i.sale_id
                     WHERE CASE WHEN f.epoch <> i.epoch
                           THEN (SELECT count(*) FROM orders o WHERE o.reservation_id = i.rid) = 0
                           ELSE false END)";

/// Records `orders` (any sales, any number) in one statement: the one
/// place orders are written, by every writer (group commit, write-behind,
/// `reconcile --fix`). Rows written with an order in the same transaction
/// belong beside it.
pub(super) async fn insert_orders<O: std::borrow::Borrow<Order>>(
    conn: &mut PgConnection,
    orders: &[O],
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
    // The lines of the orders of sales of several items, flat.
    let (mut line_rid, mut line_sku, mut line_qty) = (Vec::new(), Vec::new(), Vec::new());
    for o in orders {
        let o = o.borrow();
        rid.push(o.reservation_id);
        sale.push(o.sale_id.as_str());
        user.push(o.user_id.as_str());
        qty.push(o.quantity);
        at.push(o.confirmed_at);
        epoch.push(o.epoch);
        for l in &o.items {
            line_rid.push(o.reservation_id);
            line_sku.push(l.sku.as_str());
            line_qty.push(i32::try_from(l.quantity).unwrap_or(i32::MAX));
        }
    }
    // What the statement does, and why no two writers deadlock: BATCH_SQL.
    let (n, stale): (i64, Vec<Uuid>) = sqlx::query_as(BATCH_SQL)
        .bind(&rid)
        .bind(&sale)
        .bind(&user)
        .bind(&qty)
        .bind(&at)
        .bind(&epoch)
        .bind(&line_rid)
        .bind(&line_sku)
        .bind(&line_qty)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Recorded {
        inserted: u64::try_from(n).unwrap_or(0),
        stale,
    })
}

async fn insert_movements(tx: &mut PgConnection, events: &[Event]) -> Result<u64, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    // One row per line of a cart (`line` 1..n, its sku), one row of line 0
    // for an event without one.
    let n = events.iter().map(|e| e.items.len().max(1)).sum();
    let (mut line, mut sku) = (Vec::with_capacity(n), Vec::with_capacity(n));
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
        let lines: Vec<(i16, Option<&str>, i32)> = if e.items.is_empty() {
            vec![(0, None, e.quantity)]
        } else {
            e.items
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    (
                        i16::try_from(i + 1).unwrap_or(i16::MAX),
                        Some(l.sku.as_str()),
                        i32::try_from(l.quantity).unwrap_or(i32::MAX),
                    )
                })
                .collect()
        };
        for (n, s, q) in lines {
            line.push(n);
            sku.push(s);
            sale.push(e.sale_id.as_str());
            id.push(e.event_id.as_str());
            kind.push(e.kind.as_str());
            rid.push(e.reservation_id);
            user.push(e.user_id.as_deref());
            qty.push(q);
            sold.push(e.sold_after);
            held.push(e.held_after);
            stock.push(e.stock_after);
            at.push(e.occurred_at);
        }
    }
    let done = sqlx::query(
        "INSERT INTO stock_movements (sale_id, event_id, kind, reservation_id, user_id, quantity, sold_after, held_after, stock_after, occurred_at, line, sku)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::int4[], $7::int8[], $8::int8[], $9::int8[], $10::timestamptz[], $11::int2[], $12::text[])
         ON CONFLICT (sale_id, event_id, line) DO NOTHING",
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
    .bind(&line)
    .bind(&sku)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}
