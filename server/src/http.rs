//! The accept loop: each admitted connection served by hyper's HTTP/1 with a timer, so the
//! header-read timeout holds (axum's `serve` runs hyper without one, which turns it off), with
//! upgrades (WebSockets), and a graceful stop that lets requests in flight finish.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tower_service::Service;

use crate::guard::{Conn, LimitedListener};

/// Largest request head (request line and headers) a connection may buffer, bytes.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;

/// Serves `router` on `listener` until `shutdown` turns true, then waits for the connections
/// (each told to finish its request in flight and close; WebSockets close on their own).
pub(crate) async fn serve(
    mut listener: LimitedListener,
    router: Router,
    header_read_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    // Each connection task holds a receiver; once all are dropped, every connection is done.
    let (done_tx, done_rx) = watch::channel(());
    loop {
        let stream = tokio::select! {
            stream = listener.accept() => stream,
            () = stopping(&mut shutdown) => break,
        };
        let conn = Conn(std::sync::Arc::clone(&stream.conn));
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(conn.clone()));
            let mut router = router.clone();
            async move {
                let res: Result<_, Infallible> = router.call(req.map(axum::body::Body::new)).await;
                res
            }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let (mut stop, done) = (shutdown.clone(), done_rx.clone());
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopping(&mut stop) => {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                // Timeouts, resets and malformed requests: routine on the internet.
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(done);
        });
    }
    drop(listener);
    drop(done_rx);
    done_tx.closed().await;
}

/// Resolves once the server is stopping (at once if it already is; also when the sender is
/// gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}
