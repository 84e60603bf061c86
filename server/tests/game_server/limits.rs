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
async fn the_rate_limit_is_per_client_not_per_connection() {
    // One token a second: the requests below can't earn a sixth token, however slowly a
    // loaded machine runs them.
    let t = start(10, |c| {
        c.server.rate_limit_per_s = 1;
        c.server.rate_burst = 5;
    })
    .await;
    let addr = t.server.local_addr();
    // Five requests on five fresh connections from one address spend its burst: reconnecting
    // does not refill it.
    let mut codes = Vec::new();
    for _ in 0..7 {
        let (code, body) = health_from("127.0.0.1", addr).await;
        if code == 429 {
            assert!(body.to_ascii_lowercase().contains("retry-after"), "{body}");
            assert!(body.contains("rate limit"), "{body}");
        }
        codes.push(code);
    }
    assert_eq!(&codes[..5], [200; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|&c| c == 429), "{codes:?}");
    // Another address has its own bucket.
    assert_eq!(health_from("127.0.0.2", addr).await.0, 200);

    // A WebSocket that sends faster than the limit is closed with 1008 (from a third address:
    // the upgrade takes one token, the messages the rest).
    let url = format!("ws://{addr}/ws?api_key={KEY}");
    let (mut ws, _) =
        tokio_tungstenite::client_async(url, connect_from("127.0.0.3", addr).await).await.unwrap();
    let sub = json!({"type": "subscribe", "min": [0, 0], "max": [10, 10]}).to_string();
    for _ in 0..20 {
        if ws.send(tokio_tungstenite::tungstenite::Message::text(sub.clone())).await.is_err() {
            break;
        }
    }
    let mut code = None;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Close(frame) = msg {
            code = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(1008));
    assert_eq!(t.server.figures().ws_closed_rate_limit, 1);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawns_stop_at_max_npcs_and_at_the_keys_budget() {
    let spawn = json!({"role": "guard", "position": [1, 0, 1]});
    // 10 NPCs, room for 2 more.
    let t = start(10, |c| c.server.max_npcs = 12).await;
    for _ in 0..2 {
        assert_eq!(t.post("/api/npcs", &spawn).await.0, StatusCode::ACCEPTED);
    }
    let (status, body) = t.post("/api/npcs", &spawn).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("max_npcs"), "{body}");
    // Still full once the spawns landed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(t.post("/api/npcs", &spawn).await.0, StatusCode::CONFLICT);
    assert_eq!(t.server.with_engine(|e| e.npc_count()).await.unwrap(), 12);
    t.server.shutdown().await.unwrap();

    // A budget of 3 spawns, one more a minute: the fourth waits.
    let t = start(10, |c| {
        c.server.spawn_burst = 3;
        c.server.spawn_rate_per_s = 1;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(t.post("/api/npcs", &spawn).await.0, StatusCode::ACCEPTED);
    }
    let res = t.http.post(t.url("/api/npcs")).header("x-api-key", KEY).json(&spawn).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("spawn budget"), "{body}");
    assert_eq!(t.server.figures().spawns_refused, 1);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_has_one_bucket_whatever_the_client() {
    // Each client may make 400 requests at once; the key, 3 in all, one more a minute.
    let t = start(10, |c| {
        c.server.key_rate_burst = 3;
        c.server.key_rate_limit_per_s = 1;
    })
    .await;
    for _ in 0..2 {
        assert_eq!(t.get("/api/performance").await.0, StatusCode::OK);
    }
    // Another address, the same key: the third request is the key's last.
    let other =
        reqwest::Client::builder().local_address("127.0.0.2".parse::<IpAddr>().unwrap()).build().unwrap();
    let get = || other.get(t.url("/api/performance")).header("x-api-key", KEY).send();
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    let res = get().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("per API key"), "{body}");
    assert_eq!(t.get("/api/performance").await.0, StatusCode::TOO_MANY_REQUESTS, "the first client too");
    // Without a key the request never reaches the key's bucket (401, not 429).
    assert_eq!(other.get(t.url("/api/performance")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(t.server.figures().rate_limited, 2);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_capped_and_a_silent_one_is_closed() {
    let t = start(10, |c| {
        c.server.max_ws_connections = 1;
        c.server.ws_ping_interval_s = 1;
        c.server.ws_idle_timeout_s = 2;
    })
    .await;
    let addr = t.server.local_addr();
    let url = format!("ws://{addr}/ws?api_key={KEY}");
    // A client that never reads never answers a ping (tungstenite answers while reading).
    let (mut silent, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status().as_u16(), 503),
        other => panic!("a second websocket over the cap: {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(t.server.figures().ws_refused, 1);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let mut code = None;
    let mut pings = 0;
    // tungstenite answers the pings it reads; writing a pong to the closed socket may fail
    // before it hands over the close frame, which then counts as closed too.
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), silent.next()).await {
        match msg {
            tokio_tungstenite::tungstenite::Message::Ping(_) => pings += 1,
            tokio_tungstenite::tungstenite::Message::Close(frame) => {
                code = frame.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    assert!(code.is_none_or(|c| c == 1001), "closed as gone away: {code:?}");
    assert!(pings >= 1 || code.is_none(), "it was pinged first");
    assert_eq!(t.server.figures().ws_closed_idle, 1);
    // Its slot is free again; a client that reads (and so answers pings) stays.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut live, _) = loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok(ok) => break ok,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("the slot was never freed: {e}"),
        }
    };
    let until = Instant::now() + Duration::from_millis(3500);
    while let Ok(next) = tokio::time::timeout_at(until.into(), live.next()).await {
        let msg = next.expect("open").expect("no error");
        assert!(!msg.is_close(), "a client that answers pings is kept: {msg:?}");
    }
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_pending_refusals_a_refused_connection_is_closed_unanswered() {
    let t = start(10, |c| {
        c.server.max_connections = 1;
        c.server.max_connections_per_ip = 1;
        c.server.max_pending_refusals = 0;
    })
    .await;
    let addr = t.server.local_addr();
    let _held = connect_from("127.0.0.1", addr).await;
    let mut s = connect_from("127.0.0.2", addr).await;
    let _ = s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap();
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert_eq!(t.server.figures().connections_refused, 1);
    t.server.shutdown().await.unwrap();
}
