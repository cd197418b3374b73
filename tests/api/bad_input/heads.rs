//! Oversized and malformed request heads: refused with a 4xx; the sale is
//! untouched and the server keeps serving.

use super::{run, spawn, Case};
use crate::support::*;

/// Request headers as they go over a raw socket.
type Headers<'a> = Vec<(&'a str, &'a [u8])>;

/// What flashgate answers a head over 32 KiB.
const TOO_BIG_HEAD: (u16, &str) = (431, "invalid_request");

#[tokio::test]
async fn oversized_and_malformed_heads() {
    let app = spawn().await;
    let sale = app.sale(5, 2, 300).await;
    let before = counters(&app.view(&sale).await);
    let path = format!("/v1/sales/{sale}/reservations");
    let buyer = format!("Bearer {}", token("ann"));
    let auth: (&str, &[u8]) = ("Authorization", buyer.as_bytes());
    let json_ct: (&str, &[u8]) = ("Content-Type", b"application/json");
    let reserve = br#"{"quantity":1}"#;

    let pad = vec![b'x'; 64 * 1024];
    let big_auth = format!("Bearer {}", "a".repeat(64 * 1024));
    let many: Vec<(String, Vec<u8>)> = (0..64)
        .map(|i| (format!("X-Pad-{i}"), vec![b'y'; 1000]))
        .collect();
    let mut many_headers: Headers = many
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    many_headers.extend([auth, json_ct]);
    let heads: Vec<(&str, Headers)> = vec![
        (
            "a 64 KiB header",
            vec![auth, json_ct, ("X-Pad", pad.as_slice())],
        ),
        (
            "a 64 KiB Authorization header",
            vec![("Authorization", big_auth.as_bytes()), json_ct],
        ),
        ("64 headers of 1,000 bytes", many_headers),
    ];
    let cases = heads
        .into_iter()
        .map(|(label, headers)| Case::raw(label, "POST", &path, &headers, reserve, TOO_BIG_HEAD))
        .collect();
    run(&app, cases).await;

    // Past actix's own 128 KiB head buffer the HTTP layer answers 431
    // before any application code runs (see the report in bad_input's
    // module docs): the status is right; the server keeps serving.
    let huge = vec![b'x'; 200 * 1024];
    let (s, _) = raw(
        app.socket_addr(),
        "POST",
        path.as_bytes(),
        &[auth, json_ct, ("X-Pad", &huge)],
        reserve,
    )
    .await;
    assert_eq!(s, 431, "a 200 KiB head");
    // A head that is not HTTP at all: 400 from the HTTP layer.
    let (s, _) = raw(app.socket_addr(), "GET", b"/v1/sales/x y", &[], b"").await;
    assert_eq!(s, 400, "a space in the request target");

    assert_eq!(
        counters(&app.view(&sale).await),
        before,
        "a refused request moved a unit"
    );
    let (s, v) = app.reserve(&sale, "ann", 1, None).await;
    assert_eq!(s, 201, "still serving: {v}");
}
