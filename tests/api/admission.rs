//! Admission at the socket: at most `max_inflight` requests are read off
//! their connections at once, idle keep-alive connections and connections
//! sending a request head slowly hold no permit, and a client sitting on a
//! permit (a slow body) delays others without blocking them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use flashgate::admission::MAX_WAIT;

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

/// Reads until the end of an answer's head and returns its status line.
async fn status_line(conn: &mut TcpStream) -> String {
    exchange(conn, "").await
}

/// A reserve's head for `user`, announcing a 100-byte body.
fn reserve_head(sale: &str, user: &str, extra: &str) -> String {
    format!(
        "POST /v1/sales/{sale}/reservations HTTP/1.1\r\nHost: flashgate\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n{extra}\r\n",
        token(user)
    )
}

/// A 100-byte reserve body.
fn reserve_body() -> String {
    format!("{:<100}", r#"{"quantity":1}"#)
}

/// An app that reads at most `permits` requests off their connections at
/// once.
async fn with_permits(permits: usize) -> TestApp {
    Spawn::new()
        .await
        .with(|s| s.max_inflight = permits)
        .start()
        .await
}

/// Opens a connection to `addr`.
async fn connect(addr: &str) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Waits until every permit of `app` is back (`what` names the moment).
async fn permits_back(app: &TestApp, what: &str) {
    let adm = app.admission.clone();
    wait_until(what, || adm.in_use() == 0).await;
}

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
    let app = Arc::new(with_permits(4).await);
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
    permits_back(&app, "no permit is held").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_hold_no_permit() {
    let app = with_permits(2).await;
    let addr = app.socket_addr();
    // Ten connections, two permits. Connections that have sent nothing yet
    // (and, below, connections idle between requests) must hold none: the
    // last one opened is served at once, not after a wait that runs out.
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(connect(addr).await);
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
    permits_back(&app, "no permit is held").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sitting_on_the_only_permit_delays_others_but_never_blocks_them() {
    let app = with_permits(1).await;
    let addr = app.socket_addr();
    let sale = app.sale(10, 2, 300).await;
    // The sale's connection gives its permit back just after its answer went
    // out: until then, a permit in use is not (only) the slow client's.
    permits_back(&app, "the sale's permit is back").await;
    let adm = app.admission.clone();

    // A complete head and half its body: the request has been read, so it
    // holds the only permit, and it never finishes.
    let mut slow = connect(addr).await;
    let half = format!(
        "{}{}",
        reserve_head(&sale, "slow-body", ""),
        &reserve_body()[..50]
    );
    slow.write_all(half.as_bytes()).await.expect("write");
    wait_until("the slow client holds the permit", || adm.in_use() == 1).await;

    // Another buyer is still answered: its wait runs out and it is read
    // uncounted.
    let mut other = connect(addr).await;
    let t = Instant::now();
    assert_eq!(exchange(&mut other, HEALTHZ).await, "HTTP/1.1 200 OK");
    let took = t.elapsed();
    println!("answered beside a slow body in {took:?}");
    // The slow request also holds the only handler slot: the wait for it
    // ends with the admission's, not 2 s later (nor never).
    assert!(took < MAX_WAIT + Duration::from_millis(1500), "{took:?}");
    // Its wait is counted as the request starts, so before its answer is
    // written: no lag to wait out here.
    let counts = |adm: &flashgate::admission::Admission| {
        format!(
            "expired {}, waited {}, in use {}",
            adm.expired(),
            adm.waited(),
            adm.in_use()
        )
    };
    assert_eq!(app.admission.expired(), 1, "{}", counts(&app.admission));
    assert_eq!(app.admission.waited(), 1, "{}", counts(&app.admission));
    assert_eq!(app.admission.in_use(), 1, "the slow client still holds it");

    // The slow client goes away: its permit comes back, and the next
    // request is read without waiting.
    drop(slow);
    permits_back(&app, "the permit is back").await;
    assert_eq!(exchange(&mut other, HEALTHZ).await, "HTTP/1.1 200 OK");
    assert_eq!(
        (app.admission.expired(), app.admission.waited()),
        (1, 1),
        "a second wait (the next request's): {}",
        counts(&app.admission)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_complete_no_request_head_hold_no_permit() {
    let app = with_permits(1).await;
    let addr = app.socket_addr();
    let adm = app.admission.clone();
    let holds_nothing = || async {
        // The server has read what was sent by now; a permit taken for it
        // is back within a second (on a loaded machine the give-back can
        // trail the read), well before the 2 s bound of a permit's wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while adm.in_use() != 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            adm.in_use(),
            0,
            "a connection without a request holds a permit"
        );
    };

    // Half a head.
    let mut half = connect(addr).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: fl")
        .await
        .expect("write");
    holds_nothing().await;

    // Blank lines before a request line end no head (the HTTP layer skips
    // them), though they look like the blank line that ends one.
    let mut blank = connect(addr).await;
    blank
        .write_all(b"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: fl")
        .await
        .expect("write");
    holds_nothing().await;

    // A chunked body the HTTP layer drains after an early answer (401),
    // with blank lines in it.
    let mut drained = connect(addr).await;
    let head = "POST /v1/sales/x/reservations HTTP/1.1\r\nHost: flashgate\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    drained.write_all(head.as_bytes()).await.expect("write");
    assert_eq!(status_line(&mut drained).await, "HTTP/1.1 401 Unauthorized");
    drained
        .write_all(b"6\r\n\r\n\r\n\r\n\r\n")
        .await
        .expect("write");
    holds_nothing().await;
    // (It was drained, not dropped: the connection serves the next request.)
    drained.write_all(b"0\r\n\r\n").await.expect("write");
    assert_eq!(exchange(&mut drained, HEALTHZ).await, "HTTP/1.1 200 OK");

    // Meanwhile a request is read at once.
    let mut other = connect(addr).await;
    assert_eq!(exchange(&mut other, HEALTHZ).await, "HTTP/1.1 200 OK");
    assert_eq!(app.admission.waited(), 0, "a request waited for a permit");
    // The half heads end, and are answered.
    half.write_all(b"agate\r\n\r\n").await.expect("write");
    assert_eq!(status_line(&mut half).await, "HTTP/1.1 200 OK");
    blank.write_all(b"agate\r\n\r\n").await.expect("write");
    assert_eq!(status_line(&mut blank).await, "HTTP/1.1 200 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_expects_100_continue_keeps_its_permit_until_answered() {
    let app = with_permits(1).await;
    let sale = app.sale(10, 2, 300).await;
    let mut conn = connect(app.socket_addr()).await;
    let head = reserve_head(&sale, "expects", "Expect: 100-continue\r\n");
    conn.write_all(head.as_bytes()).await.expect("write");
    // The interim answer is no answer: the request, still to be read,
    // keeps the permit.
    assert_eq!(status_line(&mut conn).await, "HTTP/1.1 100 Continue");
    let body = reserve_body();
    conn.write_all(&body.as_bytes()[..50]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.admission.in_use(),
        1,
        "the request gave its permit back"
    );
    conn.write_all(&body.as_bytes()[50..]).await.expect("write");
    assert_eq!(status_line(&mut conn).await, "HTTP/1.1 201 Created");
    permits_back(&app, "the permit is back").await;
}

/// The start of a request head that never ends: one more byte of the
/// `X-Pad` header follows every second.
const SLOW_HEAD: &[u8] = b"POST /v1/sales/x/reservations HTTP/1.1\r\nHost: a\r\nX-Pad: ";

/// One slow-header client: sends `SLOW_HEAD`, then a byte a second, never
/// finishing; when the server closes the connection (its first-request
/// timeout answers 408), it opens another. `open` counts its connections
/// that are open and have sent their first bytes, `opened` all it opened.
async fn slow_header_client(
    addr: String,
    open: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut buf = [0u8; 1024];
    while !stop.is_cancelled() {
        let Ok(mut conn) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if conn.write_all(SLOW_HEAD).await.is_err() {
            continue;
        }
        open.fetch_add(1, Ordering::SeqCst);
        opened.fetch_add(1, Ordering::SeqCst);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                // An answer (408) or the close: this connection is over.
                _ = conn.read(&mut buf) => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if conn.write_all(b"a").await.is_err() {
                        break;
                    }
                }
            }
        }
        open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_hold_no_permit_and_do_not_slow_other_buyers() {
    const SLOW: usize = 1_000;
    const BUYERS: u32 = 200;
    const EVERY: Duration = Duration::from_millis(30);
    let app = Arc::new(with_permits(8).await);
    let sale = app.sale(i64::from(BUYERS), 1, 300).await;

    // 1,000 connections sending heads that never end (issue 12, item 4),
    // eight permits.
    let (open, opened) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = CancellationToken::new();
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            tokio::spawn(slow_header_client(
                app.socket_addr().to_string(),
                open.clone(),
                opened.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let o = open.clone();
    wait_until("every slow-header client is connected", || {
        o.load(Ordering::SeqCst) == SLOW
    })
    .await;
    // Their trickle is under way: each has sent a byte more since.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Ordinary buyers, one every 30 ms for 6 s, each timed: through a few
    // rounds of the trickle and the wave of 408s and reconnections when the
    // slow clients' first-request timeout (5 s) runs out.
    let start = tokio::time::Instant::now();
    let answers: Vec<(u16, Duration)> = join_all((0..BUYERS).map(|i| {
        let (app, sale) = (app.clone(), sale.clone());
        async move {
            tokio::time::sleep_until(start + EVERY * i).await;
            let t = Instant::now();
            let (status, _) = app.reserve(&sale, &format!("fast-{i}"), 1, None).await;
            (status, t.elapsed())
        }
    }))
    .await;
    let (still_open, reopened) = (
        open.load(Ordering::SeqCst),
        opened.load(Ordering::SeqCst) - SLOW,
    );
    stop.cancel();
    join_all(slow).await;

    assert!(
        answers.iter().all(|(s, _)| *s == 201),
        "every buyer holds a unit"
    );
    let mut took: Vec<Duration> = answers.iter().map(|(_, t)| *t).collect();
    took.sort();
    let pct = |p: usize| took[(took.len() * p / 100).min(took.len() - 1)];
    let (p50, p99) = (pct(50), pct(99));
    println!(
        "{BUYERS} reserves beside {SLOW} slow-header connections \
         ({reopened} reopened after a 408, {still_open} open at the end): \
         p50 {p50:?}, p99 {p99:?}, max {:?}; admission waited {}, expired {}, peak {}",
        took[took.len() - 1],
        app.admission.waited(),
        app.admission.expired(),
        app.admission.peak(),
    );
    // The issue's target is p99 < 100 ms; 1 s keeps a loaded CI machine
    // from failing the test while still failing the defect (2 s a request).
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    assert_eq!(
        app.admission.expired(),
        0,
        "a request waited the full bounded wait for a permit"
    );
}
