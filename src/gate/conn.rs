//! One handle for standalone Redis and Redis Cluster.
//!
//! Standalone: a [`ConnectionManager`] (one multiplexed connection, cloned
//! into every request, reconnecting by itself when the connection drops;
//! [`SingleHandle`] replaces it when calls time out). Cluster: the cluster-aware
//! async connection of the `redis` crate, which routes each script call by
//! its first key's slot and follows MOVED / ASK.
//!
//! What the cluster client does by itself (redis 1.8), and what we add:
//! - `EVALSHA` / `EVAL` go to the primary of the first key's slot (every key
//!   of a script shares the sale's hash tag). `MOVED`: it retries at the
//!   named node at once and refreshes its slot map; `ASK` (slot being
//!   migrated): it retries once at the named node with `ASKING`.
//! - `TRYAGAIN` (a multi-key call while the slot's keys are split between
//!   two nodes: every reserve during a migration of its sale's slot),
//!   `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`: it waits and retries. These
//!   errors mean the script did not run, so a retry is always safe; the
//!   waits are made short here (default: at least 1.28 s each, more than a
//!   request's whole deadline), and a call still refused at its deadline
//!   answers 503 `unavailable` with Retry-After.
//! - A dropped connection (a primary killed): it reconnects, refreshes the
//!   slot map and sends the call again, possibly to the promoted replica.
//!   A timeout does not refresh the map (a hung primary would keep its
//!   slots forever): [`ClusterHandle`] then reconnects from the seeds.
//!   The call may have run before the connection dropped, so every script
//!   must be safe to run twice with the same arguments (`reserve.lua`
//!   replays a reservation id it already holds).
//! - `NOSCRIPT` (a restarted node, a promoted replica: script caches are
//!   per node and not replicated): `redis::Script` would `SCRIPT LOAD`,
//!   which the cluster client fans out to every node it is connected to,
//!   and which fails while any of them is down. Instead the call is sent
//!   again as `EVAL <source>`, routed by its key to the very node that
//!   answered NOSCRIPT, which caches the script for the next `EVALSHA`.
//! - `SCRIPT LOAD` (the warm-up at start) reaches every primary (replicas
//!   get scripts by the EVAL above once promoted). `PING` fans out over the
//!   primaries the client is connected to, so `/readyz` stays 200 while one
//!   shard fails over. `CONFIG GET` goes to one node.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Arg, Cmd, ErrorKind, Pipeline, RedisFuture, ServerErrorKind, Value};

#[derive(Clone)]
pub enum RedisConn {
    Single(SingleHandle),
    Cluster(ClusterHandle),
}

/// Least time between two rebuilds of a connection.
const REBUILD_EVERY: Duration = Duration::from_secs(3);

/// Handles' ids, to find a handle's manager among a thread's own.
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Set on HTTP worker threads (see [`own_connection_per_thread`]).
    static OWN_CONNECTION: Cell<bool> = const { Cell::new(false) };
    /// This thread's managers: (handle id, handle generation, manager).
    static THREAD_MANAGERS: RefCell<Vec<(u64, u64, ConnectionManager)>> =
        const { RefCell::new(Vec::new()) };
}

/// Called on each HTTP worker thread: standalone Redis calls made on this
/// thread go over a connection of its own, whose I/O task runs on this
/// thread's runtime. A call then never crosses threads (no wake-up of
/// another thread to write the command, none to hand back the answer),
/// and each worker parses its own answers; each worker's calls are still
/// pipelined on its connection. Other threads share the handle's one
/// connection.
pub fn own_connection_per_thread() {
    OWN_CONNECTION.with(|c| c.set(true));
}

/// The standalone connection, replaced by a fresh one when calls time out.
/// [`ConnectionManager`] reconnects when its connection drops or is
/// refused, not on timeouts: a connection whose path turned into a black
/// hole (Redis' host gone without a reset, a firewall or NAT that forgot
/// the flow) times out every call until the kernel gives up on it, about
/// 15 minutes later, while a new connection would work at once. The fresh
/// manager connects lazily, on the next call; calls in flight finish on
/// the old one. Clones share the handle: a rebuild serves them all.
#[derive(Clone)]
pub struct SingleHandle(Arc<SingleShared>);

