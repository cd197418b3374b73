//! A queued sale's side of the domain: a buyer's ticket and what joining
//! (or reading one's ticket) did.

/// A buyer's place in a queued sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub state: TicketState,
    /// 1-based; None before the start (the order is drawn then).
    pub position: Option<u64>,
    pub serving: u64,
    pub joined: u64,
    /// Until when an admitted buyer may reserve.
    pub admitted_until_ms: Option<i64>,
    pub admit_per_sec: u32,
    /// The admission clock runs (not sold out, not paused).
    pub running: bool,
    pub now_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketState {
    /// Joined before the start: a random place is drawn at the start.
    PreQueue,
    Waiting,
    Admitted,
    /// The admission window passed.
    Expired,
}

/// What joining a queue (or reading one's ticket) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOutcome {
    /// `joined`: the buyer joined now (else it was in the queue already).
    Ticket {
        joined: bool,
        ticket: Ticket,
    },
    NotQueued,
    Ended {
        ends_ms: i64,
    },
    NotOpen {
        opens_ms: i64,
    },
    Paused,
    NotInQueue,
}
