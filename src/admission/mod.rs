//! Admission at the socket: at most `FLASHGATE_MAX_INFLIGHT` requests are
//! read off their connections at once; the others stay in the kernel's
//! socket buffers until one is answered.
//!
//! Why at the socket: actix-http builds a request's head (a header map sized
//! for 16 headers, ~6.5 KiB) and the request objects as soon as it has read
//! the bytes, before any middleware runs. When 10,000 buyers press "buy" at
//! once, a permit taken in a middleware still left 10,000 heads in memory
//! (~70 MiB, measured with valgrind's massif). Read the request only once it
//! holds a permit, and memory follows the permits instead.
//!
//! The rules, per connection:
//! - an idle keep-alive connection holds no permit: it waits for bytes
//!   first, and asks for a permit only when some have arrived;
//! - every read is made holding a permit (any read may complete a request
//!   head). If actix-http did not start a request with what was read, the
//!   head is not complete yet and the permit is given back at once, before
//!   the connection waits for its next bytes: a client sending its head a
//!   byte at a time holds a permit only while one of its reads is handled,
//!   never while it is slow. actix-http keeps a partial head as bytes in its
//!   connection read buffer; it builds the request (the memory this guards)
//!   only once the head is complete;
//! - once a request has started, the permit is kept while its body is read
//!   and it is handled, and given back when the answer has been written and
//!   flushed;
//! - a wait for a permit is bounded ([`MAX_WAIT`], and never past the HTTP
//!   layer's own idle / first-request timeout). When it runs out the read is
//!   made anyway, uncounted (until the answer is flushed, if it started a
//!   request): a slow client that sits on a permit, or a burst larger than
//!   the permits can drain in that time, delays requests, never drops them.
//!   The handler bound (`api::bounded`) waits no longer than the same
//!   deadline ([`ConnState::wait_deadline`]).
//!
//! How a connection knows that a request started: `startup` gives each
//! connection a [`ConnState`] (actix-http's connection data) and wraps the
//! application in [`request_started`], which actix-http calls as soon as it
//! has parsed a head. actix-http reads, parses and then flushes in one turn
//! of the connection's task, so `poll_flush` is where a read that started no
//! request gives its permit back. Why not scan the bytes for the blank line
//! that ends a head instead: bytes that are not a head (a chunked body
//! actix-http drains after an early answer, blank lines before a request
//! line) would look like one and keep a permit for as long as the client
//! trickles them, which is the attack this stops.
//!
//! A read's wait is counted ([`Admission::waited`], [`Admission::expired`])
//! in `request_started` as well: as soon as that read is known to have
//! started a request, before the application sees it. Not at the flush that
//! ends the turn: when the handler is ready at once, the answer is written
//! in that same turn, just before the flush, and a client (or a scrape)
//! could see the answer before the wait it had.
//!
//! Pipelined requests that arrive in one read are answered under the first
//! one's permit (actix-http caps them at 16 per connection).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::PollSemaphore;

mod handoff;
use handoff::handed_off;
pub use handoff::Handoff;

/// Longest a request waits for a permit before it is read uncounted.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// A wait ends this long before the HTTP layer would close the connection
/// as idle (its timer runs from the last answer, or from the accept).
const TIMEOUT_MARGIN: Duration = Duration::from_millis(500);

/// An interim answer actix-http writes, alone, to a request that sent
/// `Expect: 100-continue` before reading its body: that request is still
/// to be answered, so its permit stays.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The permits, shared by every connection of the process.
#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    size: usize,
    idle_timeout: Duration,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    peak: AtomicUsize,
    waited: AtomicU64,
    expired: AtomicU64,
}

impl Admission {
    /// `size` requests at once; `idle_timeout` is the HTTP layer's shortest
    /// of keep-alive and first-request timeout.
    pub fn new(size: usize, idle_timeout: Duration) -> Self {
        let size = size.max(1);
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size,
            idle_timeout,
            stats: Arc::default(),
        }
    }

    /// Wraps an accepted connection.
    pub fn admit(&self, io: TcpStream) -> AdmittedStream {
        AdmittedStream {
            io: Some(io),
            permits: PollSemaphore::new(self.permits.clone()),
            admission: self.clone(),
            state: Arc::new(ConnState::new(self.stats.clone())),
            permit: None,
            uncounted: false,
            wrote: false,
            idle_since: Instant::now(),
            wait: None,
        }
    }

    /// Permits held: requests read and not yet answered (counted ones), and
    /// for a moment each, reads that may complete a head.
    pub fn in_use(&self) -> usize {
        self.size - self.permits.available_permits()
    }

    /// The most permits held at once since start.
    pub fn peak(&self) -> usize {
        self.stats.peak.load(Ordering::Relaxed)
    }

    /// Requests that had to wait for a permit (counted as they start,
    /// before they are handled).
    pub fn waited(&self) -> u64 {
        self.stats.waited.load(Ordering::Relaxed)
    }

    /// Requests whose wait ran out, read uncounted.
    pub fn expired(&self) -> u64 {
        self.stats.expired.load(Ordering::Relaxed)
    }
}

