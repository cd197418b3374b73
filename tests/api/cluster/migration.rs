//! A sale's slot moving to another primary (resharding) under traffic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::support::cluster::*;
use crate::support::*;

/// Answers counted by (phase, call, status).
type Seen = BTreeMap<(usize, &'static str, u16), usize>;

/// The calls of the traffic during a migration.
#[derive(Clone, Copy)]
enum Call {
    /// Views (which sweep the expired holds).
    View,
    /// Reserves, each new hold kept for `Act`.
    Reserve,
    /// A confirm or a cancel (in turn) of a hold: a new one or an expired
    /// early one.
    Act,
}

/// Traffic on one sale while its slot migrates.
#[derive(Clone)]
struct Traffic {
    app: Arc<TestApp>,
    sale: String,
    stop: CancellationToken,
    /// 0: slot open, no key moved yet; 1: keys moving; 2: slot reassigned.
    phase: Arc<AtomicUsize>,
    /// Holds to confirm or cancel: (buyer, reservation id).
    rids: Arc<Mutex<Vec<(String, String)>>>,
}

impl Traffic {
    /// One `call` every 20 ms until stopped; every answer a normal one or
    /// 503, counted by the phase it came in.
    async fn run(self, call: Call) -> Seen {
        let mut seen = Seen::new();
        let mut answered = 0;
        while !self.stop.is_cancelled() {
            if let Some((name, s)) = self.one(call, answered + 1).await {
                answered += 1;
                *seen
                    .entry((self.phase.load(Ordering::SeqCst), name, s))
                    .or_default() += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    }

    /// The `n`-th call of its kind: its name and status (None: no hold to
    /// act on yet).
    async fn one(&self, call: Call, n: usize) -> Option<(&'static str, u16)> {
        let (app, sale) = (&self.app, &self.sale);
        match call {
            Call::View => {
                let (s, v) = body(app.get(&format!("/v1/sales/{sale}")).await).await;
                assert!(s == 200 || s == 503, "view mid-migration: {s} {v}");
                Some(("view", s))
            }
            Call::Reserve => {
                let user = format!("mid-{n}");
                let (s, v) = app.reserve(sale, &user, 1, None).await;
                assert!(s == 201 || s == 503, "reserve mid-migration: {s} {v}");
                if s == 201 {
                    self.rids.lock().expect("lock").push((user, rid(&v)));
                }
                Some(("reserve", s))
            }
            Call::Act => {
                let next = self.rids.lock().expect("lock").pop();
                let (user, r) = next?;
                let action = if n.is_multiple_of(2) {
                    "confirm"
                } else {
                    "cancel"
                };
                let (s, v) = app.act(sale, &r, action, Some(&user)).await;
                assert!(
                    s == 200 || s == 410 || s == 503,
                    "{action} mid-migration: {s} {v}"
                );
                if s == 503 {
                    self.rids.lock().expect("lock").push((user, r));
                }
                Some((action, s))
            }
        }
    }
}

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
    let traffic = Traffic {
        app: app.clone(),
        sale: sale.clone(),
        stop: CancellationToken::new(),
        phase: Arc::new(AtomicUsize::new(0)),
        rids: Arc::new(Mutex::new(early)),
    };
    let (stop, phase) = (traffic.stop.clone(), traffic.phase.clone());
    let views = tokio::spawn(traffic.clone().run(Call::View));
    let reserves = tokio::spawn(traffic.clone().run(Call::Reserve));
    let actions = tokio::spawn(traffic.run(Call::Act));

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
