//! What the rooms share: a sale's configuration and state, a reservation
//! and its status, the outcomes of the decisions, who acts, an order. No
//! Redis, Postgres or HTTP types here: `gate` (Redis), `store` (Postgres),
//! `service` and `api` all build on these.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::ids::UserId;

mod admin;
mod queue;
pub use admin::{AdminOrigin, HeldPage, Steer, SteerOutcome, Steering};
pub use queue::{QueueOutcome, Ticket, TicketState};

/// `<sku>/<user>`: a buyer's count of one item, as `reconcile` names it (a
/// sku holds no `/`).
pub fn item_buyer(sku: &str, user: &str) -> String {
    format!("{sku}/{user}")
}

/// The configuration of a sale, in the units the scripts use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleConfig {
    pub stock: i64,
    pub per_user_limit: u32,
    pub hold_ttl_ms: i64,
    pub max_hold_ms: i64,
    pub starts_ms: Option<i64>,
    pub ends_ms: Option<i64>,
    pub product_id: Option<String>,
    pub admission: Admission,
    /// A sale of several items (variants: sizes, colours): each with its
    /// own stock (`stock` is then their sum) and maybe its own per-buyer
    /// cap under the sale's. Empty: a one-item sale.
    pub items: Vec<Item>,
}

/// One item of a sale of several items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// 1-64 of `[A-Za-z0-9_-]` (no `:` nor `,`: see `lua/lib.lua`).
    pub sku: String,
    pub stock: i64,
    /// A buyer's cap of this item, under the sale's `per_user_limit`.
    pub per_user_limit: Option<u32>,
}

/// An item of a sale as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemState {
    pub item: Item,
    pub sold: i64,
    pub held: i64,
}

impl ItemState {
    pub fn available(&self) -> i64 {
        (self.item.stock - self.sold - self.held).max(0)
    }
}

/// One line of a cart: units of one item.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Line {
    pub sku: String,
    pub quantity: u32,
}

impl Line {
    /// `sku:qty,sku:qty` as the scripts keep a cart; None if malformed.
    pub fn parse_cart(s: &str) -> Option<Vec<Line>> {
        if s.is_empty() {
            return Some(Vec::new());
        }
        s.split(',')
            .map(|l| {
                let (sku, q) = l.split_once(':')?;
                Some(Line {
                    sku: sku.to_string(),
                    quantity: q.parse().ok()?,
                })
            })
            .collect()
    }
}

/// A cart line the sale cannot hold now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub sku: String,
    pub requested: u32,
    pub available: i64,
}

/// An item whose stock an update would take below its sold + held units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemBelow {
    pub sku: String,
    pub stock: i64,
    pub sold: i64,
    pub held: i64,
}

/// Who may reserve, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Whoever asks first (no queue).
    Open,
    /// A fair queue: buyers who joined before the start get a random
    /// place, later ones queue behind in arrival order; `per_sec` places
    /// are let in each second from the start, each for `window_ms`.
    /// Joins before `opens_ms` are refused.
    Queue {
        per_sec: u32,
        window_ms: i64,
        opens_ms: Option<i64>,
    },
}

impl Admission {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Queue { .. } => "queue",
        }
    }
}

/// A sale as Redis holds it, read in one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleState {
    pub config: SaleConfig,
    pub sold: i64,
    pub held: i64,
    /// Grows with every change of the sale (counters, configuration,
    /// pause, queue), across a rebuild too.
    pub version: i64,
    pub paused: bool,
    /// When an admin closed the sale (ms): it ended then, for good.
    pub closed_ms: Option<i64>,
    /// A queued sale's queue: buyers in it, and places admitted so far.
    pub queue: Option<QueueState>,
    /// Redis' clock when it was read (ms).
    pub now_ms: i64,
    /// Expired holds the read gave back.
    pub released: i64,
    /// A sale of several items: each one's counters (empty for one item).
    pub items: Vec<ItemState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    pub joined: u64,
    pub serving: u64,
}

/// Where a sale stands, by the clock of its read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Scheduled,
    Live,
    SoldOut,
    Ended,
}

impl SaleState {
    /// The version a reader sees: the sale's, plus the queue's admitted
    /// places, which move on by the clock between changes (both only
    /// grow, so this does too).
    pub fn view_version(&self) -> i64 {
        self.version
            + self
                .queue
                .map_or(0, |q| i64::try_from(q.serving).unwrap_or(0))
    }

    pub fn available(&self) -> i64 {
        (self.config.stock - self.sold - self.held).max(0)
    }

    pub fn phase(&self) -> Phase {
        let c = &self.config;
        if c.ends_ms.is_some_and(|e| self.now_ms >= e) {
            Phase::Ended
        } else if c.starts_ms.is_some_and(|s| self.now_ms < s) {
            Phase::Scheduled
        } else if self.available() == 0 {
            Phase::SoldOut
        } else {
            Phase::Live
        }
    }
}

/// What a reservation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Held,
    Confirmed,
    Cancelled,
    Expired,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "held" => Self::Held,
            "confirmed" => Self::Confirmed,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

