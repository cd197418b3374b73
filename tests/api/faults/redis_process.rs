//! Redis itself in trouble: killed mid-burst and restarted empty, frozen
//! (SIGSTOP), at maxmemory, restarted under the connections. Each test runs
//! its own redis-server child process on a free port (killed on drop); the
//! shared Redis is never stopped or flushed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::redis_server::RedisServer;
use crate::support::*;

/// An app on a dedicated Redis, with a short Redis timeout and no abuse
/// limits (the bursts come from a handful of test buyers on one address).
async fn app_on(redis: &RedisServer, redis_timeout: Duration) -> TestApp {
    Spawn::new()
        .await
        .redis(&[redis.url()], false)
        .with(|s| {
            s.redis_timeout = redis_timeout;
            s.rate.per_user_per_sec = 0;
            s.max_active_holds = 0;
        })
        .start()
        .await
}

/// A 503 must be the contract's `unavailable` with Retry-After semantics
/// in the body shape; anything else must be one of `ok`.
fn check_answer(a: &Answer, ok: &[u16]) {
    if a.status == 503 {
        assert_eq!(error_code(&a.body), "unavailable", "{}: {}", a.what, a.body);
    } else {
        assert!(
            ok.contains(&a.status),
            "{}: unexpected {} {}",
            a.what,
            a.status,
            a.body
        );
        if a.status >= 400 {
            error_code(&a.body);
        }
    }
}

/// Waits (bounded) until GET /v1/sales/{sale} answers 200 again.
async fn wait_for_view(app: &TestApp, sale: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = app
            .client
            .get(app.url(&format!("/v1/sales/{sale}")))
            .send()
            .await;
        if let Ok(r) = r {
            let (s, v) = body(r).await;
            if s == 200 {
                return v;
            }
            assert_eq!((s, error_code(&v)), (503, "unavailable"), "{v}");
        }
        assert!(
            Instant::now() < deadline,
            "the sale never came back within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Redis killed in the middle of a reserve+confirm burst: every request
/// is answered (201/200/409 or 503 `unavailable`) in bounded time; Redis
/// restarted empty on the same port: the sale is rebuilt from Postgres
/// without restarting flashgate, with every acknowledged confirm sold and
/// no unit counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_burst_then_restarted_empty() {
    let mut redis = RedisServer::start(&[]);
    let app = Arc::new(app_on(&redis, Duration::from_millis(300)).await);
    let (stock, buyers) = (150i64, 240usize);
    let sale = app.sale(stock, 1, 300).await;

    let answered = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    // Per buyer: the reserve's answer, and the confirm's if it got a unit.
    type Log = Vec<(String, Answer, Option<Answer>)>;
    let log: Arc<Mutex<Log>> = Arc::default();
    let loops = (0..12).map(|_| {
        let (app, sale, answered, next, log) = (
            app.clone(),
            sale.clone(),
            answered.clone(),
            next.clone(),
            log.clone(),
        );
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= buyers {
                    return;
                }
                let user = format!("b{i}");
                let r = timed("reserve", reserve_req(&app, &sale, &user)).await;
                answered.fetch_add(1, Ordering::SeqCst);
                let c = if r.status == 201 {
                    let rid = r.body["reservation_id"].as_str().expect("rid").to_string();
                    let c = timed("confirm", confirm_req(&app, &sale, &rid, &user)).await;
                    answered.fetch_add(1, Ordering::SeqCst);
                    Some(c)
                } else {
                    None
                };
                log.lock().expect("lock").push((user, r, c));
            }
        })
    });
    let loops: Vec<_> = loops.collect();
    // Kill Redis once part of the burst is through.
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::SeqCst) < 120 {
        assert!(Instant::now() < deadline, "the burst made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.kill();
    killed.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.expect("buyer loop");
    }
    let log = std::mem::take(&mut *log.lock().expect("lock"));
    let (mut confirmed, mut unavailable, mut slowest) = (BTreeMap::new(), 0, Duration::ZERO);
    for (user, r, c) in &log {
        check_answer(r, &[201, 409]);
        slowest = slowest.max(r.took);
        unavailable += usize::from(r.status == 503);
        if let Some(c) = c {
            check_answer(c, &[200, 404, 410]);
            slowest = slowest.max(c.took);
            unavailable += usize::from(c.status == 503);
            if c.status == 200 {
                confirmed.insert(
                    r.body["reservation_id"].as_str().expect("rid").to_string(),
                    user.clone(),
                );
            }
        }
    }
    assert_eq!(log.len(), buyers);
    assert!(!confirmed.is_empty(), "some confirms before the kill");
    assert!(unavailable > 0, "the kill was noticed");
    eprintln!(
        "kill: {} buyers, {} confirms acknowledged, {unavailable} answers 503, slowest {slowest:?}",
        log.len(),
        confirmed.len()
    );
    assert!(
        slowest < Duration::from_secs(3),
        "a request took {slowest:?}"
    );

    // Down: 503 fast, readiness says so.
    let a = timed("reserve while down", reserve_req(&app, &sale, "late")).await;
    assert_eq!((a.status, error_code(&a.body)), (503, "unavailable"));
    assert!(a.took < Duration::from_secs(3), "{:?}", a.took);
    readyz_until(&app, Duration::from_secs(10), |s, v| {
        (s, v["redis"].as_str()) == (503, Some("down"))
    })
    .await;

    // Back, empty: rebuilt from Postgres without restarting flashgate.
    redis.restart();
    let v = wait_for_view(&app, &sale, Duration::from_secs(20)).await;
    let rows = orders(&app.pool, &sale).await;
    for rid in confirmed.keys() {
        assert!(
            rows.contains_key(rid),
            "acknowledged confirm {rid} not in Postgres"
        );
    }
    let granted: BTreeSet<String> = log
        .iter()
        .filter(|(_, r, _)| r.status == 201)
        .map(|(_, r, _)| r.body["reservation_id"].as_str().expect("rid").to_string())
        .collect();
    assert!(
        rows.keys().all(|r| granted.contains(r)),
        "an order nobody was granted"
    );
    let sold_pg: i64 = rows.values().map(|(_, q)| q).sum();
    let (st, sold, held, available) = counters(&v);
    assert_eq!(
        (st, sold, held),
        (stock, sold_pg, 0),
        "rebuilt from Postgres: {v}"
    );
    assert_eq!(st, sold + held + available, "every unit counted once: {v}");

    // It serves again: caps came back (a buyer who bought cannot buy
    // again), new buyers get units, and the counts stay exact.
    let (buyer, _) = rows.values().next().expect("an order");
    let (s, v) = app.reserve(&sale, buyer, 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "user_limit_exceeded"), "{v}");
    let (s, v) = app.reserve(&sale, "after-1", 1, None).await;
    assert_eq!(s, 201, "{v}");
    let rid = v["reservation_id"].as_str().expect("rid").to_string();
    assert_eq!(
        app.act(&sale, &rid, "confirm", Some("after-1")).await.0,
        200
    );
    assert_eq!(app.reserve(&sale, "after-2", 1, None).await.0, 201);
    let (st, sold, held, available) = counters(&app.view(&sale).await);
    assert_eq!((sold, held), (sold_pg + 1, 1));
    assert_eq!(st, sold + held + available);
}

