//! `flashgate reconcile`: compares each sale in Redis with Postgres and
//! prints the drift; `--fix` repairs Redis from Postgres (authoritative for
//! what was sold) and Postgres' derived totals from its `orders`.
//!
//! Confirms still in the stream (not yet written by the worker) count as
//! sold: they are not drift, only lag.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use uuid::Uuid;

use crate::error::ApiError;
use crate::gate::{GateError, Inspection};
use crate::ids::SaleId;
use crate::service::Service;
use crate::store::SaleRow;

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

#[derive(Debug, Default)]
pub struct Report {
    pub sales: usize,
    pub drift: Vec<Drift>,
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
}

async fn expected(
    service: &Service,
    insp: &Inspection,
    orders: &BTreeMap<String, i64>,
) -> Result<Expected, ApiError> {
    let mut bought = orders.clone();
    let rids: Vec<Uuid> = insp
        .pending_confirms
        .iter()
        .filter_map(|(r, _, _)| Uuid::parse_str(r).ok())
        .collect();
    let present = service.store.orders_present(&rids).await?;
    for (rid, user, qty) in &insp.pending_confirms {
        if Uuid::parse_str(rid)
            .map(|r| !present.contains(&r))
            .unwrap_or(true)
        {
            *bought.entry(user.clone()).or_default() += qty;
        }
    }
    bought.retain(|_, q| *q != 0);
    Ok(Expected {
        sold: bought.values().sum(),
        bought,
        held: insp.live_holds.values().sum(),
        held_by: insp.live_holds.clone(),
    })
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
    fix: bool,
    report: &mut Report,
) -> Result<(), ApiError> {
    let Ok(sale) = SaleId::parse(&row.sale_id) else {
        return Ok(());
    };
    let id = sale.as_str();
    let (orders, purchases, sold_count) = service.store.totals(&sale).await?;
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
        let want = expected(service, &insp, &orders).await?;
        let mut drift = Vec::new();
        diff(&mut drift, id, "stock".into(), insp.stock, row.stock_limit);
        diff(
            &mut drift,
            id,
            "per_user_limit".into(),
            insp.per_user_limit,
            i64::from(row.per_user_limit),
        );
        diff(&mut drift, id, "sold".into(), insp.sold, want.sold);
        diff(&mut drift, id, "held".into(), insp.held, want.held);
        diff_maps(&mut drift, id, "bought", &insp.bought, &want.bought);
        diff_maps(&mut drift, id, "held_by", &insp.held_by, &want.held_by);
        let is_config = |d: &Drift| d.what == "stock" || d.what == "per_user_limit";
        let counters_drift = drift.iter().any(|d| !is_config(d));
        if !fix || !counters_drift {
            report.drift.extend(drift);
            return Ok(());
        }
        if service
            .gate
            .repair(
                &sale,
                &insp,
                want.sold,
                want.held,
                &want.bought,
                &want.held_by,
            )
            .await?
        {
            drift
                .iter_mut()
                .filter(|d| !is_config(d))
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

/// Reconciles every sale Postgres knows (or just `only`).
pub async fn reconcile(
    service: &Service,
    only: Option<&SaleId>,
    fix: bool,
) -> Result<Report, ApiError> {
    let mut report = Report::default();
    for row in service.store.list_sales().await? {
        if only.is_some_and(|s| s.as_str() != row.sale_id) {
            continue;
        }
        report.sales += 1;
        check_sale(service, &row, fix, &mut report).await?;
    }
    // Config drift (stock, limit) is reported, never "fixed" behind the admin's back.
    Ok(report)
}
