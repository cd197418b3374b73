//! The audit of admin changes (`GET /v1/audit`), an admin cancel whose
//! audit row Postgres refused, and that buyers get no admin route.

use std::time::Duration;

use serde_json::{json, Value};

use crate::admin::admin_get;
use crate::support::*;

/// Every PUT, pause, resume, close and admin cancel leaves a row, with the
/// request id it was answered with and the client's address; newest first.
#[tokio::test]
async fn admin_changes_are_audited_with_their_request_id() {
    let app = spawn_app().await;
    let sale = unique_sale();
    let mut ids = Vec::new();
    let request_id = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("X-Request-Id")
            .to_string()
    };
    for stock in [5, 6] {
        let r = app
            .client
            .put(app.url(&format!("/v1/sales/{sale}")))
            .bearer_auth(ADMIN)
            .json(&json!({"stock": stock, "per_user_limit": 1}))
            .send()
            .await
            .expect("put");
        assert!(r.status().is_success());
        ids.push(request_id(&r));
    }
    let (_, mine) = app.reserve(&sale, "ann", 1, None).await;
    let (_, theirs) = app.reserve(&sale, "bob", 1, None).await;
    assert_eq!(
        app.act(&sale, &rid(&theirs), "cancel", Some("bob")).await.0,
        200
    );
    // Cancelled by its buyer: the admin's cancel changes nothing, no row.
    assert_eq!(app.act(&sale, &rid(&theirs), "cancel", None).await.0, 200);
    let post = |path: String| app.client.post(app.url(&path)).bearer_auth(ADMIN).send();
    for path in [
        format!("/v1/sales/{sale}/reservations/{}/cancel", rid(&mine)),
        format!("/v1/sales/{sale}/reservations/{}/cancel", rid(&mine)),
        format!("/v1/sales/{sale}/pause"),
        format!("/v1/sales/{sale}/resume"),
        format!("/v1/sales/{sale}/close"),
    ] {
        let r = post(path).await.expect("post");
        assert_eq!(r.status().as_u16(), 200);
        ids.push(request_id(&r));
    }
    ids.remove(3); // the cancel's replay: recorded once, by the first

    let (s, v) = admin_get(&app, &format!("/v1/audit?sale_id={sale}")).await;
    assert_eq!(s, 200, "{v}");
    let actions = v["actions"].as_array().expect("actions");
    let got: Vec<(&str, &str)> = actions
        .iter()
        .map(|a| {
            (
                a["action"].as_str().expect("action"),
                a["request_id"].as_str().expect("id"),
            )
        })
        .collect();
    let want: Vec<(&str, &str)> = [
        "close",
        "resume",
        "pause",
        "cancel",
        "configure",
        "configure",
    ]
    .into_iter()
    .zip(ids.iter().rev().map(String::as_str))
    .collect();
    assert_eq!(got, want, "newest first, each with its request id");
    for a in actions {
        assert_eq!(
            (a["sale_id"].as_str(), a["client"].as_str()),
            (Some(sale.as_str()), Some("127.0.0.1")),
            "{a}"
        );
        assert!(a["at"].is_string());
    }
    let (close, cancel, created) = (&actions[0], &actions[3], &actions[5]);
    assert_eq!(
        (&close["before"]["closed_at"], &close["after"]["paused"]),
        (&Value::Null, &json!(false))
    );
    assert!(close["after"]["closed_at"].is_string(), "{close}");
    assert_eq!(
        (
            &actions[2]["before"]["paused"],
            &actions[2]["after"]["paused"]
        ),
        (&json!(false), &json!(true))
    );
    assert_eq!(
        (&created["before"], &created["after"]["stock"]),
        (&Value::Null, &json!(5))
    );
    assert_eq!(
        (
            &actions[4]["before"]["stock"],
            &actions[4]["after"]["stock"]
        ),
        (&json!(5), &json!(6))
    );
    assert_eq!(
        (
            cancel["before"]["status"].as_str(),
            cancel["after"]["status"].as_str(),
            cancel["after"]["reservation_id"].as_str()
        ),
        (Some("held"), Some("cancelled"), Some(rid(&mine).as_str())),
        "{cancel}"
    );
    assert!(cancel["after"]["cancelled_at"].is_string(), "{cancel}");

    let (_, v) = admin_get(&app, &format!("/v1/audit?sale_id={sale}&limit=2")).await;
    assert_eq!(v["actions"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["actions"][0]["action"], "close");
    let other = app.sale(1, 1, 60).await;
    let (_, v) = admin_get(&app, &format!("/v1/audit?sale_id={other}")).await;
    assert_eq!(v["actions"].as_array().map(Vec::len), Some(1), "{v}");
    let (_, v) = admin_get(&app, "/v1/audit").await;
    assert_eq!(
        v["actions"].as_array().map(Vec::len),
        Some(7),
        "every sale's"
    );
    for query in ["limit=0", "limit=501", "sale_id=bad.id", "sale=x"] {
        let (s, v) = admin_get(&app, &format!("/v1/audit?{query}")).await;
        assert_eq!((s, error_code(&v)), (400, "invalid_request"), "{query}");
    }
}

