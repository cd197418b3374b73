//! A buyer's reservation: reserve, the transitions of a hold (confirm,
//! cancel, extend), and lookup. Each is one script on the sale's keys.

use std::time::Duration;

use redis::AsyncCommands;
use uuid::Uuid;

use super::{ms, Gate, GateError, ScriptName};
use crate::domain::{Actor, Line, Record, RecordOutcome, ReserveOutcome, Shortfall};
use crate::ids::{IdempotencyKey, SaleId, UserId};

/// What happens to a held reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A sale: the units are sold.
    Confirm,
    /// Given back before its deadline.
    Cancel,
    /// Its deadline pushed out by `by` (None: the sale's hold ttl), up to
    /// the sale's maximum hold time counted from the reservation.
    Extend { by: Option<Duration> },
}

impl Transition {
    fn script(self) -> ScriptName {
        match self {
            Self::Confirm => ScriptName::Confirm,
            Self::Cancel => ScriptName::Cancel,
            Self::Extend { .. } => ScriptName::Extend,
        }
    }
}

impl Gate {
    /// Holds `qty` units for `user` as reservation `rid` (made by the
    /// caller: the call may run twice, and the hold is made once), counted
    /// against the buyer's cap of active holds across sales (see
    /// `holds.rs`; over the cap: [`ReserveOutcome::ActiveHoldsFull`]). On a
    /// sale of several items, `cart` holds its lines (distinct skus,
    /// sorted; `qty` is their total), every one held or none; empty for a
    /// quantity of a one-item sale.
    pub async fn reserve(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        user: &UserId,
        qty: u32,
        cart: &[Line],
        idem: Option<&IdempotencyKey>,
    ) -> Result<ReserveOutcome, GateError> {
        let k = self.keys(sale);
        let idem_key = match idem {
            Some(key) => k.idempotency(user.as_str(), key.as_str()),
            None => k.sale(),
        };
        let cap = self.cap_in_script(&k, sale, user, rid);
        let mut inv = self.prepare(ScriptName::Reserve);
        inv.key(k.sale())
            .key(k.holds())
            .key(k.events())
            .key(k.reservation(rid))
            .key(k.hold(rid))
            .key(idem_key)
            .key(cap.key)
            .key(k.queue());
        inv.arg(k.base())
            .arg(rid.to_string())
            .arg(user.as_str())
            .arg(qty)
            .arg(self.opts.sweep_batch)
            .arg(if idem.is_some() { "1" } else { "0" })
            .arg(ms(self.opts.idempotency_ttl))
            .arg(ms(self.opts.record_ttl))
            .arg(cap.cap)
            .arg(cap.member);
        for l in cart {
            inv.arg(l.sku.as_str()).arg(l.quantity);
        }
        let r = self.invoke(ScriptName::Reserve, &inv).await?;
        let outcome = match r.tag()? {
            "ok" => ReserveOutcome::Held {
                rid: r.uuid(1)?,
                qty: r.u32(2)?,
                expires_ms: r.int(3)?,
            },
            // The hold this key made, as it is now.
            "replay" => {
                let status = r.status(3)?;
                ReserveOutcome::Replay {
                    status,
                    rid: r.uuid(1)?,
                    qty: r.u32(2)?,
                    expires_ms: r.int(4)?,
                    items: r.cart(5)?,
                }
            }
            "idem_mismatch" => ReserveOutcome::IdempotencyMismatch,
            "no_items" => ReserveOutcome::NoItems,
            "items_required" => ReserveOutcome::ItemsRequired,
            "unknown_sku" => ReserveOutcome::UnknownSku {
                sku: r.str(1)?.to_string(),
            },
            "item_limit" => ReserveOutcome::UserLimit {
                sku: Some(r.str(1)?.to_string()),
                limit: r.u32(2)?,
                held: r.u32(3)?,
                bought: r.u32(4)?,
            },
            "not_started" => ReserveOutcome::NotStarted {
                starts_ms: r.int(1)?,
            },
            "ended" => ReserveOutcome::Ended { ends_ms: r.int(1)? },
            "paused" => ReserveOutcome::Paused,
            "over_limit" => ReserveOutcome::OverLimit { limit: r.u32(1)? },
            "not_admitted" => ReserveOutcome::NotAdmitted {
                position: u64::try_from(r.int(1)?).ok().filter(|p| *p > 0),
                serving: u64::try_from(r.int(2)?).unwrap_or(0),
            },
            "admission_expired" => ReserveOutcome::AdmissionExpired {
                until_ms: r.int(1)?,
            },
            "user_limit" => ReserveOutcome::UserLimit {
                sku: None,
                limit: r.u32(1)?,
                held: r.u32(2)?,
                bought: r.u32(3)?,
            },
            "sold_out" => {
                let mut shortfalls = Vec::new();
                let mut i = 2;
                while i + 2 < r.len() {
                    shortfalls.push(Shortfall {
                        sku: r.str(i)?.to_string(),
                        requested: r.u32(i + 1)?,
                        available: r.int(i + 2)?,
                    });
                    i += 3;
                }
                ReserveOutcome::SoldOut {
                    available: r.int(1)?,
                    shortfalls,
                }
            }
            "busy" => ReserveOutcome::ActiveHoldsFull {
                earliest_ms: r.int(1)?,
            },
            _ => return Err(r.unexpected()),
        };
        self.count_granted(sale, user, outcome).await
    }

