//! `flow`: every buyer reserves one unit at once; of the holds, a share is
//! confirmed, a share cancelled, the rest left to expire. After the TTL, the
//! durable record in Postgres and the sale view must agree with exactly the
//! confirms that were acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::burst::RESERVE_ANSWERS;
use crate::cli::{check_share, Common, FlowArgs};
use crate::client::{build_client, release_together, timed, wall_time, Answer, SaleView};
use crate::report::{count_outcomes, Check, Params, Phase, Report, Tally};
use crate::session::Session;

/// A granted hold, as the reserve answer described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub buyer: usize,
    pub reservation_id: String,
    pub user_id: String,
    pub quantity: i64,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How many of `holds` to confirm and to cancel (the rest expire).
pub fn split_holds(holds: usize, confirm_share: f64, cancel_share: f64) -> (usize, usize) {
    let confirm = ((holds as f64) * confirm_share).round() as usize;
    let confirm = confirm.min(holds);
    let cancel = ((holds as f64) * cancel_share).round() as usize;
    (confirm, cancel.min(holds - confirm))
}

/// What Postgres holds for the sale.
#[derive(Debug, Clone, Default)]
pub struct DbState {
    /// (reservation_id, user_id, quantity)
    pub orders: Vec<(String, String, i64)>,
    /// (user_id, quantity)
    pub purchases: Vec<(String, i64)>,
}

/// What the phases sent and got.
pub struct FlowFacts<'a> {
    pub buyers: u32,
    pub stock: i64,
    pub reserve: &'a [Answer],
    pub confirms: &'a [(Hold, Answer)],
    pub cancels: &'a [(Hold, Answer)],
}

/// The checks on the phases' answers (known as soon as the phases end).
pub fn answer_checks(f: &FlowFacts<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(Check::answers(
        "reserve_answers",
        &count_outcomes(f.reserve),
        RESERVE_ANSWERS,
    ));
    let granted: i64 = f
        .reserve
        .iter()
        .filter(|a| a.is(201))
        .map(|a| a.reservation().map(|r| r.quantity).unwrap_or(1))
        .sum();
    let expected = f.stock.min(i64::from(f.buyers));
    checks.push(Check::new(
        "holds_granted",
        granted == expected,
        format!(
            "granted {granted}, expected min(stock {}, buyers {}) = {expected}",
            f.stock, f.buyers
        ),
    ));
    checks.push(Check::answers(
        "confirm_answers",
        &count_outcomes(f.confirms.iter().map(|(_, a)| a)),
        &["200"],
    ));
    checks.push(Check::answers(
        "cancel_answers",
        &count_outcomes(f.cancels.iter().map(|(_, a)| a)),
        &["200"],
    ));
    checks
}

