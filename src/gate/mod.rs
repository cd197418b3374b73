//! The Redis side: every decision is one atomic Lua script on one sale's
//! keys. Handlers never see Redis types: they get the typed outcomes of
//! [`reply`].

pub mod conn;
pub mod keys;
pub mod reply;
pub mod scripts;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::{AsyncCommands, ErrorKind, RedisError, ServerErrorKind, Value};

pub use conn::RedisConn;
pub use keys::SaleKeys;
pub use reply::{ConfigureOutcome, Record, RecordOutcome, ReserveOutcome, SaleState, Status};

use crate::ids::{IdempotencyKey, SaleId, UserId};
use reply::Reply;
use scripts::Scripts;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The sale has no state in Redis: unknown, or lost with Redis' data.
    #[error("the sale has no state in Redis")]
    NotLoaded,
    #[error("Redis refused the write: out of memory (maxmemory reached)")]
    OutOfMemory(#[source] RedisError),
    #[error("Redis is unavailable")]
    Unavailable(#[source] RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis script error")]
    Script(#[source] RedisError),
    #[error("unexpected reply from {script}.lua: {detail}")]
    Protocol {
        script: &'static str,
        detail: String,
    },
}

impl From<RedisError> for GateError {
    fn from(e: RedisError) -> Self {
        if e.code() == Some("OOM") {
            return Self::OutOfMemory(e);
        }
        let transient = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_cluster_error()
            || matches!(e.code(), Some("BUSY" | "NOREPLICAS" | "MISCONF"))
            || matches!(
                e.kind(),
                ErrorKind::Io
                    | ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ReadOnly
                            | ServerErrorKind::Moved
                            | ServerErrorKind::Ask
                    )
            )
            || cluster_refused_mid_script(&e);
        if transient {
            Self::Unavailable(e)
        } else {
            Self::Script(e)
        }
    }
}

/// A cluster node stopped a script at a key that is not (or no longer)
/// served here: its slot is migrating, or the cluster is down. The scripts
/// read a key before they write it, so such a stop leaves every step it
/// completed whole; the call is safe to retry once the slot has settled.
fn cluster_refused_mid_script(e: &RedisError) -> bool {
    e.detail().is_some_and(|d| {
        d.contains("Script attempted to access a non local key")
            || d.contains("while the cluster is down")
    })
}

#[derive(Clone, Debug)]
pub struct GateOptions {
    pub prefix: String,
    /// Hard bound on one gate call (connect, NOSCRIPT reload included).
    pub deadline: Duration,
    pub sweep_batch: u32,
    pub record_ttl: Duration,
    pub idempotency_ttl: Duration,
}

/// The configuration of a sale, in the units the scripts use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleConfig {
    pub stock: i64,
    pub per_user_limit: u32,
    pub hold_ttl_ms: i64,
    pub max_hold_ms: i64,
    pub starts_ms: Option<i64>,
    pub ends_ms: Option<i64>,
    pub product_id: Option<String>,
}

/// A sale as Redis holds it, read in one step (see `lua/inspect.lua`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    pub last_event_id: String,
    pub stock: i64,
    pub per_user_limit: i64,
    pub sold: i64,
    pub held: i64,
    /// Per buyer: units bought (`b:`) and held (`u:`) as the counters say.
    pub bought: BTreeMap<String, i64>,
    pub held_by: BTreeMap<String, i64>,
    /// Per buyer: units of held, unexpired reservations.
    pub live_holds: BTreeMap<String, i64>,
    /// Confirms not yet written to Postgres.
    pub pending_confirms: Vec<PendingConfirm>,
    /// Redis' clock when it looked (ms).
    pub now_ms: i64,
}

/// A `confirmed` event still in a sale's stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingConfirm {
    pub rid: String,
    pub user: String,
    pub qty: i64,
    /// When the confirm ran (ms, Redis clock).
    pub at_ms: i64,
    pub epoch: i64,
}

/// Who acts on a reservation: its buyer, or the admin (payment service).
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    Admin,
    Buyer(&'a UserId),
}

impl Actor<'_> {
    fn arg(&self) -> &str {
        match self {
            Actor::Admin => "",
            Actor::Buyer(u) => u.as_str(),
        }
    }
}

#[derive(Clone)]
pub struct Gate {
    conn: RedisConn,
    scripts: Arc<Scripts>,
    opts: Arc<GateOptions>,
}

