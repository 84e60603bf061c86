//! `GET /ws`: one task per WebSocket, speaking the protocol documented in the crate doc
//! ("WebSocket protocol"), the one place it is written down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::ser::SerializeSeq;
use tokio::io::{AsyncRead, AsyncWrite};
use yawc::close::CloseCode;
use yawc::{IncomingUpgrade, OpCode, WebSocket};

use super::{Aoi, Frame, Wire};
use crate::AppState;
use crate::error::ApiError;
use crate::guard::{Client, Conn};
use crate::protocol::{
    BinaryFrame, ClientMessage, WS_PROTOCOL, WS_PROTOCOL_BINARY, WS_PROTOCOL_BINARY_V2, parse_client_message,
    parse_ws_protocols,
};

/// A frame that takes longer than this to leave closes the connection (a stuck client).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The upgrade handler.
pub(crate) async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Extension(client): Extension<Client>,
    headers: axum::http::HeaderMap,
    ws: Result<IncomingUpgrade, axum::http::StatusCode>,
) -> Response {
    let Ok(ws) = ws else {
        return ApiError::bad_request(
            "expected a WebSocket upgrade (GET with Upgrade: websocket, version 13)",
        )
        .into_response();
    };
    if *state.shutdown.borrow() {
        return ApiError::unavailable("the server is shutting down", 5).into_response();
    }
    let Ok(permit) = Arc::clone(&state.ws_slots).try_acquire_owned() else {
        state.stats.ws_refused();
        let max = state.config.max_ws_connections;
        return ApiError::unavailable(format!("the server is at its WebSocket limit ({max})"), 5)
            .into_response();
    };
    // The key check already parsed the offer; a client that offered our protocol gets it
    // selected (RFC 6455 4.2.2: one of the offered values, never the key).
    let offered = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter().filter_map(|v| v.to_str().ok());
    let offer = match parse_ws_protocols(offered) {
        Ok(offer) => offer,
        Err(e) => return ApiError::bad_request(e.to_string()).into_response(),
    };
    let (mut response, upgraded) = match ws.upgrade(state.ws_options.clone()) {
        Ok(pair) => pair,
        Err(e) => return ApiError::bad_request(format!("websocket upgrade refused: {e}")).into_response(),
    };
    // The compact frames when offered, the newest version first (a client offers them first
    // and `terrarium.v1` as the fallback for older servers), else JSON.
    let (wire, selected) = if offer.binary_v2 {
        (Wire::BinaryV2, Some(WS_PROTOCOL_BINARY_V2))
    } else if offer.binary {
        (Wire::Binary, Some(WS_PROTOCOL_BINARY))
    } else {
        (Wire::Json, offer.v1.then_some(WS_PROTOCOL))
    };
    if let Some(p) = selected {
        response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    // From here the connection's idle handling is the WebSocket's (pings), not the socket's.
    conn.0.upgraded.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        match upgraded.await {
            Ok(ws) => serve(ws, &state, client, wire).await,
            Err(e) => tracing::debug!(peer = %conn.0.peer, error = %e, "websocket upgrade did not complete"),
        }
        drop(permit);
    });
    response.map(axum::body::Body::new)
}