/// The checks on the durable record `db` and the sale `view` (polled until
/// they pass or the drain timeout runs out).
pub fn settled_checks(f: &FlowFacts<'_>, db: &DbState, v: &SaleView) -> Vec<Check> {
    let mut checks = Vec::new();
    let confirmed: Vec<&Hold> = f
        .confirms
        .iter()
        .filter(|(_, a)| a.is(200))
        .map(|(h, _)| h)
        .collect();
    let confirmed_units: i64 = confirmed.iter().map(|h| h.quantity).sum();

    // orders == exactly the acknowledged confirms.
    let want: BTreeMap<&str, (&str, i64)> = confirmed
        .iter()
        .map(|h| (h.reservation_id.as_str(), (h.user_id.as_str(), h.quantity)))
        .collect();
    let mut seen = BTreeSet::new();
    let (mut unexpected, mut wrong, mut duplicate) = (0u64, 0u64, 0u64);
    for (rid, uid, q) in &db.orders {
        if !seen.insert(rid.as_str()) {
            duplicate += 1;
        }
        match want.get(rid.as_str()) {
            None => unexpected += 1,
            Some((wu, wq)) if *wu != uid.as_str() || *wq != *q => wrong += 1,
            Some(_) => {}
        }
    }
    let missing = want.keys().filter(|rid| !seen.contains(*rid)).count();
    checks.push(Check::new(
        "orders_match",
        unexpected == 0 && wrong == 0 && duplicate == 0 && missing == 0,
        format!(
            "{} order rows for {} acknowledged confirms: {missing} missing, {unexpected} unexpected, \
             {wrong} with wrong user/quantity, {duplicate} duplicated",
            db.orders.len(),
            want.len()
        ),
    ));

    // user_purchases == per-user confirmed sums (rows at zero count as absent).
    let mut want_users: BTreeMap<&str, i64> = BTreeMap::new();
    for h in &confirmed {
        *want_users.entry(h.user_id.as_str()).or_insert(0) += h.quantity;
    }
    let mut got_users: BTreeMap<&str, i64> = BTreeMap::new();
    for (uid, q) in db.purchases.iter().filter(|(_, q)| *q != 0) {
        *got_users.entry(uid.as_str()).or_insert(0) += *q;
    }
    let differing = want_users
        .keys()
        .chain(got_users.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|u| want_users.get(*u) != got_users.get(*u))
        .count();
    checks.push(Check::new(
        "user_purchases_match",
        differing == 0,
        format!(
            "{} buyers with purchases, {} expected; {differing} differ",
            got_users.len(),
            want_users.len()
        ),
    ));

    checks.push(Check::new(
        "sale_view_sold",
        v.sold == confirmed_units,
        format!("sold {} vs confirmed units {confirmed_units}", v.sold),
    ));
    checks.push(Check::new(
        "sale_view_held",
        v.held == 0,
        format!(
            "held {} after every hold was confirmed, cancelled or expired",
            v.held
        ),
    ));
    checks.push(Check::new(
        "sale_view_available",
        v.available == v.stock - v.sold - v.held,
        format!(
            "available {} vs stock {} - sold {} - held {} = {}",
            v.available,
            v.stock,
            v.sold,
            v.held,
            v.stock - v.sold - v.held
        ),
    ));
    checks
}

async fn read_db(pool: &PgPool, sale: &str) -> Result<DbState> {
    let orders: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT reservation_id::text, user_id, quantity::bigint FROM orders WHERE sale_id = $1",
    )
    .bind(sale)
    .fetch_all(pool)
    .await
    .context("reading orders")?;
    let purchases: Vec<(String, i64)> =
        sqlx::query_as("SELECT user_id, quantity::bigint FROM user_purchases WHERE sale_id = $1")
            .bind(sale)
            .fetch_all(pool)
            .await
            .context("reading user_purchases")?;
    Ok(DbState { orders, purchases })
}

fn parse_hold(buyer: usize, a: &Answer) -> Option<Hold> {
    let r = a.reservation()?;
    Some(Hold {
        buyer,
        expires_at: chrono::DateTime::parse_from_rfc3339(&r.expires_at)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
        reservation_id: r.reservation_id,
        user_id: r.user_id,
        quantity: r.quantity,
    })
}

