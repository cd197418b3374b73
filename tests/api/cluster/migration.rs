//! A sale's slot moving to another primary (resharding) under traffic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::support::cluster::*;
use crate::support::*;

/// The slot of a live sale moves to another primary (what `redis-cli
/// --cluster reshard` does, one key at a time) while buyers and views keep
/// hitting it: every answer is a normal one or 503 (retry), never a 500,
/// and afterwards the counters match the holds exactly (no unit lost or
/// counted twice by a script stopped half-way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis Cluster (FLASHGATE_TEST_REDIS_CLUSTER=1)"]
async fn a_sale_whose_slot_migrates_mid_traffic_keeps_exact_counts() {
    require_cluster();
    let cluster = OwnCluster::start(false).await;
    let app = Arc::new(
        Spawn::new()
            .await
            .redis(&cluster.seeds, true)
            .no_sweeper()
            .with(|s| s.rate.per_user_per_sec = 0)
            .start()
            .await,
    );
    let sale = app.sale(500, 2, 1).await;
    // Holds that will have expired (unswept) when the migration starts,
    // one confirmed sale, and live holds.
    let mut early = Vec::new();
    for i in 0..20 {
        let user = format!("early-{i}");
        let (s, v) = app.reserve(&sale, &user, 1, None).await;
        assert_eq!(s, 201, "{v}");
        early.push((user, rid(&v)));
    }
    let (_, a) = app.reserve(&sale, "ann", 1, None).await;
    assert_eq!(
        app.act(&sale, &rid(&a), "confirm", Some("ann")).await.0,
        200
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let nodes = cluster.nodes().await;
    let key = sale_key(&app.prefix, &sale);
    let src = primary_of(&nodes, &key).await;
    let dst = nodes
        .iter()
        .find(|n| n.primary && n.addr != src.addr)
        .expect("another primary")
        .clone();
    let mut sc = node_conn(&src.url()).await;
    let mut dc = node_conn(&dst.url()).await;
    let slot = keyslot(&mut sc, &key).await;

    let setslot = |c: &mut MultiplexedConnection, how: &'static str, id: String| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(how).arg(id);
        let mut c = c.clone();
        async move {
            let _: () = cmd.query_async(&mut c).await.expect("setslot");
        }
    };
    setslot(&mut dc, "IMPORTING", src.id.clone()).await;
    setslot(&mut sc, "MIGRATING", dst.id.clone()).await;
    let (dhost, dport) = dst.addr.rsplit_once(':').expect("addr");
    let migrate = |keys: Vec<String>| {
        let mut cmd = redis::cmd("MIGRATE");
        cmd.arg(dhost)
            .arg(dport)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(keys);
        let mut c = sc.clone();
        async move {
            let _: () = cmd.query_async(&mut c).await.expect("migrate");
        }
    };
    // The record of the last expired hold goes first: a sweep on the old
    // node gives back the holds before it, then stops at that key (a
    // cluster node refuses a key it no longer has, mid-script).
    let last_early = &early.last().expect("early holds").1;
    migrate(vec![format!("{}:{{{sale}}}:r:{last_early}", app.prefix)]).await;

    // Traffic for the whole migration, each answer recorded by phase:
    // views (which sweep the expired holds), reserves, and confirms /
    // cancels of the new holds and of the expired early ones.
    let stop = CancellationToken::new();
    // 0: slot open, no key moved yet; 1: keys moving; 2: slot reassigned.
    let phase = Arc::new(AtomicUsize::new(0));
    let rids = Arc::new(std::sync::Mutex::new(early));
    type Seen = BTreeMap<(usize, &'static str, u16), usize>;
    let record = |seen: &mut Seen, phase: &AtomicUsize, call: &'static str, s: u16| {
        *seen
            .entry((phase.load(Ordering::SeqCst), call, s))
            .or_default() += 1;
    };
    let views = {
        let (app, sale, stop, phase) = (app.clone(), sale.clone(), stop.clone(), phase.clone());
        tokio::spawn(async move {
            let mut seen = Seen::new();
            while !stop.is_cancelled() {
                let r = app.get(&format!("/v1/sales/{sale}")).await;
                let (s, v) = body(r).await;
                record(&mut seen, &phase, "view", s);
                assert!(s == 200 || s == 503, "view mid-migration: {s} {v}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let reserves = {
        let (app, sale, stop, phase, rids) = (
            app.clone(),
            sale.clone(),
            stop.clone(),
            phase.clone(),
            rids.clone(),
        );
        tokio::spawn(async move {
            let mut seen = Seen::new();
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                let user = format!("mid-{i}");
                let (s, v) = app.reserve(&sale, &user, 1, None).await;
                record(&mut seen, &phase, "reserve", s);
                assert!(s == 201 || s == 503, "reserve mid-migration: {s} {v}");
                if s == 201 {
                    rids.lock().expect("lock").push((user, rid(&v)));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let actions = {
        let (app, sale, stop, phase, rids) = (
            app.clone(),
            sale.clone(),
            stop.clone(),
            phase.clone(),
            rids.clone(),
        );
        tokio::spawn(async move {
            let mut seen = Seen::new();
            let mut i = 0;
            while !stop.is_cancelled() {
                let next = rids.lock().expect("lock").pop();
                let Some((user, r)) = next else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                i += 1;
                let action = if i % 2 == 0 { "confirm" } else { "cancel" };
                let (s, v) = app.act(&sale, &r, action, Some(&user)).await;
                record(&mut seen, &phase, action, s);
                assert!(
                    s == 200 || s == 410 || s == 503,
                    "{action} mid-migration: {s} {v}"
                );
                if s == 503 {
                    rids.lock().expect("lock").push((user, r));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };

    // Open slot, no key moved yet: expired holds get swept meanwhile.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    phase.store(1, Ordering::SeqCst);
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1)
            .query_async(&mut sc.clone())
            .await
            .expect("getkeysinslot");
        if keys.is_empty() {
            break;
        }
        migrate(keys).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    for n in [&dst, &src] {
        let mut c = node_conn(&n.url()).await;
        setslot(&mut c, "NODE", dst.id.clone()).await;
    }
    phase.store(2, Ordering::SeqCst);
    for n in nodes
        .iter()
        .filter(|n| n.addr != src.addr && n.addr != dst.addr)
    {
        let mut c = node_conn(&n.url()).await;
        setslot(&mut c, "NODE", dst.id.clone()).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.cancel();
    let mut statuses = Seen::new();
    for task in [views, reserves, actions] {
        for (k, n) in task.await.expect("traffic") {
            *statuses.entry(k).or_default() += n;
        }
    }
    println!("answers by (phase, call, status): {statuses:?}");

    // The sale now lives on the other primary and works there.
    assert_eq!(
        primary_of(&cluster.nodes().await, &key).await.addr,
        dst.addr
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = app.reserve(&sale, "after", 1, None).await;
        if s == 201 {
            break;
        }
        assert!(
            s == 503 && tokio::time::Instant::now() < deadline,
            "{s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = flashgate::ids::SaleId::parse(&sale).expect("id");
    let insp = app.service.gate.inspect(&id).await.expect("inspect");
    let live: i64 = insp.live_holds.values().sum();
    assert_eq!(insp.held, live, "held counter = live holds: {insp:?}");
    let held_by: BTreeMap<String, i64> = insp.held_by.clone();
    assert_eq!(held_by, insp.live_holds, "per buyer held = live holds");
    assert_eq!(insp.sold, insp.bought.values().sum::<i64>());
    assert!(insp.sold + insp.held <= insp.stock);
    app.drained(Duration::from_secs(20)).await;
    let rows = orders(&app.pool, &sale).await;
    assert_eq!(
        rows.values().map(|(_, q)| q).sum::<i64>(),
        insp.sold,
        "Postgres has every unit sold"
    );
}