/// Serves one connection; position frames go as `wire` says.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocket<S>,
    state: &AppState,
    client: Client,
    wire: Wire,
) {
    let (id, outbox) = state.clients.register_as(wire);
    let idle = Duration::from_secs(state.config.ws_idle_timeout_s);
    let mut ping = tokio::time::interval(Duration::from_secs(state.config.ws_ping_interval_s));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await; // the first tick is now
    let mut heard = Instant::now();
    state.stats.ws_opened();
    let mut shutdown = state.shutdown.clone();
    let b = &state.bounds;
    let hello = serde_json::json!({
        "type": "hello",
        "tick_hz": state.tick_hz,
        "ws_hz": f64::from(state.tick_hz) / state.view_every as f64,
        "world": { "min": b.min, "max": b.max },
        "max_area": state.config.ws_max_area,
    });
    let mut open = send_text(&mut ws, state, hello.to_string()).await;
    let mut read_ended = false;
    while open {
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(frame) => {
                    heard = Instant::now();
                    open = on_message(&mut ws, state, client, id, &frame).await;
                }
                // Closed by the client, or by yawc for a protocol or size violation (it sends
                // the close frame, 1009 for an oversized message, itself).
                None => (open, read_ended) = (false, true),
            },
            out = outbox.next() => match out {
                // `taken` keeps the frame's cost in the budget until it has left.
                Some(taken) if wire == Wire::Json => open = send_text(&mut ws, state, encode(&taken.frame)).await,
                Some(taken) => open = send_binary(&mut ws, state, encode_binary(&taken.frame)).await,
                None => open = false,
            },
            _ = ping.tick() => {
                if heard.elapsed() >= idle {
                    state.stats.ws_closed_idle();
                    let reason = format!("no message or pong for {} s", idle.as_secs());
                    let _ = tokio::time::timeout(SEND_TIMEOUT, ws.send(yawc::Frame::close(CloseCode::Away, reason))).await;
                    open = false;
                } else {
                    open = tokio::time::timeout(SEND_TIMEOUT, ws.send(yawc::Frame::ping("")))
                        .await
                        .is_ok_and(|sent| sent.is_ok());
                }
            }
            () = stopping(&mut shutdown) => {
                let _ = ws.send(yawc::Frame::close(CloseCode::Away, "server shutting down")).await;
                open = false;
            }
        }
    }
    if read_ended {
        // yawc queues its own close frame (1009 for an oversized message, 1002 for a protocol
        // error) when a read fails, and sends it on the next read.
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
    }
    state.clients.remove(id);
    state.stats.ws_closed();
}

/// Resolves once the server is stopping (at once if it already is).
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    // An error means the sender is gone: the server is stopping all the same.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// Handles one message; false when the connection must close.
async fn on_message<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocket<S>,
    state: &AppState,
    client: Client,
    id: u64,
    frame: &yawc::Frame,
) -> bool {
    match frame.opcode() {
        OpCode::Close => return false,
        // Answers to our pings: proof of life, not messages.
        OpCode::Pong => return true,
        _ => {}
    }
    state.stats.ws_messages_received();
    if state.buckets.take(client.0).is_err() {
        state.stats.ws_closed_rate_limit();
        let reason = format!("rate limit: {} messages per second per client", state.config.rate_limit_per_s);
        let _ = ws.send(yawc::Frame::close(CloseCode::Policy, reason)).await;
        return false;
    }
    let reply = match frame.opcode() {
        OpCode::Text => match parse_client_message(frame.payload()) {
            Ok(ClientMessage::Subscribe { min, max }) => match area(min, max, state.config.ws_max_area) {
                Ok(aoi) => {
                    state.clients.subscribe(id, Some(aoi));
                    serde_json::json!({ "type": "subscribed", "min": min, "max": max })
                }
                Err(e) => error(&e),
            },
            Ok(ClientMessage::Unsubscribe {}) => {
                state.clients.subscribe(id, None);
                serde_json::json!({ "type": "unsubscribed" })
            }
            Err(e) => error(&e.to_string()),
        },
        OpCode::Binary => error("binary messages are not accepted; send JSON text"),
        // Pings are answered by yawc; they count against the rate limit all the same.
        _ => return true,
    };
    send_text(ws, state, reply.to_string()).await
}

fn error(message: &str) -> serde_json::Value {
    serde_json::json!({ "type": "error", "error": message })
}

/// A checked area of interest.
fn area(min: [f32; 2], max: [f32; 2], max_area: f64) -> Result<Aoi, String> {
    if !min.iter().chain(&max).all(|v| v.is_finite()) {
        return Err("min and max must be finite numbers".into());
    }
    if max[0] <= min[0] || max[1] <= min[1] {
        return Err("max must be above min on both axes".into());
    }
    let a = f64::from(max[0] - min[0]) * f64::from(max[1] - min[1]);
    if a > max_area {
        return Err(format!("area {a} is over the largest allowed, {max_area} square blocks"));
    }
    Ok(Aoi { min, max })
}

async fn send_text<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocket<S>,
    state: &AppState,
    text: String,
) -> bool {
    let bytes = text.len();
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(yawc::Frame::text(text))).await {
        Ok(Ok(())) => {
            state.stats.ws_sent(bytes);
            true
        }
        _ => false,
    }
}

