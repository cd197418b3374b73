//! Admins steer a live sale: pause, resume, close. A pause is one step
//! with every reserve (each lands before it or is refused), stops a queued
//! sale's admission, and survives a PUT and a loss of Redis' data; a
//! closed sale stays closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::support::*;

/// `POST /v1/sales/{sale}/{action}` as the admin.
pub async fn steer(app: &TestApp, sale: &str, action: &str) -> (u16, Value) {
    body(
        app.client
            .post(app.url(&format!("/v1/sales/{sale}/{action}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("steer"),
    )
    .await
}

fn version(v: &Value) -> i64 {
    v["version"].as_i64().expect("version")
}

#[tokio::test]
async fn pause_resume_and_their_errors() {
    let app = spawn_app().await;
    let sale = app.sale(5, 2, 60).await;
    let (_, held) = app.reserve(&sale, "ann", 1, None).await;
    let before = app.view(&sale).await;

    let (s, v) = steer(&app, &sale, "pause").await;
    assert_eq!((s, v["paused"].as_bool()), (200, Some(true)), "{v}");
    assert!(
        version(&v) > version(&before),
        "a pause moves the version on"
    );
    let (s, again) = steer(&app, &sale, "pause").await;
    assert_eq!((s, again["paused"].as_bool()), (200, Some(true)), "{again}");
    assert_eq!(
        version(&again),
        version(&v),
        "pausing a paused sale changes nothing"
    );
    assert_eq!(app.view(&sale).await["paused"], true);

    // Paused: no new holds; the holds there are go on.
    let (s, v) = app.reserve(&sale, "bob", 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "sale_paused"), "{v}");
    let ann = rid(&held);
    assert_eq!(app.act(&sale, &ann, "extend", Some("ann")).await.0, 200);
    assert_eq!(app.act(&sale, &ann, "confirm", Some("ann")).await.0, 200);
    assert_eq!(steer(&app, &sale, "resume").await.0, 200);
    let (_, other) = app.reserve(&sale, "cat", 1, None).await;
    assert_eq!(steer(&app, &sale, "pause").await.0, 200);
    assert_eq!(
        app.act(&sale, &rid(&other), "cancel", Some("cat")).await.0,
        200
    );

    // A PUT is configuration: it keeps the pause.
    let (s, v) = app
        .put_sale(
            &sale,
            json!({"stock": 7, "per_user_limit": 2, "hold_ttl_secs": 60}),
        )
        .await;
    assert_eq!(
        (s, v["paused"].as_bool(), v["stock"].as_i64()),
        (200, Some(true), Some(7)),
        "{v}"
    );

    let (s, v) = steer(&app, &sale, "resume").await;
    assert_eq!((s, v["paused"].as_bool()), (200, Some(false)), "{v}");
    let (s, again) = steer(&app, &sale, "resume").await;
    assert_eq!(
        (s, again["paused"].as_bool()),
        (200, Some(false)),
        "{again}"
    );
    assert_eq!(
        version(&again),
        version(&v),
        "resuming a running sale changes nothing"
    );
    assert_eq!(app.reserve(&sale, "bob", 1, None).await.0, 201);

    for action in ["pause", "resume", "close"] {
        let (s, v) = steer(&app, "no-such-sale", action).await;
        assert_eq!((s, error_code(&v)), (404, "sale_not_found"), "{action}");
        let (s, v) = steer(&app, "bad.id", action).await;
        assert_eq!((s, error_code(&v)), (400, "invalid_request"), "{action}");
        let (s, v) = body(
            app.client
                .post(app.url(&format!("/v1/sales/{sale}/{action}")))
                .bearer_auth(token("ann"))
                .send()
                .await
                .expect("steer"),
        )
        .await;
        assert_eq!((s, error_code(&v)), (401, "unauthorized"), "{action}");
    }
    assert_eq!(
        app.view(&sale).await["paused"],
        false,
        "buyers changed nothing"
    );
}

#[tokio::test]
async fn a_closed_sale_ends_now_and_stays_closed() {
    let app = spawn_app().await;
    let sale = app.sale(5, 2, 60).await;
    let (_, held) = app.reserve(&sale, "ann", 1, None).await;
    steer(&app, &sale, "pause").await;

    let (s, closed) = steer(&app, &sale, "close").await;
    assert_eq!(s, 200, "{closed}");
    assert_eq!(
        (
            closed["closed"].as_bool(),
            closed["paused"].as_bool(),
            closed["state"].as_str()
        ),
        (Some(true), Some(false), Some("ended")),
        "{closed}"
    );
    let ends = chrono::DateTime::parse_from_rfc3339(closed["ends_at"].as_str().expect("ends_at"))
        .expect("RFC 3339");
    let off = (Utc::now().timestamp_millis() - ends.timestamp_millis()).abs();
    assert!(off < 5_000, "ends_at is now: {ends} ({off} ms off)");

    let (s, v) = app.reserve(&sale, "bob", 1, None).await;
    assert_eq!((s, error_code(&v)), (410, "sale_ended"), "{v}");
    // Its holds can still be paid for.
    assert_eq!(
        app.act(&sale, &rid(&held), "confirm", Some("ann")).await.0,
        200
    );

    let (s, again) = steer(&app, &sale, "close").await;
    assert_eq!(
        (s, &again["ends_at"]),
        (200, &closed["ends_at"]),
        "closing again changes nothing"
    );
    for action in ["resume", "pause"] {
        let (s, v) = steer(&app, &sale, action).await;
        assert_eq!((s, error_code(&v)), (409, "sale_closed"), "{action}: {v}");
    }
    // Its configuration is final: no PUT moves its end (or anything else).
    let (s, v) = app
        .put_sale(
            &sale,
            json!({"stock": 5, "per_user_limit": 2, "ends_at": at(3_600_000)}),
        )
        .await;
    assert_eq!((s, error_code(&v)), (409, "sale_closed"), "{v}");
    let now = app.view(&sale).await;
    assert_eq!(
        (now["state"].as_str(), &now["ends_at"]),
        (Some("ended"), &closed["ends_at"])
    );

    // A sale that ended by itself keeps its earlier end when closed.
    let ended = unique_sale();
    let end = at(-60_000);
    app.put_sale(
        &ended,
        json!({"stock": 1, "per_user_limit": 1, "ends_at": end}),
    )
    .await;
    let (_, v) = steer(&app, &ended, "close").await;
    let kept =
        chrono::DateTime::parse_from_rfc3339(v["ends_at"].as_str().expect("ends")).expect("time");
    let end = chrono::DateTime::parse_from_rfc3339(&end).expect("time");
    assert_eq!(kept, end, "{v}");
}

/// The next event's sale view.
async fn next<E: std::fmt::Debug>(
    events: &mut (impl futures_util::Stream<Item = Result<eventsource_stream::Event, E>> + Unpin),
) -> Value {
    use futures_util::StreamExt;
    let e = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("open")
        .expect("well-formed");
    serde_json::from_str(&e.data).expect("the sale view")
}

/// The view carries the pause and the close, and so does the event stream.
#[tokio::test]
async fn the_event_stream_shows_a_pause_and_a_close() {
    use eventsource_stream::Eventsource;
    let app = spawn_app().await;
    let sale = app.sale(5, 1, 60).await;
    let r = app.get(&format!("/v1/sales/{sale}/events")).await;
    let mut events = Box::pin(r.bytes_stream().eventsource());
    assert_eq!(next(&mut events).await["paused"], false);
    steer(&app, &sale, "pause").await;
    assert_eq!(next(&mut events).await["paused"], true);
    steer(&app, &sale, "close").await;
    let v = next(&mut events).await;
    assert_eq!(
        (v["closed"].as_bool(), v["state"].as_str()),
        (Some(true), Some("ended")),
        "{v}"
    );
}

/// Reserves keep coming while the admin pauses. Each lands before the
/// pause or is refused, in the one script: every reserve sent after the
/// pause answered is refused, every 201 is counted, and in the sale's own
/// event order no hold follows the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserves_racing_a_pause_land_before_it_or_are_refused() {
    let app = open_app().await;
    let sale = app.sale(100_000, 1, 600).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let senders = (0..8).map(|w| {
        let (app, sale, stop) = (app.clone(), sale.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = start.elapsed();
                let (s, v) = app.reserve(&sale, &format!("w{w}-{i}"), 1, None).await;
                seen.push((sent, start.elapsed(), s, v));
                i += 1;
            }
            seen
        })
    });
    let senders: Vec<_> = senders.collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pause_sent = start.elapsed();
    let (s, v) = steer(&app, &sale, "pause").await;
    let pause_answered = start.elapsed();
    assert_eq!(s, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let all: Vec<_> = join_all(senders)
        .await
        .into_iter()
        .flat_map(|r| r.expect("sender"))
        .collect();

    let mut held = 0;
    let (mut before, mut after) = (0, 0);
    for (sent, answered, s, v) in &all {
        match *s {
            201 => held += 1,
            409 => assert_eq!(error_code(v), "sale_paused", "{v}"),
            other => panic!("reserve answered {other}: {v}"),
        }
        if *answered < pause_sent {
            assert_eq!(*s, 201, "answered before the pause was sent: {v}");
            before += 1;
        }
        if *sent > pause_answered {
            assert_eq!(*s, 409, "sent after the pause answered: {v}");
            after += 1;
        }
    }
    println!(
        "{} reserves: {held} held, {before} before the pause, {after} after it",
        all.len()
    );
    assert!(before > 0 && after > 0, "the burst spans the pause");
    let v = app.view(&sale).await;
    assert_eq!(
        counters(&v),
        (100_000, 0, held, 100_000 - held),
        "every 201 counted, nothing else"
    );

    // The sale's own order of events: no hold after the pause.
    app.drained(Duration::from_secs(20)).await;
    let kinds: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_id, kind FROM stock_movements WHERE sale_id = $1 AND kind IN ('reserved', 'paused')",
    )
    .bind(&sale)
    .fetch_all(&app.pool)
    .await
    .expect("movements");
    let id = |e: &str| -> (u64, u64) {
        let (ms, seq) = e.split_once('-').expect("stream id");
        (ms.parse().expect("ms"), seq.parse().expect("seq"))
    };
    let paused = kinds
        .iter()
        .find(|(_, k)| k == "paused")
        .map(|(e, _)| id(e))
        .expect("the pause is recorded");
    let reserved: Vec<_> = kinds.iter().filter(|(_, k)| k == "reserved").collect();
    assert_eq!(reserved.len() as i64, held);
    assert!(
        reserved.iter().all(|(e, _)| id(e) < paused),
        "a hold after the pause"
    );
}

