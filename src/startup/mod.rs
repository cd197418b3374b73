//! Wiring: connections, shared state, background tasks and the HTTP server
//! (`server.rs`). [`Application::build`] is state, tasks, serve; every
//! background task stops on the one shutdown token.

mod server;

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::web;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::api::limits::Limits;
use crate::api::AppState;
use crate::auth::Auth;
use crate::background::directory::Directory;
use crate::background::live::Live;
use crate::background::readiness::{Readiness, TaskHealth};
use crate::background::sweeper;
use crate::background::worker::{Worker, WorkerConfig, WorkerStatus};
use crate::config::Settings;
use crate::gate::{Gate, GateOptions, RedisConn};
use crate::service::Service;
use crate::store::Store;
use crate::telemetry::chain;

/// Postgres connections per instance. The request path writes to Postgres
/// only to confirm (and to rebuild a lost sale); the worker, the sweeper's
/// directory and the admin calls take a few more. 16 keeps a burst of
/// confirms from queueing on the pool while leaving Postgres' default 100
/// connections for several instances.
const DB_POOL_SIZE: u32 = 16;

/// One gate call may connect and then wait for its answer, each bounded by
/// `FLASHGATE_REDIS_TIMEOUT_MS`: its deadline is twice that.
const GATE_CALLS_PER_TIMEOUT: u32 = 2;

/// The write-behind's own connection waits this many times longer than the
/// request path: its reads return up to `FLASHGATE_WORKER_BATCH` entries
/// and its XAUTOCLAIM scans a stream, far more than a script's answer.
const WORKER_TIMEOUT_FACTOR: u32 = 5;

/// How often histograms are folded into buckets and idle rate-limit keys
/// forgotten (a buyer is forgotten ~4 s after its last burst).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// How long `run_until_stopped` waits for each background task to finish
/// its round (the worker its batch) after the server stopped.
const TASK_STOP_BOUND: Duration = Duration::from_secs(10);
/// Longest the shutdown waits for event streams to write their last chunk
/// (a client that reads nothing cannot hold it longer).
const STREAMS_STOP_BOUND: Duration = Duration::from_secs(1);

/// The Redis gate and the Postgres store, as configured.
pub async fn connect(settings: &Settings) -> anyhow::Result<(Gate, Store)> {
    let conn = RedisConn::connect(
        &settings.redis_urls,
        settings.redis_cluster,
        settings.redis_timeout,
    )
    .await?;
    let gate = Gate::new(
        conn,
        GateOptions {
            prefix: settings.key_prefix.clone(),
            deadline: settings.redis_timeout * GATE_CALLS_PER_TIMEOUT,
            sweep_batch: settings.sweep_batch,
            record_ttl: settings.record_ttl,
            idempotency_ttl: settings.idempotency_ttl,
            active_cap: settings.max_active_holds,
        },
    );
    let store = Store::connect_lazy(
        settings.database_url.expose(),
        settings.db_timeout,
        DB_POOL_SIZE,
    )?;
    Ok((gate, store))
}

/// The service (gate + store) alone, for the admin commands.
pub async fn service(settings: &Settings) -> anyhow::Result<Service> {
    let (gate, store) = connect(settings).await?;
    Ok(Service::new(gate, store, settings))
}

/// A write-behind worker on its own Redis connection (replies may take
/// longer than the request path's bound), walking the sales of the Redis
/// index and of Postgres (see [`Directory`]).
pub async fn worker(settings: &Settings, gate: &Gate, store: &Store) -> anyhow::Result<Worker> {
    let conn = RedisConn::connect(
        &settings.redis_urls,
        settings.redis_cluster,
        settings.redis_timeout * WORKER_TIMEOUT_FACTOR,
    )
    .await?;
    let mut cfg = WorkerConfig::new(
        settings.worker_batch,
        settings.worker_max_deliveries,
        settings.worker_claim_idle,
    );
    cfg.drop_final_records = settings.drop_final_records;
    Ok(Worker::new(
        gate.clone(),
        directory(gate, store),
        conn,
        store.clone(),
        cfg,
        Arc::new(TaskHealth::new("write-behind", settings.stall_after)),
    ))
}

/// The sales the background tasks walk (the Redis index and Postgres).
pub fn directory(gate: &Gate, store: &Store) -> Arc<Directory> {
    Arc::new(Directory::new(gate.clone(), Some(store.clone())))
}

pub struct Application {
    port: u16,
    server: Server,
    admission: Admission,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    live: Arc<Live>,
    pub service: Service,
    pub worker_status: Option<Arc<WorkerStatus>>,
}

pub struct Options {
    pub run_worker: bool,
    pub run_sweeper: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            run_worker: true,
            run_sweeper: true,
        }
    }
}

/// The background tasks of one instance, and what they report.
struct Background {
    tasks: Vec<JoinHandle<()>>,
    readiness: Arc<Readiness>,
    worker: Option<Arc<WorkerStatus>>,
    limits: Arc<Limits>,
}

