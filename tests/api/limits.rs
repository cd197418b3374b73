//! Abuse limits: per-buyer request rate, and the cap on one buyer's active
//! holds across sales.

use std::sync::Arc;

use futures_util::future::join_all;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_hammering_one_account_gets_429_with_retry_after() {
    let app = Arc::new(
        Spawn::new()
            .await
            .with(|s| {
                s.rate.per_user_per_sec = 2;
                s.rate.per_user_burst = 5;
            })
            .start()
            .await,
    );
    let sale = app.sale(1000, 1000, 60).await;
    let tasks = (0..30).map(|_| {
        let (app, sale) = (app.clone(), sale.clone());
        tokio::spawn(async move {
            let r = app
                .client
                .post(app.url(&format!("/v1/sales/{sale}/reservations")))
                .bearer_auth(token("bot"))
                .json(&serde_json::json!({"quantity": 1}))
                .send()
                .await
                .expect("reserve");
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            (body(r).await, retry_after)
        })
    });
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let ok = results.iter().filter(|((s, _), _)| *s == 201).count();
    let limited: Vec<_> = results.iter().filter(|((s, _), _)| *s == 429).collect();
    assert!(
        (5..=7).contains(&ok),
        "a burst of 5 (plus what 2/s refills), got {ok}"
    );
    assert_eq!(ok + limited.len(), 30);
    for ((_, v), retry_after) in &limited {
        assert_eq!(error_code(v), "rate_limited");
        assert!(
            retry_after
                .as_deref()
                .and_then(|r| r.parse::<u64>().ok())
                .is_some_and(|n| n >= 1),
            "Retry-After on every 429"
        );
    }
    // A person on the same sale is not affected, and the 429s took nothing.
    assert_eq!(app.reserve(&sale, "person", 1, None).await.0, 201);
    assert_eq!(app.view(&sale).await["held"].as_u64(), Some(ok as u64 + 1));
}

#[tokio::test]
async fn a_buyer_cannot_hold_more_than_the_cap_across_sales() {
    let app = Spawn::new()
        .await
        .with(|s| s.max_active_holds = 3)
        .start()
        .await;
    let sales = [
        app.sale(5, 2, 60).await,
        app.sale(5, 2, 60).await,
        app.sale(5, 2, 60).await,
        app.sale(5, 2, 60).await,
    ];
    let mut rids = Vec::new();
    for sale in &sales[..3] {
        let (s, v) = app.reserve(sale, "scalper", 1, None).await;
        assert_eq!(s, 201, "{v}");
        rids.push(v["reservation_id"].as_str().expect("rid").to_string());
    }
    let (s, v) = app.reserve(&sales[3], "scalper", 1, None).await;
    assert_eq!((s, error_code(&v)), (429, "rate_limited"), "{v}");
    assert_eq!(
        app.view(&sales[3]).await["held"],
        0,
        "the refused hold was given back"
    );
    // Another buyer is not affected; an ended hold frees a slot.
    assert_eq!(app.reserve(&sales[3], "someone", 1, None).await.0, 201);
    assert_eq!(
        app.act(&sales[0], &rids[0], "confirm", Some("scalper"))
            .await
            .0,
        200
    );
    assert_eq!(app.reserve(&sales[3], "scalper", 1, None).await.0, 201);
}
