//! Protection at the door: a listener that caps connections (in total and per client),
//! answers a bounded number of refusals, sets TCP keepalive and closes connections idle past
//! their deadline; the per-client rate limit, the per-request deadline and the API key check.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use crate::AppState;
use crate::error::ApiError;
use crate::keys::{API_KEY_HEADER, Access};
use crate::protocol::WS_KEY_PREFIX;
use crate::rate::{TrustedProxies, client_of};
use crate::stats::ServerStats;

/// Counts open connections, in total and per client.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    max_total: usize,
    max_per_client: usize,
    v6_bits: u8,
    /// Trusted proxies carry many clients: no per-client cap for them.
    proxies: TrustedProxies,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

impl ConnLimits {
    pub(crate) fn new(
        max_total: usize,
        max_per_client: usize,
        v6_bits: u8,
        proxies: TrustedProxies,
    ) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_client, v6_bits, proxies, open: Mutex::new(Open::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // Two counters, consistent at every unlock.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection from `ip`, or why there is none.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let client = (!self.proxies.contains(ip)).then(|| client_of(ip, self.v6_bits));
        let mut open = self.lock();
        if open.total >= self.max_total {
            return Err("the server is at its connection limit");
        }
        if let Some(client) = client {
            let n = open.per_client.entry(client).or_insert(0);
            if *n >= self.max_per_client {
                return Err("too many connections from this address");
            }
            *n += 1;
        }
        open.total += 1;
        Ok(Slot { limits: Arc::clone(self), client })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.lock().total
    }
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
struct Slot {
    limits: Arc<ConnLimits>,
    client: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = self.client.and_then(|c| open.per_client.get_mut(&c)) {
            *n -= 1;
            if *n == 0 {
                let client = self.client.expect("counted only with a client");
                open.per_client.remove(&client);
            }
        }
    }
}

/// What the server knows about one connection (shared by its requests, and by the WebSocket
/// it may become).
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) peer: SocketAddr,
    /// Set once the connection became a WebSocket: its idle handling is the WebSocket's
    /// (pings), not the socket's deadline.
    pub(crate) upgraded: AtomicBool,
}

/// The connection a request came on (axum's connect info).
#[derive(Debug, Clone)]
pub(crate) struct Conn(pub(crate) Arc<ConnState>);

/// The client a request counts for (its address, or what a trusted proxy forwarded), as the
/// rate limit found it; the WebSocket handler charges its messages to the same bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client(pub(crate) IpAddr);

/// Settings of the door.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DoorConfig {
    pub(crate) idle: Duration,
    /// `None`: off.
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) max_pending_refusals: usize,
}

/// A TCP listener that admits at most `max_connections` connections (and
/// `max_connections_per_ip` per client); one more is answered `503` with a JSON body and
/// closed, without reaching the router, while fewer than `max_pending_refusals` refusals are
/// in progress (closed unanswered past that).
pub(crate) struct LimitedListener {
    inner: TcpListener,
    limits: Arc<ConnLimits>,
    door: DoorConfig,
    refusals: Arc<Semaphore>,
    stats: Arc<ServerStats>,
}

impl LimitedListener {
    pub(crate) fn new(
        inner: TcpListener,
        limits: Arc<ConnLimits>,
        door: DoorConfig,
        stats: Arc<ServerStats>,
    ) -> Self {
        let refusals = Arc::new(Semaphore::new(door.max_pending_refusals));
        Self { inner, limits, door, refusals, stats }
    }

    /// The next admitted connection.
    pub(crate) async fn accept(&mut self) -> LimitedStream {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Per-connection failures (reset before accept) are routine; anything else
                    // (out of file descriptors) gets a pause so the loop doesn't spin.
                    if !matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
                    {
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            };
            match self.limits.admit(peer.ip()) {
                Ok(slot) => {
                    // Small responses should leave at once, not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    if let Some(idle) = self.door.tcp_keepalive {
                        let ka = socket2::TcpKeepalive::new()
                            .with_time(idle)
                            .with_interval(idle.div_f64(4.0).max(Duration::from_secs(1)));
                        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka) {
                            tracing::debug!(error = %e, "tcp keepalive not set");
                        }
                    }
                    self.stats.connection_accepted();
                    let conn = Arc::new(ConnState { peer, upgraded: AtomicBool::new(false) });
                    return LimitedStream::new(stream, conn, slot, self.door.idle);
                }
                Err(reason) => {
                    self.stats.connections_refused();
                    tracing::debug!(%peer, reason, "connection refused");
                    match Arc::clone(&self.refusals).try_acquire_owned() {
                        Ok(permit) => {
                            tokio::spawn(async move {
                                refuse(stream, reason).await;
                                drop(permit);
                            });
                        }
                        // Enough refusals in progress: close this one unanswered.
                        Err(_) => drop(stream),
                    }
                }
            }
        }
    }
}

/// Answers a connection over the limit: reads what the client sent first (so closing does not
/// reset the connection under its feet), writes a 503, closes. Two seconds at most.
async fn refuse(mut stream: TcpStream, reason: &'static str) {
    let wait = Duration::from_secs(1);
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(wait, stream.read(&mut buf)).await;
    let err = ApiError::unavailable(reason, 1);
    let body = err.body();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(wait, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        // Drain until the client closes, so unread bytes don't turn our close into a reset.
        while stream.read(&mut buf).await? > 0 {}
        Ok::<(), io::Error>(())
    })
    .await;
}