/// A reservation record: buyer, units, status, deadline and the time of its
/// last transition (confirmed / cancelled / expired), 0 while held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub user: String,
    pub qty: u32,
    pub status: Status,
    pub expires_ms: i64,
    pub at_ms: i64,
    /// The sale's epoch, where a confirm reports it (its order is recorded
    /// only in that epoch, see `migrations/0002_sale_epoch.sql`); else 0.
    pub epoch: i64,
    /// A cancelled reservation the admin cancelled (a cancel reports it).
    pub by_admin: bool,
    /// Its cart, on a sale of several items (`qty` is the total).
    pub items: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Held {
        rid: Uuid,
        qty: u32,
        expires_ms: i64,
    },
    Replay {
        rid: Uuid,
        qty: u32,
        status: Status,
        expires_ms: i64,
        items: Vec<Line>,
    },
    IdempotencyMismatch,
    /// A cart, on a one-item sale.
    NoItems,
    /// No cart, on a sale of several items.
    ItemsRequired,
    /// A cart line names no item of the sale.
    UnknownSku {
        sku: String,
    },
    NotStarted {
        starts_ms: i64,
    },
    Ended {
        ends_ms: i64,
    },
    /// An admin paused the sale.
    Paused,
    OverLimit {
        limit: u32,
    },
    /// A queued sale: the buyer's place has not come (`position` None: not
    /// in the queue).
    NotAdmitted {
        position: Option<u64>,
        serving: u64,
    },
    /// A queued sale: the buyer's admission window has passed.
    AdmissionExpired {
        until_ms: i64,
    },
    /// Over the buyer's cap: the sale's, or (`sku`) a cart line over its
    /// item's own cap.
    UserLimit {
        sku: Option<String>,
        limit: u32,
        held: u32,
        bought: u32,
    },
    /// `shortfalls`: a cart's lines short of units (empty for one item).
    SoldOut {
        available: i64,
        shortfalls: Vec<Shortfall>,
    },
    /// The buyer already has its cap of active holds across sales; the
    /// earliest of them ends at `earliest_ms`.
    ActiveHoldsFull {
        earliest_ms: i64,
    },
}

impl ReserveOutcome {
    /// The outcome's name in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Held { .. } => "held",
            Self::Replay { .. } => "replay",
            Self::IdempotencyMismatch => "idempotency_key_reused",
            Self::NoItems | Self::ItemsRequired | Self::UnknownSku { .. } => "invalid_cart",
            Self::NotStarted { .. } => "sale_not_started",
            Self::Ended { .. } => "sale_ended",
            Self::Paused => "sale_paused",
            Self::OverLimit { .. } => "over_limit",
            Self::NotAdmitted { .. } => "not_admitted",
            Self::AdmissionExpired { .. } => "admission_expired",
            Self::UserLimit { .. } => "user_limit_exceeded",
            Self::SoldOut { .. } => "sold_out",
            Self::ActiveHoldsFull { .. } => "active_holds",
        }
    }
}

/// What a confirm, cancel or extend did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// The transition happened now.
    Done(Record),
    /// It had already happened: the same answer again.
    Replay(Record),
    /// The reservation is in a state that forbids the transition.
    Conflict(Record),
    /// extend: already at the sale's maximum hold time.
    HoldLimit(Record),
    NotFound,
    Forbidden,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigureOutcome {
    /// Created or updated; `epoch` is the state's (Postgres keeps it).
    Created {
        epoch: i64,
    },
    Updated {
        epoch: i64,
    },
    /// `items`: the items below (empty for a one-item sale).
    BelowCommitted {
        sold: i64,
        held: i64,
        items: Vec<ItemBelow>,
    },
    /// A sale with units sold or held cannot change between one item and
    /// several.
    ShapeChange {
        sold: i64,
        held: i64,
    },
    /// An item with units sold or held cannot get a per-buyer cap it did
    /// not have (its buyers' units were not counted).
    CapAdded {
        sku: String,
    },
    /// An admin closed the sale: its configuration is final.
    Closed {
        ends_ms: i64,
    },
}

/// Who acts on a reservation: its buyer, or the admin (payment service).
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    Admin,
    Buyer(&'a UserId),
}

impl Actor<'_> {
    /// May this actor act on a reservation of `owner`?
    pub fn may_act_for(&self, owner: &str) -> bool {
        match self {
            Actor::Admin => true,
            Actor::Buyer(u) => u.as_str() == owner,
        }
    }
}

/// One confirmed reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub reservation_id: Uuid,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: i32,
    pub confirmed_at: DateTime<Utc>,
    /// The sale's epoch the confirm ran in: recorded only while it is the
    /// sale's current one.
    pub epoch: i64,
    /// Its cart, on a sale of several items (`order_items`).
    pub items: Vec<Line>,
}

impl Order {
    /// The confirmed record of an order read back from Postgres.
    pub fn record(&self) -> Record {
        let at_ms = self.confirmed_at.timestamp_millis();
        Record {
            user: self.user_id.clone(),
            qty: u32::try_from(self.quantity).unwrap_or(0),
            status: Status::Confirmed,
            expires_ms: at_ms,
            at_ms,
            epoch: self.epoch,
            by_admin: false,
            items: self.items.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
