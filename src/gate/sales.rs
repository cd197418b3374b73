//! A sale's state in Redis: read it (giving back expired holds on the
//! way), create or update its configuration, rebuild it from Postgres
//! after Redis lost it, and the index of sales the background tasks walk.

use redis::AsyncCommands;

use super::{keys, Gate, GateError, ScriptName};
use crate::domain::{Admission, ConfigureOutcome, QueueState, SaleConfig, SaleState, Steering};
use crate::ids::SaleId;
use crate::telemetry::chain;

/// How `configure.lua` treats a sale without Redis state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConfigureMode {
    /// Create it.
    Upsert,
    /// The sale is known to Postgres: no state means lost state
    /// ([`GateError::NotLoaded`]), never a fresh sale.
    Update,
}

impl ConfigureMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Upsert => "upsert",
            Self::Update => "update",
        }
    }
}

fn opt(v: Option<i64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}

/// The configuration as `configure.lua` and `load.lua` take it, in the
/// order of `CONFIG_FIELDS` in `lua/lib.lua`: stock, limit, hold ttl, max
/// hold, starts, ends, product, admission, admit rate, window, queue opens.
fn config_args(inv: &mut redis::ScriptInvocation<'_>, cfg: &SaleConfig) {
    let (rate, window, opens) = match &cfg.admission {
        Admission::Open => (0, 0, None),
        Admission::Queue {
            per_sec,
            window_ms,
            opens_ms,
        } => (*per_sec, *window_ms, *opens_ms),
    };
    inv.arg(cfg.stock)
        .arg(cfg.per_user_limit)
        .arg(cfg.hold_ttl_ms)
        .arg(cfg.max_hold_ms)
        .arg(opt(cfg.starts_ms))
        .arg(opt(cfg.ends_ms))
        .arg(cfg.product_id.as_deref().unwrap_or(""))
        .arg(cfg.admission.as_str())
        .arg(rate)
        .arg(window)
        .arg(opt(opens));
}

impl Gate {
    /// Gives back expired holds (a bounded batch) and reports the sale.
    pub async fn sweep(&self, sale: &SaleId) -> Result<SaleState, GateError> {
        let k = self.keys(sale);
        let mut inv = self.prepare(ScriptName::Sweep);
        inv.key(k.sale())
            .key(k.holds())
            .key(k.events())
            .key(k.queue())
            .arg(k.base())
            .arg(self.opts.sweep_batch);
        let r = self.invoke(ScriptName::Sweep, &inv).await?;
        if r.tag()? != "ok" {
            return Err(r.unexpected());
        }
        // {'ok', released, now, sold, held, version, paused, joined,
        //  serving, closed, CONFIG_FIELDS...}
        const C: usize = 10;
        let admission = match r.str(C + 7)? {
            "queue" => Admission::Queue {
                per_sec: r.u32(C + 8)?,
                window_ms: r.int(C + 9)?,
                opens_ms: r.opt_int(C + 10)?,
            },
            _ => Admission::Open,
        };
        let queued = matches!(admission, Admission::Queue { .. });
        Ok(SaleState {
            released: r.int(1)?,
            now_ms: r.int(2)?,
            sold: r.int(3)?,
            held: r.int(4)?,
            version: r.int(5)?,
            paused: r.int(6)? == 1,
            closed_ms: r.opt_int(9)?,
            queue: queued
                .then(|| {
                    Ok::<_, GateError>(QueueState {
                        joined: u64::try_from(r.int(7)?).unwrap_or(0),
                        serving: u64::try_from(r.int(8)?).unwrap_or(0),
                    })
                })
                .transpose()?,
            config: SaleConfig {
                stock: r.int(C)?,
                per_user_limit: r.u32(C + 1)?,
                hold_ttl_ms: r.int(C + 2)?,
                max_hold_ms: r.int(C + 3)?,
                starts_ms: r.opt_int(C + 4)?,
                ends_ms: r.opt_int(C + 5)?,
                product_id: r.opt_str(C + 6)?,
                admission,
            },
        })
    }

