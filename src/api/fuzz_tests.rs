//! Fuzzing the request parsing and validation layer with proptest:
//! arbitrary strings, bytes and JSON values thrown at the id parsers, the
//! bearer and JWT checks, the body types, sale validation and the metrics'
//! route templates. Nothing may panic; whatever is accepted must obey the
//! documented rule.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::observe::route_template;
use super::sales::{validate, MAX_HOLD_SECS, MAX_PER_USER_LIMIT, MAX_STOCK};
use super::views::{ExtendInput, ReserveInput, SaleInput};
use crate::auth::{bearer, mint, Auth, AuthError};
use crate::config::{Secret, Settings};
use crate::ids::{IdempotencyKey, SaleId, UserId};

const SECRET: &str = "fuzz-jwt-secret-0123456789abcdef0123456789";

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Strings of every kind: any Unicode, printable ASCII, and the id
/// charsets with the characters that must never pass, around the limits.
fn strings() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,140}",
        "[A-Za-z0-9_-]{0,70}",
        "[A-Za-z0-9_.:-]{120,135}",
        "[A-Za-z0-9_.:{}* \\-]{0,20}",
        "[!-~]{125,131}",
        "[\\x00-\\x20\\x7f]{0,4}",
        Just(String::new()),
    ]
}

fn all_bytes(s: &str, ok: impl Fn(u8) -> bool) -> bool {
    s.bytes().all(ok)
}

fn sale_id_rule(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && all_bytes(s, |b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn user_id_rule(s: &str) -> bool {
    (1..=128).contains(&s.len()) && all_bytes(s, |b| b.is_ascii_graphic())
}

fn idempotency_key_rule(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && all_bytes(s, |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
        })
}

/// Arbitrary JSON values, nested a few levels.
fn json_values() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        strings().prop_map(Value::String),
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]Z".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,16}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Integers around the bounds that matter and beyond, mostly; now and
/// then a value of another type.
fn numbers() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (-3i64..=3).prop_map(Value::from),
        3 => (0i64..=4000).prop_map(Value::from),
        2 => (MAX_STOCK - 2..=MAX_STOCK + 2).prop_map(Value::from),
        2 => (i64::from(MAX_PER_USER_LIMIT) - 2..=i64::from(MAX_PER_USER_LIMIT) + 2)
            .prop_map(Value::from),
        2 => (i64::from(MAX_HOLD_SECS) - 2..=i64::from(MAX_HOLD_SECS) + 2).prop_map(Value::from),
        1 => (0u64..=4_000_000_000).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => prop_oneof![
            any::<f64>().prop_map(Value::from),
            Just(Value::Null),
            Just(json!("5")),
        ],
    ]
}

/// RFC 3339 times mostly; now and then anything.
fn timestamps() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (0i64..=4_102_444_800).prop_map(|s| {
            Value::String(
                chrono::DateTime::from_timestamp(s, 0)
                    .unwrap_or_default()
                    .to_rfc3339(),
            )
        }),
        1 => strings().prop_map(Value::String),
        1 => prop_oneof![Just(Value::Null), any::<i64>().prop_map(Value::from)],
    ]
}

const SALE_FIELDS: [&str; 7] = [
    "stock",
    "per_user_limit",
    "hold_ttl_secs",
    "max_hold_secs",
    "starts_at",
    "ends_at",
    "product_id",
];

