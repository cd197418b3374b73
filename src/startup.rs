//! Wiring: connections, shared state, background tasks and the HTTP server.

use std::future::ready;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_http::error::DispatchError;
use actix_http::{Extensions, HttpService, Protocol, Request};
use actix_service::{apply_fn_factory, fn_service, map_config, Service as _, ServiceFactoryExt};
use actix_web::dev::{AppConfig, Server};
use actix_web::http::StatusCode;
use actix_web::middleware::ErrorHandlers;
use actix_web::{web, App};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing_actix_web::TracingLogger;

use crate::admission::{Admission, AdmittedStream};
use crate::api::{self, AppState};
use crate::auth::Auth;
use crate::config::Settings;
use crate::directory::Directory;
use crate::gate::{Gate, GateOptions, RedisConn};
use crate::limits::Limits;
use crate::readiness::{Readiness, TaskHealth};
use crate::service::Service;
use crate::store::worker::{Worker, WorkerConfig, WorkerStatus};
use crate::store::Store;

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
            deadline: settings.redis_timeout * 2,
            sweep_batch: settings.sweep_batch,
            record_ttl: settings.record_ttl,
            idempotency_ttl: settings.idempotency_ttl,
        },
    );
    let store = Store::connect_lazy(settings.database_url.expose(), settings.db_timeout, 16)?;
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
        settings.redis_timeout * 5,
    )
    .await?;
    let cfg = WorkerConfig::new(
        settings.worker_batch,
        settings.worker_max_deliveries,
        settings.worker_claim_idle,
    );
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

/// The listening socket, with room for a burst of new connections: the
/// kernel holds up to 4096 not yet accepted (capped by `net.core.somaxconn`)
/// where `TcpListener::bind` leaves 128, and a full queue drops SYNs, which
/// clients resend only after a second.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)?.into_std()
}

/// actix-web's defaults, spelled out: admission waits end before them.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long a new connection has to send its first request head (then 408
/// and close). Kept at 5 s, not tightened, on purpose: a client sending a
/// head slowly holds no admission permit (see `admission`), only its
/// connection (~8.5 KiB), so a tighter limit would not speed up other
/// requests; it would only make an attacker reconnect more often. And
/// actix-http applies it to the first request of a connection only (a
/// later head has no timer at all), so it bounds nothing an attacker cannot
/// get around. What a tighter value would cost: admission waits end 0.5 s
/// before it, so the first request of every new connection in a burst
/// would wait less for a permit before being read uncounted, and slow
/// mobile clients would be cut off.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Application {
    port: u16,
    server: Server,
    admission: Admission,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
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

