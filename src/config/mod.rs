//! Typed settings: defaults, then environment variables (`FLASHGATE_*`).
//!
//! Secrets live in [`Secret`], whose `Debug` never prints the value.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A value that must never reach a log line.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(<unset>)")
        } else {
            f.write_str("Secret(<redacted>)")
        }
    }
}

/// When a confirm is acknowledged to the buyer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfirmDurability {
    /// 200 only once the order row is committed in Postgres (default).
    Postgres,
    /// 200 as soon as the Redis script ran; the worker persists it later.
    Redis,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// One `redis://` URL, or a comma list of seed nodes in cluster mode.
    pub redis_urls: Vec<String>,
    pub redis_cluster: bool,
    pub database_url: Secret,
    pub admin_token: Secret,
    pub jwt_secret: Secret,
    /// Optional `iss` / `aud` a buyer token must carry.
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// Prefix of every Redis key (lets tests and deployments share a Redis).
    pub key_prefix: String,
    pub confirm_durability: ConfirmDurability,
    /// Bound on waiting for Postgres on the confirm path.
    pub confirm_timeout: Duration,
    /// Group commit of the confirm path: writer tasks, confirms per
    /// transaction at most, confirms waiting for a writer at most.
    pub confirm_writers: usize,
    pub confirm_batch_max: usize,
    pub confirm_queue: usize,
    /// Bound on one Redis round trip (connect and response).
    pub redis_timeout: Duration,
    /// Bound on one Postgres statement outside the confirm path.
    pub db_timeout: Duration,
    pub sweep_interval: Duration,
    /// Expired holds given back per script call.
    pub sweep_batch: u32,
    /// How long a reservation record stays in Redis at most once final
    /// (confirmed, cancelled and expired ones are dropped sooner, once their event is
    /// in Postgres); a held record outlives its hold whatever this says.
    pub record_ttl: Duration,
    /// The write-behind drops confirmed, cancelled and expired records from
    /// Redis once their event is committed (else they stay `record_ttl`).
    pub drop_final_records: bool,
    /// How long idempotency keys stay in Redis.
    pub idempotency_ttl: Duration,
    /// actix worker threads (0 = one per core).
    pub http_workers: usize,
    pub max_body_bytes: usize,
    pub shutdown_timeout: Duration,
    /// Write-behind: entries per batch, deliveries before dead-lettering,
    /// idle time after which another consumer's pending entries are claimed.
    pub worker_batch: usize,
    pub worker_max_deliveries: u64,
    /// Write-behind tasks per instance (consumers of the same group: each
    /// takes other entries, their Postgres writes overlap).
    pub worker_tasks: usize,
    pub worker_claim_idle: Duration,
    /// Started with `--dev`: short secrets are allowed (loudly); missing ones never.
    pub dev_mode: bool,
    pub rate: RateSettings,
    /// Most holds one buyer may have at once across all sales (0 = off).
    pub max_active_holds: u32,
    /// Requests handled at once (the rest wait for a permit).
    pub max_inflight: usize,
    /// A background task (write-behind, sweeper) failing this long is
    /// stalled: `/readyz` says `degraded`, with the reason.
    pub stall_after: Duration,
    /// Event streams: views per second per sale at most, and subscribers
    /// per instance at most.
    pub events_max_hz: u32,
    pub events_max_subscribers: usize,
    /// Origins allowed to call from a browser (CORS); empty: no CORS headers.
    pub cors_origins: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            redis_urls: vec!["redis://127.0.0.1:6379".into()],
            redis_cluster: false,
            database_url: Secret::new("postgres://postgres@127.0.0.1:5432/flashgate"),
            admin_token: Secret::default(),
            jwt_secret: Secret::default(),
            jwt_issuer: None,
            jwt_audience: None,
            key_prefix: "fg".into(),
            confirm_durability: ConfirmDurability::Postgres,
            confirm_timeout: Duration::from_millis(2000),
            confirm_writers: 1,
            confirm_batch_max: 512,
            confirm_queue: 16_384,
            redis_timeout: Duration::from_millis(1000),
            db_timeout: Duration::from_millis(5000),
            sweep_interval: Duration::from_millis(1000),
            sweep_batch: 200,
            record_ttl: Duration::from_secs(7 * 24 * 3600),
            drop_final_records: true,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            http_workers: 0,
            max_body_bytes: 16 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            worker_batch: 2000,
            worker_max_deliveries: 5,
            worker_tasks: 2,
            worker_claim_idle: Duration::from_secs(30),
            dev_mode: false,
            rate: RateSettings::default(),
            max_active_holds: 10,
            max_inflight: 256,
            stall_after: Duration::from_secs(10),
            events_max_hz: 4,
            events_max_subscribers: 20_000,
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateSettings {
    /// Requests per second per buyer, and the burst allowed on top (0 = off).
    pub per_user_per_sec: u32,
    pub per_user_burst: u32,
    /// Requests per second per client IP (0 = off, the default).
    pub per_ip_per_sec: u32,
    pub per_ip_burst: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for RateSettings {
    fn default() -> Self {
        // A person clicks a handful of times; a script hammering one account
        // is held to 5 requests a second after a burst of 20.
        Self {
            per_user_per_sec: 5,
            per_user_burst: 20,
            per_ip_per_sec: 0,
            per_ip_burst: 0,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The shortest `record_ttl`: a final record must stay until the
/// write-behind wrote its event, usually well under a second. (A held
/// record always outlives its hold: see `lua/reserve.lua`.)
pub const MIN_RECORD_TTL: Duration = Duration::from_secs(3600);

/// Minimum length of the admin token and the JWT secret outside dev mode.
pub const MIN_SECRET_LEN: usize = 32;

impl Settings {
    /// Defaults overlaid with the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Defaults overlaid with whatever `get` returns (testable without
    /// touching the process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut s = Settings::default();
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        set(&var, "FLASHGATE_LISTEN", &mut s.listen)?;
        if let Some(v) = var("FLASHGATE_REDIS_URL") {
            s.redis_urls = v
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
        }
        set_bool(&var, "FLASHGATE_REDIS_CLUSTER", &mut s.redis_cluster)?;
        if let Some(v) = var("FLASHGATE_DATABASE_URL") {
            s.database_url = Secret::new(v);
        }
        if let Some(v) = var("FLASHGATE_ADMIN_TOKEN") {
            s.admin_token = Secret::new(v);
        }
        if let Some(v) = var("FLASHGATE_JWT_SECRET") {
            s.jwt_secret = Secret::new(v);
        }
        s.jwt_issuer = var("FLASHGATE_JWT_ISSUER");
        s.jwt_audience = var("FLASHGATE_JWT_AUDIENCE");
        if let Some(v) = var("FLASHGATE_KEY_PREFIX") {
            s.key_prefix = v;
        }
        if let Some(v) = var("FLASHGATE_CONFIRM_DURABILITY") {
            s.confirm_durability = match v.to_ascii_lowercase().as_str() {
                "postgres" => ConfirmDurability::Postgres,
                "redis" => ConfirmDurability::Redis,
                _ => {
                    return Err(err(
                        "FLASHGATE_CONFIRM_DURABILITY",
                        "expected postgres or redis",
                    ))
                }
            };
        }
        let ms = |name: &'static str, target: &mut Duration| -> Result<(), ConfigError> {
            if let Some(v) = var(name) {
                *target = Duration::from_millis(parse(name, &v)?);
            }
            Ok(())
        };
        ms("FLASHGATE_CONFIRM_TIMEOUT_MS", &mut s.confirm_timeout)?;
        ms("FLASHGATE_REDIS_TIMEOUT_MS", &mut s.redis_timeout)?;
        ms("FLASHGATE_DB_TIMEOUT_MS", &mut s.db_timeout)?;
        ms("FLASHGATE_SWEEP_INTERVAL_MS", &mut s.sweep_interval)?;
        ms("FLASHGATE_SHUTDOWN_TIMEOUT_MS", &mut s.shutdown_timeout)?;
        ms("FLASHGATE_WORKER_CLAIM_IDLE_MS", &mut s.worker_claim_idle)?;
        ms("FLASHGATE_STALL_AFTER_MS", &mut s.stall_after)?;
        set_bool(
            &var,
            "FLASHGATE_DROP_FINAL_RECORDS",
            &mut s.drop_final_records,
        )?;
        if let Some(v) = var("FLASHGATE_RECORD_TTL_SECS") {
            s.record_ttl = Duration::from_secs(parse("FLASHGATE_RECORD_TTL_SECS", &v)?);
        }
        set(&var, "FLASHGATE_HTTP_WORKERS", &mut s.http_workers)?;
        set(&var, "FLASHGATE_MAX_BODY_BYTES", &mut s.max_body_bytes)?;
        set(&var, "FLASHGATE_CONFIRM_WRITERS", &mut s.confirm_writers)?;
        set(
            &var,
            "FLASHGATE_CONFIRM_BATCH_MAX",
            &mut s.confirm_batch_max,
        )?;
        set(&var, "FLASHGATE_CONFIRM_QUEUE", &mut s.confirm_queue)?;
        set(&var, "FLASHGATE_WORKER_TASKS", &mut s.worker_tasks)?;
        set(&var, "FLASHGATE_WORKER_BATCH", &mut s.worker_batch)?;
        set(
            &var,
            "FLASHGATE_RATE_PER_USER",
            &mut s.rate.per_user_per_sec,
        )?;
        set(
            &var,
            "FLASHGATE_RATE_BURST_PER_USER",
            &mut s.rate.per_user_burst,
        )?;
        set(&var, "FLASHGATE_RATE_PER_IP", &mut s.rate.per_ip_per_sec)?;
        set(
            &var,
            "FLASHGATE_RATE_BURST_PER_IP",
            &mut s.rate.per_ip_burst,
        )?;
        set(&var, "FLASHGATE_MAX_ACTIVE_HOLDS", &mut s.max_active_holds)?;
        if let Some(v) = var("FLASHGATE_TRUSTED_PROXIES") {
            s.rate.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| parse("FLASHGATE_TRUSTED_PROXIES", p))
                .collect::<Result<_, _>>()?;
        }
        set(&var, "FLASHGATE_MAX_INFLIGHT", &mut s.max_inflight)?;
        set(&var, "FLASHGATE_EVENTS_MAX_HZ", &mut s.events_max_hz)?;
        set(
            &var,
            "FLASHGATE_EVENTS_MAX_SUBSCRIBERS",
            &mut s.events_max_subscribers,
        )?;
        if let Some(v) = var("FLASHGATE_CORS_ORIGINS") {
            s.cors_origins = v
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_string)
                .collect();
        }
        set_bool(&var, "FLASHGATE_DEV", &mut s.dev_mode)?;
        s.validate_shape()?;
        Ok(s)
    }
}

fn err(name: &'static str, reason: &str) -> ConfigError {
    ConfigError {
        name,
        reason: reason.to_string(),
    }
}

fn parse<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    v.trim()
        .parse()
        .map_err(|e: T::Err| err(name, &e.to_string()))
}

/// Sets `target` from the variable `name` when it is given.
fn set<T: std::str::FromStr>(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    target: &mut T,
) -> Result<(), ConfigError>
where
    T::Err: fmt::Display,
{
    if let Some(v) = var(name) {
        *target = parse(name, &v)?;
    }
    Ok(())
}

/// Sets a flag from the variable `name` when it is given.
fn set_bool(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    target: &mut bool,
) -> Result<(), ConfigError> {
    if let Some(v) = var(name) {
        *target = parse_bool(name, &v)?;
    }
    Ok(())
}

fn parse_bool(name: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(err(name, "expected 1/0, true/false")),
    }
}

mod checks;
#[cfg(test)]
mod tests;