struct SingleShared {
    id: u64,
    /// Bumped when the connection is replaced: threads' own managers of an
    /// older generation are replaced too.
    generation: AtomicU64,
    client: redis::Client,
    config: ConnectionManagerConfig,
    conn: RwLock<ConnectionManager>,
    /// When the connection was last replaced.
    replaced: Mutex<Option<Instant>>,
}

impl SingleHandle {
    fn current(&self) -> ConnectionManager {
        if OWN_CONNECTION.with(Cell::get) {
            if let Some(m) = self.thread_manager() {
                return m;
            }
        }
        self.0
            .conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// This thread's own manager for this handle (connecting lazily, on
    /// its first call, from this thread's runtime).
    fn thread_manager(&self) -> Option<ConnectionManager> {
        let (id, generation) = (self.0.id, self.0.generation.load(Ordering::Acquire));
        THREAD_MANAGERS.with(|ms| {
            let mut ms = ms.borrow_mut();
            if let Some((_, _, m)) = ms.iter().find(|(i, g, _)| *i == id && *g == generation) {
                return Some(m.clone());
            }
            let m = ConnectionManager::new_lazy_with_config(
                self.0.client.clone(),
                self.0.config.clone(),
            )
            .ok()?;
            ms.retain(|(i, _, _)| *i != id);
            ms.push((id, generation, m.clone()));
            Some(m)
        })
    }

    /// A call timed out: replace the connection (at most once per
    /// [`REBUILD_EVERY`]).
    fn suspect(&self) {
        let mut at = self
            .0
            .replaced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if at.is_some_and(|t| t.elapsed() < REBUILD_EVERY) {
            return;
        }
        *at = Some(Instant::now());
        match ConnectionManager::new_lazy_with_config(self.0.client.clone(), self.0.config.clone())
        {
            Ok(fresh) => {
                *self.0.conn.write().unwrap_or_else(PoisonError::into_inner) = fresh;
                self.0.generation.fetch_add(1, Ordering::AcqRel);
                tracing::warn!("Redis calls are timing out: opening a fresh connection");
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis calls are timing out and a fresh connection could not be set up")
            }
        }
    }
}

/// The cluster connection, rebuilt from the seeds when calls keep timing
/// out or failing to connect. The `redis` crate refreshes its slot map on
/// MOVED and on refused connections, but not on timeouts: a primary that
/// hangs (process stopped, host unreachable without a reset) keeps its
/// slots in the client's map after the cluster has failed it over, and
/// every call for them times out, for good. A fresh connection asks a live
/// node for the current map. Clones share it: a rebuild serves them all.
#[derive(Clone)]
pub struct ClusterHandle(Arc<ClusterShared>);

struct ClusterShared {
    client: ClusterClient,
    conn: RwLock<ClusterConnection>,
    /// When the last rebuild ended, and whether one is under way.
    rebuild: Mutex<(Option<Instant>, bool)>,
}

impl ClusterHandle {
    fn current(&self) -> ClusterConnection {
        self.0
            .conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Something looked wrong with the cluster: rebuild the connection in
    /// the background (at most once per [`REBUILD_EVERY`]).
    fn suspect(&self) {
        {
            let mut r = self
                .0
                .rebuild
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if r.1 || r.0.is_some_and(|at| at.elapsed() < REBUILD_EVERY) {
                return;
            }
            r.1 = true;
        }
        let shared = self.0.clone();
        tokio::spawn(async move {
            let fresh = tokio::time::timeout(
                Duration::from_secs(10),
                shared.client.get_async_connection(),
            )
            .await;
            match fresh {
                Ok(Ok(conn)) => {
                    *shared.conn.write().unwrap_or_else(PoisonError::into_inner) = conn;
                    tracing::warn!("Redis Cluster calls were failing: reconnected from the seed nodes (fresh slot map)");
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Redis Cluster calls are failing and reconnecting from the seed nodes failed")
                }
                Err(_) => tracing::warn!(
                    "Redis Cluster calls are failing and reconnecting from the seed nodes timed out"
                ),
            }
            let mut r = shared
                .rebuild
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *r = (Some(Instant::now()), false);
        });
    }
}

/// Errors after which the cluster connection may hold a stale slot map.
fn suspicious(e: &redis::RedisError) -> bool {
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == ErrorKind::ClusterConnectionNotFound
}

impl RedisConn {
    /// Connects lazily for standalone Redis (so `serve` starts, unready,
    /// while Redis is down); the cluster client needs its seeds at start.
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
    ) -> redis::RedisResult<Self> {
        if cluster {
            let client = redis::cluster::ClusterClient::builder(urls.to_vec())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(6)
                // Retry waits of 10..=250 ms (rand(min, min(max, 10 * 2^n))):
                // six retries fit in a request's deadline.
                .min_retry_wait(10)
                .max_retry_wait(250)
                .build()?;
            let conn = client.get_async_connection().await?;
            Ok(Self::Cluster(ClusterHandle(Arc::new(ClusterShared {
                client,
                conn: RwLock::new(conn),
                rebuild: Mutex::new((None, false)),
            }))))
        } else {
            let url = urls
                .first()
                .map(String::as_str)
                .unwrap_or("redis://127.0.0.1:6379");
            let client = redis::Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(200));
            let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
            Ok(Self::Single(SingleHandle(Arc::new(SingleShared {
                id: NEXT_HANDLE.fetch_add(1, Ordering::Relaxed),
                generation: AtomicU64::new(0),
                client,
                config,
                conn: RwLock::new(conn),
                replaced: Mutex::new(None),
            }))))
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A call on this connection ran out of time (see [`SingleHandle`],
    /// [`ClusterHandle`]).
    pub fn timed_out(&self) {
        match self {
            Self::Single(h) => h.suspect(),
            Self::Cluster(h) => h.suspect(),
        }
    }
}

/// The `EVAL <source> ...` equivalent of an `EVALSHA` of one of our scripts.
fn eval_instead(cmd: &Cmd) -> Option<Cmd> {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(b) => Some(b),
        _ => None,
    });
    if !args.next()??.eq_ignore_ascii_case(b"EVALSHA") {
        return None;
    }
    let sha = std::str::from_utf8(args.next()??).ok()?;
    let mut eval = redis::cmd("EVAL");
    eval.arg(super::scripts::source_by_sha(sha)?);
    for a in args {
        eval.arg(a?);
    }
    Some(eval)
}

fn is_noscript(r: &redis::RedisResult<Value>) -> bool {
    let noscript = Some(ServerErrorKind::NoScript);
    match r {
        Ok(Value::ServerError(e)) => e.kind() == noscript,
        Err(e) => e.kind() == ErrorKind::Server(ServerErrorKind::NoScript),
        Ok(_) => false,
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(h) => Box::pin(async move {
                let r = h.current().req_packed_command(cmd).await;
                if r.as_ref().is_err_and(redis::RedisError::is_timeout) {
                    h.suspect();
                }
                r
            }),
            Self::Cluster(h) => Box::pin(async move {
                let mut c = h.current();
                let mut r = c.req_packed_command(cmd).await;
                if is_noscript(&r) {
                    if let Some(eval) = eval_instead(cmd) {
                        tracing::info!("NOSCRIPT from a cluster node (restarted or promoted): sending the script with EVAL");
                        r = c.req_packed_command(&eval).await;
                    }
                }
                if r.as_ref().is_err_and(suspicious) {
                    h.suspect();
                }
                r
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(h) => Box::pin(async move {
                let r = h.current().req_packed_commands(cmd, offset, count).await;
                if r.as_ref().is_err_and(redis::RedisError::is_timeout) {
                    h.suspect();
                }
                r
            }),
            Self::Cluster(h) => Box::pin(async move {
                let r = h.current().req_packed_commands(cmd, offset, count).await;
                if r.as_ref().is_err_and(suspicious) {
                    h.suspect();
                }
                r
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(h) => h.current().get_db(),
            Self::Cluster(h) => h.current().get_db(),
        }
    }
}
