//! A lean HTTP/1.1 keep-alive client for the measured requests of `burst`
//! and `sustained` against a plain `http://` target.
//!
//! The load generator shares the machine's cores with flashgate, so every
//! microsecond it spends per request is taken from the system under test.
//! A general client (reqwest: connection pool, per-connection task,
//! channels, header maps) costs several times what flashgate itself spends
//! answering a sold-out request. Here each request is prepared as bytes
//! before the clock starts, written on a connection the caller owns, and
//! its answer read back with `httparse`: the measured latency is the
//! request's, not the client's bookkeeping. `https://` targets go through
//! reqwest instead (see [`crate::client::Api`]).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{answer_from, transport_answer, Answer};

/// Where plain-HTTP requests go: `host:port` and the path prefix of `--url`.
#[derive(Clone, Debug)]
pub struct Target {
    authority: String,
    prefix: String,
}

impl Target {
    /// `Some` for an `http://` base URL, `None` for `https://` (the caller
    /// falls back to reqwest).
    pub fn from_base(base: &str) -> Result<Option<Self>> {
        let Some(rest) = base.strip_prefix("http://") else {
            if base.starts_with("https://") {
                return Ok(None);
            }
            bail!("--url must start with http:// or https:// (got {base})");
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            bail!("--url has no usable host: {base}");
        }
        // A port is named after the host (after `]` for an IPv6 literal).
        let host_end = authority.rfind(']').map_or(0, |i| i + 1);
        let authority = if authority[host_end..].contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Some(Self {
            authority,
            prefix: prefix.to_string(),
        }))
    }

    /// `POST {prefix}/v1/sales/{sale}/reservations` with a buyer token, as bytes.
    pub fn reserve(&self, sale: &str, token: &str, quantity: u32) -> Vec<u8> {
        self.reserve_body(sale, token, &format!("{{\"quantity\":{quantity}}}"))
    }

    /// The same with a JSON `body` of the caller's (e.g. a cart).
    pub fn reserve_body(&self, sale: &str, token: &str, body: &str) -> Vec<u8> {
        format!(
            "POST {}/v1/sales/{sale}/reservations HTTP/1.1\r\nHost: {}\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.prefix,
            self.authority,
            body.len()
        )
        .into_bytes()
    }

    /// `host:port`, to connect to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// `GET {prefix}{path}`, as bytes.
    pub fn get(&self, path: &str) -> Vec<u8> {
        format!(
            "GET {}{path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.prefix, self.authority
        )
        .into_bytes()
    }

    /// `GET {prefix}/healthz`, to open a connection the server has served.
    pub fn healthz(&self) -> Vec<u8> {
        format!(
            "GET {}/healthz HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.prefix, self.authority
        )
        .into_bytes()
    }
}

/// One keep-alive connection. Reconnects (inside the timed request) when
/// the server closed it while idle, as a pooled client would.
pub struct Conn {
    target: Target,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    /// Connects and has the server answer one `GET /healthz` on it.
    pub async fn open(target: &Target, timeout: Duration) -> Result<Self> {
        let mut conn = Self {
            target: target.clone(),
            stream: None,
            buf: Vec::with_capacity(1024),
            timeout,
        };
        let (status, _) = conn.exchange(&target.healthz()).await?;
        if status != 200 {
            bail!("GET /healthz answered {status}");
        }
        Ok(conn)
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends `request` and reads its answer, timed from just before the send
    /// to the last byte of the body. A transport error is an answer too.
    pub async fn timed(&mut self, request: &[u8]) -> Answer {
        let start = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.exchange_inner(request)).await;
        let latency = start.elapsed();
        let (kind, message) = match result {
            Ok(Ok((status, body))) => return answer_from(status, &body, latency),
            Ok(Err(e)) => ("transport", e.to_string()),
            Err(_) => ("timeout", format!("no answer within {:?}", self.timeout)),
        };
        // The connection's state is unknown: start over next time.
        self.stream = None;
        transport_answer(kind, message, latency)
    }

    /// [`Self::timed`] for the set-up requests: any failure is an error.
    async fn exchange(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>)> {
        tokio::time::timeout(self.timeout, self.exchange_inner(request))
            .await
            .map_err(|_| anyhow!("no answer within {:?}", self.timeout))?
    }

    async fn exchange_inner(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>)> {
        if self.stream.as_ref().is_some_and(closed_by_peer) {
            self.stream = None;
        }
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(&self.target.authority).await?;
                s.set_nodelay(true)?;
                self.stream.insert(s)
            }
        };
        stream.write_all(request).await?;
        self.buf.clear();
        let (status, head_len, body_len, close) = loop {
            if stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed before a full answer");
            }
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
        };
        let body_len = match body_len {
            BodyLen::Known(n) => n,
            BodyLen::Chunked => bail!("chunked answers are not supported"),
        };
        while self.buf.len() < head_len + body_len {
            if stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed mid-body");
            }
        }
        let body = self.buf[head_len..head_len + body_len].to_vec();
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}

/// An idle keep-alive connection the server has closed reads as EOF.
fn closed_by_peer(s: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(s.try_read(&mut probe), Ok(0))
}

enum BodyLen {
    Known(usize),
    Chunked,
}

/// `Some((status, head length, body length, connection: close))` once the
/// whole head is in `buf`.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize, BodyLen, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp
        .code
        .ok_or_else(|| anyhow!("answer without a status"))?;
    let mut body = BodyLen::Known(0);
    let mut close = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| anyhow!("bad Content-Length"))?;
            body = BodyLen::Known(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            body = BodyLen::Chunked;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok(Some((status, head_len, body, close)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_urls() {
        let t = Target::from_base("http://127.0.0.1:8080").unwrap().unwrap();
        assert_eq!(
            (t.authority.as_str(), t.prefix.as_str()),
            ("127.0.0.1:8080", "")
        );
        let t = Target::from_base("http://localhost/fg/").unwrap().unwrap();
        assert_eq!(
            (t.authority.as_str(), t.prefix.as_str()),
            ("localhost:80", "/fg")
        );
        let t = Target::from_base("http://[::1]:9000").unwrap().unwrap();
        assert_eq!(t.authority, "[::1]:9000");
        let t = Target::from_base("http://[::1]").unwrap().unwrap();
        assert_eq!(t.authority, "[::1]:80");
        assert!(Target::from_base("https://example.test").unwrap().is_none());
        assert!(Target::from_base("ftp://x").is_err());
        assert!(Target::from_base("http://").is_err());
    }

    #[test]
    fn reserve_request_bytes() {
        let t = Target::from_base("http://h:1/p").unwrap().unwrap();
        let req = String::from_utf8(t.reserve("s1", "tok", 2)).unwrap();
        assert!(req.starts_with("POST /p/v1/sales/s1/reservations HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(req.contains("Authorization: Bearer tok\r\n"));
        assert!(req.ends_with("Content-Length: 14\r\n\r\n{\"quantity\":2}"));
    }

    #[test]
    fn heads_are_parsed_when_complete() {
        let full = b"HTTP/1.1 409 Conflict\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
        assert!(parse_head(&full[..20]).unwrap().is_none());
        let (status, head, body, close) = parse_head(full).unwrap().unwrap();
        assert_eq!((status, head, close), (409, full.len() - 5, true));
        assert!(matches!(body, BodyLen::Known(5)));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse_head(chunked).unwrap().unwrap().2,
            BodyLen::Chunked
        ));
        assert!(parse_head(b"NOT HTTP\r\n\r\n").is_err());
    }
}
