//! An event stream takes its connection's socket from actix-http once its
//! head and first event are written (see [`Handoff`]).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Context;

use tokio::net::TcpStream;

use super::{AdmittedStream, ConnState};

/// What takes a connection's socket away from actix-http, for an event
/// stream (`api::events`): memory. A connection served by actix-http's
/// dispatcher keeps two 8 KiB buffers (a page of each resident) and a task
/// of ~2 KiB for as long as its response lasts; an event stream lasts for
/// hours and writes a few hundred bytes now and then. So once the stream's
/// response head (and first event) are written and flushed, the socket is
/// handed to `take`, which writes the rest of the stream itself; actix-http
/// then sees the connection end and frees its side of it.
///
/// `ready` is set by the response body once it has nothing more to give
/// actix-http (it yielded the first event, if any): from then on actix-http
/// writes nothing more on the connection, and the next flush (which comes
/// after everything written so far) hands the socket over.
pub struct Handoff {
    pub ready: Arc<AtomicBool>,
    pub take: Box<dyn FnOnce(TcpStream) + Send>,
}

impl ConnState {
    /// The connection's socket goes to `handoff.take` once the current
    /// response is flushed and `handoff.ready` is set.
    pub fn hand_off(&self, handoff: Handoff) {
        if let Ok(mut h) = self.handoff.lock() {
            *h = Some(handoff);
            self.handoff_armed.store(true, Ordering::Release);
        }
    }

    /// The handoff, if one is ready to take the socket (checked on every
    /// flush: without a handoff registered, one atomic load).
    pub(super) fn ready_handoff(&self) -> Option<Handoff> {
        if !self.handoff_armed.load(Ordering::Acquire) {
            return None;
        }
        let mut h = self.handoff.lock().ok()?;
        if h.as_ref()?.ready.load(Ordering::Acquire) {
            h.take()
        } else {
            None
        }
    }
}

impl AdmittedStream {
    /// After a flush: the socket goes to an event stream that is ready for
    /// it. Everything actix-http wrote has been written (it flushes only an
    /// empty buffer), and it will write nothing more.
    pub(super) fn hand_off(&mut self, cx: &mut Context<'_>) {
        let Some(handoff) = self.state.ready_handoff() else {
            return;
        };
        if let Some(io) = self.io.take() {
            self.release();
            self.wait = None;
            (handoff.take)(io);
            // actix-http reads next, fails, and ends the connection.
            cx.waker().wake_by_ref();
        }
    }
}

/// What actix-http reads from a connection whose socket an event stream took.
pub(super) fn handed_off() -> io::Error {
    io::Error::other("the connection was handed to an event stream")
}
