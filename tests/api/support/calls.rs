//! The calls tests make through a [`TestApp`]: the API as a buyer or the
//! admin, and a look at the app's Redis and readiness.

use std::time::Duration;

use serde_json::{json, Value};

use super::app::{redis_conn, token, unique_sale, TestApp, ADMIN};
use super::http::{body, timed};
use flashgate::gate::RedisConn;

/// (stock, sold, held, available) of a sale view.
pub fn counters(v: &Value) -> (i64, i64, i64, i64) {
    let n = |f: &str| v[f].as_i64().unwrap_or_else(|| panic!("{f} in {v}"));
    (n("stock"), n("sold"), n("held"), n("available"))
}

/// `POST .../reservations` for one unit by `user` (add an
/// `Idempotency-Key` with `.header(..)`).
pub fn reserve_req(app: &TestApp, sale: &str, user: &str) -> reqwest::RequestBuilder {
    app.client
        .post(app.url(&format!("/v1/sales/{sale}/reservations")))
        .bearer_auth(token(user))
        .json(&json!({"quantity": 1}))
}

/// `POST .../confirm` by the reservation's buyer.
pub fn confirm_req(app: &TestApp, sale: &str, rid: &str, user: &str) -> reqwest::RequestBuilder {
    app.client
        .post(app.url(&format!("/v1/sales/{sale}/reservations/{rid}/confirm")))
        .bearer_auth(token(user))
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// `host:port`, for tests that speak HTTP over a raw socket.
    /// GET `path`, without credentials: the raw answer.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

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

    /// `GET /v1/sales` as the admin.
    pub async fn list_sales(&self) -> (u16, Value) {
        body(
            self.client
                .get(self.url("/v1/sales"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("list"),
        )
        .await
    }

    /// `GET /v1/sales/{sale}`, asserting 200.
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

    /// The Redis key of `sale`'s event stream.
    pub fn events_key(&self, sale: &str) -> String {
        format!("{}:{{{sale}}}:events", self.prefix)
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

    /// Whether Redis still keeps the reservation's record.
    pub async fn record_exists(&self, sale: &str, rid: &str) -> bool {
        let mut conn = self.redis().await;
        let n: i64 = redis::cmd("EXISTS")
            .arg(format!("{}:{{{sale}}}:r:{rid}", self.prefix))
            .query_async(&mut conn)
            .await
            .expect("exists");
        n == 1
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

/// `POST .../reservations` of a cart (`[{"sku", "quantity"}, ...]`).
pub fn cart_req(app: &TestApp, sale: &str, user: &str, items: &Value) -> reqwest::RequestBuilder {
    app.client
        .post(app.url(&format!("/v1/sales/{sale}/reservations")))
        .bearer_auth(token(user))
        .json(&json!({ "items": items }))
}

/// One item of a sale view by sku: (stock, sold, held, available).
pub fn item_counters(v: &Value, sku: &str) -> (i64, i64, i64, i64) {
    let item = v["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["sku"] == sku))
        .unwrap_or_else(|| panic!("item {sku} in {v}"));
    counters(item)
}

impl TestApp {
    /// Creates a sale of several items (`[{"sku", "stock", ...}]`) and
    /// asserts 201.
    pub async fn items_sale(&self, items: Value, limit: u32, ttl_secs: u32) -> String {
        let id = unique_sale();
        let (s, v) = self
            .put_sale(
                &id,
                json!({ "items": items, "per_user_limit": limit, "hold_ttl_secs": ttl_secs }),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        id
    }

    /// Reserves a cart as `user`, with an optional `Idempotency-Key`.
    pub async fn reserve_cart(
        &self,
        sale: &str,
        user: &str,
        items: Value,
        idem: Option<&str>,
    ) -> (u16, Value) {
        let mut req = cart_req(self, sale, user, &items);
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        body(req.send().await.expect("reserve cart")).await
    }

    /// `user` holds `items` (201): the reservation as the reserve
    /// answered it.
    pub async fn hold_cart(&self, sale: &str, user: &str, items: Value) -> Value {
        let (s, v) = self.reserve_cart(sale, user, items, None).await;
        assert_eq!(s, 201, "{v}");
        v
    }

    /// `user` holds `items` (201) and confirms the hold (200): the
    /// reservation as the reserve answered it.
    pub async fn buy_cart(&self, sale: &str, user: &str, items: Value) -> Value {
        let v = self.hold_cart(sale, user, items).await;
        self.confirm(sale, &super::rid(&v), user).await;
        v
    }

    /// `user` holds `qty` units (201): the reservation's id.
    pub async fn hold(&self, sale: &str, user: &str, qty: u32) -> String {
        let (s, v) = self.reserve(sale, user, qty, None).await;
        assert_eq!(s, 201, "reserve by {user}: {v}");
        super::rid(&v)
    }

    /// `user` confirms their reservation `rid` (200).
    pub async fn confirm(&self, sale: &str, rid: &str, user: &str) {
        let (s, v) = self.act(sale, rid, "confirm", Some(user)).await;
        assert_eq!(s, 200, "confirm {rid} by {user}: {v}");
    }

    /// `user` holds `qty` units (201) and confirms them (200): the
    /// reservation's id.
    pub async fn buy(&self, sale: &str, user: &str, qty: u32) -> String {
        let rid = self.hold(sale, user, qty).await;
        self.confirm(sale, &rid, user).await;
        rid
    }

    /// `GET /metrics`: the text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}
