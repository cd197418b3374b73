//! Signals to the real binary (`flashgate serve` as a child process):
//! SIGTERM drains, SIGINT and SIGQUIT stop at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashgate::gate::Inspection;
use flashgate::ids::SaleId;
use serde_json::{json, Value};

use crate::support::process::Serve;
use crate::support::redis_server::RedisServer;
use crate::support::*;

/// What became of one request sent while the server stopped.
#[derive(Debug)]
enum Outcome {
    Answered(u16, Value),
    /// No connection: refused or reset before the request was written.
    NotSent,
    /// Written, then the connection closed without an answer.
    Unanswered(String),
}

impl Outcome {
    async fn of(what: &str, req: reqwest::RequestBuilder) -> Self {
        match req.send().await {
            Ok(r) => {
                let s = r.status().as_u16();
                let text = r
                    .text()
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {s} with a cut body: {e}"));
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("{what}: {s} non-JSON {text:?}"));
                Outcome::Answered(s, v)
            }
            Err(e) => {
                assert!(!e.is_timeout(), "{what}: timed out: {e}");
                if e.is_connect() {
                    Outcome::NotSent
                } else {
                    Outcome::Unanswered(format!("{e:?}"))
                }
            }
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Outcome::Answered(s, _) => Some(*s),
            _ => None,
        }
    }
}

/// One request of the burst: reserve or confirm, by whom, of which
/// reservation (a reserve's, once answered), and what became of it.
struct Sent {
    what: &'static str,
    user: String,
    rid: String,
    outcome: Outcome,
}

/// A request written but never answered is allowed only if it decided
/// nothing (README: a request still waiting, unread, for a permit is not
/// in flight, "nothing was decided, so the client can retry it
/// elsewhere"); a request in flight is answered. What Redis holds for its
/// buyer (each buyer reserves once, one unit, and confirms only that)
/// says which it was.
fn check_unanswered(sent: &Sent, redis: &Inspection) -> Result<(), String> {
    let of = |m: &BTreeMap<String, i64>| m.get(&sent.user).copied().unwrap_or(0);
    let (held, bought) = (of(&redis.held_by), of(&redis.bought));
    let decided = match sent.what {
        "reserve" => held + bought > 0,
        _ => bought > 0,
    };
    if decided {
        return Err(format!(
            "{} by {} was dropped without an answer after it took effect (held {held}, bought {bought})",
            sent.what, sent.user
        ));
    }
    Ok(())
}

