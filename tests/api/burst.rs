//! The flash-sale burst and the concurrency invariants, counted exactly.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::Barrier;

use crate::support::*;

/// 500 distinct buyers plus 50 of them retrying twice, all released at one
/// instant; stock 10, cap 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_sale_burst_sells_exactly_the_stock() {
    let app = Arc::new(spawn_app().await);
    burst_sells_exactly_the_stock(&[app]).await;
}

/// The burst of [`flash_sale_burst_sells_exactly_the_stock`] over `apps`
/// (instances of one deployment: a buyer's attempts land on different
/// ones): every answer is a hold or a documented 409, exactly the stock is
/// held, nobody above the cap, and every instance sees the sale sold out.
pub(crate) async fn burst_sells_exactly_the_stock(apps: &[Arc<TestApp>]) {
    let sale = apps[0].sale(10, 2, 300).await;
    let mut attempts: Vec<String> = (0..500).map(|i| format!("buyer-{i}")).collect();
    for i in 0..50 {
        attempts.push(format!("buyer-{i}"));
        attempts.push(format!("buyer-{i}"));
    }
    let barrier = Arc::new(Barrier::new(attempts.len()));
    let tasks = attempts.into_iter().enumerate().map(|(i, user)| {
        let app = apps[i % apps.len()].clone();
        let (sale, barrier) = (sale.clone(), barrier.clone());
        tokio::spawn(async move {
            let req = reserve_req(&app, &sale, &user);
            barrier.wait().await;
            let r = req.send().await.expect("reserve");
            (user, body(r).await)
        })
    });
    let results: Vec<(String, (u16, Value))> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert_eq!(results.len(), 600);
    let mut held_by: HashMap<String, u64> = HashMap::new();
    let (mut created, mut sold_out, mut limited) = (0, 0, 0);
    for (user, (status, v)) in &results {
        match status {
            201 => {
                created += 1;
                assert_eq!(v["status"], "held");
                *held_by.entry(user.clone()).or_default() += v["quantity"].as_u64().expect("qty");
            }
            409 => match error_code(v) {
                "sold_out" => sold_out += 1,
                "user_limit_exceeded" => limited += 1,
                other => panic!("unexpected 409 {other}"),
            },
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    assert_eq!(
        held_by.values().sum::<u64>(),
        10,
        "exactly the stock is held"
    );
    assert_eq!(created, 10);
    assert_eq!(created + sold_out + limited, 600);
    assert!(
        held_by.values().all(|&q| q <= 2),
        "nobody above the cap: {held_by:?}"
    );
    for app in apps {
        let v = app.view(&sale).await;
        assert_eq!(
            (
                v["held"].as_i64(),
                v["available"].as_i64(),
                v["sold"].as_i64()
            ),
            (Some(10), Some(0), Some(0)),
            "every instance sees the same sale: {v}"
        );
        assert_eq!(v["state"], "sold_out");
    }
}

/// 50 concurrent reserves by one buyer with cap 2 never yield more than 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_buyer_hammering_gets_at_most_the_cap() {
    let app = Arc::new(spawn_app().await);
    let sale = app.sale(100, 2, 300).await;
    let tasks = (0..50).map(|_| {
        let (app, sale) = (app.clone(), sale.clone());
        tokio::spawn(async move { app.reserve(&sale, "greedy", 1, None).await })
    });
    let results: Vec<(u16, Value)> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let won: u64 = results
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, v)| v["quantity"].as_u64().expect("qty"))
        .sum();
    assert_eq!(won, 2);
    assert!(results.iter().all(|(s, v)| *s == 201
            || (*s == 409 && error_code(v) == "user_limit_exceeded")
            // The per-buyer rate limit may answer part of the hammering.
            || (*s == 429 && error_code(v) == "rate_limited")));
    assert_eq!(app.view(&sale).await["held"], 2);
}

/// The same Idempotency-Key sent 20 times at once takes one unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_replays_under_concurrency_take_one_unit() {
    let app = Arc::new(spawn_app().await);
    let sale = app.sale(10, 5, 300).await;
    let tasks = (0..20).map(|_| {
        let (app, sale) = (app.clone(), sale.clone());
        tokio::spawn(async move { app.reserve(&sale, "retrier", 1, Some("order-77")).await })
    });
    let results: Vec<(u16, Value)> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert_eq!(results.iter().filter(|(s, _)| *s == 201).count(), 1);
    assert_eq!(results.iter().filter(|(s, _)| *s == 200).count(), 19);
    let first = &results[0].1["reservation_id"];
    assert!(
        results.iter().all(|(_, v)| &v["reservation_id"] == first),
        "one reservation for every replay"
    );
    assert_eq!(app.view(&sale).await["held"], 1);
}
