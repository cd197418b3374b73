//! A sale of several items after Redis lost it: every item's stock and
//! units sold, and every buyer's totals (across items and per capped
//! item), come back from Postgres; holds only Redis knew are gone.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_lost_sale_of_items_is_rebuilt_item_by_item() {
    let app = spawn_app().await;
    let sale = app
        .items_sale(
            json!([{"sku": "S", "stock": 3}, {"sku": "M", "stock": 2, "per_user_limit": 1}, {"sku": "L", "stock": 2}]),
            3,
            60,
        )
        .await;
    app.buy_cart(
        &sale,
        "ann",
        json!([{"sku": "M", "quantity": 1}, {"sku": "S", "quantity": 1}]),
    )
    .await;
    app.buy_cart(&sale, "bob", json!([{"sku": "S", "quantity": 1}]))
        .await;
    // A hold only Redis knew.
    let (s, _) = app
        .reserve_cart(&sale, "cid", json!([{"sku": "L", "quantity": 2}]), None)
        .await;
    assert_eq!(s, 201);

    app.wipe_redis().await;
    let v = app.view(&sale).await;
    assert_eq!(counters(&v), (7, 3, 0, 4), "{v}");
    assert_eq!(item_counters(&v, "S"), (3, 2, 0, 1));
    assert_eq!(item_counters(&v, "M"), (2, 1, 0, 1));
    assert_eq!(
        item_counters(&v, "L"),
        (2, 0, 0, 2),
        "the lost hold's units are free again"
    );
    assert_eq!(v["items"][1]["per_user_limit"], 1);
    // The caps hold across the loss: ann's and bob's sale cap (3: 2 and 1
    // bought), bob's M (none bought).
    let (s, e) = app
        .reserve_cart(&sale, "ann", json!([{"sku": "L", "quantity": 2}]), None)
        .await;
    assert_eq!((s, error_code(&e)), (409, "user_limit_exceeded"), "{e}");
    let (s, e) = app
        .reserve_cart(&sale, "bob", json!([{"sku": "L", "quantity": 3}]), None)
        .await;
    assert_eq!((s, error_code(&e)), (409, "user_limit_exceeded"), "{e}");
    let (s, c) = app
        .reserve_cart(&sale, "bob", json!([{"sku": "M", "quantity": 1}]), None)
        .await;
    assert_eq!(s, 201, "{c}");
    // The item cap of M for a buyer who bought it before the loss.
    let (s, _) = app
        .reserve_cart(&sale, "dan", json!([{"sku": "M", "quantity": 1}]), None)
        .await;
    assert_eq!(s, 409, "M is sold out (1 sold, 1 held)");
    assert_eq!(app.act(&sale, &rid(&c), "cancel", Some("bob")).await.0, 200);
    app.wipe_redis().await;
    let (s, e) = app
        .reserve_cart(&sale, "ann", json!([{"sku": "M", "quantity": 1}]), None)
        .await;
    assert_eq!(
        (s, error_code(&e), e["error"]["details"]["sku"].as_str()),
        (409, "user_limit_exceeded", Some("M")),
        "ann's M cap survives: {e}"
    );
    // An update after a loss keeps every item's units sold.
    app.wipe_redis().await;
    let (s, v) = app
        .put_sale(&sale, json!({"items": [{"sku": "S", "stock": 2}, {"sku": "M", "stock": 2, "per_user_limit": 1}, {"sku": "L", "stock": 2}], "per_user_limit": 3}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(item_counters(&v, "S"), (2, 2, 0, 0));
    let (s, e) = app
        .put_sale(&sale, json!({"items": [{"sku": "S", "stock": 1}, {"sku": "M", "stock": 2, "per_user_limit": 1}, {"sku": "L", "stock": 2}], "per_user_limit": 3}))
        .await;
    assert_eq!((s, error_code(&e)), (409, "stock_below_committed"), "{e}");
}
