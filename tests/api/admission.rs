//! Admission at the socket: at most `max_inflight` requests are read off
//! their connections at once, idle keep-alive connections hold no permit,
//! and a client sitting on a permit delays others without blocking them.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Sends one request on a raw connection and returns the status line.
async fn exchange(conn: &mut TcpStream, request: &str) -> String {
    conn.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf))
            .await
            .expect("answer within 30 s")
            .expect("read");
        assert!(n > 0, "connection closed before an answer");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: flashgate\r\n\r\n";

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..200 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_permits_is_read_a_few_at_a_time_and_all_answered() {
    let app = Arc::new(
        Spawn::new()
            .await
            .with(|s| s.max_inflight = 4)
            .start()
            .await,
    );
    let sale = app.sale(10, 2, 300).await;
    let answers = join_all((0..300).map(|i| {
        let (app, sale) = (app.clone(), sale.clone());
        async move { app.reserve(&sale, &format!("adm-{i}"), 1, None).await }
    }))
    .await;
    let held = answers.iter().filter(|(s, _)| *s == 201).count();
    let sold_out = answers
        .iter()
        .filter(|(s, v)| *s == 409 && error_code(v) == "sold_out")
        .count();
    assert_eq!((held, sold_out), (10, 290), "every buyer answered, 10 held");
    let view = app.view(&sale).await;
    assert_eq!(view["held"], 10, "{view}");

    let adm = &app.admission;
    assert!(
        adm.peak() <= 4,
        "read {} requests at once, allowed 4",
        adm.peak()
    );
    assert!(
        adm.waited() > 0,
        "300 buyers at once never waited for 4 permits"
    );
    // Every answer gave its permit back; the idle keep-alive connections
    // left in the client's pool hold none.
    let adm = adm.clone();
    wait_until("no permit is held", || adm.in_use() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_hold_no_permit() {
    let app = Spawn::new()
        .await
        .with(|s| s.max_inflight = 2)
        .start()
        .await;
    let addr = app.socket_addr();
    // Ten connections, two permits. Connections that have sent nothing yet
    // (and, below, connections idle between requests) must hold none: the
    // last one opened is served at once, not after a wait that runs out.
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(TcpStream::connect(addr).await.expect("connect"));
    }
    for _ in 0..2 {
        for c in conns.iter_mut().rev() {
            assert_eq!(exchange(c, HEALTHZ).await, "HTTP/1.1 200 OK");
        }
    }
    assert_eq!(
        app.admission.expired(),
        0,
        "a request waited for a permit held by an idle connection"
    );
    // A permit is given back just after the answer's bytes go out.
    let adm = app.admission.clone();
    wait_until("no permit is held", || adm.in_use() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sitting_on_the_only_permit_delays_others_but_never_blocks_them() {
    let app = Spawn::new()
        .await
        .with(|s| s.max_inflight = 1)
        .start()
        .await;
    let addr = app.socket_addr();

    // Half a request: its bytes take the only permit, and it never finishes.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: fl")
        .await
        .expect("write");
    let adm = app.admission.clone();
    wait_until("the slow client holds the permit", || adm.in_use() == 1).await;

    // Another buyer is still answered: its wait runs out and it is read
    // uncounted.
    let mut other = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(exchange(&mut other, HEALTHZ).await, "HTTP/1.1 200 OK");
    assert_eq!(app.admission.expired(), 1);
    assert_eq!(app.admission.in_use(), 1, "the slow client still holds it");

    // The slow client goes away: its permit comes back, and the next
    // request is read without waiting.
    drop(slow);
    let adm = app.admission.clone();
    wait_until("the permit is back", || adm.in_use() == 0).await;
    assert_eq!(exchange(&mut other, HEALTHZ).await, "HTTP/1.1 200 OK");
    assert_eq!(app.admission.expired(), 1, "no second wait ran out");
}
