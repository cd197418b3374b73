//! `burst`: N buyers, one pre-opened keep-alive connection per request slot,
//! every reserve released at one instant; then the invariant check.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::cli::{check_share, BurstArgs, Common};
use crate::client::{
    build_client, release_together, timed, unix_ms, wall_time, warm_up, Answer, Fired, SaleView,
};
use crate::raw::{Conn, Target};
#[cfg(test)]
use crate::report::failed;
use crate::report::{count_outcomes, Check, Params, Report, Tally};
use crate::session::{Buyers, Session};

/// How many reserve requests each buyer sends: 1, or 3 for the retrying share
/// (the original plus two extra attempts).
pub fn plan_attempts(buyers: u32, retry_share: f64) -> Vec<u32> {
    let retrying = ((buyers as f64) * retry_share).round() as u32;
    (0..buyers)
        .map(|i| if i < retrying.min(buyers) { 3 } else { 1 })
        .collect()
}

/// What the burst must grant, computed exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expectation {
    /// Units asked for in total, before any cap.
    pub requested_units: i64,
    /// Units asked for, each buyer capped at what the per-user limit lets them hold.
    pub capped_demand: i64,
    /// Units that must be held after the burst.
    pub granted_units: i64,
}

/// Every reserve asks for `quantity` units, all or nothing. A buyer can have
/// at most `per_user_limit / quantity` requests granted, and the sale at most
/// `available / quantity`; each refusal happens only when one of the two is
/// exhausted, so the number of granted requests is exactly the smaller of
/// the two totals. With `quantity = 1` this is
/// `min(available, sum over buyers of min(per_user_limit, units requested))`.
pub fn expected_units(
    available: i64,
    per_user_limit: i64,
    quantity: u32,
    attempts: &[u32],
) -> Expectation {
    let q = i64::from(quantity.max(1));
    let per_buyer_requests = per_user_limit.max(0) / q;
    let requested_units: i64 = attempts.iter().map(|&a| i64::from(a) * q).sum();
    let capped_requests: i64 = attempts
        .iter()
        .map(|&a| i64::from(a).min(per_buyer_requests))
        .sum();
    let stock_requests = available.max(0) / q;
    Expectation {
        requested_units,
        capped_demand: capped_requests * q,
        granted_units: capped_requests.min(stock_requests) * q,
    }
}

/// One reserve request of the burst and its answer.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub buyer: usize,
    pub answer: Answer,
}

impl Attempt {
    /// The answers of a release, each with the buyer its slot was for.
    pub fn from_fired(fired: Vec<Fired<Answer>>, slot_buyer: Vec<usize>) -> Vec<Self> {
        fired
            .into_iter()
            .zip(slot_buyer)
            .map(|(f, buyer)| Attempt {
                buyer,
                answer: f.value,
            })
            .collect()
    }
}

#[cfg(test)]
impl Attempt {
    /// `buyer`'s request answered `status` (with the error `code`) and `body`.
    pub fn answered(
        buyer: usize,
        status: u16,
        code: Option<&str>,
        body: serde_json::Value,
    ) -> Self {
        Attempt {
            buyer,
            answer: Answer {
                status: Some(status),
                code: code.map(str::to_string),
                latency: Duration::from_millis(1),
                body: Some(body),
            },
        }
    }
}

/// Everything the invariant check looks at.
pub struct BurstFacts<'a> {
    pub attempts: &'a [Attempt],
    pub user_ids: &'a [String],
    pub attempts_per_buyer: &'a [u32],
    pub quantity: u32,
    pub before: &'a SaleView,
    pub after: &'a SaleView,
}

/// The answers a reserve may legitimately get while buyers race for stock.
pub const RESERVE_ANSWERS: &[&str] = &["201", "409:sold_out", "409:user_limit_exceeded"];