/// An admin cancel changes Redis first: when its audit row cannot be
/// written the cancel answers 503 (the hold is cancelled all the same),
/// and its retry writes the row, once. Its record stays in Redis while
/// the row is missing, although the write-behind wrote its event (the
/// retry reads it); the retry that writes the row drops it.
#[tokio::test]
async fn an_admin_cancel_is_audited_by_its_retry_when_postgres_refused_the_row() {
    let app = spawn_app().await;
    let sale = app.sale(5, 1, 60).await;
    let (_, held) = app.reserve(&sale, "ann", 1, None).await;
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM admin_actions WHERE action = 'cancel' AND sale_id = $1",
        )
        .bind(&sale)
        .fetch_one(&app.pool)
        .await
        .expect("count")
    };
    // Sabotage: the audit table is away.
    sqlx::query("ALTER TABLE admin_actions RENAME TO admin_actions_away")
        .execute(&app.pool)
        .await
        .expect("rename");
    let (s, v) = app.act(&sale, &rid(&held), "cancel", None).await;
    assert_eq!((s, error_code(&v)), (503, "unavailable"), "{v}");
    let (_, r) = app.get_reservation(&sale, &rid(&held), None).await;
    assert_eq!(r["status"], "cancelled", "the cancel itself happened");
    assert_eq!(counters(&app.view(&sale).await).2, 0, "its unit is back");

    sqlx::query("ALTER TABLE admin_actions_away RENAME TO admin_actions")
        .execute(&app.pool)
        .await
        .expect("rename back");
    assert_eq!(count().await, 0);
    app.drained(Duration::from_secs(30)).await;
    assert!(
        app.record_exists(&sale, &rid(&held)).await,
        "kept while its audit row is missing"
    );
    for _ in 0..2 {
        let (s, v) = app.act(&sale, &rid(&held), "cancel", None).await;
        assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
        assert_eq!(count().await, 1, "written by the retry, once");
        assert!(
            !app.record_exists(&sale, &rid(&held)).await,
            "dropped by the retry that wrote the row"
        );
    }
    let (s, v) = app.get_reservation(&sale, &rid(&held), None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
}

/// Buyers (and callers without a token) get 401 on every admin route.
#[tokio::test]
async fn buyers_get_401_on_every_admin_route() {
    let app = spawn_app().await;
    let sale = app.sale(5, 1, 60).await;
    let routes = [
        ("PUT", format!("/v1/sales/{sale}")),
        ("GET", "/v1/sales".to_string()),
        ("POST", format!("/v1/sales/{sale}/pause")),
        ("POST", format!("/v1/sales/{sale}/resume")),
        ("POST", format!("/v1/sales/{sale}/close")),
        ("GET", format!("/v1/sales/{sale}/reservations?status=held")),
        (
            "GET",
            format!("/v1/sales/{sale}/reservations?status=confirmed"),
        ),
        ("GET", format!("/v1/sales/{sale}/orders")),
        ("GET", "/v1/audit".to_string()),
    ];
    for (method, path) in &routes {
        for bearer in [Some(token("ann")), None] {
            let mut req = app
                .client
                .request(method.parse().expect("method"), app.url(path))
                .json(&json!({"stock": 1, "per_user_limit": 1}));
            if let Some(t) = &bearer {
                req = req.bearer_auth(t);
            }
            let (s, v) = body(req.send().await.expect("send")).await;
            assert_eq!(
                (s, error_code(&v)),
                (401, "unauthorized"),
                "{method} {path}"
            );
        }
    }
    let v = app.view(&sale).await;
    assert_eq!(
        (v["paused"].as_bool(), v["closed"].as_bool()),
        (Some(false), Some(false))
    );
}
