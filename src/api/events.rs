//! `GET /v1/sales/{sale_id}/events`: the sale as Server-Sent Events. One
//! event (`event: sale`, `id: <version>`, `data: <the sale view>`) at
//! connect, then one per change, coalesced to `FLASHGATE_EVENTS_MAX_HZ`;
//! a `: keep-alive` comment every 15 s. The views come from the instance's
//! one watcher of the sale (`background::live`), whatever the number of
//! subscribers.
//!
//! actix-http writes a stream's head and first event; then the stream takes
//! its socket from actix-http's connection dispatcher (`admission::Handoff`)
//! and writes the rest itself, in the same chunked framing. Memory: the
//! dispatcher keeps two 8 KiB buffers and a ~2 KiB task per connection for
//! as long as it serves it, most of the ~11.7 KiB a stream cost when
//! actix-http served it to the end (`loadtest/RESULTS.md`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::http::{header, Version};
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Buf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::extract::sale_id;
use super::views::answers::{BadRequest, SaleNotFound, Unavailable};
use super::views::{SalePath, SaleView};
use super::{route, AppState};
use crate::admission::{ConnState, Handoff};
use crate::background::live::{Snapshot, SubscribeError, Subscription};
use crate::ids::SaleId;

/// A comment line every this often keeps proxies from closing an idle
/// stream (and tells the client the connection is alive).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn routes(cfg: &mut web::ServiceConfig) {
    route::<__path_events>(cfg, web::get().to(events));
}

/// The wire form of one view: encoded once per view, by the first
/// subscriber that sends it; every subscriber's chunk is a reference to
/// those bytes (a counter, not a copy of the event per subscriber).
fn event(sale: &SaleId, snap: &Snapshot) -> Bytes {
    snap.encoded
        .get_or_init(|| {
            let view = SaleView::new(sale, &snap.state);
            let data = serde_json::to_string(&view).unwrap_or_else(|_| "{}".into());
            Bytes::from(format!(
                "event: sale\nid: {}\ndata: {data}\n\n",
                view.version
            ))
        })
        .clone()
}

/// The last event id a reconnecting client saw (`Last-Event-ID`): the
/// current view is not sent again if it is that one.
fn last_event_id(req: &HttpRequest) -> Option<i64> {
    req.headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

struct Stream {
    sale: SaleId,
    sub: Subscription,
    sent: Option<i64>,
    first: bool,
    keep_alive: tokio::time::Interval,
    closing: CancellationToken,
}

impl Stream {
    /// The view at connect, unless the client has seen it (`Last-Event-ID`).
    fn first(&mut self) -> Option<Bytes> {
        if !std::mem::take(&mut self.first) {
            return None;
        }
        let snap = self.sub.feed.borrow_and_update().clone();
        self.fresh(&snap)
    }

    /// The next chunk of the body: a view that moved on, or a keep-alive;
    /// None once the instance shuts down (or the sale's watcher ends).
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.first() {
                return Some(b);
            }
            tokio::select! {
                _ = self.closing.cancelled() => return None,
                changed = self.sub.feed.changed() => {
                    changed.ok()?;
                    let snap = self.sub.feed.borrow_and_update().clone();
                    if let Some(b) = self.fresh(&snap) {
                        return Some(b);
                    }
                }
                _ = self.keep_alive.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    }

    fn fresh(&mut self, snap: &Snapshot) -> Option<Bytes> {
        let version = snap.state.view_version();
        if self.sent == Some(version) {
            return None;
        }
        self.sent = Some(version);
        self.keep_alive.reset();
        Some(event(&self.sale, snap))
    }
}

/// One Server-Sent Event of the sale's stream, as a client's parser reads
/// it (the schema of each event for OpenAPI tools that check event streams).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: the stream writes the fields as text
pub(crate) struct SseEvent {
    /// Always `sale`.
    event: String,
    /// The view's `version`.
    id: String,
    /// The sale view (`SaleView`) as JSON.
    data: String,
}

/// The sale as a stream of Server-Sent Events.
#[utoipa::path(get, path = "/v1/sales/{sale_id}/events", tag = "public", operation_id = "sale_events",
    params(
        SalePath,
        ("Last-Event-ID" = Option<String>, Header, description = "the last event id seen (a reconnecting EventSource sends it): that view is not sent again"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `event: sale`, `id: <version>`, `data: <the sale view>` at connect and after each change (at most FLASHGATE_EVENTS_MAX_HZ a second), `: keep-alive` every 15 s", content_type = "text/event-stream", body = SseEvent),
        BadRequest, SaleNotFound, Unavailable,
    ))]
