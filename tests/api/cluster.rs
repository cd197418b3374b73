//! Redis Cluster: several instances on one cluster, sales spread over the
//! primaries, scripts on every node, and a primary lost mid-burst.
//!
//! Every test here needs `FLASHGATE_TEST_REDIS_CLUSTER=1` (with
//! `FLASHGATE_TEST_REDIS` = the seed list, see `scripts/cluster`) and
//! returns early, saying so, without it. The failover test starts and stops
//! its own cluster on free ports, so it never disturbs the shared one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashgate::domain::ReserveOutcome;
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

fn skip(test: &str) -> bool {
    if cluster_mode() {
        return false;
    }
    println!("{test}: skipped (needs FLASHGATE_TEST_REDIS_CLUSTER=1 and FLASHGATE_TEST_REDIS=<seeds>, see scripts/cluster)");
    true
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
struct Node {
    id: String,
    /// `127.0.0.1:7100`
    addr: String,
    primary: bool,
    failed: bool,
    /// A replica's primary.
    primary_id: Option<String>,
    slots: Vec<(u16, u16)>,
}

impl Node {
    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
    fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }
    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

async fn node_conn(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).expect("node url");
    tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("connect in time")
    .expect("connect to a cluster node")
}

/// The cluster's nodes, as the first seed that answers sees them.
async fn cluster_nodes(seeds: &[String]) -> Vec<Node> {
    for seed in seeds {
        let client = redis::Client::open(seed.as_str()).expect("seed url");
        let Ok(Ok(mut conn)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            continue;
        };
        let Ok(text) = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(&mut conn)
            .await
        else {
            continue;
        };
        return text.lines().filter_map(parse_node).collect();
    }
    panic!("no seed of {seeds:?} answered CLUSTER NODES");
}

fn parse_node(line: &str) -> Option<Node> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let addr = f[1].split('@').next()?.to_string();
    let flags: Vec<&str> = f[2].split(',').collect();
    let slots = f[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|n| (n, n)),
        })
        .collect();
    Some(Node {
        id: f[0].to_string(),
        addr,
        primary: flags.contains(&"master"),
        failed: flags.iter().any(|x| *x == "fail" || *x == "fail?"),
        primary_id: (f[3] != "-").then(|| f[3].to_string()),
        slots,
    })
}

async fn keyslot(conn: &mut MultiplexedConnection, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(conn)
        .await
        .expect("keyslot")
}

/// A free base port for a 6-node cluster (its ports and their bus ports,
/// port + 10000), somewhere in 20000..24000.
fn free_base_port(attempt: u16) -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let start = ((std::process::id() ^ nanos) % 400) as u16 + attempt * 37;
    (0..400u16)
        .map(|i| 20000 + ((start + i) % 400) * 10)
        .find(|&b| (b..b + 6).all(|p| free(p) && free(p + 10000)))
        .expect("no free ports for a test cluster")
}

/// A cluster of this test's own, stopped (and its files removed) on drop.
struct OwnCluster {
    base: u16,
    dir: PathBuf,
    seeds: Vec<String>,
}