pub fn burst_checks(f: &BurstFacts<'_>) -> Vec<Check> {
    let mut checks = Vec::new();

    // 1. Every answer is 201 or 409 sold_out / user_limit_exceeded.
    checks.push(Check::answers(
        "answers",
        &count_outcomes(f.attempts.iter().map(|a| &a.answer)),
        RESERVE_ANSWERS,
    ));

    // 2. Every 201 carries a well-formed hold for its buyer; ids are unique.
    let mut granted_by_buyer: HashMap<usize, i64> = HashMap::new();
    let mut ids = HashSet::new();
    let mut malformed = 0u64;
    let mut duplicates = 0u64;
    let mut granted: i64 = 0;
    for a in f.attempts.iter().filter(|a| a.answer.is(201)) {
        let units = match a.answer.reservation() {
            Some(r) => {
                let expected_user = f.user_ids.get(a.buyer).map(String::as_str);
                if r.quantity != i64::from(f.quantity)
                    || r.status != "held"
                    || Some(r.user_id.as_str()) != expected_user
                {
                    malformed += 1;
                }
                if !ids.insert(r.reservation_id.clone()) {
                    duplicates += 1;
                }
                r.quantity
            }
            None => {
                malformed += 1;
                i64::from(f.quantity)
            }
        };
        granted += units;
        *granted_by_buyer.entry(a.buyer).or_insert(0) += units;
    }
    checks.push(Check::new(
        "hold_bodies",
        malformed == 0 && duplicates == 0,
        format!(
            "{} holds; {malformed} malformed (quantity/status/user), {duplicates} duplicate reservation ids",
            ids.len()
        ),
    ));

    // 3. Something was granted: on a sale with nothing left every other check
    //    passes, having tested nothing.
    checks.push(Check::new(
        "some_granted",
        granted > 0,
        format!(
            "granted {granted} units (available before the burst: {})",
            f.before.available
        ),
    ));

    // 4. Units held == the exact expectation.
    let exp = expected_units(
        f.before.available,
        f.before.per_user_limit,
        f.quantity,
        f.attempts_per_buyer,
    );
    checks.push(Check::new(
        "units_granted",
        granted == exp.granted_units,
        format!(
            "granted {granted}, expected {} = min(available {}, capped demand {} of {} requested)",
            exp.granted_units, f.before.available, exp.capped_demand, exp.requested_units
        ),
    ));

    // 5. Nobody above the per-user cap.
    let limit = f.before.per_user_limit;
    let over: Vec<_> = granted_by_buyer
        .iter()
        .filter(|(_, &u)| u > limit)
        .collect();
    let max_user = granted_by_buyer.values().copied().max().unwrap_or(0);
    checks.push(Check::new(
        "per_user_cap",
        over.is_empty(),
        format!(
            "{} buyers above the cap of {limit}; most held by one buyer: {max_user}",
            over.len()
        ),
    ));

    // 6. The sale view agrees.
    let held_expected = f.before.held + granted;
    checks.push(Check::new(
        "sale_view_held",
        f.after.held == held_expected,
        format!(
            "held {} (before {} + granted {granted} = {held_expected})",
            f.after.held, f.before.held
        ),
    ));
    checks.push(Check::new(
        "sale_view_sold",
        f.after.sold == f.before.sold,
        format!("sold {} (before {})", f.after.sold, f.before.sold),
    ));
    let avail = f.after.stock - f.after.sold - f.after.held;
    checks.push(Check::new(
        "sale_view_available",
        f.after.available == avail && f.after.sold + f.after.held <= f.after.stock,
        format!(
            "available {} vs stock {} - sold {} - held {} = {avail}",
            f.after.available, f.after.stock, f.after.sold, f.after.held
        ),
    ));
    checks
}

/// A burst's buyers (their tokens minted up front) and how many reserve
/// requests each sends: its request slots, a buyer's adjacent.
pub struct Plan {
    pub attempts: Vec<u32>,
    pub buyers: Buyers,
    /// The request slots in all.
    pub total: usize,
}

impl Plan {
    pub fn new(session: &Session, args: &BurstArgs) -> Result<Self> {
        let attempts = plan_attempts(args.buyers, args.retry_share);
        let buyers = session.buyers(attempts.len())?;
        let total = attempts.iter().map(|&n| n as usize).sum();
        Ok(Self {
            attempts,
            buyers,
            total,
        })
    }

    /// The buyer of each slot.
    fn slot_buyers(&self) -> Vec<usize> {
        self.attempts
            .iter()
            .enumerate()
            .flat_map(|(buyer, &n)| (0..n).map(move |_| buyer))
            .collect()
    }
}

/// A burst once every answer is in.
pub struct Released {
    /// When the requests went out (Unix ms).
    pub at_unix_ms: u64,
    pub wall: Duration,
    /// Every answer with the buyer its slot was for, in slot order.
    pub attempts: Vec<Attempt>,
    pub tally: Tally,
    /// The sale once every answer is in.
    pub after: SaleView,
}

