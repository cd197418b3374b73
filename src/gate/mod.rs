//! The Redis side: every decision is one atomic Lua script on one sale's
//! keys. Callers never see Redis types: they get the typed outcomes of
//! `crate::domain`.
//!
//! - `mod.rs` (here): the gate, its errors and the one timed path every
//!   script call takes;
//! - `reservations.rs`: reserve, confirm / cancel / extend (one
//!   [`Transition`]), lookup;
//! - `holds.rs`: the buyer's cap of active holds across sales, all of it;
//! - `sales.rs`: a sale's state (sweep, configure, rebuild) and the index;
//! - `queue.rs`: a queued sale's fair queue (join, ticket);
//! - `admin.rs`: what admins do (steer a sale, page through its holds);
//! - `inspect.rs`: the consistent read and repair `reconcile` uses;
//! - `keys.rs`, `scripts.rs`, `reply.rs`, `conn.rs`: key names, the
//!   embedded scripts, reply parsing, the connection.

mod admin;
pub mod conn;
mod holds;
mod inspect;
pub mod keys;
mod queue;
mod reply;
mod reservations;
mod sales;
pub mod scripts;

use std::sync::Arc;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind, Value};

pub use conn::RedisConn;
pub use inspect::{Counters, Inspection, PendingConfirm};
pub use keys::SaleKeys;
pub use reservations::Transition;
pub use sales::Durable;
pub use scripts::Name as ScriptName;

use crate::ids::SaleId;
use reply::Reply;
use scripts::Scripts;

/// The Redis error codes flashgate acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisCode {
    /// A stream's consumer group (or the stream) is gone.
    NoGroup,
    /// The consumer group exists already.
    BusyGroup,
    /// `maxmemory` reached: a write was refused.
    OutOfMemory,
    /// A script runs too long; no other command runs meanwhile.
    Busy,
    NoReplicas,
    /// Persistence is failing and Redis refuses writes.
    Misconf,
}

