//! The HTTP server: actix-web's `HttpServer`, assembled by hand so that
//! each accepted connection is wrapped in `AdmittedStream` (see
//! `crate::admission`), with the app's middleware in one place.

use std::future::ready;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_http::error::DispatchError;
use actix_http::{Extensions, HttpService, Protocol, Request};
use actix_service::{apply_fn_factory, fn_service, map_config, Service as _, ServiceFactoryExt};
use actix_web::dev::{AppConfig, Server};
use actix_web::http::StatusCode;
use actix_web::middleware::{Condition, ErrorHandlers};
use actix_web::{web, App};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing_actix_web::TracingLogger;

use crate::admission::{Admission, AdmittedStream};
use crate::api::{self, AppState};
use crate::config::Settings;
use crate::gate::Gate;
use crate::telemetry::chain;

/// Most connections the kernel holds not yet accepted (see [`listen`]).
const LISTEN_BACKLOG: u32 = 4096;

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
    socket.listen(LISTEN_BACKLOG)?.into_std()
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

/// The two bounds `FLASHGATE_MAX_INFLIGHT` sizes, explained in one place:
/// - the socket-level [`Admission`]: at most that many requests read off
///   their connections at once (the rest wait, unread, in the kernel's
///   buffers: memory follows the permits, not the connections). A wait is
///   bounded; when it runs out the request is read uncounted;
/// - the handler bound (`api::bounded`, this semaphore): at most that many
///   handlers running at once, also for the requests read uncounted. Its
///   wait ends with the request's admission deadline, so a request waits at
///   most 2 s in all, then runs.
///
/// One number, because both bound the same thing (requests being worked
/// on); two mechanisms, because the first cannot see the requests it let
/// through uncounted, and the second comes too late to save their memory.
pub(super) fn inflight_bounds(settings: &Settings) -> (Admission, Arc<Semaphore>) {
    (
        Admission::new(settings.max_inflight, KEEP_ALIVE.min(FIRST_REQUEST_TIMEOUT)),
        Arc::new(Semaphore::new(settings.max_inflight)),
    )
}

/// Binds and starts serving `state` (on `settings.http_workers` threads);
/// returns the server and its port. Background loops it starts on the
/// worker threads stop on `shutdown`.
pub(super) fn serve(
    settings: &Settings,
    state: web::Data<AppState>,
    admission: Admission,
    shutdown: &CancellationToken,
    closing_streams: CancellationToken,
) -> anyhow::Result<(Server, u16)> {
    let listener = listen(settings.listen)?;
    let addr = listener.local_addr()?;
    let port = addr.port();
    let limit = settings.max_body_bytes;
    // actix-web's `HttpServer`, assembled by hand so that each accepted
    // connection is wrapped in `AdmittedStream` (see `admission`).
    let mut builder = actix_server::Server::build();
    let shutdown_signal = builder.graceful_shutdown_signal();
    // Event streams never end by themselves: close them as soon as the
    // server begins a graceful shutdown, so it does not wait on them.
    let streams_signal = shutdown_signal.clone();
    tokio::spawn(async move {
        streams_signal.notified().await;
        closing_streams.cancel();
    });
    let cors_origins = settings.cors_origins.clone();
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
                .wrap(Condition::new(
                    !cors_origins.is_empty(),
                    api::cors::cors(&cors_origins),
                ))
                .wrap(actix_web::middleware::from_fn(
                    api::cors::preflight_no_content,
                ))
                .wrap(
                    ErrorHandlers::new()
                        .default_handler_client(api::ensure_json_error)
                        .default_handler_server(api::ensure_json_error)
                        .handler(StatusCode::NOT_FOUND, api::ensure_json_error),
                )
                .wrap(actix_web::middleware::from_fn(api::observe::middleware))
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
    Ok((builder.run(), port))
}

/// Pings Redis over this HTTP worker thread's own connection, now and every
/// [`crate::background::readiness::PROBE_EVERY`]. A connection that broke while Redis
/// was away (a restart, a failover) is noticed only when used: the probe
/// uses it first, so it is reconnected before a buyer's request would have
/// found it broken and answered 503.
async fn probe_thread_connection(gate: Gate, shutdown: CancellationToken) {
    loop {
        if let Err(e) = gate.ping().await {
            tracing::debug!(error = %chain(&e), "HTTP worker's Redis connection: ping failed (reconnecting)");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(crate::background::readiness::PROBE_EVERY) => {}
        }
    }
}
