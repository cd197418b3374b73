//! Faults: Redis killed mid-burst and restarted empty, Redis frozen
//! (SIGSTOP), Redis at maxmemory, and SIGTERM to the real binary mid-burst.
//! Each test runs its own redis-server (or flashgate) child process on a
//! free port and kills it on drop; the shared Redis and Postgres are never
//! stopped or flushed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A dedicated `redis-server` child process, killed on drop.
pub struct RedisServer {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port with no persistence and `extra` arguments.
    pub fn start(extra: &[&str]) -> Self {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let mut s = Self {
                port: free_port(),
                args: args.clone(),
                child: None,
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start a redis-server (is it installed? scripts/test installs it)");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Spawns on `self.port`; true once it answers PING.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let Ok(mut child) = cmd.spawn() else {
            return false;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false; // e.g. the port was taken meanwhile
            }
            if ping(self.port) {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL: the data is gone (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A fresh, empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not come back on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// A command on a fresh connection (e.g. `CONFIG SET maxmemory 0`).
    pub async fn cmd(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async(&mut conn).await.expect("redis command")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process dies of SIGKILL too; CONT first anyway.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.pid().to_string())
                .status();
        }
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// An app on a dedicated Redis, with a short Redis timeout and no abuse
/// limits (the bursts come from a handful of test buyers on one address).
async fn app_on(redis: &RedisServer, redis_timeout: Duration) -> TestApp {
    Spawn::new()
        .await
        .redis(&[redis.url()], false)
        .with(|s| {
            s.redis_timeout = redis_timeout;
            s.rate.per_user_per_sec = 0;
            s.max_active_holds = 0;
        })
        .start()
        .await
}

fn reserve_req(app: &TestApp, sale: &str, user: &str) -> reqwest::RequestBuilder {
    app.client
        .post(app.url(&format!("/v1/sales/{sale}/reservations")))
        .bearer_auth(token(user))
        .json(&json!({"quantity": 1}))
}

/// A 503 must be the contract's `unavailable` with Retry-After semantics
/// in the body shape; anything else must be one of `ok`.
fn check_answer(a: &Answer, ok: &[u16]) {
    if a.status == 503 {
        assert_eq!(error_code(&a.body), "unavailable", "{}: {}", a.what, a.body);
    } else {
        assert!(
            ok.contains(&a.status),
            "{}: unexpected {} {}",
            a.what,
            a.status,
            a.body
        );
        if a.status >= 400 {
            error_code(&a.body);
        }
    }
}

async fn orders(app: &TestApp, sale: &str) -> BTreeMap<String, (String, i64)> {
    sqlx::query_as::<_, (String, String, i32)>(
        "SELECT reservation_id::text, user_id, quantity FROM orders WHERE sale_id = $1",
    )
    .bind(sale)
    .fetch_all(&app.pool)
    .await
    .expect("orders")
    .into_iter()
    .map(|(r, u, q)| (r, (u, i64::from(q))))
    .collect()
}

/// Waits (bounded) until GET /v1/sales/{sale} answers 200 again.
async fn wait_for_view(app: &TestApp, sale: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = app
            .client
            .get(app.url(&format!("/v1/sales/{sale}")))
            .send()
            .await;
        if let Ok(r) = r {
            let (s, v) = body(r).await;
            if s == 200 {
                return v;
            }
            assert_eq!((s, error_code(&v)), (503, "unavailable"), "{v}");
        }
        assert!(
            Instant::now() < deadline,
            "the sale never came back within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Redis killed in the middle of a reserve+confirm burst: every request
/// is answered (201/200/409 or 503 `unavailable`) in bounded time; Redis
/// restarted empty on the same port: the sale is rebuilt from Postgres
/// without restarting flashgate, with every acknowledged confirm sold and
/// no unit counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_burst_then_restarted_empty() {
    let mut redis = RedisServer::start(&[]);
    let app = Arc::new(app_on(&redis, Duration::from_millis(300)).await);
    let (stock, buyers) = (150i64, 240usize);
    let sale = app.sale(stock, 1, 300).await;

    let answered = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    // Per buyer: the reserve's answer, and the confirm's if it got a unit.
    type Log = Vec<(String, Answer, Option<Answer>)>;
    let log: Arc<Mutex<Log>> = Arc::default();
    let loops = (0..12).map(|_| {
        let (app, sale, answered, next, log) = (
            app.clone(),
            sale.clone(),
            answered.clone(),
            next.clone(),
            log.clone(),
        );
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= buyers {
                    return;
                }
                let user = format!("b{i}");
                let r = timed("reserve", reserve_req(&app, &sale, &user)).await;
                answered.fetch_add(1, Ordering::SeqCst);
                let c = if r.status == 201 {
                    let rid = r.body["reservation_id"].as_str().expect("rid").to_string();
                    let c = timed("confirm", confirm_req(&app, &sale, &rid, &user)).await;
                    answered.fetch_add(1, Ordering::SeqCst);
                    Some(c)
                } else {
                    None
                };
                log.lock().expect("lock").push((user, r, c));
            }
        })
    });
    let loops: Vec<_> = loops.collect();
    // Kill Redis once part of the burst is through.
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::SeqCst) < 120 {
        assert!(Instant::now() < deadline, "the burst made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.kill();
    killed.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.expect("buyer loop");
    }
    let log = std::mem::take(&mut *log.lock().expect("lock"));
    let (mut confirmed, mut unavailable, mut slowest) = (BTreeMap::new(), 0, Duration::ZERO);
    for (user, r, c) in &log {
        check_answer(r, &[201, 409]);
        slowest = slowest.max(r.took);
        unavailable += usize::from(r.status == 503);
        if let Some(c) = c {
            check_answer(c, &[200, 404, 410]);
            slowest = slowest.max(c.took);
            unavailable += usize::from(c.status == 503);
            if c.status == 200 {
                confirmed.insert(
                    r.body["reservation_id"].as_str().expect("rid").to_string(),
                    user.clone(),
                );
            }
        }
    }
    assert_eq!(log.len(), buyers);
    assert!(!confirmed.is_empty(), "some confirms before the kill");
    assert!(unavailable > 0, "the kill was noticed");
    eprintln!(
        "kill: {} buyers, {} confirms acknowledged, {unavailable} answers 503, slowest {slowest:?}",
        log.len(),
        confirmed.len()
    );
    assert!(
        slowest < Duration::from_secs(3),
        "a request took {slowest:?}"
    );

    // Down: 503 fast, readiness says so.
    let a = timed("reserve while down", reserve_req(&app, &sale, "late")).await;
    assert_eq!((a.status, error_code(&a.body)), (503, "unavailable"));
    assert!(a.took < Duration::from_secs(3), "{:?}", a.took);
    readyz_until(&app, Duration::from_secs(10), |s, v| {
        (s, v["redis"].as_str()) == (503, Some("down"))
    })
    .await;

    // Back, empty: rebuilt from Postgres without restarting flashgate.
    redis.restart();
    let v = wait_for_view(&app, &sale, Duration::from_secs(20)).await;
    let rows = orders(&app, &sale).await;
    for rid in confirmed.keys() {
        assert!(
            rows.contains_key(rid),
            "acknowledged confirm {rid} not in Postgres"
        );
    }
    let granted: BTreeSet<String> = log
        .iter()
        .filter(|(_, r, _)| r.status == 201)
        .map(|(_, r, _)| r.body["reservation_id"].as_str().expect("rid").to_string())
        .collect();
    assert!(
        rows.keys().all(|r| granted.contains(r)),
        "an order nobody was granted"
    );
    let sold_pg: i64 = rows.values().map(|(_, q)| q).sum();
    let (st, sold, held, available) = counters(&v);
    assert_eq!(
        (st, sold, held),
        (stock, sold_pg, 0),
        "rebuilt from Postgres: {v}"
    );
    assert_eq!(st, sold + held + available, "every unit counted once: {v}");

    // It serves again: caps came back (a buyer who bought cannot buy
    // again), new buyers get units, and the counts stay exact.
    let (buyer, _) = rows.values().next().expect("an order");
    let (s, v) = app.reserve(&sale, buyer, 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "user_limit_exceeded"), "{v}");
    let (s, v) = app.reserve(&sale, "after-1", 1, None).await;
    assert_eq!(s, 201, "{v}");
    let rid = v["reservation_id"].as_str().expect("rid").to_string();
    assert_eq!(
        app.act(&sale, &rid, "confirm", Some("after-1")).await.0,
        200
    );
    assert_eq!(app.reserve(&sale, "after-2", 1, None).await.0, 201);
    let (st, sold, held, available) = counters(&app.view(&sale).await);
    assert_eq!((sold, held), (sold_pg + 1, 1));
    assert_eq!(st, sold + held + available);
}

