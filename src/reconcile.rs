//! `flashgate reconcile`: compares each sale in Redis with Postgres and
//! prints the drift; `--fix` repairs Redis from Postgres (authoritative for
//! what was sold) and Postgres' derived totals from its `orders`.
//!
//! Confirms still in the stream (not yet written by the worker) count as
//! sold: they are lag, not drift, while they are young. One older than
//! `max_lag` means the write-behind is not doing its job: that is drift,
//! and `--fix` writes the order itself.
//!
//! A sale that breaks an invariant (more sold than its stock, a buyer over
//! the cap), in Postgres or in Redis, is an incident: reported loudly, and
//! `--fix` never writes a state that breaks an invariant.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use chrono::DateTime;
use uuid::Uuid;

use crate::domain::Order;
use crate::gate::{Counters, GateError, Inspection, PendingConfirm};
use crate::ids::SaleId;
use crate::service::Service;
use crate::service::ServiceError;
use crate::store::{item_buyer, ItemTotals, SaleRow};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub sale: String,
    /// What differs, e.g. `sold`, `bought[alice]`, `held`, `postgres sold_count`.
    pub what: String,
    pub found: i64,
    pub expected: i64,
    /// Repaired by `--fix`.
    pub fixed: bool,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} is {}, expected {}{}",
            self.sale,
            self.what,
            self.found,
            self.expected,
            if self.fixed { " (fixed)" } else { "" }
        )
    }
}

/// An invariant broken (`sold + held <= stock`, a buyer within the cap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub sale: String,
    pub what: String,
}

impl fmt::Display for Incident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.sale, self.what)
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub sales: usize,
    pub drift: Vec<Drift>,
    /// Invariants broken: nothing was repaired for these sales' counters.
    pub incidents: Vec<Incident>,
    /// Sales whose Redis state is missing (rebuilt on first use, or by --fix).
    pub missing: Vec<String>,
    /// Missing sales that --fix rebuilt.
    pub restored: Vec<String>,
    /// Sales that kept changing while --fix tried (run again).
    pub busy: Vec<String>,
}

impl Report {
    /// Drift that is still there after the run.
    pub fn unresolved(&self) -> usize {
        self.drift.iter().filter(|d| !d.fixed).count() + self.missing.len() - self.restored.len()
            + self.busy.len()
    }
}

fn diff(out: &mut Vec<Drift>, sale: &str, what: String, found: i64, expected: i64) {
    if found != expected {
        out.push(Drift {
            sale: sale.to_string(),
            what,
            found,
            expected,
            fixed: false,
        });
    }
}

fn diff_maps(
    out: &mut Vec<Drift>,
    sale: &str,
    name: &str,
    found: &BTreeMap<String, i64>,
    expected: &BTreeMap<String, i64>,
) {
    let users: BTreeSet<&String> = found.keys().chain(expected.keys()).collect();
    for u in users {
        diff(
            out,
            sale,
            format!("{name}[{u}]"),
            found.get(u).copied().unwrap_or(0),
            expected.get(u).copied().unwrap_or(0),
        );
    }
}

/// What Redis should say, given Postgres and the confirms still in flight.
struct Expected {
    sold: i64,
    bought: BTreeMap<String, i64>,
    held: i64,
    held_by: BTreeMap<String, i64>,
    /// Confirms in the stream, not in Postgres, older than `max_lag`.
    overdue: Vec<PendingConfirm>,
    /// A sale of several items: (sold, held) per sku.
    items: BTreeMap<String, (i64, i64)>,
    /// Per `<sku>/<user>` of the items with their own cap: (bought, held).
    item_buyers: BTreeMap<String, (i64, i64)>,
}

