//! The sale as a live event for frontends: the view's server time and
//! version, ETag and 304, the event stream (parsed by a real SSE client),
//! coalescing, the subscriber cap, and CORS; `wire.rs`: the stream as
//! bytes on a raw connection (framing, keep-alive, shutdown).

mod wire;

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::support::*;

type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// Subscribes to a sale's events (the first one is the view at connect).
pub(crate) async fn subscribe(app: &TestApp, sale: &str) -> Events {
    let r = app.get(&format!("/v1/sales/{sale}/events")).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    Box::pin(
        r.bytes_stream()
            .eventsource()
            .map(|e| e.expect("a well-formed event")),
    )
}

/// The next event within `within`, parsed: (id, the sale view).
async fn next(events: &mut Events, within: Duration) -> Option<(i64, Value)> {
    let e = tokio::time::timeout(within, events.next()).await.ok()??;
    assert_eq!(e.event, "sale");
    let view: Value = serde_json::from_str(&e.data).expect("data is the sale view");
    let id: i64 = e.id.parse().expect("id is the version");
    assert_eq!(
        view["version"].as_i64(),
        Some(id),
        "id = the view's version"
    );
    Some((id, view))
}

/// Events until one satisfies `ok`.
pub(crate) async fn until(events: &mut Events, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (_, v) = next(events, left)
            .await
            .unwrap_or_else(|| panic!("no event with {what} within 10 s"));
        if ok(&v) {
            return v;
        }
    }
}

#[tokio::test]
async fn the_view_carries_server_time_and_a_version_that_etags_it() {
    let app = spawn_app().await;
    let sale = app.sale(5, 2, 60).await;
    let r = app.get(&format!("/v1/sales/{sale}")).await;
    assert_eq!(r.status().as_u16(), 200);
    let header = |r: &reqwest::Response, h: &str| {
        r.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let etag = header(&r, "etag").expect("ETag");
    assert_eq!(
        header(&r, "cache-control").as_deref(),
        Some("public, max-age=1")
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(etag, format!("\"{}\"", v["version"]));
    assert_eq!(v["paused"], false);
    assert!(v.get("queue").is_none(), "an open sale has no queue: {v}");
    let server_time = chrono::DateTime::parse_from_rfc3339(v["server_time"].as_str().expect("str"))
        .expect("RFC 3339");
    let skew = (chrono::Utc::now().timestamp_millis() - server_time.timestamp_millis()).abs();
    assert!(skew < 5_000, "server time {server_time} off by {skew} ms");

    // 304 while nothing changed, for the tag as given and a weak one.
    for tag in [etag.clone(), format!("W/{etag}"), format!("\"0\", {etag}")] {
        let r = app
            .client
            .get(app.url(&format!("/v1/sales/{sale}")))
            .header("If-None-Match", &tag)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 304, "{tag}");
        assert_eq!(header(&r, "etag"), Some(etag.clone()));
        assert!(r.bytes().await.expect("body").is_empty());
    }
    // A refused reserve changes nothing: same version.
    assert_eq!(app.reserve(&sale, "ann", 3, None).await.0, 400);
    assert_eq!(app.view(&sale).await["version"], v["version"]);
    // A hold moves it on: the old tag gets the new view.
    assert_eq!(app.reserve(&sale, "ann", 1, None).await.0, 201);
    let r = app
        .client
        .get(app.url(&format!("/v1/sales/{sale}")))
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    let after: Value = r.json().await.expect("json");
    assert!(after["version"].as_i64() > v["version"].as_i64(), "{after}");
    assert_eq!(after["held"], 1);
}

/// A subscriber sees the sale at connect, a hold appear, and the hold
/// expire (the sweeper gives it back; nobody reads the sale meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_a_hold_appear_and_expire() {
    let app = spawn_app().await;
    let sale = app.sale(5, 2, 1).await;
    let mut events = subscribe(&app, &sale).await;
    let (id, first) = next(&mut events, Duration::from_secs(5))
        .await
        .expect("an event at connect");
    assert_eq!(
        (first["held"].as_i64(), first["sale_id"].as_str()),
        (Some(0), Some(sale.as_str()))
    );
    assert_eq!(app.reserve(&sale, "ann", 1, None).await.0, 201);
    let held = until(&mut events, "held 1", |v| v["held"] == 1).await;
    assert!(held["version"].as_i64() > Some(id));
    let gone = until(&mut events, "the hold expired", |v| v["held"] == 0).await;
    assert_eq!(gone["available"], 5);
}