/// Redis frozen (SIGSTOP, connections open but silent): requests answer
/// 503 `unavailable` within about twice the Redis timeout, never hang;
/// after SIGCONT the sale serves again with exact counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_gives_fast_503s_not_hangs() {
    let redis = RedisServer::start(&[]);
    let timeout = Duration::from_millis(300);
    let app = Arc::new(app_on(&redis, timeout).await);
    let sale = app.sale(100, 1, 300).await;
    let (s, v) = app.reserve(&sale, "before", 1, None).await;
    assert_eq!(s, 201, "{v}");
    let held_rid = v["reservation_id"].as_str().expect("rid").to_string();

    redis.signal("STOP");
    // Reserve, confirm, read, admin update, readiness: all bounded.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (app, sale) = (app.clone(), sale.clone());
        tasks.push(tokio::spawn(async move {
            timed("reserve", reserve_req(&app, &sale, &format!("frozen-{i}"))).await
        }));
    }
    {
        let (app, sale, rid) = (app.clone(), sale.clone(), held_rid.clone());
        tasks.push(tokio::spawn(async move {
            timed("confirm", confirm_req(&app, &sale, &rid, "before")).await
        }));
    }
    {
        let (app, sale) = (app.clone(), sale.clone());
        tasks.push(tokio::spawn(async move {
            timed(
                "view",
                app.client.get(app.url(&format!("/v1/sales/{sale}"))),
            )
            .await
        }));
    }
    {
        let (app, sale) = (app.clone(), sale.clone());
        tasks.push(tokio::spawn(async move {
            timed(
                "configure",
                app.client
                    .put(app.url(&format!("/v1/sales/{sale}")))
                    .bearer_auth(ADMIN)
                    .json(&json!({"stock": 100, "per_user_limit": 1, "hold_ttl_secs": 300})),
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    let readyz = readyz_until(&app, Duration::from_secs(10), |s, v| {
        (s, v["redis"].as_str()) == (503, Some("down"))
    })
    .await;
    redis.signal("CONT");

    // The gate's bound is 2 × the Redis timeout; allow scheduling slack on
    // a loaded machine, but far below anything that looks like a hang.
    let bound = timeout * 2 + Duration::from_millis(1000);
    let slowest = answers.iter().map(|a| a.took).max().unwrap_or_default();
    eprintln!("frozen: slowest 503 after {slowest:?}, readyz {readyz}");
    for a in &answers {
        assert_eq!(
            (a.status, error_code(&a.body)),
            (503, "unavailable"),
            "{}: {}",
            a.what,
            a.body
        );
        assert!(
            a.took < bound,
            "{} took {:?} (bound {bound:?})",
            a.what,
            a.took
        );
    }

    // Thawed: the service recovers by itself; the data was never lost.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = app.reserve(&sale, "after", 1, None).await;
        if s == 201 {
            break;
        }
        assert_eq!((s, error_code(&v)), (503, "unavailable"), "{v}");
        assert!(Instant::now() < deadline, "never recovered after SIGCONT");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v) = app.act(&sale, &held_rid, "confirm", Some("before")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("confirmed")), "{v}");
    let (st, sold, held, available) = counters(&app.view(&sale).await);
    assert_eq!(sold, 1);
    // Requests Redis had queued while frozen may run once it thaws (a
    // timed-out reserve is not a promise that nothing happened): at most
    // the eight frozen reserves, plus "after".
    assert!((1..=9).contains(&held), "held {held}");
    assert_eq!(st, sold + held + available);
}

/// Redis at maxmemory with noeviction: reserves are refused whole with 503
/// `unavailable` (the scripts are not allowed to run out of memory), never
/// half-applied: afterwards held is exactly the number of 201s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_at_maxmemory_refuses_whole_reserves() {
    let redis = RedisServer::start(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    // No worker: it would trim the streams and free memory as it goes.
    let app = Arc::new(
        Spawn::new()
            .await
            .no_worker()
            .redis(&[redis.url()], false)
            .with(|s| {
                s.redis_timeout = Duration::from_millis(1000);
                s.rate.per_user_per_sec = 0;
                s.max_active_holds = 0;
            })
            .start()
            .await,
    );
    let stock = 1_000_000i64;
    let sale = app.sale(stock, 1, 3600).await;
    let created = Arc::new(AtomicUsize::new(0));
    let full = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let loops: Vec<_> = (0..8)
        .map(|_| {
            let (app, sale, created, full, next) = (
                app.clone(),
                sale.clone(),
                created.clone(),
                full.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                while full.load(Ordering::SeqCst) < 50 {
                    assert!(Instant::now() < deadline, "Redis never filled up");
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let a = timed("reserve", reserve_req(&app, &sale, &format!("m{i}"))).await;
                    match a.status {
                        201 => {
                            created.fetch_add(1, Ordering::SeqCst);
                        }
                        503 => {
                            assert_eq!(error_code(&a.body), "unavailable", "{}", a.body);
                            full.fetch_add(1, Ordering::SeqCst);
                        }
                        s => panic!("reserve: unexpected {s} {}", a.body),
                    }
                }
            })
        })
        .collect();
    for l in loops {
        l.await.expect("loop");
    }
    let created = created.load(Ordering::SeqCst) as i64;
    eprintln!(
        "maxmemory: {created} holds granted, {} reserves refused with 503",
        full.load(Ordering::SeqCst)
    );
    assert!(created > 100, "only {created} holds before Redis was full");
    // Reads of a full Redis: the view runs a (writing) sweep script, so it
    // may be refused too; lift the limit on this test's own server to look.
    redis.cmd(&["CONFIG", "SET", "maxmemory", "0"]).await;
    let (st, sold, held, available) = counters(&app.view(&sale).await);
    assert_eq!((st, sold), (stock, 0));
    assert_eq!(
        held, created,
        "held == the number of 201s: nothing half-applied"
    );
    assert_eq!(st, sold + held + available);
}

/// SIGTERM to the real binary while buyers reserve and confirm: every
/// request is answered with a documented status or refused at connect,
/// never another 5xx; the process exits 0 within its shutdown timeout; and
/// every confirm answered 200 is in Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_drains_and_loses_no_acknowledged_confirm() {
    let db = fresh_database().await;
    let port = free_port();
    let prefix = unique_prefix();
    let shutdown = Duration::from_millis(5000);
    let log_path = std::env::temp_dir().join(format!("flashgate-{prefix}.log"));
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashgate"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FLASHGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLASHGATE_ADMIN_TOKEN", ADMIN)
        .env("FLASHGATE_JWT_SECRET", JWT_SECRET)
        .env("FLASHGATE_DATABASE_URL", &db)
        .env("FLASHGATE_REDIS_URL", redis_url())
        .env("FLASHGATE_KEY_PREFIX", &prefix)
        .env(
            "FLASHGATE_SHUTDOWN_TIMEOUT_MS",
            shutdown.as_millis().to_string(),
        )
        .env("FLASHGATE_HTTP_WORKERS", "2")
        .env("FLASHGATE_RATE_PER_USER", "0")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file);
    if cluster_mode() {
        cmd.env("FLASHGATE_REDIS_CLUSTER", "1");
    }
    let child = Arc::new(Mutex::new(KillOnDrop(
        cmd.spawn().expect("spawn flashgate"),
    )));
    let show_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");

    // Up, with a sale.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "flashgate did not start:\n{}",
            show_log()
        );
        assert!(
            child
                .lock()
                .expect("lock")
                .0
                .try_wait()
                .expect("wait")
                .is_none(),
            "flashgate exited:\n{}",
            show_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sale = unique_sale();
    let r = client
        .put(format!("{base}/v1/sales/{sale}"))
        .bearer_auth(ADMIN)
        .json(&json!({"stock": 100_000, "per_user_limit": 1, "hold_ttl_secs": 300}))
        .send()
        .await
        .expect("put sale");
    assert_eq!(r.status().as_u16(), 201);

    #[derive(Debug)]
    enum Outcome {
        Answered(u16, Value),
        Refused(String),
    }
    let stop = Arc::new(AtomicBool::new(false));
    let confirms_ok = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    type Log = Vec<(&'static str, String, Outcome)>;
    let log: Arc<Mutex<Log>> = Arc::default();
    let loops: Vec<_> = (0..8)
        .map(|_| {
            let (client, base, sale, stop, confirms_ok, next, log) = (
                client.clone(),
                base.clone(),
                sale.clone(),
                stop.clone(),
                confirms_ok.clone(),
                next.clone(),
                log.clone(),
            );
            tokio::spawn(async move {
                let send = |what: &'static str, req: reqwest::RequestBuilder| {
                    let log = log.clone();
                    async move {
                        let outcome = match req.send().await {
                            Ok(r) => {
                                let s = r.status().as_u16();
                                let text = r
                                    .text()
                                    .await
                                    .unwrap_or_else(|e| panic!("{what}: {s} with a cut body: {e}"));
                                let v: Value = serde_json::from_str(&text)
                                    .unwrap_or_else(|_| panic!("{what}: {s} non-JSON {text:?}"));
                                Outcome::Answered(s, v)
                            }
                            Err(e) => {
                                assert!(!e.is_timeout(), "{what}: timed out: {e}");
                                Outcome::Refused(format!("{e:?}"))
                            }
                        };
                        let rid = match &outcome {
                            Outcome::Answered(_, v) => {
                                v["reservation_id"].as_str().unwrap_or_default().to_string()
                            }
                            Outcome::Refused(_) => String::new(),
                        };
                        let status = match &outcome {
                            Outcome::Answered(s, _) => Some(*s),
                            Outcome::Refused(_) => None,
                        };
                        log.lock().expect("lock").push((what, rid.clone(), outcome));
                        (status, rid)
                    }
                };
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let user = format!("t{i}");
                    let tok = token(&user);
                    let (status, rid) = send(
                        "reserve",
                        client
                            .post(format!("{base}/v1/sales/{sale}/reservations"))
                            .bearer_auth(&tok)
                            .json(&json!({"quantity": 1})),
                    )
                    .await;
                    if status.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    if status != Some(201) {
                        continue;
                    }
                    let (status, _) = send(
                        "confirm",
                        client
                            .post(format!("{base}/v1/sales/{sale}/reservations/{rid}/confirm"))
                            .bearer_auth(&tok),
                    )
                    .await;
                    if status == Some(200) {
                        confirms_ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();

    // Mid-burst: SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(60);
    while confirms_ok.load(Ordering::SeqCst) < 100 {
        assert!(
            Instant::now() < deadline,
            "the burst made no progress:\n{}",
            show_log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = child.lock().expect("lock").0.id();
    let term = Instant::now();
    assert!(Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success());
    let status = loop {
        if let Some(s) = child.lock().expect("lock").0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            term.elapsed() < shutdown + Duration::from_secs(15),
            "still running {:?} after SIGTERM:\n{}",
            term.elapsed(),
            show_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = term.elapsed();
    // Let the buyers see the closed port, then stop them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.expect("buyer loop");
    }
    assert!(status.success(), "exit status {status:?}:\n{}", show_log());
    assert!(
        took < shutdown + Duration::from_secs(2),
        "exited {took:?} after SIGTERM (shutdown timeout {shutdown:?}):\n{}",
        show_log()
    );

    let log = std::mem::take(&mut *log.lock().expect("lock"));
    let mut acked = BTreeSet::new();
    let mut refused = BTreeMap::<String, usize>::new();
    for (what, rid, outcome) in &log {
        match outcome {
            Outcome::Answered(s, v) => {
                let ok: &[u16] = if *what == "reserve" { &[201] } else { &[200] };
                if *s == 503 {
                    assert_eq!(error_code(v), "unavailable", "{what}: {v}");
                } else {
                    assert!(ok.contains(s), "{what}: {s} {v}");
                }
                if *what == "confirm" && *s == 200 {
                    acked.insert(rid.clone());
                }
            }
            Outcome::Refused(e) => {
                let kind = if e.contains("onnection refused") {
                    "refused"
                } else {
                    "reset"
                };
                *refused.entry(format!("{what} {kind}")).or_default() += 1;
            }
        }
    }
    eprintln!(
        "SIGTERM: exit after {took:?}; {} requests, {} confirms acknowledged; not answered: {refused:?}",
        log.len(),
        acked.len()
    );
    assert!(
        !refused.is_empty(),
        "the burst outlived the server: some requests were refused"
    );
    let pool = sqlx::PgPool::connect(&db).await.expect("pool");
    let rows: BTreeSet<String> = sqlx::query_as::<_, (String,)>(
        "SELECT reservation_id::text FROM orders WHERE sale_id = $1",
    )
    .bind(&sale)
    .fetch_all(&pool)
    .await
    .expect("orders")
    .into_iter()
    .map(|(r,)| r)
    .collect();
    let missing: Vec<_> = acked.difference(&rows).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged confirms not in Postgres: {missing:?}",
        missing.len()
    );
    assert!(acked.len() >= 100);
    let _ = std::fs::remove_file(&log_path);
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Redis that restarted broke every connection to it; each HTTP worker
/// thread's own connection was noticed broken only by the next buyer on
/// that thread, who got a 503 (one per worker, seconds after Redis was
/// back). The connections are probed in the background now: once Redis is
/// back, no buyer finds one broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_comes_back_no_buyer_finds_a_broken_connection() {
    let mut redis = RedisServer::start(&[]);
    let app = app_on(&redis, Duration::from_millis(500)).await;
    let sale = app.sale(100, 1, 60).await;
    // A fresh client per request: a new connection each time, so both HTTP
    // worker threads (and their Redis connections) serve some.
    let view_fresh = |app: &TestApp| {
        let url = app.url(&format!("/v1/sales/{sale}"));
        async move {
            let client = reqwest::Client::new();
            timed("view", client.get(url)).await
        }
    };
    for _ in 0..10 {
        assert_eq!(view_fresh(&app).await.status, 200);
    }
    redis.restart();
    readyz_until(&app, Duration::from_secs(15), |s, v| {
        s == 200 && v["redis"] == "ok"
    })
    .await;
    // Two probe rounds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..20 {
        let a = view_fresh(&app).await;
        assert_eq!(
            a.status, 200,
            "request {i} after Redis came back: {}",
            a.body
        );
    }
}
