//! The write-behind worker in trouble: killed mid-batch, Postgres away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flashgate::config::ConfirmDurability;
use flashgate::startup;
use futures_util::future::join_all;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use super::{assert_postgres_matches, pending_by_consumer, pending_total, stream_len, Told};
use crate::support::proxy::{FaultProxy, ProxyMode};
use crate::support::*;

/// A worker task that ended by itself (it runs until cancelled): its panic
/// goes on as the test's, anything else fails the test too.
fn worker_ended(ended: Result<(), JoinError>) -> ! {
    match ended {
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("the worker task ended: {e}"),
        Ok(()) => panic!("the worker stopped by itself"),
    }
}

/// The worker killed (its task aborted) three times during a 200-confirm
/// run, each time while it held a batch it had read and not acknowledged:
/// Postgres ends exact, no duplicate rows. That each kill landed mid-batch
/// is checked, not assumed: the killed consumer still has entries pending
/// in the group after the kill (a kill that finds the batch acknowledged
/// already does not count, and another worker is started and killed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_batch_three_times() {
    // The workers reach Postgres through a proxy that adds 10 ms each way:
    // a batch then spends most of its time between its read and its
    // acknowledgement (the write's round trips), where the kills must land.
    let proxy = FaultProxy::postgres().await;
    let spawn = Spawn::via_pg_proxy(&proxy)
        .await
        .durability(ConfirmDurability::Redis)
        .no_worker()
        .with(|s| {
            s.worker_batch = 16;
            s.worker_claim_idle = Duration::from_millis(300);
        });
    let settings = spawn.settings.clone();
    let app = Arc::new(spawn.start().await);
    let sale = app.sale(200, 1, 300).await;
    proxy.set(ProxyMode::Delay(Duration::from_millis(10)));
    let buyers = (0..200).map(|i| {
        let (app, sale) = (app.clone(), sale.clone());
        tokio::spawn(async move {
            let user = format!("b{i}");
            let (s, v) = app.reserve(&sale, &user, 1, None).await;
            assert_eq!(s, 201, "{v}");
            let r = rid(&v);
            assert_eq!(app.act(&sale, &r, "confirm", Some(&user)).await.0, 200);
            (user, r)
        })
    });
    let load = tokio::spawn(join_all(buyers));
    let events = app.events_key(&sale);
    let mut conn = app.redis().await;
    let (mut kills, mut tries) = (0, 0);
    while kills < 3 {
        tries += 1;
        assert!(
            tries <= 20,
            "{tries} workers killed, only {kills} mid-batch"
        );
        let known = pending_by_consumer(&mut conn, &events).await;
        let w = startup::worker(&settings, &app.service.gate, &app.service.store)
            .await
            .expect("worker");
        let task = tokio::spawn(w.run(CancellationToken::new()));
        // The new consumer has read a batch: kill it now.
        let deadline = Instant::now() + Duration::from_secs(20);
        let consumer = loop {
            let pending = pending_by_consumer(&mut conn, &events).await;
            if let Some((c, _)) = pending
                .iter()
                .find(|(c, n)| **n > 0 && !known.contains_key(*c))
            {
                break c.clone();
            }
            assert!(
                !load.is_finished() || stream_len(&mut conn, &events).await > 0,
                "the stream was drained before three kills landed mid-batch ({kills} did)"
            );
            if task.is_finished() {
                worker_ended(task.await);
            }
            assert!(Instant::now() < deadline, "the worker never read a batch");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        task.abort();
        match task.await {
            Err(e) if e.is_cancelled() => {}
            ended => worker_ended(ended),
        }
        let left = pending_by_consumer(&mut conn, &events).await;
        let unacked = left.get(&consumer).copied().unwrap_or(0);
        if unacked > 0 {
            kills += 1;
            eprintln!(
                "kill {kills}: the worker died with {unacked} entries read and not acknowledged"
            );
        }
    }
    let mut told = Told::default();
    for r in load.await.expect("load") {
        let (user, r) = r.expect("buyer");
        told.add(&user, r);
    }
    proxy.restore();
    let w = startup::worker(&settings, &app.service.gate, &app.service.store)
        .await
        .expect("worker");
    let stop = CancellationToken::new();
    let last = tokio::spawn(w.run(stop.clone()));
    app.drained(Duration::from_secs(30)).await;
    stop.cancel();
    last.await.expect("worker stops");
    assert_eq!(told.confirmed.len(), 200);
    assert_postgres_matches(&app, &sale, &told, 1, 200).await;
    let (movements, distinct): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT (kind, reservation_id)) FROM stock_movements WHERE sale_id = $1 AND kind IN ('reserved','confirmed')").bind(&sale).fetch_one(&app.pool).await.expect("q");
    assert_eq!((movements, distinct), (400, 400));
}

