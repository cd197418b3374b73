//! Answers as tests read them (status, JSON body, headers, time taken), and
//! a raw HTTP/1.1 client for requests reqwest would refuse to send or would
//! normalise (`..` in a path, raw non-UTF-8 bytes, a lying Content-Length).

use std::time::Duration;

use reqwest::Response;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Status and JSON body; panics on a body that is not JSON.
pub async fn body(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    (status, v)
}

/// The `reservation_id` of a reservation body.
pub fn rid(v: &Value) -> String {
    v["reservation_id"].as_str().expect("rid").to_string()
}

/// Asserts the contract's error body and returns its code.
pub fn error_code(v: &Value) -> &str {
    let e = &v["error"];
    assert!(
        e["message"].is_string() && e["details"].is_object(),
        "not the contract's error body: {v}"
    );
    e["code"].as_str().expect("code")
}

/// One answered request: what it was, status, JSON body, the headers the
/// fault tests read, and the time it took.
#[derive(Debug, Clone)]
pub struct Answer {
    pub what: String,
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<u64>,
    pub replayed: bool,
    pub took: Duration,
}

/// Sends and times a request; panics if it is not answered (the client's
/// timeout, a dropped connection) or not with a JSON body: the service
/// must always answer, and in the contract's shape.
pub async fn timed(what: &str, req: reqwest::RequestBuilder) -> Answer {
    let t = std::time::Instant::now();
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer after {:?}: {e}", t.elapsed()));
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let text = r.text().await.expect("body");
    let took = t.elapsed();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{what}: {status} with a non-JSON body {text:?}"));
    Answer {
        what: what.to_string(),
        status,
        body,
        retry_after,
        replayed,
        took,
    }
}

/// Status and body bytes of a request sent with reqwest.
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Vec<u8>) {
    let r = req.send().await.expect("send");
    let s = r.status().as_u16();
    (s, r.bytes().await.expect("body").to_vec())
}

/// One raw HTTP/1.1 exchange with `addr` (`Connection: close`): status and
/// body bytes. A `Content-Length` is added to a POST or PUT (or any request
/// with a body) that names no length of its own. The server may close
/// early (e.g. a head it will not read): whatever it answered before
/// closing is what counts.
pub async fn raw(
    addr: &str,
    method: &str,
    path: &[u8],
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> (u16, Vec<u8>) {
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

/// Status and body (chunked encoding undone) of one HTTP/1.1 response.
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
