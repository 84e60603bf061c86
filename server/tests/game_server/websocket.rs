//! WebSocket streams: message limits and deltas that match the world.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::harness::*;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use terrarium::engine::{Velocity, Wander};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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
    // A binary message is read under the same limit, and refused (a binary-frames client too).
    ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![1u8; 1024])).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(reply.contains("binary messages are not accepted"), "{reply}");
    ws.send(tokio_tungstenite::tungstenite::Message::text("b".repeat(1025))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(Some(1009)), "closed with 'message too big'");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.next().await.unwrap().unwrap(); // hello
    ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![1u8; 1025])).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(Some(1009)), "an oversized binary message too");
    t.server.shutdown().await.unwrap();
}

/// How the server closed a connection: `Some(code)`, `Some(None)` for a dropped connection,
/// `None` when it stayed open for 5 s.
async fn close_code(ws: &mut Plain) -> Option<Option<u16>> {
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match msg {
            Ok(tokio_tungstenite::tungstenite::Message::Close(frame)) => {
                return Some(frame.map(|f| u16::from(f.code)));
            }
            Ok(_) => {}
            Err(_) => return Some(None),
        }
    }
    None
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
        let tick = || v["tick"].as_u64().unwrap();
        match v["type"].as_str().unwrap() {
            "reset" => self.frame(true, tick(), entries("npcs"), vec![], aoi),
            "delta" => {
                let gone = v["gone"].as_array().unwrap().iter().map(|id| id.as_u64().unwrap()).collect();
                self.frame(false, tick(), entries("moved"), gone, aoi);
            }
            _ => {}
        }
    }

    /// A message of a `terrarium.binary.v1` client: text (hello, subscribed) or a binary frame.
    fn apply_message(&mut self, m: tokio_tungstenite::tungstenite::Message, aoi: Area) {
        use tokio_tungstenite::tungstenite::Message;
        match m {
            Message::Binary(bytes) => {
                self.payload_bytes += bytes.len() as u64;
                let f = terrarium_server::protocol::BinaryFrame::decode(&bytes).unwrap();
                self.frame(f.reset, f.tick, f.moved, f.gone, aoi);
            }
            Message::Text(text) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert!(
                    !["reset", "delta"].contains(&v["type"].as_str().unwrap()),
                    "positions come as binary"
                );
            }
            _ => {}
        }
    }

    fn frame(&mut self, reset: bool, tick: u64, moved: Vec<(u64, [f32; 3])>, gone: Vec<u64>, aoi: Area) {
        let inside = |p: [f32; 3]| p[0] >= aoi.0[0] && p[0] < aoi.1[0] && p[2] >= aoi.0[1] && p[2] < aoi.1[1];
        if reset {
            self.resets += 1;
            self.npcs = moved.into_iter().collect();
        } else {
            self.deltas += 1;
            assert!(tick > self.last_tick, "frames come in tick order");
            for (id, p) in moved {
                self.moved += 1;
                self.npcs.insert(id, p);
            }
            for id in gone {
                self.gone += 1;
                self.npcs.remove(&id);
            }
        }
        self.last_tick = tick;
        assert!(self.npcs.values().all(|&p| inside(p)), "only NPCs of the area");
    }
}

type Deflated = yawc::WebSocket<Counting<TcpStream>>;
type Plain = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;
type Area = ([f32; 2], [f32; 2]);

