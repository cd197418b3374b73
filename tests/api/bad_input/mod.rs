//! Hostile and broken input: every malformed, oversized, mistyped or
//! unauthenticated request gets its documented 4xx with the contract's JSON
//! error body, and none of them moves a unit of the sale.
//!
//! Table-driven: each file builds its cases (a request, the status and
//! error code it must get) from tables of inputs, and [`run`] sends them
//! all and reports every mismatch at once. Requests reqwest would refuse to
//! send or would normalise (`..` in a path, raw non-UTF-8 bytes, a lying
//! Content-Length) go over a raw socket.

mod admin;
mod bodies;
mod heads;
mod paths;
mod tokens;

use serde_json::Value;

use crate::support::*;

/// The app, without the per-buyer rate limit: these tests send hundreds
/// of refused requests as one buyer, and must see each one's own answer.
async fn spawn() -> TestApp {
    Spawn::new()
        .await
        .with(|s| s.rate.per_user_per_sec = 0)
        .start()
        .await
}

/// A sale of 5 (cap 2) on which "ann" holds one unit: its id and the
/// reservation's.
async fn sale_held_by_ann(app: &TestApp) -> (String, String) {
    let sale = app.sale(5, 2, 300).await;
    let (s, v) = app.reserve(&sale, "ann", 1, None).await;
    assert_eq!(s, 201, "{v}");
    (sale, rid(&v))
}

/// How a case goes out.
enum Request {
    Http(reqwest::RequestBuilder),
    /// Over a raw socket: method, path, headers, body.
    Raw {
        method: &'static str,
        path: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    },
}

/// One request and the answer the contract gives it.
struct Case {
    label: String,
    request: Request,
    status: u16,
    code: &'static str,
}

impl Case {
    fn http(
        label: impl Into<String>,
        req: reqwest::RequestBuilder,
        want: (u16, &'static str),
    ) -> Self {
        Self {
            label: label.into(),
            request: Request::Http(req),
            status: want.0,
            code: want.1,
        }
    }

    fn raw(
        label: impl Into<String>,
        method: &'static str,
        path: impl AsRef<[u8]>,
        headers: &[(&str, &[u8])],
        body: &[u8],
        want: (u16, &'static str),
    ) -> Self {
        Self {
            label: label.into(),
            request: Request::Raw {
                method,
                path: path.as_ref().to_vec(),
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_vec()))
                    .collect(),
                body: body.to_vec(),
            },
            status: want.0,
            code: want.1,
        }
    }
}

/// What every refused request gets, by kind.
const INVALID: (u16, &str) = (400, "invalid_request");
const TOO_LARGE: (u16, &str) = (413, "payload_too_large");
const UNAUTHORIZED: (u16, &str) = (401, "unauthorized");

/// Sends every case, one after the other, and checks each answer: panics
/// listing every mismatch, so one run shows them all.
async fn run(app: &TestApp, cases: Vec<Case>) {
    let mut mismatches = Vec::new();
    for case in cases {
        let got = match case.request {
            Request::Http(req) => send(req).await,
            Request::Raw {
                method,
                path,
                headers,
                body,
            } => {
                let headers: Vec<(&str, &[u8])> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_slice()))
                    .collect();
                raw(app.socket_addr(), method, &path, &headers, &body).await
            }
        };
        if let Some(m) = mismatch(&case.label, got, case.status, case.code) {
            mismatches.push(m);
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Why an answer is not `status` with the contract's error body and `code`.
fn mismatch(label: &str, got: (u16, Vec<u8>), status: u16, code: &str) -> Option<String> {
    let (s, bytes) = got;
    let text = String::from_utf8_lossy(&bytes);
    let shown: String = text.chars().take(200).collect();
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return Some(format!(
            "{label}: {s}, body not JSON: {shown:?} (want {status} {code})"
        ));
    };
    let e = &v["error"];
    let shape = e["message"].is_string() && e["details"].is_object() && e["code"].is_string();
    if !shape {
        Some(format!("{label}: {s}, not the error shape: {shown}"))
    } else if s != status || e["code"] != code {
        Some(format!(
            "{label}: got {s} {}, want {status} {code}: {shown}",
            e["code"]
        ))
    } else {
        None
    }
}
