//! The order writers read `orders` only by index, whatever its size
//! (README, Durability): the batch statement (`BATCH_SQL`, every order
//! writer's) and the write-behind's "which of these orders exist"
//! (`PRESENT_SQL`), planned over 20,000 orders, both as the writers'
//! sessions plan them (one generic plan) and as a session left to choose
//! plans them (custom plans). Two earlier forms of them read every order
//! on every batch: an anti-join planned as a hash of the whole table, and
//! `reservation_id = ANY($1)` run as a scan.

use uuid::Uuid;

use crate::support::*;

/// The literals `items` as an SQL array of `ty`.
fn array(items: impl IntoIterator<Item = String>, ty: &str) -> String {
    let items: Vec<String> = items.into_iter().collect();
    format!("ARRAY[{}]::{ty}[]", items.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_writers_read_orders_only_by_index() {
    let app = Spawn::new().await.no_worker().start().await;
    let sale = app.sale(100, 1, 60).await;
    sqlx::query(
        "INSERT INTO orders (reservation_id, sale_id, user_id, quantity, confirmed_at)
         SELECT gen_random_uuid(), $1, 'u' || g, 1, now() FROM generate_series(1, 20000) g",
    )
    .bind(&sale)
    .execute(&app.pool)
    .await
    .expect("orders");
    sqlx::query("ANALYZE orders")
        .execute(&app.pool)
        .await
        .expect("analyze");

    // A full batch (512 orders) of the sale: half in its epoch, half in a
    // left one (the stale check's branch). With a batch this size, Postgres
    // planned both earlier forms as a read of every order.
    let n = 512;
    let rids: Vec<String> = (0..n).map(|_| format!("'{}'", Uuid::new_v4())).collect();
    let batch_args = [
        array(rids.clone(), "uuid"),
        array((0..n).map(|_| format!("'{sale}'")), "text"),
        array((0..n).map(|i| format!("'b{i}'")), "text"),
        array((0..n).map(|_| "1".to_string()), "int4"),
        array((0..n).map(|_| "now()".to_string()), "timestamptz"),
        array((0..n).map(|i| (i % 2).to_string()), "int8"),
        "ARRAY[]::uuid[]".to_string(),
        "ARRAY[]::text[]".to_string(),
        "ARRAY[]::int4[]".to_string(),
    ]
    .join(", ");
    let present_args = array(rids, "uuid");

    // A session of its own (its prepared statements and settings go with it).
    let mut conn = app.pool.acquire().await.expect("connection").detach();
    let batch = flashgate::store::BATCH_SQL;
    let present = flashgate::store::PRESENT_SQL;
    for statement in [
        format!("PREPARE batch(uuid[], text[], text[], int4[], timestamptz[], int8[], uuid[], text[], int4[]) AS {batch}"),
        format!("PREPARE present(uuid[]) AS {present}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
            .expect("prepare");
    }
    for mode in ["force_generic_plan", "force_custom_plan"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
            .execute(&mut conn)
            .await
            .expect("set");
        for (name, args) in [("batch", &batch_args), ("present", &present_args)] {
            // EXPLAIN without ANALYZE: planned, not run.
            let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "EXPLAIN EXECUTE {name}({args})"
            )))
            .fetch_all(&mut conn)
            .await
            .expect("explain");
            let plan: Vec<String> = rows.into_iter().map(|r| r.0).collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains("on orders"),
                "{name}, {mode}: the plan reads orders somewhere:\n{plan}"
            );
            assert!(
                !plan.contains("Seq Scan on orders"),
                "{name}, {mode}: orders read in full:\n{plan}"
            );
        }
    }
}