    /// Confirms, cancels or extends a held reservation on behalf of
    /// `actor` (a buyer may act only on its own: `Forbidden`). A hold that
    /// ends or moves is followed in its buyer's active-hold count.
    pub async fn transition(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        actor: Actor<'_>,
        t: Transition,
    ) -> Result<RecordOutcome, GateError> {
        let k = self.keys(sale);
        let mut inv = self.prepare(t.script());
        inv.key(k.sale())
            .key(k.holds())
            .key(k.events())
            .key(k.reservation(rid))
            .key(k.hold(rid));
        let acting = match actor {
            Actor::Admin => "",
            Actor::Buyer(u) => u.as_str(),
        };
        inv.arg(k.base()).arg(rid.to_string()).arg(acting);
        match t {
            Transition::Confirm => {
                inv.arg(ms(self.opts.record_ttl));
            }
            Transition::Cancel => {}
            Transition::Extend { by } => {
                inv.arg(by.map(|d| ms(d).to_string()).unwrap_or_default());
            }
        }
        let r = self.invoke(t.script(), &inv).await?;
        let outcome = match r.tag()? {
            "ok" => RecordOutcome::Done(r.record()?),
            "replay" => RecordOutcome::Replay(r.record()?),
            "conflict" => RecordOutcome::Conflict(r.record()?),
            "hold_limit" => RecordOutcome::HoldLimit(r.record()?),
            "not_found" => RecordOutcome::NotFound,
            "forbidden" => RecordOutcome::Forbidden,
            _ => return Err(r.unexpected()),
        };
        if let RecordOutcome::Done(rec) = &outcome {
            match t {
                Transition::Confirm | Transition::Cancel => self.hold_ended(sale, rid, rec).await,
                Transition::Extend { .. } => self.hold_extended(sale, rid, rec).await,
            }
        }
        Ok(outcome)
    }

    /// Drops a final reservation's record (Postgres has it: lookups fall
    /// back there).
    pub async fn drop_record(&self, sale: &SaleId, rid: &Uuid) -> Result<(), GateError> {
        let mut conn = self.conn.clone();
        let key = self.keys(sale).reservation(rid);
        let _: i64 = self.bounded(conn.unlink(key)).await?;
        Ok(())
    }

    /// Reads one reservation (no side effect). Ownership is the caller's check.
    pub async fn lookup(&self, sale: &SaleId, rid: &Uuid) -> Result<Option<Record>, GateError> {
        let k = self.keys(sale);
        let mut inv = self.prepare(ScriptName::Lookup);
        inv.key(k.sale())
            .key(k.reservation(rid))
            .arg(k.base())
            .arg(rid.to_string());
        let r = self.invoke(ScriptName::Lookup, &inv).await?;
        match r.tag()? {
            "ok" => Ok(Some(r.record()?)),
            "not_found" => Ok(None),
            _ => Err(r.unexpected()),
        }
    }
}
