//! What admins do to a live sale: steer it (pause, resume, close), page
//! through its holds, and who asked (for the audit).

use uuid::Uuid;

use super::Record;

/// What admins steered of a sale, as Postgres keeps it (and a rebuild
/// restores it into Redis).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Steering {
    pub paused: bool,
    /// When an admin closed the sale (ms); it ended then.
    pub closed_ms: Option<i64>,
}

/// An admin's turn of a live sale's wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    /// Refuse new holds and queue joins; holds can still be confirmed,
    /// cancelled, extended.
    Pause,
    /// Undo a pause.
    Resume,
    /// End the sale now, for good: it cannot be resumed, and its
    /// configuration no longer changes.
    Close,
}

impl Steer {
    /// The action's name (the script's argument, the audit's `action`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Close => "close",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SteerOutcome {
    /// The sale as the call left it (`changed`: false when it already was
    /// so: pausing a paused sale, closing a closed one).
    Steered {
        changed: bool,
        paused: bool,
        ends_ms: Option<i64>,
        closed_ms: Option<i64>,
    },
    /// The sale is closed: it can be neither paused nor resumed.
    Closed { ends_ms: Option<i64> },
}

/// Who asked for an admin change. Admin token holders are one identity:
/// the request's id (`X-Request-Id`) and the client's address tell the
/// requests apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminOrigin {
    pub request_id: Option<String>,
    pub client: Option<String>,
}

/// A page of a sale's live holds, by deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldPage {
    pub holds: Vec<(Uuid, Record)>,
    /// Where the next page starts (deadline ms, reservation id): after
    /// this hold. None on the last page.
    pub next: Option<(i64, Uuid)>,
}
