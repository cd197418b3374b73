//! A fair start: the queue of a queued sale. Everyone who joins before the
//! start gets a uniformly random place; later joiners queue behind in
//! arrival order; places are let in at `admit_per_sec` from the start, each
//! for a window; reserve checks admission in the same step as stock.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::support::*;

async fn queued_sale(app: &TestApp, cfg: Value) -> String {
    let id = unique_sale();
    let (s, v) = app.put_sale(&id, cfg).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["admission"], "queue", "{v}");
    id
}

async fn join(app: &TestApp, sale: &str, user: &str) -> (u16, Value) {
    body(
        app.client
            .post(app.url(&format!("/v1/sales/{sale}/queue")))
            .bearer_auth(token(user))
            .send()
            .await
            .expect("join"),
    )
    .await
}

async fn ticket(app: &TestApp, sale: &str, user: &str) -> (u16, Value) {
    body(
        app.client
            .get(app.url(&format!("/v1/sales/{sale}/queue/me")))
            .bearer_auth(token(user))
            .send()
            .await
            .expect("ticket"),
    )
    .await
}

/// Waits until the sale has started (by its own view's server time).
async fn wait_until_started(app: &TestApp, sale: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.view(sale).await["state"] == "scheduled" {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn joins_tickets_and_their_errors() {
    let app = open_app().await;
    let open = app.sale(5, 1, 60).await;
    let (s, v) = join(&app, &open, "ann").await;
    assert_eq!((s, error_code(&v)), (409, "sale_not_queued"));
    let sale = queued_sale(
        &app,
        json!({"stock": 5, "per_user_limit": 1, "admission": "queue"}),
    )
    .await;
    let (s, v) = ticket(&app, &sale, "ann").await;
    assert_eq!((s, error_code(&v)), (404, "not_in_queue"));
    let (s, first) = join(&app, &sale, "ann").await;
    assert_eq!(s, 201, "{first}");
    assert_eq!(
        (first["user_id"].as_str(), first["position"].as_u64()),
        (Some("ann"), Some(1))
    );
    // Started (no starts_at) and alone: admitted at once.
    assert_eq!(first["state"], "admitted", "{first}");
    assert!(first["admitted_until"].is_string());
    let (s, again) = join(&app, &sale, "ann").await;
    assert_eq!(
        (s, again["position"].clone()),
        (200, first["position"].clone())
    );
    let (s, mine) = ticket(&app, &sale, "ann").await;
    assert_eq!((s, mine["position"].as_u64()), (200, Some(1)));
    let (s, v) = join(&app, "no-such-sale", "ann").await;
    assert_eq!((s, error_code(&v)), (404, "sale_not_found"));
    let (s, v) = body(
        app.client
            .post(app.url(&format!("/v1/sales/{sale}/queue")))
            .send()
            .await
            .expect("join"),
    )
    .await;
    assert_eq!((s, error_code(&v)), (401, "unauthorized"));
    // Settings of a queue on an open sale are refused, not ignored.
    let (s, v) = app
        .put_sale(
            &unique_sale(),
            json!({"stock": 5, "per_user_limit": 1, "admit_per_sec": 5}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["details"]["field"].as_str()),
        (400, Some("admit_per_sec"))
    );
    // The queue opens at queue_opens_at; the view shows the queue.
    let later = queued_sale(
        &app,
        json!({"stock": 5, "per_user_limit": 1, "admission": "queue",
               "starts_at": at(60_000), "queue_opens_at": at(30_000)}),
    )
    .await;
    let (s, v) = join(&app, &later, "ann").await;
    assert_eq!((s, error_code(&v)), (409, "queue_not_open"));
    assert_eq!(
        app.view(&sale).await["queue"],
        json!({"joined": 1, "serving": 1})
    );
    // An ended sale's queue takes nobody.
    let ended = queued_sale(
        &app,
        json!({"stock": 5, "per_user_limit": 1, "admission": "queue",
               "starts_at": at(-60_000), "ends_at": at(-1_000)}),
    )
    .await;
    let (s, v) = join(&app, &ended, "ann").await;
    assert_eq!((s, error_code(&v)), (410, "sale_ended"));
}

/// 300 buyers join before the start, in a known order. At the start their
/// places are a permutation of 1..=300 (no duplicates, no gaps) that is not
/// their arrival order: the rank correlation between arrival and place is
/// near 0 for a uniformly random order (its standard deviation is about
/// 0.04 here; arrival order would give 1). Buyers who join after the start
/// queue behind them, in arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_drawn_at_the_start_are_a_random_permutation_and_late_joiners_queue_behind() {
    let app = open_app().await;
    let n = 300;
    let sale = queued_sale(
        &app,
        json!({"stock": 10, "per_user_limit": 1, "admission": "queue", "admit_per_sec": 1,
               "starts_at": at(4_000)}),
    )
    .await;
    for i in 0..n {
        let (s, v) = join(&app, &sale, &format!("early-{i:03}")).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(
            (v["state"].as_str(), v["position"].is_null()),
            (Some("pre_queue"), true),
            "{v}"
        );
    }
    assert_eq!(
        app.view(&sale).await["state"],
        "scheduled",
        "joined before the start"
    );
    wait_until_started(&app, &sale).await;
    let mut late = Vec::new();
    for i in 0..5 {
        let (s, v) = join(&app, &sale, &format!("late-{i}")).await;
        assert_eq!(s, 201, "{v}");
        late.push(v["position"].as_u64().expect("a place"));
    }
    assert_eq!(
        late,
        (n + 1..=n + 5).collect::<Vec<u64>>(),
        "late joiners in arrival order"
    );
    let tickets = join_all((0..n).map(|i| {
        let (app, sale) = (app.clone(), sale.clone());
        async move { ticket(&app, &sale, &format!("early-{i:03}")).await }
    }))
    .await;
    let places: Vec<u64> = tickets
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, 200, "{v}");
            v["position"].as_u64().expect("a place after the start")
        })
        .collect();
    let mut sorted = places.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=n).collect::<Vec<u64>>(),
        "a permutation of 1..=n"
    );
    // Kendall's tau between arrival index and place.
    let mut concordant = 0i64;
    for i in 0..places.len() {
        for j in i + 1..places.len() {
            concordant += if places[j] > places[i] { 1 } else { -1 };
        }
    }
    let pairs = (n * (n - 1) / 2) as f64;
    let tau = concordant as f64 / pairs;
    println!("rank correlation of arrival and place: {tau:.3}");
    assert!(
        tau.abs() < 0.3,
        "places follow arrival order (tau {tau:.3})"
    );
}

