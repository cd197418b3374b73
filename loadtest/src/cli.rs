//! Command-line interface: common flags plus one subcommand per scenario.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "flashgate-loadtest",
    version,
    about = "Replays flash-sale bursts, reservation flows and sustained load against a running flashgate, \
             and checks its invariants"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Common options")]
pub struct Common {
    /// Base URL of the flashgate instance under test.
    #[arg(
        long,
        global = true,
        env = "FLASHGATE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Admin bearer token (configures sales).
    #[arg(
        long,
        global = true,
        env = "FLASHGATE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Secret that signs buyer tokens (HS256).
    #[arg(
        long,
        global = true,
        env = "FLASHGATE_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// Sale id to use (default: a fresh `lt-<8 hex>`).
    #[arg(long, global = true)]
    pub sale: Option<String>,
    /// Print one machine-readable JSON report on stdout instead of the table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Per-request timeout in seconds (a timeout counts as a transport error).
    #[arg(long, global = true, default_value_t = 30)]
    pub timeout_secs: u64,
}

impl Common {
    /// The JWT secret, required by every scenario (buyers need tokens).
    pub fn jwt_secret(&self) -> anyhow::Result<String> {
        self.jwt_secret
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!("a JWT secret is needed (--jwt-secret or FLASHGATE_JWT_SECRET)")
            })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// N buyers, connections pre-opened, every request released at one instant.
    Burst(BurstArgs),
    /// Reserve, then confirm / cancel / let expire, then check Postgres.
    Flow(FlowArgs),
    /// Closed-loop load for a fixed time: throughput and latency.
    Sustained(SustainedArgs),
    /// N subscribers on a sale's event stream: connect time, update latency.
    Watch(WatchArgs),
    /// Fast and slow buyers: who wins, through the fair queue or open.
    Queue(QueueArgs),
    /// N held reservations of one sale (a fresh buyer each), then all
    /// confirmed at a given concurrency: durable confirms per second.
    Confirm(ConfirmArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ConfirmArgs {
    /// Held reservations to make, then confirm (one fresh buyer each; the
    /// sale's stock is this).
    #[arg(long, default_value_t = 5000)]
    pub holds: u32,
    /// Requests in flight at any time, in both phases (closed loop).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Hold TTL of the sale: long enough for every confirm to come.
    #[arg(long, default_value_t = 300)]
    pub hold_ttl_secs: u32,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Event-stream subscribers (one connection each; http:// targets).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: u32,
    /// Changes to make once all are connected (a hold each, a fresh buyer).
    #[arg(long, default_value_t = 20)]
    pub changes: u32,
    /// Time between two changes, so each is an event of its own (more than
    /// the server's 1 / FLASHGATE_EVENTS_MAX_HZ).
    #[arg(long, default_value_t = 500)]
    pub spacing_ms: u64,
    /// Once every subscriber is connected, wait this long (idle streams)
    /// before the changes: a window to sample the server's memory and
    /// Redis' command rate in (a line "... subscribers connected" on
    /// stderr marks its start).
    #[arg(long, default_value_t = 0)]
    pub hold_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueMode {
    /// The sale's fair queue (`admission: queue`).
    Queue,
    /// No queue: whoever reserves first.
    Open,
}

#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    #[arg(long, value_enum, default_value = "queue")]
    pub mode: QueueMode,
    #[arg(long, default_value_t = 1000)]
    pub buyers: u32,
    #[arg(long, default_value_t = 100)]
    pub stock: i64,
    /// Share of the buyers that send every request at once.
    #[arg(long, default_value_t = 0.2)]
    pub fast_share: f64,
    /// What the other buyers add before every request.
    #[arg(long, default_value_t = 300)]
    pub slow_ms: u64,
    /// Queue mode: places let in per second, and each one's window.
    #[arg(long, default_value_t = 200)]
    pub admit_per_sec: u32,
    #[arg(long, default_value_t = 60)]
    pub window_secs: u32,
    /// The sale starts this long after it is configured (plus 0.5 ms a
    /// buyer, for the joins).
    #[arg(long, default_value_t = 2)]
    pub start_in_secs: u64,
    /// Buyers still without a unit stop trying this long after the start.
    #[arg(long, default_value_t = 60)]
    pub give_up_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct BurstArgs {
    /// Number of buyers (one keep-alive connection each).
    #[arg(long, default_value_t = 500)]
    pub buyers: u32,
    /// Units on sale (used when the sale is configured by this run).
    #[arg(long, default_value_t = 10)]
    pub stock: i64,
    /// Most units one buyer may hold or buy.
    #[arg(long, default_value_t = 2)]
    pub per_user_limit: u32,
    /// Units asked for by each reserve request.
    #[arg(long, default_value_t = 1)]
    pub quantity: u32,
    /// Share of buyers that send two extra reserve attempts at the same instant
    /// (no Idempotency-Key: real retries).
    #[arg(long, default_value_t = 0.1)]
    pub retry_share: f64,
    /// Hold TTL of a sale this run configures.
    #[arg(long, default_value_t = 300)]
    pub hold_ttl_secs: u32,
    /// (Re)configure the sale even if it exists (it is always created when missing).
    #[arg(long)]
    pub configure: bool,
    /// A sale of several items, `SKU:STOCK,...` (e.g. `S:5,M:5,L:5`): each
    /// buyer reserves a cart of distinct items (one unit each), and the
    /// checks hold per item and per buyer. Replaces --stock and --quantity;
    /// the sale is always (re)configured.
    #[arg(long, value_parser = parse_items)]
    pub items: Option<ItemList>,
    /// Items per cart with --items: `N` or `MIN..MAX` (inclusive), drawn
    /// per request.
    #[arg(long, default_value = "1..3", value_parser = parse_range)]
    pub cart_size: (u32, u32),
}

/// The items of `--items`: (sku, stock), in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemList(pub Vec<(String, i64)>);

/// `S:5,M:5,L:5` as (sku, stock) pairs: 1..=100 distinct skus of
/// `[A-Za-z0-9_-]`, each with a stock.
pub fn parse_items(s: &str) -> Result<ItemList, String> {
    let mut out: Vec<(String, i64)> = Vec::new();
    for part in s.split(',') {
        let (sku, n) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}` is not SKU:STOCK"))?;
        let ok = (1..=64).contains(&sku.len())
            && sku
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok || out.iter().any(|(s, _)| s == sku) {
            return Err(format!("`{sku}`: skus are distinct, 1-64 of [A-Za-z0-9_-]"));
        }
        let n: i64 = n
            .parse()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("`{n}` is not a stock"))?;
        out.push((sku.to_string(), n));
    }
    if out.len() > 100 {
        return Err("at most 100 items".into());
    }
    Ok(ItemList(out))
}

/// `3` or `1..3` (inclusive) as (min, max), min >= 1.
pub fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s.split_once("..").unwrap_or((s, s));
    let a: u32 = a
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not N or MIN..MAX"))?;
    let b: u32 = b
        .trim()
        .trim_start_matches('=')
        .parse()
        .map_err(|_| format!("`{s}` is not N or MIN..MAX"))?;
    if a == 0 || a > b {
        return Err(format!("`{s}`: need 1 <= MIN <= MAX"));
    }
    Ok((a, b))
}

#[derive(Debug, Clone, Args)]
pub struct FlowArgs {
    #[arg(long, default_value_t = 200)]
    pub buyers: u32,
    #[arg(long, default_value_t = 50)]
    pub stock: i64,
    #[arg(long, default_value_t = 2)]
    pub per_user_limit: u32,
    /// Share of the successful holds that get confirmed.
    #[arg(long, default_value_t = 0.5)]
    pub confirm_share: f64,
    /// Share of the successful holds that get cancelled (the rest expire).
    #[arg(long, default_value_t = 0.2)]
    pub cancel_share: f64,
    #[arg(long, default_value_t = 2)]
    pub hold_ttl_secs: u32,
    /// Postgres the flashgate worker writes to (read-only use).
    #[arg(
        long,
        env = "FLASHGATE_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/flashgate",
        hide_env_values = true
    )]
    pub database_url: String,
    /// How long to wait for expiries and the write-behind worker to settle.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SustainedMode {
    /// Huge stock, every request should get a hold (201).
    Success,
    /// No stock left, every request should be refused as sold_out (409).
    SoldOut,
}

#[derive(Debug, Clone, Args)]
pub struct SustainedArgs {
    /// Requests in flight at any time (closed loop).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// How long to run, e.g. `10s`, `500ms`, `2m`, or plain seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, value_enum, default_value_t = SustainedMode::Success)]
    pub mode: SustainedMode,
    /// Hold TTL of the sale (success mode holds pile up until they expire).
    #[arg(long, default_value_t = 30)]
    pub hold_ttl_secs: u32,
}

/// Parses `250ms`, `10s`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" | "sec" | "secs" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration `{s}` must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A share flag must lie in 0..=1.
pub fn check_share(name: &str, v: f64) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&v) {
        anyhow::bail!("--{name} must be between 0 and 1, got {v}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_carts_parses() {
        let cli = Cli::try_parse_from([
            "flashgate-loadtest",
            "burst",
            "--items",
            "S:5,M:5,L:5",
            "--cart-size",
            "1..3",
        ])
        .expect("parses");
        let Command::Burst(b) = cli.command else {
            panic!("burst")
        };
        let items = b.items.expect("items").0;
        assert_eq!(items.len(), 3);
        assert_eq!(items[1], ("M".to_string(), 5));
        assert_eq!(b.cart_size, (1, 3));
        assert!(parse_items("S:5,S:2").is_err());
        assert!(parse_items("a:b:5").is_err());
        assert_eq!(parse_range("2").expect("n"), (2, 2));
        assert!(parse_range("3..1").is_err());
        assert!(parse_range("0..2").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "flashgate-loadtest",
            "burst",
            "--buyers",
            "7",
            "--json",
            "--sale",
            "s1",
        ])
        .expect("parses");
        assert!(cli.common.json);
        assert_eq!(cli.common.sale.as_deref(), Some("s1"));
        match cli.command {
            Command::Burst(b) => {
                assert_eq!(b.buyers, 7);
                assert_eq!(b.stock, 10);
                assert!(!b.configure);
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::try_parse_from([
            "flashgate-loadtest",
            "sustained",
            "--mode",
            "sold-out",
            "--duration",
            "2s",
        ])
        .expect("parses");
        match cli.command {
            Command::Sustained(s) => {
                assert_eq!(s.mode, SustainedMode::SoldOut);
                assert_eq!(s.duration, Duration::from_secs(2));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn shares() {
        assert!(check_share("x", 0.0).is_ok());
        assert!(check_share("x", 1.0).is_ok());
        assert!(check_share("x", 1.1).is_err());
        assert!(check_share("x", -0.1).is_err());
    }
}
