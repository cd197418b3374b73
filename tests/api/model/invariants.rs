//! The invariants: after every group of ops and at the end of a history,
//! what the API told against the sale view, the reservations and Postgres.

use std::collections::{BTreeMap, BTreeSet};

use super::operations::{now_ms, Case, Told, SLACK_MS};
use crate::support::*;

/// A view's (or an item's) stock, sold, held and available, every unit
/// accounted for.
fn units(v: &serde_json::Value) -> Result<(i64, i64, i64, i64), String> {
    let n = |f: &str| v[f].as_i64().ok_or(format!("no {f}"));
    let (stock, sold, held, available) = (n("stock")?, n("sold")?, n("held")?, n("available")?);
    ensure!(
        stock == sold + held + available && available >= 0 && sold + held <= stock,
        "units unaccounted for"
    );
    Ok((stock, sold, held, available))
}

impl Case<'_> {
    /// The sale view's body, as the admin reads it.
    async fn sale_body(&self) -> Result<serde_json::Value, String> {
        let a = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/sales/{}", self.sale),
                ADMIN,
                None,
            )
            .await?;
        ensure!(a.status == 200, "view: {} {}", a.status, a.body);
        Ok(a.body)
    }

    pub(super) async fn view(&self) -> Result<(i64, i64, i64, i64), String> {
        let body = self.sale_body().await?;
        units(&body).map_err(|e| format!("{e}: {body}"))
    }

    /// A sale of items: each item's (stock, sold, held, available), every
    /// unit accounted for, and the sale's counters their sums.
    pub(super) async fn item_view(&self) -> Result<BTreeMap<String, (i64, i64, i64, i64)>, String> {
        let body = self.sale_body().await?;
        let mut out = BTreeMap::new();
        let mut sums = [0i64; 4];
        for item in body["items"].as_array().cloned().unwrap_or_default() {
            let c = units(&item).map_err(|e| format!("item {e}: {body}"))?;
            for (s, v) in sums.iter_mut().zip([c.0, c.1, c.2, c.3]) {
                *s += v;
            }
            out.insert(item["sku"].as_str().unwrap_or_default().to_string(), c);
        }
        ensure!(out.len() == 3, "three items: {body}");
        let n = |f: &str| body[f].as_i64().unwrap_or(-1);
        ensure!(
            [n("stock"), n("sold"), n("held"), n("available")] == sums,
            "the sale's counters are not its items' sums: {body}"
        );
        Ok(out)
    }

    /// The units of `sku` in the reservations `keep` keeps.
    fn lines_of(&self, sku: &str, keep: impl Fn(usize, &Told) -> bool) -> i64 {
        self.resv
            .iter()
            .enumerate()
            .filter(|(i, t)| keep(*i, t))
            .map(|(_, t)| t.lines.get(sku).copied().unwrap_or(0))
            .sum()
    }

    /// After a group: the view against what the API told.
    pub(super) async fn check_group(&self, restocks: &BTreeSet<i64>) -> Result<(), String> {
        let (stock, sold, held, _) = self.view().await?;
        let now = now_ms();
        let live = |t: &Told| !t.ended() && t.deadline_ms > now + SLACK_MS;
        if self.h.items {
            for (sku, (st, isold, iheld, _)) in self.item_view().await? {
                ensure!(
                    restocks.contains(&st) || (restocks.is_empty() && st == self.stock),
                    "item {sku} stock {st}, last set to {} ({restocks:?})",
                    self.stock
                );
                let confirmed = self.lines_of(&sku, |_, t| t.confirmed);
                ensure!(
                    isold == confirmed,
                    "item {sku} sold {isold}, but confirmed lines add up to {confirmed}"
                );
                let live_held = self.lines_of(&sku, |_, t| live(t));
                ensure!(
                    iheld >= live_held,
                    "item {sku} held {iheld}, but the API told of {live_held} live held units"
                );
            }
            // The sale's stock is the sum of its items'.
            return self.check_sums(stock / 3, sold, held, restocks, now);
        }
        self.check_sums(stock, sold, held, restocks, now)
    }

    fn check_sums(
        &self,
        stock: i64,
        sold: i64,
        held: i64,
        restocks: &BTreeSet<i64>,
        now: i64,
    ) -> Result<(), String> {
        if restocks.is_empty() {
            ensure!(
                stock == self.stock,
                "stock {stock}, last set to {}",
                self.stock
            );
        } else {
            ensure!(
                restocks.contains(&stock),
                "stock {stock}, none of {restocks:?}"
            );
        }
        let confirmed: i64 = self
            .resv
            .iter()
            .filter(|t| t.confirmed)
            .map(|t| t.qty)
            .sum();
        ensure!(
            sold == confirmed,
            "sold {sold}, but confirms answered 200 add up to {confirmed}"
        );
        let live = |t: &&Told| !t.ended() && t.deadline_ms > now + SLACK_MS;
        let live_held: i64 = self.resv.iter().filter(live).map(|t| t.qty).sum();
        ensure!(
            held >= live_held,
            "held {held}, but the API told of {live_held} live held units"
        );
        for (u, name) in self.users.iter().enumerate() {
            let mine = |t: &&Told| t.user == u;
            let bought: i64 = self
                .resv
                .iter()
                .filter(mine)
                .filter(|t| t.confirmed)
                .map(|t| t.qty)
                .sum();
            let holding: i64 = self
                .resv
                .iter()
                .filter(mine)
                .filter(live)
                .map(|t| t.qty)
                .sum();
            ensure!(
                bought + holding <= i64::from(self.h.cap),
                "{name}: bought {bought} + live holds {holding} > cap {}",
                self.h.cap
            );
        }
        Ok(())
    }

    /// Final statuses (GET), consistent with what was told and with the view.
    pub(super) async fn check_end(&mut self) -> Result<(), String> {
        for _attempt in 0..4 {
            let first = self.statuses().await?;
            let (_, sold, held, _) = self.view().await?;
            let second = self.statuses().await?;
            if first != second {
                continue; // a hold lapsed in between: look again
            }
            let sum = |s: &str| -> i64 {
                self.resv
                    .iter()
                    .zip(&first)
                    .filter(|(_, st)| st.as_str() == s)
                    .map(|(t, _)| t.qty)
                    .sum()
            };
            ensure!(
                (sold, held) == (sum("confirmed"), sum("held")),
                "view sold {sold} held {held}, reservations say {} / {}: {first:?}",
                sum("confirmed"),
                sum("held")
            );
            if self.h.items {
                for (sku, (_, isold, iheld, _)) in self.item_view().await? {
                    let by = |s: &str| self.lines_of(&sku, |i, _| first[i] == s);
                    ensure!(
                        (isold, iheld) == (by("confirmed"), by("held")),
                        "item {sku} sold {isold} held {iheld}, reservations say {} / {}: {first:?}",
                        by("confirmed"),
                        by("held")
                    );
                }
            }
            for u in 0..self.users.len() {
                let mine: i64 = self
                    .resv
                    .iter()
                    .zip(&first)
                    .filter(|(t, st)| t.user == u && (*st == "held" || *st == "confirmed"))
                    .map(|(t, _)| t.qty)
                    .sum();
                ensure!(
                    mine <= i64::from(self.h.cap),
                    "{}: {mine} units > cap",
                    self.users[u]
                );
            }
            return Ok(());
        }
        Err("statuses kept changing between two reads".into())
    }

    pub(super) async fn statuses(&mut self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for i in 0..self.resv.len() {
            let r = self.resv[i].clone();
            let a = self.get_as_owner(&r).await?;
            ensure!(
                a.status == 200,
                "final GET {}: {} {}",
                r.rid,
                a.status,
                a.body
            );
            let status = a.body["status"].as_str().unwrap_or("").to_string();
            let legal = match (r.confirmed, r.cancelled, r.expired) {
                (true, _, _) => status == "confirmed",
                (_, true, _) => status == "cancelled",
                (_, _, true) => status == "expired",
                _ => status == "held" || status == "expired",
            };
            ensure!(legal, "{} ends {status}, but the API told {r:?}", r.rid);
            let l = self.transition("get", &r, a, &[])?;
            self.learn(l)?;
            out.push(status);
        }
        Ok(out)
    }

    /// Postgres after the write-behind drained.
    pub(super) async fn check_postgres(&self) -> Result<(), String> {
        let pool = &self.app.pool;
        let orders: Vec<(String, String, i32)> = sqlx::query_as(
            "SELECT reservation_id::text, user_id, quantity FROM orders WHERE sale_id = $1",
        )
        .bind(&self.sale)
        .fetch_all(pool)
        .await
        .map_err(|e| e.to_string())?;
        let got: BTreeMap<String, (String, i64)> = orders
            .iter()
            .map(|(r, u, q)| (r.clone(), (u.clone(), i64::from(*q))))
            .collect();
        ensure!(
            got.len() == orders.len(),
            "duplicate order rows: {orders:?}"
        );
        let want: BTreeMap<String, (String, i64)> = self
            .resv
            .iter()
            .filter(|t| t.confirmed)
            .map(|t| (t.rid.clone(), (self.users[t.user].clone(), t.qty)))
            .collect();
        ensure!(
            got == want,
            "orders {got:?}, confirms answered 200 {want:?}"
        );
        let purchases: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i32)>(
            "SELECT user_id, quantity FROM user_purchases WHERE sale_id = $1 AND quantity <> 0",
        )
        .bind(&self.sale)
        .fetch_all(pool)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(u, q)| (u, i64::from(q)))
        .collect();
        let mut sums = BTreeMap::new();
        for (u, q) in want.values() {
            *sums.entry(u.clone()).or_insert(0) += q;
        }
        ensure!(
            purchases == sums,
            "user_purchases {purchases:?}, want {sums:?}"
        );
        let (sold,): (i64,) = sqlx::query_as("SELECT sold_count FROM sales WHERE sale_id = $1")
            .bind(&self.sale)
            .fetch_one(pool)
            .await
            .map_err(|e| e.to_string())?;
        ensure!(
            sold == sums.values().sum::<i64>(),
            "sales.sold_count {sold}, orders add up to {}",
            sums.values().sum::<i64>()
        );
        let lines: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT oi.sku, sum(oi.quantity)::int8 FROM order_items oi JOIN orders o USING (reservation_id) WHERE o.sale_id = $1 GROUP BY oi.sku",
        )
        .bind(&self.sale)
        .fetch_all(pool)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
        let mut want_lines: BTreeMap<String, i64> = BTreeMap::new();
        for t in self.resv.iter().filter(|t| t.confirmed) {
            for (sku, q) in &t.lines {
                *want_lines.entry(sku.clone()).or_default() += q;
            }
        }
        ensure!(
            lines == want_lines,
            "order_items {lines:?}, confirmed lines {want_lines:?}"
        );
        Ok(())
    }
}