impl OwnCluster {
    fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster"))
            .args(args)
            .env("CLUSTER_BASE_PORT", self.base.to_string())
            .env("CLUSTER_DIR", &self.dir)
            .env("CLUSTER_NODE_TIMEOUT", "1000")
            .output()
            .expect("run scripts/cluster")
    }

    /// 3 primaries, and a replica for each with `replicas`.
    async fn start(replicas: bool) -> Self {
        let mut last_error = String::new();
        // Another test may take the same free ports between search and start.
        for attempt in 0..3u16 {
            let base = free_base_port(attempt);
            let mut me = Self {
                base,
                dir: std::env::temp_dir()
                    .join(format!("fg-test-cluster-{base}-{}", std::process::id())),
                seeds: Vec::new(),
            };
            let args: &[&str] = if replicas {
                &["start", "--replicas"]
            } else {
                &["start"]
            };
            let out = tokio::task::block_in_place(|| me.script(args));
            if out.status.success() {
                me.seeds = split_urls(String::from_utf8_lossy(&out.stdout).trim());
                assert_eq!(me.seeds.len(), if replicas { 6 } else { 3 });
                return me;
            }
            last_error = String::from_utf8_lossy(&out.stderr).to_string();
        }
        panic!("scripts/cluster start failed: {last_error}");
    }

    async fn nodes(&self) -> Vec<Node> {
        cluster_nodes(&self.seeds).await
    }

    /// SIGKILL, like a crashed host: no shutdown, no last replication.
    fn kill(&self, port: u16) {
        self.signal(port, "-KILL");
    }

    fn signal(&self, port: u16, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.join(format!("{port}.pid"))).expect("pid file");
        let status = Command::new("kill")
            .args([signal, pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let out = self.script(&["stop"]);
        if !out.status.success() {
            eprintln!(
                "scripts/cluster stop: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The primary serving `key`'s slot.
async fn primary_of(nodes: &[Node], key: &str) -> Node {
    let mut conn = node_conn(&nodes.iter().find(|n| !n.failed).expect("a node").url()).await;
    let slot = keyslot(&mut conn, key).await;
    nodes
        .iter()
        .find(|n| n.primary && !n.failed && n.serves(slot))
        .unwrap_or_else(|| panic!("no primary serves slot {slot}: {nodes:?}"))
        .clone()
}

/// The live primary other than `not` that serves `key`, once the cluster's
/// view has settled (nodes learn of a failover by gossip, not all at once).
async fn new_primary_of(cluster: &OwnCluster, key: &str, not: &str) -> Node {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let nodes = cluster.nodes().await;
        let live = nodes.iter().find(|n| !n.failed).expect("a live node");
        let slot = keyslot(&mut node_conn(&live.url()).await, key).await;
        if let Some(n) = nodes
            .iter()
            .find(|n| n.primary && !n.failed && n.addr != not && n.serves(slot))
        {
            return n.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no primary but {not} serves {key}: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sale_key(prefix: &str, sale: &str) -> String {
    format!("{prefix}:{{{sale}}}:sale")
}

/// A fresh sale id whose keys live on `node`.
async fn sale_id_on(node: &Node, prefix: &str) -> String {
    let mut conn = node_conn(&node.url()).await;
    loop {
        let id = unique_sale();
        if node.serves(keyslot(&mut conn, &sale_key(prefix, &id)).await) {
            return id;
        }
    }
}

/// A fresh buyer id whose active-hold count (`{u:<buyer>}`) lives on `node`.
async fn buyer_on(node: &Node, prefix: &str) -> String {
    let mut conn = node_conn(&node.url()).await;
    for i in 0.. {
        let buyer = format!("buyer-on-{}-{i}", node.port());
        let key = format!("{prefix}:{{u:{buyer}}}:active");
        if node.serves(keyslot(&mut conn, &key).await) {
            return buyer;
        }
    }
    unreachable!("some buyer id lands on every node")
}

fn sha(script: &str) -> String {
    redis::Script::new(flashgate::gate::scripts::source(script).expect("script"))
        .get_hash()
        .to_string()
}

async fn script_exists(node: &Node, script: &str) -> bool {
    let mut c = node_conn(&node.url()).await;
    let e: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(sha(script))
        .query_async(&mut c)
        .await
        .expect("script exists");
    e == [1]
}

/// Orders in Postgres for a sale: (reservation id, user, quantity).
async fn orders(pool: &sqlx::PgPool, sale: &str) -> Vec<(String, String, i32)> {
    sqlx::query_as("SELECT reservation_id::text, user_id, quantity FROM orders WHERE sale_id = $1")
        .bind(sale)
        .fetch_all(pool)
        .await
        .expect("orders")
}

/// 500 buyers (and 50 of them twice more), stock 10, cap 2, spread over
/// three flashgate instances that share one cluster, one database and one
/// key prefix: exactly the stock is held, whichever instance answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_three_instances_sells_exactly_the_stock() {
    if skip("a_burst_over_three_instances_sells_exactly_the_stock") {
        return;
    }
    let db = fresh_database().await;
    let prefix = unique_prefix();
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(Arc::new(Spawn::shared(&db, &prefix).start().await));
    }
    let sale = apps[0].sale(10, 2, 300).await;
    let mut attempts: Vec<String> = (0..500).map(|i| format!("buyer-{i}")).collect();
    for i in 0..50 {
        attempts.push(format!("buyer-{i}"));
        attempts.push(format!("buyer-{i}"));
    }
    let barrier = Arc::new(Barrier::new(attempts.len()));
    let tasks = attempts.into_iter().enumerate().map(|(i, user)| {
        // A buyer's attempts land on different instances.
        let app = apps[i % 3].clone();
        let (sale, barrier) = (sale.clone(), barrier.clone());
        tokio::spawn(async move {
            let req = app
                .client
                .post(app.url(&format!("/v1/sales/{sale}/reservations")))
                .bearer_auth(token(&user))
                .json(&json!({"quantity": 1}));
            barrier.wait().await;
            (user, body(req.send().await.expect("reserve")).await)
        })
    });
    let results: Vec<(String, (u16, Value))> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert_eq!(results.len(), 600);
    let mut held_by: HashMap<String, u64> = HashMap::new();
    let mut created = 0;
    for (user, (status, v)) in &results {
        match status {
            201 => {
                created += 1;
                *held_by.entry(user.clone()).or_default() += v["quantity"].as_u64().expect("qty");
            }
            409 => assert!(
                matches!(error_code(v), "sold_out" | "user_limit_exceeded"),
                "{v}"
            ),
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    assert_eq!(created, 10);
    assert_eq!(
        held_by.values().sum::<u64>(),
        10,
        "exactly the stock is held"
    );
    assert!(
        held_by.values().all(|&q| q <= 2),
        "over the cap: {held_by:?}"
    );
    for app in &apps {
        let v = app.view(&sale).await;
        assert_eq!(
            (
                v["held"].as_i64(),
                v["sold"].as_i64(),
                v["available"].as_i64()
            ),
            (Some(10), Some(0), Some(0)),
            "every instance sees the same sale: {v}"
        );
        assert_eq!(v["state"], "sold_out");
    }
}

/// Sales whose slots sit on different primaries: each sale's keys live on
/// its slot's primary, the scripts are on every primary, and reserve,
/// confirm, cancel and the write-behind work for all of them; a flushed
/// script cache (a restarted node) is refilled on the node that needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_on_every_primary_reserve_confirm_and_reach_postgres() {
    if skip("sales_on_every_primary_reserve_confirm_and_reach_postgres") {
        return;
    }
    let app = spawn_app().await;
    let nodes = cluster_nodes(&redis_urls()).await;
    let primaries: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
        .collect();
    assert!(primaries.len() >= 3, "{nodes:?}");
    // The warm-up at start loaded every script into every primary.
    for p in &primaries {
        for name in flashgate::gate::ScriptName::ALL.iter().map(|n| n.file()) {
            assert!(script_exists(p, name).await, "{name} not on {}", p.addr);
        }
    }
    assert_eq!(
        app.service
            .gate
            .eviction_policy()
            .await
            .expect("CONFIG GET"),
        "noeviction"
    );
    app.service.gate.ping().await.expect("PING");

    // Two sales per primary, created through the API.
    let mut sales = Vec::new();
    for p in &primaries {
        for _ in 0..2 {
            let id = sale_id_on(p, &app.prefix).await;
            let (s, v) = app
                .put_sale(
                    &id,
                    json!({"stock": 5, "per_user_limit": 2, "hold_ttl_secs": 60}),
                )
                .await;
            assert_eq!(s, 201, "{v}");
            sales.push(((*p).clone(), id));
        }
    }
    // Every key of a sale (its hash tag) is on its slot's primary, and only there.
    for (p, id) in &sales {
        for n in &primaries {
            let mut c = node_conn(&n.url()).await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:{{{id}}}:*", app.prefix))
                .query_async(&mut c)
                .await
                .expect("keys");
            if n.addr == p.addr {
                assert!(keys.len() >= 2, "sale and events on {}: {keys:?}", n.addr);
            } else {
                assert!(keys.is_empty(), "{id} has keys on {}: {keys:?}", n.addr);
            }
        }
    }
    let mut confirmed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, id) in &sales {
        let (s, a) = app.reserve(id, "ann", 2, None).await;
        assert_eq!(s, 201, "{a}");
        assert_eq!(app.act(id, &rid(&a), "confirm", Some("ann")).await.0, 200);
        let (s, b) = app.reserve(id, "bob", 1, Some("bob-1")).await;
        assert_eq!(s, 201, "{b}");
        assert_eq!(app.act(id, &rid(&b), "cancel", Some("bob")).await.0, 200);
        confirmed.entry(id.clone()).or_default().insert(rid(&a));
    }

    // A node restart empties its script cache: the next call on it loads
    // the script there (by EVAL, on that node only) and goes through.
    for p in &primaries {
        let mut c = node_conn(&p.url()).await;
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut c)
            .await
            .expect("flush");
        assert!(!script_exists(p, "reserve").await);
    }
    for (_, id) in &sales {
        let (s, c) = app.reserve(id, "cid", 1, None).await;
        assert_eq!(s, 201, "after SCRIPT FLUSH: {c}");
        assert_eq!(app.act(id, &rid(&c), "confirm", Some("cid")).await.0, 200);
        confirmed.get_mut(id).expect("sale").insert(rid(&c));
        let v = app.view(id).await;
        assert_eq!(
            (
                v["sold"].as_i64(),
                v["held"].as_i64(),
                v["available"].as_i64()
            ),
            (Some(3), Some(0), Some(2)),
            "{v}"
        );
    }
    for p in &primaries {
        assert!(script_exists(p, "reserve").await, "reloaded on {}", p.addr);
    }

    app.drained(Duration::from_secs(20)).await;
    for (_, id) in &sales {
        let rows = orders(&app.pool, id).await;
        let got: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
        assert_eq!(rows.len(), got.len(), "duplicate orders");
        assert_eq!(&got, &confirmed[id], "orders of {id}");
        let events: Vec<(String, i64)> = sqlx::query_as(
            "SELECT kind, count(*) FROM stock_movements WHERE sale_id = $1 GROUP BY kind ORDER BY kind",
        )
        .bind(id)
        .fetch_all(&app.pool)
        .await
        .expect("movements");
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        for kind in ["cancelled", "confirmed", "reserved"] {
            assert!(kinds.contains(&kind), "{id}: {events:?}");
        }
    }
}

/// The cluster client sends a call again when its connection dropped (a
/// primary died), and the call may already have run: a reserve script run
/// twice with the same reservation id holds the units once. (Needs no
/// cluster: it runs on whatever Redis the suite uses.)
#[tokio::test]
async fn a_reserve_call_run_twice_holds_once() {
    // With an active-hold cap of 2 across sales (counted by the reserve
    // script on one Redis, by admit.lua after it on a cluster).
    let app = Spawn::new()
        .await
        .with(|s| s.max_active_holds = 2)
        .start()
        .await;
    let sale = app.sale(5, 2, 60).await;
    let id = flashgate::ids::SaleId::parse(&sale).expect("sale id");
    let user = flashgate::ids::UserId::parse("ann").expect("user");
    let rid = uuid::Uuid::new_v4();
    let gate = &app.service.gate;
    let first = gate
        .reserve(&id, &rid, &user, 2, None)
        .await
        .expect("reserve");
    let again = gate
        .reserve(&id, &rid, &user, 2, None)
        .await
        .expect("again");
    assert_eq!(format!("{first:?}"), format!("{again:?}"));
    assert!(matches!(first, ReserveOutcome::Held { .. }), "{first:?}");
    // The buyer's active holds count it once: one more hold elsewhere fits.
    let other = flashgate::ids::SaleId::parse(&app.sale(5, 2, 60).await).expect("sale id");
    let elsewhere = uuid::Uuid::new_v4();
    let second = gate
        .reserve(&other, &elsewhere, &user, 1, None)
        .await
        .expect("reserve elsewhere");
    assert!(matches!(second, ReserveOutcome::Held { .. }), "{second:?}");
    let v = app.view(&sale).await;
    assert_eq!(
        (v["held"].as_i64(), v["available"].as_i64()),
        (Some(2), Some(3)),
        "{v}"
    );
    // The buyer's cap counts the hold once too.
    assert_eq!(app.reserve(&sale, "ann", 1, None).await.0, 409);
    assert_eq!(
        app.act(&sale, &rid.to_string(), "cancel", Some("ann"))
            .await
            .0,
        200
    );
    assert_eq!(app.view(&sale).await["held"], 0);
}

/// The slot of a live sale moves to another primary (what `redis-cli
/// --cluster reshard` does, one key at a time) while buyers and views keep
/// hitting it: every answer is a normal one or 503 (retry), never a 500,
/// and afterwards the counters match the holds exactly (no unit lost or
/// counted twice by a script stopped half-way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_whose_slot_migrates_mid_traffic_keeps_exact_counts() {
    if skip("a_sale_whose_slot_migrates_mid_traffic_keeps_exact_counts") {
        return;
    }
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
                let r = app
                    .client
                    .get(app.url(&format!("/v1/sales/{sale}")))
                    .send()
                    .await
                    .expect("view");
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
        rows.iter().map(|r| i64::from(r.2)).sum::<i64>(),
        insp.sold,
        "Postgres has every unit sold"
    );
}

/// A primary is killed (SIGKILL) in the middle of a burst served by two
/// instances, and its replica takes over. Buyers retry on 503 as clients
/// do. Afterwards no unit is sold twice (Postgres orders and Redis counters
/// within the stock, nobody over the cap), every confirm answered 200 is in
/// Postgres, and the service recovered without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_burst_sells_no_unit_twice_and_recovers() {
    if skip("a_primary_killed_mid_burst_sells_no_unit_twice_and_recovers") {
        return;
    }
    let cluster = OwnCluster::start(true).await;
    let db = fresh_database().await;
    let prefix = unique_prefix();
    let spawn = || {
        Spawn::shared(&db, &prefix)
            .redis(&cluster.seeds, true)
            .with(|s| {
                s.redis_timeout = Duration::from_millis(500);
                s.rate.per_user_per_sec = 0;
            })
    };
    let apps = [
        Arc::new(spawn().start().await),
        Arc::new(spawn().start().await),
    ];
    let (stock, cap) = (200i64, 2i64);
    let sale = apps[0].sale(stock, cap as u32, 300).await;
    let nodes = cluster.nodes().await;
    let victim = primary_of(&nodes, &sale_key(&prefix, &sale)).await;
    // A second sale on the same primary, to time the recovery.
    let probe = sale_id_on(&victim, &prefix).await;
    let (s, v) = apps[0]
        .put_sale(&probe, json!({"stock": 100000, "per_user_limit": 10000}))
        .await;
    assert_eq!(s, 201, "{v}");
    // And one on another primary, whose script cache will be lost (a node
    // restart) while the victim is down.
    let bystander = nodes
        .iter()
        .find(|n| n.primary && n.addr != victim.addr && !n.slots.is_empty())
        .expect("another primary")
        .clone();
    let other = sale_id_on(&bystander, &prefix).await;
    let (s, v) = apps[0]
        .put_sale(&other, json!({"stock": 100, "per_user_limit": 2}))
        .await;
    assert_eq!(s, 201, "{v}");

    // 200 buyers, three one-unit flows each (the third must hit the cap:
    // demand 400 for 200 units), started over ~4 s; like real clients they
    // retry a 503 (with the same Idempotency-Key) for up to 30 s.
    let start = tokio::time::Instant::now();
    let give_up = start + Duration::from_secs(30);
    let unavailable = Arc::new(AtomicUsize::new(0));
    let tasks = (0..600).map(|i| {
        let app = apps[i % 2].clone();
        let (sale, unavailable) = (sale.clone(), unavailable.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis((i as u64 / 3) * 20)).await;
            let user = format!("buyer-{}", i / 3);
            let key = format!("flow-{}", i % 3);
            let (s, v) = loop {
                let (s, v) = app.reserve(&sale, &user, 1, Some(&key)).await;
                if s != 503 || tokio::time::Instant::now() > give_up {
                    break (s, v);
                }
                unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            if !(s == 201 || s == 200) {
                assert!(
                    s == 409 && matches!(error_code(&v), "sold_out" | "user_limit_exceeded"),
                    "reserve: {s} {v}"
                );
                return (user, None);
            }
            let r = rid(&v);
            loop {
                let (s, v) = app.act(&sale, &r, "confirm", Some(&user)).await;
                match s {
                    200 => return (user, Some((r, tokio::time::Instant::now()))),
                    503 if tokio::time::Instant::now() < give_up => {
                        unavailable.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    // A hold the failover lost (not yet replicated): gone.
                    404 => return (user, None),
                    _ => panic!("confirm: {s} {v}"),
                }
            }
        })
    });
    let burst = tokio::spawn(join_all(tasks));

    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.kill(victim.port());
    let killed = tokio::time::Instant::now();
    // A healthy primary without its scripts serves at once, victim down or
    // not: the script is sent to that node alone (no fan-out to every node).
    let mut bc = node_conn(&bystander.url()).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut bc)
        .await
        .expect("flush");
    // (Its buyer's active-hold count on a live node too: a hold that cannot
    // be counted is refused.)
    let bystander_buyer = buyer_on(&bystander, &prefix).await;
    let (s, v) = apps[1].reserve(&other, &bystander_buyer, 1, None).await;
    assert_eq!(
        s, 201,
        "a sale on a healthy primary while another is down: {v}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(1),
        "{:?}",
        killed.elapsed()
    );
    // Recovery: a reserve on the victim's slots succeeds again.
    let recovered = loop {
        let (s, v) = apps[1].reserve(&probe, "prober", 1, None).await;
        if s == 201 {
            break killed.elapsed();
        }
        assert_eq!(s, 503, "{v}");
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("reserves succeed again {recovered:?} after the primary was killed");
    assert_ne!(
        new_primary_of(&cluster, &sale_key(&prefix, &sale), &victim.addr)
            .await
            .addr,
        victim.addr,
        "a replica took over"
    );

    let mut told: BTreeMap<String, i64> = BTreeMap::new();
    let mut confirmed = BTreeSet::new();
    let (mut before, mut after) = (0, 0);
    for r in burst.await.expect("burst") {
        if let (user, Some((r, at))) = r.expect("buyer") {
            confirmed.insert(r);
            *told.entry(user).or_default() += 1;
            if at < killed {
                before += 1;
            } else {
                after += 1;
            }
        }
    }
    let unavailable = unavailable.load(Ordering::Relaxed);
    println!(
        "{} confirmed: {before} before the kill, {after} after it; {unavailable} answers 503 (retried)",
        confirmed.len()
    );
    assert!(before > 0 && after > 0, "the kill was not mid-burst");
    assert!(unavailable > 0, "the kill did not touch the burst");
    assert!(told.values().all(|&n| n <= cap), "a buyer over the cap");

    for app in &apps {
        let v = app.view(&sale).await;
        let (sold, held) = (
            v["sold"].as_i64().expect("sold"),
            v["held"].as_i64().expect("held"),
        );
        assert!(sold + held <= stock, "{v}");
    }
    let id = flashgate::ids::SaleId::parse(&sale).expect("id");
    let insp = apps[0].service.gate.inspect(&id).await.expect("inspect");
    for (user, bought) in &insp.bought {
        let held = insp.held_by.get(user).copied().unwrap_or(0);
        assert!(
            bought + held <= cap,
            "{user}: {bought} bought + {held} held"
        );
    }
    apps[0].drained(Duration::from_secs(30)).await;
    let rows = orders(&apps[0].pool, &sale).await;
    let got: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(rows.len(), got.len(), "duplicate orders");
    assert!(
        confirmed.is_subset(&got),
        "a confirm answered 200 is missing in Postgres"
    );
    let pg_sold: i64 = rows.iter().map(|r| i64::from(r.2)).sum();
    println!(
        "Postgres: {pg_sold} units sold; Redis: {} sold, {} held",
        insp.sold, insp.held
    );
    assert!(pg_sold <= stock, "more units in Postgres than the stock");
    let mut per_user: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, user, q) in &rows {
        *per_user.entry(user.as_str()).or_default() += i64::from(*q);
    }
    assert!(per_user.values().all(|&n| n <= cap), "{per_user:?}");
    // Readiness is back too.
    readyz_until(&apps[1], Duration::from_secs(20), |s, _| s == 200).await;
}

