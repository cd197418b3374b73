//! An event stream as bytes on a raw connection: its HTTP framing for each
//! HTTP version, its keep-alive comment, and its end at a shutdown.

use std::time::Duration;

use futures_util::StreamExt;

use super::{next, subscribe};
use crate::support::process::Serve;
use crate::support::*;

/// SIGTERM does not wait on idle event streams: they end as the graceful
/// shutdown begins, and the process exits long before its shutdown bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_streams_at_once() {
    let spawn = Spawn::new().await;
    let mut proc = Serve::start(&spawn, &[("FLASHGATE_SHUTDOWN_TIMEOUT_MS", "30000")]).await;
    let sale = proc.app.sale(5, 2, 60).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut e = subscribe(&proc.app, &sale).await;
        next(&mut e, Duration::from_secs(5))
            .await
            .expect("at connect");
        streams.push(e);
    }
    let t0 = std::time::Instant::now();
    proc.signal("TERM");
    for e in &mut streams {
        let end = tokio::time::timeout(Duration::from_secs(10), e.next())
            .await
            .expect("the stream ended within 10 s");
        assert!(end.is_none(), "no event after SIGTERM: {end:?}");
    }
    let status = proc.wait_exit(Duration::from_secs(10)).await;
    println!(
        "streams closed and the process exited {:?} after SIGTERM",
        t0.elapsed()
    );
    assert!(status.success(), "{status:?}");
}

/// Reads from a raw connection until `buf` holds `n` occurrences of `what`.
async fn read_until(c: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, what: &str, n: usize) {
    read_within(c, buf, what, n, Duration::from_secs(10)).await;
}

/// `read_until`, waiting at most `within`.
async fn read_within(
    c: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    what: &str,
    n: usize,
    within: Duration,
) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    while String::from_utf8_lossy(buf).matches(what).count() < n {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let read = tokio::time::timeout(left, c.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {n} x {what:?} within {within:?}: {:?}",
                    String::from_utf8_lossy(buf)
                )
            })
            .expect("read");
        assert!(read > 0, "closed early: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..read]);
    }
}

/// A stream is chunked all along, one event a chunk: over HTTP/1.1 actix-http
/// writes the head and the first event and the stream's own task the rest
/// (`admission::Handoff`); an HTTP/1.0 request is served by actix-http to
/// the end (which frames it the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_framed_for_the_client_s_http_version() {
    use tokio::io::AsyncWriteExt;
    let app = Spawn::new().await.start().await;
    let sale = app.sale(5, 2, 60).await;
    for version in ["1.1", "1.0"] {
        let mut c = tokio::net::TcpStream::connect(app.socket_addr())
            .await
            .expect("connect");
        let request =
            format!("GET /v1/sales/{sale}/events HTTP/{version}\r\nHost: flashgate\r\n\r\n");
        c.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        read_until(&mut c, &mut buf, "event: sale", 1).await;
        let (s, v) = app
            .reserve(&sale, &format!("buyer-{version}"), 1, None)
            .await;
        assert_eq!(s, 201, "{v}");
        read_until(&mut c, &mut buf, "event: sale", 2).await;
        read_until(&mut c, &mut buf, "\n\n\r\n", 2).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with(&format!("HTTP/{version} 200")), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        // Every event is one chunk: its size in hex, CRLF, the event, CRLF.
        let mut rest = body;
        for _ in 0..2 {
            let (size, after) = rest.split_once("\r\n").expect("a chunk size");
            let size = usize::from_str_radix(size, 16).expect("hex size");
            assert!(after[..size].starts_with("event: sale\n"), "{after}");
            assert!(after[..size].ends_with("\n\n"), "{after}");
            assert_eq!(&after[size..size + 2], "\r\n");
            rest = &after[size + 2..];
        }
        assert_eq!(rest, "", "nothing but the two events");
    }
}

/// An idle stream gets a `: keep-alive` comment every 15 s (in its own
/// chunk, after the handoff as before it), and nothing else.
#[tokio::test]
async fn an_idle_stream_gets_a_keep_alive_comment() {
    use tokio::io::AsyncWriteExt;
    let app = Spawn::new().await.start().await;
    let sale = app.sale(5, 2, 60).await;
    let mut c = tokio::net::TcpStream::connect(app.socket_addr())
        .await
        .expect("connect");
    let request = format!("GET /v1/sales/{sale}/events HTTP/1.1\r\nHost: flashgate\r\n\r\n");
    c.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    read_until(&mut c, &mut buf, "event: sale", 1).await;
    let t0 = tokio::time::Instant::now();
    read_within(
        &mut c,
        &mut buf,
        ": keep-alive\n\n\r\n",
        1,
        Duration::from_secs(25),
    )
    .await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(13),
        "a keep-alive {waited:?} after the first event, not every 15 s"
    );
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert_eq!(text.matches("event: sale").count(), 1, "{text}");
    // Its own chunk: its size in hex (14 bytes), CRLF, the comment, CRLF.
    assert!(text.ends_with("\r\nE\r\n: keep-alive\n\n\r\n"), "{text:?}");
}