/// SIGTERM to the real binary while buyers reserve and confirm: every
/// request is answered with a documented status, or was never sent
/// (refused at connect), or was dropped unanswered having decided nothing;
/// never another 5xx, never a request in flight dropped; the process exits
/// 0 within its shutdown timeout; and every confirm answered 200 is in
/// Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_drains_and_loses_no_acknowledged_confirm() {
    let shutdown = Duration::from_millis(5000);
    let spawn = Spawn::new().await;
    let mut proc = Serve::start(
        &spawn,
        &[
            ("FLASHGATE_SHUTDOWN_TIMEOUT_MS", "5000"),
            ("FLASHGATE_HTTP_WORKERS", "2"),
            ("FLASHGATE_RATE_PER_USER", "0"),
        ],
    )
    .await;
    let base = proc.app.address.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let sale = proc.app.sale(100_000, 1, 300).await;

    let stop = Arc::new(AtomicBool::new(false));
    let confirms_ok = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let loops: Vec<_> = (0..8)
        .map(|_| {
            let (client, base, sale, stop, confirms_ok, next, log) = (
                client.clone(),
                base.clone(),
                sale.clone(),
                stop.clone(),
                confirms_ok.clone(),
                next.clone(),
                log.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let user = format!("t{}", next.fetch_add(1, Ordering::SeqCst));
                    let tok = token(&user);
                    let reserve = client
                        .post(format!("{base}/v1/sales/{sale}/reservations"))
                        .bearer_auth(&tok)
                        .json(&json!({"quantity": 1}));
                    let outcome = Outcome::of("reserve", reserve).await;
                    let (status, rid) = match &outcome {
                        Outcome::Answered(s, v) => (
                            Some(*s),
                            v["reservation_id"].as_str().unwrap_or_default().to_string(),
                        ),
                        _ => (None, String::new()),
                    };
                    let sent = Sent {
                        what: "reserve",
                        user: user.clone(),
                        rid: rid.clone(),
                        outcome,
                    };
                    log.lock().expect("lock").push(sent);
                    match status {
                        None => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        Some(201) => {}
                        Some(_) => continue,
                    }
                    let confirm = client
                        .post(format!("{base}/v1/sales/{sale}/reservations/{rid}/confirm"))
                        .bearer_auth(&tok);
                    let outcome = Outcome::of("confirm", confirm).await;
                    if outcome.status() == Some(200) {
                        confirms_ok.fetch_add(1, Ordering::SeqCst);
                    }
                    let sent = Sent {
                        what: "confirm",
                        user,
                        rid,
                        outcome,
                    };
                    log.lock().expect("lock").push(sent);
                }
            })
        })
        .collect();

    // Mid-burst: SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(60);
    while confirms_ok.load(Ordering::SeqCst) < 100 {
        assert!(
            Instant::now() < deadline,
            "the burst made no progress:\n{}",
            proc.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let term = Instant::now();
    proc.signal("TERM");
    let status = proc.wait_exit(shutdown + Duration::from_secs(15)).await;
    let took = term.elapsed();
    // Let the buyers see the closed port, then stop them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.expect("buyer loop");
    }
    assert!(status.success(), "exit status {status:?}:\n{}", proc.log());
    assert!(
        took < shutdown + Duration::from_secs(2),
        "exited {took:?} after SIGTERM (shutdown timeout {shutdown:?}):\n{}",
        proc.log()
    );

    let log = std::mem::take(&mut *log.lock().expect("lock"));
    let id = SaleId::parse(&sale).expect("sale id");
    let redis = proc.app.service.gate.inspect(&id).await.expect("inspect");
    let mut acked = BTreeSet::new();
    let mut not_answered = BTreeMap::<String, usize>::new();
    let mut dropped_in_flight = Vec::new();
    for sent in &log {
        let what = sent.what;
        match &sent.outcome {
            Outcome::Answered(s, v) => {
                let ok = if what == "reserve" { 201 } else { 200 };
                if *s == 503 {
                    assert_eq!(error_code(v), "unavailable", "{what}: {v}");
                } else {
                    assert_eq!(*s, ok, "{what}: {v}");
                }
                if what == "confirm" && *s == 200 {
                    acked.insert(sent.rid.clone());
                }
            }
            Outcome::NotSent => {
                *not_answered.entry(format!("{what} not sent")).or_default() += 1;
            }
            Outcome::Unanswered(e) => {
                *not_answered
                    .entry(format!("{what} sent, unanswered"))
                    .or_default() += 1;
                if let Err(why) = check_unanswered(sent, &redis) {
                    dropped_in_flight.push(format!("{why}: {e}"));
                }
            }
        }
    }
    eprintln!(
        "SIGTERM: exit after {took:?}; {} requests, {} confirms acknowledged; not answered: {not_answered:?}",
        log.len(),
        acked.len()
    );
    assert!(
        dropped_in_flight.is_empty(),
        "requests in flight dropped:\n{}",
        dropped_in_flight.join("\n")
    );
    assert!(
        !not_answered.is_empty(),
        "the burst outlived the server: some requests were not answered"
    );
    let rows: BTreeSet<String> = orders(&proc.app.pool, &sale).await.into_keys().collect();
    let missing: Vec<_> = acked.difference(&rows).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged confirms not in Postgres: {missing:?}",
        missing.len()
    );
    assert!(acked.len() >= 100);
}

/// README, SIGTERM: "SIGINT and SIGQUIT stop at once, dropping the
/// requests in flight." A reserve is held in flight by a frozen Redis
/// (SIGSTOP, with a Redis timeout of 5 s: it would answer 503 after 10 s),
/// and the shutdown timeout is 10 s, which SIGTERM would wait out: after
/// `sig` the process is gone within 3 s, and the reserve got no answer.
async fn a_signal_stops_at_once(sig: &str) {
    let redis = RedisServer::start(&[]);
    let spawn = Spawn::new().await.redis(&[redis.url()], false);
    let mut proc = Serve::start(
        &spawn,
        &[
            ("FLASHGATE_SHUTDOWN_TIMEOUT_MS", "10000"),
            ("FLASHGATE_REDIS_TIMEOUT_MS", "5000"),
        ],
    )
    .await;
    let sale = proc.app.sale(10, 1, 60).await;
    redis.signal("STOP");
    let reserve = reserve_req(&proc.app, &sale, "in-flight");
    let sent = Instant::now();
    let in_flight = tokio::spawn(async move { (reserve.send().await, sent.elapsed()) });
    // The reserve is on its way to Redis (a local round trip takes
    // milliseconds); it stays there until Redis times out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!in_flight.is_finished(), "the reserve was answered already");

    let signalled = Instant::now();
    proc.signal(sig);
    let status = proc.wait_exit(Duration::from_secs(30)).await;
    let took = signalled.elapsed();
    let (answer, waited) = in_flight.await.expect("request task");
    redis.signal("CONT");
    eprintln!("SIG{sig}: exited {took:?} after the signal ({status}); the reserve in flight: {answer:?} after {waited:?}");
    assert!(
        took < Duration::from_secs(3),
        "SIG{sig}: exited {took:?} after the signal, as if it had waited for the request in flight (shutdown timeout 10 s):\n{}",
        proc.log()
    );
    match answer {
        Err(e) => assert!(
            !e.is_connect() && !e.is_timeout(),
            "SIG{sig}: the reserve was sent and then dropped, not {e:?}"
        ),
        Ok(r) => panic!(
            "SIG{sig}: the reserve in flight was answered {} after {waited:?}",
            r.status()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_at_once_dropping_requests_in_flight() {
    a_signal_stops_at_once("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_stops_at_once_dropping_requests_in_flight() {
    a_signal_stops_at_once("QUIT").await;
}