/// 100 changes in about 100 ms reach a subscriber as at most the
/// configured number of events a second, the last one current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_changes_are_coalesced_and_the_last_event_is_current() {
    let app = std::sync::Arc::new(
        Spawn::new()
            .await
            .with(|s| {
                s.events_max_hz = 4;
                s.rate.per_user_per_sec = 0;
                s.max_active_holds = 0;
            })
            .start()
            .await,
    );
    let sale = app.sale(1000, 1, 300).await;
    let mut events = subscribe(&app, &sale).await;
    next(&mut events, Duration::from_secs(5))
        .await
        .expect("at connect");
    let t0 = tokio::time::Instant::now();
    futures_util::future::join_all((0..100).map(|i| {
        let (app, sale) = (app.clone(), sale.clone());
        async move { assert_eq!(app.reserve(&sale, &format!("b{i}"), 1, None).await.0, 201) }
    }))
    .await;
    let burst = t0.elapsed();
    // Everything the burst caused, and a second more.
    let mut got = Vec::new();
    while let Some(e) = next(&mut events, Duration::from_millis(1500)).await {
        got.push((t0.elapsed(), e.1));
    }
    println!(
        "100 holds in {burst:?} gave {} events: {:?}",
        got.len(),
        got.iter()
            .map(|(t, v)| (t.as_millis(), v["held"].clone()))
            .collect::<Vec<_>>()
    );
    let last = &got.last().expect("an event").1;
    assert_eq!(last["held"], 100, "the last event is current: {last}");
    // At most 4 a second: over the time they span, rounded up, plus one.
    let span = got.last().map_or(Duration::ZERO, |(t, _)| *t);
    let allowed = (span.as_secs_f64() * 4.0).ceil() as usize + 1;
    assert!(
        got.len() <= allowed,
        "{} events in {span:?} at 4 a second",
        got.len()
    );
    assert!(got.len() < 100);
}

