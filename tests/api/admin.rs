//! What admins read of a sale: its reservations by pages (held from
//! Redis, confirmed from Postgres) and its order export (CSV, NDJSON).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use flashgate::domain::Order;
use flashgate::ids::SaleId;
use flashgate::service::ExportEncoder;
use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

/// `GET path` as the admin.
pub async fn admin_get(app: &TestApp, path: &str) -> (u16, Value) {
    body(
        app.client
            .get(app.url(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("get"),
    )
    .await
}

/// Every page of a listing, `between` run after each page; the ids in
/// the order listed.
async fn every_page(
    app: &TestApp,
    sale: &str,
    status: &str,
    limit: u32,
    mut between: impl FnMut(usize) -> Option<BoxFuture<'static, ()>>,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let mut path = format!("/v1/sales/{sale}/reservations?status={status}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, v) = admin_get(app, &path).await;
        assert_eq!(s, 200, "{v}");
        let items = v["reservations"].as_array().expect("reservations");
        assert!(items.len() <= limit as usize);
        for r in items {
            assert_eq!(
                (r["status"].as_str(), r["sale_id"].as_str()),
                (Some(status), Some(sale)),
                "{r}"
            );
            ids.push(rid(r));
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        if let Some(f) = between(page) {
            f.await;
        }
    }
    ids
}

/// The ids of the sale's orders in Postgres.
async fn order_ids(app: &TestApp, sale: &str) -> HashSet<String> {
    sqlx::query_scalar::<_, Uuid>("SELECT reservation_id FROM orders WHERE sale_id = $1")
        .bind(sale)
        .fetch_all(&app.pool)
        .await
        .expect("orders")
        .iter()
        .map(Uuid::to_string)
        .collect()
}

fn no_duplicates(ids: &[String]) -> HashSet<String> {
    let set: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(set.len(), ids.len(), "a reservation listed twice");
    set
}

/// Holds come (new reserves) and go (cancelled, confirmed) while an admin
/// pages through them: each page starts after the last hold of the one
/// before, so every hold that lives throughout is listed once, and no hold
/// twice. The same for confirmed reservations while more are confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_reservation_once_while_holds_come_and_go() {
    let app = open_app().await;
    let sale = app.sale(10_000, 1, 600).await;
    let reserve = |user: String| {
        let (app, sale) = (app.clone(), sale.clone());
        async move {
            let (s, v) = app.reserve(&sale, &user, 1, None).await;
            assert_eq!(s, 201, "{v}");
            rid(&v)
        }
    };
    // Reserved in a burst: many share a deadline (the same millisecond).
    let first: Vec<String> =
        futures_util::future::join_all((0..120).map(|i| reserve(format!("u{i}")))).await;
    let (stay, go) = first.split_at(80);
    let (gone, came) = (
        go.to_vec(),
        std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let listed = every_page(&app, &sale, "held", 7, |page| {
        let (app, sale, gone, came) = (app.clone(), sale.clone(), gone.clone(), came.clone());
        Some(
            async move {
                // Each page: two holds go (cancelled, confirmed), one comes.
                if let Some(r) = gone.get(page * 2) {
                    assert_eq!(app.act(&sale, r, "cancel", None).await.0, 200);
                }
                if let Some(r) = gone.get(page * 2 + 1) {
                    assert_eq!(app.act(&sale, r, "confirm", None).await.0, 200);
                }
                let (s, v) = app.reserve(&sale, &format!("late{page}"), 1, None).await;
                assert_eq!(s, 201, "{v}");
                came.lock().expect("lock").push(rid(&v));
            }
            .boxed(),
        )
    })
    .await;
    let listed = no_duplicates(&listed);
    for r in stay {
        assert!(
            listed.contains(r),
            "hold {r} lived throughout but was not listed"
        );
    }
    let came = came.lock().expect("lock").clone();
    assert!(
        came.iter().any(|r| listed.contains(r)),
        "holds made while paging show up later"
    );
    println!(
        "{} listed of {} held at the start, {} made meanwhile",
        listed.len(),
        first.len(),
        came.len()
    );

    // Confirmed: all of them (from Postgres) while more are confirmed.
    for r in &stay[..50] {
        assert_eq!(app.act(&sale, r, "confirm", None).await.0, 200);
    }
    let before = order_ids(&app, &sale).await;
    let more = stay[50..].to_vec();
    let listed = every_page(&app, &sale, "confirmed", 9, |page| {
        let (app, sale, r) = (app.clone(), sale.clone(), more.get(page).cloned());
        r.map(|r| {
            async move {
                assert_eq!(app.act(&sale, &r, "confirm", None).await.0, 200);
            }
            .boxed()
        })
    })
    .await;
    let listed = no_duplicates(&listed);
    assert!(
        before.iter().all(|r| listed.contains(r)),
        "an order was not listed"
    );
    // Confirmed while paging, each later than every one listed before it:
    // all of them show up.
    assert_eq!(listed, order_ids(&app, &sale).await);
}

/// Holds sharing one deadline are ordered by id: a cursor inside such a
/// group goes on right after its hold (a binary search, bounded work),
/// never skipping or repeating one. Made in Redis directly, so that all
/// 50 share the same millisecond.
#[tokio::test]
async fn pages_go_on_inside_a_group_of_holds_with_one_deadline() {
    let app = spawn_app().await;
    let sale = app.sale(100, 1, 600).await;
    let base = format!("{}:{{{sale}}}:", app.prefix);
    let deadline = Utc::now().timestamp_millis() + 600_000;
    let mut made: Vec<String> = (0..50).map(|_| Uuid::new_v4().to_string()).collect();
    let mut conn = app.redis().await;
    for (i, r) in made.iter().enumerate() {
        let _: () = redis::cmd("HSET")
            .arg(format!("{base}r:{r}"))
            .arg(&["user", &format!("g{i}"), "qty", "1", "status", "held"])
            .query_async(&mut conn)
            .await
            .expect("hset");
        let _: () = redis::cmd("ZADD")
            .arg(format!("{base}holds"))
            .arg(deadline + i64::from(i >= 45))
            .arg(r)
            .query_async(&mut conn)
            .await
            .expect("zadd");
    }
    let listed = every_page(&app, &sale, "held", 4, |_| None).await;
    made[..45].sort();
    made[45..].sort();
    assert_eq!(listed, made, "by deadline, then id, each once");
}

#[tokio::test]
async fn listing_errors() {
    let app = spawn_app().await;
    let sale = app.sale(5, 1, 60).await;
    let held = format!("h.1.{}", Uuid::new_v4());
    for (query, field) in [
        ("status=sold", None),
        ("", None),
        ("status=held&limit=0", Some("limit")),
        ("status=held&limit=501", Some("limit")),
        ("status=held&cursor=nonsense", Some("cursor")),
        (&*format!("status=confirmed&cursor={held}"), Some("cursor")),
        ("status=held&colour=red", None),
        (
            &*format!(
                "status=confirmed&cursor=c.-999999999999999999.{}",
                Uuid::new_v4()
            ),
            None,
        ),
    ] {
        let (s, v) = admin_get(&app, &format!("/v1/sales/{sale}/reservations?{query}")).await;
        assert_eq!(
            (s, error_code(&v)),
            (400, "invalid_request"),
            "{query}: {v}"
        );
        if let Some(f) = field {
            assert_eq!(v["error"]["details"]["field"], f, "{query}");
        }
    }
    for status in ["held", "confirmed"] {
        let (s, v) = admin_get(
            &app,
            &format!("/v1/sales/no-such-sale/reservations?status={status}"),
        )
        .await;
        assert_eq!((s, error_code(&v)), (404, "sale_not_found"), "{status}");
        let (s, v) = admin_get(
            &app,
            &format!("/v1/sales/{sale}/reservations?status={status}"),
        )
        .await;
        assert_eq!((s, v["next_cursor"].is_null()), (200, true), "{v}");
        assert_eq!(v["reservations"], json!([]));
    }
    let (s, v) = admin_get(
        &app,
        &format!("/v1/sales/{sale}/reservations?status=held&cursor={held}"),
    )
    .await;
    assert_eq!(
        (s, v["reservations"].clone()),
        (200, json!([])),
        "a cursor before anything: {v}"
    );
}

/// Inserts `n` orders of `sale` straight into Postgres (microsecond times,
/// some sharing one), plus one of a buyer whose id needs quoting.
async fn insert_orders(app: &TestApp, sale: &str, n: i64) -> String {
    sqlx::query(
        "INSERT INTO orders (reservation_id, sale_id, user_id, quantity, confirmed_at)
         SELECT gen_random_uuid(), $1, 'buyer-' || i, 1 + i % 3,
                timestamptz '2026-11-30 10:00:00+00' + (i / 2) * interval '1.000123 second'
         FROM generate_series(1, $2) AS i",
    )
    .bind(sale)
    .bind(n)
    .execute(&app.pool)
    .await
    .expect("insert orders");
    let nasty = "a,\"b\"\nc 'd'";
    sqlx::query(
        "INSERT INTO orders (reservation_id, sale_id, user_id, quantity, confirmed_at)
         VALUES (gen_random_uuid(), $1, $2, 2, now())",
    )
    .bind(sale)
    .bind(nasty)
    .execute(&app.pool)
    .await
    .expect("insert the nasty one");
    nasty.to_string()
}

type Row = (Uuid, String, String, i32, DateTime<Utc>);

async fn orders_table(app: &TestApp, sale: &str) -> Vec<Row> {
    sqlx::query_as(
        "SELECT reservation_id, sale_id, user_id, quantity, confirmed_at FROM orders
         WHERE sale_id = $1 ORDER BY confirmed_at, reservation_id",
    )
    .bind(sale)
    .fetch_all(&app.pool)
    .await
    .expect("orders")
}

async fn export(app: &TestApp, sale: &str, accept: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .get(app.url(&format!("/v1/sales/{sale}/orders")))
        .bearer_auth(ADMIN);
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    req.send().await.expect("export")
}

fn content_type(r: &reqwest::Response) -> Option<&str> {
    r.headers().get("content-type")?.to_str().ok()
}

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("RFC 3339").to_utc()
}

#[tokio::test]
async fn the_export_is_the_orders_table_as_csv_or_ndjson() {
    let app = spawn_app().await;
    let sale = app.sale(5, 1, 60).await;
    let nasty = insert_orders(&app, &sale, 3_000).await;
    let table = orders_table(&app, &sale).await;

    let r = export(&app, &sale, None).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(content_type(&r), Some("text/csv; charset=utf-8"));
    let text = r.text().await.expect("csv");
    assert!(text.starts_with("reservation_id,sale_id,user_id,quantity,confirmed_at\n"));
    assert!(
        text.contains("\"a,\"\"b\"\"\nc 'd'\""),
        "the nasty id is quoted"
    );
    let mut csv = csv::Reader::from_reader(text.as_bytes());
    let rows: Vec<Row> = csv
        .records()
        .map(|r| {
            let r = r.expect("a CSV record");
            (
                Uuid::parse_str(&r[0]).expect("uuid"),
                r[1].to_string(),
                r[2].to_string(),
                r[3].parse().expect("quantity"),
                time(&r[4]),
            )
        })
        .collect();
    assert_eq!(rows.len(), 3_001);
    assert_eq!(rows, table, "the CSV is the orders table");
    assert!(rows.iter().any(|r| r.2 == nasty));

    let r = export(&app, &sale, Some("application/x-ndjson")).await;
    assert_eq!(content_type(&r), Some("application/x-ndjson"));
    let text = r.text().await.expect("ndjson");
    let rows: Vec<Row> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("one JSON object a line");
            (
                Uuid::parse_str(v["reservation_id"].as_str().expect("id")).expect("uuid"),
                v["sale_id"].as_str().expect("sale").to_string(),
                v["user_id"].as_str().expect("user").to_string(),
                i32::try_from(v["quantity"].as_i64().expect("qty")).expect("i32"),
                time(v["confirmed_at"].as_str().expect("at")),
            )
        })
        .collect();
    assert_eq!(rows, table, "the NDJSON is the orders table");

    // An empty sale: the header row alone. Unknown: 404. Buyers: 401.
    let empty = app.sale(5, 1, 60).await;
    let text = export(&app, &empty, Some("text/csv"))
        .await
        .text()
        .await
        .expect("csv");
    assert_eq!(
        text,
        "reservation_id,sale_id,user_id,quantity,confirmed_at\n"
    );
    let (s, v) = body(export(&app, "no-such-sale", None).await).await;
    assert_eq!((s, error_code(&v)), (404, "sale_not_found"));
}

