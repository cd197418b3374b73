//! Dependencies behind a fault proxy (`support::proxy::FaultProxy`): Redis,
//! then Postgres, slowed down, black-holed and reset while requests are in
//! flight. For every mode:
//! - every request resolves, with a success or the documented dependency
//!   error (503 `unavailable`, JSON body, Retry-After), within a bound
//!   derived from the configured timeouts (a bound, not a speed claim);
//! - a client retrying with the same Idempotency-Key (or the same confirm)
//!   once the dependency is back never gets anything twice: one hold per
//!   key, held = the distinct reservations the retries returned, stock =
//!   sold + held + available, one order row per confirmed reservation.
//!
//! Redis runs as a dedicated `redis-server` behind the proxy; Postgres is
//! the shared server reached through the proxy (a fresh database). Neither
//! shared server is stopped or flushed.

mod postgres_proxy;
mod readiness;
mod redis_proxy;

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::support::proxy::{FaultProxy, ProxyMode};
use crate::support::*;

const REDIS_TIMEOUT: Duration = Duration::from_millis(300);
const CONFIRM_TIMEOUT: Duration = Duration::from_millis(500);
/// Buyers sent while the fault begins, and as many once it is on.
const PER_GROUP: usize = 12;

/// One Redis call is bounded by the gate's deadline, 2 ×
/// `redis_timeout`; a reserve makes at most two (the script, then the
/// active-hold cap), so does a confirm (the script, then forgetting the
/// hold). Plus a second of slack for a loaded machine.
fn redis_bound() -> Duration {
    2 * (2 * REDIS_TIMEOUT) + Duration::from_secs(1)
}

/// A confirm: its Redis calls, then the Postgres write bounded by
/// `confirm_timeout`.
fn confirm_bound() -> Duration {
    redis_bound() + CONFIRM_TIMEOUT
}

/// How long to wait for fault-time work still in the pipes (a delay line
/// flushes after the proxy is restored) before the final count.
fn settle(mode: ProxyMode) -> Duration {
    match mode {
        ProxyMode::Delay(d) => d + Duration::from_secs(1),
        _ => Duration::from_secs(1),
    }
}

/// A success in `ok`, or 503 `unavailable` with Retry-After (or 429
/// `rate_limited` with Retry-After, when `ok` allows it), within `bound`.
fn check(what: &str, a: &Answer, ok: &[u16], bound: Duration) {
    assert!(
        a.took < bound,
        "{what}: answered {} after {:?}, bound {bound:?}",
        a.status,
        a.took
    );
    match a.status {
        503 => {
            assert_eq!(error_code(&a.body), "unavailable", "{what}: {}", a.body);
            assert!(a.retry_after.is_some(), "{what}: 503 without Retry-After");
        }
        429 if ok.contains(&429) => {
            assert_eq!(error_code(&a.body), "rate_limited", "{what}: {}", a.body);
            assert!(a.retry_after.is_some(), "{what}: 429 without Retry-After");
        }
        s => assert!(ok.contains(&s), "{what}: unexpected {s} {}", a.body),
    }
}

fn key(user: &str) -> String {
    format!("cart:{user}")
}

/// A reserve of one unit with the buyer's own Idempotency-Key.
fn idem_reserve(app: &TestApp, sale: &str, user: &str) -> reqwest::RequestBuilder {
    reserve_req(app, sale, user).header("Idempotency-Key", key(user))
}

/// Sends `make()` until it is answered with something other than 503 or
/// 429 (waiting as Retry-After says for a 429), each try within `bound`;
/// gives up after 30 s.
async fn until_answered(
    what: &str,
    ok: &[u16],
    bound: Duration,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut allowed = ok.to_vec();
    allowed.push(429);
    loop {
        let a = timed(what, make()).await;
        check(what, &a, &allowed, bound);
        let wait = match a.status {
            503 => Duration::from_millis(100),
            429 => Duration::from_secs(a.retry_after.unwrap_or(1)),
            _ => return a,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: still {} after 30 s of retries: {}",
            a.status,
            a.body
        );
        tokio::time::sleep(wait).await;
    }
}

/// Runs `one(i, group)` for `PER_GROUP` requests sent while the fault
/// begins (staggered, so some are in flight when it does) and `PER_GROUP`
/// sent once it is on; returns the answers in that order.
async fn around_the_fault<F, Fut>(proxy: &FaultProxy, mode: ProxyMode, one: F) -> Vec<Answer>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let stagger = |i: usize| Duration::from_millis(10 * (i % PER_GROUP) as u64);
    let spawn = |i: usize| {
        let fut = one(i);
        let wait = stagger(i);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            fut.await
        })
    };
    let before: Vec<_> = (0..PER_GROUP).map(spawn).collect();
    tokio::time::sleep(Duration::from_millis(40)).await;
    proxy.set(mode);
    let during: Vec<_> = (PER_GROUP..2 * PER_GROUP).map(spawn).collect();
    join_all(before.into_iter().chain(during))
        .await
        .into_iter()
        .map(|r| r.expect("request task"))
        .collect()
}
