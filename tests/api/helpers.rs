//! `spawn_app()`: the real service on a random port against real Redis and
//! Postgres, isolated per test by a fresh database and a unique key prefix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashgate::admission::Admission;
use flashgate::config::{ConfirmDurability, Secret, Settings};
use flashgate::gate::RedisConn;
use flashgate::service::Service;
use flashgate::startup::{Application, Options};
use reqwest::{Client, Response};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const ADMIN: &str = "test-admin-token-0123456789abcdef0123456789";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

pub fn pg_base() -> String {
    std::env::var("FLASHGATE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

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

/// A fresh, empty database for one test.
pub async fn fresh_database() -> String {
    let name = format!("fg_test_{}", Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&format!("{}/postgres", pg_base()))
        .await
        .expect("connect to Postgres (is it running? scripts/test starts it)");
    sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .execute(&mut conn)
        .await
        .expect("create test database");
    format!("{}/{name}", pg_base())
}

pub fn unique_prefix() -> String {
    format!("t{}", &Uuid::new_v4().simple().to_string()[..12])
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
    pub pool: PgPool,
    pub service: Service,
    /// The server's socket-level admission (its counters).
    pub admission: Admission,
    /// The Redis this app uses (what `wipe_redis` and `drained` look at).
    pub redis_urls: Vec<String>,
    pub redis_cluster: bool,
}

pub struct Spawn {
    pub settings: Settings,
    pub opts: Options,
}

impl Spawn {
    pub async fn new() -> Self {
        let db = fresh_database().await;
        Self {
            settings: test_settings(&db, &unique_prefix()),
            opts: Options::default(),
        }
    }
    /// Another instance of an existing deployment: same database, same key
    /// prefix (several `Spawn::shared(..).start()` apps share all state).
    pub fn shared(db_url: &str, prefix: &str) -> Self {
        Self {
            settings: test_settings(db_url, prefix),
            opts: Options::default(),
        }
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
    pub async fn start(self) -> TestApp {
        init_logs();
        let db_url = self.settings.database_url.expose().to_string();
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
        }
    }
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
        }
    }
}

pub async fn spawn_app() -> TestApp {
    Spawn::new().await.start().await
}

pub fn token(user: &str) -> String {
    flashgate::auth::mint(JWT_SECRET, user, 3600).expect("mint")
}

pub fn unique_sale() -> String {
    format!("sale-{}", &Uuid::new_v4().simple().to_string()[..10])
}

pub async fn body(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    (status, v)
}

/// The `reservation_id` of a reservation body.
pub fn rid(v: &Value) -> String {
    v["reservation_id"].as_str().expect("rid").to_string()
}

