//! `GET /v1/sales/{sale_id}/orders`: every confirmed order of a sale,
//! streamed from Postgres in constant memory, as CSV (the default) or
//! NDJSON (`Accept: application/x-ndjson`).

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::SecondsFormat;
use serde::Serialize;

use super::error::ApiError;
use super::extract::{sale_id, Admin};
use super::views::answers::{BadRequest, SaleNotFound, Unauthorized, Unavailable};
use super::views::SalePath;
use super::{route, AppState};
use crate::domain::Order;
use crate::service::ExportEncoder;

pub fn routes(cfg: &mut web::ServiceConfig) {
    route::<__path_export_orders>(cfg, web::get().to(export_orders));
}

const NDJSON: &str = "application/x-ndjson";

/// The columns of the export, in order (the CSV header row).
const COLUMNS: [&str; 5] = [
    "reservation_id",
    "sale_id",
    "user_id",
    "quantity",
    "confirmed_at",
];

/// One order as an export line.
#[derive(Serialize)]
struct Line<'a> {
    reservation_id: uuid::Uuid,
    sale_id: &'a str,
    user_id: &'a str,
    quantity: i32,
    confirmed_at: String,
}

impl<'a> From<&'a Order> for Line<'a> {
    fn from(o: &'a Order) -> Self {
        Self {
            reservation_id: o.reservation_id,
            sale_id: &o.sale_id,
            user_id: &o.user_id,
            quantity: o.quantity,
            confirmed_at: o.confirmed_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        }
    }
}

/// RFC 4180 CSV with a header row; fields holding commas, quotes or line
/// breaks are quoted (a user id may hold any of them).
struct Csv(csv::Writer<Vec<u8>>);

fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new())
}

impl Csv {
    fn new() -> std::io::Result<Self> {
        let mut w = csv_writer();
        w.write_record(COLUMNS)?;
        Ok(Self(w))
    }
}

impl ExportEncoder for Csv {
    fn order(&mut self, order: &Order) -> std::io::Result<()> {
        self.0
            .serialize(Line::from(order))
            .map_err(std::io::Error::other)
    }
    fn pending(&self) -> usize {
        // Without what the writer still buffers (at most its 8 KiB).
        self.0.get_ref().len()
    }
    fn take(&mut self) -> std::io::Result<Vec<u8>> {
        std::mem::replace(&mut self.0, csv_writer())
            .into_inner()
            .map_err(|e| e.into_error())
    }
}

/// One JSON object per line.
#[derive(Default)]
struct Ndjson(Vec<u8>);

impl ExportEncoder for Ndjson {
    fn order(&mut self, order: &Order) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.0, &Line::from(order))?;
        self.0.push(b'\n');
        Ok(())
    }
    fn pending(&self) -> usize {
        self.0.len()
    }
    fn take(&mut self) -> std::io::Result<Vec<u8>> {
        Ok(std::mem::take(&mut self.0))
    }
}

/// Whether `Accept` asks for NDJSON (by name, with a non-zero quality).
fn wants_ndjson(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let named = parts.next().is_some_and(|m| m.eq_ignore_ascii_case(NDJSON));
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            named && !refused
        })
}

/// Every confirmed order of the sale, oldest first, streamed as it is read
/// from Postgres. A body that ends without its last chunk (the connection
/// closed) was cut short by an error: export again.
#[utoipa::path(get, path = "/v1/sales/{sale_id}/orders", tag = "admin", operation_id = "export_orders",
    params(SalePath),
    responses(
        (status = 200, description = "every confirmed order: CSV with the header row `reservation_id,sale_id,user_id,quantity,confirmed_at`, or (`Accept: application/x-ndjson`) one JSON object per line with those fields",
            content((String = "text/csv"), (String = "application/x-ndjson"))),
        BadRequest, Unauthorized, SaleNotFound, Unavailable,
    ),
    security(("admin_token" = [])))]
#[tracing::instrument(skip_all, fields(sale = %path))]
pub(crate) async fn export_orders(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let sale = sale_id(&path)?;
    let ndjson = wants_ndjson(&req);
    let encoder: Box<dyn ExportEncoder> = if ndjson {
        Box::<Ndjson>::default()
    } else {
        Box::new(Csv::new().map_err(|e| ApiError::Internal(Box::new(e)))?)
    };
    let chunks = state.service.export(&sale, encoder).await?;
    let body = futures_util::stream::unfold(chunks, |mut chunks| async move {
        let chunk = chunks.recv().await?;
        Some((chunk.map(Bytes::from).map_err(ApiError::from), chunks))
    });
    let (content_type, ext) = if ndjson {
        (NDJSON, "ndjson")
    } else {
        ("text/csv; charset=utf-8", "csv")
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{sale}-orders.{ext}\""),
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn order(user: &str) -> Order {
        Order {
            reservation_id: uuid::Uuid::nil(),
            sale_id: "s-1".into(),
            user_id: user.into(),
            quantity: 2,
            confirmed_at: chrono::DateTime::from_timestamp_millis(1_795_422_534_255).expect("time"),
            epoch: 0,
            items: Vec::new(),
        }
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut csv = Csv::new().expect("csv");
        csv.order(&order("plain")).expect("row");
        csv.order(&order("a,\"b\"\nc")).expect("row");
        let text = String::from_utf8(csv.take().expect("take")).expect("utf-8");
        assert_eq!(
            text,
            "reservation_id,sale_id,user_id,quantity,confirmed_at\n\
             00000000-0000-0000-0000-000000000000,s-1,plain,2,2026-11-23T08:28:54.255Z\n\
             00000000-0000-0000-0000-000000000000,s-1,\"a,\"\"b\"\"\nc\",2,2026-11-23T08:28:54.255Z\n"
        );
        assert!(csv.take().expect("take").is_empty(), "taken once");
    }

    #[test]
    fn ndjson_is_one_object_per_line() {
        let mut nd = Ndjson::default();
        nd.order(&order("a\"b")).expect("row");
        let text = String::from_utf8(nd.take().expect("take")).expect("utf-8");
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).expect("json");
        assert_eq!(v["user_id"], "a\"b");
        assert_eq!(v["quantity"], 2);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn accept_picks_ndjson_only_when_named() {
        let with = |accept: &str| {
            wants_ndjson(
                &TestRequest::default()
                    .insert_header((header::ACCEPT, accept))
                    .to_http_request(),
            )
        };
        assert!(with("application/x-ndjson"));
        assert!(with("text/csv;q=0.5, application/x-ndjson"));
        assert!(!with("application/x-ndjson;q=0"));
        assert!(!with("text/csv"));
        assert!(!with("*/*"));
        assert!(!wants_ndjson(&TestRequest::default().to_http_request()));
    }
}
