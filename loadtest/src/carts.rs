//! `burst --items S:5,M:5,L:5 --cart-size 1..3`: a burst of carts on a sale
//! of several items. Every buyer's request is a cart of distinct items (one
//! unit each), all released at one instant; then the checks per item and
//! per buyer: every cart held whole or not at all, no item above its stock,
//! no buyer above the cap.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::burst::{plan_attempts, Attempt};
use crate::cli::{BurstArgs, Common};
use crate::client::{build_client, release_together, timed, unix_ms, wall_time, Fired, SaleView};
use crate::raw::{Conn, Target};
use crate::report::{count_outcomes, Check, Params, Report, Tally};
use crate::session::Session;

/// The answers a cart may get while buyers race for the items.
pub const CART_ANSWERS: &[&str] = &["201", "409:sold_out", "409:user_limit_exceeded"];

/// The cart of request `n`: `size` distinct skus of `skus` (size drawn in
/// `sizes`), one unit each, sorted by sku. Deterministic in `n`, so a run
/// can be replayed.
pub fn cart_of(n: u64, skus: &[String], sizes: (u32, u32)) -> Vec<String> {
    let mut x = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (lo, hi) = (sizes.0 as usize, (sizes.1 as usize).min(skus.len()));
    let size = lo.min(hi) + (next() as usize) % (hi - lo.min(hi) + 1);
    let mut pool: Vec<&String> = skus.iter().collect();
    let mut cart = Vec::with_capacity(size);
    for _ in 0..size {
        let i = (next() as usize) % pool.len();
        cart.push(pool.swap_remove(i).clone());
    }
    cart.sort();
    cart
}

/// Everything the checks look at.
pub struct CartFacts<'a> {
    pub attempts: &'a [Attempt],
    /// The cart of each attempt (same order).
    pub carts: &'a [Vec<String>],
    pub user_ids: &'a [String],
    pub before: &'a SaleView,
    pub after: &'a SaleView,
}

