//! `sustained`: a closed loop of `concurrency` tasks, each reserving again as
//! soon as its previous answer arrived, for a fixed time. Every request comes
//! from a fresh buyer, so the per-user cap never decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::sync::Barrier;

use crate::cli::{Common, SustainedArgs, SustainedMode};
use crate::client::{build_client, timed, warm_up, SaleView};
use crate::raw::{Conn, Target};
use crate::report::{Check, Params, Report, Tally};
use crate::session::Session;

/// Largest stock flashgate accepts: "huge" for the success mode.
pub const HUGE_STOCK: i64 = 1_000_000_000;

/// The checks of a sustained run.
pub fn sustained_checks(
    mode: SustainedMode,
    tally: &Tally,
    before: &SaleView,
    after: &SaleView,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let expected_key = match mode {
        SustainedMode::Success => "201",
        SustainedMode::SoldOut => "409:sold_out",
    };
    let total = tally.requests();
    checks.push(if total == 0 {
        Check::new("answers", false, "no request was answered within the run")
    } else {
        Check::answers("answers", &tally.outcomes, &[expected_key])
    });
    checks.push(Check::new(
        "sale_view_available",
        after.available == after.stock - after.sold - after.held
            && after.sold + after.held <= after.stock,
        format!(
            "available {} vs stock {} - sold {} - held {}",
            after.available, after.stock, after.sold, after.held
        ),
    ));
    match mode {
        SustainedMode::Success => {
            // Nothing was confirmed; holds may have expired, never grown past the grants.
            let granted = tally.outcomes.get("201").copied().unwrap_or(0) as i64;
            checks.push(Check::new(
                "sale_view_holds",
                after.sold == before.sold && after.held <= before.held + granted,
                format!(
                    "sold {} (before {}), held {} <= before {} + granted {granted}",
                    after.sold, before.sold, after.held, before.held
                ),
            ));
        }
        SustainedMode::SoldOut => {
            checks.push(Check::new(
                "sale_view_unchanged",
                after.sold == before.sold && after.held <= before.held && after.available == 0,
                format!(
                    "sold {} held {} available {} (before: sold {} held {})",
                    after.sold, after.held, after.available, before.sold, before.held
                ),
            ));
        }
    }
    checks
}

/// Configures a sale with no units left: stock 0, or (if refused) stock 1
/// whose unit is then taken by one reserve.
async fn sold_out_sale(session: &Session, ttl: u32) -> Result<SaleView> {
    let (api, sale) = (&session.api, session.sale.as_str());
    if api.configure_sale(sale, 0, 1, ttl).await.is_err() {
        // The consumed unit must stay held for the whole run: a long TTL.
        api.configure_sale(sale, 1, 1, ttl.max(600)).await?;
        let client = build_client(1, session.timeout)?;
        let token = session.minter.mint(&session.buyer_id("consumer"))?;
        let a = timed(api.reserve(&client, sale, &token, 1, None)).await;
        if !a.is(201) {
            bail!("could not take the single unit of sale {sale}: {}", a.key());
        }
    }
    let view = session.view().await?;
    if view.available != 0 {
        bail!("sale {sale} still has {} units available", view.available);
    }
    Ok(view)
}

/// How one task sends its requests: its own connection (`http://`), or
/// reqwest's pool (`https://`).
enum Sender {
    Raw(Conn),
    Pooled(reqwest::Client),
}

