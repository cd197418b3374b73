//! Every view of a sale of items shows them: the sale view's event stream,
//! and the admin's pages of held and confirmed reservations.

use serde_json::json;

use crate::admin::admin_get;
use crate::live::{subscribe, until};
use crate::support::*;

#[tokio::test]
async fn the_event_stream_and_the_admin_pages_carry_the_items() {
    let app = spawn_app().await;
    let sale = app
        .items_sale(
            json!([{"sku": "S", "stock": 2}, {"sku": "M", "stock": 2}]),
            3,
            60,
        )
        .await;
    let mut events = subscribe(&app, &sale).await;
    let first = until(&mut events, "the view at connect", |_| true).await;
    assert_eq!(item_counters(&first, "S"), (2, 0, 0, 2), "{first}");

    let (s, a) = app
        .reserve_cart(
            &sale,
            "ann",
            json!([{"sku": "S", "quantity": 1}, {"sku": "M", "quantity": 2}]),
            None,
        )
        .await;
    assert_eq!(s, 201, "{a}");
    let held = until(&mut events, "the cart held", |v| v["held"] == 3).await;
    assert_eq!(item_counters(&held, "M"), (2, 0, 2, 0), "{held}");
    assert_eq!(item_counters(&held, "S"), (2, 0, 1, 1), "{held}");

    let cart = json!([{"sku": "M", "quantity": 2}, {"sku": "S", "quantity": 1}]);
    let (s, page) = admin_get(&app, &format!("/v1/sales/{sale}/reservations?status=held")).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["reservations"][0]["items"], cart, "{page}");
    assert_eq!(
        app.act(&sale, &rid(&a), "confirm", Some("ann")).await.0,
        200
    );
    let sold = until(&mut events, "the cart sold", |v| v["sold"] == 3).await;
    assert_eq!(item_counters(&sold, "M"), (2, 2, 0, 0), "{sold}");
    let (s, page) = admin_get(
        &app,
        &format!("/v1/sales/{sale}/reservations?status=confirmed"),
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["reservations"][0]["items"], cart, "{page}");
    // A reservation Redis no longer knows reads back from Postgres with its lines.
    app.wipe_redis().await;
    let (s, r) = app.get_reservation(&sale, &rid(&a), Some("ann")).await;
    assert_eq!(
        (s, r["status"].as_str(), r["items"].clone()),
        (200, Some("confirmed"), cart),
        "{r}"
    );
}
