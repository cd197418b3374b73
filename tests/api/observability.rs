//! What an operator watches: Prometheus metrics, request ids, readiness.

use std::time::Duration;

use crate::support::process::Serve;
use crate::support::*;

#[tokio::test]
async fn metrics_count_requests_outcomes_and_latency_histograms() {
    let app = spawn_app().await;
    let sale = app.sale(1, 1, 60).await;
    assert_eq!(app.reserve(&sale, "ann", 1, None).await.0, 201);
    assert_eq!(app.reserve(&sale, "bob", 1, None).await.0, 409);
    let r = app.get("/metrics").await;
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.expect("text");
    for needle in [
        r#"flashgate_reserve_outcomes_total{outcome="held"}"#,
        r#"flashgate_reserve_outcomes_total{outcome="sold_out"}"#,
        r#"flashgate_http_requests_total{route="/v1/sales/{sale_id}/reservations",method="POST",status="201"}"#,
        r#"flashgate_http_request_duration_seconds_bucket{route="/v1/sales/{sale_id}/reservations",le="0.005"}"#,
        r#"flashgate_script_duration_seconds_bucket{script="reserve",le="0.001"}"#,
        "# HELP flashgate_reserve_outcomes_total ",
        "# HELP flashgate_http_request_duration_seconds ",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    for path in ["/healthz", "/v1/sales/nope", "/v2/unknown"] {
        let r = app.client.get(app.url(path)).send().await.expect("get");
        let id = r
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert!(
            id.as_deref()
                .and_then(|i| uuid::Uuid::parse_str(i).ok())
                .is_some(),
            "{path}: no request id ({id:?})"
        );
    }
}

/// Waits until `/metrics` shows `line` (the gauge follows the worker's next
/// round, a moment after `/readyz`, which reads the stall's age directly).
async fn metric_until(app: &TestApp, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !app.metrics().await.contains(line) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never in the metrics: {line}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 12.2: a write-behind that cannot write a sale (here its stream is
/// not a stream any more) was invisible: `/readyz` said `ready`, nothing
/// moved, reconcile called it lag. A stall now shows in `/readyz`
/// (`degraded`, with the reason naming the sale), in a metric and in an
/// error log line, and clears once the sale can be written again. The
/// instance is a process of its own: metrics are per process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_write_behind_shows_in_readyz_metrics_and_the_log() {
    let spawn = Spawn::new().await;
    let proc = Serve::start(
        &spawn,
        &[
            ("FLASHGATE_STALL_AFTER_MS", "500"),
            ("FLASHGATE_LOG_FORMAT", "json"),
        ],
    )
    .await;
    let app = &proc.app;
    let sale = app.sale(10, 2, 60).await;
    readyz_until(app, Duration::from_secs(10), |s, v| {
        s == 200 && v["status"] == "ready"
    })
    .await;

    let events = format!("{}:{{{sale}}}:events", app.prefix);
    let mut conn = app.redis().await;
    let _: () = redis::cmd("DEL")
        .arg(&events)
        .query_async(&mut conn)
        .await
        .expect("del");
    let _: () = redis::cmd("SET")
        .arg(&events)
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .expect("set");

    let v = readyz_until(app, Duration::from_secs(15), |s, v| {
        s == 200 && v["status"] == "degraded"
    })
    .await;
    let reasons = v["reasons"].to_string();
    assert!(
        reasons.contains("write-behind") && reasons.contains(&sale),
        "the reason names the task and the sale: {v}"
    );
    metric_until(
        app,
        r#"flashgate_background_stalled{task="write-behind"} 1"#,
    )
    .await;

    // Mended: the worker makes the stream and its group again, and the
    // stall clears.
    let _: () = redis::cmd("DEL")
        .arg(&events)
        .query_async(&mut conn)
        .await
        .expect("del");
    readyz_until(app, Duration::from_secs(15), |s, v| {
        s == 200 && v["status"] == "ready"
    })
    .await;
    metric_until(
        app,
        r#"flashgate_background_stalled{task="write-behind"} 0"#,
    )
    .await;

    let log = proc.log();
    assert!(
        log.lines().any(|l| l.contains("\"level\":\"ERROR\"")
            && l.contains("background task stalled")
            && l.contains(&sale)),
        "an error log line names the stall: {log}"
    );
}

/// README, Secrets: request headers are not logged, and neither are the
/// secrets nor the database URL, so none reaches a log line — even at
/// `RUST_LOG=debug`. A `flashgate serve` process logging JSON at debug
/// level serves an admin and a buyer whose headers carry recognisable
/// values (both tokens, a refused token, an `Idempotency-Key`, a
/// `User-Agent`, a header of no meaning to it) on a database URL with a
/// password: none of them is anywhere in its output, which does show the
/// requests (their request ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_and_secrets_never_reach_the_log() {
    let canary = format!("canary{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut spawn = Spawn::new().await;
    // Postgres here trusts local connections: the password is never checked.
    let password = format!("pw-{canary}");
    let db_url = spawn.settings.database_url.expose().replacen(
        "://postgres@",
        &format!("://postgres:{password}@"),
        1,
    );
    assert!(db_url.contains(&password), "{db_url}");
    spawn.settings.database_url = flashgate::config::Secret::new(db_url);
    let proc = Serve::start(
        &spawn,
        &[("RUST_LOG", "debug"), ("FLASHGATE_LOG_FORMAT", "json")],
    )
    .await;
    let app = &proc.app;
    let buyer = token(&format!("buyer-{canary}"));
    let secrets = [
        ("the admin token", ADMIN.to_string()),
        ("the JWT secret", JWT_SECRET.to_string()),
        ("the database password", password),
        ("a buyer token", buyer.clone()),
        ("a refused token", format!("refused-{canary}")),
        ("an Idempotency-Key", format!("idem-{canary}")),
        ("a User-Agent", format!("agent-{canary}")),
        ("a header of no meaning", format!("header-{canary}")),
    ];
    let secret = |what: &str| {
        secrets
            .iter()
            .find(|(w, _)| *w == what)
            .map(|(_, v)| v.clone())
            .expect("secret")
    };
    let headers = |req: reqwest::RequestBuilder| {
        req.header("User-Agent", secret("a User-Agent"))
            .header("X-Flashgate-Test", secret("a header of no meaning"))
    };
    let mut ids = Vec::new();
    let call = |what: &'static str, req: reqwest::RequestBuilder, want: u16| {
        let req = headers(req);
        async move {
            let r = req.send().await.expect(what);
            let id = r
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .expect("x-request-id");
            let (s, v) = body(r).await;
            assert_eq!(s, want, "{what}: {v}");
            (id, v)
        }
    };
    let sale = unique_sale();
    let (id, _) = call(
        "create the sale",
        app.client
            .put(app.url(&format!("/v1/sales/{sale}")))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"stock": 5, "per_user_limit": 2})),
        201,
    )
    .await;
    ids.push(id);
    let reservations = app.url(&format!("/v1/sales/{sale}/reservations"));
    let (id, v) = call(
        "reserve",
        app.client
            .post(&reservations)
            .bearer_auth(&buyer)
            .header("Idempotency-Key", secret("an Idempotency-Key"))
            .json(&serde_json::json!({"quantity": 1})),
        201,
    )
    .await;
    ids.push(id);
    let (id, _) = call(
        "confirm",
        app.client
            .post(app.url(&format!(
                "/v1/sales/{sale}/reservations/{}/confirm",
                rid(&v)
            )))
            .bearer_auth(&buyer),
        200,
    )
    .await;
    ids.push(id);
    for (what, path) in [
        ("a buyer route with a refused token", reservations.clone()),
        ("an admin route with a refused token", app.url("/v1/sales")),
    ] {
        let req = if path.ends_with("/reservations") {
            app.client
                .post(&path)
                .json(&serde_json::json!({"quantity": 1}))
        } else {
            app.client.get(&path)
        };
        let (id, _) = call(what, req.bearer_auth(secret("a refused token")), 401).await;
        ids.push(id);
    }
    let (id, _) = call(
        "list the sales",
        app.client.get(app.url("/v1/sales")).bearer_auth(ADMIN),
        200,
    )
    .await;
    ids.push(id);
    app.drained(Duration::from_secs(10)).await;

    let log = proc.log();
    let logged: Vec<&String> = ids.iter().filter(|id| log.contains(id.as_str())).collect();
    assert!(
        !logged.is_empty(),
        "the log shows none of the requests {ids:?}: it proves nothing:\n{log}"
    );
    for (what, value) in &secrets {
        if let Some(line) = log.lines().find(|l| l.contains(value.as_str())) {
            panic!("{what} reached the log: {line}");
        }
    }
    eprintln!(
        "debug log: {} lines, {} of {} requests in it by id, no header value nor secret",
        log.lines().count(),
        logged.len(),
        ids.len()
    );
}
