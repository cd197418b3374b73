//! The operations of a history: each op sent to the service, and what
//! its answer tells the model (checked against the contract on the way).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::learned::Learned;
use super::{History, Op};
use crate::support::*;

pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(super) fn ms(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis())
}

/// Clock slack between the test and Redis' `TIME` (one host, one clock).
pub(super) const SLACK_MS: i64 = 50;

/// What the API told about one reservation.
#[derive(Debug, Default, Clone)]
pub(super) struct Told {
    pub(super) rid: String,
    pub(super) user: usize,
    pub(super) qty: i64,
    /// On a sale of items: its cart, sku -> units (`qty` is their sum).
    pub(super) lines: BTreeMap<String, i64>,
    /// When the 201 was received (the hold started before that).
    pub(super) reserved_by_ms: i64,
    /// The latest deadline the API gave (deadlines only move forward).
    pub(super) deadline_ms: i64,
    pub(super) confirmed: bool,
    pub(super) cancelled: bool,
    pub(super) expired: bool,
}

impl Told {
    pub(super) fn ended(&self) -> bool {
        self.confirmed || self.cancelled || self.expired
    }
}

/// One answer, with when it was sent and received.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Value,
    pub(super) sent_ms: i64,
    pub(super) recv_ms: i64,
}

/// Answers seen across all cases, by op and outcome (printed at the end,
/// to show what the histories exercised).
pub(super) static SEEN: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

pub(super) fn seen(what: &str, a: &Answer) {
    let outcome = match code(&a.body) {
        "" => a.status.to_string(),
        c => format!("{} {c}", a.status),
    };
    *SEEN
        .lock()
        .expect("lock")
        .entry(format!("{what} {outcome}"))
        .or_default() += 1;
}

pub(super) fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

pub(super) struct Case<'a> {
    pub(super) app: &'a TestApp,
    pub(super) h: &'a History,
    pub(super) sale: String,
    pub(super) users: Vec<String>,
    pub(super) resv: Vec<Told>,
    pub(super) stock: i64,
}

