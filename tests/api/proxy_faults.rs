//! Dependencies behind a fault proxy (`FaultProxy` in helpers.rs): Redis,
//! then Postgres, slowed down, black-holed and reset while requests are in
//! flight. For every mode:
//! - every request resolves, with a success or the documented dependency
//!   error (503 `unavailable`, JSON body, Retry-After), within a bound
//!   derived from the configured timeouts (a bound, not a speed claim);
//! - a client retrying with the same Idempotency-Key (or the same confirm)
//!   once the dependency is back never gets anything twice: one hold per
//!   key, held = the distinct reservations the retries returned, stock =
//!   sold + held + available, one order row per confirmed reservation.
//!
//! Redis runs as a dedicated `redis-server` behind the proxy; Postgres is
//! the shared server reached through the proxy (a fresh database). Neither
//! shared server is stopped or flushed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashgate::ids::SaleId;
use futures_util::future::join_all;
use serde_json::json;
use sqlx::PgPool;

use crate::faults::RedisServer;
use crate::helpers::*;

const REDIS_TIMEOUT: Duration = Duration::from_millis(300);
const CONFIRM_TIMEOUT: Duration = Duration::from_millis(500);
/// Buyers sent while the fault begins, and as many once it is on.
const PER_GROUP: usize = 12;

/// One Redis call is bounded by the gate's deadline, 2 ×
/// `redis_timeout`; a reserve makes at most two (the script, then the
/// active-hold cap), so does a confirm (the script, then forgetting the
/// hold). Plus a second of slack for a loaded machine.
fn redis_bound() -> Duration {
    2 * (2 * REDIS_TIMEOUT) + Duration::from_secs(1)
}

/// A confirm: its Redis calls, then the Postgres write bounded by
/// `confirm_timeout`.
fn confirm_bound() -> Duration {
    redis_bound() + CONFIRM_TIMEOUT
}

/// How long to wait for fault-time work still in the pipes (a delay line
/// flushes after the proxy is restored) before the final count.
fn settle(mode: ProxyMode) -> Duration {
    match mode {
        ProxyMode::Delay(d) => d + Duration::from_secs(1),
        _ => Duration::from_secs(1),
    }
}

/// A success in `ok`, or 503 `unavailable` with Retry-After (or 429
/// `rate_limited` with Retry-After, when `ok` allows it), within `bound`.
fn check(what: &str, a: &Answer, ok: &[u16], bound: Duration) {
    assert!(
        a.took < bound,
        "{what}: answered {} after {:?}, bound {bound:?}",
        a.status,
        a.took
    );
    match a.status {
        503 => {
            assert_eq!(error_code(&a.body), "unavailable", "{what}: {}", a.body);
            assert!(a.retry_after.is_some(), "{what}: 503 without Retry-After");
        }
        429 if ok.contains(&429) => {
            assert_eq!(error_code(&a.body), "rate_limited", "{what}: {}", a.body);
            assert!(a.retry_after.is_some(), "{what}: 429 without Retry-After");
        }
        s => assert!(ok.contains(&s), "{what}: unexpected {s} {}", a.body),
    }
}

fn key(user: &str) -> String {
    format!("cart:{user}")
}

fn reserve_req(app: &TestApp, sale: &str, user: &str) -> reqwest::RequestBuilder {
    app.client
        .post(app.url(&format!("/v1/sales/{sale}/reservations")))
        .bearer_auth(token(user))
        .header("Idempotency-Key", key(user))
        .json(&json!({"quantity": 1}))
}

/// Sends `make()` until it is answered with something other than 503 or
/// 429 (waiting as Retry-After says for a 429), each try within `bound`;
/// gives up after 30 s.
async fn until_answered(
    what: &str,
    ok: &[u16],
    bound: Duration,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut allowed = ok.to_vec();
    allowed.push(429);
    loop {
        let a = timed(what, make()).await;
        check(what, &a, &allowed, bound);
        let wait = match a.status {
            503 => Duration::from_millis(100),
            429 => Duration::from_secs(a.retry_after.unwrap_or(1)),
            _ => return a,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: still {} after 30 s of retries: {}",
            a.status,
            a.body
        );
        tokio::time::sleep(wait).await;
    }
}