/// Starts the readiness probe, the write-behind worker and the sweeper (as
/// `opts` says), the metrics upkeep and the rate limits' pruning; each
/// stops on `shutdown`.
async fn background(
    settings: &Settings,
    opts: &Options,
    gate: &Gate,
    store: &Store,
    shutdown: &CancellationToken,
) -> anyhow::Result<Background> {
    let mut tasks = Vec::new();
    let readiness = Arc::new(Readiness::default());
    readiness.probe(gate, store).await;
    tasks.push(tokio::spawn(readiness.clone().run(
        gate.clone(),
        store.clone(),
        shutdown.clone(),
    )));
    let mut worker_status = None;
    if opts.run_worker {
        // Several consumers of the group: each takes other entries, and
        // their Postgres writes overlap. One status for all of them.
        for _ in 0..settings.worker_tasks.max(1) {
            let mut w = worker(settings, gate, store).await?;
            match &worker_status {
                Some(status) => w = w.sharing(Arc::clone(status)),
                None => worker_status = Some(w.status()),
            }
            readiness.watch(w.health());
            tasks.push(tokio::spawn(w.run(shutdown.clone())));
        }
    }
    if opts.run_sweeper {
        let health = Arc::new(TaskHealth::new("sweeper", settings.stall_after));
        readiness.watch(health.clone());
        tasks.push(tokio::spawn(sweeper::run(
            gate.clone(),
            directory(gate, store),
            settings.sweep_interval,
            settings.sweep_batch,
            health,
            shutdown.clone(),
        )));
    }
    crate::metrics::install();
    tasks.push(tokio::spawn(crate::metrics::upkeep(
        UPKEEP_EVERY,
        shutdown.clone(),
    )));
    let limits = Arc::new(Limits::new(&settings.rate));
    tasks.push(tokio::spawn(crate::api::limits::prune(
        limits.clone(),
        UPKEEP_EVERY,
        shutdown.clone(),
    )));
    Ok(Background {
        tasks,
        readiness,
        worker: worker_status,
        limits,
    })
}

impl Application {
    /// State (connections, migrations, the service, warmed up), tasks
    /// (background), serve (the HTTP server on `settings.listen`).
    pub async fn build(settings: Settings, opts: Options) -> anyhow::Result<Self> {
        settings.check_secrets()?;
        let (gate, store) = connect(&settings).await?;
        if let Err(e) = store.migrate().await {
            tracing::warn!(error = %chain(&e), "could not apply migrations at start (Postgres down?); run `flashgate migrate` when it is back");
        }
        let service = Service::new(gate.clone(), store.clone(), &settings);
        warm_up(&service).await;

        let shutdown = CancellationToken::new();
        let bg = background(&settings, &opts, &gate, &store, &shutdown).await?;

        let closing_streams = shutdown.child_token();
        let live = Live::new(
            service.clone(),
            settings.events_max_hz,
            settings.events_max_subscribers,
            closing_streams.clone(),
        );
        let (admission, inflight) = server::inflight_bounds(&settings);
        let state = web::Data::new(AppState {
            service: service.clone(),
            auth: Auth::new(&settings),
            max_body_bytes: settings.max_body_bytes,
            worker: bg.worker.clone(),
            readiness: bg.readiness.clone(),
            limits: bg.limits.clone(),
            live: live.clone(),
            inflight,
        });
        let (server, port) = server::serve(
            &settings,
            state,
            admission.clone(),
            &shutdown,
            closing_streams,
        )?;
        tracing::info!(port, worker = opts.run_worker, durability = ?settings.confirm_durability, "flashgate listening");
        Ok(Self {
            port,
            server,
            admission,
            shutdown,
            tasks: bg.tasks,
            live,
            service,
            worker_status: bg.worker,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket-level admission of this server (its counters, for tests).
    pub fn admission(&self) -> Admission {
        self.admission.clone()
    }

    /// A handle that stops the server gracefully (tests, signals).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM (or `handle().stop(true)`): stops accepting, lets
    /// in-flight requests finish (bounded by the shutdown timeout), then stops
    /// every background task (the worker never acks uncommitted work). SIGINT
    /// and SIGQUIT stop the server at once (actix), the rest as above.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        // Event streams that took their sockets (`admission::Handoff`) are
        // not the HTTP server's: they ended when its shutdown began, and
        // each writes its last chunk before the runtime stops.
        let _ = tokio::time::timeout(STREAMS_STOP_BOUND, self.live.all_left()).await;
        self.shutdown.cancel();
        for t in self.tasks {
            if tokio::time::timeout(TASK_STOP_BOUND, t).await.is_err() {
                tracing::warn!("a background task did not stop in time");
            }
        }
        tracing::info!("flashgate stopped");
        result
    }
}

/// Scripts loaded, sales restored from Postgres, eviction policy checked.
/// Failures only warn: the service starts unready and recovers by itself.
async fn warm_up(service: &Service) {
    if let Err(e) = service.gate.load_scripts().await {
        tracing::warn!(error = %chain(&e), "Redis not reachable at start; requests answer 503 until it is");
        return;
    }
    match service.gate.eviction_policy().await {
        Ok(p) if p != "noeviction" && !p.is_empty() => {
            tracing::warn!(policy = %p, "Redis maxmemory-policy is not noeviction: Redis may evict flashgate's keys under memory pressure; set `maxmemory-policy noeviction`");
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %chain(&e), "could not read maxmemory-policy"),
    }
    match service.restore_all().await {
        Ok(n) => tracing::info!(
            sales = n,
            "sales present in Redis (rebuilt from Postgres where missing)"
        ),
        Err(e) => {
            tracing::warn!(error = %chain(&e), "could not restore sales from Postgres at start; they are rebuilt on first use")
        }
    }
}
