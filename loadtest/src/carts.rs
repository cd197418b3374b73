//! `burst --items S:5,M:5,L:5 --cart-size 1..3`: a burst of carts on a sale
//! of several items. Every buyer's request is a cart of distinct items (one
//! unit each), all released at one instant; then the checks per item and
//! per buyer: every cart held whole or not at all, no item above its stock,
//! no buyer above the cap.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::burst::{release_reserves, Attempt, Plan};
use crate::cli::{BurstArgs, Common};
use crate::client::SaleView;
use crate::report::{count_outcomes, Check, Report};
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
        let was = before.get(item.sku.as_str()).map_or(0, |i| i.units.held);
        let u = item.units;
        if u.held != was + g || !u.consistent() {
            wrong.push(format!(
                "{}: stock {} sold {} held {} (before {was} + granted {g}) available {}",
                item.sku, u.stock, u.sold, u.held, u.available
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
        (s + i.units.stock, o + i.units.sold, h + i.units.held)
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
    let (api, sale) = (&session.api, session.sale.as_str());
    let body = json!({
        "items": items.iter().map(|(s, n)| json!({"sku": s, "stock": n})).collect::<Vec<_>>(),
        "per_user_limit": args.per_user_limit,
        "hold_ttl_secs": args.hold_ttl_secs,
    });
    api.put_sale(sale, &body).await?;
    let before = session.view().await?;
    let skus: Vec<String> = items.iter().map(|(s, _)| s.clone()).collect();

    let plan = Plan::new(&session, args)?;
    session.note(format_args!(
        "burst of carts: {} buyers, {} requests over {} items; opening connections...",
        plan.attempts.len(),
        plan.total,
        skus.len()
    ));
    // Each request a cart of its own (the n-th request's cart is `cart_of(n)`).
    let carts: Vec<Vec<String>> = (0..plan.total as u64)
        .map(|n| cart_of(n, &skus, args.cart_size))
        .collect();
    let cart_body = |n: usize| {
        json!({"items": carts[n].iter().map(|s| json!({"sku": s, "quantity": 1})).collect::<Vec<_>>()})
            .to_string()
    };
    let released = release_reserves(&session, &plan, cart_body, false).await?;
    let after = &released.after;
    let checks = cart_checks(&CartFacts {
        attempts: &released.attempts,
        carts: &carts,
        user_ids: &plan.buyers.ids,
        before: &before,
        after,
    });
    let more = vec![
        ("items", json!(before.items)),
        ("cart_size", json!([args.cart_size.0, args.cart_size.1])),
        ("per_user_limit", json!(before.per_user_limit)),
    ];
    Ok(released.report(&session, &plan, args, more, checks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ItemView, Units};
    use crate::report::failed;

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
                units: Units::live(*stock, 0, *held),
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
        let body = json!({
            "reservation_id": rid, "sale_id": "s", "user_id": format!("u{buyer}"),
            "quantity": cart.len(), "status": "held", "items": items,
        });
        Attempt::answered(buyer, 201, None, body)
    }

    fn sold_out(buyer: usize, sku: &str) -> Attempt {
        let body = json!({"error": {"code": "sold_out", "details": {
            "shortfalls": [{"sku": sku, "requested": 1, "available": 0}]}}});
        Attempt::answered(buyer, 409, Some("sold_out"), body)
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

    /// The checks of three carts on S (2), M (1), L (1): M+S and S held,
    /// L+S refused as sold out (S is gone), and L held `l_held` afterwards.
    fn two_held_one_refused(l_held: i64) -> Vec<Check> {
        let attempts = [
            hold(0, &["M", "S"], "r1"),
            hold(1, &["S"], "r2"),
            sold_out(2, "S"),
        ];
        let carts: [&[&str]; 3] = [&["M", "S"], &["S"], &["L", "S"]];
        let before = view(&[("S", 2, 0), ("M", 1, 0), ("L", 1, 0)], 2);
        let after = view(&[("S", 2, 2), ("M", 1, 1), ("L", 1, l_held)], 2);
        run(&attempts, &carts, &before, &after)
    }

    #[test]
    fn whole_carts_within_stock_pass() {
        let checks = two_held_one_refused(0);
        assert!(failed(&checks).is_empty(), "{checks:?}");
    }

    #[test]
    fn a_partial_hold_of_a_refused_cart_fails() {
        // The refused cart L+S left L held.
        assert_eq!(failed(&two_held_one_refused(1)), vec!["per_item"]);
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
