//! Redis behind the proxy: a dedicated `redis-server` reached through it,
//! slowed, black-holed, reset, or its connections gone stale.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashgate::ids::SaleId;

use super::*;
use crate::support::redis_server::RedisServer;

/// flashgate on a dedicated redis-server reached through a fault proxy.
struct RedisRig {
    app: Arc<TestApp>,
    proxy: FaultProxy,
    _redis: RedisServer,
}

async fn redis_rig() -> RedisRig {
    let redis = RedisServer::start(&[]);
    let proxy = FaultProxy::redis(&redis).await;
    let app = Spawn::new()
        .await
        .redis(&[proxy.redis_url()], false)
        .with(|s| s.redis_timeout = REDIS_TIMEOUT)
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
        async move { timed("reserve", idem_reserve(&app, &sale, &user(i))).await }
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
                idem_reserve(&app, &sale, &u)
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
            idem_reserve(&app, &sale, &u)
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
/// take longer but succeed, every one of them; retries replay them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_reserves_succeed_slowly_and_retries_replay() {
    if cluster_mode() {
        // A dedicated standalone Redis: nothing cluster-specific (scripts/test
        // leaves this file out of its cluster leg).
        return;
    }
    let delay = Duration::from_millis(50);
    let rounds = reserves_through_a_redis_fault(ProxyMode::Delay(delay)).await;
    // A call through the proxy takes 2 × 50 ms more, a third of the 300 ms
    // Redis timeout: slow, but answering, so every reserve is granted, the
    // ones sent as the delay began too.
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(
            r.first.status, 201,
            "reserve {i} on a slow but answering Redis, after {:?}: {}",
            r.first.took, r.first.body
        );
        assert_eq!(
            (r.retry.status, rid(&r.retry.body)),
            (200, rid(&r.first.body)),
            "reserve {i}: the retry replays it"
        );
    }
    for r in &rounds[PER_GROUP..] {
        assert!(
            r.first.took >= 2 * delay,
            "went through the delayed proxy: {:?}",
            r.first.took
        );
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
    let warm = timed("reserve", idem_reserve(&app, &sale, "warm")).await;
    assert_eq!(warm.status, 201, "{}", warm.body);
    rig.proxy.set(ProxyMode::Stale);
    let start = Instant::now();
    let mut tries = Vec::new();
    loop {
        let u = format!("buyer-{}", tries.len());
        let a = timed("reserve", idem_reserve(&app, &sale, &u)).await;
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
            idem_reserve(&app, &sale, u)
        })
        .await;
        if a.status == 201 {
            assert_eq!((r.status, rid(&r.body)), (200, rid(&a.body)), "{what}");
        }
        rids.insert(u.clone(), rid(&r.body));
    }
    one_unit_per_key(&app, &sale, &rids).await;
}