/// Feeds the clients' frames into their pictures for `d`.
async fn read_for(pics: &mut [Picture; 3], clients: &mut (Deflated, Plain, Plain), aoi: Area, d: Duration) {
    let end = tokio::time::Instant::now() + d;
    let [a, b, c] = pics;
    let (deflated, plain, binary) = clients;
    loop {
        tokio::select! {
            f = deflated.next() => a.apply(f.unwrap().as_str(), aoi),
            m = plain.next() => b.apply(&m.unwrap().unwrap().into_text().unwrap(), aoi),
            m = binary.next() => c.apply_message(m.unwrap().unwrap(), aoi),
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
    plain.send(tokio_tungstenite::tungstenite::Message::text(subscribe.clone())).await.unwrap();
    // And one that asks for binary frames (offered first, JSON as the fallback).
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert("sec-websocket-protocol", HeaderValue::from_static("terrarium.binary.v1, terrarium.v1"));
    h.insert("x-api-key", HeaderValue::from_static(KEY));
    let (mut binary, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(res.headers()["sec-websocket-protocol"], "terrarium.binary.v1");
    binary.send(tokio_tungstenite::tungstenite::Message::text(subscribe)).await.unwrap();
    let mut clients = (deflated, plain, binary);

    let mut pics: [Picture; 3] = Default::default();
    read_for(&mut pics, &mut clients, aoi, Duration::from_millis(800)).await;

    // Changes the clients must see: one spawned inside the area, one removed from it.
    let (_, before) = world_positions(&t.server).await;
    let (status, body) = t.post("/api/npcs", &json!({"role": "scout", "position": [64, 0, 64]})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let spawned = body["id"].as_u64().unwrap();
    let victim =
        *before.iter().find(|(_, p)| p[0] < 120.0 && p[2] < 120.0 && p[0] > 8.0 && p[2] > 8.0).unwrap().0;
    let (status, _) = t.post(&format!("/api/npcs/{victim}/orders"), &json!({"order": "despawn"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    read_for(&mut pics, &mut clients, aoi, Duration::from_millis(400)).await;

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
    read_for(&mut pics, &mut clients, aoi, Duration::from_millis(600)).await;
    let (tick, world) = world_positions(&t.server).await;
    assert!(tick > stopped_at + 10);
    let inside = |p: &[f32; 3]| p[0] >= aoi.0[0] && p[0] < aoi.1[0] && p[2] >= aoi.0[1] && p[2] < aoi.1[1];
    let want: HashMap<u64, [f32; 3]> = world.into_iter().filter(|(_, p)| inside(p)).collect();
    assert!(want.contains_key(&spawned) && !want.contains_key(&victim));
    assert!(want.len() > 20, "a dense area: {}", want.len());
    let [a, b, c] = &pics;
    for (name, pic) in [("deflate client", a), ("plain client", b), ("binary client", c)] {
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
    // The binary client got about the same frames in fewer bytes (here about 55 %: small ids,
    // and small frames where the header counts; 100k NPCs in BENCHMARKS.md).
    assert!(
        c.payload_bytes * 3 < b.payload_bytes * 2,
        "binary {} bytes, JSON {}",
        c.payload_bytes,
        b.payload_bytes
    );
    assert!(
        on_wire * 2 < a.payload_bytes,
        "permessage-deflate: {on_wire} bytes on the wire for {} of JSON",
        a.payload_bytes
    );
    let figures = t.server.figures();
    assert_eq!(figures.ws_open, 3);
    assert!(figures.ws_resets_sent >= 2 && figures.stream_frames > 10);
    t.server.shutdown().await.unwrap();
}

/// A browser can't set headers on a WebSocket: it offers `terrarium.v1` and
/// `terrarium.key.<KEY>` as sub-protocols, and the server selects `terrarium.v1` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_passes_its_key_as_a_sub_protocol() {
    const READ: &str = "read-only-key-0123456789abcdefghijkl";
    let t = start(10, |c| c.server.read_api_key = READ.into()).await;
    let addr = t.server.local_addr();
    let offer = |protocols: &str| {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(protocols).unwrap());
        req
    };
    for key in [KEY, READ] {
        let (mut ws, res) =
            tokio_tungstenite::connect_async(offer(&format!("terrarium.v1, terrarium.key.{key}")))
                .await
                .unwrap();
        let selected = res.headers().get_all("sec-websocket-protocol").iter().collect::<Vec<_>>();
        assert_eq!(selected, ["terrarium.v1"], "exactly the protocol, never the key");
        let hello: Value =
            serde_json::from_str(&ws.next().await.unwrap().unwrap().into_text().unwrap()).unwrap();
        assert_eq!(hello["type"], "hello");
        // Offering the binary frames too selects them (the key still travels beside v1).
        let both = format!("terrarium.binary.v1, terrarium.v1, terrarium.key.{key}");
        let (_ws, res) = tokio_tungstenite::connect_async(offer(&both)).await.unwrap();
        let selected = res.headers().get_all("sec-websocket-protocol").iter().collect::<Vec<_>>();
        assert_eq!(selected, ["terrarium.binary.v1"]);
    }
    // The key without the protocol the server must select, a wrong key, two keys: refused.
    let refused = |req| async move {
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
            other => panic!("expected an HTTP refusal, got {:?}", other.map(|(_, r)| r.status())),
        }
    };
    assert_eq!(refused(offer(&format!("terrarium.key.{KEY}"))).await, 400);
    assert_eq!(refused(offer("terrarium.v1, terrarium.key.wrong-key-0123456789abcdefghijkl")).await, 401);
    assert_eq!(
        refused(offer(&format!("terrarium.v1, terrarium.key.{KEY}, terrarium.key.{READ}"))).await,
        400
    );
    // A header-keyed client that offers the protocol gets it selected too.
    let mut req = offer("terrarium.v1");
    req.headers_mut().insert("x-api-key", HeaderValue::from_static(KEY));
    let (_ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(res.headers()["sec-websocket-protocol"], "terrarium.v1");

    // The read-only key reads, and may not change the world.
    let res = t.http.get(t.url("/api/performance")).header("x-api-key", READ).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = t
        .http
        .post(t.url("/api/npcs"))
        .header("x-api-key", READ)
        .json(&json!({"role": "guard", "position": [1, 0, 1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("read-only"), "{body}");
    t.server.shutdown().await.unwrap();
}

/// `terrarium.binary.v2`: offered first, it is selected, and its frames carry every NPC's role
/// and status in a reset and, in deltas, a role that changed (here by a `set_role` order);
/// a client that offers v1 only still gets v1 frames (no entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_frames_carry_role_and_status_and_v1_clients_keep_v1() {
    use terrarium::engine::{NpcId, Role, Status};
    use terrarium_server::protocol::NpcKind;
    use tokio_tungstenite::tungstenite::Message;

    // The whole world in one area.
    let t = start(300, |c| c.server.ws_max_area = 1e12).await;
    let addr = t.server.local_addr();
    let connect = |protocols: &'static str| async move {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(protocols));
        req.headers_mut().insert("x-api-key", HeaderValue::from_static(KEY));
        let (mut ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
        let selected = res.headers()["sec-websocket-protocol"].to_str().unwrap().to_owned();
        let everything = json!({"type": "subscribe", "min": [-1.0e4, -1.0e4], "max": [1.0e4, 1.0e4]});
        ws.send(Message::text(everything.to_string())).await.unwrap();
        (ws, selected)
    };
    let (mut v2, selected) = connect("terrarium.binary.v2, terrarium.binary.v1, terrarium.v1").await;
    assert_eq!(selected, "terrarium.binary.v2");
    let (mut v1, selected) = connect("terrarium.binary.v1, terrarium.v1").await;
    assert_eq!(selected, "terrarium.binary.v1");

    let reset = next_frame(&mut v2).await.unwrap();
    assert!(reset.reset);
    let kinds: HashMap<u64, NpcKind> = reset.kinds.iter().copied().collect();
    assert_eq!(kinds.len(), reset.moved.len(), "a reset gives every NPC's role and status");
    let world: HashMap<u64, NpcKind> = t
        .server
        .with_engine(|e| {
            let mut q = e.world_mut().query::<(&NpcId, &Role, &Status)>();
            q.iter(e.world()).map(|(id, &role, &status)| (id.0, NpcKind { role, status })).collect()
        })
        .await
        .unwrap();
    assert_eq!(kinds.len(), world.len());
    // Plain NPCs keep role and status while they wander: what the reset said is what they are.
    for (id, k) in &kinds {
        assert_eq!(world[id].role, k.role, "NPC {id}");
    }
    let v1_reset = next_frame(&mut v1).await.unwrap();
    assert!(v1_reset.reset && v1_reset.kinds.is_empty() && v1_reset.moved.len() == kinds.len());

    // A role changed by an order reaches the v2 client in a delta.
    let (&id, k) = kinds.iter().next().unwrap();
    let new_role = if k.role == Role::Scout { Role::Guard } else { Role::Scout };
    let (status, _) = t
        .post(&format!("/api/npcs/{id}/orders"), &json!({"order": "set_role", "role": new_role.name()}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let seen = async {
        loop {
            let f = next_frame(&mut v2).await.unwrap();
            assert!(!f.reset);
            if let Some(&(_, k)) = f.kinds.iter().find(|e| e.0 == id) {
                return k;
            }
        }
    };
    let k = tokio::time::timeout(Duration::from_secs(10), seen).await.expect("the new role within 10 s");
    assert_eq!(k.role, new_role);
    // The v1 client's frames never carry entries.
    for _ in 0..3 {
        assert!(next_frame(&mut v1).await.unwrap().kinds.is_empty());
    }
}

/// The next binary frame of a client (text messages skipped), within 10 s.
async fn next_frame(
    ws: &mut Plain,
) -> Result<terrarium_server::protocol::BinaryFrame, tokio::time::error::Elapsed> {
    let fut = async {
        loop {
            if let tokio_tungstenite::tungstenite::Message::Binary(b) = ws.next().await.unwrap().unwrap() {
                return terrarium_server::protocol::BinaryFrame::decode(&b).unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await
}