/// Place k is let in at start + (k - 1) / admit_per_sec and may reserve
/// for the window after; before: 409 not_admitted (with its place and the
/// places served), after: 410 admission_expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_follows_the_rate_and_the_window() {
    let app = open_app().await;
    // 2 places a second, a 1 s window: place 1 at +0 s, place 3 at +1 s.
    let sale = queued_sale(
        &app,
        json!({"stock": 10, "per_user_limit": 1, "admission": "queue", "admit_per_sec": 2,
               "admission_window_secs": 1, "starts_at": at(1_500)}),
    )
    .await;
    let (s, v) = app.reserve(&sale, "a", 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "sale_not_started"), "{v}");
    wait_until_started(&app, &sale).await;
    // Joined after the start: places 1, 2, 3 in order.
    for user in ["a", "b", "c"] {
        assert_eq!(join(&app, &sale, user).await.0, 201);
    }
    let (s, v) = app.reserve(&sale, "c", 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "not_admitted"), "{v}");
    assert_eq!(v["error"]["details"]["position"], 3, "{v}");
    assert!(v["error"]["details"]["serving"].as_u64() < Some(3), "{v}");
    let (s, v) = app.reserve(&sale, "nobody", 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "not_admitted"));
    assert!(v["error"]["details"]["position"].is_null(), "{v}");
    // c's place comes; it reserves within its window.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, t) = ticket(&app, &sale, "c").await;
        if t["state"] == "admitted" {
            break;
        }
        assert_eq!(t["state"], "waiting", "{t}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "c never admitted: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = app.reserve(&sale, "c", 1, None).await;
    assert_eq!(s, 201, "{v}");
    // b waits past its window: expired.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, t) = ticket(&app, &sale, "b").await;
        if t["state"] == "expired" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never expired: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = app.reserve(&sale, "b", 1, None).await;
    assert_eq!((s, error_code(&v)), (410, "admission_expired"), "{v}");
}

