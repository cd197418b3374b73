//! The events the scripts append to each sale's stream, as the worker
//! reads them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use redis::Value;
use uuid::Uuid;

use crate::domain::{Line, Order};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Reserved,
    Confirmed,
    Cancelled,
    Expired,
    Extended,
    Configured,
    Rebuilt,
    /// An admin paused, resumed or closed the sale (lua/steer.lua).
    Paused,
    Resumed,
    Closed,
}

impl EventKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Extended => "extended",
            Self::Configured => "configured",
            Self::Rebuilt => "rebuilt",
            Self::Paused => "paused",
            Self::Resumed => "resumed",
            Self::Closed => "closed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reserved" => Self::Reserved,
            "confirmed" => Self::Confirmed,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            "extended" => Self::Extended,
            "configured" => Self::Configured,
            "rebuilt" => Self::Rebuilt,
            "paused" => Self::Paused,
            "resumed" => Self::Resumed,
            "closed" => Self::Closed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The stream entry id (unique within the sale's stream).
    pub event_id: String,
    pub kind: EventKind,
    pub sale_id: String,
    pub reservation_id: Option<Uuid>,
    pub user_id: Option<String>,
    pub quantity: i32,
    pub occurred_at: DateTime<Utc>,
    pub sold_after: Option<i64>,
    pub held_after: Option<i64>,
    pub stock_after: Option<i64>,
    /// The sale's epoch when it happened (0 for entries written before
    /// epochs existed, as for the sales of that time).
    pub epoch: i64,
    /// The reservation's cart, on a sale of several items.
    pub items: Vec<Line>,
    /// Who cancelled, on a `cancelled` event: `Some(true)` an admin,
    /// `Some(false)` the buyer, `None` not said (entries written before
    /// the field existed).
    pub by_admin: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error("stream entry {id}: {reason}")]
pub struct BadEvent {
    pub id: String,
    pub reason: String,
}

fn text(map: &HashMap<String, Value>, field: &str) -> Option<String> {
    match map.get(field)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Event {
    pub fn parse(id: &str, map: &HashMap<String, Value>) -> Result<Self, BadEvent> {
        let bad = |reason: &str| BadEvent {
            id: id.to_string(),
            reason: reason.to_string(),
        };
        let kind = text(map, "kind")
            .and_then(|k| EventKind::parse(&k))
            .ok_or_else(|| bad("missing or unknown kind"))?;
        let sale_id = text(map, "sale")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("missing sale"))?;
        let reservation_id = match text(map, "rid").filter(|s| !s.is_empty()) {
            Some(r) => Some(Uuid::parse_str(&r).map_err(|_| bad("reservation id is not a uuid"))?),
            None => None,
        };
        let user_id = text(map, "user").filter(|s| !s.is_empty());
        let num = |f: &str| text(map, f).and_then(|v| v.parse::<i64>().ok());
        let quantity = i32::try_from(num("qty").ok_or_else(|| bad("missing qty"))?)
            .map_err(|_| bad("qty out of range"))?;
        let at = num("at")
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .ok_or_else(|| bad("missing time"))?;
        let needs_reservation = matches!(
            kind,
            EventKind::Reserved
                | EventKind::Confirmed
                | EventKind::Cancelled
                | EventKind::Expired
                | EventKind::Extended
        );
        if needs_reservation && (reservation_id.is_none() || user_id.is_none() || quantity <= 0) {
            return Err(bad(
                "reservation event without reservation, user or quantity",
            ));
        }
        let items = Line::parse_cart(&text(map, "items").unwrap_or_default())
            .ok_or_else(|| bad("malformed items"))?;
        let by_admin = match text(map, "by").as_deref() {
            Some("admin") => Some(true),
            Some("buyer") => Some(false),
            _ => None,
        };
        Ok(Self {
            items,
            by_admin,
            event_id: id.to_string(),
            kind,
            sale_id,
            reservation_id,
            user_id,
            quantity,
            occurred_at: at,
            sold_after: num("sold"),
            held_after: num("held"),
            stock_after: num("stock"),
            epoch: num("epoch").unwrap_or(0),
        })
    }

    /// The order a `confirmed` event stands for.
    pub fn order(&self) -> Option<Order> {
        match (self.kind, self.reservation_id, &self.user_id) {
            (EventKind::Confirmed, Some(rid), Some(user)) => Some(Order {
                reservation_id: rid,
                sale_id: self.sale_id.clone(),
                user_id: user.clone(),
                quantity: self.quantity,
                confirmed_at: self.occurred_at,
                epoch: self.epoch,
                items: self.items.clone(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pairs: &[(&str, &str)]) -> HashMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn a_confirmed_event_is_an_order() {
        let rid = Uuid::new_v4().to_string();
        let m = entry(&[
            ("kind", "confirmed"),
            ("sale", "s1"),
            ("rid", &rid),
            ("user", "u1"),
            ("qty", "2"),
            ("at", "1795422534255"),
            ("sold", "2"),
            ("held", "0"),
            ("stock", "10"),
            ("epoch", "3"),
        ]);
        let e = Event::parse("1-0", &m).expect("parse");
        let o = e.order().expect("order");
        assert_eq!((o.quantity, o.epoch), (2, 3));
        assert_eq!(o.user_id, "u1");
        assert_eq!(o.confirmed_at.timestamp_millis(), 1_795_422_534_255);
        assert_eq!(e.sold_after, Some(2));
    }

    #[test]
    fn configured_events_need_no_reservation_and_are_no_order() {
        let m = entry(&[
            ("kind", "configured"),
            ("sale", "s1"),
            ("rid", ""),
            ("user", ""),
            ("qty", "0"),
            ("at", "1795422534255"),
        ]);
        let e = Event::parse("1-1", &m).expect("parse");
        assert!(e.order().is_none());
    }

    #[test]
    fn malformed_entries_are_rejected() {
        assert!(Event::parse("1-2", &entry(&[("kind", "sold")])).is_err());
        assert!(Event::parse(
            "1-3",
            &entry(&[
                ("kind", "confirmed"),
                ("sale", "s1"),
                ("rid", "nope"),
                ("user", "u"),
                ("qty", "1"),
                ("at", "1")
            ])
        )
        .is_err());
        assert!(Event::parse(
            "1-4",
            &entry(&[
                ("kind", "confirmed"),
                ("sale", "s1"),
                ("rid", ""),
                ("user", "u"),
                ("qty", "1"),
                ("at", "1")
            ])
        )
        .is_err());
    }
}
