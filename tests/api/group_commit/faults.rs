//! The group commit under faults: the process killed between a batch's
//! commit and its answers, Postgres cut mid-batch, a batch whose commit
//! outlasts its confirms' deadline. Every confirm ends with one order row,
//! and its retry answers 200.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use sqlx::PgPool;

use super::*;
use crate::support::process::Serve;
use crate::support::proxy::{FaultProxy, ProxyMode};

/// Sends every confirm at once; what each got (None: no answer, the
/// connection broke).
async fn confirm_each(app: &Arc<TestApp>, holds: &[Hold]) -> Vec<(Hold, Option<u16>)> {
    join_all(holds.iter().cloned().map(|h| {
        let app = app.clone();
        tokio::spawn(async move {
            let answer = confirm_req(&app, &h.sale, &h.rid, &h.user).send().await;
            (h, answer.ok().map(|r| r.status().as_u16()))
        })
    }))
    .await
    .into_iter()
    .map(|r| r.expect("confirm task"))
    .collect()
}

/// Confirms each hold until it answers 200 (503 meanwhile is fine).
async fn retry_until_200(app: &TestApp, holds: &[Hold]) {
    for h in holds {
        for attempt in 0.. {
            let (s, v) = body(
                confirm_req(app, &h.sale, &h.rid, &h.user)
                    .send()
                    .await
                    .expect("confirm"),
            )
            .await;
            if s == 200 {
                assert_eq!(v["status"], "confirmed", "{v}");
                break;
            }
            assert_eq!(s, 503, "retried confirm of {}: {v}", h.rid);
            assert!(attempt < 100, "confirm of {} never durable: {v}", h.rid);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn order_rows(pool: &PgPool, sale: &str) -> BTreeSet<String> {
    orders(pool, sale).await.into_keys().collect()
}

/// `flashgate serve` as a process, its Postgres slowed (300 ms each way)
/// so a batch's answers trail its commit; SIGKILL as soon as the first
/// order row is visible in Postgres: confirms whose rows are committed get
/// no answer. A new instance on the same Redis and database: every retried
/// confirm answers 200, with one order row each and exact totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_a_batch_commit_and_its_answers_every_confirm_lands_once() {
    let proxy = FaultProxy::postgres().await;
    let spawn = Spawn::via_pg_proxy(&proxy).await;
    let mut serve = Serve::start(&spawn, &[("FLASHGATE_CONFIRM_TIMEOUT_MS", "15000")]).await;
    let direct = PgPool::connect(&spawn.database_url()).await.expect("pool");
    let outside = Arc::new(
        TestApp::external(serve.app.address.clone(), &spawn.settings, direct.clone()).await,
    );
    let sale = outside.sale(500, 1, 300).await;
    let all = holds(&outside, &sale, "killed", 120).await;

    proxy.set(ProxyMode::Delay(Duration::from_millis(300)));
    let sent = {
        let (app, all) = (outside.clone(), all.clone());
        tokio::spawn(async move { confirm_each(&app, &all).await })
    };
    for attempt in 0.. {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE sale_id = $1")
            .bind(&sale)
            .fetch_one(&direct)
            .await
            .expect("count");
        if n > 0 {
            break;
        }
        assert!(
            attempt < 3000,
            "no order was ever committed:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    serve.signal("KILL");
    serve.wait_exit(Duration::from_secs(10)).await;
    let answers = sent.await.expect("confirms");
    let committed = order_rows(&direct, &sale).await;
    let unanswered_but_committed = answers
        .iter()
        .filter(|(h, s)| *s != Some(200) && committed.contains(&h.rid))
        .count();
    for (h, s) in &answers {
        if *s == Some(200) {
            assert!(
                committed.contains(&h.rid),
                "a 200 without its order row: {}",
                h.rid
            );
        }
    }
    eprintln!(
        "killed: {} answered 200, {} rows committed, {unanswered_but_committed} committed without an answer",
        answers.iter().filter(|(_, s)| *s == Some(200)).count(),
        committed.len()
    );
    assert!(
        unanswered_but_committed > 0,
        "the kill landed between a batch's commit and its answers"
    );

    proxy.restore();
    let again = Spawn::shared(&spawn.database_url(), &spawn.settings.key_prefix)
        .start()
        .await;
    retry_until_200(&again, &all).await;
    again.drained(Duration::from_secs(30)).await;
    assert_recorded(&direct, std::slice::from_ref(&sale), &all).await;
}

/// One writer, its batch waiting on the sale's row (the test holds it)
/// while more confirms queue; then every Postgres connection is reset.
/// Every confirm answers 200 (its row is committed) or 503; Postgres
/// back, every confirm retried answers 200, one order row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_mid_batch_every_confirm_lands_once() {
    let proxy = FaultProxy::postgres().await;
    let spawn = Spawn::via_pg_proxy(&proxy)
        .await
        .with(|s| s.db_timeout = Duration::from_secs(2));
    let app = Arc::new(one_writer(spawn, Duration::from_secs(3)).await);
    let sale = app.sale(300, 1, 300).await;
    let first = holds(&app, &sale, "first", 1).await;
    let queued = holds(&app, &sale, "cut", 100).await;
    let lock = hold_sale_row(&app.pool, &sale).await;
    let blocked = {
        let (app, first) = (app.clone(), first.clone());
        tokio::spawn(async move { confirm_each(&app, &first).await })
    };
    until_a_writer_waits(&app.pool).await;
    let rest = {
        let (app, queued) = (app.clone(), queued.clone());
        tokio::spawn(async move { confirm_each(&app, &queued).await })
    };
    until_confirmed_in_redis(&app, &queued).await;
    proxy.set(ProxyMode::Reset);
    lock.commit().await.expect("release the row");
    let (b, r) = (blocked.await.expect("first"), rest.await.expect("rest"));
    // The batch's statement reached Postgres before the cut and ran on
    // once the row was free (autocommit): its confirm is answered once the
    // statement's bound has passed, 200 if its row is there (read through
    // the proxy: while cut, 503).
    // The confirms queued behind it met the cut: no connection can be made
    // through the proxy until it is restored, so none can be answered 200.
    for (h, s) in &r {
        assert_eq!(*s, Some(503), "confirm {} queued behind the cut", h.rid);
    }
    for (h, s) in b.iter().chain(&r) {
        assert!(matches!(s, Some(200 | 503)), "confirm {}: {s:?}", h.rid);
        if *s == Some(200) {
            assert!(
                order_rows(&app.pool, &sale).await.contains(&h.rid),
                "a 200 without its row"
            );
        }
    }
    proxy.restore();
    let all: Vec<Hold> = first.into_iter().chain(queued).collect();
    retry_until_200(&app, &all).await;
    assert_recorded(&app.pool, std::slice::from_ref(&sale), &all).await;
}

/// A batch whose COMMIT takes longer than its confirms' timeout (a
/// deferred trigger of the test sleeps 4 s in it; a slow WAL flush or a
/// synchronous replica would do the same): both confirms of the batch
/// answer 503 while the commit runs. Postgres does not bound a COMMIT
/// (README, Durability): the rows land once it ends, and the retries
/// answer 200, with exactly one row each and exact totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_timing_out_while_its_batch_commits_retries_to_one_row() {
    let app = Arc::new(one_writer(Spawn::new().await, Duration::from_millis(1500)).await);
    for sql in [
        "CREATE TABLE slow_commit (on_ boolean NOT NULL)",
        "INSERT INTO slow_commit VALUES (true)",
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF (SELECT on_ FROM slow_commit) THEN PERFORM pg_sleep(4); END IF; RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON orders DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
    ] {
        sqlx::query(sql).execute(&app.pool).await.expect("slow commit");
    }
    let sale = app.sale(10, 1, 300).await;
    let both = holds(&app, &sale, "slow", 2).await;
    for (h, s) in confirm_each(&app, &both).await {
        assert_eq!(
            s,
            Some(503),
            "confirm {} whose commit outlasts its timeout",
            h.rid
        );
    }
    sqlx::query("UPDATE slow_commit SET on_ = false")
        .execute(&app.pool)
        .await
        .expect("fast again");
    retry_until_200(&app, &both).await;
    assert_recorded(&app.pool, std::slice::from_ref(&sale), &both).await;
}
