//! Redis key names. Every key of one sale shares the hash tag `{<sale_id>}`,
//! so each script touches exactly one Redis Cluster slot.

use uuid::Uuid;

use crate::ids::SaleId;

/// The keys of one sale: `<prefix>:{<sale_id>}:<suffix>`.
#[derive(Clone, Debug)]
pub struct SaleKeys {
    base: String,
}

impl SaleKeys {
    pub fn new(prefix: &str, sale: &SaleId) -> Self {
        Self {
            base: format!("{prefix}:{{{}}}:", sale.as_str()),
        }
    }

    /// `<prefix>:{<sale_id>}:` — handed to scripts so they can name the
    /// per-reservation keys of other holds while sweeping.
    pub fn base(&self) -> &str {
        &self.base
    }
    fn key(&self, suffix: &str) -> String {
        let mut k = String::with_capacity(self.base.len() + suffix.len());
        k.push_str(&self.base);
        k.push_str(suffix);
        k
    }
    pub fn sale(&self) -> String {
        self.key("sale")
    }
    pub fn holds(&self) -> String {
        self.key("holds")
    }
    pub fn events(&self) -> String {
        self.key("events")
    }
    /// A queued sale's fair queue (buyers by place).
    pub fn queue(&self) -> String {
        self.key("queue")
    }
    /// Where the write-behind worker parks entries it cannot apply.
    pub fn dead_letters(&self) -> String {
        self.key("dead")
    }
    pub fn reservation(&self, rid: &Uuid) -> String {
        self.key(&format!("r:{rid}"))
    }
    pub fn hold(&self, rid: &Uuid) -> String {
        self.key(&format!("h:{rid}"))
    }
    /// `idem:<len(user)>:<user>:<key>`. A buyer id may hold `:` (and so
    /// may the key): without the length, buyer `a:b` with key `k` and buyer
    /// `a` with key `b:k` would share one key, and one buyer could replay
    /// another's reservation. The length makes the split unambiguous.
    pub fn idempotency(&self, user: &str, key: &str) -> String {
        self.key(&format!("idem:{}:{user}:{key}", user.len()))
    }
}

/// One buyer's active holds across sales (`<prefix>:{u:<user>}:active`),
/// under the buyer's own hash tag.
pub fn user_holds(prefix: &str, user: &str) -> String {
    format!("{prefix}:{{u:{user}}}:active")
}

/// A hold's member in its buyer's active-hold set: `<sale>|<rid>` (a sale
/// id never holds `|`).
pub fn user_hold_member(sale: &str, rid: &Uuid) -> String {
    format!("{sale}|{rid}")
}

/// The set of known sale ids (`<prefix>:sales`), for the sweeper and the
/// worker. Written with plain commands, never from inside a sale's script.
pub fn sales_index(prefix: &str) -> String {
    format!("{prefix}:sales")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The inverse of [`SaleKeys::idempotency`]: a key name that decodes to
    /// exactly one (user, key) pair is a name no other pair can produce.
    fn decode_idempotency<'a>(k: &SaleKeys, name: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = name.strip_prefix(k.base())?.strip_prefix("idem:")?;
        let (len, rest) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let user = rest.get(..len)?;
        let key = rest.get(len..)?.strip_prefix(':')?;
        Some((user, key))
    }

    /// A buyer id (`sub`): printable ASCII, `:` and braces included.
    fn user() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[!-~]{1,40}").expect("regex")
    }

    /// An `Idempotency-Key`: `[A-Za-z0-9_.:-]`, colons favoured.
    fn idem_key() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-c0-9_.:-]{1,40}").expect("regex")
    }

    proptest! {
        #[test]
        fn idempotency_keys_decode_to_the_pair_that_made_them(u in user(), key in idem_key()) {
            let k = SaleKeys::new("fg", &SaleId::parse("s-1").expect("valid"));
            let name = k.idempotency(&u, &key);
            prop_assert_eq!(decode_idempotency(&k, &name), Some((u.as_str(), key.as_str())));
        }

        /// Moving any split point between buyer and key (the attack: buyer
        /// `victim:b` + key `cart1` against buyer `victim` + key `b:cart1`)
        /// never lands on the same name.
        #[test]
        fn two_different_pairs_never_share_a_name(u in user(), key in idem_key(), cut in 0usize..80) {
            let k = SaleKeys::new("fg", &SaleId::parse("s-1").expect("valid"));
            let joined = format!("{u}:{key}");
            let cut = cut % joined.len();
            let (u2, k2) = (&joined[..cut], joined.get(cut + 1..).unwrap_or(""));
            if (u2, k2) != (u.as_str(), key.as_str()) && !u2.is_empty() && !k2.is_empty() {
                prop_assert_ne!(k.idempotency(&u, &key), k.idempotency(u2, k2));
            }
        }
    }

    #[test]
    fn the_reported_cross_buyer_pair_gets_two_keys() {
        let k = SaleKeys::new("fg", &SaleId::parse("s-1").expect("valid"));
        assert_ne!(
            k.idempotency("victim:b", "cart1"),
            k.idempotency("victim", "b:cart1")
        );
    }

    #[test]
    fn every_key_of_a_sale_shares_its_hash_tag() {
        let sale = SaleId::parse("spring-drop").expect("valid");
        let k = SaleKeys::new("fg", &sale);
        let rid = Uuid::new_v4();
        for key in [
            k.sale(),
            k.holds(),
            k.events(),
            k.dead_letters(),
            k.queue(),
            k.reservation(&rid),
            k.hold(&rid),
            k.idempotency("u:{x}", "k"),
        ] {
            assert!(key.starts_with("fg:{spring-drop}:"), "{key}");
            // The hash tag is the first {...}: user data after it cannot move the slot.
            let open = key.find('{').expect("tag");
            let close = key[open..].find('}').expect("tag end") + open;
            assert_eq!(&key[open + 1..close], "spring-drop");
        }
    }
}
