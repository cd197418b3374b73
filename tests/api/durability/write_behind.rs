//! The write-behind on a healthy Postgres: a mixed run, replayed events,
//! several workers at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flashgate::config::ConfirmDurability;
use flashgate::startup;
use futures_util::future::join_all;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{assert_postgres_matches, Told};
use crate::support::*;

/// A reservation's `expires_at`, in ms.
fn expires_ms(v: &Value) -> i64 {
    v["expires_at"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis())
        .unwrap_or_else(|| panic!("expires_at in {v}"))
}

/// Reserve, confirm, cancel and expire in one run (write-behind only:
/// `redis` durability), then Postgres matches exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_matches_after_a_mixed_run() {
    let app = Arc::new(
        Spawn::new()
            .await
            .durability(ConfirmDurability::Redis)
            .start()
            .await,
    );
    let (stock, cap) = (60, 2);
    let sale = app.sale(stock, cap as u32, 1).await;
    // 80 reserves of one unit by 40 buyers (two each, within the cap of 2,
    // the rate and the active-hold limits) on 60 units: the one documented
    // refusal here is `sold_out`. The holds last 1 s and 80 calls run at
    // once: a confirm or cancel that reaches Redis after its hold's
    // deadline answers 410 `reservation_expired`, which is right then and
    // only then (the answer came after the deadline the reserve gave).
    let tasks = (0..80).map(|i| {
        let (app, sale) = (app.clone(), sale.clone());
        tokio::spawn(async move {
            let user = format!("u{}", i % 40);
            let (s, v) = app.reserve(&sale, &user, 1, None).await;
            if s != 201 {
                assert_eq!((s, error_code(&v)), (409, "sold_out"), "reserve: {v}");
                return (user, None, None);
            }
            let (r, deadline) = (rid(&v), expires_ms(&v));
            let action = match i % 4 {
                0 | 1 => "confirm",
                2 => "cancel",
                _ => return (user, None, Some(deadline)), // left to expire
            };
            let (s, v) = app.act(&sale, &r, action, Some(&user)).await;
            let answered = Utc::now().timestamp_millis();
            let done = if action == "confirm" {
                "confirmed"
            } else {
                "cancelled"
            };
            match s {
                200 => assert_eq!(v["status"], done, "{action}: {v}"),
                410 => {
                    assert_eq!(error_code(&v), "reservation_expired", "{action}: {v}");
                    // Redis' clock and this one are the same host's.
                    assert!(
                        answered + 50 >= deadline,
                        "{action}: expired at {answered}, before the deadline {deadline}"
                    );
                }
                _ => panic!("{action}: {s} {v}"),
            }
            let confirmed = (s == 200 && action == "confirm").then_some(r);
            (user, confirmed, Some(deadline))
        })
    });
    let mut told = Told::default();
    let mut last_deadline = 0;
    for t in join_all(tasks).await {
        let (user, confirmed, deadline) = t.expect("task");
        if let Some(r) = confirmed {
            told.add(&user, r);
        }
        last_deadline = last_deadline.max(deadline.unwrap_or(0));
    }
    assert!(!told.confirmed.is_empty());
    // Past the last hold's deadline (as the reserves said), with a margin
    // for the read that gives expired holds back.
    let wait = last_deadline + 300 - Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    let v = app.view(&sale).await;
    assert_eq!(v["held"], 0, "expired holds came back: {v}");
    app.drained(Duration::from_secs(20)).await;
    assert_postgres_matches(&app, &sale, &told, cap, stock).await;
    // The audit trail has every event kind of the run.
    let kinds: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM stock_movements WHERE sale_id = $1 GROUP BY kind ORDER BY kind",
    )
    .bind(&sale)
    .fetch_all(&app.pool)
    .await
    .expect("kinds");
    let kinds: BTreeMap<String, i64> = kinds.into_iter().collect();
    assert_eq!(
        kinds.get("confirmed").copied(),
        Some(told.confirmed.len() as i64)
    );
    for k in ["configured", "reserved", "cancelled", "expired"] {
        assert!(kinds.contains_key(k), "no {k} event: {kinds:?}");
    }
}

/// Replaying events (the same entry twice in one batch, a whole batch
/// twice) changes nothing.
#[tokio::test]
async fn replayed_events_change_nothing() {
    let app = Spawn::new().await.no_worker().start().await;
    let sale = app.sale(5, 2, 60).await;
    let order_event = |id: &str, rid: &uuid::Uuid| {
        let m: std::collections::HashMap<String, redis::Value> = [
            ("kind", "confirmed".to_string()),
            ("sale", sale.clone()),
            ("rid", rid.to_string()),
            ("user", "ann".into()),
            ("qty", "1".into()),
            ("at", "1795422534255".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), redis::Value::BulkString(v.into_bytes())))
        .collect();
        flashgate::store::Event::parse(id, &m).expect("event")
    };
    let (r1, r2) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let batch = vec![
        order_event("1-0", &r1),
        order_event("1-0", &r1),
        order_event("1-1", &r2),
    ];
    app.service.store.apply_events(&batch).await.expect("apply");
    app.service
        .store
        .apply_events(&batch)
        .await
        .expect("apply again");
    let (n, q): (i64, i64) =
        sqlx::query_as("SELECT count(*), sum(quantity)::int8 FROM orders WHERE sale_id = $1")
            .bind(&sale)
            .fetch_one(&app.pool)
            .await
            .expect("q");
    assert_eq!((n, q), (2, 2));
    let (bought,): (i32,) = sqlx::query_as(
        "SELECT quantity FROM user_purchases WHERE sale_id = $1 AND user_id = 'ann'",
    )
    .bind(&sale)
    .fetch_one(&app.pool)
    .await
    .expect("q");
    assert_eq!(bought, 2);
    assert_eq!(sold_count(&app.pool, &sale).await, 2);
    let (m,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM stock_movements WHERE sale_id = $1 AND kind = 'confirmed'",
    )
    .bind(&sale)
    .fetch_one(&app.pool)
    .await
    .expect("q");
    assert_eq!(m, 2);
}

/// Three workers (as three flashgate instances would run) drain the same
/// streams at once: every order exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_at_once_write_each_order_once() {
    let spawn = Spawn::new()
        .await
        .durability(ConfirmDurability::Redis)
        .no_worker()
        .with(|s| s.worker_batch = 8);
    let settings = spawn.settings.clone();
    let app = Arc::new(spawn.start().await);
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let w = startup::worker(&settings, &app.service.gate, &app.service.store)
            .await
            .expect("worker");
        workers.push(tokio::spawn(w.run(stop.clone())));
    }
    let sale = app.sale(120, 1, 300).await;
    let buyers = (0..120).map(|i| {
        let (app, sale) = (app.clone(), sale.clone());
        tokio::spawn(async move {
            let user = format!("w{i}");
            let (s, v) = app.reserve(&sale, &user, 1, None).await;
            assert_eq!(s, 201, "{v}");
            let r = rid(&v);
            assert_eq!(app.act(&sale, &r, "confirm", Some(&user)).await.0, 200);
            (user, r)
        })
    });
    let mut told = Told::default();
    for r in join_all(buyers).await {
        let (user, r) = r.expect("buyer");
        told.add(&user, r);
    }
    app.drained(Duration::from_secs(30)).await;
    stop.cancel();
    for w in workers {
        w.await.expect("worker stops");
    }
    assert_postgres_matches(&app, &sale, &told, 1, 120).await;
}