/// Runs `one(i, group)` for `PER_GROUP` requests sent while the fault
/// begins (staggered, so some are in flight when it does) and `PER_GROUP`
/// sent once it is on; returns the answers in that order.
async fn around_the_fault<F, Fut>(proxy: &FaultProxy, mode: ProxyMode, one: F) -> Vec<Answer>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let stagger = |i: usize| Duration::from_millis(10 * (i % PER_GROUP) as u64);
    let spawn = |i: usize| {
        let fut = one(i);
        let wait = stagger(i);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            fut.await
        })
    };
    let before: Vec<_> = (0..PER_GROUP).map(spawn).collect();
    tokio::time::sleep(Duration::from_millis(40)).await;
    proxy.set(mode);
    let during: Vec<_> = (PER_GROUP..2 * PER_GROUP).map(spawn).collect();
    join_all(before.into_iter().chain(during))
        .await
        .into_iter()
        .map(|r| r.expect("request task"))
        .collect()
}

// ---------------------------------------------------------------- Redis

/// flashgate on a dedicated redis-server reached through a fault proxy.
struct RedisRig {
    app: Arc<TestApp>,
    proxy: FaultProxy,
    _redis: RedisServer,
}

async fn redis_rig() -> RedisRig {
    let redis = RedisServer::start(&[]);
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", redis.port)).await;
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let app = Spawn::new()
        .await
        .with(|s| {
            s.redis_urls = vec![url];
            s.redis_cluster = false;
            s.redis_timeout = REDIS_TIMEOUT;
        })
        .start()
        .await;
    RedisRig {
        app: Arc::new(app),
        proxy,
        _redis: redis,
    }
}

/// A fault-time request and the retry that finally got an answer.
struct Round {
    first: Answer,
    retry: Answer,
}

/// Reserves with Idempotency-Keys while Redis goes into `mode`; every
/// reserve answers 201 or 503 in bounded time. Then, Redis back, every
/// buyer retries its key until answered — odd-numbered buyers at once
/// (racing whatever the fault still holds in the pipes), even-numbered
/// ones once that has landed: a reserve that was granted replays (200,
/// same reservation), one that got a 503 is granted (201) or replays (it
/// took effect after all); asked again later, each key still names the
/// same reservation; each buyer holds exactly one unit, held = the
/// distinct reservations, stock = sold + held + available.
async fn reserves_through_a_redis_fault(mode: ProxyMode) -> Vec<Round> {
    let rig = redis_rig().await;
    let app = rig.app.clone();
    let sale = app.sale(1000, 10, 300).await;
    let user = |i: usize| format!("buyer-{i}");
    let first = around_the_fault(&rig.proxy, mode, |i| {
        let (app, sale) = (app.clone(), sale.clone());
        async move { timed("reserve", reserve_req(&app, &sale, &user(i))).await }
    })
    .await;
    for (i, a) in first.iter().enumerate() {
        check(
            &format!("reserve {} under {mode:?}", user(i)),
            a,
            &[201],
            redis_bound(),
        );
    }

    rig.proxy.restore();
    let mut retries = BTreeMap::new();
    for late in [false, true] {
        if late {
            tokio::time::sleep(settle(mode)).await;
        }
        for (i, a) in first.iter().enumerate() {
            if (i % 2 == 0) != late {
                continue;
            }
            let u = user(i);
            let what = format!("retried reserve {u} after {mode:?}");
            let r = until_answered(&what, &[200, 201], redis_bound(), || {
                reserve_req(&app, &sale, &u)
            })
            .await;
            if a.status == 201 {
                assert_eq!(
                    (r.status, rid(&r.body)),
                    (200, rid(&a.body)),
                    "{what}: a granted reserve replays as itself"
                );
            }
            assert_eq!(r.replayed, r.status == 200, "{what}: Idempotent-Replayed");
            assert_eq!(r.body["status"], "held", "{what}: {}", r.body);
            retries.insert(i, r);
        }
    }

    // Whatever the fault still held in the pipes has landed by now: every
    // key still names the reservation its retry named.
    tokio::time::sleep(settle(mode)).await;
    let mut rids = BTreeMap::new();
    for (i, r) in &retries {
        let (u, expected) = (user(*i), rid(&r.body));
        let what = format!("reserve {u} once more");
        let again = until_answered(&what, &[200], redis_bound(), || {
            reserve_req(&app, &sale, &u)
        })
        .await;
        assert_eq!(rid(&again.body), expected, "{what}: {}", again.body);
        rids.insert(u, expected);
    }
    one_unit_per_key(&app, &sale, &rids).await;

    let rounds: Vec<Round> = first
        .into_iter()
        .zip(retries.into_values())
        .map(|(first, retry)| Round { first, retry })
        .collect();
    let granted = rounds.iter().filter(|r| r.first.status == 201).count();
    let despite_503 = rounds
        .iter()
        .filter(|r| r.first.status == 503 && r.retry.status == 200)
        .count();
    eprintln!(
        "Redis {mode:?}: {granted} of {} reserves granted during the fault, {despite_503} of the 503s had taken effect (replayed on retry), slowest {:?}",
        rounds.len(),
        rounds.iter().map(|r| r.first.took).max().unwrap_or_default()
    );
    rounds
}

