//! Hundreds of concurrent carts over a sale of three items, counted
//! exactly: per item sold + held ≤ stock, per buyer ≤ the cap, no partial
//! hold, and exactly what was confirmed in Postgres.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::sync::Barrier;

use crate::support::*;

const SIZES: [&str; 3] = ["S", "M", "L"];

/// A cart of 1-3 distinct sizes, one unit each (sometimes two of the
/// first), drawn from `seed`.
fn cart(seed: u64) -> Vec<(String, u64)> {
    let mut x = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    let mut next = |n: u64| {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x % n
    };
    let size = 1 + next(3) as usize;
    let start = next(3) as usize;
    let mut lines: Vec<(String, u64)> = (0..size)
        .map(|i| (SIZES[(start + i) % 3].to_string(), 1))
        .collect();
    if next(4) == 0 {
        lines[0].1 = 2;
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_carts_holds_whole_carts_within_every_items_stock() {
    let app = Arc::new(spawn_app().await);
    let stock = [("S", 40), ("M", 30), ("L", 20)];
    let items: Vec<Value> = stock
        .iter()
        .map(|(sku, n)| json!({"sku": sku, "stock": n}))
        .collect();
    // Cap 3 across items; M has its own cap of 1.
    let mut items = items;
    items[1]["per_user_limit"] = json!(1);
    let sale = app.items_sale(json!(items), 3, 300).await;

    // 500 buyers, the first 50 of them twice more (other carts).
    let mut attempts: Vec<(String, Vec<(String, u64)>)> = (0..500u64)
        .map(|i| (format!("buyer-{i}"), cart(i)))
        .collect();
    for i in 0..50u64 {
        attempts.push((format!("buyer-{i}"), cart(1000 + i)));
        attempts.push((format!("buyer-{i}"), cart(2000 + i)));
    }
    let barrier = Arc::new(Barrier::new(attempts.len()));
    let tasks = attempts.into_iter().map(|(user, lines)| {
        let (app, sale, barrier) = (app.clone(), sale.clone(), barrier.clone());
        tokio::spawn(async move {
            let body_lines: Vec<Value> = lines
                .iter()
                .map(|(sku, q)| json!({"sku": sku, "quantity": q}))
                .collect();
            let req = cart_req(&app, &sale, &user, &json!(body_lines));
            barrier.wait().await;
            let r = req.send().await.expect("reserve");
            (user, lines, body(r).await)
        })
    });
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert_eq!(results.len(), 600);

    let mut held_item: BTreeMap<String, i64> = BTreeMap::new();
    let mut per_buyer: HashMap<String, u64> = HashMap::new();
    let mut per_buyer_m: HashMap<String, u64> = HashMap::new();
    let mut holds: Vec<(String, String)> = Vec::new();
    let (mut sold_out, mut limited) = (0, 0);
    for (user, lines, (status, v)) in &results {
        match status {
            201 => {
                // Every line of the cart is in the hold, exactly.
                let want: Vec<Value> = {
                    let mut l = lines.clone();
                    l.sort();
                    l.iter()
                        .map(|(sku, q)| json!({"sku": sku, "quantity": q}))
                        .collect()
                };
                assert_eq!(v["items"], json!(want), "a hold carries its whole cart");
                let total: u64 = lines.iter().map(|(_, q)| q).sum();
                assert_eq!(v["quantity"].as_u64(), Some(total));
                for (sku, q) in lines {
                    *held_item.entry(sku.clone()).or_default() += *q as i64;
                    if sku == "M" {
                        *per_buyer_m.entry(user.clone()).or_default() += q;
                    }
                }
                *per_buyer.entry(user.clone()).or_default() += total;
                holds.push((user.clone(), rid(v)));
            }
            409 => match error_code(v) {
                "sold_out" => {
                    sold_out += 1;
                    let short = v["error"]["details"]["shortfalls"]
                        .as_array()
                        .expect("shortfalls");
                    assert!(!short.is_empty(), "{v}");
                    for s in short {
                        let n = |f: &str| s[f].as_i64().unwrap_or_else(|| panic!("{f}: {v}"));
                        assert!(n("available") < n("requested"), "{v}");
                    }
                }
                "user_limit_exceeded" => limited += 1,
                other => panic!("unexpected 409 {other}: {v}"),
            },
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    assert_eq!(holds.len() + sold_out + limited, 600);
    assert!(
        per_buyer.values().all(|&q| q <= 3),
        "nobody above the sale's cap: {per_buyer:?}"
    );
    assert!(
        per_buyer_m.values().all(|&q| q <= 1),
        "nobody above M's cap: {per_buyer_m:?}"
    );

    // No partial hold: each item's held count is exactly the sum of the
    // lines of the holds granted, and never above its stock.
    let view = app.view(&sale).await;
    let mut total_held = 0;
    for (sku, n) in stock {
        let (st, sold, held, avail) = item_counters(&view, sku);
        assert_eq!((st, sold), (n, 0));
        assert_eq!(
            held,
            held_item.get(sku).copied().unwrap_or(0),
            "{sku}: {view}"
        );
        assert!(sold + held <= st, "{sku} oversold: {view}");
        assert_eq!(avail, st - held);
        total_held += held;
    }
    assert_eq!(counters(&view), (90, 0, total_held, 90 - total_held));
    // Demand (about 1000 units) far above 90: most of the stock went.
    assert!(total_held > 45, "{view}");

    // Every hold confirmed, concurrently: Postgres counts exactly.
    let confirms = holds.iter().map(|(user, r)| {
        let (app, sale, user, r) = (app.clone(), sale.clone(), user.clone(), r.clone());
        tokio::spawn(async move {
            confirm_req(&app, &sale, &r, &user)
                .send()
                .await
                .expect("confirm")
                .status()
                .as_u16()
        })
    });
    for s in join_all(confirms).await {
        assert_eq!(s.expect("task"), 200);
    }
    let view = app.view(&sale).await;
    for (sku, _) in stock {
        let (_, sold, held, _) = item_counters(&view, sku);
        assert_eq!(
            (sold, held),
            (held_item.get(sku).copied().unwrap_or(0), 0),
            "{sku}: {view}"
        );
    }
    assert_eq!(item_sold(&app.pool, &sale).await, held_item);
    assert_eq!(orders(&app.pool, &sale).await.len(), holds.len());
    let bought: BTreeMap<String, i64> = per_buyer
        .iter()
        .map(|(u, q)| (u.clone(), *q as i64))
        .collect();
    assert_eq!(user_purchases(&app.pool, &sale).await, bought);
    let bought_m: BTreeMap<(String, String), i64> = per_buyer_m
        .iter()
        .map(|(u, q)| (("M".to_string(), u.clone()), *q as i64))
        .collect();
    assert_eq!(user_item_purchases(&app.pool, &sale).await, bought_m);
    assert_eq!(sold_count(&app.pool, &sale).await, total_held);
}