impl Released {
    /// A burst's report: its parameters (buyers, retrying buyers, `more`,
    /// the sale afterwards, the release instant), its answers and `checks`.
    pub fn report(
        &self,
        session: &Session,
        plan: &Plan,
        args: &BurstArgs,
        more: Vec<(&str, Value)>,
        checks: Vec<Check>,
    ) -> Report {
        let retrying = plan.attempts.iter().filter(|&&a| a > 1).count();
        let mut pairs = vec![
            ("buyers", json!(args.buyers)),
            ("retrying_buyers", json!(retrying)),
        ];
        pairs.extend(more);
        pairs.push(("sale_after", json!(self.after)));
        // When the requests went out (Unix ms): a process watching the
        // server (e.g. `loadtest/bench` sampling its memory) can tell the
        // connections-open phase from the burst itself.
        pairs.push(("released_at_unix_ms", json!(self.at_unix_ms)));
        let params = Params::new(pairs);
        session.report("burst", params, &self.tally, self.wall, vec![], checks)
    }
}

/// The release of `burst` and of the burst of carts: one connection per
/// slot, opened before the release (through reqwest, one client per buyer
/// keeping an idle connection per slot, served a GET /healthz first with
/// `warm`); each request ready as bytes; every reserve sent at one instant.
/// The connections stay open until every answer is in and the sale viewed:
/// a buyer's browser keeps its connection, and no connection teardown runs
/// inside the burst.
/// The `n`-th slot sends the reserve body `body(n)`.
pub async fn release_reserves(
    session: &Session,
    plan: &Plan,
    mut body: impl FnMut(usize) -> String,
    warm: bool,
) -> Result<Released> {
    let (api, sale, timeout) = (&session.api, session.sale.as_str(), session.timeout);
    let tokens = &plan.buyers.tokens;
    let slot_buyer = plan.slot_buyers();
    let slots: Vec<(usize, String)> = slot_buyer
        .iter()
        .enumerate()
        .map(|(n, &buyer)| (buyer, body(n)))
        .collect();
    let mut keep_open = Vec::with_capacity(slots.len());
    let (released, fired) = match Target::from_base(api.base())? {
        Some(target) => {
            let jobs = slots
                .iter()
                .map(|(buyer, body)| {
                    let target = target.clone();
                    let req = target.reserve_body(sale, &tokens[*buyer], body);
                    (
                        move || async move { Conn::open(&target, timeout).await },
                        move |mut conn: Conn| async move { (conn.timed(&req).await, conn) },
                    )
                })
                .collect();
            let (released, fired) = release_together(jobs, 64).await?;
            let fired = fired
                .into_iter()
                .map(|f| {
                    let (answer, conn) = f.value;
                    keep_open.push(conn);
                    Fired {
                        start: f.start,
                        end: f.end,
                        value: answer,
                    }
                })
                .collect();
            (released, fired)
        }
        None => {
            let healthz = api.healthz_url();
            let mut jobs = Vec::with_capacity(slots.len());
            for own in slots.chunk_by(|a, b| a.0 == b.0) {
                let client = build_client(own.len(), timeout)?;
                for (i, (buyer, body)) in own.iter().enumerate() {
                    let warm = if warm && i == 0 { own.len() } else { 0 };
                    let (c1, url) = (client.clone(), healthz.clone());
                    let req = client
                        .post(api.reserve_url(sale))
                        .bearer_auth(&tokens[*buyer])
                        .header("content-type", "application/json")
                        .body(body.clone());
                    jobs.push((
                        move || async move {
                            if warm > 0 {
                                warm_up(&c1, &url, warm).await?;
                            }
                            Ok(())
                        },
                        move |()| timed(req),
                    ));
                }
            }
            release_together(jobs, 64).await?
        }
    };
    let wall = wall_time(&fired);
    let after = session.view().await?;
    drop(keep_open);
    let attempts = Attempt::from_fired(fired, slot_buyer);
    let tally = Tally::from_answers(attempts.iter().map(|a| &a.answer));
    Ok(Released {
        at_unix_ms: unix_ms(released),
        wall,
        attempts,
        tally,
        after,
    })
}