/// `rids`: buyer → the reservation its key named on retry (one unit
/// each). Each buyer holds exactly that unit, held = the distinct
/// reservations, nothing sold, stock = sold + held + available.
async fn one_unit_per_key(app: &TestApp, sale: &str, rids: &BTreeMap<String, String>) {
    let distinct: BTreeSet<&String> = rids.values().collect();
    assert_eq!(distinct.len(), rids.len(), "one reservation per key");
    let v = app.view(sale).await;
    let (stock, sold, held, available) = counters(&v);
    assert_eq!(
        (sold, held),
        (0, distinct.len() as i64),
        "held = the distinct reservations the retries returned: {v}"
    );
    assert_eq!(stock, sold + held + available, "{v}");
    let sale_id = SaleId::parse(sale).expect("sale id");
    let seen = app.service.gate.inspect(&sale_id).await.expect("inspect");
    for u in rids.keys() {
        assert_eq!(
            (seen.live_holds.get(u), seen.held_by.get(u)),
            (Some(&1), Some(&1)),
            "{u} holds exactly the one unit of its one key: {seen:?}"
        );
    }
    assert_eq!(seen.live_holds.len(), rids.len(), "{seen:?}");
}

/// A slow Redis (50 ms more each way, well inside the timeout): reserves
/// take longer but succeed; retries replay them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_reserves_succeed_slowly_and_retries_replay() {
    if cluster_mode() {
        return; // a dedicated standalone Redis: nothing cluster-specific
    }
    let delay = Duration::from_millis(50);
    let rounds = reserves_through_a_redis_fault(ProxyMode::Delay(delay)).await;
    assert!(
        rounds.iter().any(|r| r.first.status == 201),
        "a slow Redis still serves"
    );
    for r in &rounds[PER_GROUP..] {
        if r.first.status == 201 {
            assert!(
                r.first.took >= 2 * delay,
                "went through the delayed proxy: {:?}",
                r.first.took
            );
        }
    }
}

/// Redis slower than the timeout (1 s each way): reserves sent during the
/// fault answer 503 at the deadline, yet Redis runs their scripts a second
/// later: a retry once they have landed gets that very reservation back
/// (200, replayed), one racing them gets a new one that the late script
/// then replays. One unit per key either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_slow_redis_503s_in_bounded_time_and_retries_take_one_unit() {
    if cluster_mode() {
        return;
    }
    let rounds = reserves_through_a_redis_fault(ProxyMode::Delay(Duration::from_secs(1))).await;
    for (i, r) in rounds.iter().enumerate().skip(PER_GROUP) {
        assert_eq!(
            r.first.status, 503,
            "sent once Redis was too slow: {}",
            r.first.body
        );
        if i % 2 == 0 {
            assert_eq!(
                (r.retry.status, r.retry.replayed),
                (200, true),
                "the 503 had taken effect: {}",
                r.retry.body
            );
        }
    }
}

/// Redis black-holed (connections accepted, nothing answered): 503s at the
/// deadline; nothing sent into the hole reached Redis, so each retry is
/// granted, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_redis_503s_in_bounded_time_and_retries_take_one_unit() {
    if cluster_mode() {
        return;
    }
    each_refused_then_granted(ProxyMode::Drop, "sent into the black hole").await;
}