/// While a queued sale is paused its admission clock stands still (nobody
/// is let in) and joins are refused; resumed, it runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queued_sale_admits_nobody() {
    let app = open_app().await;
    let sale = unique_sale();
    let (s, v) = app
        .put_sale(
            &sale,
            json!({"stock": 50, "per_user_limit": 1, "admission": "queue", "admit_per_sec": 2}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let join = |user: String| {
        let (app, sale) = (app.clone(), sale.clone());
        async move {
            body(
                app.client
                    .post(app.url(&format!("/v1/sales/{sale}/queue")))
                    .bearer_auth(token(&user))
                    .send()
                    .await
                    .expect("join"),
            )
            .await
        }
    };
    for i in 0..20 {
        assert_eq!(join(format!("q{i}")).await.0, 201);
    }
    let (s, v) = steer(&app, &sale, "pause").await;
    assert_eq!(s, 200, "{v}");
    let serving = |v: &Value| v["queue"]["serving"].as_u64().expect("serving");
    let paused_at = serving(&app.view(&sale).await);
    assert!(paused_at < 20, "the queue is still waiting: {paused_at}");
    let (s, v) = join("late".into()).await;
    assert_eq!((s, error_code(&v)), (409, "sale_paused"), "{v}");
    let (s, v) = app.reserve(&sale, "q0", 1, None).await;
    assert_eq!(
        (s, error_code(&v)),
        (409, "sale_paused"),
        "admitted, but paused: {v}"
    );
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert_eq!(
        serving(&app.view(&sale).await),
        paused_at,
        "nobody let in while paused"
    );

    assert_eq!(steer(&app, &sale, "resume").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert!(
        serving(&app.view(&sale).await) > paused_at,
        "let in again once resumed"
    );
    assert_eq!(join("late".into()).await.0, 201);
}

/// A pause and a close are durable: after Redis lost the sales, the
/// rebuild from Postgres brings them back, and a PUT after it keeps them.
#[tokio::test]
async fn pause_and_close_survive_a_redis_loss() {
    let app = spawn_app().await;
    let paused = app.sale(5, 1, 60).await;
    let closed = app.sale(5, 1, 60).await;
    assert_eq!(steer(&app, &paused, "pause").await.0, 200);
    let (_, was) = steer(&app, &closed, "close").await;

    app.wipe_redis().await;
    let v = app.view(&paused).await;
    assert_eq!(v["paused"], true, "{v}");
    let (s, v) = app.reserve(&paused, "ann", 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "sale_paused"), "{v}");
    let v = app.view(&closed).await;
    assert_eq!(
        (v["closed"].as_bool(), &v["ends_at"], v["state"].as_str()),
        (Some(true), &was["ends_at"], Some("ended")),
        "{v}"
    );
    let (s, v) = steer(&app, &closed, "resume").await;
    assert_eq!((s, error_code(&v)), (409, "sale_closed"), "{v}");

    // A PUT of a lost sale rebuilds it first, pause and all.
    app.wipe_redis().await;
    let (s, v) = app
        .put_sale(
            &paused,
            json!({"stock": 6, "per_user_limit": 1, "hold_ttl_secs": 60}),
        )
        .await;
    assert_eq!((s, v["paused"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(steer(&app, &paused, "resume").await.0, 200);
    app.wipe_redis().await;
    assert_eq!(
        app.reserve(&paused, "ann", 1, None).await.0,
        201,
        "resumed for good"
    );
}