pub fn cart_checks(f: &CartFacts<'_>) -> Vec<Check> {
    let mut checks = vec![Check::answers(
        "answers",
        &count_outcomes(f.attempts.iter().map(|a| &a.answer)),
        CART_ANSWERS,
    )];

    // Every 201 holds its whole cart for its buyer, once.
    let mut granted: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_buyer: HashMap<usize, i64> = HashMap::new();
    let (mut malformed, mut partial, mut holds) = (0u64, 0u64, 0u64);
    let mut ids = HashSet::new();
    let mut bad_shortfalls = 0u64;
    for (a, cart) in f.attempts.iter().zip(f.carts) {
        let body = a.answer.body.as_ref().unwrap_or(&Value::Null);
        if a.answer.is(201) {
            holds += 1;
            let want: Vec<Value> = cart
                .iter()
                .map(|s| json!({"sku": s, "quantity": 1}))
                .collect();
            if body["items"] != json!(want) {
                partial += 1;
            }
            let r = a.answer.reservation();
            let ok = r.as_ref().is_some_and(|r| {
                r.status == "held"
                    && r.quantity == cart.len() as i64
                    && Some(r.user_id.as_str()) == f.user_ids.get(a.buyer).map(String::as_str)
                    && ids.insert(r.reservation_id.clone())
            });
            if !ok {
                malformed += 1;
            }
            for s in cart {
                *granted.entry(s.clone()).or_default() += 1;
            }
            *by_buyer.entry(a.buyer).or_default() += cart.len() as i64;
        } else if a.answer.is(409) && a.answer.code.as_deref() == Some("sold_out") {
            // Every short line named, each really short and in the cart.
            let short = body["error"]["details"]["shortfalls"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let fine = !short.is_empty()
                && short.iter().all(|s| {
                    cart.iter().any(|c| s["sku"] == c.as_str())
                        && s["available"].as_i64() < s["requested"].as_i64()
                });
            if !fine {
                bad_shortfalls += 1;
            }
        }
    }
    checks.push(Check::new(
        "hold_bodies",
        malformed == 0 && partial == 0,
        format!("{holds} holds; {malformed} malformed (quantity/status/user/id), {partial} not carrying exactly their cart"),
    ));
    checks.push(Check::new(
        "shortfalls",
        bad_shortfalls == 0,
        format!("{bad_shortfalls} sold_out answers without a true shortfall per short line"),
    ));
    checks.push(Check::new(
        "some_granted",
        holds > 0,
        format!("{holds} carts held"),
    ));

    // Per item: held after = held before + the lines granted (no partial
    // hold of a refused cart), and sold + held <= stock.
    let before: BTreeMap<&str, &crate::client::ItemView> =
        f.before.items.iter().map(|i| (i.sku.as_str(), i)).collect();
    let mut wrong = Vec::new();
    for item in &f.after.items {
        let g = granted.get(&item.sku).copied().unwrap_or(0);
        let was = before.get(item.sku.as_str()).map_or(0, |i| i.held);
        if item.held != was + g
            || item.sold + item.held > item.stock
            || item.available != item.stock - item.sold - item.held
        {
            wrong.push(format!(
                "{}: stock {} sold {} held {} (before {was} + granted {g}) available {}",
                item.sku, item.stock, item.sold, item.held, item.available
            ));
        }
    }
    checks.push(Check::new(
        "per_item",
        wrong.is_empty() && !f.after.items.is_empty(),
        if wrong.is_empty() {
            format!(
                "{} items: held = granted lines, sold + held <= stock",
                f.after.items.len()
            )
        } else {
            wrong.join("; ")
        },
    ));
    let sums = f.after.items.iter().fold((0, 0, 0), |(s, o, h), i| {
        (s + i.stock, o + i.sold, h + i.held)
    });
    checks.push(Check::new(
        "sale_sums",
        (f.after.stock, f.after.sold, f.after.held) == sums,
        format!(
            "sale stock {} sold {} held {}, items sum to {sums:?}",
            f.after.stock, f.after.sold, f.after.held
        ),
    ));

    // Per buyer: within the cap across items.
    let limit = f.before.per_user_limit;
    let over = by_buyer.values().filter(|&&u| u > limit).count();
    checks.push(Check::new(
        "per_user_cap",
        over == 0,
        format!(
            "{over} buyers above the cap of {limit}; most held by one buyer: {}",
            by_buyer.values().max().copied().unwrap_or(0)
        ),
    ));
    checks
}

pub async fn run(common: &Common, args: &BurstArgs, items: &[(String, i64)]) -> Result<Report> {
    if items.is_empty() {
        bail!("--items names no item");
    }
    let session = Session::open(common).await?;
    let (api, sale, timeout) = (&session.api, session.sale.as_str(), session.timeout);
    let body = json!({
        "items": items.iter().map(|(s, n)| json!({"sku": s, "stock": n})).collect::<Vec<_>>(),
        "per_user_limit": args.per_user_limit,
        "hold_ttl_secs": args.hold_ttl_secs,
    });
    api.put_sale(sale, &body).await?;
    let before = session.view().await?;
    let skus: Vec<String> = items.iter().map(|(s, _)| s.clone()).collect();

    let attempts = plan_attempts(args.buyers, args.retry_share);
    let buyers = session.buyers(attempts.len())?;
    let tokens = &buyers.tokens;
    let mut slot_buyer = Vec::new();
    let mut carts = Vec::new();
    let total: usize = attempts.iter().map(|&n| n as usize).sum();
    session.note(format_args!(
        "burst of carts: {} buyers, {total} requests over {} items; opening connections...",
        attempts.len(),
        skus.len()
    ));
    let cart_body = |cart: &[String]| {
        json!({"items": cart.iter().map(|s| json!({"sku": s, "quantity": 1})).collect::<Vec<_>>()})
            .to_string()
    };
    let mut keep_open = Vec::new();
    let (released, fired) = match Target::from_base(api.base())? {
        Some(target) => {
            let mut jobs = Vec::with_capacity(total);
            for (buyer, &n) in attempts.iter().enumerate() {
                for _ in 0..n {
                    let cart = cart_of(carts.len() as u64, &skus, args.cart_size);
                    let target = target.clone();
                    let req = target.reserve_body(sale, &tokens[buyer], &cart_body(&cart));
                    carts.push(cart);
                    slot_buyer.push(buyer);
                    jobs.push((
                        move || async move { Conn::open(&target, timeout).await },
                        move |mut conn: Conn| async move { (conn.timed(&req).await, conn) },
                    ));
                }
            }
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
            let mut jobs = Vec::with_capacity(total);
            for (buyer, &n) in attempts.iter().enumerate() {
                let client = build_client(n as usize, timeout)?;
                for _ in 0..n {
                    let cart = cart_of(carts.len() as u64, &skus, args.cart_size);
                    let req = client
                        .post(api.reserve_url(sale))
                        .bearer_auth(&tokens[buyer])
                        .header("content-type", "application/json")
                        .body(cart_body(&cart));
                    carts.push(cart);
                    slot_buyer.push(buyer);
                    jobs.push((|| async { Ok(()) }, move |()| timed(req)));
                }
            }
            release_together(jobs, 64).await?
        }
    };
    let released_at = unix_ms(released);
    let wall = wall_time(&fired);
    let after = session.view().await?;
    drop(keep_open);

    let recorded = Attempt::from_fired(fired, slot_buyer);
    let tally = Tally::from_answers(recorded.iter().map(|a| &a.answer));
    let checks = cart_checks(&CartFacts {
        attempts: &recorded,
        carts: &carts,
        user_ids: &buyers.ids,
        before: &before,
        after: &after,
    });
    let params = Params::new(vec![
        ("buyers", json!(args.buyers)),
        (
            "retrying_buyers",
            json!(attempts.iter().filter(|&&a| a > 1).count()),
        ),
        ("items", json!(before.items)),
        ("cart_size", json!([args.cart_size.0, args.cart_size.1])),
        ("per_user_limit", json!(before.per_user_limit)),
        ("sale_after", json!(after)),
        ("released_at_unix_ms", json!(released_at)),
    ]);
    Ok(session.report("burst", params, &tally, wall, vec![], checks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Answer, ItemView};
    use std::time::Duration;

    fn skus() -> Vec<String> {
        ["L", "M", "S"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn carts_are_distinct_sorted_and_within_the_sizes() {
        let mut seen = BTreeMap::new();
        for n in 0..300 {
            let c = cart_of(n, &skus(), (1, 3));
            assert!((1..=3).contains(&c.len()), "{c:?}");
            let mut d = c.clone();
            d.dedup();
            assert_eq!(d, c, "distinct and sorted");
            *seen.entry(c.len()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3, "every size drawn: {seen:?}");
        assert_eq!(cart_of(7, &skus(), (2, 2)).len(), 2);
        assert_eq!(cart_of(7, &skus(), (1, 9)), cart_of(7, &skus(), (1, 9)));
    }

    fn view(items: &[(&str, i64, i64)], limit: i64) -> SaleView {
        let mut v = SaleView::live(0, 0, 0, limit);
        for (sku, stock, held) in items {
            v.items.push(ItemView {
                sku: sku.to_string(),
                stock: *stock,
                sold: 0,
                held: *held,
                available: stock - held,
            });
            v.stock += stock;
            v.held += held;
        }
        v.available = v.stock - v.held;
        v
    }

    fn hold(buyer: usize, cart: &[&str], rid: &str) -> Attempt {
        let items: Vec<Value> = cart
            .iter()
            .map(|s| json!({"sku": s, "quantity": 1}))
            .collect();
        Attempt {
            buyer,
            answer: Answer {
                status: Some(201),
                code: None,
                latency: Duration::from_millis(1),
                body: Some(json!({
                    "reservation_id": rid, "sale_id": "s", "user_id": format!("u{buyer}"),
                    "quantity": cart.len(), "status": "held", "items": items,
                })),
            },
        }
    }

    fn sold_out(buyer: usize, sku: &str) -> Attempt {
        Attempt {
            buyer,
            answer: Answer {
                status: Some(409),
                code: Some("sold_out".into()),
                latency: Duration::from_millis(1),
                body: Some(json!({"error": {"code": "sold_out", "details": {
                    "shortfalls": [{"sku": sku, "requested": 1, "available": 0}]}}})),
            },
        }
    }

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect()
    }

    fn run(
        attempts: &[Attempt],
        carts: &[&[&str]],
        before: &SaleView,
        after: &SaleView,
    ) -> Vec<Check> {
        let carts: Vec<Vec<String>> = carts
            .iter()
            .map(|c| c.iter().map(|s| s.to_string()).collect())
            .collect();
        let users: Vec<String> = (0..4).map(|i| format!("u{i}")).collect();
        cart_checks(&CartFacts {
            attempts,
            carts: &carts,
            user_ids: &users,
            before,
            after,
        })
    }

    #[test]
    fn whole_carts_within_stock_pass() {
        let attempts = [
            hold(0, &["M", "S"], "r1"),
            hold(1, &["S"], "r2"),
            sold_out(2, "S"),
        ];
        let carts: [&[&str]; 3] = [&["M", "S"], &["S"], &["L", "S"]];
        let before = view(&[("S", 2, 0), ("M", 1, 0), ("L", 1, 0)], 2);
        let after = view(&[("S", 2, 2), ("M", 1, 1), ("L", 1, 0)], 2);
        let checks = run(&attempts, &carts, &before, &after);
        assert!(failed(&checks).is_empty(), "{checks:?}");
    }

    #[test]
    fn a_partial_hold_of_a_refused_cart_fails() {
        // The refused cart L+S left L held.
        let attempts = [
            hold(0, &["M", "S"], "r1"),
            hold(1, &["S"], "r2"),
            sold_out(2, "S"),
        ];
        let carts: [&[&str]; 3] = [&["M", "S"], &["S"], &["L", "S"]];
        let before = view(&[("S", 2, 0), ("M", 1, 0), ("L", 1, 0)], 2);
        let after = view(&[("S", 2, 2), ("M", 1, 1), ("L", 1, 1)], 2);
        assert_eq!(
            failed(&run(&attempts, &carts, &before, &after)),
            vec!["per_item"]
        );
    }

    #[test]
    fn an_oversold_item_and_a_buyer_over_the_cap_fail() {
        let attempts = [hold(0, &["M", "S"], "r1"), hold(0, &["S"], "r2")];
        let carts: [&[&str]; 2] = [&["M", "S"], &["S"]];
        let before = view(&[("S", 1, 0), ("M", 1, 0)], 2);
        let after = view(&[("S", 1, 2), ("M", 1, 1)], 2);
        let f = run(&attempts, &carts, &before, &after);
        let names = failed(&f);
        assert!(
            names.contains(&"per_item") && names.contains(&"per_user_cap"),
            "{f:?}"
        );
    }
}