/// Nothing is admitted while the sale is sold out; units coming back
/// re-open admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_is_admitted_while_sold_out() {
    let app = open_app().await;
    let sale = queued_sale(
        &app,
        json!({"stock": 1, "per_user_limit": 1, "admission": "queue", "admit_per_sec": 20}),
    )
    .await;
    assert_eq!(join(&app, &sale, "first").await.0, 201);
    let (s, held) = app.reserve(&sale, "first", 1, None).await;
    assert_eq!(s, 201, "{held}");
    // Sold out: the clock stands still for everyone behind.
    for i in 0..5 {
        assert_eq!(join(&app, &sale, &format!("next-{i}")).await.0, 201);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let serving = app.view(&sale).await["queue"]["serving"].clone();
    assert_eq!(serving, 1, "admitted while sold out");
    let (_, t) = ticket(&app, &sale, "next-0").await;
    assert_eq!(
        (t["state"].as_str(), t["estimated_wait_secs"].is_null()),
        (Some("waiting"), true),
        "{t}"
    );
    // The hold is given back: admission goes on.
    assert_eq!(
        app.act(&sale, &rid(&held), "cancel", Some("first")).await.0,
        200
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, t) = ticket(&app, &sale, "next-0").await;
        if t["state"] == "admitted" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "admission never resumed: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.reserve(&sale, "next-0", 1, None).await.0, 201);
}

/// Joins are rate-limited like reserves.
#[tokio::test]
async fn queue_joins_are_rate_limited() {
    let app = Spawn::new()
        .await
        .with(|s| {
            s.rate.per_user_per_sec = 1;
            s.rate.per_user_burst = 2;
        })
        .start()
        .await;
    let sale = queued_sale(
        &app,
        json!({"stock": 5, "per_user_limit": 1, "admission": "queue"}),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(join(&app, &sale, "eager").await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

/// Redis loses its data: the queue is gone with it. Fail closed: nobody is
/// admitted at once; buyers join again, in arrival order, and are let in
/// at the rate from the rebuild on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_loss_the_queue_starts_again_and_admits_nobody_at_once() {
    let app = open_app().await;
    let sale = queued_sale(
        &app,
        json!({"stock": 100, "per_user_limit": 1, "admission": "queue", "admit_per_sec": 2,
               "starts_at": at(-600_000)}),
    )
    .await;
    for i in 0..4 {
        assert_eq!(join(&app, &sale, &format!("before-{i}")).await.0, 201);
    }
    app.wipe_redis().await;
    let v = app.view(&sale).await;
    assert_eq!(v["queue"], json!({"joined": 0, "serving": 0}), "{v}");
    let (s, v) = ticket(&app, &sale, "before-0").await;
    assert_eq!((s, error_code(&v)), (404, "not_in_queue"));
    let mut places = Vec::new();
    for i in 0..4 {
        let (s, v) = join(&app, &sale, &format!("again-{i}")).await;
        assert_eq!(s, 201, "{v}");
        places.push(v["position"].as_u64().expect("place"));
    }
    assert_eq!(places, vec![1, 2, 3, 4]);
    // Ten minutes after the start, but not everyone at once: at 2 a
    // second, place 4 is still waiting right after the rebuild.
    let (_, t) = ticket(&app, &sale, "again-3").await;
    assert_eq!(t["state"], "waiting", "{t}");
}
