//! Settings from the environment: defaults, overrides, named errors, secrets.

use super::*;
use std::collections::HashMap;

fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn shipped_defaults_parse() {
    let s = Settings::from_lookup(lookup(&[])).expect("defaults");
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.redis_urls, vec!["redis://127.0.0.1:6379".to_string()]);
    assert_eq!(s.confirm_durability, ConfirmDurability::Postgres);
    assert_eq!(s.key_prefix, "fg");
}

#[test]
fn environment_overrides_defaults() {
    let s = Settings::from_lookup(lookup(&[
        ("FLASHGATE_LISTEN", "0.0.0.0:9000"),
        ("FLASHGATE_REDIS_URL", "redis://a:1, redis://b:2"),
        ("FLASHGATE_REDIS_CLUSTER", "1"),
        ("FLASHGATE_CONFIRM_DURABILITY", "redis"),
        ("FLASHGATE_CONFIRM_TIMEOUT_MS", "750"),
    ]))
    .expect("parse");
    assert_eq!(s.listen.port(), 9000);
    assert_eq!(s.redis_urls.len(), 2);
    assert!(s.redis_cluster);
    assert_eq!(s.confirm_durability, ConfirmDurability::Redis);
    assert_eq!(s.confirm_timeout, Duration::from_millis(750));
}

#[test]
fn bad_values_are_named() {
    let e = Settings::from_lookup(lookup(&[("FLASHGATE_CONFIRM_DURABILITY", "disk")])).unwrap_err();
    assert_eq!(e.name, "FLASHGATE_CONFIRM_DURABILITY");
    let e = Settings::from_lookup(lookup(&[("FLASHGATE_KEY_PREFIX", "a{b}")])).unwrap_err();
    assert_eq!(e.name, "FLASHGATE_KEY_PREFIX");
    let e = Settings::from_lookup(lookup(&[("FLASHGATE_REDIS_URL", "redis://a,redis://b")]))
        .unwrap_err();
    assert_eq!(e.name, "FLASHGATE_REDIS_URL");
    let e = Settings::from_lookup(lookup(&[("FLASHGATE_MAX_INFLIGHT", "0")])).unwrap_err();
    assert_eq!(e.name, "FLASHGATE_MAX_INFLIGHT");
    let e = Settings::from_lookup(lookup(&[("FLASHGATE_CONFIRM_BATCH_MAX", "0")])).unwrap_err();
    assert_eq!(e.name, "FLASHGATE_CONFIRM_BATCH_MAX");
    let e = Settings::from_lookup(lookup(&[("FLASHGATE_CONFIRM_WRITERS", "0")])).unwrap_err();
    assert_eq!(e.name, "FLASHGATE_CONFIRM_WRITERS");
    let e = Settings::from_lookup(lookup(&[("FLASHGATE_RECORD_TTL_SECS", "60")])).unwrap_err();
    assert_eq!(e.name, "FLASHGATE_RECORD_TTL_SECS");
}

#[test]
fn secrets_are_required_and_long_outside_dev() {
    let mut s = Settings::default();
    assert!(s.check_secrets().is_err());
    s.admin_token = Secret::new("short");
    s.jwt_secret = Secret::new("short");
    assert!(s.check_secrets().is_err());
    s.dev_mode = true;
    assert!(s.check_secrets().is_ok());
    s.dev_mode = false;
    s.admin_token = Secret::new("a".repeat(32));
    s.jwt_secret = Secret::new("b".repeat(32));
    assert!(s.check_secrets().is_ok());
}

#[test]
fn secrets_never_print() {
    let s = Secret::new("hunter2-very-secret");
    assert!(!format!("{s:?}").contains("hunter2"));
    let settings = Settings {
        admin_token: s,
        ..Settings::default()
    };
    assert!(!format!("{settings:?}").contains("hunter2"));
}
