//! Postgres for the tests: a fresh database per test, dropped when the
//! test ends (however it ends), so the shared server never piles up
//! hundreds of `fg_test_*` databases.

use std::collections::BTreeMap;
use std::ops::Deref;

use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// The tests' Postgres server, without a database name.
pub fn pg_base() -> String {
    std::env::var("FLASHGATE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// `host:port` of a Postgres URL (what a fault proxy sits in front of).
pub fn pg_host_port(base: &str) -> &str {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// A fresh, empty database of one test: its URL (it derefs to it), and
/// `DROP DATABASE ... WITH (FORCE)` when dropped.
pub struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Deref for TestDb {
    type Target = str;
    fn deref(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDb {
    /// Runs on a thread of its own with its own runtime: a `Drop` is
    /// synchronous, and may run inside the test's runtime, outside it, or
    /// while a failed test unwinds. `WITH (FORCE)` (Postgres 13+) ends the
    /// app's connections that are still open. Never panics: a database
    /// left behind is dropped by the next `scripts/test`.
    fn drop(&mut self) {
        let (admin, name) = (format!("{}/postgres", pg_base()), self.name.clone());
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                )))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
                conn.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test database {} left behind: {e}", self.name),
            Err(_) => eprintln!("test database {} left behind: the drop panicked", self.name),
        }
    }
}

/// A fresh, empty database for one test, dropped with the returned guard.
pub async fn fresh_database() -> TestDb {
    let name = format!("fg_test_{}", Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&format!("{}/postgres", pg_base()))
        .await
        .expect("connect to Postgres (is it running? scripts/test starts it)");
    sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    TestDb {
        url: format!("{}/{name}", pg_base()),
        name,
    }
}

/// A sale's orders in Postgres: reservation id → (buyer, quantity).
/// Panics on two rows for one reservation: every order exactly once.
pub async fn orders(pool: &PgPool, sale: &str) -> BTreeMap<String, (String, i64)> {
    let rows = sqlx::query_as::<_, (String, String, i32)>(
        "SELECT reservation_id::text, user_id, quantity FROM orders WHERE sale_id = $1",
    )
    .bind(sale)
    .fetch_all(pool)
    .await
    .expect("orders");
    let n = rows.len();
    let map: BTreeMap<_, _> = rows
        .into_iter()
        .map(|(r, u, q)| (r, (u, i64::from(q))))
        .collect();
    assert_eq!(map.len(), n, "duplicate order rows for sale {sale}");
    map
}

/// `sales.sold_count` of a sale.
pub async fn sold_count(pool: &PgPool, sale: &str) -> i64 {
    sqlx::query_scalar("SELECT sold_count FROM sales WHERE sale_id = $1")
        .bind(sale)
        .fetch_one(pool)
        .await
        .expect("sold_count")
}

/// A sale's `user_purchases`: buyer → units.
pub async fn user_purchases(pool: &PgPool, sale: &str) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i32)>(
        "SELECT user_id, quantity FROM user_purchases WHERE sale_id = $1",
    )
    .bind(sale)
    .fetch_all(pool)
    .await
    .expect("user_purchases")
    .into_iter()
    .map(|(u, q)| (u, i64::from(q)))
    .collect()
}

/// A sale's confirmed units per sku, from `order_items`.
pub async fn item_sold(pool: &PgPool, sale: &str) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT oi.sku, sum(oi.quantity)::int8 FROM order_items oi JOIN orders o USING (reservation_id) WHERE o.sale_id = $1 GROUP BY oi.sku",
    )
    .bind(sale)
    .fetch_all(pool)
    .await
    .expect("order_items")
    .into_iter()
    .collect()
}

/// A sale's `user_item_purchases`: (sku, buyer) → units.
pub async fn user_item_purchases(pool: &PgPool, sale: &str) -> BTreeMap<(String, String), i64> {
    sqlx::query_as::<_, (String, String, i32)>(
        "SELECT sku, user_id, quantity FROM user_item_purchases WHERE sale_id = $1",
    )
    .bind(sale)
    .fetch_all(pool)
    .await
    .expect("user_item_purchases")
    .into_iter()
    .map(|(s, u, q)| ((s, u), i64::from(q)))
    .collect()
}

/// A trigger that makes Postgres refuse every row of `table` whose
/// `user_id` is `'poison'` (what a constraint the writer did not foresee
/// does to one row of a batch).
pub async fn refuse_poison_rows(pool: &PgPool, table: &str) {
    sqlx::query(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.user_id = 'poison' THEN RAISE EXCEPTION 'a row Postgres refuses'; END IF; RETURN NEW; END $$",
    )
    .execute(pool)
    .await
    .expect("refuse_poison()");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
    )))
    .execute(pool)
    .await
    .expect("trigger");
}