pub async fn run(common: &Common, args: &FlowArgs) -> Result<Report> {
    check_share("confirm-share", args.confirm_share)?;
    check_share("cancel-share", args.cancel_share)?;
    if args.confirm_share + args.cancel_share > 1.0 {
        bail!("--confirm-share plus --cancel-share must not exceed 1");
    }
    if args.buyers == 0 {
        bail!("--buyers must be at least 1");
    }
    let session = Session::open(common).await?;
    let (api, sale, timeout) = (&session.api, session.sale.as_str(), session.timeout);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&args.database_url)
        .await
        .context("connecting to Postgres (--database-url)")?;

    let before = session
        .configure(args.stock, args.per_user_limit, args.hold_ttl_secs)
        .await?;
    if before.sold != 0 || before.held != 0 {
        bail!(
            "sale {sale} already has sold {} / held {}: flow needs a fresh sale (omit --sale)",
            before.sold,
            before.held
        );
    }

    let n = args.buyers as usize;
    let tokens = session.buyers(n)?.tokens;
    let client = build_client(n, timeout)?;
    let healthz = api.healthz_url();

    // Phase 1: every buyer reserves one unit, released at one instant.
    session.note(format_args!("flow: {n} buyers reserve 1 unit each..."));
    let jobs: Vec<_> = tokens
        .iter()
        .map(|t| {
            let c = client.clone();
            let url = healthz.clone();
            let req = api.reserve(&client, sale, t, 1, None);
            (
                move || async move { crate::client::warm_up(&c, &url, 1).await },
                move |()| timed(req),
            )
        })
        .collect();
    let (_, fired) = release_together(jobs, 64).await?;
    let reserve_wall = wall_time(&fired);
    let reserve: Vec<Answer> = fired.into_iter().map(|f| f.value).collect();
    let holds: Vec<Hold> = reserve
        .iter()
        .enumerate()
        .filter(|(_, a)| a.is(201))
        .filter_map(|(i, a)| parse_hold(i, a))
        .collect();

    // Phase 2: confirm a share and cancel a share, together (the TTL is short).
    let (n_confirm, n_cancel) = split_holds(holds.len(), args.confirm_share, args.cancel_share);
    let mut actions = Vec::new();
    for (k, h) in holds.iter().enumerate() {
        let action = if k < n_confirm {
            "confirm"
        } else if k < n_confirm + n_cancel {
            "cancel"
        } else {
            continue;
        };
        let req = api.action(&client, sale, &h.reservation_id, action, &tokens[h.buyer]);
        actions.push((action, h.clone(), req));
    }
    session.note(format_args!(
        "flow: {} holds; confirming {n_confirm}, cancelling {n_cancel}, letting {} expire...",
        holds.len(),
        holds.len() - n_confirm - n_cancel
    ));
    let kinds: Vec<(&str, Hold)> = actions.iter().map(|(a, h, _)| (*a, h.clone())).collect();
    let jobs: Vec<_> = actions
        .into_iter()
        .map(|(_, _, req)| (|| async { Ok(()) }, move |()| timed(req)))
        .collect();
    let (_, fired) = release_together(jobs, 64).await?;
    let mut confirms = Vec::new();
    let mut cancels = Vec::new();
    let mut confirm_fired = Vec::new();
    let mut cancel_fired = Vec::new();
    for ((kind, hold), f) in kinds.into_iter().zip(fired) {
        let timing = crate::client::Fired {
            start: f.start,
            end: f.end,
            value: (),
        };
        if kind == "confirm" {
            confirm_fired.push(timing);
            confirms.push((hold, f.value));
        } else {
            cancel_fired.push(timing);
            cancels.push((hold, f.value));
        }
    }

    // Phase 3: wait past the TTL of the holds left to expire, then until the
    // sale view and Postgres settle (or the drain timeout runs out).
    let latest_expiry = holds
        .iter()
        .skip(n_confirm + n_cancel)
        .filter_map(|h| h.expires_at)
        .max();
    let expiring = holds.len() - n_confirm - n_cancel;
    let wait = match latest_expiry {
        _ if expiring == 0 => Duration::ZERO,
        Some(t) => (t - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .saturating_add(Duration::from_millis(500)),
        None => Duration::from_secs(u64::from(args.hold_ttl_secs)) + Duration::from_millis(500),
    };
    session.note(format_args!(
        "flow: waiting {:.1} s past the hold TTL, then for the worker to drain (up to {} s)...",
        wait.as_secs_f64(),
        args.drain_timeout_secs
    ));
    tokio::time::sleep(wait).await;
    let facts = FlowFacts {
        buyers: args.buyers,
        stock: before.stock,
        reserve: &reserve,
        confirms: &confirms,
        cancels: &cancels,
    };
    let drain_start = Instant::now();
    let drain_deadline = drain_start + Duration::from_secs(args.drain_timeout_secs);
    let (db, view, settled) = loop {
        let db = read_db(&pool, sale).await?;
        let view = session.view().await?;
        let ok = settled_checks(&facts, &db, &view).iter().all(|c| c.ok);
        if ok || Instant::now() >= drain_deadline {
            break (db, view, ok);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let drained_after = drain_start.elapsed();
    pool.close().await;

    let mut checks = answer_checks(&facts);
    checks.extend(settled_checks(&facts, &db, &view));
    checks.push(Check::new(
        "drained",
        settled,
        if settled {
            format!(
                "settled {:.2} s after the TTL wait",
                drained_after.as_secs_f64()
            )
        } else {
            format!(
                "not settled within --drain-timeout-secs {}",
                args.drain_timeout_secs
            )
        },
    ));

    let t_reserve = Tally::from_answers(&reserve);
    let t_confirm = Tally::from_answers(confirms.iter().map(|(_, a)| a));
    let t_cancel = Tally::from_answers(cancels.iter().map(|(_, a)| a));
    let mut all = t_reserve.clone();
    all.merge(&t_confirm);
    all.merge(&t_cancel);
    let phases = vec![
        Phase::new("reserve", &t_reserve, reserve_wall),
        Phase::new("confirm", &t_confirm, wall_time(&confirm_fired)),
        Phase::new("cancel", &t_cancel, wall_time(&cancel_fired)),
    ];
    let confirmed_units: i64 = confirms
        .iter()
        .filter(|(_, a)| a.is(200))
        .map(|(h, _)| h.quantity)
        .sum();
    let params = Params::new(vec![
        ("buyers", json!(args.buyers)),
        ("stock", json!(before.stock)),
        ("per_user_limit", json!(before.per_user_limit)),
        ("hold_ttl_secs", json!(before.hold_ttl_secs)),
        ("holds", json!(holds.len())),
        (
            "confirmed",
            json!(confirms.iter().filter(|(_, a)| a.is(200)).count()),
        ),
        ("confirmed_units", json!(confirmed_units)),
        (
            "cancelled",
            json!(cancels.iter().filter(|(_, a)| a.is(200)).count()),
        ),
        ("expired", json!(holds.len() - n_confirm - n_cancel)),
        ("order_rows", json!(db.orders.len())),
        ("sale_after", json!(view)),
    ]);
    let wall = reserve_wall + wall_time(&confirm_fired).max(wall_time(&cancel_fired));
    Ok(session.report("flow", params, &all, wall, phases, checks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ans(status: u16, code: Option<&str>, body: Value) -> Answer {
        Answer {
            status: Some(status),
            code: code.map(str::to_string),
            latency: Duration::from_millis(1),
            body: Some(body),
        }
    }

    fn hold(i: usize) -> Hold {
        Hold {
            buyer: i,
            reservation_id: format!("00000000-0000-0000-0000-{i:012}"),
            user_id: format!("u{i}"),
            quantity: 1,
            expires_at: None,
        }
    }

    fn reserve_ok(i: usize) -> Answer {
        let h = hold(i);
        ans(
            201,
            None,
            json!({"reservation_id": h.reservation_id, "user_id": h.user_id, "quantity": 1,
                   "status": "held", "expires_at": "2030-01-01T00:00:00Z"}),
        )
    }

    fn view(stock: i64, sold: i64, held: i64) -> SaleView {
        SaleView::live(stock, sold, held, 2)
    }

    struct World {
        reserve: Vec<Answer>,
        confirms: Vec<(Hold, Answer)>,
        cancels: Vec<(Hold, Answer)>,
        db: DbState,
        view: SaleView,
    }

    /// 5 buyers, stock 4: 4 holds; 0 and 1 confirmed, 2 cancelled, 3 expires.
    fn good_world() -> World {
        let mut reserve: Vec<Answer> = (0..4).map(reserve_ok).collect();
        reserve.push(ans(409, Some("sold_out"), Value::Null));
        World {
            reserve,
            confirms: vec![
                (hold(0), ans(200, None, Value::Null)),
                (hold(1), ans(200, None, Value::Null)),
            ],
            cancels: vec![(hold(2), ans(200, None, Value::Null))],
            db: DbState {
                orders: vec![
                    (hold(0).reservation_id, "u0".into(), 1),
                    (hold(1).reservation_id, "u1".into(), 1),
                ],
                purchases: vec![("u0".into(), 1), ("u1".into(), 1)],
            },
            view: view(4, 2, 0),
        }
    }

    fn failed(w: &World) -> Vec<String> {
        let f = FlowFacts {
            buyers: 5,
            stock: 4,
            reserve: &w.reserve,
            confirms: &w.confirms,
            cancels: &w.cancels,
        };
        answer_checks(&f)
            .into_iter()
            .chain(settled_checks(&f, &w.db, &w.view))
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn split() {
        assert_eq!(split_holds(50, 0.5, 0.2), (25, 10));
        assert_eq!(split_holds(3, 0.5, 0.5), (2, 1));
        assert_eq!(split_holds(0, 0.5, 0.2), (0, 0));
        assert_eq!(split_holds(10, 1.0, 0.0), (10, 0));
    }

    #[test]
    fn a_consistent_flow_passes() {
        assert!(
            failed(&good_world()).is_empty(),
            "{:?}",
            failed(&good_world())
        );
    }

    #[test]
    fn a_missing_order_fails() {
        let mut w = good_world();
        w.db.orders.pop();
        assert_eq!(failed(&w), vec!["orders_match"]);
    }

    #[test]
    fn an_order_for_a_cancelled_hold_fails() {
        let mut w = good_world();
        w.db.orders.push((hold(2).reservation_id, "u2".into(), 1));
        w.db.purchases.push(("u2".into(), 1));
        assert_eq!(failed(&w), vec!["orders_match", "user_purchases_match"]);
    }

    #[test]
    fn a_confirm_that_failed_must_not_be_in_orders() {
        let mut w = good_world();
        w.confirms[1].1 = ans(410, Some("reservation_expired"), Value::Null);
        // orders still has hold 1 => unexpected; the answer itself is a violation too.
        let f = failed(&w);
        assert!(f.contains(&"confirm_answers".to_string()), "{f:?}");
        assert!(f.contains(&"orders_match".to_string()), "{f:?}");
        assert!(f.contains(&"sale_view_sold".to_string()), "{f:?}");
    }

    #[test]
    fn wrong_purchase_totals_fail() {
        let mut w = good_world();
        w.db.purchases[0].1 = 2;
        assert_eq!(failed(&w), vec!["user_purchases_match"]);
        let mut w = good_world();
        w.db.purchases.push(("u9".into(), 0)); // a zero row is no purchase
        assert!(failed(&w).is_empty());
    }

    #[test]
    fn leftover_holds_or_wrong_sold_fail() {
        let mut w = good_world();
        w.view = view(4, 2, 1);
        assert_eq!(failed(&w), vec!["sale_view_held"]);
        let mut w = good_world();
        w.view = view(4, 3, 0);
        assert_eq!(failed(&w), vec!["sale_view_sold"]);
        let mut w = good_world();
        w.view.available = 4;
        assert_eq!(failed(&w), vec!["sale_view_available"]);
    }

    #[test]
    fn too_many_holds_or_bad_reserve_answers_fail() {
        let mut w = good_world();
        w.reserve[4] = reserve_ok(4); // a fifth hold on a stock of 4
        assert_eq!(failed(&w), vec!["holds_granted"]);
        let mut w = good_world();
        w.reserve[4] = ans(500, Some("internal"), Value::Null);
        assert_eq!(failed(&w), vec!["reserve_answers"]);
    }
}
