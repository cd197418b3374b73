//! Prometheus metrics: one recorder per process, real histograms with
//! buckets, and the names an operator watches, each described (`# HELP`).
//! The HTTP side (`GET /metrics`, the request middleware) is in
//! `api::observe`.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// Installs the recorder once (later calls reuse it: tests run several apps
/// in one process).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// The `# HELP` line of every metric flashgate records.
fn describe() {
    describe_counter!(
        "flashgate_http_requests_total",
        "HTTP requests answered, by route, method and status"
    );
    describe_histogram!(
        "flashgate_http_request_duration_seconds",
        Unit::Seconds,
        "End-to-end latency of HTTP requests, by route"
    );
    describe_counter!(
        "flashgate_reserve_outcomes_total",
        "Reserve decisions, by outcome (held, replay, sold_out, ...)"
    );
    describe_histogram!(
        "flashgate_script_duration_seconds",
        Unit::Seconds,
        "Redis round trip of each Lua script"
    );
    describe_counter!(
        "flashgate_holds_expired_total",
        "Holds given back by the sweeper (via=sweeper) or while reading a sale (via=read)"
    );
    describe_counter!(
        "flashgate_admission_wait_expired_total",
        "Requests whose wait for an admission permit ran out, then read anyway"
    );
    describe_counter!(
        "flashgate_rate_limited_total",
        "Requests refused with 429, by scope (user, ip, active_holds)"
    );
    describe_histogram!(
        "flashgate_write_behind_batch_size",
        "Events per write-behind batch"
    );
    describe_counter!(
        "flashgate_write_behind_events_total",
        "Stream events the write-behind wrote to Postgres"
    );
    describe_gauge!(
        "flashgate_write_behind_backlog",
        "Stream entries not yet written to Postgres, over all sales"
    );
    describe_gauge!(
        "flashgate_write_behind_pending",
        "Stream entries delivered to a worker but not yet acknowledged"
    );
    describe_counter!(
        "flashgate_postgres_write_errors_total",
        "Failed Postgres writes, by path (confirm, write_behind)"
    );
    describe_counter!(
        "flashgate_stale_orders_total",
        "Orders of a lost Redis state refused after the sale's rebuild, by path"
    );
    describe_gauge!(
        "flashgate_background_stalled",
        "1 while a background task has been failing longer than FLASHGATE_STALL_AFTER_MS"
    );
    describe_histogram!(
        "flashgate_confirm_batch_size",
        "Confirms committed per group-commit transaction of the confirm path"
    );
    describe_histogram!(
        "flashgate_confirm_commit_duration_seconds",
        Unit::Seconds,
        "Duration of one group-commit transaction of the confirm path"
    );
    describe_counter!(
        "flashgate_write_behind_dead_letters_total",
        "Stream entries parked in a sale's dead-letter stream"
    );
}

/// Folds the samples histograms collected into their buckets every
/// `every`. `install_recorder` leaves this to the caller, and a scrape does
/// it too; without it the raw samples pile up between scrapes, and for
/// ever where nothing scrapes `/metrics` (measured: tens of MiB after a few
/// million requests).
pub async fn upkeep(every: std::time::Duration, shutdown: tokio_util::sync::CancellationToken) {
    let Some(h) = install() else { return };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => h.run_upkeep(),
        }
    }
}

/// The Prometheus text of every metric.
pub fn render() -> String {
    match install() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

pub fn reserve_outcome(outcome: &'static str) {
    counter!("flashgate_reserve_outcomes_total", "outcome" => outcome).increment(1);
}

pub fn script_latency(script: &'static str, seconds: f64) {
    histogram!("flashgate_script_duration_seconds", "script" => script).record(seconds);
}

pub fn holds_expired(via: &'static str, n: i64) {
    if n > 0 {
        counter!("flashgate_holds_expired_total", "via" => via).increment(n.unsigned_abs());
    }
}

/// A request whose wait for an admission permit ran out (read uncounted).
pub fn admission_wait_expired() {
    counter!("flashgate_admission_wait_expired_total").increment(1);
}

pub fn rate_limited(scope: &'static str) {
    counter!("flashgate_rate_limited_total", "scope" => scope).increment(1);
}

pub fn write_behind_batch(events: usize) {
    histogram!("flashgate_write_behind_batch_size").record(events as f64);
    counter!("flashgate_write_behind_events_total").increment(events as u64);
}

pub fn write_behind_lag(backlog: i64, pending: i64) {
    metrics::gauge!("flashgate_write_behind_backlog").set(backlog as f64);
    metrics::gauge!("flashgate_write_behind_pending").set(pending as f64);
}

/// One group-commit transaction of the confirm path: its confirms and how
/// long it took (committed or not).
pub fn confirm_batch(confirms: usize, seconds: f64) {
    histogram!("flashgate_confirm_batch_size").record(confirms as f64);
    histogram!("flashgate_confirm_commit_duration_seconds").record(seconds);
}

pub fn postgres_write_error(path: &'static str) {
    counter!("flashgate_postgres_write_errors_total", "path" => path).increment(1);
}

/// Orders refused because their confirm ran in a sale state that was lost
/// and rebuilt before the write (`path`: `confirm`, `write_behind`).
pub fn stale_orders(path: &'static str, n: usize) {
    counter!("flashgate_stale_orders_total", "path" => path).increment(n as u64);
}

/// A background task (`write-behind`, `sweeper`) that has been failing for
/// longer than `FLASHGATE_STALL_AFTER_MS` (1), or not (0).
pub fn task_stalled(task: &'static str, stalled: bool) {
    metrics::gauge!("flashgate_background_stalled", "task" => task).set(if stalled {
        1.0
    } else {
        0.0
    });
}

pub fn dead_lettered() {
    counter!("flashgate_write_behind_dead_letters_total").increment(1);
}
