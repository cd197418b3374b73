//! The buyer's cap of simultaneous active holds across all sales
//! (anti-scalping), all in one place. The count is a sorted set under the
//! buyer's own hash tag, `<prefix>:{u:<user>}:active`, member
//! `<sale>|<rid>`, score the hold's deadline (see `lua/lib.lua`):
//! - one Redis: `reserve.lua` counts a new hold itself, before its first
//!   write, so a hold over the cap is never granted;
//! - Redis Cluster: the set is in another slot than the sale's keys, so
//!   `admit.lua` counts a granted hold right after; over the cap it is
//!   given back (429), and when it cannot be counted (the buyer's node is
//!   away) it is given back too (503): fail closed;
//! - a hold that ends (confirmed, cancelled) stops counting, best effort
//!   (it would anyway at its deadline); an extended hold's deadline moves.

use uuid::Uuid;

use super::reply::Reply;
use super::{keys, Gate, GateError, SaleKeys, ScriptName, Transition};
use crate::domain::{Actor, Record, ReserveOutcome, Status};
use crate::ids::{SaleId, UserId};
use crate::telemetry::chain;

/// What `admit.lua` does with a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AdmitMode {
    /// Count it, unless the buyer is at the cap (then: refused).
    Add,
    /// Move its deadline (it is counted already).
    Refresh,
}

impl AdmitMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Refresh => "refresh",
        }
    }
}

/// The cap's part of a `reserve.lua` call: KEYS[7] and ARGV[9..10].
pub(super) struct InScript {
    pub cap: u32,
    pub key: String,
    pub member: String,
}

impl Gate {
    fn cap(&self) -> u32 {
        self.opts.active_cap
    }

    /// The cap for `reserve.lua`: on one Redis the buyer's set and the
    /// hold's member, so the script counts the hold itself; with no cap,
    /// or on Redis Cluster (another slot), cap 0 and a key of the sale.
    pub(super) fn cap_in_script(
        &self,
        k: &SaleKeys,
        sale: &SaleId,
        user: &UserId,
        rid: &Uuid,
    ) -> InScript {
        if self.cap() == 0 || self.is_cluster() {
            return InScript {
                cap: 0,
                key: k.sale(),
                member: String::new(),
            };
        }
        InScript {
            cap: self.cap(),
            key: keys::user_holds(&self.opts.prefix, user.as_str()),
            member: keys::user_hold_member(sale.as_str(), rid),
        }
    }

    /// Redis Cluster: counts a hold `reserve.lua` just granted (or
    /// replayed: counting a counted hold only re-dates it) against the
    /// buyer's cap. Over the cap the hold is given back; when it cannot be
    /// counted it is given back and the error returned (fail closed).
    pub(super) async fn count_granted(
        &self,
        sale: &SaleId,
        user: &UserId,
        outcome: ReserveOutcome,
    ) -> Result<ReserveOutcome, GateError> {
        let (rid, expires_ms) = match &outcome {
            ReserveOutcome::Held {
                rid, expires_ms, ..
            }
            | ReserveOutcome::Replay {
                rid,
                status: Status::Held,
                expires_ms,
                ..
            } if self.cap() > 0 && self.is_cluster() => (*rid, *expires_ms),
            _ => return Ok(outcome),
        };
        match self
            .admit(user.as_str(), sale, &rid, expires_ms, AdmitMode::Add)
            .await
        {
            Ok(None) => Ok(outcome),
            Ok(Some(earliest_ms)) => {
                // Refused, so never counted: the hold goes (its buyer's
                // set has nothing to forget).
                self.transition(sale, &rid, Actor::Admin, Transition::Cancel)
                    .await?;
                Ok(ReserveOutcome::ActiveHoldsFull { earliest_ms })
            }
            Err(e) => {
                // The count may still land (a stalled node runs what it was
                // sent once it resumes): take it back behind it, in the
                // background, so the 503 is not delayed. Should this lose
                // the race, the buyer is counted one hold too many until
                // that hold's deadline: the safe side of the cap.
                let (gate, user, sale_id) = (self.clone(), user.clone(), sale.clone());
                tokio::spawn(async move {
                    let _ = gate.forget(user.as_str(), &sale_id, &rid).await;
                });
                match self
                    .transition(sale, &rid, Actor::Admin, Transition::Cancel)
                    .await
                {
                    Ok(_) => {
                        tracing::warn!(sale = %sale, error = %chain(&e), "could not count a hold against the buyer's active-hold cap: given back")
                    }
                    Err(c) => {
                        tracing::error!(sale = %sale, reservation = %rid, error = %chain(&e), cancel_error = %chain(&c), "could neither count a hold against the buyer's active-hold cap nor give it back: it lasts until its deadline, uncounted")
                    }
                }
                Err(e)
            }
        }
    }

    /// A hold ended (confirmed, cancelled): it no longer counts for its
    /// buyer. Best effort: it would stop counting at its deadline anyway.
    pub(super) async fn hold_ended(&self, sale: &SaleId, rid: &Uuid, rec: &Record) {
        if self.cap() == 0 {
            return;
        }
        if let Err(e) = self.forget(&rec.user, sale, rid).await {
            tracing::debug!(error = %chain(&e), "could not drop an ended hold from its buyer's set");
        }
    }

    /// A hold was extended: its deadline moves in its buyer's set. Best
    /// effort: a stale deadline only ends the count early.
    pub(super) async fn hold_extended(&self, sale: &SaleId, rid: &Uuid, rec: &Record) {
        if self.cap() == 0 {
            return;
        }
        let moved = self
            .admit(&rec.user, sale, rid, rec.expires_ms, AdmitMode::Refresh)
            .await;
        if let Err(e) = moved {
            tracing::debug!(error = %chain(&e), "could not move an extended hold's deadline in its buyer's set");
        }
    }

    /// `admit.lua`: `Ok(None)` counted, `Ok(Some(ms))` refused (the
    /// earliest of the buyer's holds ends at `ms`).
    async fn admit(
        &self,
        user: &str,
        sale: &SaleId,
        rid: &Uuid,
        deadline_ms: i64,
        mode: AdmitMode,
    ) -> Result<Option<i64>, GateError> {
        let mut inv = self.prepare(ScriptName::Admit);
        inv.key(keys::user_holds(&self.opts.prefix, user))
            .arg(keys::user_hold_member(sale.as_str(), rid))
            .arg(deadline_ms)
            .arg(self.cap())
            .arg(mode.as_str());
        let r: Reply = self.invoke(ScriptName::Admit, &inv).await?;
        match r.tag()? {
            "ok" => Ok(None),
            "full" => Ok(Some(r.int(1)?)),
            _ => Err(r.unexpected()),
        }
    }

    async fn forget(&self, user: &str, sale: &SaleId, rid: &Uuid) -> Result<(), GateError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .bounded(redis::AsyncCommands::zrem(
                &mut conn,
                keys::user_holds(&self.opts.prefix, user),
                keys::user_hold_member(sale.as_str(), rid),
            ))
            .await?;
        Ok(())
    }
}