/// Redis connections reset (RST), new ones too: quick 503s; flashgate
/// reconnects once Redis is reachable; each retry is granted, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_redis_connections_503_and_retries_take_one_unit() {
    if cluster_mode() {
        return;
    }
    each_refused_then_granted(ProxyMode::Reset, "sent while Redis resets").await;
}

/// Every reserve sent during a Redis fault that loses what it was sent
/// answers 503, and its retry is a new hold (201): nothing reached Redis.
async fn each_refused_then_granted(mode: ProxyMode, during: &str) {
    let rounds = reserves_through_a_redis_fault(mode).await;
    for r in &rounds[PER_GROUP..] {
        assert_eq!(r.first.status, 503, "{during}: {}", r.first.body);
        assert_eq!(
            r.retry.status, 201,
            "nothing had reached Redis: {}",
            r.retry.body
        );
    }
}

/// flashgate's Redis connection dies silently: every connection open now
/// turns into a black hole for good, new ones work (a firewall or NAT that
/// forgot its flows, a host gone without a reset). The calls on the dead
/// connection time out; flashgate opens a fresh one and serves again
/// within a bounded time, though the proxy is never restored; every key
/// retried takes one unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_redis_connection_is_replaced() {
    if cluster_mode() {
        return;
    }
    let rig = redis_rig().await;
    let app = rig.app.clone();
    let sale = app.sale(1000, 10, 300).await;
    let warm = timed("reserve", reserve_req(&app, &sale, "warm")).await;
    assert_eq!(warm.status, 201, "{}", warm.body);
    rig.proxy.set(ProxyMode::Stale);
    let start = Instant::now();
    let mut tries = Vec::new();
    loop {
        let u = format!("buyer-{}", tries.len());
        let a = timed("reserve", reserve_req(&app, &sale, &u)).await;
        check(&format!("reserve {u}, stale"), &a, &[201], redis_bound());
        let done = a.status == 201;
        tries.push((u, a));
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still 503 after {:?}: the dead connection was never replaced",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "stale Redis connection: served again after {:?} ({} answers 503 before)",
        start.elapsed(),
        tries.len() - 1
    );
    let mut rids = BTreeMap::from([("warm".to_string(), rid(&warm.body))]);
    for (u, a) in &tries {
        let what = format!("retried reserve {u}");
        let r = until_answered(&what, &[200, 201], redis_bound(), || {
            reserve_req(&app, &sale, u)
        })
        .await;
        if a.status == 201 {
            assert_eq!((r.status, rid(&r.body)), (200, rid(&a.body)), "{what}");
        }
        rids.insert(u.clone(), rid(&r.body));
    }
    one_unit_per_key(&app, &sale, &rids).await;
}

// ------------------------------------------------------------- Postgres

