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
use crate::client::{build_client, short_id, timed, warm_up, Api, SaleView, TokenMinter};
use crate::raw::{Conn, Target};
use crate::report::{Check, Head, Params, Report, Tally};

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
    let (expected_key, what) = match mode {
        SustainedMode::Success => ("201", "201"),
        SustainedMode::SoldOut => ("409:sold_out", "409 sold_out"),
    };
    let total = tally.requests();
    let good = tally.outcomes.get(expected_key).copied().unwrap_or(0);
    let others: Vec<String> = tally
        .outcomes
        .iter()
        .filter(|(k, _)| k.as_str() != expected_key)
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    checks.push(Check::new(
        "answers",
        total > 0 && good == total,
        if others.is_empty() {
            format!("all {total} answers are {what}")
        } else {
            format!(
                "{good} of {total} are {what}; others: {}",
                others.join(", ")
            )
        },
    ));
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
            let granted = good as i64;
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
async fn sold_out_sale(
    api: &Api,
    sale: &str,
    ttl: u32,
    minter: &TokenMinter,
    timeout: Duration,
) -> Result<SaleView> {
    if api.configure_sale(sale, 0, 1, ttl).await.is_err() {
        // The consumed unit must stay held for the whole run: a long TTL.
        api.configure_sale(sale, 1, 1, ttl.max(600)).await?;
        let client = build_client(1, timeout)?;
        let token = minter.mint(&format!("{sale}-consumer"))?;
        let a = timed(api.reserve(&client, sale, &token, 1, None)).await;
        if !a.is(201) {
            bail!("could not take the single unit of sale {sale}: {}", a.key());
        }
    }
    let view = api.require_sale(sale).await?;
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
    let secret = common.jwt_secret()?;
    let timeout = Duration::from_secs(common.timeout_secs);
    let api = Api::new(&common.url, common.admin_token.clone(), timeout)?;
    api.check_reachable().await?;
    let sale = common.sale.clone().unwrap_or_else(|| short_id("lt"));
    let minter = TokenMinter::new(&secret);

    let before = match args.mode {
        SustainedMode::Success => {
            api.configure_sale(&sale, HUGE_STOCK, 1, args.hold_ttl_secs)
                .await?;
            api.require_sale(&sale).await?
        }
        SustainedMode::SoldOut => {
            sold_out_sale(&api, &sale, args.hold_ttl_secs, &minter, timeout).await?
        }
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

    let run = short_id("r");
    let counter = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut handles = Vec::with_capacity(n);
    for (task, mut sender) in senders.into_iter().enumerate() {
        let api = api.clone();
        let minter = minter.clone();
        let sale = sale.clone();
        let run = run.clone();
        let counter = counter.clone();
        let barrier = barrier.clone();
        let duration = args.duration;
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            let mut tally = Tally::new();
            let mut seq = 0u64;
            let mut last = Instant::now();
            while Instant::now() < deadline {
                let uid = format!("{sale}-{run}-{task}-{seq}");
                seq += 1;
                let token = minter.mint(&uid)?;
                let answer = match &mut sender {
                    Sender::Raw(conn) => conn.timed(&conn.target().reserve(&sale, &token, 1)).await,
                    Sender::Pooled(client) => {
                        timed(api.reserve(client, &sale, &token, 1, None)).await
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
    let after = api.require_sale(&sale).await?;
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
    Ok(Report::new(
        Head::new("sustained", api.base(), &sale, params),
        &tally,
        wall,
        vec![],
        checks,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(stock: i64, sold: i64, held: i64) -> SaleView {
        SaleView {
            sale_id: "s".into(),
            stock,
            sold,
            held,
            available: stock - sold - held,
            per_user_limit: 1,
            hold_ttl_secs: 30,
            state: "live".into(),
        }
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

    fn failed(c: Vec<Check>) -> Vec<String> {
        c.into_iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    #[test]
    fn success_mode() {
        let t = tally(&[("201", 100)]);
        let ok = sustained_checks(
            SustainedMode::Success,
            &t,
            &view(HUGE_STOCK, 0, 0),
            &view(HUGE_STOCK, 0, 80),
        );
        assert!(failed(ok).is_empty());
        let t = tally(&[("201", 100), ("503:unavailable", 1)]);
        let c = sustained_checks(
            SustainedMode::Success,
            &t,
            &view(HUGE_STOCK, 0, 0),
            &view(HUGE_STOCK, 0, 100),
        );
        assert_eq!(failed(c), vec!["answers"]);
        let t = tally(&[("201", 10)]);
        let c = sustained_checks(
            SustainedMode::Success,
            &t,
            &view(HUGE_STOCK, 0, 0),
            &view(HUGE_STOCK, 0, 11),
        );
        assert_eq!(failed(c), vec!["sale_view_holds"]);
    }

    #[test]
    fn sold_out_mode() {
        let t = tally(&[("409:sold_out", 50)]);
        let c = sustained_checks(SustainedMode::SoldOut, &t, &view(0, 0, 0), &view(0, 0, 0));
        assert!(failed(c).is_empty());
        let t = tally(&[("409:sold_out", 50), ("201", 1)]);
        let c = sustained_checks(SustainedMode::SoldOut, &t, &view(1, 0, 1), &view(1, 0, 1));
        assert_eq!(failed(c), vec!["answers"]);
        let t = tally(&[]);
        let c = sustained_checks(SustainedMode::SoldOut, &t, &view(0, 0, 0), &view(0, 0, 0));
        assert_eq!(failed(c), vec!["answers"]);
    }
}
