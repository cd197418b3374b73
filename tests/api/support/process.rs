//! The real binary: `flashgate serve` as a child process of the test, for
//! what only a process shows (signals, its exit status, its own metrics and
//! log). Its output goes to a file (a pipe nobody reads would fill up and
//! stall a process logging at debug level); killed on drop.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use flashgate::config::Settings;

use super::app::{Spawn, TestApp, ADMIN, JWT_SECRET};
use super::pg::TestDb;
use super::redis_server::free_port;

/// The `flashgate` binary under test: the one nextest names (a run from a
/// nextest archive extracts its own copy), else the one cargo built along
/// with these tests.
pub fn flashgate_bin() -> OsString {
    std::env::var_os("NEXTEST_BIN_EXE_flashgate")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_flashgate").into())
}

/// `kill -<sig> <pid>` (TERM, INT, QUIT, STOP, CONT, KILL, ...).
pub fn send_signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// What points flashgate at `settings`' database, Redis and key prefix,
/// logging warnings only.
fn settings_env(settings: &Settings) -> [(&'static str, String); 5] {
    let cluster = if settings.redis_cluster { "1" } else { "0" };
    [
        (
            "FLASHGATE_DATABASE_URL",
            settings.database_url.expose().to_string(),
        ),
        ("FLASHGATE_REDIS_URL", settings.redis_urls.join(",")),
        ("FLASHGATE_REDIS_CLUSTER", cluster.to_string()),
        ("FLASHGATE_KEY_PREFIX", settings.key_prefix.clone()),
        ("RUST_LOG", "warn".to_string()),
    ]
}

/// `flashgate <subcommand>` on `settings`' database, Redis and key prefix
/// (a caller's `.env(..)` overrides any of it).
pub fn flashgate_command(subcommand: &str, settings: &Settings) -> Command {
    let mut cmd = Command::new(flashgate_bin());
    cmd.arg(subcommand).envs(settings_env(settings));
    cmd
}

pub struct Serve {
    child: Child,
    /// The process's address, and a view of its Redis and database.
    pub app: TestApp,
    log_path: PathBuf,
    _db: Option<Arc<TestDb>>,
}

impl Serve {
    /// `flashgate serve` on `spawn`'s database, Redis and key prefix, with
    /// one HTTP worker and `RUST_LOG=warn` unless `env` (which wins over
    /// all of those) says otherwise; returns once `/healthz` answers.
    pub async fn start(spawn: &Spawn, env: &[(&str, &str)]) -> Self {
        let settings = &spawn.settings;
        let port = free_port();
        let log_path =
            std::env::temp_dir().join(format!("flashgate-{}-{port}.log", settings.key_prefix));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(flashgate_bin());
        // Nothing from the test's own environment (RUST_LOG, FLASHGATE_*).
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(settings_env(settings))
            .env("FLASHGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLASHGATE_ADMIN_TOKEN", ADMIN)
            .env("FLASHGATE_JWT_SECRET", JWT_SECRET)
            .env("FLASHGATE_HTTP_WORKERS", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        let child = cmd.spawn().expect("start flashgate serve");
        let pool = PgPool::connect(&spawn.database_url()).await.expect("pool");
        let app = TestApp::external(format!("http://127.0.0.1:{port}"), settings, pool).await;
        let mut me = Self {
            child,
            app,
            log_path,
            _db: spawn.database(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = me.app.client.get(me.app.url("/healthz")).send().await {
                if r.status().is_success() {
                    return me;
                }
            }
            if let Some(status) = me.exited() {
                panic!("flashgate serve exited ({status}):\n{}", me.log());
            }
            assert!(
                Instant::now() < deadline,
                "flashgate serve did not start:\n{}",
                me.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -<sig>` (TERM, INT, QUIT, ...) to the process.
    pub fn signal(&self, sig: &str) {
        send_signal(self.pid(), sig);
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// Waits (polling, so the test's runtime keeps running) until the
    /// process exits; panics, with its log, after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                t.elapsed() < within,
                "still running {:?} later:\n{}",
                t.elapsed(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything it has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}