/// `host:port` of the tests' Postgres.
fn pg_host_port(base: &str) -> &str {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// flashgate whose Postgres is reached through a fault proxy (its own
/// fresh database), default `postgres` durability; `direct` reads that
/// database around the proxy.
struct PgRig {
    app: Arc<TestApp>,
    proxy: FaultProxy,
    direct: PgPool,
}

async fn pg_rig() -> PgRig {
    let base = pg_base();
    let upstream = pg_host_port(&base).to_string();
    let proxy = FaultProxy::start(&upstream).await;
    let db = fresh_database().await;
    let via_proxy = db.replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
    assert_ne!(via_proxy, db, "the database URL goes through the proxy");
    let app = Spawn::new()
        .await
        .with(|s| {
            s.database_url = flashgate::config::Secret::new(via_proxy);
            s.confirm_timeout = CONFIRM_TIMEOUT;
            s.db_timeout = CONFIRM_TIMEOUT;
            s.redis_timeout = REDIS_TIMEOUT;
        })
        .start()
        .await;
    let direct = PgPool::connect(&db).await.expect("direct pool");
    PgRig {
        app: Arc::new(app),
        proxy,
        direct,
    }
}

/// Confirms while Postgres goes into `mode`, and new buyers reserving
/// meanwhile: every confirm answers 200 or 503 in bounded time, every
/// reserve 201 (buyers do not need Postgres). Postgres back, every
/// confirm is retried until 200; each confirmed reservation has exactly
/// one order row, each buyer's total and the sale's sold count match.
/// Returns the fault-time confirm answers.
async fn confirms_through_a_postgres_fault(mode: ProxyMode) -> Vec<Answer> {
    let rig = pg_rig().await;
    let app = rig.app.clone();
    assert_eq!(
        app.service.durability,
        flashgate::config::ConfirmDurability::Postgres
    );
    let sale = app.sale(1000, 10, 300).await;
    let n = 2 * PER_GROUP;
    let user = |i: usize| format!("payer-{i}");
    let mut rids = Vec::with_capacity(n);
    for i in 0..n {
        let (s, v) = app.reserve(&sale, &user(i), 1, None).await;
        assert_eq!(s, 201, "{v}");
        rids.push(rid(&v));
    }
    let rids = Arc::new(rids);

    let late = {
        let (app, sale) = (app.clone(), sale.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            let mut out = Vec::new();
            for i in 0..PER_GROUP {
                out.push(
                    timed(
                        "late reserve",
                        reserve_req(&app, &sale, &format!("late-{i}")),
                    )
                    .await,
                );
            }
            out
        })
    };
    let first = around_the_fault(&rig.proxy, mode, |i| {
        let (app, sale, rids) = (app.clone(), sale.clone(), rids.clone());
        async move { timed("confirm", confirm_req(&app, &sale, &rids[i], &user(i))).await }
    })
    .await;
    for (i, a) in first.iter().enumerate() {
        check(
            &format!("confirm {} under Postgres {mode:?}", user(i)),
            a,
            &[200],
            confirm_bound(),
        );
    }
    for a in late.await.expect("late reserves") {
        check(
            &format!("reserve under Postgres {mode:?}"),
            &a,
            &[201],
            redis_bound(),
        );
        assert_eq!(a.status, 201, "buyers do not wait for Postgres: {}", a.body);
    }

    // Back. A confirm that answered 503 may have been written anyway (a
    // commit that landed late), or by the write-behind worker meanwhile:
    // its retry must still answer 200, and its row exist once.
    rig.proxy.restore();
    tokio::time::sleep(settle(mode)).await;
    for (i, r) in rids.iter().enumerate() {
        let what = format!("retried confirm {} after Postgres {mode:?}", user(i));
        let a = until_answered(&what, &[200], confirm_bound(), || {
            confirm_req(&app, &sale, r, &user(i))
        })
        .await;
        assert_eq!(a.body["status"], "confirmed", "{what}: {}", a.body);
    }

    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reservation_id::text, count(*) FROM orders WHERE sale_id = $1 GROUP BY 1",
    )
    .bind(&sale)
    .fetch_all(&rig.direct)
    .await
    .expect("orders");
    let expected: BTreeMap<String, i64> = rids.iter().map(|r| (r.clone(), 1)).collect();
    assert_eq!(
        rows.into_iter().collect::<BTreeMap<_, _>>(),
        expected,
        "one order row per confirmed reservation, none other"
    );
    app.drained(Duration::from_secs(30)).await;
    let totals: BTreeMap<String, i32> = sqlx::query_as::<_, (String, i32)>(
        "SELECT user_id, quantity FROM user_purchases WHERE sale_id = $1",
    )
    .bind(&sale)
    .fetch_all(&rig.direct)
    .await
    .expect("user_purchases")
    .into_iter()
    .collect();
    let expected: BTreeMap<String, i32> = (0..n).map(|i| (user(i), 1)).collect();
    assert_eq!(totals, expected, "each buyer's confirmed total, once");
    let (sold_count,): (i64,) = sqlx::query_as("SELECT sold_count FROM sales WHERE sale_id = $1")
        .bind(&sale)
        .fetch_one(&rig.direct)
        .await
        .expect("sold_count");
    assert_eq!(sold_count, n as i64);
    let v = app.view(&sale).await;
    let (stock, sold, held, available) = counters(&v);
    assert_eq!((sold, held), (n as i64, PER_GROUP as i64), "{v}");
    assert_eq!(stock, sold + held + available, "{v}");
    eprintln!(
        "Postgres {mode:?}: {} of {} confirms answered 200 during the fault, slowest {:?}",
        first.iter().filter(|a| a.status == 200).count(),
        first.len(),
        first.iter().map(|a| a.took).max().unwrap_or_default()
    );
    first
}