/// Reserves (a new buyer each time) until one is granted; the time it took.
async fn reserve_until_granted(app: &TestApp, sale: &str, within: Duration) -> Duration {
    let t0 = tokio::time::Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        let (s, v) = app.reserve(sale, &format!("probe-{i}"), 1, None).await;
        if s == 201 {
            return t0.elapsed();
        }
        assert_eq!(s, 503, "{v}");
        assert!(
            t0.elapsed() < within,
            "{sale}: no reserve granted within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A primary that hangs (SIGSTOP: its connections stay open, nothing
/// answers) is failed over by the cluster; flashgate, which only sees
/// timeouts, reconnects from the seeds and serves its sales again. Meanwhile
/// the other primaries keep serving, even one that lost its scripts. Then a
/// manual `CLUSTER FAILOVER` on another shard's replica: served again too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_and_a_manual_failover_are_recovered_from() {
    if skip("a_hung_primary_and_a_manual_failover_are_recovered_from") {
        return;
    }
    let cluster = OwnCluster::start(true).await;
    let app = Spawn::new()
        .await
        .redis(&cluster.seeds, true)
        .with(|s| {
            s.redis_timeout = Duration::from_millis(500);
            s.rate.per_user_per_sec = 0;
            // A buyer whose active-hold count lives on the hung node is
            // refused (fail closed, tested on its own): here the probes'
            // buyers must not depend on it.
            s.max_active_holds = 0;
        })
        .start()
        .await;
    let nodes = cluster.nodes().await;
    let mut primaries = nodes.iter().filter(|n| n.primary && !n.slots.is_empty());
    let (victim, bystander) = (
        primaries.next().expect("primary").clone(),
        primaries.next().expect("primary").clone(),
    );
    let mut sales = Vec::new();
    for node in [&victim, &bystander] {
        let id = sale_id_on(node, &app.prefix).await;
        let (s, v) = app
            .put_sale(&id, json!({"stock": 1000, "per_user_limit": 2}))
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(app.reserve(&id, "warm-up", 1, None).await.0, 201);
        sales.push(id);
    }
    let (hung_sale, other_sale) = (&sales[0], &sales[1]);

    cluster.signal(victim.port(), "-STOP");
    let stopped = tokio::time::Instant::now();
    // The bystander lost its scripts (a restart): it serves at once all the
    // same; its scripts go to it alone, not to every node (the hung one too).
    let mut bc = node_conn(&bystander.url()).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut bc)
        .await
        .expect("flush");
    let took = reserve_until_granted(&app, other_sale, Duration::from_secs(1)).await;
    println!("a healthy primary without its scripts served in {took:?} while another hung");

    reserve_until_granted(&app, hung_sale, Duration::from_secs(30)).await;
    println!(
        "the hung primary's sale served again {:?} after the hang",
        stopped.elapsed()
    );
    // A replica took over.
    new_primary_of(&cluster, &sale_key(&app.prefix, hung_sale), &victim.addr).await;
    let now = cluster.nodes().await;
    cluster.kill(victim.port());

    // A manual failover of the bystander's shard: its replica takes over,
    // the old primary becomes a replica (connections stay open).
    let replica = now
        .iter()
        .find(|n| n.primary_id.as_deref() == Some(bystander.id.as_str()) && !n.failed)
        .expect("the bystander's replica")
        .clone();
    let mut rc = node_conn(&replica.url()).await;
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async(&mut rc)
        .await
        .expect("CLUSTER FAILOVER");
    let promoted = new_primary_of(
        &cluster,
        &sale_key(&app.prefix, other_sale),
        &bystander.addr,
    )
    .await;
    assert_eq!(promoted.addr, replica.addr);
    let took = reserve_until_granted(&app, other_sale, Duration::from_secs(10)).await;
    println!("served {took:?} after the manual failover");
    for sale in &sales {
        let v = app.view(sale).await;
        assert!(v["held"].as_i64().expect("held") >= 2, "{v}");
    }
}

