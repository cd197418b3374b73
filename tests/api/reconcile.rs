//! `flashgate reconcile`: drift between Redis and Postgres is found, lag is
//! not drift, and `--fix` repairs it.

use std::process::Output;
use std::time::Duration;

use flashgate::config::{ConfirmDurability, Settings};
use flashgate::ids::SaleId;
use flashgate::reconcile::{reconcile, Options, Report};

use crate::support::process::flashgate_command;
use crate::support::*;

fn check() -> Options {
    Options::default()
}

fn fix() -> Options {
    Options {
        fix: true,
        ..Options::default()
    }
}

/// An app with no write-behind worker and Redis durability: a confirm
/// stays in the stream, unwritten (lag).
async fn unwritten_app() -> TestApp {
    Spawn::new()
        .await
        .durability(ConfirmDurability::Redis)
        .no_worker()
        .start()
        .await
}

/// `reconcile` of `sale` alone with `opts`.
async fn reconcile_sale(app: &TestApp, sale: &str, opts: &Options) -> Report {
    let id = SaleId::parse(sale).expect("id");
    reconcile(&app.service, Some(&id), opts)
        .await
        .expect("reconcile")
}

/// A check of `sale` finds each drift in `expected` (by what differs).
async fn drift_found(app: &TestApp, sale: &str, expected: &[&str]) -> Report {
    let found = reconcile_sale(app, sale, &check()).await;
    let what: Vec<&str> = found.drift.iter().map(|d| d.what.as_str()).collect();
    for w in expected {
        assert!(what.contains(w), "{w} drift not found in {what:?}");
    }
    found
}

/// `--fix` leaves nothing unresolved, and a check afterwards finds no
/// drift.
async fn fixed_for_good(app: &TestApp, sale: &str) {
    let fixed = reconcile_sale(app, sale, &fix()).await;
    assert_eq!(fixed.unresolved(), 0, "{:?}", fixed.drift);
    let again = reconcile_sale(app, sale, &check()).await;
    assert!(again.drift.is_empty(), "{:?}", again.drift);
}

/// Sets `fields` of `sale`'s hash in Redis, as a bug would leave them.
async fn corrupt_sale_hash(app: &TestApp, sale: &str, fields: &[(&str, i64)]) {
    let mut conn = test_redis().await;
    let mut cmd = redis::cmd("HSET");
    cmd.arg(format!("{}:{{{sale}}}:sale", app.prefix));
    for (field, value) in fields {
        cmd.arg(*field).arg(*value);
    }
    let _: () = cmd.query_async(&mut conn).await.expect("corrupt");
}

/// `flashgate reconcile <args>` on `settings`' database, Redis and prefix.
fn reconcile_cli(settings: &Settings, args: &[&str]) -> Output {
    flashgate_command("reconcile", settings)
        .args(args)
        .output()
        .expect("run reconcile")
}

#[tokio::test]
async fn drift_is_found_and_fixed_and_lag_is_not_drift() {
    // No worker: confirmed events stay in the stream (lag), Postgres gets the
    // orders from the confirm path only where durability says so.
    let app = unwritten_app().await;
    let sale = app.sale(10, 3, 60).await;
    app.buy(&sale, "ann", 2).await;
    assert_eq!(app.reserve(&sale, "bob", 1, None).await.0, 201);
    let clean = reconcile_sale(&app, &sale, &check()).await;
    assert_eq!(
        (clean.sales, clean.drift.len(), clean.unresolved()),
        (1, 0, 0),
        "a confirm not yet written is lag, not drift: {:?}",
        clean.drift
    );

    // Corrupt Redis: sold, one buyer's bought total, the held counter (7
    // sold + 4 held > 10: Redis shows an oversell, an incident).
    corrupt_sale_hash(&app, &sale, &[("sold", 7), ("b:ann", 0), ("held", 4)]).await;
    let found = drift_found(&app, &sale, &["sold", "held", "bought[ann]"]).await;
    assert!(found.unresolved() > 0);
    assert!(
        found.incidents.iter().any(|i| i.what.contains("oversold")),
        "{:?}",
        found.incidents
    );
    fixed_for_good(&app, &sale).await;
    let v = app.view(&sale).await;
    assert_eq!((v["sold"].as_i64(), v["held"].as_i64()), (Some(2), Some(1)));
    // The cap holds again for ann (bought 2 of 3).
    let (s, v) = app.reserve(&sale, "ann", 2, None).await;
    assert_eq!((s, error_code(&v)), (409, "user_limit_exceeded"));
}

