//! What Redis should say about a sale, derived from Postgres (its orders
//! and item totals) and the confirms still in the stream; and every way a
//! set of numbers breaks the invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use uuid::Uuid;

use crate::domain::item_buyer;
use crate::gate::{Inspection, PendingConfirm};
use crate::service::{Service, ServiceError};
use crate::store::ItemTotals;

/// What Redis should say, given Postgres and the confirms still in flight.
pub(super) struct Expected {
    pub(super) sold: i64,
    pub(super) bought: BTreeMap<String, i64>,
    pub(super) held: i64,
    pub(super) held_by: BTreeMap<String, i64>,
    /// Confirms in the stream, not in Postgres, older than `max_lag`.
    pub(super) overdue: Vec<PendingConfirm>,
    /// A sale of several items: (sold, held) per sku.
    pub(super) items: BTreeMap<String, (i64, i64)>,
    /// Per `<sku>/<user>` of the items with their own cap: (bought, held).
    pub(super) item_buyers: BTreeMap<String, (i64, i64)>,
}

pub(super) async fn expected(
    service: &Service,
    insp: &Inspection,
    orders: &BTreeMap<String, i64>,
    pg_items: &ItemTotals,
    max_lag: Duration,
) -> Result<Expected, ServiceError> {
    let mut bought = orders.clone();
    let mut items: BTreeMap<String, (i64, i64)> = insp
        .items
        .iter()
        .map(|(sku, c)| {
            let sold = pg_items.sold.get(sku).copied().unwrap_or(0);
            (sku.clone(), (sold, c.live_held))
        })
        .collect();
    // A buyer's count of an item is kept only for an item with its own cap.
    let capped: BTreeSet<&str> = pg_items
        .items
        .iter()
        .filter(|i| i.per_user_limit.is_some())
        .map(|i| i.sku.as_str())
        .collect();
    let is_capped = |key: &str| {
        key.split_once('/')
            .is_some_and(|(sku, _)| capped.contains(sku))
    };
    let mut item_buyers: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (k, n) in &pg_items.bought {
        item_buyers.entry(k.clone()).or_default().0 += n;
    }
    for (k, n) in insp.item_live_holds.iter().filter(|(k, _)| is_capped(k)) {
        item_buyers.entry(k.clone()).or_default().1 += n;
    }
    let rids: Vec<Uuid> = insp
        .pending_confirms
        .iter()
        .filter_map(|p| Uuid::parse_str(&p.rid).ok())
        .collect();
    let present = service.store.orders_present(&rids).await?;
    let max_lag_ms = i64::try_from(max_lag.as_millis()).unwrap_or(i64::MAX);
    let mut overdue = Vec::new();
    for p in &insp.pending_confirms {
        if Uuid::parse_str(&p.rid)
            .map(|r| !present.contains(&r))
            .unwrap_or(true)
        {
            *bought.entry(p.user.clone()).or_default() += p.qty;
            for l in &p.items {
                items.entry(l.sku.clone()).or_default().0 += i64::from(l.quantity);
                let k = item_buyer(&l.sku, &p.user);
                if is_capped(&k) {
                    item_buyers.entry(k).or_default().0 += i64::from(l.quantity);
                }
            }
            if insp.now_ms - p.at_ms > max_lag_ms {
                overdue.push(p.clone());
            }
        }
    }
    bought.retain(|_, q| *q != 0);
    Ok(Expected {
        sold: bought.values().sum(),
        bought,
        held: insp.live_holds.values().sum(),
        held_by: insp.live_holds.clone(),
        overdue,
        items,
        item_buyers,
    })
}

/// A sale's sold and held units, and each buyer's: as found, or as
/// expected.
pub(super) struct Tally<'a> {
    pub(super) sold: i64,
    pub(super) held: i64,
    pub(super) bought: &'a BTreeMap<String, i64>,
    pub(super) held_by: &'a BTreeMap<String, i64>,
}

impl<'a> From<&'a Inspection> for Tally<'a> {
    fn from(i: &'a Inspection) -> Self {
        Tally {
            sold: i.sold,
            held: i.held,
            bought: &i.bought,
            held_by: &i.held_by,
        }
    }
}

/// Every way `t` breaks the invariants: more sold and held than the
/// stock, a buyer over the cap (`whose` says whose numbers they are).
pub(super) fn broken(stock: i64, limit: i64, t: &Tally<'_>, whose: &str) -> Vec<String> {
    let mut out = Vec::new();
    if t.sold + t.held > stock {
        out.push(format!(
            "{whose}: {} sold + {} held > stock {stock} (oversold)",
            t.sold, t.held
        ));
    }
    let mut units = t.bought.clone();
    for (u, q) in t.held_by {
        *units.entry(u.clone()).or_default() += q;
    }
    for (user, n) in &units {
        if *n > limit {
            out.push(format!(
                "{whose}: buyer {user} has {n} units > per_user_limit {limit}"
            ));
        }
    }
    out
}

/// The own per-buyer cap of the item a `<sku>/<user>` key names, if any.
pub(super) fn item_cap(items: &ItemTotals, key: &str) -> Option<u32> {
    key.split_once('/').and_then(|(sku, _)| {
        items
            .items
            .iter()
            .find(|i| i.sku == sku)
            .and_then(|i| i.per_user_limit)
    })
}
