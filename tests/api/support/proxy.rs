//! A TCP proxy in front of a dependency (Redis or Postgres) that slows,
//! black-holes, resets or cuts the connections through it, and brings them
//! back, without touching the shared servers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::pg::{pg_base, pg_host_port};
use super::redis_server::RedisServer;

/// What a [`FaultProxy`] does to the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards every chunk as it comes.
    Pass,
    /// Forwards every chunk, in order, this much later (both directions):
    /// a slow network or a slow server.
    Delay(Duration),
    /// Accepts connections and reads what is sent, but never forwards or
    /// answers anything: a black hole. A connection that lost bytes to it
    /// is reset (RST) once the mode changes: a TCP stream never resumes
    /// with a hole in it.
    Drop,
    /// Resets (RST) every open connection and every new one at once.
    Reset,
    /// Every connection open when this mode begins turns into a black hole
    /// for good (a firewall or NAT that forgot its flows, a host gone
    /// without a reset); new connections pass.
    Stale,
}

/// A TCP proxy in front of a dependency, to cut it off, slow it down,
/// black-hole or reset it and bring it back (Postgres or Redis "down")
/// without touching the shared server.
pub struct FaultProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<std::sync::Mutex<CancellationToken>>,
    mode: Arc<tokio::sync::watch::Sender<ProxyMode>>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let mode = Arc::new(tokio::sync::watch::Sender::new(ProxyMode::Pass));
        let (up2, gen2, mode2, upstream) = (
            up.clone(),
            generation.clone(),
            mode.clone(),
            upstream.to_string(),
        );
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                if *mode2.borrow() == ProxyMode::Reset {
                    let _ = inbound.set_zero_linger();
                    drop(inbound);
                    continue;
                }
                let cancel = gen2.lock().expect("lock").clone();
                let (upstream, mode) = (upstream.clone(), mode2.subscribe());
                tokio::spawn(proxy_connection(inbound, upstream, mode, cancel));
            }
        });
        Self {
            port,
            up,
            generation,
            mode,
        }
    }

    /// A proxy in front of the tests' Postgres (see `Spawn::via_pg_proxy`).
    pub async fn postgres() -> Self {
        Self::start(pg_host_port(&pg_base())).await
    }

    /// A proxy in front of a test's own `redis-server`.
    pub async fn redis(server: &RedisServer) -> Self {
        Self::start(&format!("127.0.0.1:{}", server.port)).await
    }

    /// The `redis://` URL that reaches Redis through this proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Refuses new connections and cuts the open ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut g = self.generation.lock().expect("lock");
        g.cancel();
        *g = CancellationToken::new();
    }

    /// Back to normal: accepts again and forwards everything at once.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
        self.set(ProxyMode::Pass);
    }

    /// Applies `mode` to open connections and new ones from now on.
    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }
}

/// One proxied connection: two pumps (client to server, server to client)
/// until either side closes, the proxy is cut, or the mode resets it.
async fn proxy_connection(
    inbound: TcpStream,
    upstream: String,
    mut mode: tokio::sync::watch::Receiver<ProxyMode>,
    cancel: CancellationToken,
) {
    let Ok(outbound) = TcpStream::connect(&upstream).await else {
        return;
    };
    // Lost bytes to a black hole; for good (`Stale`).
    let (holed, stale) = (AtomicBool::new(false), AtomicBool::new(false));
    let (mut client_in, mut client_out) = inbound.into_split();
    let (mut server_in, mut server_out) = outbound.into_split();
    let reset = {
        let up = pump(&mut client_in, &mut server_out, mode.clone(), &holed);
        let down = pump(&mut server_in, &mut client_out, mode.clone(), &holed);
        tokio::select! {
            _ = async { tokio::join!(up, down) } => false,
            _ = cancel.cancelled() => false,
            _ = reset_due(&mut mode, &holed, &stale) => true,
        }
    };
    if reset {
        let _ = AsRef::<TcpStream>::as_ref(&client_in).set_zero_linger();
        let _ = AsRef::<TcpStream>::as_ref(&server_in).set_zero_linger();
    }
}

/// Returns once the connection must be reset: the mode is `Reset`, or it
/// lost bytes to a black hole that has ended (unless it went stale: then
/// it stays a black hole).
async fn reset_due(
    mode: &mut tokio::sync::watch::Receiver<ProxyMode>,
    holed: &AtomicBool,
    stale: &AtomicBool,
) {
    let mut born = true;
    loop {
        match *mode.borrow_and_update() {
            ProxyMode::Reset => return,
            ProxyMode::Stale if !born => {
                stale.store(true, Ordering::SeqCst);
                holed.store(true, Ordering::SeqCst);
            }
            ProxyMode::Drop => {}
            _ if holed.load(Ordering::SeqCst) && !stale.load(Ordering::SeqCst) => return,
            _ => {}
        }
        born = false;
        if mode.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Copies one direction chunk by chunk through a delay line: each chunk
/// is due when it was read plus the delay in force then, and is written
/// in order. In `Drop` mode chunks are read and thrown away, and the
/// connection stays a black hole from then on.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mode: tokio::sync::watch::Receiver<ProxyMode>,
    holed: &AtomicBool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let due = match *mode.borrow() {
                ProxyMode::Drop => {
                    holed.store(true, Ordering::SeqCst);
                    continue;
                }
                ProxyMode::Delay(d) => tokio::time::Instant::now() + d,
                ProxyMode::Pass | ProxyMode::Reset | ProxyMode::Stale => {
                    tokio::time::Instant::now()
                }
            };
            if holed.load(Ordering::SeqCst) {
                continue;
            }
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break; // the writer gave up: its side is gone
            }
        }
    };
    let write = async {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if holed.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
