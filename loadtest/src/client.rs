//! HTTP side: buyer tokens, the admin and buyer calls of flashgate's v1 API,
//! and the "release every request at one instant" engine.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Barrier, Semaphore};

/// Mints HS256 buyer tokens (`sub` = user id, `exp` = now + 1 h).
#[derive(Clone)]
pub struct TokenMinter {
    key: EncodingKey,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: i64,
    iat: i64,
}

impl TokenMinter {
    pub fn new(secret: &str) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    pub fn mint(&self, user_id: &str) -> Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            exp: now + 3600,
            iat: now,
        };
        encode(&Header::default(), &claims, &self.key).context("signing a buyer token")
    }
}

/// `lt-<8 hex>`: a fresh id for a sale or a run.
pub fn short_id(prefix: &str) -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &u[..8])
}

/// A client whose pool keeps `idle` keep-alive connections to the server.
pub fn build_client(idle: usize, timeout: Duration) -> Result<Client> {
    Client::builder()
        .pool_max_idle_per_host(idle)
        .pool_idle_timeout(Duration::from_secs(300))
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        // A load test talks to its target directly, never through a proxy
        // picked up from the environment.
        .no_proxy()
        .build()
        .context("building the HTTP client")
}

/// The sale as `GET /v1/sales/{id}` shows it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct SaleView {
    pub sale_id: String,
    pub stock: i64,
    pub sold: i64,
    pub held: i64,
    pub available: i64,
    pub per_user_limit: i64,
    pub hold_ttl_secs: i64,
    #[serde(default)]
    pub state: String,
    /// A sale of several items: each one's units (empty for one item).
    #[serde(default)]
    pub items: Vec<ItemView>,
}

/// One item of a sale view: its sku and units.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ItemView {
    pub sku: String,
    #[serde(flatten)]
    pub units: Units,
}

/// An item's units as the view counts them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Units {
    pub stock: i64,
    pub sold: i64,
    pub held: i64,
    pub available: i64,
}

impl Units {
    /// Units as flashgate shows them: `available = stock - sold - held`.
    pub fn live(stock: i64, sold: i64, held: i64) -> Self {
        Self {
            stock,
            sold,
            held,
            available: stock - sold - held,
        }
    }

    /// Within the stock (sold + held <= stock), and the available count is
    /// what is left.
    pub fn consistent(&self) -> bool {
        self.sold + self.held <= self.stock && *self == Self::live(self.stock, self.sold, self.held)
    }
}

#[cfg(test)]
impl SaleView {
    /// A live sale as flashgate shows it: `available = stock - sold - held`.
    pub fn live(stock: i64, sold: i64, held: i64, per_user_limit: i64) -> Self {
        Self {
            sale_id: "s".into(),
            stock,
            sold,
            held,
            available: stock - sold - held,
            per_user_limit,
            hold_ttl_secs: 30,
            state: "live".into(),
            items: Vec::new(),
        }
    }
}

/// The body of a successful reserve (201) or an idempotent replay (200).
#[derive(Debug, Clone, Deserialize)]
pub struct Reservation {
    pub reservation_id: String,
    pub user_id: String,
    pub quantity: i64,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub expires_at: String,
}

/// One answered (or failed) request, as the reports count it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status, or `None` for a transport error (connect, timeout, ...).
    pub status: Option<u16>,
    /// `error.code` of an error body, or the transport error kind.
    pub code: Option<String>,
    pub latency: Duration,
    pub body: Option<Value>,
}

impl Answer {
    /// The outcome key used in reports: `201`, `409:sold_out`, `error:timeout`.
    pub fn key(&self) -> String {
        outcome_key(self.status, self.code.as_deref())
    }

    pub fn is(&self, status: u16) -> bool {
        self.status == Some(status)
    }

    pub fn reservation(&self) -> Option<Reservation> {
        self.body
            .as_ref()
            .and_then(|b| serde_json::from_value(b.clone()).ok())
    }
}

pub fn outcome_key(status: Option<u16>, code: Option<&str>) -> String {
    match (status, code) {
        (Some(s), Some(c)) => format!("{s}:{c}"),
        (Some(s), None) => s.to_string(),
        (None, Some(c)) => format!("error:{c}"),
        (None, None) => "error".into(),
    }
}

fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else if e.is_request() {
        "request"
    } else {
        "transport"
    }
}

/// Sends one request, timing it from just before the send to the last byte of
/// the body. Never fails: a transport error becomes an [`Answer`] too.
pub async fn timed(req: reqwest::RequestBuilder) -> Answer {
    let start = Instant::now();
    let result = async {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, bytes))
    }
    .await;
    let latency = start.elapsed();
    match result {
        Ok((status, bytes)) => answer_from(status, &bytes, latency),
        Err(e) => transport_answer(transport_kind(&e), e.to_string(), latency),
    }
}

/// The answer to a request that got an HTTP response.
pub fn answer_from(status: u16, bytes: &[u8], latency: Duration) -> Answer {
    let body: Option<Value> = serde_json::from_slice(bytes).ok();
    let code = if status >= 300 {
        Some(
            body.as_ref()
                .and_then(|b| b.pointer("/error/code"))
                .and_then(Value::as_str)
                .unwrap_or("unparsed")
                .to_string(),
        )
    } else {
        None
    };
    Answer {
        status: Some(status),
        code,
        latency,
        body,
    }
}

/// The answer to a request that failed below HTTP (`kind`: timeout, connect, ...).
pub fn transport_answer(kind: &str, message: String, latency: Duration) -> Answer {
    Answer {
        status: None,
        code: Some(kind.to_string()),
        latency,
        body: Some(Value::String(message)),
    }
}

/// flashgate's v1 API as the load test uses it.
#[derive(Clone)]
pub struct Api {
    base: String,
    admin_token: Option<String>,
    admin: Client,
}

impl Api {
    pub fn new(base: &str, admin_token: Option<String>, timeout: Duration) -> Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--url must start with http:// (got {base})");
        }
        Ok(Self {
            base,
            admin_token: admin_token.filter(|t| !t.is_empty()),
            admin: build_client(4, timeout)?,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn admin_token(&self) -> Result<&str> {
        self.admin_token.as_deref().ok_or_else(|| {
            anyhow!("an admin token is needed (--admin-token or FLASHGATE_ADMIN_TOKEN)")
        })
    }

    pub fn healthz_url(&self) -> String {
        format!("{}/healthz", self.base)
    }

    pub fn sale_url(&self, sale: &str) -> String {
        format!("{}/v1/sales/{sale}", self.base)
    }

    pub fn reserve_url(&self, sale: &str) -> String {
        format!("{}/v1/sales/{sale}/reservations", self.base)
    }

    pub fn action_url(&self, sale: &str, rid: &str, action: &str) -> String {
        format!("{}/v1/sales/{sale}/reservations/{rid}/{action}", self.base)
    }

    /// Fails early with a clear message when nothing answers at `--url`.
    pub async fn check_reachable(&self) -> Result<()> {
        let resp = self
            .admin
            .get(self.healthz_url())
            .send()
            .await
            .with_context(|| format!("flashgate is not reachable at {}", self.base))?;
        if !resp.status().is_success() {
            bail!("GET {} answered {}", self.healthz_url(), resp.status());
        }
        Ok(())
    }

    /// Whether the instance's write-behind has nothing left to write
    /// (`/readyz`: backlog and pending 0; true when it runs no worker).
    pub async fn write_behind_idle(&self) -> Result<bool> {
        let url = format!("{}/readyz", self.base);
        let body: serde_json::Value = self.admin.get(&url).send().await?.json().await?;
        let w = &body["write_behind"];
        Ok(w.is_null() || (w["backlog"].as_u64() == Some(0) && w["pending"].as_u64() == Some(0)))
    }

    /// `PUT /v1/sales/{id}`: creates or reconfigures the sale.
    pub async fn configure_sale(
        &self,
        sale: &str,
        stock: i64,
        per_user_limit: u32,
        hold_ttl_secs: u32,
    ) -> Result<SaleView> {
        let body = serde_json::json!({
            "stock": stock,
            "per_user_limit": per_user_limit,
            "hold_ttl_secs": hold_ttl_secs,
        });
        self.put_sale(sale, &body).await
    }

    /// `PUT /v1/sales/{id}` with `body` (201 or 200 expected).
    pub async fn put_sale(&self, sale: &str, body: &serde_json::Value) -> Result<SaleView> {
        let resp = self
            .admin
            .put(self.sale_url(sale))
            .bearer_auth(self.admin_token()?)
            .json(body)
            .send()
            .await
            .with_context(|| format!("PUT {}", self.sale_url(sale)))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the PUT answer")?;
        if status != StatusCode::CREATED && status != StatusCode::OK {
            bail!("configuring sale {sale} failed: {status} {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("parsing the sale view: {text}"))
    }

    /// `GET /v1/sales/{id}`; `None` when the sale does not exist (404).
    pub async fn get_sale(&self, sale: &str) -> Result<Option<SaleView>> {
        let mut req = self.admin.get(self.sale_url(sale));
        if let Some(t) = &self.admin_token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("GET {}", self.sale_url(sale)))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the sale view")?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("GET sale {sale} failed: {status} {text}");
        }
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("parsing the sale view: {text}"))
    }

    pub async fn require_sale(&self, sale: &str) -> Result<SaleView> {
        self.get_sale(sale)
            .await?
            .ok_or_else(|| anyhow!("sale {sale} vanished (404)"))
    }

    /// `POST /v1/sales/{id}/reservations` with a buyer token.
    pub fn reserve(
        &self,
        client: &Client,
        sale: &str,
        token: &str,
        quantity: u32,
        idempotency_key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut req = client
            .post(self.reserve_url(sale))
            .bearer_auth(token)
            .json(&serde_json::json!({ "quantity": quantity }));
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        req
    }

    /// `POST /v1/sales/{id}/queue`: the buyer joins the sale's queue.
    pub fn join_queue(&self, client: &Client, sale: &str, token: &str) -> reqwest::RequestBuilder {
        client
            .post(format!("{}/v1/sales/{sale}/queue", self.base))
            .bearer_auth(token)
    }

    /// `POST .../reservations/{rid}/{confirm|cancel}` with the owner's token.
    pub fn action(
        &self,
        client: &Client,
        sale: &str,
        rid: &str,
        action: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        client
            .post(self.action_url(sale, rid, action))
            .bearer_auth(token)
    }
}