/// An encoder of 100 bytes an order: what the chunks hold does not matter
/// to the export's bounds.
struct Fixed(Vec<u8>);

impl ExportEncoder for Fixed {
    fn order(&mut self, _: &Order) -> std::io::Result<()> {
        self.0.extend_from_slice(&[b'x'; 100]);
        Ok(())
    }
    fn pending(&self) -> usize {
        self.0.len()
    }
    fn take(&mut self) -> std::io::Result<Vec<u8>> {
        Ok(std::mem::take(&mut self.0))
    }
}

#[tokio::test]
async fn two_exports_run_at_once_a_third_answers_503_until_one_ends() {
    let app = spawn_app().await;
    let sale = app.sale(5, 1, 60).await;
    // 5,001 orders: about 500 KB, far more than the two chunks an export
    // encodes ahead of a reader that takes nothing.
    insert_orders(&app, &sale, 5_000).await;
    let id = SaleId::parse(&sale).expect("sale id");
    let first = app
        .service
        .export(&id, Box::new(Fixed(Vec::new())))
        .await
        .expect("the first export starts");
    let mut second = app
        .service
        .export(&id, Box::new(Fixed(Vec::new())))
        .await
        .expect("the second export starts");
    // Both stay open, their readers taking nothing: a third is refused.
    let (s, v) = body(export(&app, &sale, None).await).await;
    assert_eq!((s, error_code(&v)), (503, "unavailable"), "{v}");

    // One reader leaves: its export ends at its next chunk and gives its
    // place back; the next export is served in full.
    drop(first);
    let mut served = None;
    for _ in 0..100 {
        let r = export(&app, &sale, None).await;
        if r.status().as_u16() == 200 {
            served = Some(r.text().await.expect("csv"));
            break;
        }
        assert_eq!(r.status().as_u16(), 503);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let text = served.expect("an export is served once one of the two ended");
    let records = csv::Reader::from_reader(text.as_bytes()).records().count();
    assert_eq!(records, 5_001, "every order");

    // The second, still open, reads on to the end: 100 bytes an order.
    let mut bytes = 0;
    while let Some(chunk) = second.recv().await {
        bytes += chunk.expect("a chunk").len();
    }
    assert_eq!(bytes, 100 * 5_001);
}