/// Postgres unreachable: reserves keep working, confirms answer 503 (not
/// durable yet) and succeed on retry once it is back; the worker catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_keeps_buyers_going_and_catches_up() {
    let proxy = FaultProxy::postgres().await;
    let app = Spawn::via_pg_proxy(&proxy)
        .await
        .with(|s| {
            s.confirm_timeout = Duration::from_millis(500);
            s.db_timeout = Duration::from_millis(500);
        })
        .start()
        .await;
    let sale = app.sale(10, 2, 300).await;
    let (_, before) = app.reserve(&sale, "ann", 1, None).await;
    proxy.cut();
    // Buyers are not affected on the Redis side.
    let (s, held) = app.reserve(&sale, "bob", 1, None).await;
    assert_eq!(s, 201, "{held}");
    let (s, v) = app.act(&sale, &rid(&held), "confirm", Some("bob")).await;
    assert_eq!(
        (s, error_code(&v)),
        (503, "unavailable"),
        "not acknowledged before it is durable"
    );
    readyz_until(&app, Duration::from_secs(10), |s, v| {
        (s, v["status"].as_str(), v["postgres"].as_str()) == (200, Some("degraded"), Some("down"))
    })
    .await;
    proxy.restore();
    // The retry is answered 200 and the row is there exactly once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = app.act(&sale, &rid(&held), "confirm", Some("bob")).await;
        if s == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "confirm never succeeded after Postgres came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        app.act(&sale, &rid(&before), "confirm", Some("ann"))
            .await
            .0,
        200
    );
    app.drained(Duration::from_secs(20)).await;
    let mut told = Told::default();
    told.add("bob", rid(&held));
    told.add("ann", rid(&before));
    assert_postgres_matches(&app, &sale, &told, 2, 10).await;
}

/// README: the worker "never acknowledges unwritten work", shown on its
/// own. A worker whose Postgres is black-holed (nothing it sends arrives)
/// reads the sale's entries, cannot commit them, and leaves every one in
/// the stream, delivered and unacknowledged, for as long as Postgres is
/// away; once it is back the same entries are written, once each, and
/// only then acknowledged and deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_never_acknowledges_what_postgres_did_not_commit() {
    let proxy = FaultProxy::postgres().await;
    let spawn = Spawn::via_pg_proxy(&proxy)
        .await
        .durability(ConfirmDurability::Redis)
        .no_worker()
        .with(|s| s.db_timeout = Duration::from_millis(500));
    let settings = spawn.settings.clone();
    let app = spawn.start().await;
    let sale = app.sale(10, 2, 300).await;
    let mut told = Told::default();
    for user in ["ann", "bob", "cid"] {
        let (s, v) = app.reserve(&sale, user, 1, None).await;
        assert_eq!(s, 201, "{v}");
        // `redis` durability: acknowledged without Postgres.
        assert_eq!(app.act(&sale, &rid(&v), "confirm", Some(user)).await.0, 200);
        told.add(user, rid(&v));
    }
    let events = app.events_key(&sale);
    let mut conn = app.redis().await;
    let entries = stream_len(&mut conn, &events).await;
    assert!(
        entries >= 6,
        "3 reserves and 3 confirms in the stream: {entries}"
    );

    proxy.set(ProxyMode::Drop);
    let w = startup::worker(&settings, &app.service.gate, &app.service.store)
        .await
        .expect("worker");
    let stop = CancellationToken::new();
    let task = tokio::spawn(w.run(stop.clone()));
    // It reads every entry (each is then pending, delivered to it), and,
    // while its writes go nowhere (several of its tries, each bounded by
    // the 500 ms database timeout, and its backoff), it acknowledges and
    // deletes none of them.
    let read_by = Instant::now() + Duration::from_secs(10);
    let mut watch_until = None;
    while watch_until.is_none_or(|t| Instant::now() < t) {
        if task.is_finished() {
            worker_ended(task.await);
        }
        assert_eq!(
            stream_len(&mut conn, &events).await,
            entries,
            "an entry left the stream (acknowledged) while Postgres was away"
        );
        let pending = pending_total(&mut conn, &events).await;
        if watch_until.is_some() {
            assert_eq!(pending, entries, "an entry was acknowledged");
        } else if pending == entries {
            watch_until = Some(Instant::now() + Duration::from_secs(3));
        } else {
            assert!(
                Instant::now() < read_by,
                "the worker never read the entries"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        orders(&app.pool, &sale).await.is_empty(),
        "an order reached Postgres through a black hole"
    );

    // Back: the same entries are written, then acknowledged and deleted.
    proxy.restore();
    app.drained(Duration::from_secs(20)).await;
    assert_eq!(pending_total(&mut conn, &events).await, 0);
    assert_postgres_matches(&app, &sale, &told, 2, 10).await;
    stop.cancel();
    task.await.expect("worker stops");
}
