//! Write-behind to Postgres: every confirmed sale exactly once, through
//! worker crashes and Postgres outages, and nothing acknowledged in Redis
//! before Postgres committed it.

mod retention;
mod worker_faults;
mod write_behind;

use std::collections::{BTreeMap, BTreeSet};

use flashgate::background::worker::GROUP;
use flashgate::gate::RedisConn;

use crate::support::*;

/// What the buyers were told: confirmed reservations and units per user.
#[derive(Default)]
struct Told {
    confirmed: BTreeSet<String>,
    per_user: BTreeMap<String, i64>,
}

impl Told {
    /// A confirm of one unit by `user` answered 200.
    fn add(&mut self, user: &str, rid: String) {
        self.confirmed.insert(rid);
        *self.per_user.entry(user.to_string()).or_default() += 1;
    }
}

async fn assert_postgres_matches(app: &TestApp, sale: &str, told: &Told, cap: i64, stock: i64) {
    let got: BTreeSet<String> = orders(&app.pool, sale).await.into_keys().collect();
    assert_eq!(got, told.confirmed, "orders = the confirmed set");
    let purchases = user_purchases(&app.pool, sale).await;
    assert_eq!(purchases, told.per_user, "user_purchases = per-user sums");
    // The checks a shop would run: no rows.
    let over: Vec<(String,)> =
        sqlx::query_as("SELECT sale_id FROM sales WHERE sold_count > stock_limit")
            .fetch_all(&app.pool)
            .await
            .expect("q");
    assert!(over.is_empty());
    let over_cap: Vec<(String,)> = sqlx::query_as(
        "SELECT user_id FROM orders WHERE sale_id = $1 GROUP BY user_id HAVING sum(quantity) > $2",
    )
    .bind(sale)
    .bind(cap)
    .fetch_all(&app.pool)
    .await
    .expect("q");
    assert!(over_cap.is_empty());
    let sold = sold_count(&app.pool, sale).await;
    assert_eq!(sold, told.per_user.values().sum::<i64>());
    assert!(sold <= stock);
}

/// `XPENDING` of a sale's event stream for the write-behind's group:
/// entries delivered to a consumer and not acknowledged, per consumer
/// (none before a worker made the group).
async fn pending_by_consumer(conn: &mut RedisConn, events: &str) -> BTreeMap<String, i64> {
    type Summary = (
        i64,
        Option<String>,
        Option<String>,
        Option<Vec<(String, i64)>>,
    );
    let reply: redis::RedisResult<Summary> = redis::cmd("XPENDING")
        .arg(events)
        .arg(GROUP)
        .query_async(conn)
        .await;
    match reply {
        Ok((_, _, _, consumers)) => consumers.unwrap_or_default().into_iter().collect(),
        Err(e) if e.code() == Some("NOGROUP") => BTreeMap::new(),
        Err(e) => panic!("XPENDING {events}: {e}"),
    }
}

/// Entries delivered and not acknowledged, over all consumers.
async fn pending_total(conn: &mut RedisConn, events: &str) -> i64 {
    pending_by_consumer(conn, events).await.values().sum()
}

async fn stream_len(conn: &mut RedisConn, events: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(events)
        .query_async(conn)
        .await
        .expect("xlen")
}