/// A slow Postgres (20 ms more each way): confirms still fit in the
/// confirm timeout, or answer 503 and succeed on retry; one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_postgres_confirms_resolve_and_record_once() {
    let first =
        confirms_through_a_postgres_fault(ProxyMode::Delay(Duration::from_millis(20))).await;
    assert!(
        first.iter().any(|a| a.status == 200),
        "a slow Postgres still confirms"
    );
}

/// Postgres slower than the confirm timeout (1 s each way): confirms sent
/// during the fault answer 503 at the timeout (the write may still land
/// later); retried once Postgres is back: 200, one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_slow_postgres_confirms_503_then_200_on_retry_once() {
    let first = confirms_through_a_postgres_fault(ProxyMode::Delay(Duration::from_secs(1))).await;
    for a in &first[PER_GROUP..] {
        assert_eq!(a.status, 503, "not durable in time: {}", a.body);
    }
}

/// Postgres black-holed: confirms 503 at the confirm timeout; retried
/// once Postgres is back: 200, one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_postgres_confirms_503_then_200_on_retry_once() {
    let first = confirms_through_a_postgres_fault(ProxyMode::Drop).await;
    for a in &first[PER_GROUP..] {
        assert_eq!(a.status, 503, "not durable: {}", a.body);
    }
}

/// Postgres connections reset: confirms 503 quickly; retried once
/// Postgres is back: 200, one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_postgres_confirms_503_then_200_on_retry_once() {
    let first = confirms_through_a_postgres_fault(ProxyMode::Reset).await;
    for a in &first[PER_GROUP..] {
        assert_eq!(a.status, 503, "not durable: {}", a.body);
    }
}

// ------------------------------------------------------------- readiness

/// Issue 12.5: `/readyz` took 5 s while Postgres was unreachable (it
/// pinged on the request, bounded by the database timeout), so a probe
/// with Kubernetes' 1 s timeout took the instance out of rotation. It now
/// answers from state probed in the background: at once, whatever the
/// dependencies do, here both black-holed (with the default timeouts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_at_once_while_redis_and_postgres_are_black_holed() {
    let redis = RedisServer::start(&[]);
    let redis_proxy = FaultProxy::start(&format!("127.0.0.1:{}", redis.port)).await;
    let base = pg_base();
    let upstream = pg_host_port(&base).to_string();
    let pg_proxy = FaultProxy::start(&upstream).await;
    let db = fresh_database().await;
    let via_proxy = db.replacen(&upstream, &format!("127.0.0.1:{}", pg_proxy.port), 1);
    let app = Spawn::new()
        .await
        .with(|s| {
            s.redis_urls = vec![format!("redis://127.0.0.1:{}", redis_proxy.port)];
            s.redis_cluster = false;
            s.database_url = flashgate::config::Secret::new(via_proxy);
        })
        .start()
        .await;
    readyz_until(&app, Duration::from_secs(10), |s, v| {
        s == 200 && v["status"] == "ready"
    })
    .await;

    pg_proxy.set(ProxyMode::Drop);
    readyz_until(&app, Duration::from_secs(10), |s, v| {
        (s, v["status"].as_str(), v["postgres"].as_str()) == (200, Some("degraded"), Some("down"))
    })
    .await;
    redis_proxy.set(ProxyMode::Drop);
    readyz_until(&app, Duration::from_secs(10), |s, v| {
        (s, v["redis"].as_str()) == (503, Some("down"))
    })
    .await;
    // Both black holes in force: time a run of probes.
    let mut took = Vec::new();
    for _ in 0..50 {
        let a = timed("readyz", app.client.get(app.url("/readyz"))).await;
        assert_eq!(a.status, 503, "{}", a.body);
        took.push(a.took);
    }
    took.sort();
    println!(
        "readyz with Redis and Postgres black-holed: p50 {:?}, max {:?}",
        took[25], took[49]
    );
    // The target is 50 ms; a loaded 2-core CI gets slack, far below the
    // 1 s a probe allows (and the 5 s it took).
    assert!(
        took[49] < Duration::from_millis(500),
        "slowest readyz {:?}",
        took[49]
    );

    redis_proxy.restore();
    pg_proxy.restore();
    readyz_until(&app, Duration::from_secs(20), |s, v| {
        s == 200 && v["status"] == "ready"
    })
    .await;
}
