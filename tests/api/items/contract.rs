//! The API of items and carts: PUT, reserve, the transitions, the views.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn sizes() -> Value {
    json!([{"sku": "S", "stock": 2}, {"sku": "M", "stock": 2, "per_user_limit": 1}, {"sku": "L", "stock": 1}])
}

/// `details.field` of an error body.
fn field(v: &Value) -> &str {
    v["error"]["details"]["field"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_sale_of_items_shows_each_item_and_bad_items_are_refused() {
    let app = spawn_app().await;
    let id = unique_sale();
    let (s, v) = app
        .put_sale(&id, json!({"items": sizes(), "per_user_limit": 2}))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        counters(&v),
        (5, 0, 0, 5),
        "the sale's counters sum its items"
    );
    assert_eq!(item_counters(&v, "S"), (2, 0, 0, 2));
    assert_eq!(item_counters(&v, "L"), (1, 0, 0, 1));
    let skus: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["sku"].as_str().expect("sku"))
        .collect();
    assert_eq!(skus, ["S", "M", "L"], "in the order given");
    assert_eq!(v["items"][1]["per_user_limit"], 1);
    assert!(v["items"][0].get("per_user_limit").is_none());
    // A one-item sale shows no items at all, as before.
    let plain = app.sale(3, 1, 60).await;
    assert!(app.view(&plain).await.get("items").is_none());

    let many: Vec<Value> = (0..101)
        .map(|i| json!({"sku": format!("k{i}"), "stock": 1}))
        .collect();
    let cases = [
        (
            json!({"items": sizes(), "stock": 5, "per_user_limit": 2}),
            "items",
        ),
        (json!({"items": [], "per_user_limit": 2}), "items"),
        (json!({"items": many, "per_user_limit": 2}), "items"),
        (
            json!({"items": [{"sku": "a:b", "stock": 1}], "per_user_limit": 2}),
            "items[0].sku",
        ),
        (
            json!({"items": [{"sku": "", "stock": 1}], "per_user_limit": 2}),
            "items[0].sku",
        ),
        (
            json!({"items": [{"sku": "x".repeat(65), "stock": 1}], "per_user_limit": 2}),
            "items[0].sku",
        ),
        (
            json!({"items": [{"sku": "S", "stock": 1}, {"sku": "S", "stock": 2}], "per_user_limit": 2}),
            "items[1].sku",
        ),
        (
            json!({"items": [{"sku": "S", "stock": -1}], "per_user_limit": 2}),
            "items[0].stock",
        ),
        (
            json!({"items": [{"sku": "S", "stock": 1, "per_user_limit": 3}], "per_user_limit": 2}),
            "items[0].per_user_limit",
        ),
    ];
    for (body, name) in cases {
        let (s, v) = app.put_sale(&unique_sale(), body.clone()).await;
        assert_eq!(
            (s, error_code(&v), field(&v)),
            (422, "invalid_request", name),
            "{body}: {v}"
        );
    }
    // An unknown field of an item is a malformed body, as anywhere.
    let (s, _) = app
        .put_sale(
            &unique_sale(),
            json!({"items": [{"sku": "S", "stock": 1, "price": 3}], "per_user_limit": 2}),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn items_are_restocked_and_added_but_never_below_what_is_committed() {
    let app = spawn_app().await;
    let sale = app.items_sale(sizes(), 2, 60).await;
    let (s, a) = app
        .reserve_cart(&sale, "ann", json!([{"sku": "S", "quantity": 2}]), None)
        .await;
    assert_eq!(s, 201, "{a}");
    let (s, b) = app
        .reserve_cart(&sale, "bob", json!([{"sku": "M", "quantity": 1}]), None)
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        app.act(&sale, &rid(&b), "confirm", Some("bob")).await.0,
        200
    );

    // S below its 2 held units; M left out while 1 is sold.
    let (s, v) = app
        .put_sale(&sale, json!({"items": [{"sku": "S", "stock": 1}, {"sku": "L", "stock": 1}], "per_user_limit": 2}))
        .await;
    assert_eq!((s, error_code(&v)), (409, "stock_below_committed"), "{v}");
    let below = v["error"]["details"]["items"]
        .as_array()
        .expect("items")
        .clone();
    assert_eq!(below.len(), 2, "{v}");
    assert_eq!(
        (
            below[0]["sku"].as_str(),
            below[0]["stock"].as_i64(),
            below[0]["held"].as_i64()
        ),
        (Some("S"), Some(1), Some(2))
    );
    assert_eq!(
        (
            below[1]["sku"].as_str(),
            below[1]["stock"].as_i64(),
            below[1]["sold"].as_i64()
        ),
        (Some("M"), Some(0), Some(1))
    );
    assert_eq!(
        counters(&app.view(&sale).await),
        (5, 1, 2, 2),
        "nothing changed"
    );

    // Restock M, keep S at its committed units, add XL, drop L (nothing committed).
    let (s, v) = app
        .put_sale(&sale, json!({"items": [{"sku": "S", "stock": 2}, {"sku": "M", "stock": 5, "per_user_limit": 1}, {"sku": "XL", "stock": 4}], "per_user_limit": 2}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(counters(&v), (11, 1, 2, 8));
    assert_eq!(item_counters(&v, "M"), (5, 1, 0, 4));
    assert_eq!(item_counters(&v, "XL"), (4, 0, 0, 4));
    assert!(v["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|i| i["sku"] != "L"));
    let (s, v) = app
        .reserve_cart(&sale, "cid", json!([{"sku": "XL", "quantity": 2}]), None)
        .await;
    assert_eq!(s, 201, "the new item sells: {v}");

    // A sale with units cannot turn into a one-item sale, nor get a cap on
    // an item with units it did not count.
    let (s, v) = app
        .put_sale(&sale, json!({"stock": 20, "per_user_limit": 2}))
        .await;
    assert_eq!(
        (s, error_code(&v), field(&v)),
        (422, "invalid_request", "items"),
        "{v}"
    );
    let (s, v) = app
        .put_sale(&sale, json!({"items": [{"sku": "S", "stock": 2, "per_user_limit": 1}, {"sku": "M", "stock": 5, "per_user_limit": 1}, {"sku": "XL", "stock": 4}], "per_user_limit": 2}))
        .await;
    assert_eq!(
        (s, error_code(&v), v["error"]["details"]["sku"].as_str()),
        (422, "invalid_request", Some("S")),
        "{v}"
    );
    // Postgres keeps the items as the last accepted PUT left them.
    let rows: Vec<(String, i64, Option<i32>)> = sqlx::query_as(
        "SELECT sku, stock, per_user_limit FROM sale_items WHERE sale_id = $1 ORDER BY position",
    )
    .bind(&sale)
    .fetch_all(&app.pool)
    .await
    .expect("sale_items");
    assert_eq!(
        rows,
        vec![
            ("S".into(), 2, None),
            ("M".into(), 5, Some(1)),
            ("XL".into(), 4, None)
        ]
    );
}

#[tokio::test]
async fn a_cart_holds_every_line_or_none_and_names_each_short_line() {
    let app = spawn_app().await;
    let sale = app.items_sale(sizes(), 4, 60).await;
    let (s, a) = app
        .reserve_cart(
            &sale,
            "ann",
            json!([{"sku": "L", "quantity": 1}, {"sku": "S", "quantity": 1}]),
            None,
        )
        .await;
    assert_eq!(s, 201, "{a}");
    assert_eq!(
        (a["quantity"].as_u64(), a["status"].as_str()),
        (Some(2), Some("held"))
    );
    assert_eq!(
        a["items"],
        json!([{"sku": "L", "quantity": 1}, {"sku": "S", "quantity": 1}])
    );
    // L is gone and S has 1 left: both lines short, nothing held.
    let (s, v) = app
        .reserve_cart(&sale, "bob", json!([{"sku": "S", "quantity": 2}, {"sku": "M", "quantity": 1}, {"sku": "L", "quantity": 1}]), None)
        .await;
    assert_eq!((s, error_code(&v)), (409, "sold_out"), "{v}");
    assert_eq!(
        v["error"]["details"]["shortfalls"],
        json!([{"sku": "L", "requested": 1, "available": 0}, {"sku": "S", "requested": 2, "available": 1}])
    );
    let view = app.view(&sale).await;
    assert_eq!(
        item_counters(&view, "M"),
        (2, 0, 0, 2),
        "no partial hold: {view}"
    );
    assert_eq!(counters(&view), (5, 0, 2, 3));
    // The reservation reads back with its cart.
    let (s, r) = app.get_reservation(&sale, &rid(&a), Some("ann")).await;
    assert_eq!((s, r["items"].clone()), (200, a["items"].clone()));

    // Carts and quantities where they do not belong.
    let plain = app.sale(5, 2, 60).await;
    let (s, v) = app
        .reserve_cart(&plain, "ann", json!([{"sku": "S", "quantity": 1}]), None)
        .await;
    assert_eq!((s, field(&v)), (422, "items"), "{v}");
    let (s, v) = app.reserve(&sale, "ann", 1, None).await;
    assert_eq!((s, field(&v)), (422, "items"), "{v}");
    let (s, v) = app
        .reserve_cart(&sale, "ann", json!([{"sku": "XXL", "quantity": 1}]), None)
        .await;
    assert_eq!(
        (s, v["error"]["details"]["sku"].as_str()),
        (422, Some("XXL")),
        "{v}"
    );
    for bad in [
        json!([]),
        json!([{"sku": "S", "quantity": 0}]),
        json!([{"sku": "S", "quantity": 1}, {"sku": "S", "quantity": 1}]),
        json!([{"sku": "a,b", "quantity": 1}]),
        // Over the bounds: 101 lines, 10,001 units of one line or in all.
        serde_json::Value::Array(
            (0..101)
                .map(|i| json!({"sku": format!("k{i}"), "quantity": 1}))
                .collect(),
        ),
        json!([{"sku": "S", "quantity": 10001}]),
        json!([{"sku": "S", "quantity": 10000}, {"sku": "M", "quantity": 1}]),
    ] {
        let (s, v) = app.reserve_cart(&sale, "ann", bad.clone(), None).await;
        assert_eq!((s, error_code(&v)), (422, "invalid_request"), "{bad}: {v}");
    }
    let (s, v) = body(
        app.client
            .post(app.url(&format!("/v1/sales/{sale}/reservations")))
            .bearer_auth(token("ann"))
            .json(&json!({"quantity": 1, "items": [{"sku": "S", "quantity": 1}]}))
            .send()
            .await
            .expect("reserve"),
    )
    .await;
    assert_eq!((s, field(&v)), (422, "items"), "{v}");
    assert_eq!(
        counters(&app.view(&sale).await),
        (5, 0, 2, 3),
        "no refusal held anything"
    );
}

#[tokio::test]
async fn the_sale_cap_spans_items_and_an_item_cap_sits_under_it() {
    let app = spawn_app().await;
    let sale = app.items_sale(sizes(), 2, 60).await;
    // M has its own cap of 1.
    let (s, v) = app
        .reserve_cart(&sale, "ann", json!([{"sku": "M", "quantity": 2}]), None)
        .await;
    assert_eq!(
        (s, error_code(&v), v["error"]["details"]["sku"].as_str()),
        (409, "user_limit_exceeded", Some("M")),
        "{v}"
    );
    let (s, a) = app
        .reserve_cart(
            &sale,
            "ann",
            json!([{"sku": "M", "quantity": 1}, {"sku": "S", "quantity": 1}]),
            None,
        )
        .await;
    assert_eq!(s, 201, "{a}");
    // The sale's cap of 2 counts every item: one more unit of anything is over.
    let (s, v) = app
        .reserve_cart(&sale, "ann", json!([{"sku": "L", "quantity": 1}]), None)
        .await;
    assert_eq!((s, error_code(&v)), (409, "user_limit_exceeded"), "{v}");
    assert!(
        v["error"]["details"].get("sku").is_none(),
        "the sale's cap: {v}"
    );
    assert_eq!(v["error"]["details"]["held"], 2);
    // Confirmed, the item cap still counts what was bought.
    assert_eq!(
        app.act(&sale, &rid(&a), "confirm", Some("ann")).await.0,
        200
    );
    assert_eq!(
        app.act(&sale, &rid(&a), "confirm", Some("ann")).await.0,
        200,
        "a replay"
    );
    let (s, b) = app
        .reserve_cart(&sale, "bob", json!([{"sku": "M", "quantity": 1}]), None)
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(app.act(&sale, &rid(&b), "cancel", Some("bob")).await.0, 200);
    let (s, v) = app
        .reserve_cart(&sale, "bob", json!([{"sku": "M", "quantity": 1}]), None)
        .await;
    assert_eq!(s, 201, "a cancel gave bob's item cap back: {v}");
    // Postgres: the order, its lines, the buyer's totals (per item only
    // for the item with a cap).
    let orders = orders(&app.pool, &sale).await;
    assert_eq!(orders.get(&rid(&a)), Some(&("ann".to_string(), 2)));
    assert_eq!(
        item_sold(&app.pool, &sale).await,
        [("M".to_string(), 1), ("S".to_string(), 1)].into()
    );
    assert_eq!(
        user_purchases(&app.pool, &sale).await,
        [("ann".to_string(), 2)].into()
    );
    assert_eq!(
        user_item_purchases(&app.pool, &sale).await,
        [(("M".to_string(), "ann".to_string()), 1)].into()
    );
}

#[tokio::test]
async fn the_idempotency_key_covers_the_whole_cart() {
    let app = spawn_app().await;
    let sale = app.items_sale(sizes(), 3, 60).await;
    let cart = json!([{"sku": "S", "quantity": 1}, {"sku": "M", "quantity": 1}]);
    let (s, a) = app.reserve_cart(&sale, "ann", cart, Some("k-1")).await;
    assert_eq!(s, 201, "{a}");
    // The same cart, its lines in another order: a replay.
    let (s, r) = app
        .reserve_cart(
            &sale,
            "ann",
            json!([{"sku": "M", "quantity": 1}, {"sku": "S", "quantity": 1}]),
            Some("k-1"),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["reservation_id"].clone(), r["items"].clone()),
        (a["reservation_id"].clone(), a["items"].clone())
    );
    // Another cart, even of the same total: refused.
    for other in [
        json!([{"sku": "S", "quantity": 1}, {"sku": "L", "quantity": 1}]),
        json!([{"sku": "S", "quantity": 2}]),
        json!([{"sku": "S", "quantity": 1}]),
    ] {
        let (s, v) = app
            .reserve_cart(&sale, "ann", other.clone(), Some("k-1"))
            .await;
        assert_eq!(
            (s, error_code(&v)),
            (422, "idempotency_key_reused"),
            "{other}: {v}"
        );
    }
    assert_eq!(
        counters(&app.view(&sale).await),
        (5, 0, 2, 3),
        "one hold for the key"
    );
}

#[tokio::test]
async fn confirm_cancel_extend_and_expiry_move_every_line() {
    let app = spawn_app().await;
    let sale = app.items_sale(sizes(), 3, 2).await;
    let cart = json!([{"sku": "S", "quantity": 2}, {"sku": "M", "quantity": 1}]);
    let (s, a) = app.reserve_cart(&sale, "ann", cart.clone(), None).await;
    assert_eq!(s, 201, "{a}");
    // Extended by more than the hold ttl, so it moves even within the
    // millisecond of the reserve.
    let (s, v) = body(
        app.client
            .post(app.url(&format!("/v1/sales/{sale}/reservations/{}/extend", rid(&a))))
            .bearer_auth(token("ann"))
            .json(&json!({"extend_secs": 5}))
            .send()
            .await
            .expect("extend"),
    )
    .await;
    assert_eq!((s, v["items"].clone()), (200, a["items"].clone()), "{v}");
    let (s, v) = app.act(&sale, &rid(&a), "cancel", Some("ann")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
    let view = app.view(&sale).await;
    assert_eq!(
        (item_counters(&view, "S"), item_counters(&view, "M")),
        ((2, 0, 0, 2), (2, 0, 0, 2))
    );

    // A hold left to expire gives every line back.
    let (s, b) = app.reserve_cart(&sale, "bob", cart.clone(), None).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(counters(&app.view(&sale).await).2, 3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let view = app.view(&sale).await;
        if counters(&view).2 == 0 {
            assert_eq!(
                (item_counters(&view, "S"), item_counters(&view, "M")),
                ((2, 0, 0, 2), (2, 0, 0, 2))
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hold never expired: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, v) = app.act(&sale, &rid(&b), "confirm", Some("bob")).await;
    assert_eq!((s, error_code(&v)), (410, "reservation_expired"));
    // bob's item cap on M was given back with the hold.
    let (s, c) = app.reserve_cart(&sale, "bob", cart, None).await;
    assert_eq!(s, 201, "{c}");
    let (s, v) = app.act(&sale, &rid(&c), "confirm", Some("bob")).await;
    assert_eq!((s, v["items"].clone()), (200, c["items"].clone()), "{v}");
    let view = app.view(&sale).await;
    assert_eq!(
        (item_counters(&view, "S"), item_counters(&view, "M")),
        ((2, 2, 0, 0), (2, 1, 0, 1))
    );
    assert_eq!(
        item_sold(&app.pool, &sale).await,
        [("M".to_string(), 1), ("S".to_string(), 2)].into()
    );
    // Every line's movements reach stock_movements, one row per line.
    app.drained(Duration::from_secs(10)).await;
    let lines: Vec<(String, i16, Option<String>, i32)> = sqlx::query_as(
        "SELECT kind, line, sku, quantity FROM stock_movements WHERE reservation_id = $1::uuid ORDER BY occurred_at, event_id, line",
    )
    .bind(rid(&c))
    .fetch_all(&app.pool)
    .await
    .expect("movements");
    assert_eq!(
        lines,
        vec![
            ("reserved".into(), 1, Some("M".into()), 1),
            ("reserved".into(), 2, Some("S".into()), 2),
            ("confirmed".into(), 1, Some("M".into()), 1),
            ("confirmed".into(), 2, Some("S".into()), 2),
        ]
    );
}
