//! Script replies, parsed once into typed values (`crate::domain`).

use redis::Value;
use uuid::Uuid;

use super::GateError;
use crate::domain::{Line, Record, Status};

/// A script's reply as an array, with typed accessors that name the script
/// in every error.
pub(super) struct Reply {
    script: &'static str,
    items: Vec<Value>,
}

impl Reply {
    pub fn new(script: &'static str, v: Value) -> Result<Self, GateError> {
        match v {
            Value::Array(items) if !items.is_empty() => Ok(Self { script, items }),
            other => Err(GateError::Protocol {
                script,
                detail: format!("expected a non-empty array, got {other:?}"),
            }),
        }
    }

    fn bad(&self, i: usize, what: &str) -> GateError {
        GateError::Protocol {
            script: self.script,
            detail: format!("item {i}: expected {what}, got {:?}", self.items.get(i)),
        }
    }

    pub fn str(&self, i: usize) -> Result<&str, GateError> {
        match self.items.get(i) {
            Some(Value::BulkString(b)) => std::str::from_utf8(b).map_err(|_| self.bad(i, "utf-8")),
            Some(Value::SimpleString(s)) => Ok(s),
            _ => Err(self.bad(i, "a string")),
        }
    }

    /// How many items the reply has.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn tag(&self) -> Result<&str, GateError> {
        self.str(0)
    }

    pub fn int(&self, i: usize) -> Result<i64, GateError> {
        match self.items.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            Some(Value::BulkString(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.bad(i, "an integer")),
            _ => Err(self.bad(i, "an integer")),
        }
    }

    pub fn u32(&self, i: usize) -> Result<u32, GateError> {
        u32::try_from(self.int(i)?).map_err(|_| self.bad(i, "a small non-negative integer"))
    }

    /// An integer field stored as '' when unset.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, GateError> {
        match self.items.get(i) {
            Some(Value::BulkString(b)) if b.is_empty() => Ok(None),
            Some(Value::Nil) | None => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    pub fn opt_str(&self, i: usize) -> Result<Option<String>, GateError> {
        match self.items.get(i) {
            Some(Value::Nil) | None => Ok(None),
            _ => Ok(Some(self.str(i)?)
                .filter(|s| !s.is_empty())
                .map(str::to_string)),
        }
    }

    /// A nested array of strings (or integers, as strings).
    pub fn strings(&self, i: usize) -> Result<Vec<String>, GateError> {
        match self.items.get(i) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::BulkString(b) => {
                        String::from_utf8(b.clone()).map_err(|_| self.bad(i, "utf-8"))
                    }
                    Value::SimpleString(s) => Ok(s.clone()),
                    Value::Int(n) => Ok(n.to_string()),
                    _ => Err(self.bad(i, "an array of strings")),
                })
                .collect(),
            _ => Err(self.bad(i, "an array")),
        }
    }

    pub fn status(&self, i: usize) -> Result<Status, GateError> {
        Status::parse(self.str(i)?).ok_or_else(|| self.bad(i, "a reservation status"))
    }

    pub fn uuid(&self, i: usize) -> Result<Uuid, GateError> {
        Uuid::parse_str(self.str(i)?).map_err(|_| self.bad(i, "a reservation id"))
    }

    pub fn unexpected(&self) -> GateError {
        GateError::Protocol {
            script: self.script,
            detail: format!("unexpected reply {:?}", self.items),
        }
    }

    /// A cart `sku:qty,...` at `i` ('' or absent: none).
    pub fn cart(&self, i: usize) -> Result<Vec<Line>, GateError> {
        match self.opt_str(i)? {
            None => Ok(Vec::new()),
            Some(s) => Line::parse_cart(&s).ok_or_else(|| self.bad(i, "a cart")),
        }
    }

    /// `{outcome, user, qty, status, expires_ms, at_ms, epoch?, by?, items?}`
    pub fn record(&self) -> Result<Record, GateError> {
        Ok(Record {
            user: self.str(1)?.to_string(),
            qty: self.u32(2)?,
            status: self.status(3)?,
            expires_ms: self.int(4)?,
            at_ms: self.int(5)?,
            epoch: self.opt_int(6)?.unwrap_or(0),
            by_admin: self.items.get(7).is_some() && self.str(7)? == "admin",
            items: self.cart(8)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn records_parse_from_mixed_strings_and_integers() {
        let r = Reply::new(
            "t",
            Value::Array(vec![
                bulk("ok"),
                bulk("u1"),
                Value::Int(2),
                bulk("held"),
                Value::Int(1_795_422_534_255),
                Value::Int(0),
            ]),
        )
        .expect("array");
        assert_eq!(r.tag().expect("tag"), "ok");
        let rec = r.record().expect("record");
        assert_eq!(
            rec,
            Record {
                user: "u1".into(),
                qty: 2,
                status: Status::Held,
                expires_ms: 1_795_422_534_255,
                at_ms: 0,
                epoch: 0,
                by_admin: false,
                items: Vec::new(),
            }
        );
    }

    #[test]
    fn malformed_replies_are_protocol_errors_naming_the_script() {
        assert!(matches!(
            Reply::new("reserve", Value::Nil),
            Err(GateError::Protocol {
                script: "reserve",
                ..
            })
        ));
        let r = Reply::new(
            "confirm",
            Value::Array(vec![bulk("ok"), bulk("u1"), bulk("x")]),
        )
        .expect("array");
        assert!(matches!(
            r.record(),
            Err(GateError::Protocol {
                script: "confirm",
                ..
            })
        ));
        let r = Reply::new(
            "t",
            Value::Array(vec![bulk("ok"), bulk(""), Value::Int(-1)]),
        )
        .expect("array");
        assert_eq!(r.opt_int(1).expect("empty is none"), None);
        assert!(r.u32(2).is_err());
    }
}
