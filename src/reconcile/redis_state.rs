//! A sale's Redis against what Postgres and the stream say it should hold:
//! the counters, each buyer's, each item's, and the confirms the
//! write-behind has not written; `--fix` repairs the counters atomically
//! (and looks again when the sale moved meanwhile).

use std::collections::{BTreeMap, BTreeSet};

use super::expected::{broken, expected, item_cap, Expected, Tally};
use super::recorded::Recorded;
use super::{diff, diff_maps, record_overdue, Drift, Options, Report};
use crate::gate::{Counters, GateError, Inspection};
use crate::ids::SaleId;
use crate::service::{Service, ServiceError};
use crate::store::SaleRow;

/// Sweeps until no expired hold is left, so that the holds compared are
/// live ones.
pub(super) async fn sweep_fully(service: &Service, sale: &SaleId) -> Result<(), GateError> {
    for _ in 0..1000 {
        if service.gate.sweep(sale).await?.released == 0 {
            break;
        }
    }
    Ok(())
}

/// Configuration drift (stock, caps) is reported, never "fixed" behind the
/// admin's back.
fn is_config(d: &Drift) -> bool {
    d.what == "stock" || d.what == "per_user_limit" || d.what.ends_with("] stock")
}

/// Compares (and with `--fix` repairs) a loaded sale's Redis state.
pub(super) async fn check(
    service: &Service,
    sale: &SaleId,
    row: &SaleRow,
    pg: &Recorded,
    opts: &Options,
    report: &mut Report,
) -> Result<(), ServiceError> {
    let id = sale.as_str();
    for attempt in 0..5 {
        let insp = service.gate.inspect(sale).await?;
        let want = expected(service, &insp, &pg.orders, &pg.items, opts.max_lag).await?;
        let (redis_broken, want_broken) = invariants(&insp, &want, &pg.items);
        let mut drift = Vec::new();
        for p in &want.overdue {
            let mut d = Drift {
                sale: id.to_string(),
                what: format!(
                    "confirm {} of {} ({} unit(s), {} s old) not in Postgres: the write-behind is behind or stalled",
                    p.rid,
                    p.user,
                    p.qty,
                    (insp.now_ms - p.at_ms) / 1000
                ),
                found: 0,
                expected: p.qty,
                fixed: false,
            };
            if opts.fix {
                d.fixed = record_overdue(service, sale, p).await?;
            }
            drift.push(d);
        }
        compare(&mut drift, id, row, &insp, &want, &pg.items);
        let counters_drift = drift.iter().any(|d| !is_config(d) && !d.fixed);
        if !opts.fix || !counters_drift || !want_broken.is_empty() {
            for what in redis_broken.into_iter().chain(want_broken) {
                report.incident(id, what);
            }
            report.drift.extend(drift);
            return Ok(());
        }
        let counters = Counters {
            sold: want.sold,
            held: want.held,
            bought: &want.bought,
            held_by: &want.held_by,
            items: &want.items,
            item_buyers: &want.item_buyers,
        };
        if service.gate.repair(sale, &insp, &counters).await? {
            // Repaired, but an oversell that Redis showed still happened.
            for what in redis_broken {
                report.incident(id, what);
            }
            drift
                .iter_mut()
                .filter(|d| !is_config(d) && !d.what.starts_with("confirm "))
                .for_each(|d| d.fixed = true);
            report.drift.extend(drift);
            return Ok(());
        }
        tracing::debug!(
            sale = id,
            attempt,
            "sale changed while reconciling; looking again"
        );
    }
    report.busy.push(id.to_string());
    Ok(())
}

/// The invariants Redis breaks as it is, and those it would break if it
/// were repaired from Postgres (then `--fix` writes nothing).
fn invariants(
    insp: &Inspection,
    want: &Expected,
    items: &crate::store::ItemTotals,
) -> (Vec<String>, Vec<String>) {
    let (stock, cap) = (insp.stock, insp.per_user_limit);
    let mut redis_broken = broken(stock, cap, &Tally::from(insp), "Redis");
    let repaired = Tally {
        sold: want.sold,
        held: want.held,
        bought: &want.bought,
        held_by: &want.held_by,
    };
    let mut want_broken = broken(stock, cap, &repaired, "Redis repaired from Postgres");
    for (sku, c) in &insp.items {
        if c.sold + c.held > c.stock {
            redis_broken.push(format!(
                "Redis: item {sku} {} sold + {} held > stock {} (oversold)",
                c.sold, c.held, c.stock
            ));
        }
        let (sold, held) = want.items.get(sku).copied().unwrap_or_default();
        if sold + held > c.stock {
            want_broken.push(format!(
                "Redis repaired from Postgres: item {sku} {sold} sold + {held} held > stock {} (oversold)",
                c.stock
            ));
        }
    }
    for (k, (b, h)) in &want.item_buyers {
        if item_cap(items, k).is_some_and(|cap| b + h > i64::from(cap)) {
            want_broken.push(format!(
                "Redis repaired from Postgres: buyer {k} has {} units > the item's per_user_limit",
                b + h
            ));
        }
    }
    (redis_broken, want_broken)
}

/// Every number Redis holds against the one expected: configuration,
/// counters, buyers, and item by item.
fn compare(
    drift: &mut Vec<Drift>,
    id: &str,
    row: &SaleRow,
    insp: &Inspection,
    want: &Expected,
    items: &crate::store::ItemTotals,
) {
    diff(drift, id, "stock".into(), insp.stock, row.config.stock);
    diff(
        drift,
        id,
        "per_user_limit".into(),
        insp.per_user_limit,
        i64::from(row.config.per_user_limit),
    );
    diff(drift, id, "sold".into(), insp.sold, want.sold);
    diff(drift, id, "held".into(), insp.held, want.held);
    diff_maps(drift, id, "bought", &insp.bought, &want.bought);
    diff_maps(drift, id, "held_by", &insp.held_by, &want.held_by);
    // Item by item: stock against sale_items, sold and held against
    // order_items and the live holds' lines.
    let skus: BTreeSet<&String> = insp
        .items
        .keys()
        .chain(items.items.iter().map(|i| &i.sku))
        .collect();
    for sku in skus {
        let found = insp.items.get(sku).cloned().unwrap_or_default();
        let stock = items
            .items
            .iter()
            .find(|i| &i.sku == sku)
            .map_or(0, |i| i.stock);
        let (sold, held) = want.items.get(sku).copied().unwrap_or_default();
        diff(drift, id, format!("item[{sku}] stock"), found.stock, stock);
        diff(drift, id, format!("item[{sku}] sold"), found.sold, sold);
        diff(drift, id, format!("item[{sku}] held"), found.held, held);
    }
    // Per buyer, of the items with their own cap.
    let part = |bought: bool| -> BTreeMap<String, i64> {
        want.item_buyers
            .iter()
            .map(|(k, (b, h))| (k.clone(), if bought { *b } else { *h }))
            .filter(|(_, n)| *n != 0)
            .collect()
    };
    diff_maps(drift, id, "item bought", &insp.item_bought, &part(true));
    diff_maps(drift, id, "item held_by", &insp.item_held_by, &part(false));
}