/// What a connection shares with its requests (actix-http's connection
/// data, set in `startup`): whether a request has started since the last
/// answer, whether the wait of the read that may start one is still to be
/// counted, and how long the current one may still wait for a permit.
pub struct ConnState {
    started: AtomicBool,
    /// The permit (or pass) of the connection's current read had to wait /
    /// its wait ran out: counted when that read starts a request
    /// (`request_started`), forgotten if it starts none.
    waited: AtomicBool,
    expired: AtomicBool,
    /// The deadline of the permit wait of the connection's last read, if it
    /// had to wait.
    deadline: Mutex<Option<Instant>>,
    /// An event stream that takes the connection's socket (see [`Handoff`]).
    handoff: Mutex<Option<Handoff>>,
    /// A handoff was registered: the flush of every other response skips
    /// the lock above.
    handoff_armed: AtomicBool,
    stats: Arc<Stats>,
}

impl ConnState {
    fn new(stats: Arc<Stats>) -> Self {
        Self {
            started: AtomicBool::new(false),
            waited: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            deadline: Mutex::new(None),
            handoff: Mutex::new(None),
            handoff_armed: AtomicBool::new(false),
            stats,
        }
    }

    /// A request started: the wait of the read that started it counts,
    /// now, before the request is handled and so before any of its answer
    /// is written.
    fn start(&self) {
        self.started.store(true, Ordering::Relaxed);
        if self.waited.swap(false, Ordering::Relaxed) {
            self.stats.waited.fetch_add(1, Ordering::Relaxed);
        }
        if self.expired.swap(false, Ordering::Relaxed) {
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
            crate::metrics::admission_wait_expired();
        }
    }

    /// The current read's wait is not to be counted (it started nothing).
    fn forget_wait(&self) {
        self.waited.store(false, Ordering::Relaxed);
        self.expired.store(false, Ordering::Relaxed);
    }

    /// Until when a request of this connection may wait for the handler
    /// bound: what was left of its permit wait (nothing if that ran out),
    /// or [`MAX_WAIT`] if it did not wait.
    pub fn wait_deadline(&self) -> Instant {
        let waited = self.deadline.lock().ok().and_then(|d| *d);
        waited.unwrap_or_else(|| Instant::now() + MAX_WAIT)
    }

    fn set_deadline(&self, deadline: Option<Instant>) {
        if let Ok(mut d) = self.deadline.lock() {
            *d = deadline;
        }
    }
}

/// actix-http has parsed a request head of this connection and hands the
/// request to the application: the connection keeps its permit until the
/// answer is flushed, and the wait of the read that started it is counted.
/// `startup` wraps the application in this.
pub fn request_started(req: &actix_http::Request) {
    if let Some(state) = req.conn_data::<Arc<ConnState>>() {
        state.start();
    }
}

/// A connection that reads only while it holds a permit, and keeps it only
/// while a request is in flight.
pub struct AdmittedStream {
    /// None once handed to an event stream ([`Handoff`]): then every read
    /// fails, which ends actix-http's side of the connection.
    io: Option<TcpStream>,
    permits: PollSemaphore,
    admission: Admission,
    state: Arc<ConnState>,
    permit: Option<OwnedSemaphorePermit>,
    /// The wait ran out: read without a permit (see `permit`).
    uncounted: bool,
    /// Bytes of an answer written since the last flush.
    wrote: bool,
    /// Last answer flushed (or accepted): where the HTTP layer's idle timer starts.
    idle_since: Instant,
    wait: Option<Pin<Box<Sleep>>>,
}

