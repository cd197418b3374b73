//! What an answer tells the model: the status it says a reservation has
//! (checked against what the op may answer), and the model's record of
//! what the API told, updated with it.

use super::operations::{code, ms, seen, Answer, Case, Told, SLACK_MS};

impl Case<'_> {
    /// Maps an answer about reservation `r` to what it says; `conflicts`
    /// are the op's allowed 409s besides 410 `reservation_expired`.
    pub(super) fn transition(
        &self,
        what: &str,
        r: &Told,
        a: Answer,
        conflicts: &[(u16, &str)],
    ) -> Result<Learned, String> {
        seen(what, &a);
        let rid = r.rid.clone();
        let c = code(&a.body).to_string();
        if a.status == 200 {
            ensure!(
                a.body["reservation_id"] == rid.as_str(),
                "{what}: {}",
                a.body
            );
            let status = a.body["status"].as_str().unwrap_or("").to_string();
            let want: &[&str] = match what {
                "confirm" => &["confirmed"],
                "cancel" => &["cancelled"],
                "extend" => &["held"],
                _ => &["held", "confirmed", "cancelled", "expired"],
            };
            ensure!(
                want.contains(&status.as_str()),
                "{what} {rid}: 200 status {status}"
            );
            let deadline = ms(&a.body["expires_at"]);
            if status == "expired" {
                // Never before its deadline.
                let d = deadline.unwrap_or(0).max(r.deadline_ms);
                ensure!(
                    d <= a.recv_ms + SLACK_MS,
                    "{what} {rid}: expired at {} before its deadline {d}",
                    a.recv_ms
                );
            }
            if status == "held" {
                ensure!(
                    deadline.is_some_and(|d| d > a.sent_ms - SLACK_MS),
                    "{what} {rid}: held past its deadline {deadline:?} at {}",
                    a.sent_ms
                );
            }
            return Ok(Learned::Status {
                rid,
                status,
                deadline: if what == "get" { None } else { deadline },
            });
        }
        if a.status == 410 && c == "reservation_expired" {
            ensure!(
                r.deadline_ms <= a.recv_ms + SLACK_MS,
                "{what} {rid}: 410 expired at {} before its deadline {}",
                a.recv_ms,
                r.deadline_ms
            );
            return Ok(Learned::Status {
                rid,
                status: "expired".into(),
                deadline: None,
            });
        }
        if conflicts.contains(&(a.status, c.as_str())) {
            let status = match c.as_str() {
                "reservation_confirmed" => "confirmed",
                "reservation_cancelled" => "cancelled",
                _ => "held", // hold_limit_reached: still held
            };
            return Ok(Learned::Status {
                rid,
                status: status.into(),
                deadline: None,
            });
        }
        Err(format!(
            "{what} {rid}: unexpected {} {c}: {}",
            a.status, a.body
        ))
    }

    pub(super) fn learn(&mut self, l: Learned) -> Result<(), String> {
        match l {
            Learned::Nothing => {}
            Learned::Reserved(t) => self.resv.push(t),
            Learned::Restocked(s) => self.stock = s,
            Learned::Status {
                rid,
                status,
                deadline,
            } => {
                let t = self
                    .resv
                    .iter_mut()
                    .find(|t| t.rid == rid)
                    .ok_or("unknown rid")?;
                if let Some(d) = deadline {
                    t.deadline_ms = t.deadline_ms.max(d);
                }
                match status.as_str() {
                    "confirmed" => t.confirmed = true,
                    "cancelled" => t.cancelled = true,
                    "expired" => t.expired = true,
                    _ => {}
                }
                let ends = [t.confirmed, t.cancelled, t.expired];
                ensure!(
                    ends.iter().filter(|e| **e).count() <= 1,
                    "{rid} was told two different ends: {t:?}"
                );
            }
        }
        Ok(())
    }
}

pub(super) enum Learned {
    Nothing,
    Reserved(Told),
    Restocked(i64),
    Status {
        rid: String,
        status: String,
        deadline: Option<i64>,
    },
}