#[tokio::test]
async fn postgres_totals_and_missing_sales_are_repaired_and_the_cli_exit_code_says_so() {
    let spawn = Spawn::new().await;
    let settings = spawn.settings.clone();
    let app = spawn.start().await;
    let sale = app.sale(5, 2, 60).await;
    app.buy(&sale, "ann", 1).await;
    app.drained(Duration::from_secs(10)).await;
    sqlx::query("UPDATE user_purchases SET quantity = 9 WHERE sale_id = $1")
        .bind(&sale)
        .execute(&app.pool)
        .await
        .expect("corrupt");
    app.wipe_redis().await;

    let run = |fix: bool| {
        let mut args = vec!["--sale", sale.as_str()];
        if fix {
            args.push("--fix");
        }
        reconcile_cli(&settings, &args)
    };
    let out = run(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("postgres user_purchases[ann] is 9, expected 1"),
        "{text}"
    );
    assert!(text.contains("missing"), "{text}");
    for fix in [true, false] {
        let out = run(fix);
        assert_eq!(
            out.status.code(),
            Some(0),
            "--fix {fix}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let (q,): (i32,) = sqlx::query_as(
        "SELECT quantity FROM user_purchases WHERE sale_id = $1 AND user_id = 'ann'",
    )
    .bind(&sale)
    .fetch_one(&app.pool)
    .await
    .expect("q");
    assert_eq!(q, 1);
}

/// Issue 12.2: a confirm that sits in the stream, unwritten, was "lag" for
/// ever. Lag has an age: older than `max_lag` it is drift, and `--fix`
/// writes the order itself.
#[tokio::test]
async fn an_old_unwritten_confirm_is_drift_not_lag_and_fix_writes_it() {
    let app = unwritten_app().await;
    let sale = app.sale(10, 3, 60).await;
    let a = app.buy(&sale, "ann", 2).await;

    let young = reconcile_sale(&app, &sale, &check()).await;
    assert_eq!(
        young.unresolved(),
        0,
        "a fresh confirm is lag: {:?}",
        young.drift
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let old = Options {
        max_lag: Duration::from_secs(1),
        ..Options::default()
    };
    let found = reconcile_sale(&app, &sale, &old).await;
    assert_eq!(found.unresolved(), 1, "{:?}", found.drift);
    assert!(found.drift[0].what.contains(&a), "{:?}", found.drift);

    let old_fix = Options {
        fix: true,
        ..old.clone()
    };
    let fixed = reconcile_sale(&app, &sale, &old_fix).await;
    assert_eq!(fixed.unresolved(), 0, "{:?}", fixed.drift);
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE sale_id = $1")
        .bind(&sale)
        .fetch_one(&app.pool)
        .await
        .expect("orders");
    assert_eq!(n, 1, "--fix wrote the order");
    let clean = reconcile_sale(&app, &sale, &old).await;
    assert_eq!(clean.unresolved(), 0, "{:?}", clean.drift);
}

/// Issue 12.1: an oversell in Postgres was reported as drift, and `--fix`
/// then wrote `sold: 4` against a stock of 2 into Redis and reported no
/// drift. Now it is an incident: said loudly (exit code 2), and `--fix`
/// never writes a state that breaks an invariant.
#[tokio::test]
async fn an_oversell_is_an_incident_and_fix_never_writes_it_into_redis() {
    let spawn = Spawn::new().await;
    let settings = spawn.settings.clone();
    let app = spawn.start().await;
    let sale = app.sale(2, 2, 60).await;
    app.buy(&sale, "ann", 2).await;
    app.drained(Duration::from_secs(10)).await;
    // What the attack left behind: another buyer's 2 units in Postgres.
    let mut tx = app.pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO orders (reservation_id, sale_id, user_id, quantity, confirmed_at) VALUES (gen_random_uuid(), $1, 'bob', 2, now())")
        .bind(&sale)
        .execute(&mut *tx)
        .await
        .expect("order");
    sqlx::query("INSERT INTO user_purchases (sale_id, user_id, quantity) VALUES ($1, 'bob', 2)")
        .bind(&sale)
        .execute(&mut *tx)
        .await
        .expect("purchase");
    sqlx::query("UPDATE sales SET sold_count = 4 WHERE sale_id = $1")
        .bind(&sale)
        .execute(&mut *tx)
        .await
        .expect("sold");
    tx.commit().await.expect("commit");

    let found = reconcile_sale(&app, &sale, &fix()).await;
    assert!(
        found.incidents.iter().any(|i| i.what.contains("oversold")),
        "{:?}",
        found.incidents
    );
    assert!(
        found.unresolved() > 0,
        "Redis was not repaired to an oversell"
    );
    let v = app.view(&sale).await;
    assert_eq!(
        v["sold"].as_i64(),
        Some(2),
        "Redis keeps a state within the stock: {v}"
    );

    let out = reconcile_cli(&settings, &["--fix", "--sale", &sale]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("INCIDENT"), "{text}");
    assert_eq!(app.view(&sale).await["sold"].as_i64(), Some(2));
}

/// A sale of several items is compared item by item: an item's sold or
/// held counter that drifted from `order_items` and the live holds' lines
/// is found, an item oversold is an incident, and `--fix` repairs it.
#[tokio::test]
async fn items_are_reconciled_item_by_item() {
    let app = unwritten_app().await;
    let sale = app
        .items_sale(
            serde_json::json!([{"sku": "S", "stock": 3}, {"sku": "M", "stock": 3}]),
            3,
            60,
        )
        .await;
    app.buy_cart(
        &sale,
        "ann",
        serde_json::json!([{"sku": "S", "quantity": 2}, {"sku": "M", "quantity": 1}]),
    )
    .await;
    app.hold_cart(
        &sale,
        "bob",
        serde_json::json!([{"sku": "M", "quantity": 1}]),
    )
    .await;
    // The confirm is still in the stream (no worker): lag, not drift.
    let clean = reconcile_sale(&app, &sale, &check()).await;
    assert_eq!(
        (clean.drift.len(), clean.unresolved()),
        (0, 0),
        "{:?}",
        clean.drift
    );

    corrupt_sale_hash(&app, &sale, &[("io:S", 3), ("ih:M", 3)]).await;
    let found = drift_found(&app, &sale, &["item[S] sold", "item[M] held"]).await;
    assert!(
        found
            .incidents
            .iter()
            .any(|i| i.what.contains("item M") && i.what.contains("oversold")),
        "M: 1 sold + 3 held > 3: {:?}",
        found.incidents
    );
    let fixed = reconcile_sale(&app, &sale, &fix()).await;
    assert_eq!(fixed.unresolved(), 0, "{:?}", fixed.drift);
    let v = app.view(&sale).await;
    assert_eq!(item_counters(&v, "S"), (3, 2, 0, 1));
    assert_eq!(item_counters(&v, "M"), (3, 1, 1, 1));
    let again = reconcile_sale(&app, &sale, &check()).await;
    assert!(again.drift.is_empty(), "{:?}", again.drift);
}

/// Each buyer's count of an item with its own cap is compared too: in
/// Redis (`ib:` / `iu:`) against the orders' lines and the live holds, and
/// `user_item_purchases` against `order_items`; `--fix` repairs both.
#[tokio::test]
async fn a_buyers_count_of_a_capped_item_is_reconciled() {
    let app = spawn_app().await;
    let sale = app
        .items_sale(
            serde_json::json!([{"sku": "S", "stock": 5}, {"sku": "M", "stock": 5, "per_user_limit": 1}]),
            3,
            60,
        )
        .await;
    let m = || serde_json::json!([{"sku": "M", "quantity": 1}]);
    app.buy_cart(&sale, "ann", m()).await;
    app.hold_cart(&sale, "bob", m()).await;
    app.drained(Duration::from_secs(10)).await;
    let clean = reconcile_sale(&app, &sale, &check()).await;
    assert!(clean.drift.is_empty(), "{:?}", clean.drift);

    let mut conn = test_redis().await;
    let key = format!("{}:{{{sale}}}:sale", app.prefix);
    let _: () = redis::cmd("HDEL")
        .arg(&key)
        .arg("ib:M:ann")
        .query_async(&mut conn)
        .await
        .expect("corrupt");
    corrupt_sale_hash(&app, &sale, &[("iu:M:bob", 0)]).await;
    sqlx::query("DELETE FROM user_item_purchases WHERE sale_id = $1")
        .bind(&sale)
        .execute(&app.pool)
        .await
        .expect("corrupt");
    drift_found(
        &app,
        &sale,
        &[
            "item bought[M/ann]",
            "item held_by[M/bob]",
            "postgres user_item_purchases[M/ann]",
        ],
    )
    .await;
    fixed_for_good(&app, &sale).await;
    assert_eq!(
        user_item_purchases(&app.pool, &sale).await,
        [(("M".to_string(), "ann".to_string()), 1)].into()
    );
    // ann's cap of M counts her unit again.
    let (s, v) = app.reserve_cart(&sale, "ann", m(), None).await;
    assert_eq!(
        (s, v["error"]["details"]["sku"].as_str()),
        (409, Some("M")),
        "{v}"
    );
}
