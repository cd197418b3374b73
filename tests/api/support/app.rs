//! `spawn_app()`: the real service on a random port against real Redis and
//! Postgres, isolated per test by a fresh database (dropped when the app
//! is) and a unique key prefix.

use std::sync::Arc;
use std::time::Duration;

use flashgate::admission::Admission;
use flashgate::config::{ConfirmDurability, Secret, Settings};
use flashgate::gate::RedisConn;
use flashgate::service::Service;
use flashgate::startup::{Application, Options};
use reqwest::Client;
use sqlx::PgPool;
use uuid::Uuid;

use super::pg::{fresh_database, pg_base, pg_host_port, TestDb};
use super::proxy::FaultProxy;

pub const ADMIN: &str = "test-admin-token-0123456789abcdef0123456789";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

pub fn redis_url() -> String {
    std::env::var("FLASHGATE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `FLASHGATE_TEST_REDIS_CLUSTER=1`: `FLASHGATE_TEST_REDIS` is a comma list
/// of Redis Cluster seeds (`scripts/cluster start` prints one) and every
/// app the tests spawn runs in cluster mode.
pub fn cluster_mode() -> bool {
    matches!(
        std::env::var("FLASHGATE_TEST_REDIS_CLUSTER").as_deref(),
        Ok("1" | "true" | "yes")
    )
}

/// `FLASHGATE_TEST_REDIS` split into its URLs (one outside cluster mode).
pub fn redis_urls() -> Vec<String> {
    split_urls(&redis_url())
}

pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// A test-side connection to the tests' Redis (standalone or cluster): on
/// a cluster, keyed commands go to the slot's primary and `KEYS` / `DEL`
/// fan out over every primary.
pub async fn test_redis() -> RedisConn {
    redis_conn(&redis_urls(), cluster_mode()).await
}

pub async fn redis_conn(urls: &[String], cluster: bool) -> RedisConn {
    RedisConn::connect(urls, cluster, Duration::from_secs(5))
        .await
        .expect("connect to the test Redis")
}

pub fn init_logs() {
    if std::env::var("TEST_LOG").is_ok() {
        flashgate::telemetry::init();
    }
}

pub fn unique_prefix() -> String {
    format!("t{}", &Uuid::new_v4().simple().to_string()[..12])
}

pub fn unique_sale() -> String {
    format!("sale-{}", &Uuid::new_v4().simple().to_string()[..10])
}

/// An app without the per-buyer limits (many test buyers, one address).
pub async fn open_app() -> std::sync::Arc<TestApp> {
    std::sync::Arc::new(Spawn::new().await.without_buyer_limits().start().await)
}

/// The time `in_ms` from now, as the API writes it (RFC 3339, ms).
pub fn at(in_ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(in_ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A buyer token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    flashgate::auth::mint(JWT_SECRET, user, 3600).expect("mint")
}

/// A JWT with these claims, signed with `alg` and `secret` (any claims,
/// any algorithm: for tokens flashgate must refuse, or barely accept).
pub fn signed(alg: jsonwebtoken::Algorithm, secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("mint")
}

pub fn test_settings(db_url: &str, prefix: &str) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().expect("addr"),
        redis_urls: redis_urls(),
        redis_cluster: cluster_mode(),
        database_url: Secret::new(db_url),
        admin_token: Secret::new(ADMIN),
        jwt_secret: Secret::new(JWT_SECRET),
        key_prefix: prefix.to_string(),
        http_workers: 2,
        sweep_interval: Duration::from_millis(200),
        worker_claim_idle: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(2),
        ..Settings::default()
    }
}

pub struct TestApp {
    pub address: String,
    pub client: Client,
    pub prefix: String,
    /// The app's database, reached directly (around any fault proxy).
    pub pool: PgPool,
    pub service: Service,
    /// The server's socket-level admission (its counters).
    pub admission: Admission,
    /// The Redis this app uses (what `wipe_redis` and `drained` look at).
    pub redis_urls: Vec<String>,
    pub redis_cluster: bool,
    /// The test's database, dropped with the last app (or test) holding it.
    _db: Option<Arc<TestDb>>,
}

/// An app about to start: its settings and options, and the database it
/// owns (none for `shared`: the test holds that one).
pub struct Spawn {
    pub settings: Settings,
    pub opts: Options,
    db: Option<Arc<TestDb>>,
}

impl Spawn {
    pub async fn new() -> Self {
        let db = fresh_database().await;
        Self {
            settings: test_settings(&db, &unique_prefix()),
            opts: Options::default(),
            db: Some(Arc::new(db)),
        }
    }

    /// Another instance of an existing deployment: same database, same key
    /// prefix (several `Spawn::shared(..).start()` apps share all state).
    pub fn shared(db_url: &str, prefix: &str) -> Self {
        Self {
            settings: test_settings(db_url, prefix),
            opts: Options::default(),
            db: None,
        }
    }

    /// An app whose Postgres is reached through `proxy` (see
    /// [`FaultProxy::postgres`]); `TestApp::pool` reads the same database
    /// around the proxy.
    pub async fn via_pg_proxy(proxy: &FaultProxy) -> Self {
        let mut me = Self::new().await;
        let direct = me.database_url();
        let base = pg_base();
        let via = direct.replacen(pg_host_port(&base), &format!("127.0.0.1:{}", proxy.port), 1);
        assert_ne!(via, direct, "the database URL goes through the proxy");
        me.settings.database_url = Secret::new(via);
        me
    }

    /// The database's own URL (around any proxy).
    pub fn database_url(&self) -> String {
        match &self.db {
            Some(db) => db.url().to_string(),
            None => self.settings.database_url.expose().to_string(),
        }
    }

    /// The database this spawn owns, for whoever outlives it (a process
    /// started on these settings).
    pub fn database(&self) -> Option<Arc<TestDb>> {
        self.db.clone()
    }

    /// Runs against another Redis (e.g. a test's own cluster).
    pub fn redis(mut self, urls: &[String], cluster: bool) -> Self {
        self.settings.redis_urls = urls.to_vec();
        self.settings.redis_cluster = cluster;
        self
    }
    pub fn durability(mut self, d: ConfirmDurability) -> Self {
        self.settings.confirm_durability = d;
        self
    }
    pub fn no_worker(mut self) -> Self {
        self.opts.run_worker = false;
        self
    }
    pub fn no_sweeper(mut self) -> Self {
        self.opts.run_sweeper = false;
        self
    }
    pub fn with(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(&mut self.settings);
        self
    }

    /// Without the per-buyer limits (rate and active holds): for tests
    /// with many buyers from one address, or one buyer making many calls.
    pub fn without_buyer_limits(self) -> Self {
        self.with(|s| {
            s.rate.per_user_per_sec = 0;
            s.max_active_holds = 0;
        })
    }

    pub async fn start(self) -> TestApp {
        init_logs();
        let db_url = self.database_url();
        let prefix = self.settings.key_prefix.clone();
        let (redis_urls, redis_cluster) = (
            self.settings.redis_urls.clone(),
            self.settings.redis_cluster,
        );
        let app = Application::build(self.settings, self.opts)
            .await
            .expect("build app");
        let address = format!("http://127.0.0.1:{}", app.port());
        let service = app.service.clone();
        let admission = app.admission();
        tokio::spawn(app.run_until_stopped());
        let pool = PgPool::connect(&db_url).await.expect("test pool");
        let client = Client::builder()
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        TestApp {
            address,
            client,
            prefix,
            pool,
            service,
            admission,
            redis_urls,
            redis_cluster,
            _db: self.db,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    Spawn::new().await.start().await
}

impl TestApp {
    /// A `TestApp` for a flashgate running elsewhere (a process of its own)
    /// at `address`, on `settings`' Redis, database and key prefix.
    pub async fn external(address: String, settings: &Settings, pool: PgPool) -> Self {
        let (gate, store) = flashgate::startup::connect(settings)
            .await
            .expect("connect");
        let service = Service::new(gate, store, settings);
        TestApp {
            address,
            client: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            prefix: settings.key_prefix.clone(),
            pool,
            service,
            admission: Admission::new(1, Duration::from_secs(1)),
            redis_urls: settings.redis_urls.clone(),
            redis_cluster: settings.redis_cluster,
            _db: None,
        }
    }
}
