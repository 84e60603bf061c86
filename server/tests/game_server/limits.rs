//! Connection and rate limits.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::harness::*;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection from `local` (any 127.x address is loopback on Linux).
async fn connect_from(local: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local.parse::<IpAddr>().unwrap(), 0)).unwrap();
    socket.connect(server).await.unwrap()
}

/// `GET /health` on a fresh connection from `local`: status code and body.
async fn health_from(local: &str, server: SocketAddr) -> (u16, String) {
    let mut s = connect_from(local, server).await;
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_over_a_limit_is_refused() {
    let t = start(10, |c| {
        c.server.max_connections = 3;
        c.server.max_connections_per_ip = 2;
    })
    .await;
    let addr = t.server.local_addr();
    let _a1 = connect_from("127.0.0.1", addr).await;
    let _a2 = connect_from("127.0.0.1", addr).await;
    let (code, body) = health_from("127.0.0.1", addr).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("too many connections from this address"), "{body}");
    let b1 = connect_from("127.0.0.2", addr).await;
    let (code, body) = health_from("127.0.0.3", addr).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("connection limit"), "{body}");
    // A closed connection frees its slot.
    drop(b1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, body) = health_from("127.0.0.3", addr).await;
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(t.server.figures().connections_refused >= 2);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_enforced_per_connection() {
    // One token a second: the eight requests below can't earn a sixth token, however slowly a
    // loaded machine runs them.
    let t = start(10, |c| {
        c.server.rate_limit_per_s = 1;
        c.server.rate_burst = 5;
    })
    .await;
    // One keep-alive connection: the burst passes, then 429s with a retry hint.
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    let mut codes = Vec::new();
    for _ in 0..8 {
        let res = client.get(t.url("/health")).send().await.unwrap();
        let status = res.status();
        codes.push(status.as_u16());
        let retry_after = res.headers().contains_key("retry-after");
        // Read every body: the connection goes back to the pool (and is reused) only then.
        let body: Value = res.json().await.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after);
            assert!(body["error"].as_str().unwrap().contains("rate limit"), "{body}");
        }
    }
    assert_eq!(&codes[..5], [200; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|&c| c == 429), "{codes:?}");
    // Another connection has its own bucket.
    let res = reqwest::Client::new().get(t.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // A WebSocket that sends faster than the limit is closed with 1008.
    let url = format!("ws://{}/ws?api_key={KEY}", t.server.local_addr());
    let mut ws = yawc::WebSocket::connect(url.parse().unwrap()).await.unwrap();
    let sub = json!({"type": "subscribe", "min": [0, 0], "max": [10, 10]}).to_string();
    let mut code = None;
    for _ in 0..20 {
        if ws.send(yawc::Frame::text(sub.clone())).await.is_err() {
            break;
        }
    }
    while let Some(f) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
        if f.opcode() == yawc::OpCode::Close {
            code = f.close_code();
            break;
        }
    }
    assert_eq!(code, Some(yawc::close::CloseCode::Policy));
    assert_eq!(t.server.figures().ws_closed_rate_limit, 1);
    t.server.shutdown().await.unwrap();
}