/// Asserts the contract's error body and returns its code.
pub fn error_code(v: &Value) -> &str {
    let e = &v["error"];
    assert!(
        e["message"].is_string() && e["details"].is_object(),
        "not the contract's error body: {v}"
    );
    e["code"].as_str().expect("code")
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// `host:port`, for tests that speak HTTP over a raw socket.
    pub fn socket_addr(&self) -> &str {
        self.address.trim_start_matches("http://")
    }

    pub async fn put_sale(&self, sale: &str, cfg: Value) -> (u16, Value) {
        body(
            self.client
                .put(self.url(&format!("/v1/sales/{sale}")))
                .bearer_auth(ADMIN)
                .json(&cfg)
                .send()
                .await
                .expect("put"),
        )
        .await
    }

    /// Creates a sale and asserts 201.
    pub async fn sale(&self, stock: i64, limit: u32, ttl_secs: u32) -> String {
        let id = unique_sale();
        let (s, v) = self
            .put_sale(
                &id,
                json!({ "stock": stock, "per_user_limit": limit, "hold_ttl_secs": ttl_secs }),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        id
    }

    pub async fn view(&self, sale: &str) -> Value {
        let (s, v) = body(
            self.client
                .get(self.url(&format!("/v1/sales/{sale}")))
                .send()
                .await
                .expect("get"),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    pub async fn reserve(
        &self,
        sale: &str,
        user: &str,
        qty: u32,
        idem: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(self.url(&format!("/v1/sales/{sale}/reservations")))
            .bearer_auth(token(user))
            .json(&json!({ "quantity": qty }));
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        body(req.send().await.expect("reserve")).await
    }

    /// `action` = confirm / cancel / extend, as `user` (or the admin with None).
    pub async fn act(
        &self,
        sale: &str,
        rid: &str,
        action: &str,
        user: Option<&str>,
    ) -> (u16, Value) {
        let req = self
            .client
            .post(self.url(&format!("/v1/sales/{sale}/reservations/{rid}/{action}")));
        let req = match user {
            Some(u) => req.bearer_auth(token(u)),
            None => req.bearer_auth(ADMIN),
        };
        body(req.send().await.expect("act")).await
    }

    pub async fn get_reservation(&self, sale: &str, rid: &str, user: Option<&str>) -> (u16, Value) {
        let req = self
            .client
            .get(self.url(&format!("/v1/sales/{sale}/reservations/{rid}")));
        let req = match user {
            Some(u) => req.bearer_auth(token(u)),
            None => req.bearer_auth(ADMIN),
        };
        body(req.send().await.expect("get reservation")).await
    }

    /// A test-side connection to this app's Redis.
    pub async fn redis(&self) -> RedisConn {
        redis_conn(&self.redis_urls, self.redis_cluster).await
    }

    /// Deletes every Redis key of this test (what a Redis restart without
    /// persistence does to it), without touching other tests' keys.
    pub async fn wipe_redis(&self) {
        // On a cluster KEYS fans out over every primary and DEL is split by slot.
        let mut conn = self.redis().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut conn)
            .await
            .expect("keys");
        for chunk in keys.chunks(500) {
            let _: () = redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .expect("del");
        }
    }

    /// Waits until the write-behind worker has drained every stream.
    pub async fn drained(&self, within: Duration) {
        let mut conn = self.redis().await;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*:events", self.prefix))
                .query_async(&mut conn)
                .await
                .expect("keys");
            let mut total = 0i64;
            for k in &keys {
                let n: i64 = redis::cmd("XLEN")
                    .arg(k)
                    .query_async(&mut conn)
                    .await
                    .expect("xlen");
                total += n;
            }
            if total == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "write-behind did not drain: {total} entries left"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a [`FaultProxy`] does to the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards every chunk as it comes.
    Pass,
    /// Forwards every chunk, in order, this much later (both directions):
    /// a slow network or a slow server.
    Delay(Duration),
    /// Accepts connections and reads what is sent, but never forwards or
    /// answers anything: a black hole. A connection that lost bytes to it
    /// is reset (RST) once the mode changes: a TCP stream never resumes
    /// with a hole in it.
    Drop,
    /// Resets (RST) every open connection and every new one at once.
    Reset,
    /// Every connection open when this mode begins turns into a black hole
    /// for good (a firewall or NAT that forgot its flows, a host gone
    /// without a reset); new connections pass.
    Stale,
}

/// A TCP proxy in front of a dependency, to cut it off, slow it down,
/// black-hole or reset it and bring it back (Postgres or Redis "down")
/// without touching the shared server.
pub struct FaultProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<std::sync::Mutex<CancellationToken>>,
    mode: Arc<tokio::sync::watch::Sender<ProxyMode>>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let mode = Arc::new(tokio::sync::watch::Sender::new(ProxyMode::Pass));
        let (up2, gen2, mode2, upstream) = (
            up.clone(),
            generation.clone(),
            mode.clone(),
            upstream.to_string(),
        );
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                if *mode2.borrow() == ProxyMode::Reset {
                    let _ = inbound.set_zero_linger();
                    drop(inbound);
                    continue;
                }
                let cancel = gen2.lock().expect("lock").clone();
                let (upstream, mode) = (upstream.clone(), mode2.subscribe());
                tokio::spawn(proxy_connection(inbound, upstream, mode, cancel));
            }
        });
        Self {
            port,
            up,
            generation,
            mode,
        }
    }

    /// Refuses new connections and cuts the open ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut g = self.generation.lock().expect("lock");
        g.cancel();
        *g = CancellationToken::new();
    }

    /// Back to normal: accepts again and forwards everything at once.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
        self.set(ProxyMode::Pass);
    }

    /// Applies `mode` to open connections and new ones from now on.
    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }
}

/// One proxied connection: two pumps (client to server, server to client)
/// until either side closes, the proxy is cut, or the mode resets it.
async fn proxy_connection(
    inbound: TcpStream,
    upstream: String,
    mut mode: tokio::sync::watch::Receiver<ProxyMode>,
    cancel: CancellationToken,
) {
    let Ok(outbound) = TcpStream::connect(&upstream).await else {
        return;
    };
    // Lost bytes to a black hole; for good (`Stale`).
    let (holed, stale) = (AtomicBool::new(false), AtomicBool::new(false));
    let (mut client_in, mut client_out) = inbound.into_split();
    let (mut server_in, mut server_out) = outbound.into_split();
    let reset = {
        let up = pump(&mut client_in, &mut server_out, mode.clone(), &holed);
        let down = pump(&mut server_in, &mut client_out, mode.clone(), &holed);
        tokio::select! {
            _ = async { tokio::join!(up, down) } => false,
            _ = cancel.cancelled() => false,
            _ = reset_due(&mut mode, &holed, &stale) => true,
        }
    };
    if reset {
        let _ = AsRef::<TcpStream>::as_ref(&client_in).set_zero_linger();
        let _ = AsRef::<TcpStream>::as_ref(&server_in).set_zero_linger();
    }
}

