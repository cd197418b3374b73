//! `watch`: N subscribers on one sale's event stream
//! (`GET /v1/sales/{id}/events`). Measures how long they take to connect
//! (until each has its first event) and how long a change takes to reach
//! every one of them (a hold made by a fresh buyer, then the first event of
//! each subscriber whose `held` shows it), coalescing included.
//!
//! Subscribers are raw TCP connections (`http://` targets only), each
//! reading its stream into a small buffer: 10,000 of them fit one process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::cli::{Common, WatchArgs};
use crate::client::build_client;
use crate::raw::Target;
use crate::report::{Check, Params, Phase, Report, Tally};
use crate::session::Session;

/// One event a subscriber got: which subscriber, the sale's `held`, when.
struct Seen {
    sub: usize,
    held: i64,
    at: Instant,
}

/// The `"held":N` of every complete event in `buf` (and drops them).
fn take_events(buf: &mut Vec<u8>) -> Vec<i64> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let event: Vec<u8> = buf.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&event);
        if let Some(rest) = text.split("\"held\":").nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse() {
                out.push(n);
            }
        }
    }
    out
}

/// One subscriber: connects, asks for the stream, reports every event.
async fn subscribe(
    target: Target,
    sale: String,
    sub: usize,
    tx: mpsc::UnboundedSender<Seen>,
) -> Result<()> {
    let mut conn = TcpStream::connect(target.authority())
        .await
        .context("connecting a subscriber")?;
    conn.write_all(&target.get(&format!("/v1/sales/{sale}/events")))
        .await?;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let mut head_done = false;
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if !head_done {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            if !buf.starts_with(b"HTTP/1.1 200") {
                bail!(
                    "subscriber {sub}: {}",
                    String::from_utf8_lossy(&buf[..end.min(80)])
                );
            }
            buf.drain(..end + 4);
            head_done = true;
        }
        for held in take_events(&mut buf) {
            if tx
                .send(Seen {
                    sub,
                    held,
                    at: Instant::now(),
                })
                .is_err()
            {
                return Ok(());
            }
        }
    }
}

pub async fn run(common: &Common, args: &WatchArgs) -> Result<Report> {
    if args.subscribers == 0 || args.changes == 0 {
        bail!("--subscribers and --changes must be at least 1");
    }
    let session = Session::open(common).await?;
    let Some(target) = Target::from_base(session.api.base())? else {
        bail!("watch needs an http:// target");
    };
    let changes = i64::from(args.changes);
    // A sale reused from an earlier run (`--sale`) keeps that run's holds
    // (they last an hour): restock above them, and count changes from them.
    let committed = session.view().await.map_or(0, |v| v.sold + v.held);
    let base = session
        .configure(committed + changes + 10, 1, 3600)
        .await?
        .held;
    let n = args.subscribers as usize;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let connect_start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for sub in 0..n {
        let (target, sale, tx) = (target.clone(), session.sale.clone(), tx.clone());
        tasks.push(tokio::spawn(subscribe(target, sale, sub, tx)));
    }
    drop(tx);

    // Connect: every subscriber's first event.
    let mut first = vec![None::<Instant>; n];
    let mut connect = Tally::new();
    let deadline = connect_start + Duration::from_secs(120);
    while first.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(seen)) = tokio::time::timeout(left, rx.recv()).await else {
            let missing = first.iter().filter(|f| f.is_none()).count();
            bail!("{missing} of {n} subscribers had no first event within 120 s");
        };
        if first[seen.sub].is_none() {
            first[seen.sub] = Some(seen.at);
            connect.record("connected".into(), seen.at - connect_start);
        }
    }
    let connect_wall = connect_start.elapsed();
    // Always on stderr (also with --json): `loadtest/bench` waits for it.
    eprintln!("{n} subscribers connected in {connect_wall:?}");
    if args.hold_secs > 0 {
        // Idle streams: keep reading (keep-alives), and forget nothing.
        tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
        while rx.try_recv().is_ok() {}
    }

    // Changes: a hold each, spaced so each one is its own event.
    let buyers = session.buyers(args.changes as usize)?;
    let client = build_client(4, session.timeout)?;
    let mut made = Vec::with_capacity(args.changes as usize);
    let mut reserves = Tally::new();
    let reading = Arc::new(tokio::sync::Mutex::new(Vec::<Seen>::new()));
    let collector = {
        let reading = reading.clone();
        tokio::spawn(async move {
            while let Some(seen) = rx.recv().await {
                reading.lock().await.push(seen);
            }
        })
    };
    for token in &buyers.tokens {
        let at = Instant::now();
        let a =
            crate::client::timed(session.api.reserve(&client, &session.sale, token, 1, None)).await;
        reserves.record_answer(&a);
        made.push(at);
        tokio::time::sleep(Duration::from_millis(args.spacing_ms)).await;
    }
    // Every subscriber's view of the last change, or the time is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = {
            let seen = reading.lock().await;
            let mut top = vec![0i64; n];
            for s in seen.iter() {
                top[s.sub] = top[s.sub].max(s.held);
            }
            top.iter().filter(|h| **h >= base + changes).count()
        };
        if done == n || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in &tasks {
        t.abort();
    }
    collector.abort();
    let seen = std::mem::take(&mut *reading.lock().await);

    // Latency of change k at subscriber s: its first event with held >= k.
    let mut update = Tally::new();
    let mut missed = 0u64;
    let mut per_sub: Vec<Vec<(i64, Instant)>> = vec![Vec::new(); n];
    for s in &seen {
        per_sub[s.sub].push((s.held, s.at));
    }
    for events in &per_sub {
        for (k, at) in made.iter().enumerate() {
            let k = i64::try_from(k).unwrap_or(i64::MAX) + 1;
            match events
                .iter()
                .find(|(held, when)| *held >= base + k && *when >= *at)
            {
                Some((_, when)) => update.record("update".into(), *when - *at),
                None => missed += 1,
            }
        }
    }
    let events_per_sub = seen.len() as f64 / n as f64;
    let checks = vec![
        Check::answers("reserves", &reserves.outcomes, &["201"]),
        Check::new(
            "every_change_reached_every_subscriber",
            missed == 0,
            format!(
                "{missed} of {} (subscriber, change) pairs never seen",
                n * made.len()
            ),
        ),
    ];
    let params = Params::new(vec![
        ("subscribers", json!(n)),
        ("changes", json!(args.changes)),
        ("spacing_ms", json!(args.spacing_ms)),
        (
            "events_per_subscriber",
            json!((events_per_sub * 10.0).round() / 10.0),
        ),
    ]);
    let phases = vec![
        Phase::new("connect", &connect, connect_wall),
        Phase::new("update", &update, Duration::ZERO),
    ];
    Ok(session.report("watch", params, &update, connect_wall, phases, checks))
}

#[cfg(test)]
mod tests {
    use super::take_events;

    #[test]
    fn events_are_read_whole_whatever_the_reads_split() {
        let stream = b"event: sale\nid: 1\ndata: {\"held\":0,\"sold\":0}\n\n\r\n3a\r\n: keep-alive\n\nevent: sale\nid: 2\ndata: {\"held\":12}\n\n";
        for cut in 0..stream.len() {
            let mut buf = stream[..cut].to_vec();
            let mut got = take_events(&mut buf);
            buf.extend_from_slice(&stream[cut..]);
            got.extend(take_events(&mut buf));
            assert_eq!(got, vec![0, 12], "split at {cut}");
        }
    }
}