/// `PUT /v1/sales/{id}` bodies that are mostly well-formed, so validation
/// (not only deserialization) gets exercised.
fn sale_bodies() -> impl Strategy<Value = Map<String, Value>> {
    let mostly_in = |lo: i64, hi: i64| {
        prop_oneof![
            3 => (lo..=hi).prop_map(Value::from),
            1 => numbers(),
        ]
    };
    let max_hold = i64::from(MAX_HOLD_SECS);
    (
        mostly_in(0, MAX_STOCK),
        mostly_in(1, i64::from(MAX_PER_USER_LIMIT)),
        prop::option::of(mostly_in(1, max_hold)),
        prop::option::of(mostly_in(1, max_hold)),
        prop::option::of(timestamps()),
        prop::option::of(timestamps()),
        prop::option::of(prop_oneof![
            6 => strings().prop_map(Value::String),
            1 => json_values(),
        ]),
        [prop::bool::weighted(0.05), prop::bool::weighted(0.05)],
    )
        .prop_map(
            |(stock, limit, ttl, max_hold, starts, ends, product, drop)| {
                let mut m = Map::new();
                if !drop[0] {
                    m.insert("stock".into(), stock);
                }
                if !drop[1] {
                    m.insert("per_user_limit".into(), limit);
                }
                for (k, v) in [
                    ("hold_ttl_secs", ttl),
                    ("max_hold_secs", max_hold),
                    ("starts_at", starts),
                    ("ends_at", ends),
                    ("product_id", product),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                m
            },
        )
}

fn auth() -> Auth {
    Auth::new(&Settings {
        admin_token: Secret::new("fuzz-admin-token-0123456789abcdef0123456789"),
        jwt_secret: Secret::new(SECRET),
        ..Settings::default()
    })
}

proptest! {
    #![proptest_config(config(2000))]

    /// Each id parser accepts exactly its documented rule, and keeps the
    /// text as given.
    #[test]
    fn ids_accept_exactly_their_rule(s in strings()) {
        match SaleId::parse(&s) {
            Ok(id) => {
                prop_assert!(sale_id_rule(&s), "sale id {s:?} accepted");
                prop_assert_eq!(id.as_str(), s.as_str());
            }
            Err(_) => prop_assert!(!sale_id_rule(&s), "sale id {s:?} refused"),
        }
        match UserId::parse(&s) {
            Ok(id) => {
                prop_assert!(user_id_rule(&s), "user id {s:?} accepted");
                prop_assert_eq!(id.as_str(), s.as_str());
            }
            Err(_) => prop_assert!(!user_id_rule(&s), "user id {s:?} refused"),
        }
        match IdempotencyKey::parse(&s) {
            Ok(k) => {
                prop_assert!(idempotency_key_rule(&s), "Idempotency-Key {s:?} accepted");
                prop_assert_eq!(k.as_str(), s.as_str());
            }
            Err(_) => prop_assert!(!idempotency_key_rule(&s), "Idempotency-Key {s:?} refused"),
        }
    }

    /// Any path gets a template the metrics know; a template is only given
    /// to a path of its shape.
    #[test]
    fn route_templates_are_known_and_match_the_path(
        path in prop_oneof![
            strings(),
            prop::collection::vec(
                prop_oneof![
                    Just("v1".to_string()), Just("sales".to_string()),
                    Just("reservations".to_string()), Just("confirm".to_string()),
                    Just("cancel".to_string()), Just("extend".to_string()),
                    Just("healthz".to_string()), Just("readyz".to_string()),
                    Just("metrics".to_string()), Just("openapi.json".to_string()),
                    Just(String::new()), "[^/]{1,12}",
                ],
                0..9,
            ).prop_map(|segs| format!("/{}", segs.join("/"))),
        ]
    ) {
        let t = route_template(&path);
        let known = [
            "/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/sales",
            "/v1/sales/{sale_id}", "/v1/sales/{sale_id}/reservations",
            "/v1/sales/{sale_id}/reservations/{reservation_id}",
            "/v1/sales/{sale_id}/reservations/{reservation_id}/confirm",
            "/v1/sales/{sale_id}/reservations/{reservation_id}/cancel",
            "/v1/sales/{sale_id}/reservations/{reservation_id}/extend",
            "other",
        ];
        prop_assert!(known.contains(&t), "{path:?} -> {t}");
        if t != "other" {
            let p: Vec<&str> = path.strip_prefix('/').unwrap_or(&path).split('/').collect();
            let tt: Vec<&str> = t[1..].split('/').collect();
            prop_assert_eq!(p.len(), tt.len(), "{:?} -> {}", path, t);
            for (seg, want) in p.iter().zip(&tt) {
                prop_assert!(!seg.is_empty(), "{path:?} -> {t}");
                prop_assert!(want.starts_with('{') || seg == want, "{path:?} -> {t}");
            }
        }
    }

    /// The token of `Authorization: Bearer <token>`: never empty, trimmed,
    /// and only from the Bearer scheme (any case).
    #[test]
    fn bearer_only_yields_a_trimmed_token_of_the_bearer_scheme(
        header in prop_oneof![
            strings(),
            (prop_oneof![Just("Bearer"), Just("bearer"), Just("BEARER"), Just("Basic"), Just("")],
             "[ \\t]{0,3}", strings())
                .prop_map(|(scheme, sep, rest)| format!("{scheme} {sep}{rest}")),
        ],
        missing in any::<bool>(),
    ) {
        let given = (!missing).then_some(header.as_str());
        match bearer(given) {
            Ok(token) => {
                prop_assert!(!token.is_empty());
                prop_assert_eq!(token, token.trim());
                let (scheme, rest) = header.split_once(' ').expect("a space");
                prop_assert!(scheme.eq_ignore_ascii_case("bearer"), "{header:?}");
                prop_assert_eq!(rest.trim(), token);
            }
            Err(e) => prop_assert_eq!(e, AuthError::Missing),
        }
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Whatever bytes come as a body, the body types deserialize or refuse;
    /// they never panic, and what they accept is in range of its type.
    #[test]
    fn bodies_never_panic_on_bytes(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_values().prop_map(|v| v.to_string().into_bytes()),
    ]) {
        if serde_json::from_slice::<ReserveInput>(&bytes).is_ok() {
            prop_assert!(bytes.iter().any(|b| *b == b'{' || *b == b'['), "not a map or sequence");
        }
        let _ = serde_json::from_slice::<ExtendInput>(&bytes);
        if let Ok(input) = serde_json::from_slice::<SaleInput>(&bytes) {
            let _ = validate(&input);
        }
    }

    /// A sale body that deserializes validates to a configuration within
    /// the documented bounds, or is refused naming one of its fields.
    #[test]
    fn accepted_sale_bodies_validate_within_bounds(body in sale_bodies()) {
        let Ok(input) = serde_json::from_value::<SaleInput>(Value::Object(body.clone())) else {
            return Ok(());
        };
        match validate(&input) {
            Ok(c) => {
                prop_assert!((0..=MAX_STOCK).contains(&c.stock), "{body:?}");
                prop_assert!((1..=MAX_PER_USER_LIMIT).contains(&c.per_user_limit));
                let max_ms = i64::from(MAX_HOLD_SECS) * 1000;
                prop_assert!((1000..=max_ms).contains(&c.hold_ttl_ms), "{body:?}");
                prop_assert!((c.hold_ttl_ms..=max_ms).contains(&c.max_hold_ms), "{body:?}");
                prop_assert_eq!(c.hold_ttl_ms % 1000, 0);
                prop_assert_eq!(c.max_hold_ms % 1000, 0);
                if let (Some(s), Some(e)) = (c.starts_ms, c.ends_ms) {
                    prop_assert!(e > s, "{body:?}");
                }
                if let Some(p) = &c.product_id {
                    prop_assert!(!p.is_empty() && p.len() <= 128);
                    prop_assert!(!p.chars().any(char::is_control));
                }
                prop_assert_eq!(Some(c.stock), input.stock);
                prop_assert_eq!(c.per_user_limit, input.per_user_limit);
            }
            Err(ApiError::InvalidRequest { details, .. }) => {
                let field = details["field"].as_str().unwrap_or_default();
                prop_assert!(SALE_FIELDS.contains(&field), "{field:?} for {body:?}");
            }
            Err(other) => prop_assert!(false, "{other:?} for {body:?}"),
        }
    }

    /// A body object with a field its type does not know is always refused,
    /// whatever the rest holds (a client can never smuggle in `user_id`).
    #[test]
    fn an_unknown_field_is_always_refused(
        sale in sale_bodies(),
        quantity in numbers(),
        extend in prop::option::of(numbers()),
        extra in prop_oneof![
            "[a-z_]{1,16}",
            strings(),
            Just("user_id".to_string()),
            Just("sold".to_string()),
            Just("Stock".to_string()),
        ],
        value in json_values(),
    ) {
        let mut bodies = vec![
            ("sale", sale, &SALE_FIELDS[..]),
            ("reserve", Map::from_iter([("quantity".to_string(), quantity)]), &["quantity"][..]),
            ("extend", Map::new(), &["extend_secs"][..]),
        ];
        if let Some(e) = extend {
            bodies[2].1.insert("extend_secs".into(), e);
        }
        for (what, mut body, known) in bodies {
            if known.contains(&extra.as_str()) {
                continue;
            }
            body.insert(extra.clone(), value.clone());
            let text = Value::Object(body.clone()).to_string();
            let refused = match what {
                "sale" => serde_json::from_str::<SaleInput>(&text).is_err(),
                "reserve" => serde_json::from_str::<ReserveInput>(&text).is_err(),
                _ => serde_json::from_str::<ExtendInput>(&text).is_err(),
            };
            prop_assert!(refused, "{what} accepted {text}");
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// No token is a buyer's unless it is an HS256 JWT signed with the
    /// secret: arbitrary strings and forged tokens (any header, `alg:
    /// none` included, any claims, any signature) are refused, never a
    /// panic.
    #[test]
    fn arbitrary_and_forged_tokens_are_refused(
        raw in strings(),
        header in prop_oneof![
            json_values(),
            Just(json!({"alg": "none", "typ": "JWT"})),
            Just(json!({"alg": "HS256", "typ": "JWT"})),
            Just(json!({"alg": "HS512"})),
            Just(json!({"alg": "RS256"})),
        ],
        claims in prop_oneof![
            json_values(),
            strings().prop_map(|sub| json!({"sub": sub, "exp": 4_102_444_800u64})),
        ],
        sig in prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 0..48)],
    ) {
        let a = auth();
        prop_assert!(a.buyer(&raw).is_err(), "{raw:?}");
        prop_assert!(!a.is_admin(&raw));
        let forged = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(&sig),
        );
        prop_assert!(a.buyer(&forged).is_err(), "{forged}");
    }

    /// A token signed with the secret names its `sub` as the buyer exactly
    /// when that `sub` is a valid user id.
    #[test]
    fn signed_tokens_name_their_subject_when_it_is_valid(sub in strings()) {
        let token = mint(SECRET, &sub, 60).expect("mint");
        match auth().buyer(&token) {
            Ok(user) => {
                prop_assert!(user_id_rule(&sub), "{sub:?} accepted");
                prop_assert_eq!(user.as_str(), sub.as_str());
            }
            Err(e) => {
                prop_assert_eq!(e, AuthError::BadSubject, "{:?}", sub);
                prop_assert!(!user_id_rule(&sub), "{sub:?} refused");
            }
        }
    }
}