impl Application {
    pub async fn build(settings: Settings, opts: Options) -> anyhow::Result<Self> {
        settings.check_secrets()?;
        let (gate, store) = connect(&settings).await?;
        if let Err(e) = store.migrate().await {
            tracing::warn!(error = %crate::error::chain(&e), "could not apply migrations at start (Postgres down?); run `flashgate migrate` when it is back");
        }
        let service = Service::new(gate.clone(), store.clone(), &settings);
        warm_up(&service).await;

        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut worker_status = None;
        let readiness = Arc::new(Readiness::default());
        readiness.probe(&gate, &store).await;
        tasks.push(tokio::spawn(readiness.clone().run(
            gate.clone(),
            store.clone(),
            shutdown.clone(),
        )));
        if opts.run_worker {
            let w = worker(&settings, &gate, &store).await?;
            worker_status = Some(w.status());
            readiness.watch(w.health());
            tasks.push(tokio::spawn(w.run(shutdown.clone())));
        }
        if opts.run_sweeper {
            let health = Arc::new(TaskHealth::new("sweeper", settings.stall_after));
            readiness.watch(health.clone());
            tasks.push(tokio::spawn(crate::sweeper::run(
                gate.clone(),
                directory(&gate, &store),
                settings.sweep_interval,
                settings.sweep_batch,
                health,
                shutdown.clone(),
            )));
        }

        crate::metrics::install();
        tasks.push(tokio::spawn(crate::metrics::upkeep(
            Duration::from_secs(5),
            shutdown.clone(),
        )));
        let limits = Arc::new(Limits::new(&settings.rate));
        tasks.push(tokio::spawn(crate::limits::prune(
            limits.clone(),
            Duration::from_secs(5),
            shutdown.clone(),
        )));
        let state = web::Data::new(AppState {
            service: service.clone(),
            auth: Auth::new(&settings),
            max_body_bytes: settings.max_body_bytes,
            worker: worker_status.clone(),
            readiness: readiness.clone(),
            limits: limits.clone(),
            inflight: Arc::new(tokio::sync::Semaphore::new(settings.max_inflight)),
        });
        let listener = listen(settings.listen)?;
        let addr = listener.local_addr()?;
        let port = addr.port();
        let limit = settings.max_body_bytes;
        let admission =
            Admission::new(settings.max_inflight, KEEP_ALIVE.min(FIRST_REQUEST_TIMEOUT));
        // actix-web's `HttpServer`, assembled by hand so that each accepted
        // connection is wrapped in `AdmittedStream` (see `admission`).
        let mut builder = actix_server::Server::build();
        let shutdown_signal = builder.graceful_shutdown_signal();
        let conns = admission.clone();
        let stop_probes = shutdown.clone();
        builder = builder
            .listen("flashgate-http", listener, move || {
                // Runs on each worker thread: its Redis calls get a connection
                // of their own, opened now rather than by the first request,
                // and probed in the background (see `probe_thread_connection`).
                crate::gate::conn::own_connection_per_thread();
                actix_web::rt::spawn(probe_thread_connection(
                    state.service.gate.clone(),
                    stop_probes.clone(),
                ));
                let app = App::new()
                    .wrap(actix_web::middleware::from_fn(api::limit_headers))
                    .wrap(
                        ErrorHandlers::new()
                            .default_handler_client(api::ensure_json_error)
                            .default_handler_server(api::ensure_json_error)
                            .handler(StatusCode::NOT_FOUND, api::ensure_json_error),
                    )
                    .wrap(actix_web::middleware::from_fn(crate::metrics::middleware))
                    .wrap(TracingLogger::<crate::telemetry::RootSpan>::new())
                    // Outermost: a request waiting for its permit holds no span,
                    // no metrics state, no handler future.
                    .wrap(actix_web::middleware::from_fn(api::bounded))
                    .app_data(state.clone())
                    .app_data(api::path_config())
                    .app_data(web::PayloadConfig::new(limit))
                    .configure(api::routes)
                    .default_service(web::to(api::not_found));
                let conns = conns.clone();
                let signal = shutdown_signal.clone();
                fn_service(move |io: tokio::net::TcpStream| {
                    let io = conns.admit(io);
                    let peer = io.peer_addr().ok();
                    ready(Ok::<_, DispatchError>((io, Protocol::Http1, peer)))
                })
                .and_then(
                    HttpService::build()
                        // Each request carries its connection's admission
                        // state: it marks the connection as holding a
                        // request, and the handler bound reads its deadline.
                        .on_connect_ext(|io: &AdmittedStream, ext: &mut Extensions| {
                            ext.insert(io.state());
                        })
                        .keep_alive(KEEP_ALIVE)
                        .client_request_timeout(FIRST_REQUEST_TIMEOUT)
                        .client_disconnect_timeout(Duration::from_secs(1))
                        .local_addr(addr)
                        .graceful_shutdown_signal(move || {
                            let signal = signal.clone();
                            async move { signal.notified().await }
                        })
                        .finish(apply_fn_factory(
                            map_config(app, |_| AppConfig::default()),
                            |req: Request, app| {
                                crate::admission::request_started(&req);
                                app.call(req)
                            },
                        )),
                )
            })?
            .shutdown_timeout(settings.shutdown_timeout.as_secs().max(1));
        if settings.http_workers > 0 {
            builder = builder.workers(settings.http_workers);
        }
        let server = builder.run();
        tracing::info!(port, worker = opts.run_worker, durability = ?settings.confirm_durability, "flashgate listening");
        Ok(Self {
            port,
            server,
            admission,
            shutdown,
            tasks,
            service,
            worker_status,
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
    /// the worker (which never acks uncommitted work) and the sweeper. SIGINT
    /// and SIGQUIT stop the server at once (actix), the rest as above.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.shutdown.cancel();
        for t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                tracing::warn!("a background task did not stop in time");
            }
        }
        tracing::info!("flashgate stopped");
        result
    }
}

/// Pings Redis over this HTTP worker thread's own connection, now and every
/// [`crate::readiness::PROBE_EVERY`]. A connection that broke while Redis
/// was away (a restart, a failover) is noticed only when used: the probe
/// uses it first, so it is reconnected before a buyer's request would have
/// found it broken and answered 503.
async fn probe_thread_connection(gate: Gate, shutdown: CancellationToken) {
    loop {
        if let Err(e) = gate.ping().await {
            tracing::debug!(error = %crate::error::chain(&e), "HTTP worker's Redis connection: ping failed (reconnecting)");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(crate::readiness::PROBE_EVERY) => {}
        }
    }
}

/// Scripts loaded, sales restored from Postgres, eviction policy checked.
/// Failures only warn: the service starts unready and recovers by itself.
async fn warm_up(service: &Service) {
    if let Err(e) = service.gate.load_scripts().await {
        tracing::warn!(error = %crate::error::chain(&e), "Redis not reachable at start; requests answer 503 until it is");
        return;
    }
    match service.gate.eviction_policy().await {
        Ok(p) if p != "noeviction" && !p.is_empty() => {
            tracing::warn!(policy = %p, "Redis maxmemory-policy is not noeviction: Redis may evict flashgate's keys under memory pressure; set `maxmemory-policy noeviction`");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(error = %crate::error::chain(&e), "could not read maxmemory-policy")
        }
    }
    match service.restore_all().await {
        Ok(n) => tracing::info!(
            sales = n,
            "sales present in Redis (rebuilt from Postgres where missing)"
        ),
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "could not restore sales from Postgres at start; they are rebuilt on first use")
        }
    }
}