fn opt(v: Option<i64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

impl Gate {
    pub fn new(conn: RedisConn, opts: GateOptions) -> Self {
        Self {
            conn,
            scripts: Arc::new(Scripts::new()),
            opts: Arc::new(opts),
        }
    }

    pub fn keys(&self, sale: &SaleId) -> SaleKeys {
        SaleKeys::new(&self.opts.prefix, sale)
    }

    pub fn prefix(&self) -> &str {
        &self.opts.prefix
    }

    /// A clone of the shared connection, for the few plain commands.
    pub fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, GateError> {
        match tokio::time::timeout(self.opts.deadline, fut).await {
            Ok(r) => r.map_err(GateError::from),
            Err(_) => {
                // On a cluster, a stale slot map (a hung primary) looks like this.
                self.conn.timed_out();
                Err(GateError::Timeout(self.opts.deadline))
            }
        }
    }

    async fn invoke(
        &self,
        name: &'static str,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<Reply, GateError> {
        let mut conn = self.conn.clone();
        let start = std::time::Instant::now();
        let v: Value = self.bounded(inv.invoke_async(&mut conn)).await?;
        crate::metrics::script_latency(name, start.elapsed().as_secs_f64());
        let reply = Reply::new(name, v)?;
        if reply.tag()? == "not_loaded" {
            return Err(GateError::NotLoaded);
        }
        Ok(reply)
    }

    /// Loads every script into Redis (a warm-up; `invoke` reloads anyway).
    pub async fn load_scripts(&self) -> Result<(), GateError> {
        for script in self.scripts.all() {
            let mut conn = self.conn.clone();
            self.bounded(script.prepare_invoke().load_async(&mut conn))
                .await?;
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), GateError> {
        let mut conn = self.conn.clone();
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }

    /// Holds `qty` units for `user`, counting the hold against the buyer's
    /// cap of `active_cap` simultaneous holds across sales (0: no cap). On
    /// one Redis the reserve script counts it itself, before its first
    /// write. On Redis Cluster the buyer's set is in another slot than the
    /// sale's keys: `admit.lua` counts the granted hold there, and a hold
    /// over the cap is cancelled again. Either way the answer over the cap
    /// is [`ReserveOutcome::ActiveHoldsFull`].
    ///
    /// Fail closed: on Redis Cluster, a hold whose count cannot be taken
    /// (the buyer's node is away) is given back and the call fails (503):
    /// a buyer never holds a hold the cap does not see. A replayed hold is
    /// counted too (a no-op when it is already), so a hold that was granted
    /// when both nodes failed cannot be fetched uncounted by a retry.
    pub async fn reserve(
        &self,
        sale: &SaleId,
        rid: &str,
        user: &UserId,
        qty: u32,
        idem: Option<&IdempotencyKey>,
        active_cap: u32,
    ) -> Result<ReserveOutcome, GateError> {
        if !self.conn.is_cluster() {
            return self
                .reserve_script(sale, rid, user, qty, idem, active_cap)
                .await;
        }
        let outcome = self.reserve_script(sale, rid, user, qty, idem, 0).await?;
        let held = match &outcome {
            ReserveOutcome::Held {
                rid, expires_ms, ..
            }
            | ReserveOutcome::Replay {
                rid,
                status: Status::Held,
                expires_ms,
                ..
            } if active_cap > 0 => Some((rid.clone(), *expires_ms)),
            _ => None,
        };
        let Some((held_rid, expires_ms)) = held else {
            return Ok(outcome);
        };
        match self
            .admit_hold(user, sale, &held_rid, expires_ms, active_cap)
            .await
        {
            Ok(None) => Ok(outcome),
            Ok(Some(earliest_ms)) => {
                self.cancel(sale, &held_rid, Actor::Admin).await?;
                Ok(ReserveOutcome::ActiveHoldsFull { earliest_ms })
            }
            Err(e) => {
                // The count may still land (a stalled node runs what it was
                // sent once it resumes): take it back behind it, in the
                // background, so the 503 is not delayed. Should this lose
                // the race, the buyer is counted one hold too many until
                // that hold's deadline: the safe side of the cap.
                let (gate, user, sale_id, rid) =
                    (self.clone(), user.clone(), sale.clone(), held_rid.clone());
                tokio::spawn(async move {
                    let _ = gate.forget_hold(user.as_str(), &sale_id, &rid).await;
                });
                match self.cancel(sale, &held_rid, Actor::Admin).await {
                    Ok(_) => {
                        tracing::warn!(sale = %sale, error = %crate::error::chain(&e), "could not count a hold against the buyer's active-hold cap: given back")
                    }
                    Err(c) => {
                        tracing::error!(sale = %sale, reservation = %held_rid, error = %crate::error::chain(&e), cancel_error = %crate::error::chain(&c), "could neither count a hold against the buyer's active-hold cap nor give it back: it lasts until its deadline, uncounted")
                    }
                }
                Err(e)
            }
        }
    }

    /// `reserve.lua`; `active_cap` > 0 names the buyer's active-hold set
    /// next to the sale's keys (one Redis only).
    async fn reserve_script(
        &self,
        sale: &SaleId,
        rid: &str,
        user: &UserId,
        qty: u32,
        idem: Option<&IdempotencyKey>,
        active_cap: u32,
    ) -> Result<ReserveOutcome, GateError> {
        let k = self.keys(sale);
        let idem_key = match idem {
            Some(key) => k.idempotency(user.as_str(), key.as_str()),
            None => k.sale(),
        };
        let (active_key, member) = if active_cap > 0 {
            (
                keys::user_holds(&self.opts.prefix, user.as_str()),
                keys::user_hold_member(sale.as_str(), rid),
            )
        } else {
            (k.sale(), String::new())
        };
        let mut inv = self.scripts.reserve.prepare_invoke();
        inv.key(k.sale())
            .key(k.holds())
            .key(k.events())
            .key(k.reservation(rid))
            .key(k.hold(rid))
            .key(idem_key)
            .key(active_key);
        inv.arg(k.base())
            .arg(rid)
            .arg(user.as_str())
            .arg(qty)
            .arg(self.opts.sweep_batch)
            .arg(if idem.is_some() { "1" } else { "0" })
            .arg(ms(self.opts.idempotency_ttl))
            .arg(ms(self.opts.record_ttl))
            .arg(active_cap)
            .arg(member);
        let r = self.invoke("reserve", &inv).await?;
        Ok(match r.tag()? {
            "ok" => ReserveOutcome::Held {
                rid: r.str(1)?.to_string(),
                qty: r.u32(2)?,
                expires_ms: r.int(3)?,
            },
            "replay" => ReserveOutcome::Replay {
                rid: r.str(1)?.to_string(),
                qty: r.u32(2)?,
                status: r.status(3)?,
                expires_ms: r.int(4)?,
            },
            "idem_mismatch" => ReserveOutcome::IdempotencyMismatch {
                original_qty: r.u32(1)?,
            },
            "not_started" => ReserveOutcome::NotStarted {
                starts_ms: r.int(1)?,
            },
            "ended" => ReserveOutcome::Ended { ends_ms: r.int(1)? },
            "over_limit" => ReserveOutcome::OverLimit { limit: r.u32(1)? },
            "user_limit" => ReserveOutcome::UserLimit {
                limit: r.u32(1)?,
                held: r.u32(2)?,
                bought: r.u32(3)?,
            },
            "sold_out" => ReserveOutcome::SoldOut {
                available: r.int(1)?,
            },
            "busy" => ReserveOutcome::ActiveHoldsFull {
                earliest_ms: r.int(1)?,
            },
            _ => return Err(r.unexpected()),
        })
    }

    async fn transition(
        &self,
        name: &'static str,
        script: &redis::Script,
        sale: &SaleId,
        rid: &str,
        actor: Actor<'_>,
        last: String,
    ) -> Result<RecordOutcome, GateError> {
        let k = self.keys(sale);
        let mut inv = script.prepare_invoke();
        inv.key(k.sale())
            .key(k.holds())
            .key(k.events())
            .key(k.reservation(rid))
            .key(k.hold(rid));
        inv.arg(k.base()).arg(rid).arg(actor.arg());
        if name != "cancel" {
            inv.arg(last);
        }
        let r = self.invoke(name, &inv).await?;
        Ok(match r.tag()? {
            "ok" => RecordOutcome::Done(r.record()?),
            "replay" => RecordOutcome::Replay(r.record()?),
            "conflict" => RecordOutcome::Conflict(r.record()?),
            "hold_limit" => RecordOutcome::HoldLimit(r.record()?),
            "not_found" => RecordOutcome::NotFound,
            "forbidden" => RecordOutcome::Forbidden,
            _ => return Err(r.unexpected()),
        })
    }

    pub async fn confirm(
        &self,
        sale: &SaleId,
        rid: &str,
        actor: Actor<'_>,
    ) -> Result<RecordOutcome, GateError> {
        self.transition(
            "confirm",
            &self.scripts.confirm,
            sale,
            rid,
            actor,
            ms(self.opts.record_ttl).to_string(),
        )
        .await
    }

    pub async fn cancel(
        &self,
        sale: &SaleId,
        rid: &str,
        actor: Actor<'_>,
    ) -> Result<RecordOutcome, GateError> {
        self.transition(
            "cancel",
            &self.scripts.cancel,
            sale,
            rid,
            actor,
            String::new(),
        )
        .await
    }

    /// `by` = None extends by the sale's hold ttl.
    pub async fn extend(
        &self,
        sale: &SaleId,
        rid: &str,
        actor: Actor<'_>,
        by: Option<Duration>,
    ) -> Result<RecordOutcome, GateError> {
        self.transition(
            "extend",
            &self.scripts.extend,
            sale,
            rid,
            actor,
            by.map(|d| ms(d).to_string()).unwrap_or_default(),
        )
        .await
    }

    /// Reads one reservation (no side effect). Ownership is the caller's check.
    pub async fn lookup(&self, sale: &SaleId, rid: &str) -> Result<Option<Record>, GateError> {
        let k = self.keys(sale);
        let mut inv = self.scripts.lookup.prepare_invoke();
        inv.key(k.sale())
            .key(k.reservation(rid))
            .arg(k.base())
            .arg(rid);
        let r = self.invoke("lookup", &inv).await?;
        match r.tag()? {
            "ok" => Ok(Some(r.record()?)),
            "not_found" => Ok(None),
            _ => Err(r.unexpected()),
        }
    }

    /// Gives back expired holds (a bounded batch) and reports the sale.
    pub async fn sweep(&self, sale: &SaleId) -> Result<SaleState, GateError> {
        let k = self.keys(sale);
        let mut inv = self.scripts.sweep.prepare_invoke();
        inv.key(k.sale())
            .key(k.holds())
            .key(k.events())
            .arg(k.base())
            .arg(self.opts.sweep_batch);
        let r = self.invoke("sweep", &inv).await?;
        if r.tag()? != "ok" {
            return Err(r.unexpected());
        }
        Ok(SaleState {
            released: r.int(1)?,
            stock: r.int(2)?,
            per_user_limit: r.u32(3)?,
            hold_ttl_ms: r.int(4)?,
            max_hold_ms: r.int(5)?,
            starts_ms: r.opt_int(6)?,
            ends_ms: r.opt_int(7)?,
            product_id: r.opt_str(8)?,
            sold: r.int(9)?,
            held: r.int(10)?,
            now_ms: r.int(11)?,
            created_ms: r.int(12)?,
            updated_ms: r.int(13)?,
        })
    }

    /// `must_exist`: the sale is known to Postgres, so missing Redis state
    /// means lost state ([`GateError::NotLoaded`]), never a fresh sale.
    /// `epoch`: the sale's epoch in Postgres (0 for a new sale), given to
    /// a state created here.
    pub async fn configure(
        &self,
        sale: &SaleId,
        cfg: &SaleConfig,
        must_exist: bool,
        epoch: i64,
    ) -> Result<ConfigureOutcome, GateError> {
        let k = self.keys(sale);
        let mut inv = self.scripts.configure.prepare_invoke();
        inv.key(k.sale()).key(k.holds()).key(k.events());
        inv.arg(k.base())
            .arg(sale.as_str())
            .arg(if must_exist { "update" } else { "upsert" })
            .arg(cfg.stock)
            .arg(cfg.per_user_limit)
            .arg(cfg.hold_ttl_ms)
            .arg(cfg.max_hold_ms)
            .arg(opt(cfg.starts_ms))
            .arg(opt(cfg.ends_ms))
            .arg(cfg.product_id.as_deref().unwrap_or(""))
            .arg(self.opts.sweep_batch)
            .arg(epoch);
        let r = self.invoke("configure", &inv).await?;
        let outcome = match r.tag()? {
            "created" => ConfigureOutcome::Created { epoch: r.int(3)? },
            "updated" => ConfigureOutcome::Updated { epoch: r.int(3)? },
            "below" => {
                return Ok(ConfigureOutcome::BelowCommitted {
                    sold: r.int(1)?,
                    held: r.int(2)?,
                })
            }
            _ => return Err(r.unexpected()),
        };
        self.index(sale).await;
        Ok(outcome)
    }

    /// Rebuilds a lost sale from its durable record: configuration, units
    /// sold and each buyer's confirmed total, in a new `epoch`. Returns
    /// false when another instance rebuilt it first (nothing changed).
    pub async fn load(
        &self,
        sale: &SaleId,
        cfg: &SaleConfig,
        sold: i64,
        bought: &[(String, i64)],
        epoch: i64,
    ) -> Result<bool, GateError> {
        let k = self.keys(sale);
        let mut inv = self.scripts.load.prepare_invoke();
        inv.key(k.sale()).key(k.holds()).key(k.events());
        inv.arg(k.base())
            .arg(sale.as_str())
            .arg(cfg.stock)
            .arg(cfg.per_user_limit)
            .arg(cfg.hold_ttl_ms)
            .arg(cfg.max_hold_ms)
            .arg(opt(cfg.starts_ms))
            .arg(opt(cfg.ends_ms))
            .arg(cfg.product_id.as_deref().unwrap_or(""))
            .arg(sold)
            .arg(epoch);
        for (user, qty) in bought {
            inv.arg(user.as_str()).arg(*qty);
        }
        let mut conn = self.conn.clone();
        let v: Value = self.bounded(inv.invoke_async(&mut conn)).await?;
        let r = Reply::new("load", v)?;
        let loaded = match r.tag()? {
            "loaded" => true,
            "exists" => false,
            _ => return Err(r.unexpected()),
        };
        self.index(sale).await;
        Ok(loaded)
    }

    /// Takes back a rebuild of `epoch` that Postgres did not commit (see
    /// `lua/unload.lua`). Returns true when the state was removed.
    pub async fn unload(&self, sale: &SaleId, epoch: i64) -> Result<bool, GateError> {
        let k = self.keys(sale);
        let mut inv = self.scripts.unload.prepare_invoke();
        inv.key(k.sale()).arg(epoch);
        let mut conn = self.conn.clone();
        let v: Value = self.bounded(inv.invoke_async(&mut conn)).await?;
        let r = Reply::new("unload", v)?;
        match r.tag()? {
            "unloaded" => Ok(true),
            "kept" => Ok(false),
            _ => Err(r.unexpected()),
        }
    }

    /// Counts a granted hold against the buyer's cap of active holds across
    /// sales (Redis Cluster; see [`Self::reserve`]). `Ok(None)` admitted,
    /// `Ok(Some(ms))` refused (the earliest of the buyer's holds ends at `ms`).
    async fn admit_hold(
        &self,
        user: &UserId,
        sale: &SaleId,
        rid: &str,
        deadline_ms: i64,
        cap: u32,
    ) -> Result<Option<i64>, GateError> {
        self.user_hold_call(user, sale, rid, deadline_ms, cap, "add")
            .await
    }

    /// Moves an extended hold's deadline in the buyer's set.
    pub async fn refresh_hold(
        &self,
        user: &UserId,
        sale: &SaleId,
        rid: &str,
        deadline_ms: i64,
    ) -> Result<(), GateError> {
        self.user_hold_call(user, sale, rid, deadline_ms, 0, "refresh")
            .await
            .map(|_| ())
    }

    async fn user_hold_call(
        &self,
        user: &UserId,
        sale: &SaleId,
        rid: &str,
        deadline_ms: i64,
        cap: u32,
        mode: &str,
    ) -> Result<Option<i64>, GateError> {
        let mut inv = self.scripts.admit.prepare_invoke();
        inv.key(keys::user_holds(&self.opts.prefix, user.as_str()))
            .arg(keys::user_hold_member(sale.as_str(), rid))
            .arg(deadline_ms)
            .arg(cap)
            .arg(mode);
        let mut conn = self.conn.clone();
        let v: Value = self.bounded(inv.invoke_async(&mut conn)).await?;
        let r = Reply::new("admit", v)?;
        match r.tag()? {
            "ok" => Ok(None),
            "full" => Ok(Some(r.int(1)?)),
            _ => Err(r.unexpected()),
        }
    }

    /// A hold ended (confirmed, cancelled): it no longer counts for its buyer.
    pub async fn forget_hold(&self, user: &str, sale: &SaleId, rid: &str) -> Result<(), GateError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .bounded(conn.zrem(
                keys::user_holds(&self.opts.prefix, user),
                keys::user_hold_member(sale.as_str(), rid),
            ))
            .await?;
        Ok(())
    }

    /// One consistent read of a sale, for reconciliation.
    pub async fn inspect(&self, sale: &SaleId) -> Result<Inspection, GateError> {
        let k = self.keys(sale);
        let mut inv = self.scripts.inspect.prepare_invoke();
        inv.key(k.sale())
            .key(k.holds())
            .key(k.events())
            .arg(k.base());
        let r = self.invoke("inspect", &inv).await?;
        if r.tag()? != "ok" {
            return Err(r.unexpected());
        }
        let fields = r.strings(3)?;
        let mut insp = Inspection {
            last_event_id: r.str(2)?.to_string(),
            now_ms: r.int(1)?,
            ..Inspection::default()
        };
        for pair in fields.chunks(2) {
            let [f, v] = pair else { continue };
            let n: i64 = v.parse().unwrap_or(0);
            match f.as_str() {
                "sold" => insp.sold = n,
                "held" => insp.held = n,
                "stock" => insp.stock = n,
                "limit" => insp.per_user_limit = n,
                _ => {
                    if let Some(u) = f.strip_prefix("b:") {
                        insp.bought.insert(u.to_string(), n);
                    } else if let Some(u) = f.strip_prefix("u:") {
                        insp.held_by.insert(u.to_string(), n);
                    }
                }
            }
        }
        for pair in r.strings(4)?.chunks(2) {
            if let [u, q] = pair {
                *insp.live_holds.entry(u.clone()).or_default() += q.parse::<i64>().unwrap_or(0);
            }
        }
        for confirm in r.strings(5)?.chunks(5) {
            if let [rid, user, qty, at, epoch] = confirm {
                insp.pending_confirms.push(PendingConfirm {
                    rid: rid.clone(),
                    user: user.clone(),
                    qty: qty.parse().unwrap_or(0),
                    at_ms: at.parse().unwrap_or(0),
                    epoch: epoch.parse().unwrap_or(0),
                });
            }
        }
        Ok(insp)
    }

    /// Sets a sale's counters, unless it changed since `seen` was read.
    /// Returns false when it changed (inspect again).
    pub async fn repair(
        &self,
        sale: &SaleId,
        seen: &Inspection,
        sold: i64,
        held: i64,
        bought: &BTreeMap<String, i64>,
        held_by: &BTreeMap<String, i64>,
    ) -> Result<bool, GateError> {
        let k = self.keys(sale);
        let mut inv = self.scripts.repair.prepare_invoke();
        inv.key(k.sale()).key(k.holds()).key(k.events());
        inv.arg(k.base())
            .arg(&seen.last_event_id)
            .arg(sold)
            .arg(held)
            .arg(bought.len());
        for (u, q) in bought {
            inv.arg(u.as_str()).arg(*q);
        }
        for (u, q) in held_by {
            inv.arg(u.as_str()).arg(*q);
        }
        let r = self.invoke("repair", &inv).await?;
        match r.tag()? {
            "repaired" => Ok(true),
            "changed" => Ok(false),
            _ => Err(r.unexpected()),
        }
    }

    /// Adds the sale to the index the sweeper and the worker walk. Best
    /// effort: on Redis Cluster the index lives on one node, and while that
    /// node is away a sale on another node must still be created and
    /// served; the background tasks also find sales in Postgres (see
    /// `crate::directory`).
    async fn index(&self, sale: &SaleId) {
        let mut conn = self.conn.clone();
        let added: Result<i64, GateError> = self
            .bounded(conn.sadd(keys::sales_index(&self.opts.prefix), sale.as_str()))
            .await;
        if let Err(e) = added {
            tracing::warn!(sale = %sale, error = %crate::error::chain(&e), "could not add the sale to the Redis sales index; the background tasks find it in Postgres");
        }
    }

    /// Every sale id in the index (invalid entries skipped).
    pub async fn indexed_sales(&self) -> Result<Vec<SaleId>, GateError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = self
            .bounded(conn.smembers(keys::sales_index(&self.opts.prefix)))
            .await?;
        Ok(ids.iter().filter_map(|s| SaleId::parse(s).ok()).collect())
    }

    /// `maxmemory-policy` of the server(s), to warn about eviction.
    pub async fn eviction_policy(&self) -> Result<String, GateError> {
        let mut conn = self.conn.clone();
        let v: Vec<String> = self
            .bounded(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(v.get(1).cloned().unwrap_or_default())
    }
}
