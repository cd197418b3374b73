//! `confirm`: N held reservations of one sale, each a fresh buyer, then all
//! confirmed at concurrency C (closed loop). Between the phases it waits
//! for the write-behind to write the holds' events, so that the confirm
//! phase measures confirms, not the hold phase's trailing writes. Reports
//! the confirm phase (confirms/s, p50/p99) and the end-to-end purchase
//! rate: purchases over the whole wall time (hold, that wait, confirm).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::cli::{Common, ConfirmArgs};
use crate::client::{build_client, timed, warm_up, Answer};
use crate::report::{count_outcomes, Check, Params, Phase, Report, Tally};
use crate::session::Session;

/// Runs `n` requests with `c` in flight at once; answers in order.
async fn closed_loop<F>(n: usize, c: usize, make: F) -> (Vec<Answer>, Duration)
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let make = Arc::new(make);
    let begun = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..c.max(1) {
        let (next, make) = (next.clone(), make.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                out.push((i, timed(make(i)).await));
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        if let Ok(part) = done {
            all.extend(part);
        }
    }
    let wall = begun.elapsed();
    all.sort_by_key(|(i, _)| *i);
    (all.into_iter().map(|(_, a)| a).collect(), wall)
}

pub async fn run(common: &Common, a: &ConfirmArgs) -> Result<Report> {
    let s = Session::open(common).await?;
    let n = a.holds as usize;
    let c = a.concurrency as usize;
    if n == 0 || c == 0 {
        bail!("--holds and --concurrency must be at least 1");
    }
    let before = s.configure(i64::from(a.holds), 1, a.hold_ttl_secs).await?;
    let buyers = Arc::new(s.buyers(n)?);
    let client = build_client(c, s.timeout)?;
    warm_up(&client, &s.api.healthz_url(), c).await?;
    s.note(format!("{n} holds on {} at concurrency {c}", s.sale));

    let (api, sale) = (s.api.clone(), s.sale.clone());
    let (cl, b) = (client.clone(), buyers.clone());
    let (holds, hold_wall) = closed_loop(n, c, move |i| {
        api.reserve(&cl, &sale, &b.tokens[i], 1, None)
    })
    .await;
    let rids: Vec<Option<String>> = holds
        .iter()
        .map(|h| {
            h.reservation()
                .filter(|_| h.is(201))
                .map(|r| r.reservation_id)
        })
        .collect();
    let held: Vec<usize> = (0..n).filter(|i| rids[*i].is_some()).collect();
    let settle = s.settle(Duration::from_secs(60)).await?;
    s.note(format!(
        "{} holds in {:.2} s, written behind {:.2} s later; confirming them at concurrency {c}",
        held.len(),
        hold_wall.as_secs_f64(),
        settle.as_secs_f64()
    ));

    let (api, sale) = (s.api.clone(), s.sale.clone());
    let (cl, b) = (client.clone(), buyers.clone());
    let targets: Vec<(usize, String)> = held
        .iter()
        .filter_map(|i| rids[*i].clone().map(|r| (*i, r)))
        .collect();
    let targets = Arc::new(targets);
    let t = targets.clone();
    let (confirms, confirm_wall) = closed_loop(targets.len(), c, move |k| {
        let (i, rid) = &t[k];
        api.action(&cl, &sale, rid, "confirm", &b.tokens[*i])
    })
    .await;
    let after = s.view().await?;

    let hold_tally = Tally::from_answers(&holds);
    let confirm_tally = Tally::from_answers(&confirms);
    let confirmed = confirms.iter().filter(|a| a.is(200)).count();
    let whole = hold_wall + settle + confirm_wall;
    let purchase_rate = if whole.as_secs_f64() > 0.0 {
        (confirmed as f64 / whole.as_secs_f64() * 10.0).round() / 10.0
    } else {
        0.0
    };
    let hold_outcomes = count_outcomes(&holds);
    let confirm_outcomes = count_outcomes(&confirms);
    let checks = vec![
        Check::answers("hold_answers", &hold_outcomes, &["201"]),
        Check::answers("confirm_answers", &confirm_outcomes, &["200"]),
        Check::new(
            "sold_is_confirmed",
            after.sold - before.sold == confirmed as i64,
            format!(
                "sold went from {} to {}, {confirmed} confirms answered 200",
                before.sold, after.sold
            ),
        ),
    ];
    let mut tally = hold_tally.clone();
    tally.merge(&confirm_tally);
    let params = Params::new(vec![
        ("holds", json!(n)),
        ("concurrency", json!(c)),
        ("hold_ttl_secs", json!(a.hold_ttl_secs)),
        ("purchases_per_sec_end_to_end", json!(purchase_rate)),
        ("write_behind_settle_ms", json!(settle.as_millis())),
    ]);
    Ok(s.report(
        "confirm",
        params,
        &tally,
        whole,
        vec![
            Phase::new("hold", &hold_tally, hold_wall),
            Phase::new("confirm", &confirm_tally, confirm_wall),
        ],
        checks,
    ))
}
