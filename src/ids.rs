//! Identifiers checked for length and charset before they reach a Redis key.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct IdError {
    pub field: &'static str,
    pub reason: &'static str,
}

fn check(
    field: &'static str,
    v: &str,
    max: usize,
    ok: impl Fn(u8) -> bool,
    charset: &'static str,
) -> Result<(), IdError> {
    if v.is_empty() {
        return Err(IdError {
            field,
            reason: "must not be empty",
        });
    }
    if v.len() > max {
        return Err(IdError {
            field,
            reason: "too long",
        });
    }
    if !v.bytes().all(ok) {
        return Err(IdError {
            field,
            reason: charset,
        });
    }
    Ok(())
}

/// A sale id: 1-64 characters of `[A-Za-z0-9_-]` (never `{`, `}` or `:`,
/// which would break the key layout or the hash tag).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaleId(String);

impl SaleId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(v: &str) -> Result<Self, IdError> {
        check(
            "sale_id",
            v,
            Self::MAX_LEN,
            |b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
            "only letters, digits, '-' and '_'",
        )?;
        Ok(Self(v.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SaleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A buyer, from the JWT `sub`: 1-128 printable ASCII characters without
/// spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(v: &str) -> Result<Self, IdError> {
        check(
            "sub",
            v,
            Self::MAX_LEN,
            |b| b.is_ascii_graphic(),
            "only printable ASCII without spaces",
        )?;
        Ok(Self(v.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An `Idempotency-Key` header: 1-128 characters of `[A-Za-z0-9_.:-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 128;

    pub fn parse(v: &str) -> Result<Self, IdError> {
        check(
            "Idempotency-Key",
            v,
            Self::MAX_LEN,
            |b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'),
            "only letters, digits and '-', '_', '.', ':'",
        )?;
        Ok(Self(v.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sale_ids() {
        assert!(SaleId::parse("spring-drop_2026").is_ok());
        assert!(SaleId::parse(&"a".repeat(64)).is_ok());
        for bad in [
            "",
            "{x}",
            "a}b",
            "a:b",
            "*",
            "..",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(SaleId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn user_ids() {
        assert!(UserId::parse("user-42@example.com").is_ok());
        for bad in ["", "a b", "tab\t", "nl\n", &"u".repeat(129)] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn idempotency_keys() {
        assert!(IdempotencyKey::parse("4f1c2b9e-1a2b-4c3d-9e8f-0a1b2c3d4e5f").is_ok());
        for bad in ["", "a b", "{k}", "*", &"k".repeat(129)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
