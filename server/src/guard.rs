//! Protection at the door: a listener that caps connections (in total and per IP), a token
//! bucket per connection (HTTP requests and WebSocket messages), and the API key check.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::AppState;
use crate::error::ApiError;
use crate::stats::ServerStats;

/// Header that carries the API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Counts open connections, in total and per peer IP.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnLimits {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_ip, open: Mutex::new(Open::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // Two counters, consistent at every unlock.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection from `ip`, or why there is none.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut open = self.lock();
        if open.total >= self.max_total {
            return Err("the server is at its connection limit");
        }
        let n = open.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err("too many connections from this address");
        }
        *n += 1;
        open.total += 1;
        Ok(Slot { limits: Arc::clone(self), ip })
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
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A sustained rate with a burst, per connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimit {
    pub(crate) per_s: f64,
    pub(crate) burst: f64,
}

/// What the server knows about one connection (shared by its requests, and by the WebSocket
/// it may become).
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) peer: SocketAddr,
    rate: RateLimit,
    bucket: Mutex<(f64, Instant)>,
}

impl ConnState {
    fn new(peer: SocketAddr, rate: RateLimit) -> Self {
        Self { peer, rate, bucket: Mutex::new((rate.burst, Instant::now())) }
    }

    /// Takes one message from the bucket: `Ok`, or how long until one is available.
    pub(crate) fn take(&self) -> Result<(), Duration> {
        // Only this connection's messages touch the bucket: never contended in practice.
        let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let refill = now.saturating_duration_since(b.1).as_secs_f64() * self.rate.per_s;
        b.0 = (b.0 + refill).min(self.rate.burst);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.0) / self.rate.per_s))
        }
    }
}

/// The connection a request came on (axum's connect info).
#[derive(Debug, Clone)]
pub(crate) struct Conn(pub(crate) Arc<ConnState>);

impl axum::extract::connect_info::Connected<IncomingStream<'_, LimitedListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, LimitedListener>) -> Self {
        Conn(Arc::clone(&stream.io().conn))
    }
}

/// A TCP listener that admits at most `max_connections` connections (and
/// `max_connections_per_ip` per address); one more is answered `503` with a JSON body and
/// closed, without reaching the router.
pub(crate) struct LimitedListener {
    inner: TcpListener,
    limits: Arc<ConnLimits>,
    rate: RateLimit,
    stats: Arc<ServerStats>,
}

impl LimitedListener {
    pub(crate) fn new(
        inner: TcpListener,
        limits: Arc<ConnLimits>,
        rate: RateLimit,
        stats: Arc<ServerStats>,
    ) -> Self {
        Self { inner, limits, rate, stats }
    }
}

impl Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedStream, SocketAddr) {
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
                    self.stats.connection_accepted();
                    let conn = Arc::new(ConnState::new(peer, self.rate));
                    return (LimitedStream { stream, conn, _slot: slot }, peer);
                }
                Err(reason) => {
                    self.stats.connections_refused();
                    tracing::debug!(%peer, reason, "connection refused");
                    tokio::spawn(refuse(stream, reason));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Answers a connection over the limit: reads what the client sent first (so closing does not
/// reset the connection under its feet), writes a 503, closes.
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

/// An admitted connection: the socket, its per-connection state, its slot.
pub(crate) struct LimitedStream {
    stream: TcpStream,
    conn: Arc<ConnState>,
    _slot: Slot,
}

impl AsyncRead for LimitedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Middleware: one token per request from the connection's bucket; 429 when it is empty.
pub(crate) async fn rate_limit(
    State(state): State<Arc<AppState>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
    next: Next,
) -> Response {
    match conn.0.take() {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            state.stats.rate_limited();
            let per_s = state.config.rate_limit_per_s;
            let mut e = ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!("rate limit: {per_s} requests per second per connection"),
            );
            e.retry_after = Some(wait.as_secs().max(1));
            e.into_response()
        }
    }
}

/// Middleware: the API key, from the `x-api-key` header (or the `api_key` query parameter on
/// `/ws`, where browsers can't set headers); 401 without it.
pub(crate) async fn require_api_key(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let expected = state.config.api_key.as_bytes();
    let from_header = req.headers().get(API_KEY_HEADER).is_some_and(|v| same_key(v.as_bytes(), expected));
    let from_query = req.uri().path() == "/ws"
        && axum::extract::Query::<HashMap<String, String>>::try_from_uri(req.uri())
            .is_ok_and(|q| q.0.get("api_key").is_some_and(|k| same_key(k.as_bytes(), expected)));
    if from_header || from_query {
        next.run(req).await
    } else {
        state.stats.auth_rejected();
        let mut res = ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            format!("missing or wrong API key (header {API_KEY_HEADER})"),
        )
        .into_response();
        res.headers_mut()
            .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("ApiKey"));
        res
    }
}

/// Compares two keys in time that depends only on their length (which an attacker learns
/// anyway from any key format), not on where they first differ.
fn same_key(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(b"secret-key", b"secret-key"));
        assert!(!same_key(b"secret-kex", b"secret-key"));
        assert!(!same_key(b"secret", b"secret-key"));
        assert!(!same_key(b"", b"k"));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let c = ConnState::new("127.0.0.1:1".parse().unwrap(), RateLimit { per_s: 10.0, burst: 3.0 });
        assert!((0..3).all(|_| c.take().is_ok()));
        let wait = c.take().unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
    }

    #[test]
    fn slots_are_counted_in_total_and_per_ip_and_freed_on_drop() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = limits.admit(a).unwrap();
        let _s2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), "too many connections from this address");
        let _s3 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), "the server is at its connection limit");
        drop(s1);
        assert_eq!(limits.open(), 2);
        assert!(limits.admit(a).is_ok());
    }
}
