//! Postgres behind the proxy (a fresh database on the shared server):
//! slowed, black-holed, reset, while buyers confirm.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// flashgate whose Postgres is reached through a fault proxy (its own
/// fresh database), default `postgres` durability; `app.pool` reads that
/// database around the proxy.
struct PgRig {
    app: Arc<TestApp>,
    proxy: FaultProxy,
}

async fn pg_rig() -> PgRig {
    let proxy = FaultProxy::postgres().await;
    let app = Spawn::via_pg_proxy(&proxy)
        .await
        .with(|s| {
            s.confirm_timeout = CONFIRM_TIMEOUT;
            s.db_timeout = CONFIRM_TIMEOUT;
            s.redis_timeout = REDIS_TIMEOUT;
        })
        .start()
        .await;
    PgRig {
        app: Arc::new(app),
        proxy,
    }
}

/// Confirms while Postgres goes into `mode`, and new buyers reserving
/// meanwhile: every confirm answers 200 or 503 in bounded time, every
/// reserve 201 (buyers do not need Postgres). Postgres back, every
/// confirm is retried until 200; each confirmed reservation has exactly
/// one order row, each buyer's total and the sale's sold count match.
/// Returns the fault-time confirm answers.
async fn confirms_through_a_postgres_fault(mode: ProxyMode) -> Vec<Answer> {
    let rig = pg_rig().await;
    let app = rig.app.clone();
    assert_eq!(
        app.service.durability,
        flashgate::config::ConfirmDurability::Postgres
    );
    let sale = app.sale(1000, 10, 300).await;
    let n = 2 * PER_GROUP;
    let user = |i: usize| format!("payer-{i}");
    let mut rids = Vec::with_capacity(n);
    for i in 0..n {
        let (s, v) = app.reserve(&sale, &user(i), 1, None).await;
        assert_eq!(s, 201, "{v}");
        rids.push(rid(&v));
    }
    let rids = Arc::new(rids);

    let late = {
        let (app, sale) = (app.clone(), sale.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            let mut out = Vec::new();
            for i in 0..PER_GROUP {
                out.push(
                    timed(
                        "late reserve",
                        idem_reserve(&app, &sale, &format!("late-{i}")),
                    )
                    .await,
                );
            }
            out
        })
    };
    let first = around_the_fault(&rig.proxy, mode, |i| {
        let (app, sale, rids) = (app.clone(), sale.clone(), rids.clone());
        async move { timed("confirm", confirm_req(&app, &sale, &rids[i], &user(i))).await }
    })
    .await;
    for (i, a) in first.iter().enumerate() {
        check(
            &format!("confirm {} under Postgres {mode:?}", user(i)),
            a,
            &[200],
            confirm_bound(),
        );
    }
    for a in late.await.expect("late reserves") {
        check(
            &format!("reserve under Postgres {mode:?}"),
            &a,
            &[201],
            redis_bound(),
        );
        assert_eq!(a.status, 201, "buyers do not wait for Postgres: {}", a.body);
    }

    // Back. A confirm that answered 503 may have been written anyway (a
    // commit that landed late), or by the write-behind worker meanwhile:
    // its retry must still answer 200, and its row exist once.
    rig.proxy.restore();
    tokio::time::sleep(settle(mode)).await;
    for (i, r) in rids.iter().enumerate() {
        let what = format!("retried confirm {} after Postgres {mode:?}", user(i));
        let a = until_answered(&what, &[200], confirm_bound(), || {
            confirm_req(&app, &sale, r, &user(i))
        })
        .await;
        assert_eq!(a.body["status"], "confirmed", "{what}: {}", a.body);
    }

    // One order row per confirmed reservation, none other (`orders` panics
    // on two rows for one reservation).
    let rows: BTreeSet<String> = orders(&app.pool, &sale).await.into_keys().collect();
    let expected: BTreeSet<String> = rids.iter().cloned().collect();
    assert_eq!(
        rows, expected,
        "one order row per confirmed reservation, none other"
    );
    app.drained(Duration::from_secs(30)).await;
    let totals = user_purchases(&app.pool, &sale).await;
    let expected: BTreeMap<String, i64> = (0..n).map(|i| (user(i), 1)).collect();
    assert_eq!(totals, expected, "each buyer's confirmed total, once");
    assert_eq!(sold_count(&app.pool, &sale).await, n as i64);
    let v = app.view(&sale).await;
    let (stock, sold, held, available) = counters(&v);
    assert_eq!((sold, held), (n as i64, PER_GROUP as i64), "{v}");
    assert_eq!(stock, sold + held + available, "{v}");
    eprintln!(
        "Postgres {mode:?}: {} of {} confirms answered 200 during the fault, slowest {:?}",
        first.iter().filter(|a| a.status == 200).count(),
        first.len(),
        first.iter().map(|a| a.took).max().unwrap_or_default()
    );
    first
}