    /// Creates or updates a sale. `must_exist`: the sale is known to
    /// Postgres, so missing Redis state means lost state
    /// ([`GateError::NotLoaded`]), never a fresh sale. `epoch`: the sale's
    /// epoch in Postgres (0 for a new sale), given to a state created here.
    pub async fn configure(
        &self,
        sale: &SaleId,
        cfg: &SaleConfig,
        must_exist: bool,
        epoch: i64,
    ) -> Result<ConfigureOutcome, GateError> {
        let mode = if must_exist {
            ConfigureMode::Update
        } else {
            ConfigureMode::Upsert
        };
        let k = self.keys(sale);
        let mut inv = self.prepare(ScriptName::Configure);
        inv.key(k.sale()).key(k.holds()).key(k.events());
        inv.arg(k.base()).arg(sale.as_str()).arg(mode.as_str());
        config_args(&mut inv, cfg);
        inv.arg(self.opts.sweep_batch).arg(epoch);
        let r = self.invoke(ScriptName::Configure, &inv).await?;
        let outcome = match r.tag()? {
            "created" => ConfigureOutcome::Created { epoch: r.int(3)? },
            "updated" => ConfigureOutcome::Updated { epoch: r.int(3)? },
            "below" => {
                return Ok(ConfigureOutcome::BelowCommitted {
                    sold: r.int(1)?,
                    held: r.int(2)?,
                })
            }
            "closed" => return Ok(ConfigureOutcome::Closed { ends_ms: r.int(1)? }),
            _ => return Err(r.unexpected()),
        };
        self.index(sale).await;
        Ok(outcome)
    }

    /// Rebuilds a lost sale from its durable record: configuration, what
    /// admins steered (paused, closed), units sold and each buyer's
    /// confirmed total, in a new `epoch`. Returns false when another
    /// instance rebuilt it first (nothing changed).
    pub async fn load(
        &self,
        sale: &SaleId,
        cfg: &SaleConfig,
        steering: Steering,
        sold: i64,
        bought: &[(String, i64)],
        epoch: i64,
    ) -> Result<bool, GateError> {
        let k = self.keys(sale);
        let mut inv = self.prepare(ScriptName::Load);
        inv.key(k.sale())
            .key(k.holds())
            .key(k.events())
            .key(k.queue());
        inv.arg(k.base()).arg(sale.as_str());
        config_args(&mut inv, cfg);
        inv.arg(sold)
            .arg(epoch)
            .arg(if steering.paused { "1" } else { "0" })
            .arg(opt(steering.closed_ms));
        for (user, qty) in bought {
            inv.arg(user.as_str()).arg(*qty);
        }
        let r = self.invoke(ScriptName::Load, &inv).await?;
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
        let mut inv = self.prepare(ScriptName::Unload);
        inv.key(self.keys(sale).sale()).arg(epoch);
        let r = self.invoke(ScriptName::Unload, &inv).await?;
        match r.tag()? {
            "unloaded" => Ok(true),
            "kept" => Ok(false),
            _ => Err(r.unexpected()),
        }
    }

    /// Adds the sale to the index the sweeper and the worker walk. Best
    /// effort: on Redis Cluster the index lives on one node, and while that
    /// node is away a sale on another node must still be created and
    /// served; the background tasks also find sales in Postgres (see
    /// the directory of the background tasks).
    async fn index(&self, sale: &SaleId) {
        let mut conn = self.conn.clone();
        let added: Result<i64, GateError> = self
            .bounded(conn.sadd(keys::sales_index(&self.opts.prefix), sale.as_str()))
            .await;
        if let Err(e) = added {
            tracing::warn!(sale = %sale, error = %chain(&e), "could not add the sale to the Redis sales index; the background tasks find it in Postgres");
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
}