/// Returns once the connection must be reset: the mode is `Reset`, or it
/// lost bytes to a black hole that has ended (unless it went stale: then
/// it stays a black hole).
async fn reset_due(
    mode: &mut tokio::sync::watch::Receiver<ProxyMode>,
    holed: &AtomicBool,
    stale: &AtomicBool,
) {
    let mut born = true;
    loop {
        match *mode.borrow_and_update() {
            ProxyMode::Reset => return,
            ProxyMode::Stale if !born => {
                stale.store(true, Ordering::SeqCst);
                holed.store(true, Ordering::SeqCst);
            }
            ProxyMode::Drop => {}
            _ if holed.load(Ordering::SeqCst) && !stale.load(Ordering::SeqCst) => return,
            _ => {}
        }
        born = false;
        if mode.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Copies one direction chunk by chunk through a delay line: each chunk
/// is due when it was read plus the delay in force then, and is written
/// in order. In `Drop` mode chunks are read and thrown away, and the
/// connection stays a black hole from then on.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mode: tokio::sync::watch::Receiver<ProxyMode>,
    holed: &AtomicBool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let due = match *mode.borrow() {
                ProxyMode::Drop => {
                    holed.store(true, Ordering::SeqCst);
                    continue;
                }
                ProxyMode::Delay(d) => tokio::time::Instant::now() + d,
                ProxyMode::Pass | ProxyMode::Reset | ProxyMode::Stale => {
                    tokio::time::Instant::now()
                }
            };
            if holed.load(Ordering::SeqCst) {
                continue;
            }
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break; // the writer gave up: its side is gone
            }
        }
    };
    let write = async {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if holed.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// One answered request: what it was, status, JSON body, the headers the
/// fault tests read, and the time it took.
#[derive(Debug, Clone)]
pub struct Answer {
    pub what: String,
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<u64>,
    pub replayed: bool,
    pub took: Duration,
}

/// Sends and times a request; panics if it is not answered (the client's
/// timeout, a dropped connection) or not with a JSON body: the service
/// must always answer, and in the contract's shape.
pub async fn timed(what: &str, req: reqwest::RequestBuilder) -> Answer {
    let t = std::time::Instant::now();
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer after {:?}: {e}", t.elapsed()));
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let text = r.text().await.expect("body");
    let took = t.elapsed();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{what}: {status} with a non-JSON body {text:?}"));
    Answer {
        what: what.to_string(),
        status,
        body,
        retry_after,
        replayed,
        took,
    }
}

/// `POST .../confirm` by the reservation's buyer.
pub fn confirm_req(app: &TestApp, sale: &str, rid: &str, user: &str) -> reqwest::RequestBuilder {
    app.client
        .post(app.url(&format!("/v1/sales/{sale}/reservations/{rid}/confirm")))
        .bearer_auth(token(user))
}

/// (stock, sold, held, available) of a sale view.
pub fn counters(v: &Value) -> (i64, i64, i64, i64) {
    let n = |f: &str| v[f].as_i64().unwrap_or_else(|| panic!("{f} in {v}"));
    (n("stock"), n("sold"), n("held"), n("available"))
}

/// Polls `/readyz` until `ok` holds for its status and body (readiness is
/// probed in the background, so it follows a fault within a second or
/// two). Every answer must come fast: it is read from memory.
pub async fn readyz_until(
    app: &TestApp,
    within: Duration,
    ok: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let a = timed("readyz", app.client.get(app.url("/readyz"))).await;
        assert!(
            a.took < Duration::from_secs(1),
            "readyz took {:?}: it must answer from memory",
            a.took
        );
        if ok(a.status, &a.body) {
            return a.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never got there: {} {}",
            a.status,
            a.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `flashgate serve` process of its own (its own metrics and log),
/// sharing `settings`' database and key prefix; killed on drop.
pub struct Process {
    pub child: std::process::Child,
    pub app: TestApp,
}

impl Process {
    pub async fn serve(settings: &flashgate::config::Settings, env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flashgate"));
        cmd.arg("serve")
            .env("FLASHGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLASHGATE_DATABASE_URL", settings.database_url.expose())
            .env("FLASHGATE_REDIS_URL", settings.redis_urls.join(","))
            .env(
                "FLASHGATE_REDIS_CLUSTER",
                if settings.redis_cluster { "1" } else { "0" },
            )
            .env("FLASHGATE_KEY_PREFIX", &settings.key_prefix)
            .env("FLASHGATE_ADMIN_TOKEN", ADMIN)
            .env("FLASHGATE_JWT_SECRET", JWT_SECRET)
            .env("FLASHGATE_HTTP_WORKERS", "1")
            .env("FLASHGATE_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start flashgate serve");
        let pool = sqlx::PgPool::connect(settings.database_url.expose())
            .await
            .expect("pool");
        let app = TestApp::external(format!("http://127.0.0.1:{port}"), settings, pool).await;
        let me = Self { child, app };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while me
            .app
            .client
            .get(me.app.url("/healthz"))
            .send()
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "flashgate serve did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        me
    }

    /// Stops the process and returns what it logged.
    pub fn log(mut self) -> String {
        let _ = self.child.kill();
        let out = self.child.wait_with_output().expect("output");
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    }
}