pub async fn run(common: &Common, args: &SustainedArgs) -> Result<Report> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let session = Arc::new(Session::open(common).await?);
    let (api, timeout) = (&session.api, session.timeout);

    let before = match args.mode {
        SustainedMode::Success => session.configure(HUGE_STOCK, 1, args.hold_ttl_secs).await?,
        SustainedMode::SoldOut => sold_out_sale(&session, args.hold_ttl_secs).await?,
    };

    let n = args.concurrency as usize;
    // One connection per task: opened and served once before the clock starts.
    let mut senders = Vec::with_capacity(n);
    match Target::from_base(api.base())? {
        Some(t) => {
            for _ in 0..n {
                senders.push(Sender::Raw(Conn::open(&t, timeout).await?));
            }
        }
        None => {
            let client = build_client(n, timeout)?;
            warm_up(&client, &api.healthz_url(), n).await?;
            senders.resize_with(n, || Sender::Pooled(client.clone()));
        }
    }

    let counter = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut handles = Vec::with_capacity(n);
    for (task, mut sender) in senders.into_iter().enumerate() {
        let session = session.clone();
        let counter = counter.clone();
        let barrier = barrier.clone();
        let duration = args.duration;
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let begun = Instant::now();
            let deadline = begun + duration;
            let mut tally = Tally::new();
            let mut seq = 0u64;
            let mut last = begun;
            let sale = session.sale.as_str();
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                let token = session
                    .minter
                    .mint(&session.buyer_id(format_args!("{task}-{seq}")))?;
                seq += 1;
                let answer = match &mut sender {
                    Sender::Raw(conn) => conn.timed(&conn.target().reserve(sale, &token, 1)).await,
                    Sender::Pooled(client) => {
                        timed(session.api.reserve(client, sale, &token, 1, None)).await
                    }
                };
                tally.record_answer(&answer);
                counter.fetch_add(1, Ordering::Relaxed);
                last = Instant::now();
            }
            Ok::<_, anyhow::Error>((tally, last))
        }));
    }

    let bar = if common.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(
            Some(args.duration.as_millis() as u64),
            ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                .context("progress bar template")?,
        );
        bar
    };
    barrier.wait().await;
    let start = Instant::now();
    let ticker = {
        let bar = bar.clone();
        let counter = counter.clone();
        let total = args.duration;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let elapsed = start.elapsed();
                let done = counter.load(Ordering::Relaxed);
                let rps = done as f64 / elapsed.as_secs_f64().max(1e-3);
                bar.set_position(elapsed.min(total).as_millis() as u64);
                bar.set_message(format!("{done} requests, {rps:.0} req/s"));
            }
        })
    };

    let mut tally = Tally::new();
    let mut end = start;
    let mut first_err = None;
    for h in handles {
        match h.await.context("a load task panicked")? {
            Ok((t, last)) => {
                tally.merge(&t);
                end = end.max(last);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    if let Some(e) = first_err {
        return Err(e);
    }
    let wall = end.saturating_duration_since(start);
    let after = session.view().await?;
    let checks = sustained_checks(args.mode, &tally, &before, &after);
    let mode = match args.mode {
        SustainedMode::Success => "success",
        SustainedMode::SoldOut => "sold-out",
    };
    let params = Params::new(vec![
        ("mode", json!(mode)),
        ("concurrency", json!(args.concurrency)),
        ("duration_s", json!(args.duration.as_secs_f64())),
        ("stock", json!(before.stock)),
        ("sale_after", json!(after)),
    ]);
    Ok(session.report("sustained", params, &tally, wall, vec![], checks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(stock: i64, sold: i64, held: i64) -> SaleView {
        SaleView::live(stock, sold, held, 1)
    }

    fn tally(entries: &[(&str, u64)]) -> Tally {
        let mut t = Tally::new();
        for (k, n) in entries {
            for _ in 0..*n {
                t.record((*k).to_string(), Duration::from_millis(1));
            }
        }
        t
    }

    /// (answers, the view after, the checks that fail)
    type Case = (
        &'static [(&'static str, u64)],
        SaleView,
        &'static [&'static str],
    );

    fn run_cases(mode: SustainedMode, before: &SaleView, cases: Vec<Case>) {
        for (entries, after, want) in cases {
            let c = sustained_checks(mode, &tally(entries), before, &after);
            let failed: Vec<&str> = c
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(failed, want, "{entries:?}, after {after:?}");
        }
    }

    #[test]
    fn success_mode() {
        let huge = HUGE_STOCK;
        run_cases(
            SustainedMode::Success,
            &view(huge, 0, 0),
            vec![
                // 100 granted, 20 of them expired already.
                (&[("201", 100)], view(huge, 0, 80), &[]),
                (
                    &[("201", 100), ("503:unavailable", 1)],
                    view(huge, 0, 100),
                    &["answers"],
                ),
                // More held than was ever granted.
                (&[("201", 10)], view(huge, 0, 11), &["sale_view_holds"]),
                // Something sold, though nobody confirmed.
                (&[("201", 10)], view(huge, 1, 9), &["sale_view_holds"]),
            ],
        );
    }

    #[test]
    fn sold_out_mode() {
        // Stock 1, its unit held by the run's set-up (stock 0 is the same).
        run_cases(
            SustainedMode::SoldOut,
            &view(1, 0, 1),
            vec![
                (&[("409:sold_out", 50)], view(1, 0, 1), &[]),
                (
                    &[("409:sold_out", 50), ("201", 1)],
                    view(1, 0, 1),
                    &["answers"],
                ),
                (&[], view(1, 0, 1), &["answers"]),
                // A unit given back during a sold-out run.
                (
                    &[("409:sold_out", 50)],
                    view(1, 0, 0),
                    &["sale_view_unchanged"],
                ),
            ],
        );
    }
}