/// A slow Postgres (20 ms more each way): confirms still fit in the
/// confirm timeout, or answer 503 and succeed on retry; one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_postgres_confirms_resolve_and_record_once() {
    let first =
        confirms_through_a_postgres_fault(ProxyMode::Delay(Duration::from_millis(20))).await;
    assert!(
        first.iter().any(|a| a.status == 200),
        "a slow Postgres still confirms"
    );
}

/// Postgres slower than the confirm timeout (1 s each way): confirms sent
/// during the fault answer 503 at the timeout (the write may still land
/// later); retried once Postgres is back: 200, one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_slow_postgres_confirms_503_then_200_on_retry_once() {
    let first = confirms_through_a_postgres_fault(ProxyMode::Delay(Duration::from_secs(1))).await;
    for a in &first[PER_GROUP..] {
        assert_eq!(a.status, 503, "not durable in time: {}", a.body);
    }
}

/// Postgres black-holed: confirms 503 at the confirm timeout; retried
/// once Postgres is back: 200, one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_postgres_confirms_503_then_200_on_retry_once() {
    let first = confirms_through_a_postgres_fault(ProxyMode::Drop).await;
    for a in &first[PER_GROUP..] {
        assert_eq!(a.status, 503, "not durable: {}", a.body);
    }
}

/// Postgres connections reset: confirms 503 quickly; retried once
/// Postgres is back: 200, one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_postgres_confirms_503_then_200_on_retry_once() {
    let first = confirms_through_a_postgres_fault(ProxyMode::Reset).await;
    for a in &first[PER_GROUP..] {
        assert_eq!(a.status, 503, "not durable: {}", a.body);
    }
}

/// README, "Postgres down or slow": "Admin `PUT /v1/sales/…` and `GET
/// /v1/sales` need Postgres: 503." With Postgres black-holed, then with
/// its connections reset, an update, a new sale and the listing all
/// answer 503 `unavailable` with Retry-After, in bounded time (never a
/// hang, never a 500); with Postgres back, they answer as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_put_and_list_answer_503_while_postgres_is_down() {
    let rig = pg_rig().await;
    let app = rig.app.clone();
    let sale = app.sale(5, 1, 60).await;
    let put = |sale: &str, stock: i64| {
        app.client
            .put(app.url(&format!("/v1/sales/{sale}")))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"stock": stock, "per_user_limit": 1}))
    };
    let list = || app.client.get(app.url("/v1/sales")).bearer_auth(ADMIN);
    // Its Redis calls, and the Postgres transaction bounded by twice the
    // database timeout.
    let bound = redis_bound() + 2 * CONFIRM_TIMEOUT;
    for mode in [ProxyMode::Drop, ProxyMode::Reset] {
        rig.proxy.set(mode);
        let answers = [
            timed("update a sale", put(&sale, 6)).await,
            timed("create a sale", put(&unique_sale(), 6)).await,
            timed("list the sales", list()).await,
        ];
        for a in &answers {
            assert_eq!(
                a.status, 503,
                "{} with Postgres {mode:?}: {}",
                a.what, a.body
            );
            check(&format!("{} with Postgres {mode:?}", a.what), a, &[], bound);
        }
        rig.proxy.restore();
    }
    let a = until_answered("update once Postgres is back", &[200], bound, || {
        put(&sale, 7)
    })
    .await;
    assert_eq!(a.body["stock"], 7, "{}", a.body);
    let a = until_answered("list once Postgres is back", &[200], bound, list).await;
    let listed = a.body["sales"].as_array().expect("sales");
    assert!(
        listed.iter().any(|s| s["sale_id"] == sale.as_str()),
        "{}",
        a.body
    );
}