impl Case<'_> {
    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> Result<Answer, String> {
        let mut req = self
            .app
            .client
            .request(method, self.app.url(path))
            .bearer_auth(auth);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let sent_ms = now_ms();
        let r = req.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(|e| format!("{path}: {e}"))?;
        let recv_ms = now_ms();
        let body: Value = serde_json::from_str(&text)
            .map_err(|_| format!("{path}: {status} non-JSON body {text:?}"))?;
        if status >= 400 {
            ensure!(
                body["error"]["message"].is_string() && body["error"]["details"].is_object(),
                "{path}: {status} without the error shape: {body}"
            );
        }
        Ok(Answer {
            status,
            body,
            sent_ms,
            recv_ms,
        })
    }

    /// `GET` of reservation `r`, as its buyer.
    pub(super) async fn get_as_owner(&self, r: &Told) -> Result<Answer, String> {
        let path = format!("/v1/sales/{}/reservations/{}", self.sale, r.rid);
        let auth = self.actor(r.user, false);
        self.call(reqwest::Method::GET, &path, &auth, None).await
    }

    pub(super) fn actor(&self, user: usize, admin: bool) -> String {
        if admin {
            ADMIN.to_string()
        } else {
            token(&self.users[user])
        }
    }

    /// Runs one op; returns what the model learns from it.
    pub(super) async fn run(&self, op: &Op, known: usize) -> Result<Learned, String> {
        let sale = &self.sale;
        let target = |t: usize| (known > 0).then(|| &self.resv[t % known]);
        match op {
            Op::Wait => {
                let ms = u64::from(self.h.ttl_secs) * 1000 + 150;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Learned::Nothing)
            }
            Op::Reserve { user, qty, mask } => {
                let cart = if self.h.items {
                    self.h.cart(*qty, *mask)
                } else {
                    Vec::new()
                };
                let body = if self.h.items {
                    let lines: Vec<Value> = cart
                        .iter()
                        .map(|(s, q)| json!({"sku": s, "quantity": q}))
                        .collect();
                    json!({ "items": lines })
                } else {
                    json!({ "quantity": qty })
                };
                let a = self
                    .call(
                        reqwest::Method::POST,
                        &format!("/v1/sales/{sale}/reservations"),
                        &token(&self.users[*user]),
                        Some(body),
                    )
                    .await?;
                seen(
                    if self.h.items {
                        "reserve cart"
                    } else {
                        "reserve"
                    },
                    &a,
                );
                let total: i64 = if self.h.items {
                    cart.iter().map(|(_, q)| q).sum()
                } else {
                    i64::from(*qty)
                };
                let qty = &total;
                let over_cap = total > i64::from(self.h.cap);
                // A cart over the sale's cap is a user_limit_exceeded (409),
                // a quantity over it a 400.
                let over_cap_400 = over_cap && !self.h.items;
                match (a.status, code(&a.body)) {
                    (201, _) => {
                        ensure!(!over_cap, "reserve {qty} > cap {} granted", self.h.cap);
                        let b = &a.body;
                        ensure!(
                            b["status"] == "held"
                                && b["quantity"] == json!(qty)
                                && b["user_id"] == self.users[*user].as_str(),
                            "reserve 201 body: {b}"
                        );
                        if self.h.items {
                            let want: Vec<Value> = cart
                                .iter()
                                .map(|(s, q)| json!({"sku": s, "quantity": q}))
                                .collect();
                            ensure!(
                                b["items"] == json!(want),
                                "reserve 201 without its whole cart: {b}"
                            );
                        }
                        let deadline = ms(&b["expires_at"]).ok_or("no expires_at")?;
                        let ttl = i64::from(self.h.ttl_secs) * 1000;
                        ensure!(
                            deadline >= a.sent_ms + ttl - SLACK_MS
                                && deadline <= a.recv_ms + ttl + SLACK_MS,
                            "reserve: deadline {deadline} not sent+ttl ({}..{} + {ttl})",
                            a.sent_ms,
                            a.recv_ms
                        );
                        Ok(Learned::Reserved(Told {
                            rid: b["reservation_id"].as_str().ok_or("rid")?.to_string(),
                            user: *user,
                            qty: *qty,
                            lines: cart.iter().cloned().collect(),
                            reserved_by_ms: a.recv_ms,
                            deadline_ms: deadline,
                            ..Told::default()
                        }))
                    }
                    (400, "invalid_request") => {
                        ensure!(
                            over_cap_400,
                            "reserve {qty} (cap {}) refused: {}",
                            self.h.cap,
                            a.body
                        );
                        Ok(Learned::Nothing)
                    }
                    (409, "sold_out") => {
                        ensure!(!over_cap, "reserve over the cap: {}", a.body);
                        if self.h.items {
                            // Every short line named, each really short.
                            let short = a.body["error"]["details"]["shortfalls"]
                                .as_array()
                                .cloned()
                                .unwrap_or_default();
                            ensure!(!short.is_empty(), "sold_out without shortfalls: {}", a.body);
                            for s in &short {
                                let asked = cart.iter().find(|(sku, _)| s["sku"] == sku.as_str());
                                ensure!(
                                    asked.is_some_and(|(_, q)| s["requested"] == json!(q)
                                        && s["available"].as_i64().is_some_and(|n| n < *q)),
                                    "shortfall {s} not of the cart {cart:?}: {}",
                                    a.body
                                );
                            }
                            return Ok(Learned::Nothing);
                        }
                        let avail = a.body["error"]["details"]["available"].as_i64();
                        ensure!(
                            avail.is_some_and(|n| n < *qty),
                            "sold_out with enough available: {}",
                            a.body
                        );
                        Ok(Learned::Nothing)
                    }
                    (409, "user_limit_exceeded") => {
                        ensure!(!over_cap_400, "reserve over the cap: {}", a.body);
                        let d = &a.body["error"]["details"];
                        let (held, bought) = (d["held"].as_i64(), d["bought"].as_i64());
                        ensure!(
                            d["per_user_limit"] == json!(self.h.cap)
                                && held
                                    .zip(bought)
                                    .is_some_and(|(h, b)| { h + b + *qty > i64::from(self.h.cap) }),
                            "user_limit_exceeded within the cap: {}",
                            a.body
                        );
                        Ok(Learned::Nothing)
                    }
                    (s, c) => Err(format!("reserve: unexpected {s} {c}: {}", a.body)),
                }
            }
            Op::Confirm { target: t, admin } => {
                let Some(r) = target(*t) else {
                    return Ok(Learned::Nothing);
                };
                let path = format!("/v1/sales/{sale}/reservations/{}/confirm", r.rid);
                let auth = self.actor(r.user, *admin);
                // 503 = not yet durable in Postgres: the documented answer
                // is to retry, and the retry must end in 200.
                let mut tries = 0;
                let a = loop {
                    let a = self.call(reqwest::Method::POST, &path, &auth, None).await?;
                    tries += 1;
                    if a.status != 503 || tries == 10 {
                        break a;
                    }
                    ensure!(code(&a.body) == "unavailable", "confirm 503: {}", a.body);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                };
                self.transition("confirm", r, a, &[(409, "reservation_cancelled")])
            }
            Op::Cancel { target: t, admin } => {
                let Some(r) = target(*t) else {
                    return Ok(Learned::Nothing);
                };
                let path = format!("/v1/sales/{sale}/reservations/{}/cancel", r.rid);
                let a = self
                    .call(
                        reqwest::Method::POST,
                        &path,
                        &self.actor(r.user, *admin),
                        None,
                    )
                    .await?;
                self.transition("cancel", r, a, &[(409, "reservation_confirmed")])
            }
            Op::Extend { target: t, secs } => {
                let Some(r) = target(*t) else {
                    return Ok(Learned::Nothing);
                };
                let path = format!("/v1/sales/{sale}/reservations/{}/extend", r.rid);
                let body = secs.map(|s| json!({ "extend_secs": s }));
                let a = self
                    .call(
                        reqwest::Method::POST,
                        &path,
                        &token(&self.users[r.user]),
                        body,
                    )
                    .await?;
                if a.status == 200 {
                    let by = i64::from(secs.unwrap_or(self.h.ttl_secs)) * 1000;
                    let deadline = ms(&a.body["expires_at"]).ok_or("no expires_at")?;
                    let max = r.reserved_by_ms + i64::from(self.h.max_hold_secs) * 1000;
                    ensure!(
                        deadline <= a.recv_ms + by + SLACK_MS && deadline <= max + SLACK_MS,
                        "extend {}: deadline {deadline} past now+{by} ({}) or the max hold ({max})",
                        r.rid,
                        a.recv_ms
                    );
                }
                self.transition(
                    "extend",
                    r,
                    a,
                    &[
                        (409, "reservation_confirmed"),
                        (409, "reservation_cancelled"),
                        (409, "hold_limit_reached"),
                    ],
                )
            }
            Op::Get { target: t } => {
                let Some(r) = target(*t) else {
                    return Ok(Learned::Nothing);
                };
                let a = self.get_as_owner(r).await?;
                self.transition("get", r, a, &[])
            }
            Op::Restock { stock } => {
                let a = self
                    .call(
                        reqwest::Method::PUT,
                        &format!("/v1/sales/{sale}"),
                        ADMIN,
                        Some(self.h.config(*stock)),
                    )
                    .await?;
                seen("restock", &a);
                match (a.status, code(&a.body)) {
                    (200, _) if self.h.items => {
                        for item in a.body["items"].as_array().cloned().unwrap_or_default() {
                            let n = |f: &str| item[f].as_i64().unwrap_or(-1);
                            ensure!(
                                n("stock") == *stock && n("sold") + n("held") <= *stock,
                                "restock to {stock} accepted below an item's committed: {}",
                                a.body
                            );
                        }
                        ensure!(a.body["stock"] == json!(3 * stock), "restock: {}", a.body);
                        Ok(Learned::Restocked(*stock))
                    }
                    (200, _) => {
                        let (sold, held) = (a.body["sold"].as_i64(), a.body["held"].as_i64());
                        ensure!(
                            a.body["stock"] == json!(stock)
                                && sold.zip(held).is_some_and(|(s, h)| s + h <= *stock),
                            "restock to {stock} accepted below committed: {}",
                            a.body
                        );
                        Ok(Learned::Restocked(*stock))
                    }
                    (409, "stock_below_committed") if self.h.items => {
                        let below = a.body["error"]["details"]["items"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        ensure!(!below.is_empty(), "no item named: {}", a.body);
                        for i in &below {
                            let n = |f: &str| i[f].as_i64().unwrap_or(-1);
                            ensure!(
                                n("stock") == *stock && n("sold") + n("held") > *stock,
                                "restock to {stock} refused for an item not below: {}",
                                a.body
                            );
                        }
                        Ok(Learned::Nothing)
                    }
                    (409, "stock_below_committed") => {
                        let d = &a.body["error"]["details"];
                        ensure!(
                            d["sold"]
                                .as_i64()
                                .zip(d["held"].as_i64())
                                .is_some_and(|(s, h)| s + h > *stock),
                            "restock to {stock} refused though not below: {}",
                            a.body
                        );
                        Ok(Learned::Nothing)
                    }
                    (s, c) => Err(format!("restock: unexpected {s} {c}: {}", a.body)),
                }
            }
        }
    }
}
