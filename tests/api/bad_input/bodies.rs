//! The reserve route: bodies, quantities, sizes, content types,
//! Idempotency-Keys and tokens it refuses.

use super::tokens::bad_tokens;
use super::{run, spawn, Case, INVALID, TOO_LARGE, UNAUTHORIZED};
use crate::support::*;

/// Quantities a reserve refuses, each sent as `{"quantity":Q}`: not an
/// integer in JSON (a string, 1.5, 1.0, 1e0, true, null, an array, an
/// object), not positive, over the cap (2) or the maximum (10,000), beyond
/// u32 or u64, beyond JSON's numbers.
const BAD_QUANTITIES: &str = r#""1" 1.5 1.0 1e0 true null [1] {"n":1} 0 -1 -0.0 3 10001
    4294967295 4294967296 99999999999999999999999999 1e400 NaN"#;

/// Bodies that are not a reserve (400 `invalid_request`).
fn bad_bodies() -> Vec<(String, Vec<u8>)> {
    let deep_arrays = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_in_field = format!(
        r#"{{"quantity": {}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(2000), "}".repeat(2000));
    let table: Vec<(&str, &[u8])> = vec![
        ("empty body", b""),
        ("whitespace body", b"   \n "),
        ("truncated", br#"{"quantity":"#),
        ("truncated string", br#"{"quantity":1,"x":"abc"#),
        ("not JSON", b"quantity=1"),
        ("unquoted key", b"{quantity:1}"),
        ("trailing comma", br#"{"quantity":1,}"#),
        ("trailing garbage", br#"{"quantity":1}}"#),
        ("two documents", br#"{"quantity":1}{"quantity":1}"#),
        ("single quotes", b"{'quantity':1}"),
        ("a NUL byte", b"{\"quantity\":1\0}"),
        ("JSON null", b"null"),
        // (`[1]` alone is read as `{"quantity":1}`: serde's sequence form
        // of a struct; harmless, the quantity is still checked.)
        ("JSON array of two", b"[1,2]"),
        ("JSON array over the cap", b"[3]"),
        ("JSON array zero", b"[0]"),
        ("JSON string", br#""quantity""#),
        ("JSON number", b"1"),
        (
            "unknown field user_id",
            br#"{"quantity":1,"user_id":"bob"}"#,
        ),
        ("unknown field alone", br#"{"sale_id":"x"}"#),
        ("differently cased field", br#"{"Quantity":1}"#),
        ("duplicate field", br#"{"quantity":1,"quantity":1}"#),
        (
            "invalid UTF-8 in a string",
            b"{\"quantity\":1,\"x\":\"\xff\xfe\"}",
        ),
        ("invalid UTF-8 bare", b"\xff\xfe\xfd"),
        ("UTF-16 BOM", b"\xfe\xff\x00{\x00}"),
        ("lone surrogate escape", br#"{"quantity":1,"x":"\ud800"}"#),
    ];
    let quantities = BAD_QUANTITIES.split_whitespace().map(|q| {
        let body = format!(r#"{{"quantity":{q}}}"#);
        (format!("quantity {q}"), body.into_bytes())
    });
    let deep = [
        ("5,000 nested arrays", deep_arrays.into_bytes()),
        (
            "5,000 nested arrays in the field",
            deep_in_field.into_bytes(),
        ),
        ("2,000 nested objects", deep_objects.into_bytes()),
    ];
    table
        .into_iter()
        .map(|(l, b)| (l.to_string(), b.to_vec()))
        .chain(quantities)
        .chain(deep.map(|(l, b)| (l.to_string(), b)))
        .collect()
}

/// Content types that are not JSON (400), None: no Content-Type.
const BAD_CONTENT_TYPES: &[(&str, Option<&str>)] = &[
    ("text/plain", Some("text/plain")),
    ("form", Some("application/x-www-form-urlencoded")),
    ("xml", Some("application/xml")),
    ("garbage content type", Some("!!!")),
    ("no content type", None),
];

/// Idempotency-Keys that cannot be one (400): empty, too long, bad
/// characters, not ASCII.
fn bad_keys() -> Vec<(&'static str, Vec<u8>)> {
    let table: &[(&str, &[u8])] = &[
        ("empty key", b""),
        ("key with a space", b"a b"),
        ("key with braces", b"{k}"),
        ("key with a star", b"*"),
        ("key with a slash", b"a/b"),
        ("non-ASCII key", b"k\xc3\xa9"),
        ("invalid UTF-8 key", b"k\xff"),
    ];
    let mut keys: Vec<_> = table.iter().map(|(l, k)| (*l, k.to_vec())).collect();
    keys.push(("129-char key", vec![b'k'; 129]));
    keys
}

/// Bodies, quantities, headers and content types the reserve route refuses.
#[tokio::test]
async fn reserve_refuses_bad_bodies_without_moving_a_unit() {
    let app = spawn().await;
    let sale = app.sale(10, 2, 300).await;
    // Non-zero counters, so "unchanged" means something.
    app.hold(&sale, "ann", 1).await;
    app.buy(&sale, "bob", 1).await;
    let before = counters(&app.view(&sale).await);
    assert_eq!(before, (10, 1, 1, 8));

    let path = format!("/v1/sales/{sale}/reservations");
    let url = app.url(&path);
    let buyer = format!("Bearer {}", token("cid"));
    let auth: (&str, &[u8]) = ("Authorization", buyer.as_bytes());
    let json_ct: (&str, &[u8]) = ("Content-Type", b"application/json");
    let post = |body: Vec<u8>| {
        app.client
            .post(&url)
            .header("authorization", &buyer)
            .header("content-type", "application/json")
            .body(body)
    };
    let mut cases = Vec::new();
    for (label, b) in bad_bodies() {
        cases.push(Case::http(label, post(b), INVALID));
    }

    // Over the 16 KiB body limit: 413, whether the length is declared,
    // chunked, or only claimed.
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let padded = format!(r#"{{"quantity":1,"pad":"{}"}}"#, "x".repeat(17 * 1024));
    for (label, b) in [
        ("10,000 nested arrays (20 KB)", nested.into_bytes()),
        ("a 17 KiB body", padded.into_bytes()),
        ("a 4 MiB body", vec![b' '; 4 * 1024 * 1024]),
    ] {
        cases.push(Case::http(label, post(b), TOO_LARGE));
    }
    let mut chunked = Vec::new();
    for _ in 0..64 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b' '; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    cases.push(Case::raw(
        "a chunked 64 KiB body",
        "POST",
        &path,
        &[auth, json_ct, ("Transfer-Encoding", b"chunked")],
        &chunked,
        TOO_LARGE,
    ));
    cases.push(Case::raw(
        "Content-Length: 10^12 with a small body",
        "POST",
        &path,
        &[auth, json_ct, ("Content-Length", b"1000000000000")],
        br#"{"quantity":1}"#,
        TOO_LARGE,
    ));

    for (label, ct) in BAD_CONTENT_TYPES {
        let mut req = app.client.post(&url).header("authorization", &buyer);
        if let Some(ct) = ct {
            req = req.header("content-type", *ct);
        }
        cases.push(Case::http(*label, req.body(r#"{"quantity":1}"#), INVALID));
    }
    for (label, key) in bad_keys() {
        cases.push(Case::raw(
            label,
            "POST",
            &path,
            &[auth, json_ct, ("Idempotency-Key", &key)],
            br#"{"quantity":1}"#,
            INVALID,
        ));
    }

    // Tokens: a buyer route refuses everything but a valid buyer JWT.
    for (label, auth) in bad_tokens() {
        let mut req = app
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(r#"{"quantity":1}"#);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        cases.push(Case::http(label, req, UNAUTHORIZED));
    }
    cases.push(Case::raw(
        "invalid UTF-8 in Authorization",
        "POST",
        &path,
        &[("Authorization", b"Bearer \xff\xfe"), json_ct],
        br#"{"quantity":1}"#,
        UNAUTHORIZED,
    ));
    run(&app, cases).await;
    assert_eq!(
        counters(&app.view(&sale).await),
        before,
        "a refused request moved a unit"
    );
}
