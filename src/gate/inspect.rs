//! What `flashgate reconcile` reads and writes in Redis: one consistent
//! read of a sale (`lua/inspect.lua`), and a repair of its counters that
//! applies only if nothing happened meanwhile (`lua/repair.lua`).

use std::collections::BTreeMap;

use super::{Gate, GateError, ScriptName};
use crate::domain::item_buyer;
use crate::domain::Line;
use crate::ids::SaleId;

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
    /// A sale of several items, per sku: stock, sold and held as the
    /// item's counters say, and the units of its lines in live holds.
    pub items: BTreeMap<String, ItemCounters>,
    /// Per `<sku>/<user>` (items with their own cap): units bought (`ib:`)
    /// and held (`iu:`) as the counters say, and the units of the live
    /// holds' lines (of every item).
    pub item_bought: BTreeMap<String, i64>,
    pub item_held_by: BTreeMap<String, i64>,
    pub item_live_holds: BTreeMap<String, i64>,
    /// Confirms not yet written to Postgres.
    pub pending_confirms: Vec<PendingConfirm>,
    /// Redis' clock when it looked (ms).
    pub now_ms: i64,
}

/// What `repair` sets: the sale's sold and held, each buyer's bought and
/// held, and a sale of several items' sold and held per sku.
#[derive(Debug, Clone, Copy)]
pub struct Counters<'a> {
    pub sold: i64,
    pub held: i64,
    pub bought: &'a BTreeMap<String, i64>,
    pub held_by: &'a BTreeMap<String, i64>,
    pub items: &'a BTreeMap<String, (i64, i64)>,
    /// Per `<sku>/<user>` of the items with their own cap: (bought, held).
    pub item_buyers: &'a BTreeMap<String, (i64, i64)>,
}

/// One item's counters in Redis (`is:` `io:` `ih:`), and what its live
/// holds add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemCounters {
    pub stock: i64,
    pub sold: i64,
    pub held: i64,
    pub live_held: i64,
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
    /// Its cart, on a sale of several items.
    pub items: Vec<Line>,
}

impl Gate {
    /// One consistent read of a sale, for reconciliation.
    pub async fn inspect(&self, sale: &SaleId) -> Result<Inspection, GateError> {
        let k = self.keys(sale);
        let mut inv = self.prepare(ScriptName::Inspect);
        inv.key(k.sale())
            .key(k.holds())
            .key(k.events())
            .arg(k.base());
        let r = self.invoke(ScriptName::Inspect, &inv).await?;
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
                    let item = |p: &str| f.strip_prefix(p).filter(|s| !s.contains(':'));
                    if let Some(sku) = item("is:") {
                        insp.items.entry(sku.to_string()).or_default().stock = n;
                    } else if let Some(sku) = item("io:") {
                        insp.items.entry(sku.to_string()).or_default().sold = n;
                    } else if let Some(sku) = item("ih:") {
                        insp.items.entry(sku.to_string()).or_default().held = n;
                    } else if let Some((sku, u)) =
                        f.strip_prefix("ib:").and_then(|r| r.split_once(':'))
                    {
                        insp.item_bought.insert(item_buyer(sku, u), n);
                    } else if let Some((sku, u)) =
                        f.strip_prefix("iu:").and_then(|r| r.split_once(':'))
                    {
                        insp.item_held_by.insert(item_buyer(sku, u), n);
                    } else if let Some(u) = f.strip_prefix("b:") {
                        insp.bought.insert(u.to_string(), n);
                    } else if let Some(u) = f.strip_prefix("u:") {
                        insp.held_by.insert(u.to_string(), n);
                    }
                }
            }
        }
        for hold in r.strings(4)?.chunks(3) {
            if let [u, q, items] = hold {
                *insp.live_holds.entry(u.clone()).or_default() += q.parse::<i64>().unwrap_or(0);
                for l in Line::parse_cart(items).unwrap_or_default() {
                    *insp
                        .item_live_holds
                        .entry(item_buyer(&l.sku, u))
                        .or_default() += i64::from(l.quantity);
                    insp.items.entry(l.sku).or_default().live_held += i64::from(l.quantity);
                }
            }
        }
        for confirm in r.strings(5)?.chunks(6) {
            if let [rid, user, qty, at, epoch, items] = confirm {
                insp.pending_confirms.push(PendingConfirm {
                    rid: rid.clone(),
                    user: user.clone(),
                    qty: qty.parse().unwrap_or(0),
                    at_ms: at.parse().unwrap_or(0),
                    epoch: epoch.parse().unwrap_or(0),
                    items: Line::parse_cart(items).unwrap_or_default(),
                });
            }
        }
        Ok(insp)
    }

    /// Sets a sale's counters to `to`, unless it changed since `seen` was
    /// read. Returns false when it changed (inspect again).
    pub async fn repair(
        &self,
        sale: &SaleId,
        seen: &Inspection,
        to: &Counters<'_>,
    ) -> Result<bool, GateError> {
        let Counters {
            sold,
            held,
            bought,
            held_by,
            items,
            item_buyers,
        } = *to;
        let k = self.keys(sale);
        let mut inv = self.prepare(ScriptName::Repair);
        inv.key(k.sale()).key(k.holds()).key(k.events());
        inv.arg(k.base())
            .arg(&seen.last_event_id)
            .arg(sold)
            .arg(held)
            .arg(bought.len());
        for (u, q) in bought {
            inv.arg(u.as_str()).arg(*q);
        }
        inv.arg(items.len());
        for (sku, (sold, held)) in items {
            inv.arg(sku.as_str()).arg(*sold).arg(*held);
        }
        let per_buyer: Vec<_> = item_buyers
            .iter()
            .filter_map(|(k, v)| k.split_once('/').map(|(sku, u)| (sku, u, v)))
            .collect();
        inv.arg(per_buyer.len());
        for (sku, user, (bought, held)) in per_buyer {
            inv.arg(sku).arg(user).arg(*bought).arg(*held);
        }
        for (u, q) in held_by {
            inv.arg(u.as_str()).arg(*q);
        }
        let r = self.invoke(ScriptName::Repair, &inv).await?;
        match r.tag()? {
            "repaired" => Ok(true),
            "changed" => Ok(false),
            _ => Err(r.unexpected()),
        }
    }
}
