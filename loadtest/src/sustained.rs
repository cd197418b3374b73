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

/// Slack for the clocks: flashgate dates a hold by Redis' clock, this tool
/// by its own.
const CLOCK_SLACK: Duration = Duration::from_secs(1);

/// When one task's holds were asked for: their count by the whole second
/// (since `begun`) in which their request went out. A hold asked for at `t`
/// was made at `t` or later, so it lasts at least until `t + TTL`.
#[derive(Debug, Clone)]
pub struct Grants {
    begun: Instant,
    per_second: Vec<u64>,
}

impl Grants {
    pub fn new(begun: Instant) -> Self {
        Self {
            begun,
            per_second: Vec::new(),
        }
    }

    /// A 201 to a request sent at `sent`.
    pub fn record(&mut self, sent: Instant) {
        let s = usize::try_from(sent.saturating_duration_since(self.begun).as_secs())
            .unwrap_or(usize::MAX);
        if self.per_second.len() <= s {
            self.per_second.resize(s + 1, 0);
        }
        self.per_second[s] += 1;
    }

    /// Holds that cannot have expired by `at` (nobody confirms or cancels
    /// them): those asked for less than `ttl` before it, with slack.
    pub fn live_at(&self, at: Instant, ttl: Duration) -> u64 {
        self.per_second
            .iter()
            .enumerate()
            .filter(|(s, _)| self.begun + Duration::from_secs(*s as u64) + ttl > at + CLOCK_SLACK)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The checks of a sustained run. `live` is how many of the run's holds
/// the view must still show (see [`Grants::live_at`]).
pub fn sustained_checks(
    mode: SustainedMode,
    tally: &Tally,
    live: u64,
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
            // Nothing was confirmed, so nothing sold. Held: at most what was
            // held before plus every grant (some may have expired), at
            // least the grants too recent to have expired.
            let granted = tally.outcomes.get("201").copied().unwrap_or(0) as i64;
            let live = live as i64;
            checks.push(Check::new(
                "sale_view_holds",
                after.sold == before.sold
                    && after.held <= before.held + granted
                    && after.held >= live,
                format!(
                    "sold {} (before {}); held {}, between {live} granted less than a hold TTL ago \
                     and before {} + granted {granted}",
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
            let mut grants = Grants::new(begun);
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
                if answer.is(201) {
                    grants.record(sent);
                }
                tally.record_answer(&answer);
                counter.fetch_add(1, Ordering::Relaxed);
                last = Instant::now();
            }
            Ok::<_, anyhow::Error>((tally, grants, last))
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
    let mut grants = Vec::with_capacity(n);
    let mut end = start;
    let mut first_err = None;
    for h in handles {
        match h.await.context("a load task panicked")? {
            Ok((t, g, last)) => {
                tally.merge(&t);
                grants.push(g);
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
    let viewed = Instant::now();
    // The shorter TTL, should the sale have been reconfigured meanwhile.
    let ttl_secs = before.hold_ttl_secs.min(after.hold_ttl_secs);
    let ttl = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0));
    let live = grants.iter().map(|g| g.live_at(viewed, ttl)).sum();
    let checks = sustained_checks(args.mode, &tally, live, &before, &after);
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

    /// (answers, holds still due, the view after, the checks that fail)
    type Case = (
        &'static [(&'static str, u64)],
        u64,
        SaleView,
        &'static [&'static str],
    );

    fn run_cases(mode: SustainedMode, before: &SaleView, cases: Vec<Case>) {
        for (entries, live, after, want) in cases {
            let c = sustained_checks(mode, &tally(entries), live, before, &after);
            let failed: Vec<&str> = c
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(failed, want, "{entries:?}, {live} due, after {after:?}");
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
                (&[("201", 100)], 80, view(huge, 0, 80), &[]),
                (
                    &[("201", 100), ("503:unavailable", 1)],
                    100,
                    view(huge, 0, 100),
                    &["answers"],
                ),
                // More held than was ever granted.
                (&[("201", 10)], 10, view(huge, 0, 11), &["sale_view_holds"]),
                // Fewer held than the grants too recent to have expired.
                (&[("201", 10)], 10, view(huge, 0, 9), &["sale_view_holds"]),
                // Something sold, though nobody confirmed.
                (&[("201", 10)], 0, view(huge, 1, 9), &["sale_view_holds"]),
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
                (&[("409:sold_out", 50)], 0, view(1, 0, 1), &[]),
                (
                    &[("409:sold_out", 50), ("201", 1)],
                    0,
                    view(1, 0, 1),
                    &["answers"],
                ),
                (&[], 0, view(1, 0, 1), &["answers"]),
                // A unit given back during a sold-out run.
                (
                    &[("409:sold_out", 50)],
                    0,
                    view(1, 0, 0),
                    &["sale_view_unchanged"],
                ),
            ],
        );
    }

    #[test]
    fn grants_still_due_are_those_younger_than_the_ttl() {
        let begun = Instant::now();
        let mut g = Grants::new(begun);
        for s in [0, 0, 1, 5, 9] {
            g.record(begun + Duration::from_millis(s * 1000 + 300));
        }
        let ttl = Duration::from_secs(30);
        // Viewed right after a 10 s run: none can have expired.
        assert_eq!(g.live_at(begun + Duration::from_secs(10), ttl), 5);
        // Viewed at 33.5 s: those of seconds 0 to 3 may have expired (with
        // a second of slack for the clocks), those of 5 and 9 cannot.
        assert_eq!(g.live_at(begun + Duration::from_millis(33_500), ttl), 2);
        assert_eq!(g.live_at(begun + Duration::from_secs(60), ttl), 0);
    }
}