pub async fn run(common: &Common, args: &BurstArgs) -> Result<Report> {
    check_share("retry-share", args.retry_share)?;
    if args.buyers == 0 {
        bail!("--buyers must be at least 1");
    }
    if let Some(items) = &args.items {
        return crate::carts::run(common, args, &items.0).await;
    }
    let session = Session::open(common).await?;
    let (api, sale) = (&session.api, session.sale.as_str());

    let before = match api.get_sale(sale).await? {
        Some(view) if !args.configure => {
            if view.stock != args.stock || view.per_user_limit != i64::from(args.per_user_limit) {
                eprintln!(
                    "note: sale {sale} exists (stock {}, per_user_limit {}); using it as is \
                     (pass --configure to apply --stock/--per-user-limit)",
                    view.stock, view.per_user_limit
                );
            }
            view
        }
        _ => {
            session
                .configure(args.stock, args.per_user_limit, args.hold_ttl_secs)
                .await?
        }
    };
    if args.quantity == 0 || i64::from(args.quantity) > before.per_user_limit {
        bail!(
            "--quantity must be between 1 and the sale's per_user_limit ({})",
            before.per_user_limit
        );
    }

    let plan = Plan::new(&session, args)?;
    let attempts = &plan.attempts;
    session.note(format_args!(
        "burst: {} buyers, {} requests; opening connections...",
        attempts.len(),
        plan.total
    ));
    let body = json!({ "quantity": args.quantity }).to_string();
    let released = release_reserves(&session, &plan, |_| body.clone(), true).await?;
    let after = &released.after;
    let checks = burst_checks(&BurstFacts {
        attempts: &released.attempts,
        user_ids: &plan.buyers.ids,
        attempts_per_buyer: attempts,
        quantity: args.quantity,
        before: &before,
        after,
    });
    let exp = expected_units(
        before.available,
        before.per_user_limit,
        args.quantity,
        attempts,
    );
    let more = vec![
        ("stock", json!(before.stock)),
        ("available_before", json!(before.available)),
        ("per_user_limit", json!(before.per_user_limit)),
        ("quantity", json!(args.quantity)),
        ("expected_units", json!(exp.granted_units)),
    ];
    Ok(released.report(&session, &plan, args, more, checks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn view(stock: i64, sold: i64, held: i64, limit: i64) -> SaleView {
        SaleView::live(stock, sold, held, limit)
    }

    /// The checks of a burst of buyers `u0, u1, ...` (`per_buyer` attempts
    /// each) asking for one unit per request.
    fn checks_of(
        attempts: &[Attempt],
        per_buyer: &[u32],
        before: &SaleView,
        after: &SaleView,
    ) -> Vec<Check> {
        let users: Vec<String> = (0..per_buyer.len()).map(|i| format!("u{i}")).collect();
        burst_checks(&BurstFacts {
            attempts,
            user_ids: &users,
            attempts_per_buyer: per_buyer,
            quantity: 1,
            before,
            after,
        })
    }

    fn hold(buyer: usize, uid: &str, rid: &str, q: i64) -> Attempt {
        let body = json!({
            "reservation_id": rid, "sale_id": "s", "user_id": uid,
            "quantity": q, "status": "held", "expires_at": "2030-01-01T00:00:00Z"
        });
        Attempt::answered(buyer, 201, None, body)
    }

    fn refused(buyer: usize, status: u16, code: &str) -> Attempt {
        Attempt::answered(buyer, status, Some(code), Value::Null)
    }

    #[test]
    fn retry_share_plans_extra_attempts() {
        let p = plan_attempts(500, 0.1);
        assert_eq!(p.len(), 500);
        assert_eq!(p.iter().filter(|&&a| a == 3).count(), 50);
        assert_eq!(p.iter().map(|&a| a as u64).sum::<u64>(), 600);
        assert!(plan_attempts(10, 0.0).iter().all(|&a| a == 1));
        assert!(plan_attempts(10, 1.0).iter().all(|&a| a == 3));
    }

    #[test]
    fn expectation_is_min_of_stock_and_capped_demand() {
        // 500 buyers, 50 retrying three times, cap 2: demand 450 + 50*2 = 550.
        let p = plan_attempts(500, 0.1);
        let e = expected_units(10, 2, 1, &p);
        assert_eq!(e.requested_units, 600);
        assert_eq!(e.capped_demand, 550);
        assert_eq!(e.granted_units, 10);
        // Plenty of stock: demand (capped per user) is the limit.
        assert_eq!(expected_units(10_000, 2, 1, &p).granted_units, 550);
        // Cap 1: retries take nothing extra.
        assert_eq!(expected_units(10_000, 1, 1, &p).granted_units, 500);
        // Quantity 2, cap 3: each buyer gets at most one request of 2.
        assert_eq!(expected_units(10_000, 3, 2, &[3, 1]).granted_units, 4);
        // Quantity 2 and odd stock: the last unit cannot be granted.
        assert_eq!(expected_units(5, 4, 2, &[3, 3]).granted_units, 4);
        assert_eq!(expected_units(0, 2, 1, &[1, 1]).granted_units, 0);
    }

    #[test]
    fn a_correct_burst_passes_every_check() {
        // Stock 3, cap 2, buyer 0 retries (3 attempts): demand 2 + 1 + 1 + 1 = 5.
        let attempts = [
            hold(0, "u0", "r1", 1),
            hold(0, "u0", "r2", 1),
            refused(0, 409, "user_limit_exceeded"),
            hold(1, "u1", "r3", 1),
            refused(2, 409, "sold_out"),
            refused(3, 409, "sold_out"),
        ];
        let before = view(3, 0, 0, 2);
        let after = view(3, 0, 3, 2);
        let checks = checks_of(&attempts, &[3, 1, 1, 1], &before, &after);
        assert!(failed(&checks).is_empty(), "{checks:?}");
    }

    #[test]
    fn overselling_fails() {
        let attempts = [
            hold(0, "u0", "r1", 1),
            hold(1, "u1", "r2", 1),
            hold(2, "u2", "r3", 1),
        ];
        let before = view(2, 0, 0, 1);
        let after = view(2, 0, 3, 1);
        let checks = checks_of(&attempts, &[1, 1, 1], &before, &after);
        let f = failed(&checks);
        assert!(f.contains(&"units_granted"), "{checks:?}");
        assert!(f.contains(&"sale_view_available"), "{checks:?}");
    }

    #[test]
    fn underselling_fails() {
        // Stock 2 and two buyers, but one was refused sold_out.
        let attempts = [hold(0, "u0", "r1", 1), refused(1, 409, "sold_out")];
        let before = view(2, 0, 0, 1);
        let after = view(2, 0, 1, 1);
        let checks = checks_of(&attempts, &[1, 1], &before, &after);
        assert_eq!(failed(&checks), vec!["units_granted"]);
    }

    #[test]
    fn a_buyer_above_the_cap_fails() {
        let attempts = [
            hold(0, "u0", "r1", 1),
            hold(0, "u0", "r2", 1),
            hold(0, "u0", "r3", 1),
        ];
        let before = view(10, 0, 0, 2);
        let after = view(10, 0, 3, 2);
        let checks = checks_of(&attempts, &[3], &before, &after);
        let f = failed(&checks);
        assert!(f.contains(&"per_user_cap"), "{checks:?}");
        assert!(f.contains(&"units_granted"), "{checks:?}");
    }

    #[test]
    fn server_errors_and_transport_errors_fail() {
        let mut t = refused(2, 0, "timeout");
        t.answer.status = None;
        let attempts = [hold(0, "u0", "r1", 1), refused(1, 503, "unavailable"), t];
        let before = view(1, 0, 0, 1);
        let after = view(1, 0, 1, 1);
        let checks = checks_of(&attempts, &[1, 1, 1], &before, &after);
        assert_eq!(failed(&checks), vec!["answers"]);
        let detail = &checks[0].detail;
        assert!(
            detail.contains("503:unavailable") && detail.contains("error:timeout"),
            "{detail}"
        );
    }

    #[test]
    fn rate_limited_is_a_violation() {
        let attempts = [refused(0, 429, "rate_limited")];
        let before = view(1, 0, 0, 1);
        let after = view(1, 0, 0, 1);
        let checks = checks_of(&attempts, &[1], &before, &after);
        assert_eq!(
            failed(&checks),
            vec!["answers", "some_granted", "units_granted"]
        );
    }

    #[test]
    fn a_burst_on_an_exhausted_sale_fails() {
        // Every other check holds when nothing was left to grant.
        let attempts = [refused(0, 409, "sold_out"), refused(1, 409, "sold_out")];
        let before = view(2, 2, 0, 1);
        let after = view(2, 2, 0, 1);
        let checks = checks_of(&attempts, &[1, 1], &before, &after);
        assert_eq!(failed(&checks), vec!["some_granted"]);
    }

    #[test]
    fn a_view_that_disagrees_fails() {
        let attempts = [hold(0, "u0", "r1", 1), hold(1, "u1", "r2", 1)];
        let before = view(5, 0, 0, 1);
        let mut after = view(5, 0, 1, 1); // says 1 held, 2 were granted
        after.available = 4;
        let checks = checks_of(&attempts, &[1, 1], &before, &after);
        assert_eq!(failed(&checks), vec!["sale_view_held"]);
        // available must be stock - sold - held.
        let mut after = view(5, 0, 2, 1);
        after.available = 5;
        let checks = checks_of(&attempts, &[1, 1], &before, &after);
        assert_eq!(failed(&checks), vec!["sale_view_available"]);
    }

    #[test]
    fn duplicate_or_foreign_holds_fail() {
        let attempts = [hold(0, "u0", "r1", 1), hold(1, "someone-else", "r1", 1)];
        let before = view(5, 0, 0, 1);
        let after = view(5, 0, 2, 1);
        let checks = checks_of(&attempts, &[1, 1], &before, &after);
        assert_eq!(failed(&checks), vec!["hold_bodies"]);
    }
}