impl OwnCluster {
    /// `CONFIG SET` on every node: e.g. keep serving the slots of the nodes
    /// that answer while one is away (`cluster-require-full-coverage no`).
    async fn config_set(&self, name: &str, value: &str) {
        for seed in &self.seeds {
            let mut c = node_conn(seed).await;
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .query_async(&mut c)
                .await
                .expect("CONFIG SET");
        }
    }
}

/// Issue 12.6a: the active-hold cap lives on the buyer's own slot. While
/// that slot's primary stalled, holds on sales elsewhere were granted and
/// never counted (17 held, 10 counted). Now a hold that cannot be counted
/// is given back and answered 503: every hold a buyer gets is counted, and
/// the buyer never has more than the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_buyer_slot_never_lets_a_hold_past_the_cap() {
    if skip("a_stalled_buyer_slot_never_lets_a_hold_past_the_cap") {
        return;
    }
    let cluster = OwnCluster::start(false).await;
    cluster
        .config_set("cluster-require-full-coverage", "no")
        .await;
    let app = Arc::new(
        Spawn::new()
            .await
            .redis(&cluster.seeds, true)
            .with(|s| {
                s.redis_timeout = Duration::from_millis(300);
                s.rate.per_user_per_sec = 0;
                s.max_active_holds = 10;
            })
            .start()
            .await,
    );
    let buyer = "capuser3";
    let active = format!("{}:{{u:{buyer}}}:active", app.prefix);
    let nodes = cluster.nodes().await;
    let p = primary_of(&nodes, &active).await;
    let others: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.primary && !n.slots.is_empty() && n.addr != p.addr)
        .collect();
    let mut sales = Vec::new();
    for i in 0..30 {
        let id = sale_id_on(others[i % others.len()], &app.prefix).await;
        let (s, v) = app
            .put_sale(
                &id,
                json!({"stock": 5, "per_user_limit": 1, "hold_ttl_secs": 120}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        sales.push(id);
    }

    let reserve_all = |sales: Vec<String>| {
        let app = app.clone();
        join_all(sales.into_iter().map(move |sale| {
            let app = app.clone();
            async move {
                let (s, v) = app.reserve(&sale, buyer, 1, None).await;
                (sale, s, v)
            }
        }))
    };
    cluster.signal(p.port(), "-STOP");
    let during = reserve_all(sales[..15].to_vec()).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    cluster.signal(p.port(), "-CONT");
    let after = reserve_all(sales[15..].to_vec()).await;

    let mut granted = Vec::new();
    for (sale, s, v) in during.iter().chain(after.iter()) {
        match s {
            201 => granted.push((sale.clone(), rid(v))),
            503 => assert_eq!(error_code(v), "unavailable", "{v}"),
            429 => assert_eq!(error_code(v), "rate_limited", "{v}"),
            _ => panic!("{sale}: unexpected {s} {v}"),
        }
    }
    // Every hold the buyer got is held and counted; no more than the cap.
    // (A count that landed after its hold was given back may linger until
    // its deadline: counted ≥ held, the safe side.)
    let mut c = node_conn(&p.url()).await;
    let mut held = 0;
    for (sale, r) in &granted {
        let (s, v) = app.get_reservation(sale, r, Some(buyer)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "held", "{v}");
        held += 1;
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(&active)
            .arg(format!("{sale}|{r}"))
            .query_async(&mut c)
            .await
            .expect("zscore");
        assert!(score.is_some(), "the hold {sale}/{r} is not counted");
    }
    let counted: i64 = redis::cmd("ZCARD")
        .arg(&active)
        .query_async(&mut c)
        .await
        .expect("zcard");
    println!(
        "stalled buyer slot: {} granted during the stall, {} after; {held} held, {counted} counted",
        during.iter().filter(|(_, s, _)| *s == 201).count(),
        after.iter().filter(|(_, s, _)| *s == 201).count()
    );
    assert!(i64::from(held) <= counted, "{held} held, {counted} counted");
    assert!(held <= 10, "{held} holds past the cap of 10");
    // Every sale counts exactly what it granted (given-back holds too).
    for sale in &sales {
        let got = granted.iter().filter(|(s, _)| s == sale).count();
        let v = app.view(sale).await;
        assert_eq!(
            v["held"].as_i64(),
            Some(i64::try_from(got).expect("n")),
            "{sale}: {v}"
        );
    }
}

/// Issue 12.6b: while the node holding the sales index is away, the sales
/// on the other nodes keep their write-behind and their sweeper, a sale can
/// still be created there, `GET /v1/sales` answers (naming what it cannot
/// read), and `/readyz` says what cannot run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sales_index_node_away_stops_no_other_sale() {
    if skip("the_sales_index_node_away_stops_no_other_sale") {
        return;
    }
    let cluster = OwnCluster::start(false).await;
    cluster
        .config_set("cluster-require-full-coverage", "no")
        .await;
    let app = Spawn::new()
        .await
        .redis(&cluster.seeds, true)
        .with(|s| {
            s.redis_timeout = Duration::from_millis(300);
            s.rate.per_user_per_sec = 0;
            // A buyer's cap lives on the buyer's own slot, maybe the frozen
            // node's (that case is the test above).
            s.max_active_holds = 0;
            s.stall_after = Duration::from_secs(1);
        })
        .start()
        .await;
    let nodes = cluster.nodes().await;
    let index = primary_of(&nodes, &format!("{}:sales", app.prefix)).await;
    let live = nodes
        .iter()
        .find(|n| n.primary && !n.slots.is_empty() && n.addr != index.addr)
        .expect("another primary")
        .clone();
    let healthy = sale_id_on(&live, &app.prefix).await;
    let (s, v) = app
        .put_sale(
            &healthy,
            json!({"stock": 10, "per_user_limit": 2, "hold_ttl_secs": 60}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let expiring = sale_id_on(&live, &app.prefix).await;
    let (s, v) = app
        .put_sale(
            &expiring,
            json!({"stock": 10, "per_user_limit": 2, "hold_ttl_secs": 2}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let frozen = sale_id_on(&index, &app.prefix).await;
    let (s, v) = app
        .put_sale(&frozen, json!({"stock": 10, "per_user_limit": 2}))
        .await;
    assert_eq!(s, 201, "{v}");
    readyz_until(&app, Duration::from_secs(10), |s, v| {
        s == 200 && v["status"] == "ready"
    })
    .await;

    cluster.signal(index.port(), "-STOP");
    let stopped = tokio::time::Instant::now();
    // (A failed assertion leaves the node stopped: the cluster's drop kills it.)
    {
        // A hold nobody touches again: only the sweeper can give it back.
        let (s, v) = app.reserve(&expiring, "eve", 1, None).await;
        assert_eq!(s, 201, "{v}");
        let expiring_rid = rid(&v);
        // A sale on a live node can be created.
        let created = sale_id_on(&live, &app.prefix).await;
        let (s, v) = app
            .put_sale(&created, json!({"stock": 5, "per_user_limit": 1}))
            .await;
        assert_eq!(s, 201, "a sale on a live node while the index is away: {v}");
        // Confirms on live nodes reach Postgres through the write-behind.
        let mut confirmed = Vec::new();
        for (sale, user) in [(&healthy, "ann"), (&healthy, "bob"), (&created, "cid")] {
            let (s, v) = app.reserve(sale, user, 1, None).await;
            assert_eq!(s, 201, "{v}");
            assert_eq!(app.act(sale, &rid(&v), "confirm", Some(user)).await.0, 200);
            confirmed.push(rid(&v));
        }
        // The listing answers, naming the sale it cannot read.
        let (s, v) = body(
            app.client
                .get(app.url("/v1/sales"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("list"),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["unavailable"], json!([frozen]), "{v}");
        let listed: Vec<&str> = v["sales"]
            .as_array()
            .expect("sales")
            .iter()
            .filter_map(|s| s["sale_id"].as_str())
            .collect();
        for id in [&healthy, &expiring, &created] {
            assert!(listed.contains(&id.as_str()), "{id} in {v}");
        }
        // Readiness says what cannot run.
        let r = readyz_until(&app, Duration::from_secs(10), |s, v| {
            s == 200 && v["status"] == "degraded"
        })
        .await;
        assert!(r["reasons"].to_string().contains("sales index"), "{r}");

        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let written: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM stock_movements WHERE kind = 'confirmed' AND reservation_id::text = ANY($1)",
            )
            .bind(&confirmed)
            .fetch_one(&app.pool)
            .await
            .expect("movements");
            let expired: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM stock_movements WHERE kind = 'expired' AND reservation_id = $1::uuid",
            )
            .bind(&expiring_rid)
            .fetch_one(&app.pool)
            .await
            .expect("expired");
            if written == 3 && expired == 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "while the index node is away: {written} of 3 confirms written, expired hold swept: {expired}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "index node away: live sales served and written within {:?}",
            stopped.elapsed()
        );
    }
    cluster.signal(index.port(), "-CONT");
    readyz_until(&app, Duration::from_secs(20), |s, v| {
        s == 200 && v["status"] == "ready"
    })
    .await;
}