/// Redis frozen (SIGSTOP, connections open but silent): requests answer
/// 503 `unavailable` within about twice the Redis timeout, never hang;
/// after SIGCONT the sale serves again with exact counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_gives_fast_503s_not_hangs() {
    let redis = RedisServer::start(&[]);
    let timeout = Duration::from_millis(300);
    let app = Arc::new(app_on(&redis, timeout).await);
    let sale = app.sale(100, 1, 300).await;
    let (s, v) = app.reserve(&sale, "before", 1, None).await;
    assert_eq!(s, 201, "{v}");
    let held_rid = v["reservation_id"].as_str().expect("rid").to_string();

    redis.signal("STOP");
    // Reserve, confirm, read, admin update, readiness: all bounded.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (app, sale) = (app.clone(), sale.clone());
        tasks.push(tokio::spawn(async move {
            timed("reserve", reserve_req(&app, &sale, &format!("frozen-{i}"))).await
        }));
    }
    {
        let (app, sale, rid) = (app.clone(), sale.clone(), held_rid.clone());
        tasks.push(tokio::spawn(async move {
            timed("confirm", confirm_req(&app, &sale, &rid, "before")).await
        }));
    }
    {
        let (app, sale) = (app.clone(), sale.clone());
        tasks.push(tokio::spawn(async move {
            timed(
                "view",
                app.client.get(app.url(&format!("/v1/sales/{sale}"))),
            )
            .await
        }));
    }
    {
        let (app, sale) = (app.clone(), sale.clone());
        tasks.push(tokio::spawn(async move {
            timed(
                "configure",
                app.client
                    .put(app.url(&format!("/v1/sales/{sale}")))
                    .bearer_auth(ADMIN)
                    .json(&json!({"stock": 100, "per_user_limit": 1, "hold_ttl_secs": 300})),
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    let readyz = readyz_until(&app, Duration::from_secs(10), |s, v| {
        (s, v["redis"].as_str()) == (503, Some("down"))
    })
    .await;
    redis.signal("CONT");

    // The gate's bound is 2 × the Redis timeout; allow scheduling slack on
    // a loaded machine, but far below anything that looks like a hang.
    let bound = timeout * 2 + Duration::from_millis(1000);
    let slowest = answers.iter().map(|a| a.took).max().unwrap_or_default();
    eprintln!("frozen: slowest 503 after {slowest:?}, readyz {readyz}");
    for a in &answers {
        assert_eq!(
            (a.status, error_code(&a.body)),
            (503, "unavailable"),
            "{}: {}",
            a.what,
            a.body
        );
        assert!(
            a.took < bound,
            "{} took {:?} (bound {bound:?})",
            a.what,
            a.took
        );
    }

    // Thawed: the service recovers by itself; the data was never lost.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = app.reserve(&sale, "after", 1, None).await;
        if s == 201 {
            break;
        }
        assert_eq!((s, error_code(&v)), (503, "unavailable"), "{v}");
        assert!(Instant::now() < deadline, "never recovered after SIGCONT");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v) = app.act(&sale, &held_rid, "confirm", Some("before")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("confirmed")), "{v}");
    let (st, sold, held, available) = counters(&app.view(&sale).await);
    assert_eq!(sold, 1);
    // Requests Redis had queued while frozen may run once it thaws (a
    // timed-out reserve is not a promise that nothing happened): at most
    // the eight frozen reserves, plus "after".
    assert!((1..=9).contains(&held), "held {held}");
    assert_eq!(st, sold + held + available);
}

/// Redis at maxmemory with noeviction: reserves are refused whole with 503
/// `unavailable` (the scripts are not allowed to run out of memory), never
/// half-applied: afterwards held is exactly the number of 201s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_at_maxmemory_refuses_whole_reserves() {
    let redis = RedisServer::start(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    // No worker: it would trim the streams and free memory as it goes.
    let app = Arc::new(
        Spawn::new()
            .await
            .no_worker()
            .redis(&[redis.url()], false)
            .with(|s| {
                s.redis_timeout = Duration::from_millis(1000);
                s.rate.per_user_per_sec = 0;
                s.max_active_holds = 0;
            })
            .start()
            .await,
    );
    let stock = 1_000_000i64;
    let sale = app.sale(stock, 1, 3600).await;
    let created = Arc::new(AtomicUsize::new(0));
    let full = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let loops: Vec<_> = (0..8)
        .map(|_| {
            let (app, sale, created, full, next) = (
                app.clone(),
                sale.clone(),
                created.clone(),
                full.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                while full.load(Ordering::SeqCst) < 50 {
                    assert!(Instant::now() < deadline, "Redis never filled up");
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let a = timed("reserve", reserve_req(&app, &sale, &format!("m{i}"))).await;
                    match a.status {
                        201 => {
                            created.fetch_add(1, Ordering::SeqCst);
                        }
                        503 => {
                            assert_eq!(error_code(&a.body), "unavailable", "{}", a.body);
                            full.fetch_add(1, Ordering::SeqCst);
                        }
                        s => panic!("reserve: unexpected {s} {}", a.body),
                    }
                }
            })
        })
        .collect();
    for l in loops {
        l.await.expect("loop");
    }
    let created = created.load(Ordering::SeqCst) as i64;
    eprintln!(
        "maxmemory: {created} holds granted, {} reserves refused with 503",
        full.load(Ordering::SeqCst)
    );
    assert!(created > 100, "only {created} holds before Redis was full");
    // Reads of a full Redis: the view runs a (writing) sweep script, so it
    // may be refused too; lift the limit on this test's own server to look.
    redis.cmd(&["CONFIG", "SET", "maxmemory", "0"]).await;
    let (st, sold, held, available) = counters(&app.view(&sale).await);
    assert_eq!((st, sold), (stock, 0));
    assert_eq!(
        held, created,
        "held == the number of 201s: nothing half-applied"
    );
    assert_eq!(st, sold + held + available);
}

/// A Redis that restarted broke every connection to it; each HTTP worker
/// thread's own connection was noticed broken only by the next buyer on
/// that thread, who got a 503 (one per worker, seconds after Redis was
/// back). The connections are probed in the background now: once Redis is
/// back, no buyer finds one broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_comes_back_no_buyer_finds_a_broken_connection() {
    let mut redis = RedisServer::start(&[]);
    let app = app_on(&redis, Duration::from_millis(500)).await;
    let sale = app.sale(100, 1, 60).await;
    // A fresh client per request: a new connection each time, so both HTTP
    // worker threads (and their Redis connections) serve some.
    let view_fresh = |app: &TestApp| {
        let url = app.url(&format!("/v1/sales/{sale}"));
        async move {
            let client = reqwest::Client::new();
            timed("view", client.get(url)).await
        }
    };
    for _ in 0..10 {
        assert_eq!(view_fresh(&app).await.status, 200);
    }
    redis.restart();
    readyz_until(&app, Duration::from_secs(15), |s, v| {
        s == 200 && v["redis"] == "ok"
    })
    .await;
    // Two probe rounds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..20 {
        let a = view_fresh(&app).await;
        assert_eq!(
            a.status, 200,
            "request {i} after Redis came back: {}",
            a.body
        );
    }
}
