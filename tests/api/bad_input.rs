//! Hostile and broken input: every malformed, oversized, mistyped or
//! unauthenticated request gets its documented 4xx with the contract's JSON
//! error body, and none of them moves a unit of the sale.
//!
//! Requests that reqwest would refuse to send or would normalise (`..` in a
//! path, raw non-UTF-8 bytes, a lying Content-Length) go over a raw socket.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// The app, without the per-buyer rate limit: these tests send hundreds
/// of refused requests as one buyer, and must see each one's own answer.
async fn spawn() -> TestApp {
    Spawn::new()
        .await
        .with(|s| s.rate.per_user_per_sec = 0)
        .start()
        .await
}

/// One raw HTTP/1.1 exchange (`Connection: close`): status and body bytes.
/// The server may close early (e.g. a head it will not read): whatever it
/// answered before closing is what counts.
async fn raw(
    app: &TestApp,
    method: &str,
    path: &[u8],
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let addr = app.socket_addr();
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(path);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    req.extend_from_slice(addr.as_bytes());
    req.extend_from_slice(b"\r\nConnection: close\r\n");
    let mut has_length = false;
    for (name, value) in headers {
        has_length |= name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding");
        req.extend_from_slice(name.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
    }
    if !has_length && (method == "POST" || method == "PUT" || !body.is_empty()) {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // The server may stop reading (and reset) once it has seen enough.
        let _ = s.write_all(&req).await;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("the server answered (or closed) within 20 s");
    parse_response(&out)
}

fn parse_response(out: &[u8]) -> (u16, Vec<u8>) {
    let Some(split) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        panic!(
            "no HTTP response head in {:?}",
            String::from_utf8_lossy(out)
        );
    };
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let mut body = out[split + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                break;
            }
            let start = eol + 2;
            let end = (start + size).min(rest.len());
            decoded.extend_from_slice(&rest[start..end]);
            rest = &rest[(end + 2).min(rest.len())..];
        }
        body = decoded;
    }
    (status, body)
}

/// Collects every mismatch so one run shows them all.
#[derive(Default)]
struct Report(Vec<String>);

impl Report {
    /// The answer must be `status` with the contract's error body and `code`.
    fn check(&mut self, label: &str, got: (u16, Vec<u8>), status: u16, code: &str) {
        let (s, bytes) = got;
        let text = String::from_utf8_lossy(&bytes);
        let shown: String = text.chars().take(200).collect();
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            self.0.push(format!(
                "{label}: {s}, body not JSON: {shown:?} (want {status} {code})"
            ));
            return;
        };
        let e = &v["error"];
        let shape = e["message"].is_string() && e["details"].is_object() && e["code"].is_string();
        if !shape {
            self.0
                .push(format!("{label}: {s}, not the error shape: {shown}"));
        } else if s != status || e["code"] != code {
            self.0.push(format!(
                "{label}: got {s} {}, want {status} {code}: {shown}",
                e["code"]
            ));
        }
    }

    fn check_json(&mut self, label: &str, r: (u16, Value), status: u16, code: &str) {
        let bytes = serde_json::to_vec(&r.1).expect("json");
        self.check(label, (r.0, bytes), status, code);
    }

    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} mismatches:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Vec<u8>) {
    let r = req.send().await.expect("send");
    let s = r.status().as_u16();
    (s, r.bytes().await.expect("body").to_vec())
}

fn jwt(alg: jsonwebtoken::Algorithm, secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("mint")
}

