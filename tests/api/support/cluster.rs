//! Redis Cluster for the tests: nodes as `CLUSTER NODES` shows them, ids
//! whose keys land on a chosen node, and a cluster of a test's own on free
//! ports (`scripts/cluster` with `CLUSTER_BASE_PORT`), stopped on drop, so
//! a test may kill, stop or fail over its nodes without disturbing the
//! shared one.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::app::{cluster_mode, split_urls, unique_sale};
use super::process::send_signal;

/// Cluster-only tests are `#[ignore]`d (so that a run outside cluster
/// mode shows them as skipped); the cluster leg of `scripts/test` runs
/// them with the ignored ones. Run that way outside cluster mode, they
/// stop here, saying why.
pub fn require_cluster() {
    assert!(
        cluster_mode(),
        "this test needs a Redis Cluster: run it with FLASHGATE_TEST_REDIS_CLUSTER=1 and \
         FLASHGATE_TEST_REDIS=<seeds> (scripts/cluster start --replicas prints them), as \
         the cluster leg of scripts/test does"
    );
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    /// `127.0.0.1:7100`
    pub addr: String,
    pub primary: bool,
    pub failed: bool,
    /// A replica's primary.
    pub primary_id: Option<String>,
    pub slots: Vec<(u16, u16)>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

pub async fn node_conn(url: &str) -> MultiplexedConnection {
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
pub async fn cluster_nodes(seeds: &[String]) -> Vec<Node> {
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

pub async fn keyslot(conn: &mut MultiplexedConnection, key: &str) -> u16 {
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
pub struct OwnCluster {
    base: u16,
    dir: PathBuf,
    pub seeds: Vec<String>,
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
    pub async fn start(replicas: bool) -> Self {
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

    pub async fn nodes(&self) -> Vec<Node> {
        cluster_nodes(&self.seeds).await
    }

    /// SIGKILL, like a crashed host: no shutdown, no last replication.
    pub fn kill(&self, port: u16) {
        self.signal(port, "-KILL");
    }

    /// `kill <signal>` (`-STOP`, `-CONT`, `-KILL`) to the node on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.join(format!("{port}.pid"))).expect("pid file");
        let pid = pid.trim().parse().expect("pid");
        send_signal(pid, signal.trim_start_matches('-'));
    }

    /// `CONFIG SET` on every node: e.g. keep serving the slots of the nodes
    /// that answer while one is away (`cluster-require-full-coverage no`).
    pub async fn config_set(&self, name: &str, value: &str) {
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
pub async fn primary_of(nodes: &[Node], key: &str) -> Node {
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
pub async fn new_primary_of(cluster: &OwnCluster, key: &str, not: &str) -> Node {
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

pub fn sale_key(prefix: &str, sale: &str) -> String {
    format!("{prefix}:{{{sale}}}:sale")
}

/// A fresh sale id whose keys live on `node`.
pub async fn sale_id_on(node: &Node, prefix: &str) -> String {
    let mut conn = node_conn(&node.url()).await;
    loop {
        let id = unique_sale();
        if node.serves(keyslot(&mut conn, &sale_key(prefix, &id)).await) {
            return id;
        }
    }
}

/// A fresh buyer id whose active-hold count (`{u:<buyer>}`) lives on `node`.
pub async fn buyer_on(node: &Node, prefix: &str) -> String {
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

pub fn sha(script: &str) -> String {
    redis::Script::new(flashgate::gate::scripts::source(script).expect("script"))
        .get_hash()
        .to_string()
}

pub async fn script_exists(node: &Node, script: &str) -> bool {
    let mut c = node_conn(&node.url()).await;
    let e: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(sha(script))
        .query_async(&mut c)
        .await
        .expect("script exists");
    e == [1]
}

/// `SCRIPT FLUSH` on one node: what a restart does to its script cache.
pub async fn flush_scripts(node: &Node) {
    let mut c = node_conn(&node.url()).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .expect("SCRIPT FLUSH");
}