/// An admitted connection: the socket, its per-connection state, its slot, and its idle
/// deadline (no byte either way for `idle` fails the pending read or write with `TimedOut`,
/// which closes the connection; not once it is a WebSocket).
pub(crate) struct LimitedStream {
    stream: TcpStream,
    pub(crate) conn: Arc<ConnState>,
    _slot: Slot,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl LimitedStream {
    fn new(stream: TcpStream, conn: Arc<ConnState>, slot: Slot, idle: Duration) -> Self {
        let last = Instant::now();
        let timer = Box::pin(tokio::time::sleep(idle));
        Self { stream, conn, _slot: slot, idle, last, timer }
    }

    /// Called when an operation is pending: `Ready(TimedOut)` once the connection has been
    /// idle for its whole allowance, `Pending` (with the timer armed) before.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.conn.upgraded.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        let deadline = tokio::time::Instant::from_std(self.last + self.idle);
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "connection idle")),
            Poll::Pending => Poll::Pending,
        }
    }

    fn on<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>, moved: bool) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                if moved {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        this.on(cx, r, moved)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        let moved = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        this.on(cx, r, moved)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        this.on(cx, r, false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        let moved = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        this.on(cx, r, moved)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Middleware: one token per request from the client's bucket (shared by all its
/// connections); 429 when it is empty. Notes the client in the request for later layers.
pub(crate) async fn rate_limit(
    State(state): State<Arc<AppState>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    mut req: Request,
    next: Next,
) -> Response {
    let ip = state.proxies.client_ip(conn.0.peer.ip(), req.headers());
    let client = client_of(ip, state.config.ipv6_prefix_bits);
    req.extensions_mut().insert(Client(client));
    match state.buckets.take(client) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            state.stats.rate_limited();
            let per_s = state.config.rate_limit_per_s;
            ApiError::too_many_requests(format!("rate limit: {per_s} requests per second per client"), wait)
                .into_response()
        }
    }
}

/// Middleware: a request that takes longer than `request_timeout_s` is answered 503 (its
/// handler is dropped; a spawn or order already queued stays queued).
pub(crate) async fn deadline(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limit = Duration::from_secs(state.config.request_timeout_s);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            state.stats.timed_out();
            ApiError::unavailable(format!("the request took longer than {} s", limit.as_secs()), 1)
                .into_response()
        }
    }
}

/// Middleware: the API key (see `keys.rs` for where a request may carry it); 401 without a
/// valid one, 403 for a read-only key on a route that changes the world, 400 for a malformed
/// WebSocket sub-protocol offer, 429 when the key's own bucket (all its clients together) is
/// empty.
pub(crate) async fn require_api_key(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let access = match state.keys.of_request(&parts) {
        Ok(access) => access,
        Err(e) => {
            state.stats.auth_rejected();
            return ApiError::bad_request(e.to_string()).into_response();
        }
    };
    let reading = matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD);
    match access {
        Some(Access::Read) if !reading => {
            state.stats.auth_rejected();
            ApiError::new(axum::http::StatusCode::FORBIDDEN, "this API key is read-only").into_response()
        }
        Some(access) => match state.key_buckets.take(access) {
            Ok(()) => next.run(Request::from_parts(parts, body)).await,
            Err(wait) => {
                state.stats.rate_limited();
                let per_s = state.config.key_rate_limit_per_s;
                ApiError::too_many_requests(
                    format!("rate limit: {per_s} requests per second per API key"),
                    wait,
                )
                .into_response()
            }
        },
        None => {
            state.stats.auth_rejected();
            let mut res = ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                format!(
                    "missing or wrong API key (header {API_KEY_HEADER}; on /ws also the \
                     sub-protocol {WS_KEY_PREFIX}<key>)"
                ),
            )
            .into_response();
            res.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("ApiKey"));
            res
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_in_total_and_per_client_and_freed_on_drop() {
        let limits = ConnLimits::new(4, 2, 64, TrustedProxies::new(vec![("127.0.0.9".parse().unwrap(), 32)]));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = limits.admit(a).unwrap();
        let _s2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), "too many connections from this address");
        let _s3 = limits.admit(b).unwrap();
        let proxy: IpAddr = "127.0.0.9".parse().unwrap();
        let _p = limits.admit(proxy).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), "the server is at its connection limit");
        drop(s1);
        assert_eq!(limits.open(), 3);
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn one_ipv6_prefix_is_one_client() {
        let limits = ConnLimits::new(100, 2, 64, TrustedProxies::default());
        let _a = limits.admit("2001:db8::1".parse().unwrap()).unwrap();
        let _b = limits.admit("2001:db8::2:3".parse().unwrap()).unwrap();
        assert!(limits.admit("2001:db8::ffff".parse().unwrap()).is_err(), "same /64");
        assert!(limits.admit("2001:db8:0:1::1".parse().unwrap()).is_ok(), "next /64");
    }
}