async fn send_binary<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocket<S>,
    state: &AppState,
    bytes: Vec<u8>,
) -> bool {
    let len = bytes.len();
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(yawc::Frame::binary(bytes))).await {
        Ok(Ok(())) => {
            state.stats.ws_sent(len);
            true
        }
        _ => false,
    }
}

/// The binary message of a frame: v2 ([`WS_PROTOCOL_BINARY_V2`]) with its role/status
/// entries, which the hub cuts only for v2 clients, so a v1 client's frame has none and is
/// v1 ([`WS_PROTOCOL_BINARY`]).
fn encode_binary(f: &Frame) -> Vec<u8> {
    BinaryFrame::encode_v2(f.tick, f.reset, &f.moved, &f.gone, &f.kinds)
}

/// Positions as `[[id, x, y, z], …]`.
struct Entries<'a>(&'a [(u64, [f32; 3])]);

impl Serialize for Entries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for &(id, [x, y, z]) in self.0 {
            seq.serialize_element(&(id, x, y, z))?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct DeltaOut<'a> {
    r#type: &'static str,
    tick: u64,
    moved: Entries<'a>,
    gone: &'a [u64],
}

#[derive(Serialize)]
struct ResetOut<'a> {
    r#type: &'static str,
    tick: u64,
    npcs: Entries<'a>,
}

/// The JSON text of a frame.
fn encode(f: &Frame) -> String {
    let text = if f.reset {
        serde_json::to_string(&ResetOut { r#type: "reset", tick: f.tick, npcs: Entries(&f.moved) })
    } else {
        serde_json::to_string(&DeltaOut {
            r#type: "delta",
            tick: f.tick,
            moved: Entries(&f.moved),
            gone: &f.gone,
        })
    };
    text.expect("numbers and static strings always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_as_flat_arrays() {
        let f = Frame { tick: 9, moved: vec![(3, [1.5, 0.0, -2.25])], gone: vec![4, 5], ..Frame::default() };
        assert_eq!(encode(&f), r#"{"type":"delta","tick":9,"moved":[[3,1.5,0.0,-2.25]],"gone":[4,5]}"#);
        let f = Frame { tick: 2, reset: true, moved: vec![(1, [0.5, 1.0, 2.0])], ..Frame::default() };
        assert_eq!(encode(&f), r#"{"type":"reset","tick":2,"npcs":[[1,0.5,1.0,2.0]]}"#);
    }

    #[test]
    fn binary_frames_hold_what_the_json_holds() {
        let f = Frame { tick: 9, moved: vec![(3, [1.5, 0.0, -2.25])], gone: vec![4, 5], ..Frame::default() };
        let b = BinaryFrame::decode(&encode_binary(&f)).unwrap();
        assert_eq!((b.tick, b.reset, b.moved, b.gone), (9, false, f.moved.clone(), f.gone.clone()));
        assert!(encode_binary(&f).len() < encode(&f).len());
        // What the budget counts for a frame covers what is sent, and less for binary.
        let mut rows = Frame {
            moved: vec![(123_456, [1_023.123_4, 0.0, 511.987_6]); 1000],
            gone: vec![99_999; 100],
            ..f
        };
        let (json, bin) = (encode(&rows).len(), encode_binary(&rows).len());
        let (cj, cb) = (rows.cost(Wire::Json), rows.cost(Wire::Binary));
        assert!(cj > json && cb > bin && cb < cj);
        // With role/status entries (a v2 client's frame), the count covers them too.
        let kind =
            crate::protocol::NpcKind { role: terrarium::engine::Role::Other(9), status: Default::default() };
        rows.kinds = vec![(u64::MAX, kind); 1000];
        assert!(rows.cost(Wire::BinaryV2) > encode_binary(&rows).len());
    }

    #[test]
    fn areas_are_checked() {
        assert!(area([0.0, 0.0], [10.0, 10.0], 100.0).is_ok());
        assert!(area([0.0, 0.0], [10.0, 11.0], 100.0).unwrap_err().contains("largest"));
        assert!(area([5.0, 0.0], [5.0, 10.0], 100.0).unwrap_err().contains("above"));
        assert!(area([f32::NAN, 0.0], [5.0, 10.0], 100.0).unwrap_err().contains("finite"));
    }
}
