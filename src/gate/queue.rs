//! A queued sale's fair queue (`lua/queue.lua`; the clock is described in
//! `lua/lib.lua`): join it, read one's ticket. Reserve checks admission in
//! `reserve.lua` itself, in the same atomic step as stock and caps.

use super::{Gate, GateError, ScriptName};
use crate::domain::{QueueOutcome, Ticket, TicketState};
use crate::ids::{SaleId, UserId};

impl Gate {
    /// Joins the queue (`join`; `place`: a uniformly random place in
    /// [0, 1), used if the buyer joins before the start) or reads the
    /// buyer's ticket.
    pub async fn queue(
        &self,
        sale: &SaleId,
        user: &UserId,
        join: bool,
        place: f64,
    ) -> Result<QueueOutcome, GateError> {
        let k = self.keys(sale);
        let mut inv = self.prepare(ScriptName::Queue);
        inv.key(k.sale())
            .key(k.queue())
            .arg(k.base())
            .arg(user.as_str())
            .arg(if join { "join" } else { "ticket" })
            .arg(format!("{place:.17}"));
        let r = self.invoke(ScriptName::Queue, &inv).await?;
        Ok(match r.tag()? {
            "ticket" => {
                let count =
                    |i| -> Result<u64, GateError> { Ok(u64::try_from(r.int(i)?).unwrap_or(0)) };
                let state = match r.str(2)? {
                    "pre_queue" => TicketState::PreQueue,
                    "waiting" => TicketState::Waiting,
                    "admitted" => TicketState::Admitted,
                    "expired" => TicketState::Expired,
                    _ => return Err(r.unexpected()),
                };
                QueueOutcome::Ticket {
                    joined: r.int(1)? == 1,
                    ticket: Ticket {
                        state,
                        position: Some(count(3)?).filter(|p| *p > 0),
                        serving: count(4)?,
                        joined: count(5)?,
                        admitted_until_ms: Some(r.int(6)?).filter(|t| *t > 0),
                        admit_per_sec: r.u32(7)?,
                        running: r.int(8)? == 1,
                        now_ms: r.int(9)?,
                    },
                }
            }
            "not_queued" => QueueOutcome::NotQueued,
            "ended" => QueueOutcome::Ended { ends_ms: r.int(1)? },
            "not_open" => QueueOutcome::NotOpen {
                opens_ms: r.int(1)?,
            },
            "paused" => QueueOutcome::Paused,
            "not_in_queue" => QueueOutcome::NotInQueue,
            _ => return Err(r.unexpected()),
        })
    }
}
