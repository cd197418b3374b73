//! A sale's Postgres against itself: its orders within the invariants, and
//! the totals derived from them (`sold_count`, `user_purchases`,
//! `user_item_purchases`) equal to what the orders say.

use std::collections::BTreeMap;

use super::expected::{broken, item_cap, Tally};
use super::{diff, diff_maps, Report};
use crate::ids::SaleId;
use crate::service::{Service, ServiceError};
use crate::store::{ItemTotals, SaleRow};

/// What Postgres recorded of a sale: the truth Redis is compared with.
pub(super) struct Recorded {
    /// Units confirmed per buyer (`orders`).
    pub(super) orders: BTreeMap<String, i64>,
    /// The sale's items and their confirmed units.
    pub(super) items: ItemTotals,
}

/// Checks Postgres' orders and derived totals; `fix` rebuilds the totals
/// from the orders.
pub(super) async fn check(
    service: &Service,
    sale: &SaleId,
    row: &SaleRow,
    fix: bool,
    report: &mut Report,
) -> Result<Recorded, ServiceError> {
    let id = sale.as_str();
    let (orders, purchases, sold_count) = service.store.totals(sale).await?;
    let items = service.store.item_totals(sale).await?;
    for it in &items.items {
        let sold = items.sold.get(&it.sku).copied().unwrap_or(0);
        if sold > it.stock {
            report.incident(
                id,
                format!(
                    "Postgres orders: item {} {sold} sold > stock {} (oversold)",
                    it.sku, it.stock
                ),
            );
        }
    }
    for (k, n) in &items.bought {
        if item_cap(&items, k).is_some_and(|cap| *n > i64::from(cap)) {
            report.incident(
                id,
                format!("Postgres orders: buyer {k} has {n} units > the item's per_user_limit"),
            );
        }
    }
    let nobody = BTreeMap::new();
    let recorded = Tally {
        sold: orders.values().sum(),
        held: 0,
        bought: &orders,
        held_by: &nobody,
    };
    let limit = i64::from(row.config.per_user_limit);
    for what in broken(row.config.stock, limit, &recorded, "Postgres orders") {
        report.incident(id, what);
    }
    let mut drift = Vec::new();
    diff_maps(
        &mut drift,
        id,
        "postgres user_purchases",
        &purchases,
        &orders,
    );
    diff(
        &mut drift,
        id,
        "postgres sold_count".into(),
        sold_count,
        orders.values().sum(),
    );
    diff_maps(
        &mut drift,
        id,
        "postgres user_item_purchases",
        &items.purchases,
        &items.bought,
    );
    if !drift.is_empty() && fix {
        service.store.rebuild_totals(sale).await?;
        drift.iter_mut().for_each(|d| d.fixed = true);
    }
    report.drift.extend(drift);
    Ok(Recorded { orders, items })
}