/// Every token a buyer route must refuse with 401 `unauthorized`.
fn bad_tokens() -> Vec<(&'static str, Option<String>)> {
    let now = jsonwebtoken::get_current_timestamp();
    let hs256 = jsonwebtoken::Algorithm::HS256;
    let good = token("ann");
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    vec![
        ("no Authorization header", None),
        ("empty bearer", Some("Bearer ".into())),
        ("Basic scheme", Some("Basic YW5uOnB3".into())),
        ("no scheme", Some(good.clone())),
        ("garbage token", Some("Bearer garbage".into())),
        ("three dots", Some("Bearer ...".into())),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                jwt(hs256, JWT_SECRET, json!({"sub": "ann", "exp": now - 600}))
            )),
        ),
        (
            "wrong signature",
            Some(format!(
                "Bearer {}",
                jwt(
                    hs256,
                    "another-secret-0123456789abcdef0123456789",
                    json!({"sub": "ann", "exp": now + 600})
                )
            )),
        ),
        ("tampered signature", Some(format!("Bearer {tampered}"))),
        (
            "alg none",
            Some(format!(
                "Bearer {}.{}.",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
                URL_SAFE_NO_PAD
                    .encode(format!(r#"{{"sub":"ann","exp":{}}}"#, now + 600).as_bytes())
            )),
        ),
        (
            "alg HS512",
            Some(format!(
                "Bearer {}",
                jwt(
                    jsonwebtoken::Algorithm::HS512,
                    JWT_SECRET,
                    json!({"sub": "ann", "exp": now + 600})
                )
            )),
        ),
        (
            "no exp",
            Some(format!(
                "Bearer {}",
                jwt(hs256, JWT_SECRET, json!({"sub": "ann"}))
            )),
        ),
        (
            "no sub",
            Some(format!(
                "Bearer {}",
                jwt(hs256, JWT_SECRET, json!({"exp": now + 600}))
            )),
        ),
        (
            "sub with a space",
            Some(format!(
                "Bearer {}",
                jwt(hs256, JWT_SECRET, json!({"sub": "a b", "exp": now + 600}))
            )),
        ),
        (
            "sub of 300 chars",
            Some(format!(
                "Bearer {}",
                jwt(
                    hs256,
                    JWT_SECRET,
                    json!({"sub": "u".repeat(300), "exp": now + 600})
                )
            )),
        ),
        (
            "sub not a string",
            Some(format!(
                "Bearer {}",
                jwt(hs256, JWT_SECRET, json!({"sub": 42, "exp": now + 600}))
            )),
        ),
        (
            "not valid yet (nbf in a minute)",
            Some(format!(
                "Bearer {}",
                jwt(
                    hs256,
                    JWT_SECRET,
                    json!({"sub": "ann", "exp": now + 600, "nbf": now + 60})
                )
            )),
        ),
        (
            "an unknown critical header extension",
            Some(format!(
                "Bearer {}",
                jsonwebtoken::encode(
                    &jsonwebtoken::Header {
                        crit: Some(vec!["x-unknown".into()]),
                        ..jsonwebtoken::Header::new(hs256)
                    },
                    &json!({"sub": "ann", "exp": now + 600, "x-unknown": true}),
                    &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
                )
                .expect("mint")
            )),
        ),
        ("the admin token", Some(format!("Bearer {ADMIN}"))),
        (
            "an 8 KiB token",
            Some(format!("Bearer {}", "a".repeat(8 * 1024))),
        ),
    ]
}