impl AdmittedStream {
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.io()?.peer_addr()
    }

    fn io(&self) -> io::Result<&TcpStream> {
        self.io.as_ref().ok_or_else(handed_off)
    }

    fn io_mut(&mut self) -> io::Result<&mut TcpStream> {
        self.io.as_mut().ok_or_else(handed_off)
    }

    /// What this connection shares with its requests.
    pub fn state(&self) -> Arc<ConnState> {
        self.state.clone()
    }

    /// Holds a permit, or reads uncounted.
    fn admitted(&self) -> bool {
        self.permit.is_some() || self.uncounted
    }

    /// Ready once the connection may read: it holds a permit, or its wait
    /// ran out.
    fn poll_admitted(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.permits.poll_acquire(cx) {
            Poll::Ready(Some(p)) => {
                self.permit = Some(p);
                if self.wait.take().is_none() {
                    self.state.set_deadline(None);
                }
                // Written only when it rises: no shared write per request.
                let in_use = self.admission.in_use();
                let peak = &self.admission.stats.peak;
                if in_use > peak.load(Ordering::Relaxed) {
                    peak.fetch_max(in_use, Ordering::Relaxed);
                }
                Poll::Ready(())
            }
            // The semaphore is never closed; if it were, do not block.
            Poll::Ready(None) => {
                self.uncounted = true;
                self.state.set_deadline(None);
                Poll::Ready(())
            }
            Poll::Pending => {
                if self.wait.is_none() {
                    self.state.waited.store(true, Ordering::Relaxed);
                    let by_layer = (self.idle_since + self.admission.idle_timeout)
                        .checked_sub(TIMEOUT_MARGIN)
                        .unwrap_or(self.idle_since);
                    let deadline = (Instant::now() + MAX_WAIT).min(by_layer);
                    self.state.set_deadline(Some(deadline));
                    self.wait = Some(Box::pin(tokio::time::sleep_until(deadline)));
                }
                if let Some(wait) = self.wait.as_mut() {
                    ready!(wait.as_mut().poll(cx));
                }
                self.wait = None;
                self.uncounted = true;
                // Drop the queued acquire: a permit handed to it later would
                // otherwise sit here unused until this connection closes.
                self.permits = PollSemaphore::new(self.permits.clone_inner());
                self.state.expired.store(true, Ordering::Relaxed);
                Poll::Ready(())
            }
        }
    }

    /// Holds nothing: between reads of a head, or idle.
    fn release(&mut self) {
        self.permit = None;
        self.uncounted = false;
        self.state.forget_wait();
    }

    /// Every call of `poll_flush` ends a turn of actix-http's dispatcher
    /// (read, parse, answer, flush). A permit taken for a read that started
    /// no request is given back here: the head is still incomplete, and the
    /// connection must hold nothing while it waits for the rest.
    fn end_of_turn(&mut self) {
        if self.admitted() && !self.state.started.load(Ordering::Relaxed) {
            self.release();
        }
    }

    fn answered(&mut self) {
        self.state.started.store(false, Ordering::Relaxed);
        self.release();
        self.wrote = false;
        self.idle_since = Instant::now();
    }

    /// `n` bytes of `buf` were written: part of an answer, unless they are
    /// (part of) a lone interim `100 Continue`.
    fn note_written(&mut self, buf: &[u8], n: usize) {
        let interim = !self.wrote && n <= CONTINUE.len() && buf.starts_with(CONTINUE);
        if n > 0 && !interim {
            self.wrote = true;
        }
    }
}

impl AsyncRead for AdmittedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let admitted_now = !this.admitted();
        if admitted_now {
            // Nothing to read yet: wait for bytes holding nothing.
            ready!(this.io()?.poll_read_ready(cx))?;
            ready!(this.poll_admitted(cx));
        }
        let r = Pin::new(this.io_mut()?).poll_read(cx, buf);
        if admitted_now && r.is_pending() {
            // The readiness was stale: there was nothing to read after all,
            // so the connection is idle again and holds nothing.
            this.release();
        }
        // Otherwise the permit stays until the end of this turn (see
        // `end_of_turn`): only then is it known whether the bytes completed
        // a head.
        r
    }
}

impl AsyncWrite for AdmittedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(this.io_mut()?).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.note_written(buf, n);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(this.io_mut()?).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            this.note_written(first, n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let r = Pin::new(io).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) && this.wrote {
            this.answered();
        } else {
            this.end_of_turn();
        }
        if matches!(r, Poll::Ready(Ok(()))) {
            this.hand_off(cx);
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.release();
        match this.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            // The event stream that has the socket closes it.
            None => Poll::Ready(Ok(())),
        }
    }
}