/// Opens `n` keep-alive connections on `client` by sending `n` concurrent
/// `GET /healthz` (the pool keeps them when `pool_max_idle_per_host >= n`).
pub async fn warm_up(client: &Client, url: &str, n: usize) -> Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let req = client.get(url);
        set.spawn(async move { req.send().await?.bytes().await });
    }
    while let Some(r) = set.join_next().await {
        r.context("warm-up task")?.context("warm-up GET /healthz")?;
    }
    Ok(())
}

/// What one released job produced, with its own send/answer instants.
pub struct Fired<T> {
    pub start: Instant,
    pub end: Instant,
    pub value: T,
}

/// Spawns every job, lets each run its `prepare` step (e.g. opening its
/// connection) with at most `prepare_parallelism` at a time, waits until all are
/// ready, then releases all of them at one instant. Returns the release instant
/// and the results in job order.
pub async fn release_together<P, PF, J, JF, S, T>(
    jobs: Vec<(P, J)>,
    prepare_parallelism: usize,
) -> Result<(Instant, Vec<Fired<T>>)>
where
    P: FnOnce() -> PF + Send + 'static,
    PF: Future<Output = Result<S>> + Send,
    J: FnOnce(S) -> JF + Send + 'static,
    JF: Future<Output = T> + Send,
    S: Send + 'static,
    T: Send + 'static,
{
    let n = jobs.len();
    let barrier = Arc::new(Barrier::new(n + 1));
    let gate = Arc::new(Semaphore::new(prepare_parallelism.max(1)));
    let mut handles = Vec::with_capacity(n);
    for (prepare, job) in jobs {
        let barrier = barrier.clone();
        let gate = gate.clone();
        handles.push(tokio::spawn(async move {
            let prepared = {
                let _permit = gate.acquire().await;
                prepare().await
            };
            // Every job reaches the barrier, even a failed one, or the rest hang.
            barrier.wait().await;
            let state = prepared?;
            let start = Instant::now();
            let value = job(state).await;
            Ok::<_, anyhow::Error>(Fired {
                start,
                end: Instant::now(),
                value,
            })
        }));
    }
    barrier.wait().await;
    let released = Instant::now();
    let mut out = Vec::with_capacity(n);
    let mut first_err = None;
    for h in handles {
        match h.await.context("a load task panicked")? {
            Ok(f) => out.push(f),
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e.context("preparing a request (connection warm-up) failed"));
    }
    Ok((released, out))
}