pub(crate) async fn events(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let sale = sale_id(&path)?;
    let sub = state.live.subscribe(&sale).await.map_err(|e| match e {
        SubscribeError::Full(_) => ApiError::unavailable(
            "this instance serves its maximum of event streams; retry",
            e,
        ),
        SubscribeError::Service(e) => ApiError::from(e),
    })?;
    let start = tokio::time::Instant::now() + KEEP_ALIVE;
    let stream = Stream {
        sale,
        sub,
        sent: last_event_id(&req),
        first: true,
        keep_alive: tokio::time::interval_at(start, KEEP_ALIVE),
        closing: state.live.closing().clone(),
    };
    let mut answer = HttpResponse::Ok();
    answer
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Proxies (nginx) must not buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"));
    // HTTP/1.1 on a server connection: actix-http writes the head and the
    // first event, then the stream takes the socket (see `Handoff`). HTTP/1.0
    // has no chunked framing (its body ends with the connection), and a
    // connection without the server's state (none in flashgate) cannot hand
    // off: actix-http serves those streams to the end.
    let conn = req.conn_data::<Arc<ConnState>>().cloned();
    match conn {
        Some(conn) if req.version() == Version::HTTP_11 => {
            let mut stream = stream;
            let first = stream.first();
            let ready = Arc::new(AtomicBool::new(false));
            let live = state.live.clone();
            conn.hand_off(Handoff {
                ready: ready.clone(),
                // Registered again on the main runtime (in `serve`): the
                // socket must not depend on the HTTP worker's reactor, which
                // stops, when the server does, before the stream's last chunk.
                take: Box::new(move |io| {
                    if let Ok(io) = io.into_std() {
                        live.spawn(serve(io, stream));
                    }
                }),
            });
            Ok(answer.streaming(FirstThenHandOff {
                first,
                ready: Some(ready),
            }))
        }
        _ => {
            let body = futures_util::stream::unfold(stream, |mut s| async move {
                let chunk = s.next().await?;
                Some((Ok::<_, std::convert::Infallible>(chunk), s))
            });
            Ok(answer.streaming(body))
        }
    }
}

/// The body actix-http writes of a stream that takes its socket: the first
/// event (if any); then it is ready for the handoff and gives nothing more.
struct FirstThenHandOff {
    first: Option<Bytes>,
    ready: Option<Arc<AtomicBool>>,
}

impl futures_util::Stream for FirstThenHandOff {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(Ok(b)));
        }
        if let Some(ready) = self.ready.take() {
            ready.store(true, Ordering::Release);
            // actix-http flushes what it has and hands the socket over.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

/// The rest of an event stream, on its own socket: each chunk in HTTP/1.1
/// chunked framing (as actix-http wrote the first). Ends when the client
/// closes the connection (an EventSource sends nothing after its request,
/// so the end of what it sends is its leaving: its place is free at once)
/// or a write fails, or with the last chunk when the instance shuts down.
/// Bytes the client sends are ignored.
async fn serve(io: std::net::TcpStream, mut stream: Stream) {
    let Ok(mut io) = TcpStream::from_std(io) else {
        return;
    };
    // The keep-alive timer again, on this runtime (the one made in the
    // handler belongs to the HTTP worker's): the first event was just sent.
    stream.keep_alive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            chunk = stream.next() => {
                let written = match chunk {
                    Some(b) => write_chunk(&mut io, &b).await,
                    None => {
                        let _ = io.write_all(b"0\r\n\r\n").await;
                        let _ = io.shutdown().await;
                        return;
                    }
                };
                if written.is_err() {
                    return;
                }
            }
            read = io.read(&mut scratch) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return;
                }
            }
        }
    }
}

/// One chunk of a chunked body: its size in hex, the data, CRLF; written
/// as one vectored write when the socket takes it whole.
async fn write_chunk(io: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(()); // an empty chunk would end the body
    }
    // The size line on the stack: no allocation per chunk and subscriber.
    let mut line = [0u8; 20];
    let n = {
        let mut w = &mut line[..];
        std::io::Write::write_fmt(&mut w, format_args!("{:X}\r\n", data.len()))?;
        20 - w.len()
    };
    let mut chunk = Buf::chain(Buf::chain(&line[..n], data), &b"\r\n"[..]);
    io.write_all_buf(&mut chunk).await
}
