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
use crate::gate::{GateError, PendingConfirm};
use crate::ids::SaleId;
use crate::service::{Service, ServiceError};
use crate::store::SaleRow;

mod expected;
mod recorded;
mod redis_state;

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
    /// An invariant broken: logged loudly and reported.
    fn incident(&mut self, sale: &str, what: String) {
        tracing::error!(sale, %what, "INCIDENT: an invariant is broken");
        self.incidents.push(Incident {
            sale: sale.to_string(),
            what,
        });
    }

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

/// One sale: Postgres against itself, then Redis against Postgres (a sale
/// not in Redis is reported missing, and rebuilt by `--fix`).
async fn check_sale(
    service: &Service,
    row: &SaleRow,
    opts: &Options,
    report: &mut Report,
) -> Result<(), ServiceError> {
    let Ok(sale) = SaleId::parse(&row.sale_id) else {
        return Ok(());
    };
    let recorded = recorded::check(service, &sale, row, opts.fix, report).await?;
    match redis_state::sweep_fully(service, &sale).await {
        Err(GateError::NotLoaded) => {
            report.missing.push(sale.to_string());
            if opts.fix {
                service.restore(&sale).await?;
                report.restored.push(sale.to_string());
            }
            return Ok(());
        }
        other => other?,
    }
    redis_state::check(service, &sale, row, &recorded, opts, report).await
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