impl RedisCode {
    pub fn of(e: &RedisError) -> Option<Self> {
        Some(match e.code()? {
            "NOGROUP" => Self::NoGroup,
            "BUSYGROUP" => Self::BusyGroup,
            "OOM" => Self::OutOfMemory,
            "BUSY" => Self::Busy,
            "NOREPLICAS" => Self::NoReplicas,
            "MISCONF" => Self::Misconf,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The sale has no state in Redis: unknown, or lost with Redis' data.
    #[error("the sale has no state in Redis")]
    NotLoaded,
    #[error("Redis refused the write: out of memory (maxmemory reached)")]
    OutOfMemory(#[source] RedisError),
    #[error("Redis is unavailable")]
    Unavailable(#[source] RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis refused a command or a script (`what`: e.g. `reserve.lua:42`
    /// where the error was raised, or the command).
    #[error("Redis error in {what}")]
    Refused {
        what: String,
        #[source]
        source: RedisError,
    },
    #[error("unexpected reply from {script}.lua: {detail}")]
    Protocol {
        script: &'static str,
        detail: String,
    },
}

impl GateError {
    /// The Redis error code behind this error, if it is one we act on.
    pub fn code(&self) -> Option<RedisCode> {
        match self {
            Self::OutOfMemory(e) | Self::Unavailable(e) | Self::Refused { source: e, .. } => {
                RedisCode::of(e)
            }
            _ => None,
        }
    }

    /// Classifies a Redis error; `what` names the script or command.
    fn classify(e: RedisError, what: impl FnOnce(&RedisError) -> String) -> Self {
        let code = RedisCode::of(&e);
        if code == Some(RedisCode::OutOfMemory) {
            return Self::OutOfMemory(e);
        }
        let transient = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_cluster_error()
            || matches!(
                code,
                Some(RedisCode::Busy | RedisCode::NoReplicas | RedisCode::Misconf)
            )
            || matches!(
                e.kind(),
                ErrorKind::Io
                    | ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ReadOnly
                            | ServerErrorKind::Moved
                            | ServerErrorKind::Ask
                    )
            )
            || cluster_refused_mid_script(&e);
        if transient {
            Self::Unavailable(e)
        } else {
            Self::Refused {
                what: what(&e),
                source: e,
            }
        }
    }
}

impl From<RedisError> for GateError {
    fn from(e: RedisError) -> Self {
        Self::classify(e, |_| "a command".to_string())
    }
}

/// A cluster node stopped a script at a key that is not (or no longer)
/// served here: its slot is migrating, or the cluster is down. The scripts
/// read a key before they write it, so such a stop leaves every step it
/// completed whole; the call is safe to retry once the slot has settled.
fn cluster_refused_mid_script(e: &RedisError) -> bool {
    e.detail().is_some_and(|d| {
        d.contains("Script attempted to access a non local key")
            || d.contains("while the cluster is down")
    })
}

/// Where in a script Redis raised an error: `user_script:42` (a line of
/// the script's own file, see `scripts::compose`) becomes `reserve.lua:42`.
fn script_location(script: ScriptName, e: &RedisError) -> String {
    let file = format!("{}.lua", script.file());
    e.detail()
        .and_then(|d| d.split("user_script:").nth(1))
        .and_then(|rest| {
            let line: String = rest.chars().take_while(char::is_ascii_digit).collect();
            (!line.is_empty()).then(|| format!("{file}:{line}"))
        })
        .unwrap_or(file)
}

#[derive(Clone, Debug)]
pub struct GateOptions {
    pub prefix: String,
    /// Hard bound on one gate call (connect, NOSCRIPT reload included).
    pub deadline: Duration,
    pub sweep_batch: u32,
    pub record_ttl: Duration,
    pub idempotency_ttl: Duration,
    /// Cap on one buyer's simultaneous holds across sales (0 = off).
    pub active_cap: u32,
}

#[derive(Clone)]
pub struct Gate {
    conn: RedisConn,
    scripts: Arc<Scripts>,
    opts: Arc<GateOptions>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

impl Gate {
    pub fn new(conn: RedisConn, opts: GateOptions) -> Self {
        Self {
            conn,
            scripts: Arc::new(Scripts::new()),
            opts: Arc::new(opts),
        }
    }

    pub fn keys(&self, sale: &SaleId) -> SaleKeys {
        SaleKeys::new(&self.opts.prefix, sale)
    }

    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// Runs `fut` within the gate's deadline; `what` names what Redis
    /// refused, should it refuse.
    async fn bounded_as<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RedisError>>,
        what: impl FnOnce(&RedisError) -> String,
    ) -> Result<T, GateError> {
        match tokio::time::timeout(self.opts.deadline, fut).await {
            Ok(r) => r.map_err(|e| GateError::classify(e, what)),
            Err(_) => {
                // On a cluster, a stale slot map (a hung primary) looks like this.
                self.conn.timed_out();
                Err(GateError::Timeout(self.opts.deadline))
            }
        }
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, GateError> {
        self.bounded_as(fut, |_| "a command".to_string()).await
    }

    /// The one path of every script call: bounded, timed, its errors naming
    /// the script (and line), `not_loaded` turned into
    /// [`GateError::NotLoaded`].
    async fn invoke(
        &self,
        name: ScriptName,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<Reply, GateError> {
        let mut conn = self.conn.clone();
        let start = std::time::Instant::now();
        let v: Value = self
            .bounded_as(inv.invoke_async(&mut conn), |e| script_location(name, e))
            .await?;
        crate::metrics::script_latency(name.file(), start.elapsed().as_secs_f64());
        let reply = Reply::new(name.file(), v)?;
        if reply.tag()? == "not_loaded" {
            return Err(GateError::NotLoaded);
        }
        Ok(reply)
    }

    /// An invocation of `name`, to fill with keys and arguments.
    fn prepare(&self, name: ScriptName) -> redis::ScriptInvocation<'_> {
        self.scripts.get(name).prepare_invoke()
    }

    /// Loads every script into Redis (a warm-up; `invoke` reloads anyway).
    pub async fn load_scripts(&self) -> Result<(), GateError> {
        for name in ScriptName::ALL {
            let mut conn = self.conn.clone();
            self.bounded(self.prepare(*name).load_async(&mut conn))
                .await?;
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), GateError> {
        let mut conn = self.conn.clone();
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }

    /// `maxmemory-policy` of the server(s), to warn about eviction.
    pub async fn eviction_policy(&self) -> Result<String, GateError> {
        let mut conn = self.conn.clone();
        let v: Vec<String> = self
            .bounded(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(v.get(1).cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(detail: &str) -> RedisError {
        RedisError::from((ErrorKind::Client, "ERR", detail.to_string()))
    }

    #[test]
    fn a_script_error_names_its_file_and_line() {
        let e = server_error("user_script:37: boom script: 3f9b, on @user_script:37.");
        assert_eq!(script_location(ScriptName::Reserve, &e), "reserve.lua:37");
        let e = server_error("Unknown Redis command called from script");
        assert_eq!(script_location(ScriptName::Confirm, &e), "confirm.lua");
    }
}