async fn expected(
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
struct Tally<'a> {
    sold: i64,
    held: i64,
    bought: &'a BTreeMap<String, i64>,
    held_by: &'a BTreeMap<String, i64>,
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
fn broken(stock: i64, limit: i64, t: &Tally<'_>, whose: &str) -> Vec<String> {
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

async fn sweep_fully(service: &Service, sale: &SaleId) -> Result<(), GateError> {
    for _ in 0..1000 {
        if service.gate.sweep(sale).await?.released == 0 {
            break;
        }
    }
    Ok(())
}

async fn check_sale(
    service: &Service,
    row: &SaleRow,
    opts: &Options,
    report: &mut Report,
) -> Result<(), ServiceError> {
    let fix = opts.fix;
    let Ok(sale) = SaleId::parse(&row.sale_id) else {
        return Ok(());
    };
    let id = sale.as_str();
    let limit = i64::from(row.config.per_user_limit);
    let incident = |report: &mut Report, what: String| {
        tracing::error!(sale = id, %what, "INCIDENT: an invariant is broken");
        report.incidents.push(Incident {
            sale: id.to_string(),
            what,
        });
    };
    let (orders, purchases, sold_count) = service.store.totals(&sale).await?;
    let pg_items = service.store.item_totals(&sale).await?;
    let items = &pg_items.items;
    for it in items {
        let sold = pg_items.sold.get(&it.sku).copied().unwrap_or(0);
        if sold > it.stock {
            incident(
                report,
                format!(
                    "Postgres orders: item {} {sold} sold > stock {} (oversold)",
                    it.sku, it.stock
                ),
            );
        }
    }
    let item_cap = |key: &str| {
        key.split_once('/').and_then(|(sku, _)| {
            items
                .iter()
                .find(|i| i.sku == sku)
                .and_then(|i| i.per_user_limit)
        })
    };
    for (k, n) in &pg_items.bought {
        if item_cap(k).is_some_and(|cap| *n > i64::from(cap)) {
            incident(
                report,
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
    for what in broken(row.config.stock, limit, &recorded, "Postgres orders") {
        incident(report, what);
    }
    // Postgres' own derived totals against its orders.
    let mut pg_drift = Vec::new();
    diff_maps(
        &mut pg_drift,
        id,
        "postgres user_purchases",
        &purchases,
        &orders,
    );
    diff(
        &mut pg_drift,
        id,
        "postgres sold_count".into(),
        sold_count,
        orders.values().sum(),
    );
    diff_maps(
        &mut pg_drift,
        id,
        "postgres user_item_purchases",
        &pg_items.purchases,
        &pg_items.bought,
    );
    if !pg_drift.is_empty() && fix {
        service.store.rebuild_totals(&sale).await?;
        pg_drift.iter_mut().for_each(|d| d.fixed = true);
    }
    report.drift.extend(pg_drift);

    match sweep_fully(service, &sale).await {
        Err(GateError::NotLoaded) => {
            report.missing.push(id.to_string());
            if fix {
                service.restore(&sale).await?;
                report.restored.push(id.to_string());
            }
            return Ok(());
        }
        other => other?,
    }
    for attempt in 0..5 {
        let insp = service.gate.inspect(&sale).await?;
        let want = expected(service, &insp, &orders, &pg_items, opts.max_lag).await?;
        let (stock, cap) = (insp.stock, insp.per_user_limit);
        let redis_broken = broken(stock, cap, &Tally::from(&insp), "Redis");
        let repaired = Tally {
            sold: want.sold,
            held: want.held,
            bought: &want.bought,
            held_by: &want.held_by,
        };
        let mut want_broken = broken(stock, cap, &repaired, "Redis repaired from Postgres");
        let mut redis_broken = redis_broken;
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
            if fix {
                d.fixed = record_overdue(service, &sale, p).await?;
            }
            drift.push(d);
        }
        diff(&mut drift, id, "stock".into(), insp.stock, row.config.stock);
        diff(
            &mut drift,
            id,
            "per_user_limit".into(),
            insp.per_user_limit,
            i64::from(row.config.per_user_limit),
        );
        diff(&mut drift, id, "sold".into(), insp.sold, want.sold);
        diff(&mut drift, id, "held".into(), insp.held, want.held);
        diff_maps(&mut drift, id, "bought", &insp.bought, &want.bought);
        diff_maps(&mut drift, id, "held_by", &insp.held_by, &want.held_by);
        // Item by item: stock against sale_items, sold and held against
        // order_items and the live holds' lines.
        let skus: BTreeSet<&String> = insp
            .items
            .keys()
            .chain(items.iter().map(|i| &i.sku))
            .collect();
        for sku in skus {
            let found = insp.items.get(sku).cloned().unwrap_or_default();
            let stock = items.iter().find(|i| &i.sku == sku).map_or(0, |i| i.stock);
            let (sold, held) = want.items.get(sku).copied().unwrap_or_default();
            diff(
                &mut drift,
                id,
                format!("item[{sku}] stock"),
                found.stock,
                stock,
            );
            diff(
                &mut drift,
                id,
                format!("item[{sku}] sold"),
                found.sold,
                sold,
            );
            diff(
                &mut drift,
                id,
                format!("item[{sku}] held"),
                found.held,
                held,
            );
        }
        // Per buyer, of the items with their own cap.
        let part = |bought: bool| -> BTreeMap<String, i64> {
            want.item_buyers
                .iter()
                .map(|(k, (b, h))| (k.clone(), if bought { *b } else { *h }))
                .filter(|(_, n)| *n != 0)
                .collect()
        };
        diff_maps(
            &mut drift,
            id,
            "item bought",
            &insp.item_bought,
            &part(true),
        );
        diff_maps(
            &mut drift,
            id,
            "item held_by",
            &insp.item_held_by,
            &part(false),
        );
        for (k, (b, h)) in &want.item_buyers {
            if item_cap(k).is_some_and(|cap| b + h > i64::from(cap)) {
                want_broken.push(format!(
                    "Redis repaired from Postgres: buyer {k} has {} units > the item's per_user_limit",
                    b + h
                ));
            }
        }
        let is_config = |d: &Drift| {
            d.what == "stock" || d.what == "per_user_limit" || d.what.ends_with("] stock")
        };
        let counters_drift = drift.iter().any(|d| !is_config(d) && !d.fixed);
        if !fix || !counters_drift || !want_broken.is_empty() {
            for what in redis_broken.into_iter().chain(want_broken) {
                incident(report, what);
            }
            report.drift.extend(drift);
            return Ok(());
        }
        if service
            .gate
            .repair(
                &sale,
                &insp,
                &Counters {
                    sold: want.sold,
                    held: want.held,
                    bought: &want.bought,
                    held_by: &want.held_by,
                    items: &want.items,
                    item_buyers: &want.item_buyers,
                },
            )
            .await?
        {
            // Repaired, but an oversell that Redis showed still happened.
            for what in redis_broken {
                incident(report, what);
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

/// Writes an overdue confirm's order (idempotent, in its epoch). True when
/// it is recorded now (or was already).
async fn record_overdue(
    service: &Service,
    sale: &SaleId,
    p: &PendingConfirm,
) -> Result<bool, ServiceError> {
    let Ok(rid) = Uuid::parse_str(&p.rid) else {
        return Ok(false);
    };
    let order = Order {
        reservation_id: rid,
        sale_id: sale.as_str().to_string(),
        user_id: p.user.clone(),
        quantity: i32::try_from(p.qty).unwrap_or(0),
        confirmed_at: DateTime::from_timestamp_millis(p.at_ms).unwrap_or_default(),
        epoch: p.epoch,
        items: p.items.clone(),
    };
    let recorded = service
        .store
        .record_orders(&[order], service.confirm_timeout)
        .await?;
    Ok(recorded.stale.is_empty())
}

/// What `flashgate reconcile` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repair Redis from Postgres and Postgres' totals from its orders.
    pub fix: bool,
    /// A confirm this long in the stream but not in Postgres is drift.
    pub max_lag: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            fix: false,
            max_lag: Duration::from_secs(60),
        }
    }
}

/// Reconciles every sale Postgres knows (or just `only`).
pub async fn reconcile(
    service: &Service,
    only: Option<&SaleId>,
    opts: &Options,
) -> Result<Report, ServiceError> {
    let mut report = Report::default();
    for row in service.store.list_sales().await? {
        if only.is_some_and(|s| s.as_str() != row.sale_id) {
            continue;
        }
        report.sales += 1;
        check_sale(service, &row, opts, &mut report).await?;
    }
    // Config drift (stock, limit) is reported, never "fixed" behind the admin's back.
    Ok(report)
}
