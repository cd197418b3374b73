//! `queue`: who wins when some buyers are fast and the rest slow. N
//! buyers, a share of them "fast", the others adding a delay to every
//! request; all there before the start. In `queue` mode they join the
//! sale's fair queue before the start and reserve once their place comes
//! (polling the way a page would: wait (position - serving) / rate); in
//! `open` mode they all reserve at the start. Reports the fast buyers'
//! share among the winners against their share among the buyers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;
use tokio::time::Instant;

use crate::cli::{Common, QueueArgs, QueueMode};
use crate::client::{build_client, timed, Answer};
use crate::report::{Check, Params, Phase, Report, Tally};
use crate::session::Session;

/// What one buyer ended with.
struct Outcome {
    fast: bool,
    won: bool,
    tally: Tally,
}

/// Waits as the answer says: until a queued place should come, or a bit.
fn pause_after(a: &Answer, rate: u32) -> Duration {
    let details = a.body.as_ref().map(|b| &b["error"]["details"]);
    let ahead = details.and_then(|d| {
        Some(
            d["position"]
                .as_u64()?
                .saturating_sub(d["serving"].as_u64()?),
        )
    });
    match ahead {
        Some(n) => Duration::from_millis((n * 1000 / u64::from(rate.max(1))).clamp(20, 2000)),
        None => Duration::from_millis(50),
    }
}

pub async fn run(common: &Common, args: &QueueArgs) -> Result<Report> {
    if args.buyers == 0 || !(0.0..=1.0).contains(&args.fast_share) {
        bail!("--buyers must be at least 1 and --fast-share in 0..=1");
    }
    let session = Arc::new(Session::open(common).await?);
    let n = args.buyers as usize;
    let n_fast = (n as f64 * args.fast_share).round() as usize;
    // Time to get everyone in the queue before the start.
    let lead = Duration::from_secs(args.start_in_secs) + Duration::from_millis(n as u64 / 2);
    let starts_at = chrono::Utc::now() + chrono::Duration::from_std(lead)?;
    let mut sale = json!({
        "stock": args.stock, "per_user_limit": 1, "hold_ttl_secs": 600,
        "starts_at": starts_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    if args.mode == QueueMode::Queue {
        sale["admission"] = json!("queue");
        sale["admit_per_sec"] = json!(args.admit_per_sec);
        sale["admission_window_secs"] = json!(args.window_secs);
    }
    session.api.put_sale(&session.sale, &sale).await?;
    let buyers = session.buyers(n)?;
    let client = build_client(n.min(512), session.timeout)?;

    let mut joins = Tally::new();
    if args.mode == QueueMode::Queue {
        let mut set = tokio::task::JoinSet::new();
        for token in &buyers.tokens {
            let req = session.api.join_queue(&client, &session.sale, token);
            set.spawn(timed(req));
        }
        while let Some(a) = set.join_next().await {
            joins.record_answer(&a?);
        }
        if chrono::Utc::now() >= starts_at {
            bail!("the joins took longer than --start-in-secs: raise it");
        }
    }
    let start = Instant::now()
        + (starts_at - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
    let won = Arc::new(AtomicU64::new(0));
    let stock = u64::try_from(args.stock).unwrap_or(0);
    let slow = Duration::from_millis(args.slow_ms);
    let give_up = start + Duration::from_secs(args.give_up_secs);
    let mut tasks = Vec::with_capacity(n);
    for (i, token) in buyers.tokens.into_iter().enumerate() {
        let (session, client, won) = (session.clone(), client.clone(), won.clone());
        let (fast, rate) = (i < n_fast, args.admit_per_sec);
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            tokio::time::sleep_until(start).await;
            loop {
                if won.load(Ordering::Relaxed) >= stock || Instant::now() >= give_up {
                    return Outcome {
                        fast,
                        won: false,
                        tally,
                    };
                }
                if !fast {
                    tokio::time::sleep(slow).await;
                }
                let a = timed(session.api.reserve(&client, &session.sale, &token, 1, None)).await;
                tally.record_answer(&a);
                let code = a.code.as_deref().unwrap_or("");
                match (a.status, code) {
                    (Some(201), _) => {
                        won.fetch_add(1, Ordering::Relaxed);
                        return Outcome {
                            fast,
                            won: true,
                            tally,
                        };
                    }
                    (Some(409), "sold_out") | (Some(410), _) => {
                        return Outcome {
                            fast,
                            won: false,
                            tally,
                        }
                    }
                    _ => tokio::time::sleep(pause_after(&a, rate)).await,
                }
            }
        }));
    }
    let mut tally = Tally::new();
    let (mut winners, mut fast_winners) = (0u64, 0u64);
    for t in tasks {
        let o = t.await?;
        tally.merge(&o.tally);
        if o.won {
            winners += 1;
            fast_winners += u64::from(o.fast);
        }
    }
    let wall = start.elapsed();
    let view = session.view().await?;
    let share = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            (a as f64 / b as f64 * 1000.0).round() / 10.0
        }
    };
    let fast_share_buyers = share(n_fast as u64, n as u64);
    let fast_share_winners = share(fast_winners, winners);
    session.note(format!(
        "{:?}: {winners} winners, {fast_winners} of them fast: {fast_share_winners} % of winners vs {fast_share_buyers} % of buyers",
        args.mode
    ));
    let checks = vec![
        Check::new(
            "sold_the_stock",
            winners == stock && view.sold + view.held == args.stock,
            format!(
                "{winners} winners, sold {} + held {} of {}",
                view.sold, view.held, args.stock
            ),
        ),
        Check::answers(
            "answers",
            &tally.outcomes,
            &[
                "201",
                "409:sold_out",
                "409:not_admitted",
                "409:sale_not_started",
                "410:admission_expired",
            ],
        ),
    ];
    let params = Params::new(vec![
        ("mode", json!(format!("{:?}", args.mode).to_lowercase())),
        ("buyers", json!(n)),
        ("fast_buyers", json!(n_fast)),
        ("slow_ms", json!(args.slow_ms)),
        ("stock", json!(args.stock)),
        ("admit_per_sec", json!(args.admit_per_sec)),
        ("winners", json!(winners)),
        ("fast_winners", json!(fast_winners)),
        ("fast_share_of_buyers_pct", json!(fast_share_buyers)),
        ("fast_share_of_winners_pct", json!(fast_share_winners)),
    ]);
    let mut phases = vec![Phase::new("reserve", &tally, wall)];
    if args.mode == QueueMode::Queue {
        phases.insert(0, Phase::new("join", &joins, Duration::ZERO));
    }
    Ok(session.report("queue", params, &tally, wall, phases, checks))
}

#[cfg(test)]
mod tests {
    use super::pause_after;
    use crate::client::answer_from;
    use std::time::Duration;

    #[test]
    fn a_queued_buyer_waits_for_its_place_at_the_rate() {
        let body = br#"{"error":{"code":"not_admitted","message":"m","details":{"position":120,"serving":20}}}"#;
        let a = answer_from(409, body, Duration::ZERO);
        assert_eq!(pause_after(&a, 200), Duration::from_millis(500));
        assert_eq!(pause_after(&a, 1), Duration::from_millis(2000), "capped");
        let other = answer_from(
            409,
            br#"{"error":{"code":"sale_not_started","message":"m","details":{}}}"#,
            Duration::ZERO,
        );
        assert_eq!(pause_after(&other, 200), Duration::from_millis(50));
    }
}
