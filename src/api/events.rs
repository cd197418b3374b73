//! `GET /v1/sales/{sale_id}/events`: the sale as Server-Sent Events. One
//! event (`event: sale`, `id: <version>`, `data: <the sale view>`) at
//! connect, then one per change, coalesced to `FLASHGATE_EVENTS_MAX_HZ`;
//! a `: keep-alive` comment every 15 s. The views come from the instance's
//! one watcher of the sale (`background::live`), whatever the number of
//! subscribers.

use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::extract::sale_id;
use super::views::answers::{BadRequest, SaleNotFound, Unavailable};
use super::views::{SalePath, SaleView};
use super::{route, AppState};
use crate::background::live::{Snapshot, SubscribeError, Subscription};
use crate::ids::SaleId;

/// A comment line every this often keeps proxies from closing an idle
/// stream (and tells the client the connection is alive).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn routes(cfg: &mut web::ServiceConfig) {
    route::<__path_events>(cfg, web::get().to(events));
}

/// The wire form of one view: made once per view for every subscriber.
fn event(sale: &SaleId, snap: &Snapshot) -> Bytes {
    let text = snap.encoded.get_or_init(|| {
        let view = SaleView::new(sale, &snap.state);
        let data = serde_json::to_string(&view).unwrap_or_else(|_| "{}".into());
        format!("event: sale\nid: {}\ndata: {data}\n\n", view.version)
    });
    Bytes::copy_from_slice(text.as_bytes())
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
    /// The next chunk of the body: a view that moved on, or a keep-alive;
    /// None once the instance shuts down (or the sale's watcher ends).
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if std::mem::take(&mut self.first) {
                let snap = self.sub.feed.borrow_and_update().clone();
                if let Some(b) = self.fresh(&snap) {
                    return Some(b);
                }
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
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), s))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Proxies (nginx) must not buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}
