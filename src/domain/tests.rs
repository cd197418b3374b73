//! A sale's phase and availability by the clock; outcomes and orders.

use super::*;

fn state(stock: i64, sold: i64, held: i64, starts: Option<i64>, ends: Option<i64>) -> SaleState {
    SaleState {
        config: SaleConfig {
            stock,
            per_user_limit: 2,
            hold_ttl_ms: 300_000,
            max_hold_ms: 1_800_000,
            starts_ms: starts,
            ends_ms: ends,
            product_id: None,
            admission: Admission::Open,
            items: Vec::new(),
        },
        sold,
        held,
        version: 1,
        paused: false,
        closed_ms: None,
        queue: None,
        now_ms: 1_000_000,
        released: 0,
        items: Vec::new(),
    }
}

#[test]
fn phases_follow_the_clock_and_the_counters() {
    assert_eq!(state(10, 0, 0, None, None).phase(), Phase::Live);
    assert_eq!(state(10, 4, 6, None, None).phase(), Phase::SoldOut);
    assert_eq!(
        state(10, 0, 0, Some(2_000_000), None).phase(),
        Phase::Scheduled
    );
    assert_eq!(state(10, 0, 0, None, Some(1_000_000)).phase(), Phase::Ended);
    assert_eq!(state(10, 3, 2, None, None).available(), 5);
    assert_eq!(state(3, 3, 2, None, None).available(), 0);
}

#[test]
fn statuses_round_trip() {
    for s in [
        Status::Held,
        Status::Confirmed,
        Status::Cancelled,
        Status::Expired,
    ] {
        assert_eq!(Status::parse(s.as_str()), Some(s));
    }
    assert_eq!(Status::parse("sold"), None);
}