/// Bodies, quantities, headers and content types the reserve route refuses.
#[tokio::test]
async fn reserve_refuses_bad_bodies_without_moving_a_unit() {
    let app = spawn().await;
    let sale = app.sale(10, 2, 300).await;
    // Non-zero counters, so "unchanged" means something.
    let (s, v) = app.reserve(&sale, "ann", 1, None).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = app.reserve(&sale, "bob", 1, None).await;
    assert_eq!(s, 201, "{v}");
    let rid = v["reservation_id"].as_str().expect("rid").to_string();
    assert_eq!(app.act(&sale, &rid, "confirm", Some("bob")).await.0, 200);
    let before = counters(&app.view(&sale).await);
    assert_eq!(before, (10, 1, 1, 8));

    let path = format!("/v1/sales/{sale}/reservations");
    let url = app.url(&path);
    let buyer = format!("Bearer {}", token("cid"));
    let mut report = Report::default();
    let post = |body: Vec<u8>| {
        app.client
            .post(&url)
            .header("authorization", &buyer)
            .header("content-type", "application/json")
            .body(body)
    };

    let deep_arrays = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_in_field = format!(
        r#"{{"quantity": {}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(2000), "}".repeat(2000));
    let bad_bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", b"".to_vec()),
        ("whitespace body", b"   \n ".to_vec()),
        ("truncated", br#"{"quantity":"#.to_vec()),
        ("truncated string", br#"{"quantity":1,"x":"abc"#.to_vec()),
        ("not JSON", b"quantity=1".to_vec()),
        ("unquoted key", b"{quantity:1}".to_vec()),
        ("trailing comma", br#"{"quantity":1,}"#.to_vec()),
        ("trailing garbage", br#"{"quantity":1}}"#.to_vec()),
        ("two documents", br#"{"quantity":1}{"quantity":1}"#.to_vec()),
        ("single quotes", b"{'quantity':1}".to_vec()),
        ("a NUL byte", b"{\"quantity\":1\0}".to_vec()),
        ("JSON null", b"null".to_vec()),
        // (`[1]` alone is read as `{"quantity":1}`: serde's sequence form
        // of a struct; harmless, the quantity is still checked.)
        ("JSON array of two", b"[1,2]".to_vec()),
        ("JSON array over the cap", b"[3]".to_vec()),
        ("JSON array zero", b"[0]".to_vec()),
        ("JSON string", br#""quantity""#.to_vec()),
        ("JSON number", b"1".to_vec()),
        ("quantity as string", br#"{"quantity":"1"}"#.to_vec()),
        ("quantity as float", br#"{"quantity":1.5}"#.to_vec()),
        ("quantity as 1.0", br#"{"quantity":1.0}"#.to_vec()),
        ("quantity as 1e0", br#"{"quantity":1e0}"#.to_vec()),
        ("quantity true", br#"{"quantity":true}"#.to_vec()),
        ("quantity null", br#"{"quantity":null}"#.to_vec()),
        ("quantity array", br#"{"quantity":[1]}"#.to_vec()),
        ("quantity object", br#"{"quantity":{"n":1}}"#.to_vec()),
        ("quantity zero", br#"{"quantity":0}"#.to_vec()),
        ("quantity negative", br#"{"quantity":-1}"#.to_vec()),
        ("quantity -0", br#"{"quantity":-0.0}"#.to_vec()),
        ("quantity over the cap", br#"{"quantity":3}"#.to_vec()),
        (
            "quantity over the maximum",
            br#"{"quantity":10001}"#.to_vec(),
        ),
        ("quantity u32::MAX", br#"{"quantity":4294967295}"#.to_vec()),
        (
            "quantity u32::MAX + 1",
            br#"{"quantity":4294967296}"#.to_vec(),
        ),
        (
            "quantity u64 overflow",
            br#"{"quantity":99999999999999999999999999}"#.to_vec(),
        ),
        ("quantity 1e400", br#"{"quantity":1e400}"#.to_vec()),
        ("quantity NaN", br#"{"quantity":NaN}"#.to_vec()),
        (
            "unknown field user_id",
            br#"{"quantity":1,"user_id":"bob"}"#.to_vec(),
        ),
        ("unknown field alone", br#"{"sale_id":"x"}"#.to_vec()),
        ("differently cased field", br#"{"Quantity":1}"#.to_vec()),
        (
            "duplicate field",
            br#"{"quantity":1,"quantity":1}"#.to_vec(),
        ),
        (
            "invalid UTF-8 in a string",
            b"{\"quantity\":1,\"x\":\"\xff\xfe\"}".to_vec(),
        ),
        ("invalid UTF-8 bare", b"\xff\xfe\xfd".to_vec()),
        ("UTF-16 BOM", b"\xfe\xff\x00{\x00}".to_vec()),
        (
            "lone surrogate escape",
            br#"{"quantity":1,"x":"\ud800"}"#.to_vec(),
        ),
        ("5,000 nested arrays", deep_arrays.into_bytes()),
        (
            "5,000 nested arrays in the field",
            deep_in_field.into_bytes(),
        ),
        ("2,000 nested objects", deep_objects.into_bytes()),
    ];
    for (label, b) in bad_bodies {
        report.check(label, send(post(b)).await, 400, "invalid_request");
    }

    // Over the 16 KiB body limit: 413, whether the length is declared,
    // chunked, or only claimed.
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    report.check(
        "10,000 nested arrays (20 KB)",
        send(post(nested.into_bytes())).await,
        413,
        "payload_too_large",
    );
    let padded = format!(r#"{{"quantity":1,"pad":"{}"}}"#, "x".repeat(17 * 1024));
    report.check(
        "a 17 KiB body",
        send(post(padded.into_bytes())).await,
        413,
        "payload_too_large",
    );
    report.check(
        "a 4 MiB body",
        send(post(vec![b' '; 4 * 1024 * 1024])).await,
        413,
        "payload_too_large",
    );
    let mut chunked = Vec::new();
    for _ in 0..64 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b' '; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    report.check(
        "a chunked 64 KiB body",
        raw(
            &app,
            "POST",
            path.as_bytes(),
            &[
                ("Authorization", buyer.as_bytes()),
                ("Content-Type", b"application/json"),
                ("Transfer-Encoding", b"chunked"),
            ],
            &chunked,
        )
        .await,
        413,
        "payload_too_large",
    );
    report.check(
        "Content-Length: 10^12 with a small body",
        raw(
            &app,
            "POST",
            path.as_bytes(),
            &[
                ("Authorization", buyer.as_bytes()),
                ("Content-Type", b"application/json"),
                ("Content-Length", b"1000000000000"),
            ],
            br#"{"quantity":1}"#,
        )
        .await,
        413,
        "payload_too_large",
    );

    // Content types.
    for (label, ct) in [
        ("text/plain", "text/plain"),
        ("form", "application/x-www-form-urlencoded"),
        ("xml", "application/xml"),
        ("garbage content type", "!!!"),
    ] {
        report.check(
            label,
            send(
                app.client
                    .post(&url)
                    .header("authorization", &buyer)
                    .header("content-type", ct)
                    .body(r#"{"quantity":1}"#),
            )
            .await,
            400,
            "invalid_request",
        );
    }
    report.check(
        "no content type",
        send(
            app.client
                .post(&url)
                .header("authorization", &buyer)
                .body(r#"{"quantity":1}"#),
        )
        .await,
        400,
        "invalid_request",
    );

    // Idempotency-Key: empty, too long, bad characters, not ASCII.
    let long_key = "k".repeat(129);
    for (label, key) in [
        ("empty key", &b""[..]),
        ("129-char key", long_key.as_bytes()),
        ("key with a space", b"a b"),
        ("key with braces", b"{k}"),
        ("key with a star", b"*"),
        ("key with a slash", b"a/b"),
        ("non-ASCII key", b"k\xc3\xa9"),
        ("invalid UTF-8 key", b"k\xff"),
    ] {
        report.check(
            label,
            raw(
                &app,
                "POST",
                path.as_bytes(),
                &[
                    ("Authorization", buyer.as_bytes()),
                    ("Content-Type", b"application/json"),
                    ("Idempotency-Key", key),
                ],
                br#"{"quantity":1}"#,
            )
            .await,
            400,
            "invalid_request",
        );
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
        report.check(label, send(req).await, 401, "unauthorized");
    }
    report.check(
        "invalid UTF-8 in Authorization",
        raw(
            &app,
            "POST",
            path.as_bytes(),
            &[
                ("Authorization", b"Bearer \xff\xfe"),
                ("Content-Type", b"application/json"),
            ],
            br#"{"quantity":1}"#,
        )
        .await,
        401,
        "unauthorized",
    );
    report.finish();
    assert_eq!(
        counters(&app.view(&sale).await),
        before,
        "a refused request moved a unit"
    );
}

/// Odd ids in the path, on every route: 400 `invalid_request` for an id
/// that cannot be one, 404 where no route matches.
#[tokio::test]
async fn odd_ids_in_paths_are_refused() {
    let app = spawn().await;
    let sale = app.sale(5, 2, 300).await;
    let (s, v) = app.reserve(&sale, "ann", 1, None).await;
    assert_eq!(s, 201, "{v}");
    let rid = v["reservation_id"].as_str().expect("rid").to_string();
    let before = counters(&app.view(&sale).await);
    let buyer = format!("Bearer {}", token("ann"));
    let admin = format!("Bearer {ADMIN}");
    let json_ct: (&str, &[u8]) = ("Content-Type", b"application/json");
    let mut report = Report::default();

    let long = "a".repeat(300);
    let odd_ids: Vec<(&str, String)> = vec![
        ("{", "{".into()),
        ("}", "}".into()),
        ("{x}", "{x}".into()),
        (":", ":".into()),
        ("a:b", "a:b".into()),
        ("*", "*".into()),
        ("..", "..".into()),
        (".", ".".into()),
        ("65 chars", "a".repeat(65)),
        ("300 chars", long.clone()),
        ("%7Bx%7D (encoded braces)", "%7Bx%7D".into()),
        ("%3A (encoded colon)", "%3A".into()),
        ("%2A (encoded star)", "%2A".into()),
        ("%2E%2E (encoded dots)", "%2E%2E".into()),
        ("%2F (encoded slash)", "a%2Fb".into()),
        ("%00 (NUL)", "a%00b".into()),
        ("%0A (newline)", "a%0Ab".into()),
        ("%20 (space)", "a%20b".into()),
        ("%FF (invalid UTF-8)", "a%FFb".into()),
        ("%C3%A9 (é)", "%C3%A9".into()),
        ("a bare %", "a%".into()),
        ("%zz", "%zz".into()),
        ("%25 (encoded %)", "a%25b".into()),
    ];
    for (label, id) in &odd_ids {
        let p = format!("/v1/sales/{id}");
        report.check(
            &format!("GET sale {label}"),
            raw(&app, "GET", p.as_bytes(), &[], b"").await,
            400,
            "invalid_request",
        );
        report.check(
            &format!("PUT sale {label}"),
            raw(
                &app,
                "PUT",
                p.as_bytes(),
                &[("Authorization", admin.as_bytes()), json_ct],
                br#"{"stock":1,"per_user_limit":1}"#,
            )
            .await,
            400,
            "invalid_request",
        );
        report.check(
            &format!("reserve on sale {label}"),
            raw(
                &app,
                "POST",
                format!("{p}/reservations").as_bytes(),
                &[("Authorization", buyer.as_bytes()), json_ct],
                br#"{"quantity":1}"#,
            )
            .await,
            400,
            "invalid_request",
        );
        for action in ["", "/confirm", "/cancel", "/extend"] {
            let method = if action.is_empty() { "GET" } else { "POST" };
            report.check(
                &format!("{method} reservation{action} on sale {label}"),
                raw(
                    &app,
                    method,
                    format!("{p}/reservations/{rid}{action}").as_bytes(),
                    &[("Authorization", buyer.as_bytes())],
                    b"",
                )
                .await,
                400,
                "invalid_request",
            );
            report.check(
                &format!("{method} reservation {label}{action}"),
                raw(
                    &app,
                    method,
                    format!("/v1/sales/{sale}/reservations/{id}{action}").as_bytes(),
                    &[("Authorization", buyer.as_bytes())],
                    b"",
                )
                .await,
                400,
                "invalid_request",
            );
        }
    }
    // Not UUIDs.
    for (label, id) in [
        ("short hex", "1234"),
        (
            "uuid with a bad char",
            "67e55044-10b1-426f-9247-bb680e5fe0cz",
        ),
        ("uuid too long", "67e55044-10b1-426f-9247-bb680e5fe0c81"),
        ("sql", "1%27%20OR%20%271%27%3D%271"),
    ] {
        report.check(
            &format!("GET reservation {label}"),
            raw(
                &app,
                "GET",
                format!("/v1/sales/{sale}/reservations/{id}").as_bytes(),
                &[("Authorization", buyer.as_bytes())],
                b"",
            )
            .await,
            400,
            "invalid_request",
        );
    }
    // Empty ids: no route matches.
    for (label, method, p) in [
        (
            "empty sale id",
            "GET",
            "/v1/sales//reservations".to_string(),
        ),
        (
            "empty reservation id",
            "POST",
            format!("/v1/sales/{sale}/reservations//confirm"),
        ),
        ("trailing slash", "GET", format!("/v1/sales/{sale}/")),
    ] {
        report.check(
            label,
            raw(
                &app,
                method,
                p.as_bytes(),
                &[("Authorization", buyer.as_bytes())],
                b"",
            )
            .await,
            404,
            "not_found",
        );
    }
    // A sale id that is valid but unknown, a reservation of another sale.
    report.check(
        "unknown sale",
        raw(&app, "GET", b"/v1/sales/no-such-sale-x", &[], b"").await,
        404,
        "sale_not_found",
    );
    let other = app.sale(1, 1, 300).await;
    report.check(
        "a reservation looked up under another sale",
        raw(
            &app,
            "GET",
            format!("/v1/sales/{other}/reservations/{rid}").as_bytes(),
            &[("Authorization", buyer.as_bytes())],
            b"",
        )
        .await,
        404,
        "reservation_not_found",
    );
    report.finish();
    assert_eq!(
        counters(&app.view(&sale).await),
        before,
        "a refused request moved a unit"
    );
    let v = app.view(&other).await;
    assert_eq!((v["sold"].as_i64(), v["held"].as_i64()), (Some(0), Some(0)));
}

/// Tokens on every route: buyer routes want a buyer, admin routes the admin
/// token, and reservation routes either (the owner or the admin).
#[tokio::test]
async fn wrong_tokens_on_every_route() {
    let app = spawn().await;
    let sale = app.sale(5, 2, 300).await;
    let (s, v) = app.reserve(&sale, "ann", 1, None).await;
    assert_eq!(s, 201, "{v}");
    let rid = v["reservation_id"].as_str().expect("rid").to_string();
    let before = counters(&app.view(&sale).await);
    let mut report = Report::default();
    let sale_cfg = json!({"stock": 1, "per_user_limit": 1});

    // A buyer token (or anything but the admin token) on admin routes.
    let mut admin_bad = bad_tokens();
    admin_bad.retain(|(l, _)| *l != "the admin token");
    admin_bad.push((
        "a valid buyer token",
        Some(format!("Bearer {}", token("ann"))),
    ));
    admin_bad.push((
        "the admin token with a suffix",
        Some(format!("Bearer {ADMIN}x")),
    ));
    admin_bad.push((
        "the admin token truncated",
        Some(format!("Bearer {}", &ADMIN[..ADMIN.len() - 1])),
    ));
    admin_bad.push((
        "the admin token uppercased",
        Some(format!("Bearer {}", ADMIN.to_uppercase())),
    ));
    for (label, auth) in &admin_bad {
        let with = |r: reqwest::RequestBuilder| match auth {
            Some(a) => r.header("authorization", a),
            None => r,
        };
        report.check(
            &format!("PUT sale: {label}"),
            send(with(
                app.client
                    .put(app.url(&format!("/v1/sales/{sale}")))
                    .json(&sale_cfg),
            ))
            .await,
            401,
            "unauthorized",
        );
        report.check(
            &format!("GET /v1/sales: {label}"),
            send(with(app.client.get(app.url("/v1/sales")))).await,
            401,
            "unauthorized",
        );
        if *label == "a valid buyer token" {
            continue; // the owner may act on its reservation
        }
        for action in ["", "/confirm", "/cancel", "/extend"] {
            let u = app.url(&format!("/v1/sales/{sale}/reservations/{rid}{action}"));
            let r = if action.is_empty() {
                app.client.get(u)
            } else {
                app.client.post(u)
            };
            report.check(
                &format!("reservation{action}: {label}"),
                send(with(r)).await,
                401,
                "unauthorized",
            );
        }
    }
    // The admin token on the reserve route: reserve needs a buyer.
    let r = app
        .client
        .post(app.url(&format!("/v1/sales/{sale}/reservations")))
        .bearer_auth(ADMIN)
        .json(&json!({"quantity": 1}));
    report.check("admin token on reserve", send(r).await, 401, "unauthorized");
    // Another buyer on someone's reservation: 403, nothing changes.
    for action in ["confirm", "cancel", "extend"] {
        report.check_json(
            &format!("{action} by another buyer"),
            app.act(&sale, &rid, action, Some("eve")).await,
            403,
            "forbidden",
        );
    }
    report.check_json(
        "GET by another buyer",
        app.get_reservation(&sale, &rid, Some("eve")).await,
        403,
        "forbidden",
    );
    report.finish();
    let v = app.view(&sale).await;
    assert_eq!(counters(&v), before, "a refused request moved a unit");
    assert_eq!(v["per_user_limit"], 2, "a refused PUT changed the sale");
    let (s, v) = app.get_reservation(&sale, &rid, Some("ann")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("held")), "{v}");
}

/// Sale configuration and extend bodies: wrong types, out-of-range values,
/// unknown fields; the sale keeps its configuration.
#[tokio::test]
async fn bad_admin_and_extend_bodies() {
    let app = spawn().await;
    let sale = app.sale(5, 2, 300).await;
    let (s, v) = app.reserve(&sale, "ann", 1, None).await;
    assert_eq!(s, 201, "{v}");
    let rid = v["reservation_id"].as_str().expect("rid").to_string();
    // The sale as a refused request must leave it (the read's clock aside).
    let seen = |mut v: serde_json::Value| {
        v["server_time"].take();
        v
    };
    let before = seen(app.view(&sale).await);
    let mut report = Report::default();
    let put = |b: Vec<u8>| {
        app.client
            .put(app.url(&format!("/v1/sales/{sale}")))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(b)
    };
    let bad_sales: Vec<(&str, Value)> = vec![
        ("stock missing", json!({"per_user_limit": 1})),
        ("per_user_limit missing", json!({"stock": 1})),
        (
            "stock as string",
            json!({"stock": "5", "per_user_limit": 1}),
        ),
        ("stock float", json!({"stock": 5.5, "per_user_limit": 1})),
        ("stock negative", json!({"stock": -1, "per_user_limit": 1})),
        (
            "stock over the maximum",
            json!({"stock": 1_000_000_001i64, "per_user_limit": 1}),
        ),
        (
            "stock i64 overflow",
            json!({"stock": 1e30, "per_user_limit": 1}),
        ),
        (
            "per_user_limit zero",
            json!({"stock": 5, "per_user_limit": 0}),
        ),
        (
            "per_user_limit negative",
            json!({"stock": 5, "per_user_limit": -2}),
        ),
        (
            "per_user_limit over the maximum",
            json!({"stock": 5, "per_user_limit": 10_001}),
        ),
        (
            "per_user_limit u32 overflow",
            json!({"stock": 5, "per_user_limit": 4_294_967_296i64}),
        ),
        (
            "hold_ttl_secs zero",
            json!({"stock": 5, "per_user_limit": 1, "hold_ttl_secs": 0}),
        ),
        (
            "hold_ttl_secs over a week",
            json!({"stock": 5, "per_user_limit": 1, "hold_ttl_secs": 604_801}),
        ),
        (
            "max_hold_secs below hold_ttl_secs",
            json!({"stock": 5, "per_user_limit": 1, "hold_ttl_secs": 60, "max_hold_secs": 59}),
        ),
        (
            "starts_at not a time",
            json!({"stock": 5, "per_user_limit": 1, "starts_at": "yesterday"}),
        ),
        (
            "starts_at a number",
            json!({"stock": 5, "per_user_limit": 1, "starts_at": 1_700_000_000}),
        ),
        (
            "ends_at before starts_at",
            json!({"stock": 5, "per_user_limit": 1, "starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}),
        ),
        (
            "product_id empty",
            json!({"stock": 5, "per_user_limit": 1, "product_id": ""}),
        ),
        (
            "product_id 129 chars",
            json!({"stock": 5, "per_user_limit": 1, "product_id": "p".repeat(129)}),
        ),
        (
            "product_id control char",
            json!({"stock": 5, "per_user_limit": 1, "product_id": "a\u{0007}b"}),
        ),
        (
            "unknown field sold",
            json!({"stock": 5, "per_user_limit": 1, "sold": 0}),
        ),
        (
            "unknown field held",
            json!({"stock": 5, "per_user_limit": 1, "held": 3}),
        ),
        ("body an array", json!([5, 1])),
        ("body null", Value::Null),
    ];
    for (label, b) in bad_sales {
        report.check(
            &format!("PUT {label}"),
            send(put(serde_json::to_vec(&b).expect("json"))).await,
            400,
            "invalid_request",
        );
    }
    report.check(
        "PUT truncated",
        send(put(br#"{"stock":5,"#.to_vec())).await,
        400,
        "invalid_request",
    );
    report.check(
        "PUT 10,000 nested arrays",
        send(put(
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes()
        ))
        .await,
        413,
        "payload_too_large",
    );
    // Extend: the body is optional, but when present it must be right.
    let extend_url = app.url(&format!("/v1/sales/{sale}/reservations/{rid}/extend"));
    let extend = |b: Vec<u8>| {
        app.client
            .post(&extend_url)
            .bearer_auth(token("ann"))
            .header("content-type", "application/json")
            .body(b)
    };
    for (label, b) in [
        ("extend_secs zero", &br#"{"extend_secs":0}"#[..]),
        ("extend_secs negative", br#"{"extend_secs":-5}"#),
        ("extend_secs string", br#"{"extend_secs":"5"}"#),
        ("extend_secs float", br#"{"extend_secs":1.5}"#),
        ("extend_secs overflow", br#"{"extend_secs":4294967296}"#),
        (
            "extend unknown field",
            br#"{"extend_secs":5,"expires_at":"2099-01-01T00:00:00Z"}"#,
        ),
        ("extend truncated", br#"{"extend_secs":"#),
        ("extend not JSON", b"five seconds"),
        ("extend invalid UTF-8", b"{\"extend_secs\":\"\xff\"}"),
    ] {
        report.check(
            label,
            send(extend(b.to_vec())).await,
            400,
            "invalid_request",
        );
    }
    report.check(
        "extend 10,000 nested arrays",
        send(extend(
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ))
        .await,
        413,
        "payload_too_large",
    );
    report.check(
        "extend 5,000 nested arrays",
        send(extend(
            format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
        ))
        .await,
        400,
        "invalid_request",
    );
    report.finish();
    let after = seen(app.view(&sale).await);
    assert_eq!(after, before, "a refused request changed the sale");
    let (s, v) = app.get_reservation(&sale, &rid, Some("ann")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("held")), "{v}");
}

/// Oversized and malformed request heads: refused with a 4xx; the sale is
/// untouched and the server keeps serving.
#[tokio::test]
async fn oversized_and_malformed_heads() {
    let app = spawn().await;
    let sale = app.sale(5, 2, 300).await;
    let before = counters(&app.view(&sale).await);
    let path = format!("/v1/sales/{sale}/reservations");
    let buyer = format!("Bearer {}", token("ann"));
    let json_ct: (&str, &[u8]) = ("Content-Type", b"application/json");
    let mut report = Report::default();

    // A 64 KiB header on an otherwise valid reserve.
    let pad = vec![b'x'; 64 * 1024];
    report.check(
        "a 64 KiB header",
        raw(
            &app,
            "POST",
            path.as_bytes(),
            &[
                ("Authorization", buyer.as_bytes()),
                json_ct,
                ("X-Pad", &pad),
            ],
            br#"{"quantity":1}"#,
        )
        .await,
        431,
        "invalid_request",
    );
    // A 64 KiB Authorization header.
    let big_auth = format!("Bearer {}", "a".repeat(64 * 1024));
    report.check(
        "a 64 KiB Authorization header",
        raw(
            &app,
            "POST",
            path.as_bytes(),
            &[("Authorization", big_auth.as_bytes()), json_ct],
            br#"{"quantity":1}"#,
        )
        .await,
        431,
        "invalid_request",
    );
    // Many small headers adding up to 64 KiB.
    let many: Vec<(String, Vec<u8>)> = (0..64)
        .map(|i| (format!("X-Pad-{i}"), vec![b'y'; 1000]))
        .collect();
    let mut hs: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    hs.push(("Authorization", buyer.as_bytes()));
    hs.push(json_ct);
    report.check(
        "64 headers of 1,000 bytes",
        raw(&app, "POST", path.as_bytes(), &hs, br#"{"quantity":1}"#).await,
        431,
        "invalid_request",
    );
    report.finish();

    // Past actix's own 128 KiB head buffer the HTTP layer answers 431
    // before any application code runs (see the report in bad_input's
    // module docs): the status is right; the server keeps serving.
    let huge = vec![b'x'; 200 * 1024];
    let (s, _) = raw(
        &app,
        "POST",
        path.as_bytes(),
        &[
            ("Authorization", buyer.as_bytes()),
            json_ct,
            ("X-Pad", &huge),
        ],
        br#"{"quantity":1}"#,
    )
    .await;
    assert_eq!(s, 431, "a 200 KiB head");
    // A head that is not HTTP at all: 400 from the HTTP layer.
    let (s, _) = raw(&app, "GET", b"/v1/sales/x y", &[], b"").await;
    assert_eq!(s, 400, "a space in the request target");

    assert_eq!(
        counters(&app.view(&sale).await),
        before,
        "a refused request moved a unit"
    );
    let (s, v) = app.reserve(&sale, "ann", 1, None).await;
    assert_eq!(s, 201, "still serving: {v}");
}