/// An instant of this process as Unix time in milliseconds (0 if the clock
/// reads before 1970).
pub fn unix_ms(at: Instant) -> u64 {
    SystemTime::now()
        .checked_sub(at.elapsed())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Wall time from the first send to the last answer.
pub fn wall_time<T>(fired: &[Fired<T>]) -> Duration {
    let first = fired.iter().map(|f| f.start).min();
    let last = fired.iter().map(|f| f.end).max();
    match (first, last) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    #[test]
    fn tokens_verify_with_the_secret() {
        let minter = TokenMinter::new("s3cret-s3cret-s3cret-s3cret-s3cret");
        let token = minter.mint("lt-x-1").expect("mint");
        #[derive(Deserialize)]
        struct C {
            sub: String,
            exp: i64,
        }
        let data = decode::<C>(
            &token,
            &DecodingKey::from_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret"),
            &Validation::new(Algorithm::HS256),
        )
        .expect("valid token");
        assert_eq!(data.claims.sub, "lt-x-1");
        assert!(data.claims.exp > chrono::Utc::now().timestamp() + 3500);
        assert!(decode::<C>(
            &token,
            &DecodingKey::from_secret(b"other"),
            &Validation::new(Algorithm::HS256)
        )
        .is_err());
    }

    #[test]
    fn ids_and_keys() {
        let id = short_id("lt");
        assert_eq!(id.len(), 11);
        assert!(id.starts_with("lt-"));
        assert_ne!(short_id("lt"), short_id("lt"));
        assert_eq!(outcome_key(Some(201), None), "201");
        assert_eq!(outcome_key(Some(409), Some("sold_out")), "409:sold_out");
        assert_eq!(outcome_key(None, Some("timeout")), "error:timeout");
    }

    #[tokio::test]
    async fn release_together_runs_every_job_after_all_are_ready() {
        let jobs: Vec<_> = (0..20u64)
            .map(|i| {
                (
                    move || async move {
                        tokio::time::sleep(Duration::from_millis(i)).await;
                        Ok::<_, anyhow::Error>(i)
                    },
                    move |s: u64| async move { s * 2 },
                )
            })
            .collect();
        let (_released, fired) = release_together(jobs, 4).await.expect("runs");
        assert_eq!(fired.len(), 20);
        for (i, f) in fired.iter().enumerate() {
            assert_eq!(f.value, i as u64 * 2);
            assert!(f.end >= f.start);
        }
        // Every job waited for the slowest preparation (19 ms) before sending.
        let first = fired.iter().map(|f| f.start).min().expect("some");
        let last = fired.iter().map(|f| f.start).max().expect("some");
        assert!(last.duration_since(first) < Duration::from_millis(15));
    }

    #[test]
    fn unix_ms_places_an_instant_on_the_wall_clock() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis();
        let at = Instant::now() - Duration::from_millis(1500);
        let ms = u128::from(unix_ms(at));
        // 1.5 s before the call, give or take the time the test takes.
        assert!(
            ms + 1550 >= before && ms + 1500 <= before + 1000,
            "{ms} vs {before}"
        );
    }

    #[tokio::test]
    async fn release_together_reports_a_failed_preparation() {
        let jobs: Vec<_> = (0..3u64)
            .map(|i| {
                (
                    move || async move {
                        if i == 1 {
                            anyhow::bail!("no connection")
                        }
                        Ok(i)
                    },
                    |s: u64| async move { s },
                )
            })
            .collect();
        assert!(release_together(jobs, 2).await.is_err());
    }
}
