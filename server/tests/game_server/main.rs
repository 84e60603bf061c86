//! The game server with real clients: reqwest for HTTP, yawc and tokio-tungstenite for
//! WebSockets, raw sockets from other loopback addresses for the connection limits. Each test
//! starts its own server in process on an ephemeral port (the last one runs the example binary
//! and stops it with SIGTERM).

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use terrarium::engine::{Engine, NpcId, Position, Velocity, Wander};
use terrarium::persistence::{NpcFilter, Page, Storage};
use terrarium::server::Server;
use terrarium::{Config, StoragePipeline};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

const KEY: &str = "test-key-0123456789";

struct TestServer {
    server: Server,
    base: String,
    http: reqwest::Client,
}

/// A small, dense world ticking fast, batching quickly, storing in memory.
fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.engine.seed = 11;
    cfg.engine.threads = 1;
    cfg.engine.tick_hz = 50;
    cfg.engine.world.max = [256.0, 64.0, 256.0];
    cfg.engine.npc.wander_speed = 8.0;
    cfg.engine.batching.positions.max_age_ms = 100;
    cfg.write_behind.commit_interval_ms = 5;
    cfg.server.api_key = KEY.into();
    cfg.server.port = 0;
    cfg.server.ws_hz = 25;
    cfg.server.ws_deflate_min_bytes = 256;
    cfg
}

async fn start(npcs: u64, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut cfg = test_config();
    tweak(&mut cfg);
    let mut engine =
        Engine::builder(cfg.engine.clone()).add_plugin(terrarium::systems::core_plugin).build().unwrap();
    terrarium::systems::wander::spawn_wanderers(&mut engine, npcs);
    // On the test's runtime, like the example; started off its workers (it blocks).
    let (handle, storage_cfg) = (tokio::runtime::Handle::current(), cfg.clone());
    let storage = tokio::task::spawn_blocking(move || StoragePipeline::start_on(&handle, &storage_cfg))
        .await
        .unwrap()
        .unwrap();
    let server = Server::start(&cfg, engine, Some(storage)).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    TestServer { server, base, http: reqwest::Client::new() }
}

