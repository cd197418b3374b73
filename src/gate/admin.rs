//! What admins do to a sale in Redis: steer it (`lua/steer.lua`: pause,
//! resume, close) and page through its live holds (`lua/held.lua`).

use uuid::Uuid;

use super::{Gate, GateError, ScriptName};
use crate::domain::{HeldPage, Record, Status, Steer, SteerOutcome};
use crate::ids::SaleId;

impl Gate {
    /// Pauses, resumes or closes a sale, in one step with every reserve.
    pub async fn steer(&self, sale: &SaleId, action: Steer) -> Result<SteerOutcome, GateError> {
        let k = self.keys(sale);
        let mut inv = self.prepare(ScriptName::Steer);
        inv.key(k.sale())
            .key(k.events())
            .arg(k.base())
            .arg(action.as_str());
        let r = self.invoke(ScriptName::Steer, &inv).await?;
        match r.tag()? {
            "ok" => Ok(SteerOutcome::Steered {
                changed: r.int(1)? == 1,
                paused: r.int(2)? == 1,
                ends_ms: r.opt_int(3)?,
                closed_ms: r.opt_int(4)?,
            }),
            "closed" => Ok(SteerOutcome::Closed {
                ends_ms: r.opt_int(1)?,
            }),
            _ => Err(r.unexpected()),
        }
    }

    /// A page of at most `limit` live holds, by deadline, after `after`
    /// (the deadline and id of the last hold of the page before).
    pub async fn held_page(
        &self,
        sale: &SaleId,
        after: Option<(i64, Uuid)>,
        limit: u32,
    ) -> Result<HeldPage, GateError> {
        let k = self.keys(sale);
        let mut inv = self.prepare(ScriptName::Held);
        inv.key(k.sale()).key(k.holds()).arg(k.base()).arg(limit);
        match after {
            Some((deadline, rid)) => inv.arg(deadline).arg(rid.to_string()),
            None => inv.arg("").arg(""),
        };
        let r = self.invoke(ScriptName::Held, &inv).await?;
        if r.tag()? != "ok" {
            return Err(r.unexpected());
        }
        // {'ok', more, last_deadline, last_rid, (rid, user, qty, expires, items)...}
        let mut holds = Vec::new();
        let mut i = 4;
        while i + 4 < r.len() {
            let rec = Record {
                user: r.str(i + 1)?.to_string(),
                qty: r.u32(i + 2)?,
                status: Status::Held,
                expires_ms: r.int(i + 3)?,
                at_ms: 0,
                epoch: 0,
                by_admin: false,
                items: r.cart(i + 4)?,
            };
            holds.push((r.uuid(i)?, rec));
            i += 5;
        }
        let next = if r.int(1)? == 1 {
            Some((r.int(2)?, r.uuid(3)?))
        } else {
            None
        };
        Ok(HeldPage { holds, next })
    }
}
