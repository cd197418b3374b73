//! A sale's state in Redis: read it (giving back expired holds on the
//! way), create or update its configuration, rebuild it from Postgres
//! after Redis lost it, and the index of sales the background tasks walk.

use redis::AsyncCommands;

use super::{keys, Gate, GateError, ScriptName};
use crate::domain::{
    Admission, ConfigureOutcome, Item, ItemBelow, ItemState, QueueState, SaleConfig, SaleState,
    Steering,
};
use crate::ids::SaleId;
use crate::telemetry::chain;

/// What a lost sale is rebuilt from: its configuration, what admins
/// steered (paused, closed), units sold and each buyer's confirmed total,
/// and for a sale of several items each item's units sold (by sku) and each
/// buyer's total of each item with a cap (sku, user, units).
#[derive(Debug, Clone, Copy)]
pub struct Durable<'a> {
    pub config: &'a SaleConfig,
    pub steering: Steering,
    pub sold: i64,
    pub bought: &'a [(String, i64)],
    pub item_sold: &'a std::collections::HashMap<String, i64>,
    pub item_bought: &'a [(String, String, i64)],
}

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
        // The items, flat: sku, stock, cap, sold, held.
        let flat = r.strings(C + 11)?;
        let num = |s: &str| {
            s.parse::<i64>().map_err(|_| GateError::Protocol {
                script: "sweep",
                detail: format!("item counter {s:?} is not an integer"),
            })
        };
        let items = flat
            .chunks_exact(5)
            .map(|f| {
                Ok(ItemState {
                    item: Item {
                        sku: f[0].clone(),
                        stock: num(&f[1])?,
                        per_user_limit: f[2].parse().ok(),
                    },
                    sold: num(&f[3])?,
                    held: num(&f[4])?,
                })
            })
            .collect::<Result<Vec<_>, GateError>>()?;
        let config_items = items.iter().map(|i| i.item.clone()).collect();
        Ok(SaleState {
            items,
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
                items: config_items,
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
        inv.arg(self.opts.sweep_batch)
            .arg(epoch)
            .arg(if cfg.items.is_empty() { "0" } else { "1" });
        for it in &cfg.items {
            inv.arg(it.sku.as_str())
                .arg(it.stock)
                .arg(it.per_user_limit.map(|n| n.to_string()).unwrap_or_default());
        }
        let r = self.invoke(ScriptName::Configure, &inv).await?;
        let outcome = match r.tag()? {
            "created" => ConfigureOutcome::Created { epoch: r.int(3)? },
            "updated" => ConfigureOutcome::Updated { epoch: r.int(3)? },
            "below" => {
                let mut items = Vec::new();
                let mut i = 3;
                while i + 3 < r.len() {
                    items.push(ItemBelow {
                        sku: r.str(i)?.to_string(),
                        stock: r.int(i + 1)?,
                        sold: r.int(i + 2)?,
                        held: r.int(i + 3)?,
                    });
                    i += 4;
                }
                return Ok(ConfigureOutcome::BelowCommitted {
                    sold: r.int(1)?,
                    held: r.int(2)?,
                    items,
                });
            }
            "shape" => {
                return Ok(ConfigureOutcome::ShapeChange {
                    sold: r.int(1)?,
                    held: r.int(2)?,
                })
            }
            "cap_added" => {
                return Ok(ConfigureOutcome::CapAdded {
                    sku: r.str(1)?.to_string(),
                })
            }
            "closed" => return Ok(ConfigureOutcome::Closed { ends_ms: r.int(1)? }),
            _ => return Err(r.unexpected()),
        };
        self.index(sale).await;
        Ok(outcome)
    }

    /// Rebuilds a lost sale from its durable record (`r`), in a new
    /// `epoch`. Returns false when another instance rebuilt it first
    /// (nothing changed).
    pub async fn load(
        &self,
        sale: &SaleId,
        r: &Durable<'_>,
        epoch: i64,
    ) -> Result<bool, GateError> {
        let Durable {
            config: cfg,
            steering,
            sold,
            bought,
            item_sold,
            item_bought,
        } = *r;
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
        inv.arg(cfg.items.len());
        for it in &cfg.items {
            inv.arg(it.sku.as_str())
                .arg(it.stock)
                .arg(it.per_user_limit.map(|n| n.to_string()).unwrap_or_default())
                .arg(item_sold.get(&it.sku).copied().unwrap_or(0));
        }
        inv.arg(item_bought.len());
        for (sku, user, qty) in item_bought {
            inv.arg(sku.as_str()).arg(user.as_str()).arg(*qty);
        }
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