impl TestServer {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self.http.get(self.url(path)).header("x-api-key", KEY).send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let res = self.http.post(self.url(path)).header("x-api-key", KEY).json(body).send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Polls `GET path` until `done` says yes (storage trails the world by a batch).
    async fn get_until(&self, path: &str, done: impl Fn(StatusCode, &Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.get(path).await;
            if done(status, &body) {
                return body;
            }
            assert!(Instant::now() < deadline, "GET {path} never got there: {status} {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every NPC listed, page by page.
    async fn list_all(&self, query: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after: Option<u64> = None;
        loop {
            let cursor = after.map_or(String::new(), |a| format!("&after={a}"));
            let (status, page) = self.get(&format!("/api/npcs?limit=100{query}{cursor}")).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let npcs = page["npcs"].as_array().unwrap();
            assert!(npcs.len() <= 100);
            all.extend(npcs.iter().cloned());
            match page["next"].as_u64() {
                Some(n) => after = Some(n),
                None => return all,
            }
        }
    }
}

/// Where every NPC is, from the tick thread between two ticks.
async fn world_positions(s: &Server) -> (u64, HashMap<u64, [f32; 3]>) {
    s.with_engine(|e| {
        let tick = e.clock().tick;
        let mut q = e.world_mut().query::<(&NpcId, &Position)>();
        (tick, q.iter(e.world()).map(|(id, p)| (id.0, [p.x, p.y, p.z])).collect())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_and_only_health_goes_without_the_key() {
    let t = start(200, |_| {}).await;

    // /health needs no key; everything else does, and says so in JSON.
    let res = t.http.get(t.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let health: Value = res.json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    for path in ["/api/npcs", "/api/npcs/1", "/api/performance", "/metrics", "/ws"] {
        let res = t.http.get(t.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body: Value = res.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("x-api-key"), "{body}");
        let res = t.http.get(t.url(path)).header("x-api-key", "wrong-key-0123456789").send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path} with a wrong key");
    }
    let res = t.http.post(t.url("/api/npcs")).json(&json!({"role":"guard","position":[1,0,1]})).send().await;
    assert_eq!(res.unwrap().status(), StatusCode::UNAUTHORIZED);

    // GET /api/npcs/{id}: through the storage stack, once the first batch is written.
    let one = t.get_until("/api/npcs/1", |s, _| s == StatusCode::OK).await;
    assert_eq!(one["id"], 1);
    assert!(["miner", "builder", "guard", "trader", "scout"].contains(&one["role"].as_str().unwrap()));
    let (status, body) = t.get("/api/npcs/999999").await;
    assert_eq!((status, body["status"].as_u64()), (StatusCode::NOT_FOUND, Some(404)));

    // POST /api/npcs spawns; the NPC is readable once its batch is written.
    let (status, body) =
        t.post("/api/npcs", &json!({"role": "trader", "position": [100.5, 0, 20.25], "swarm": 3})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_u64().unwrap();
    assert!(id > 200, "ids continue after the population: {id}");
    let npc = t.get_until(&format!("/api/npcs/{id}"), |s, _| s == StatusCode::OK).await;
    assert_eq!((npc["role"].as_str(), npc["swarm"].as_u64()), (Some("trader"), Some(3)));
    assert_eq!((npc["x"].as_f64(), npc["z"].as_f64()), (Some(100.5), Some(20.25)));

    // POST /api/npcs/{id}/orders: applied at the next tick, visible once written.
    let (status, _) =
        t.post(&format!("/api/npcs/{id}/orders"), &json!({"order": "teleport", "position": [7, 0, 9]})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    t.get_until(&format!("/api/npcs/{id}"), |_, b| {
        b["x"].as_f64() == Some(7.0) && b["z"].as_f64() == Some(9.0)
    })
    .await;
    let (status, _) =
        t.post(&format!("/api/npcs/{id}/orders"), &json!({"order": "set_role", "role": "guard"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    t.get_until(&format!("/api/npcs/{id}"), |_, b| b["role"] == "guard").await;
    let (status, _) = t.post(&format!("/api/npcs/{id}/orders"), &json!({"order": "despawn"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    t.get_until(&format!("/api/npcs/{id}"), |s, _| s == StatusCode::NOT_FOUND).await;
    let (status, body) = t.post("/api/npcs/424242/orders", &json!({"order": "stop"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // GET /api/performance: the snapshot, with the server's counters.
    let (status, perf) = t.get("/api/performance").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(perf["npcs"], 200, "the spawned one is gone again: {perf}");
    assert_eq!(perf["tick_hz"], 50);
    assert!(perf["ticks_total"].as_u64().unwrap() > 0);
    assert!(perf["tick_latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(perf["stages"].as_array().unwrap().len(), 6);
    assert!(perf["batchers"]["batches"].as_u64().unwrap() > 0);
    assert_eq!(perf["write_behind"]["writes_dropped"], 0);
    assert_eq!(perf["caches"][0]["tier"], "l1");
    assert!(perf["caches"][0]["hits"].as_u64().unwrap() > 0, "repeated reads hit the L1: {perf}");
    assert_eq!(perf["circuit_breakers"][0]["name"], "storage.memory");
    assert_eq!(perf["circuit_breakers"][0]["state"], "closed");
    assert_eq!(perf["pathfinding"]["threads"], 1);
    assert!(perf["server"]["auth_rejected"].as_u64().unwrap() >= 11);

    // GET /ws: the upgrade needs the key, in the header or (for browsers) the query.
    let url = format!("ws://{}/ws?api_key={KEY}", t.server.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let hello: Value = serde_json::from_str(&hello).unwrap();
    assert_eq!((hello["type"].as_str(), hello["ws_hz"].as_f64()), (Some("hello"), Some(25.0)));
    let res = t.http.get(t.url("/ws")).header("x-api-key", KEY).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "a plain GET is not an upgrade");

    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_walks_every_npc_once_and_filters_match_the_world() {
    let t = start(250, |_| {}).await;
    // Wait until the registry holds the whole population.
    t.get_until("/api/npcs/250", |s, _| s == StatusCode::OK).await;
    let all = t.list_all("").await;
    let ids: Vec<u64> = all.iter().map(|n| n["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=250).collect::<Vec<u64>>(), "ascending, each once, across 3 pages");
    let (_, first) = t.get("/api/npcs?limit=7").await;
    assert_eq!((first["npcs"].as_array().unwrap().len(), first["next"].as_u64()), (7, Some(7)));
    let (_, second) = t.get("/api/npcs?limit=7&after=7").await;
    assert_eq!(second["npcs"][0]["id"], 8);

    // Filters agree with the world.
    let roles: HashMap<u64, String> = t
        .server
        .with_engine(|e| {
            let mut q = e.world_mut().query::<(&NpcId, &terrarium::engine::Role)>();
            q.iter(e.world()).map(|(id, r)| (id.0, r.name())).collect()
        })
        .await
        .unwrap();
    let miners = t.list_all("&role=miner").await;
    let want = roles.values().filter(|r| *r == "miner").count();
    assert!(want > 0 && miners.len() == want, "{} listed, {want} in the world", miners.len());
    assert!(miners.iter().all(|n| n["role"] == "miner"));
    let moving = t.list_all("&status=moving&role=scout").await;
    assert!(!moving.is_empty() && moving.iter().all(|n| n["status"] == "moving" && n["role"] == "scout"));
    assert!(t.list_all("&swarm=9").await.is_empty());

    // Bad queries are 400s that say what is wrong.
    for (query, says) in [
        ("limit=101", "limit must be 1 ..= 100"),
        ("limit=0", "limit must be"),
        ("limit=ten", "limit"),
        ("status=asleep", "unknown status"),
        ("role=wizard", "unknown role"),
        ("colour=red", "unknown field"),
    ] {
        let (status, body) = t.get(&format!("/api/npcs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{query}: {body}");
    }
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_json_errors() {
    let t = start(10, |c| c.server.max_body_bytes = 1024).await;
    let post_raw = |path: &str, body: &str, json: bool| {
        let mut req = t.http.post(t.url(path)).header("x-api-key", KEY).body(body.to_string());
        if json {
            req = req.header("content-type", "application/json");
        }
        req.send()
    };
    let cases: Vec<(&str, String, bool, StatusCode, &str)> = vec![
        ("/api/npcs", "{not json".into(), true, StatusCode::BAD_REQUEST, "parse the request body as JSON"),
        ("/api/npcs", r#"{"position":[1,0,1]}"#.into(), true, StatusCode::UNPROCESSABLE_ENTITY, "role"),
        (
            "/api/npcs",
            r#"{"role":"guard","position":[1,0,1],"hp":3}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field",
        ),
        (
            "/api/npcs",
            r#"{"role":"wizard","position":[1,0,1]}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown role",
        ),
        (
            "/api/npcs",
            r#"{"role":"guard","position":[1,0,999]}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "position",
        ),
        (
            "/api/npcs",
            r#"{"role":"guard","position":[1,0,1],"velocity":[500,0,0]}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "velocity",
        ),
        (
            "/api/npcs",
            r#"{"role":"guard","position":[1,0,1],"health":0}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "health",
        ),
        (
            "/api/npcs",
            r#"{"role":"guard","position":[1,0,1]}"#.into(),
            false,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            "/api/npcs",
            format!(r#"{{"role":"guard","position":[1,0,1],"pad":"{}"}}"#, "x".repeat(2000)),
            true,
            StatusCode::PAYLOAD_TOO_LARGE,
            "length limit",
        ),
        (
            "/api/npcs/1/orders",
            r#"{"order":"fly"}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown variant",
        ),
        (
            "/api/npcs/1/orders",
            r#"{"order":"move_to","target":[1,0]}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "target",
        ),
        (
            "/api/npcs/1/orders",
            r#"{"order":"move_to","target":[1,-5,1]}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "not inside the world",
        ),
        ("/api/npcs/x/orders", r#"{"order":"stop"}"#.into(), true, StatusCode::BAD_REQUEST, "parse"),
    ];
    for (path, body, json, want, says) in cases {
        let res = post_raw(path, &body, json).await.unwrap();
        let status = res.status();
        assert_eq!(res.headers()["content-type"], "application/json", "{path} {body}");
        let got: Value = res.json().await.unwrap();
        assert_eq!(status, want, "{path} {body}: {got}");
        assert!(got["error"].as_str().unwrap().contains(says), "{path} {body}: {got}");
        assert_eq!(got["status"], want.as_u16());
    }
    let (status, body) = t.get("/api/npcs/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = t.get("/nope").await;
    assert_eq!((status, body["status"].as_u64()), (StatusCode::NOT_FOUND, Some(404)));
    let res = t.http.delete(t.url("/api/npcs")).header("x-api-key", KEY).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(res.json::<Value>().await.unwrap()["error"].is_string());
    t.server.shutdown().await.unwrap();
}

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
    let t = start(10, |c| {
        c.server.rate_limit_per_s = 5;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_websocket_message_closes_the_connection() {
    let t = start(10, |c| c.server.max_ws_message_bytes = 1024).await;
    let url = format!("ws://{}/ws?api_key={KEY}", t.server.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.next().await.unwrap().unwrap(); // hello
    // At the limit is fine (an error reply: it is not a valid message, but it is read).
    let pad = 1024 - r#"{"type":"x","pad":""}"#.len();
    let at_limit = format!(r#"{{"type":"x","pad":"{}"}}"#, "a".repeat(pad));
    assert_eq!(at_limit.len(), 1024);
    ws.send(tokio_tungstenite::tungstenite::Message::text(at_limit)).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(reply.contains("\"error\""), "{reply}");
    ws.send(tokio_tungstenite::tungstenite::Message::text("b".repeat(1025))).await.unwrap();
    let mut closed = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match msg {
            Ok(tokio_tungstenite::tungstenite::Message::Close(frame)) => {
                closed = Some(frame.map(|f| u16::from(f.code)));
                break;
            }
            Ok(_) => {}
            Err(_) => {
                closed = Some(None);
                break;
            }
        }
    }
    assert_eq!(closed, Some(Some(1009)), "closed with 'message too big'");
    t.server.shutdown().await.unwrap();
}

/// Counts the bytes a stream reads, to see what came over the wire.
struct Counting<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client's picture of its area: applies resets and deltas.
#[derive(Default)]
struct Picture {
    npcs: HashMap<u64, [f32; 3]>,
    resets: u32,
    deltas: u32,
    moved: u64,
    gone: u64,
    last_tick: u64,
    payload_bytes: u64,
}

impl Picture {
    fn apply(&mut self, text: &str, aoi: Area) {
        self.payload_bytes += text.len() as u64;
        let v: Value = serde_json::from_str(text).unwrap();
        let entries = |key: &str| -> Vec<(u64, [f32; 3])> {
            v[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let f = |i: usize| e[i].as_f64().unwrap() as f32;
                    (e[0].as_u64().unwrap(), [f(1), f(2), f(3)])
                })
                .collect()
        };
        let inside = |p: [f32; 3]| p[0] >= aoi.0[0] && p[0] < aoi.1[0] && p[2] >= aoi.0[1] && p[2] < aoi.1[1];
        match v["type"].as_str().unwrap() {
            "reset" => {
                self.resets += 1;
                self.npcs = entries("npcs").into_iter().collect();
            }
            "delta" => {
                self.deltas += 1;
                let tick = v["tick"].as_u64().unwrap();
                assert!(tick > self.last_tick, "frames come in tick order");
                for (id, p) in entries("moved") {
                    self.moved += 1;
                    self.npcs.insert(id, p);
                }
                for id in v["gone"].as_array().unwrap() {
                    self.gone += 1;
                    self.npcs.remove(&id.as_u64().unwrap());
                }
            }
            _ => return,
        }
        self.last_tick = v["tick"].as_u64().unwrap();
        assert!(self.npcs.values().all(|&p| inside(p)), "only NPCs of the area");
    }
}

type Deflated = yawc::WebSocket<Counting<TcpStream>>;
type Plain = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;
type Area = ([f32; 2], [f32; 2]);

/// Feeds both clients' frames into their pictures for `d`.
async fn read_for(
    a: &mut Picture,
    b: &mut Picture,
    deflated: &mut Deflated,
    plain: &mut Plain,
    aoi: Area,
    d: Duration,
) {
    let end = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            f = deflated.next() => a.apply(f.unwrap().as_str(), aoi),
            m = plain.next() => b.apply(&m.unwrap().unwrap().into_text().unwrap(), aoi),
            () = tokio::time::sleep_until(end) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_deltas_match_the_world() {
    let t = start(400, |_| {}).await;
    let addr = t.server.local_addr();
    let aoi = ([0.0f32, 0.0], [128.0f32, 128.0]);
    let subscribe = json!({"type": "subscribe", "min": aoi.0, "max": aoi.1}).to_string();

    // A client that offers permessage-deflate (yawc), over a socket that counts wire bytes.
    let wire = Arc::new(AtomicU64::new(0));
    let io = Counting { inner: TcpStream::connect(addr).await.unwrap(), read: Arc::clone(&wire) };
    let opts = yawc::Options::default().with_low_latency_compression();
    let req = yawc::HttpRequestBuilder::new().header("x-api-key", KEY);
    let url = format!("ws://{addr}/ws").parse().unwrap();
    let mut deflated = yawc::WebSocket::handshake_with_request(url, io, opts, req).await.unwrap();
    deflated.send(yawc::Frame::text(subscribe.clone())).await.unwrap();
    // And one that does not (tokio-tungstenite).
    let (mut plain, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?api_key={KEY}")).await.unwrap();
    plain.send(tokio_tungstenite::tungstenite::Message::text(subscribe)).await.unwrap();

    let (mut a, mut b) = (Picture::default(), Picture::default());
    read_for(&mut a, &mut b, &mut deflated, &mut plain, aoi, Duration::from_millis(800)).await;

    // Changes the clients must see: one spawned inside the area, one removed from it.
    let (_, before) = world_positions(&t.server).await;
    let (status, body) = t.post("/api/npcs", &json!({"role": "scout", "position": [64, 0, 64]})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let spawned = body["id"].as_u64().unwrap();
    let victim =
        *before.iter().find(|(_, p)| p[0] < 120.0 && p[2] < 120.0 && p[0] > 8.0 && p[2] > 8.0).unwrap().0;
    let (status, _) = t.post(&format!("/api/npcs/{victim}/orders"), &json!({"order": "despawn"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    read_for(&mut a, &mut b, &mut deflated, &mut plain, aoi, Duration::from_millis(400)).await;

    // Freeze the world, let the last changes through, then compare.
    let stopped_at = t
        .server
        .with_engine(|e| {
            let mut q = e.world_mut().query::<(&mut Velocity, Option<&mut Wander>)>();
            for (mut v, w) in q.iter_mut(e.world_mut()) {
                *v = Velocity::ZERO;
                if let Some(mut w) = w {
                    w.next_turn = Wander::NEVER;
                }
            }
            e.clock().tick
        })
        .await
        .unwrap();
    read_for(&mut a, &mut b, &mut deflated, &mut plain, aoi, Duration::from_millis(600)).await;
    let (tick, world) = world_positions(&t.server).await;
    assert!(tick > stopped_at + 10);
    let inside = |p: &[f32; 3]| p[0] >= aoi.0[0] && p[0] < aoi.1[0] && p[2] >= aoi.0[1] && p[2] < aoi.1[1];
    let want: HashMap<u64, [f32; 3]> = world.into_iter().filter(|(_, p)| inside(p)).collect();
    assert!(want.contains_key(&spawned) && !want.contains_key(&victim));
    assert!(want.len() > 20, "a dense area: {}", want.len());
    for (name, pic) in [("deflate client", &a), ("plain client", &b)] {
        assert_eq!(pic.resets, 1, "{name}");
        assert!(
            pic.deltas > 10 && pic.moved > 100 && pic.gone > 1,
            "{name}: {} {} {}",
            pic.deltas,
            pic.moved,
            pic.gone
        );
        let mut ids: Vec<&u64> = pic.npcs.keys().collect();
        let mut want_ids: Vec<&u64> = want.keys().collect();
        ids.sort_unstable();
        want_ids.sort_unstable();
        assert_eq!(ids, want_ids, "{name}: the same NPCs");
        for (id, p) in &want {
            let got = pic.npcs[id];
            assert!((0..3).all(|i| (got[i] - p[i]).abs() < 1e-3), "{name}: npc {id} at {got:?}, world {p:?}");
        }
    }
    // The deflate client got the same text in fewer bytes.
    let on_wire = wire.load(Ordering::Relaxed);
    assert_eq!(a.payload_bytes, b.payload_bytes, "both clients got the same frames");
    assert!(
        on_wire * 2 < a.payload_bytes,
        "permessage-deflate: {on_wire} bytes on the wire for {} of JSON",
        a.payload_bytes
    );
    let figures = t.server.figures();
    assert_eq!(figures.ws_open, 2);
    assert!(figures.ws_resets_sent >= 2 && figures.stream_frames > 10);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text() {
    let t = start(50, |_| {}).await;
    t.get_until("/api/npcs/1", |s, _| s == StatusCode::OK).await;
    t.get("/api/npcs/1").await;
    // The tick publishes its counters at the start of the next tick: scrape until the batch
    // that was just read shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let res = t.http.get(t.url("/metrics")).header("x-api-key", KEY).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        let text = res.text().await.unwrap();
        if text.lines().any(|l| l.starts_with("terrarium_batches_total ") && !l.ends_with(" 0")) {
            break text;
        }
        assert!(Instant::now() < deadline, "no batch counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Every line is a HELP, a TYPE or a sample with a number; every sample's metric is typed.
    let mut typed: HashMap<String, prometheus_parse::SampleType> = HashMap::new();
    for line in text.lines() {
        match prometheus_parse::LineInfo::parse(line) {
            prometheus_parse::LineInfo::Type { metric_name, sample_type, .. } => {
                typed.insert(metric_name, sample_type);
            }
            prometheus_parse::LineInfo::Sample { metric_name, value, .. } => {
                assert!(typed.contains_key(metric_name), "sample before its TYPE: {line}");
                assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
            }
            prometheus_parse::LineInfo::Doc { .. } | prometheus_parse::LineInfo::Empty => {}
            prometheus_parse::LineInfo::Ignored => panic!("not Prometheus text: {line:?}"),
        }
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"));
        match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    use prometheus_parse::SampleType::{Counter, Gauge};
    assert_eq!(typed["terrarium_ticks_total"], Counter);
    assert_eq!(typed["terrarium_npcs"], Gauge);
    assert_eq!(value("terrarium_npcs", &[]), 50.0);
    assert!(value("terrarium_ticks_total", &[]) > 0.0);
    assert_eq!(value("terrarium_tick_hz", &[]), 50.0);
    let p50 = value("terrarium_tick_duration_seconds", &[("quantile", "0.5")]);
    let p99 = value("terrarium_tick_duration_seconds", &[("quantile", "0.99")]);
    assert!(p50 > 0.0 && p99 >= p50 && p99 < 1.0, "seconds: {p50} {p99}");
    assert!(value("terrarium_stage_duration_seconds", &[("stage", "act"), ("quantile", "0.99")]) > 0.0);
    assert!(value("terrarium_batches_total", &[]) > 0.0);
    assert!(value("terrarium_batch_rows_total", &[("stream", "positions")]) > 0.0);
    assert!(value("terrarium_write_behind_batches_written_total", &[]) > 0.0);
    assert_eq!(value("terrarium_write_behind_rows_dropped_total", &[]), 0.0);
    assert!(value("terrarium_cache_hits_total", &[("tier", "l1")]) >= 1.0);
    assert_eq!(
        value("terrarium_circuit_breaker_state", &[("name", "storage.memory"), ("state", "closed")]),
        1.0
    );
    assert_eq!(
        value("terrarium_circuit_breaker_state", &[("name", "storage.memory"), ("state", "open")]),
        0.0
    );
    assert_eq!(value("terrarium_pathfinding_threads", &[]), 1.0);
    assert!(value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(value("terrarium_http_responses_total", &[("class", "2xx")]) >= 2.0);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_no_batch() {
    let t = start(3000, |c| {
        // Batches wait long, so the shutdown has a lot to cut and drain.
        c.engine.batching.positions.max_age_ms = 60_000;
        c.engine.batching.positions.max_items = 1_000_000;
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The last commands before the stop must reach the store too.
    let (status, body) = t.post("/api/npcs", &json!({"role": "builder", "position": [33, 0, 44]})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let spawned = body["id"].as_u64().unwrap();
    let (status, _) =
        t.post("/api/npcs/5/orders", &json!({"order": "teleport", "position": [1, 0, 2]})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Let them apply (the next tick), then stop at once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let end = t.server.shutdown().await.unwrap();

    let wb = end.write_behind.unwrap().stats;
    assert_eq!((wb.writes_dropped, wb.failed_batches, wb.batches_spilled), (0, 0, 0), "{wb:?}");
    assert_eq!(wb.batches_written, wb.batches_submitted, "every batch handed over was written: {wb:?}");
    assert!(wb.batches_submitted >= 1);
    let store = end.storage.unwrap();
    let mut engine = end.engine;
    let mut q = engine.world_mut().query::<(&NpcId, &Position)>();
    let world: Vec<(u64, Position)> = q.iter(engine.world()).map(|(id, p)| (id.0, *p)).collect();
    assert_eq!(world.len(), 3001);
    let mut stored = 0;
    let mut after = None;
    loop {
        let page = store.list_npcs(&NpcFilter::default(), Page { after, limit: 100 }).await.unwrap();
        stored += page.npcs.len();
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(stored, world.len(), "every NPC is in the store");
    for (id, p) in &world {
        let r = store.get_npc(*id).await.unwrap().unwrap();
        assert_eq!((r.x, r.y, r.z), (p.x, p.y, p.z), "npc {id}: the store has its last position");
    }
    let five = store.get_npc(5).await.unwrap().unwrap();
    // It walks on from where it was put (8 blocks/s, well under a second before the stop);
    // anywhere else in the 256 × 256 world would be a lost command.
    let off = (five.x - 1.0).hypot(five.z - 2.0);
    assert!(off < 6.0, "the teleport just before the stop: at ({}, {})", five.x, five.z);
    assert_eq!(store.get_npc(spawned).await.unwrap().unwrap().role, "builder");
    assert_eq!(end.performance.write_behind.unwrap().queue_rows, 0);
}

/// Runs the game_server example with `args` (and `env`), hands its address to `during`, then
/// stops it with SIGTERM; its JSON summary.
fn example_until_sigterm<F: Future<Output = ()>>(
    args: &[&str],
    env: &[(&str, &str)],
    during: impl FnOnce(String) -> F,
) -> Value {
    let mut child = std::process::Command::new(common::example("game_server"))
        .args(args)
        .arg("--json")
        .env("TERRARIUM_SERVER__API_KEY", KEY)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    let Some(addr) = first.trim().strip_prefix("listening on http://").map(str::to_string) else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("no address: {first:?}\n{}", String::from_utf8_lossy(&out.stderr));
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(during(addr));
    let status =
        std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    serde_json::from_str(rest.lines().last().unwrap()).unwrap()
}

#[test]
fn the_example_drains_storage_on_sigterm() {
    let args = ["--port", "0", "--npcs", "2000", "--tick-hz", "30", "--threads", "1"];
    let summary = example_until_sigterm(&args, &[], |addr| async move {
        let http = reqwest::Client::new();
        let health: Value =
            http.get(format!("http://{addr}/health")).send().await.unwrap().json().await.unwrap();
        assert_eq!(health["status"], "ok");
        let res = http
            .get(format!("http://{addr}/api/npcs?limit=3"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    assert_eq!(
        (summary["storage"].as_str(), summary["writes_dropped"].as_u64()),
        (Some("memory"), Some(0)),
        "{summary}"
    );
    assert_eq!(summary["batches_written"], summary["batches_submitted"], "{summary}");
    assert!(summary["batches_written"].as_u64().unwrap() > 0 && summary["npcs"] == 2000, "{summary}");
    assert!(summary["http_requests"].as_u64().unwrap() >= 2);
}

/// `--storage postgres --database-url`: the server reads NPCs back from PostgreSQL (through
/// the stack), reports the pool, and drains every NPC's last position into the `npcs` table at
/// SIGTERM. Runs in a schema of its own, dropped at the end.
#[cfg(feature = "postgres")]
#[test]
fn the_example_serves_and_drains_into_postgres() {
    use terrarium::persistence::testing::{service_url, unique_name};
    let Some(url) = service_url("TERRARIUM_TEST_PG_URL") else { return };
    let schema = unique_name();
    let args =
        ["--port", "0", "--npcs", "1500", "--tick-hz", "30", "--threads", "1", "--storage", "postgres"];
    let args = [&args[..], &["--database-url", &url]].concat();
    let env = [("TERRARIUM_STORAGE__POSTGRES__SCHEMA", schema.as_str())];
    let summary = example_until_sigterm(&args, &env, |addr| async move {
        let http = reqwest::Client::new();
        let get = |path: String| http.get(format!("http://{addr}{path}")).header("x-api-key", KEY).send();
        let deadline = Instant::now() + Duration::from_secs(20);
        while get("/api/npcs/1500".into()).await.unwrap().status() != StatusCode::OK {
            assert!(Instant::now() < deadline, "NPC 1500 never reached PostgreSQL");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let perf: Value = get("/api/performance".into()).await.unwrap().json().await.unwrap();
        assert_eq!(perf["circuit_breakers"][0]["name"], "storage.postgres", "{perf}");
        assert!(
            perf["db_pool"]["max_size"].as_u64().unwrap() > 0
                && perf["db_pool"]["queries"].as_u64().unwrap() > 0,
            "{perf}"
        );
    });
    assert_eq!(
        (summary["storage"].as_str(), summary["writes_dropped"].as_u64()),
        (Some("postgres"), Some(0)),
        "{summary}"
    );
    assert_eq!(summary["batches_written"], summary["batches_submitted"], "{summary}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        // The schema name comes from unique_name (`test_` and hex digits), never from input.
        let rows = client
            .query_one(&format!("SELECT count(*) FROM {schema}.npcs"), &[])
            .await
            .map(|r| r.get::<_, i64>(0));
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
        assert_eq!(rows.unwrap(), 1500, "one row per NPC");
    });
}

#[test]
fn the_load_test_runs_both_phases_and_reports_json() {
    let out = common::run(
        "load_test",
        &[
            "--clients",
            "4",
            "--seconds",
            "1",
            "--npcs",
            "300",
            "--tick-hz",
            "20",
            "--ws-clients",
            "3",
            "--ws-seconds",
            "1",
            "--ws-area",
            "1024",
            "--server-threads",
            "1",
            "--client-threads",
            "1",
            "--json",
        ],
    );
    let r = common::last_json(&out);
    let http = &r["http"];
    assert_eq!((r["server"].as_str(), http["clients"].as_u64()), (Some("in-process"), Some(4)), "{r}");
    assert!(http["requests"].as_u64().unwrap() > 20 && http["errors"] == 0, "answered 200, not errors: {r}");
    let (p50, p99) = (http["p50_ms"].as_f64().unwrap(), http["p99_ms"].as_f64().unwrap());
    assert!(p50 > 0.0 && p99 >= p50 && http["max_ms"].as_f64().unwrap() >= p99, "{r}");
    assert!(http["req_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(http["tick"]["tick_hz"], 20);
    assert!(http["tick"]["ticks_per_s"].as_f64().unwrap() > 5.0, "the tick ran during the phase: {r}");
    let ws = &r["ws"];
    assert_eq!(
        (ws["clients"].as_u64(), ws["failed"].as_u64(), ws["ws_hz"].as_f64()),
        (Some(3), Some(0), Some(10.0))
    );
    // Each area is a sixteenth of the world: about 19 of the 300 wanderers, moving every tick.
    assert!(ws["frames_total"].as_u64().unwrap() >= 3 * 5, "deltas arrived: {r}");
    assert!(ws["bytes_total"].as_u64().unwrap() > ws["frames_total"].as_u64().unwrap() * 30, "{r}");
    assert!(ws["frames_per_s_min"].as_f64().unwrap() > 0.0, "{r}");
}