#[tokio::test]
async fn an_unknown_sale_has_no_stream_and_the_subscriber_cap_answers_503() {
    let app = Spawn::new()
        .await
        .with(|s| s.events_max_subscribers = 2)
        .start()
        .await;
    let (s, v) = body(
        app.client
            .get(app.url("/v1/sales/no-such-sale/events"))
            .send()
            .await
            .expect("events"),
    )
    .await;
    assert_eq!((s, error_code(&v)), (404, "sale_not_found"));
    let sale = app.sale(5, 2, 60).await;
    let _a = subscribe(&app, &sale).await;
    let _b = subscribe(&app, &sale).await;
    let r = app.get(&format!("/v1/sales/{sale}/events")).await;
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.expect("json");
    assert_eq!(error_code(&v), "unavailable");
    // One leaves: its place is free again at once, with no change to the
    // sale and long before a keep-alive (15 s) would be written to it. A
    // stream that took its socket (`admission::Handoff`) reads it and sees
    // the client go; one left to actix-http would only find out by writing.
    drop(_a);
    let t0 = tokio::time::Instant::now();
    let deadline = t0 + Duration::from_secs(5);
    loop {
        let r = app.get(&format!("/v1/sales/{sale}/events")).await;
        if r.status().as_u16() == 200 {
            println!(
                "a place came back {:?} after its subscriber left",
                t0.elapsed()
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A reconnecting client that saw the current view is not sent it again.
#[tokio::test]
async fn last_event_id_skips_the_view_already_seen() {
    let app = spawn_app().await;
    let sale = app.sale(5, 2, 60).await;
    let version = app.view(&sale).await["version"].as_i64().expect("version");
    let r = app
        .client
        .get(app.url(&format!("/v1/sales/{sale}/events")))
        .header("Last-Event-ID", version.to_string())
        .send()
        .await
        .expect("events");
    let mut events: Events = Box::pin(r.bytes_stream().eventsource().map(|e| e.expect("event")));
    assert!(
        next(&mut events, Duration::from_millis(800))
            .await
            .is_none(),
        "the view it saw was sent again"
    );
    assert_eq!(app.reserve(&sale, "ann", 1, None).await.0, 201);
    let (_, v) = next(&mut events, Duration::from_secs(5))
        .await
        .expect("the change");
    assert_eq!(v["held"], 1);
}

/// 5,000 open streams take no `FLASHGATE_MAX_INFLIGHT` permit: buyers
/// still reserve, none waits for a permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_open_streams_do_not_stop_buyers() {
    let app = Spawn::new()
        .await
        .with(|s| {
            s.max_inflight = 16;
            s.rate.per_user_per_sec = 0;
            s.max_active_holds = 0;
        })
        .start()
        .await;
    let sale = app.sale(1000, 1, 300).await;
    let addr = app.socket_addr().to_string();
    let request = format!("GET /v1/sales/{sale}/events HTTP/1.1\r\nHost: flashgate\r\n\r\n");
    let mut streams = Vec::new();
    for chunk in 0..50 {
        let opened = futures_util::future::join_all((0..100).map(|_| {
            let (addr, request) = (addr.clone(), request.clone());
            async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut c = tokio::net::TcpStream::connect(&addr)
                    .await
                    .expect("connect");
                c.write_all(request.as_bytes()).await.expect("write");
                let mut buf = [0u8; 512];
                let n = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf))
                    .await
                    .expect("answered")
                    .expect("read");
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "stream {chunk}");
                c
            }
        }))
        .await;
        streams.extend(opened);
    }
    assert_eq!(streams.len(), 5000);
    let t0 = std::time::Instant::now();
    for i in 0..20 {
        let (s, v) = app.reserve(&sale, &format!("buyer-{i}"), 1, None).await;
        assert_eq!(s, 201, "{v}");
    }
    println!(
        "20 reserves beside 5,000 open streams in {:?}",
        t0.elapsed()
    );
    assert_eq!(app.admission.expired(), 0, "a reserve waited for a permit");
    assert_eq!(app.view(&sale).await["held"], 20);
}

/// The sale's view, asked for by a page on `origin`.
async fn from_origin(app: &TestApp, sale: &str, origin: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/v1/sales/{sale}")))
        .header("Origin", origin)
        .send()
        .await
        .expect("get")
}

#[tokio::test]
async fn cors_answers_the_listed_origins_only() {
    let app = Spawn::new()
        .await
        .with(|s| s.cors_origins = vec!["https://shop.example".into()])
        .start()
        .await;
    let sale = app.sale(5, 2, 60).await;
    let preflight = |origin: &str| {
        app.client
            .request(
                reqwest::Method::OPTIONS,
                app.url(&format!("/v1/sales/{sale}/reservations")),
            )
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type, idempotency-key",
            )
            .send()
    };
    let r = preflight("https://shop.example").await.expect("preflight");
    assert_eq!(r.status().as_u16(), 204);
    let h = |r: &reqwest::Response, n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    assert_eq!(h(&r, "access-control-allow-origin"), "https://shop.example");
    for allowed in [
        "authorization",
        "content-type",
        "idempotency-key",
        "if-none-match",
    ] {
        assert!(
            h(&r, "access-control-allow-headers").contains(allowed),
            "{allowed}"
        );
    }
    let r = from_origin(&app, &sale, "https://shop.example").await;
    assert_eq!(h(&r, "access-control-allow-origin"), "https://shop.example");
    for exposed in ["retry-after", "idempotent-replayed", "x-request-id", "etag"] {
        assert!(
            h(&r, "access-control-expose-headers").contains(exposed),
            "{exposed}"
        );
    }
    // Another origin: served, but without CORS headers.
    let r = from_origin(&app, &sale, "https://evil.example").await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // Unset: no CORS headers at all.
    let plain = spawn_app().await;
    let other = plain.sale(1, 1, 60).await;
    let r = from_origin(&plain, &other, "https://shop.example").await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
}
