//! Redis key names. Every key of one sale shares the hash tag `{<sale_id>}`,
//! so each script touches exactly one Redis Cluster slot.

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
    /// Where the write-behind worker parks entries it cannot apply.
    pub fn dead_letters(&self) -> String {
        self.key("dead")
    }
    pub fn reservation(&self, rid: &str) -> String {
        self.key(&format!("r:{rid}"))
    }
    pub fn hold(&self, rid: &str) -> String {
        self.key(&format!("h:{rid}"))
    }
    pub fn idempotency(&self, user: &str, key: &str) -> String {
        self.key(&format!("idem:{user}:{key}"))
    }
}

/// One buyer's active holds across sales (`<prefix>:{u:<user>}:active`),
/// under the buyer's own hash tag.
pub fn user_holds(prefix: &str, user: &str) -> String {
    format!("{prefix}:{{u:{user}}}:active")
}

/// A hold's member in its buyer's active-hold set: `<sale>|<rid>`.
pub fn user_hold_member(sale: &str, rid: &str) -> String {
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

    #[test]
    fn every_key_of_a_sale_shares_its_hash_tag() {
        let sale = SaleId::parse("spring-drop").expect("valid");
        let k = SaleKeys::new("fg", &sale);
        for key in [
            k.sale(),
            k.holds(),
            k.events(),
            k.dead_letters(),
            k.reservation("r1"),
            k.hold("r1"),
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
