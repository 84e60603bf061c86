//! The game server's own counters (requests, connections, WebSocket streaming), exported beside
//! the performance snapshot in `/api/performance` (`server`) and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use metrics::{counter, gauge};
use serde::{Deserialize, Serialize};

/// Counters shared by every task of one server.
#[derive(Debug, Default)]
pub(crate) struct ServerStats {
    requests: AtomicU64,
    responses: [AtomicU64; 5],
    auth_rejected: AtomicU64,
    rate_limited: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    ws_accepted: AtomicU64,
    ws_open: AtomicU64,
    ws_messages_received: AtomicU64,
    ws_closed_rate_limit: AtomicU64,
    ws_frames_sent: AtomicU64,
    ws_bytes_sent: AtomicU64,
    ws_frames_skipped: AtomicU64,
    ws_resets_sent: AtomicU64,
    stream_frames: AtomicU64,
    stream_last_frame_us: AtomicU64,
    stream_view_npcs: AtomicU64,
    stream_resyncs: AtomicU64,
    timed_out: AtomicU64,
    spawns_refused: AtomicU64,
    ws_refused: AtomicU64,
    ws_closed_idle: AtomicU64,
    ws_frames_dropped: AtomicU64,
    pub(crate) ws_buffered_bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// The server's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServerFigures {
    /// HTTP requests that reached the router.
    pub http_requests: u64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub http_responses: [u64; 5],
    /// Requests refused for a missing or wrong API key.
    pub auth_rejected: u64,
    /// Requests refused by the per-connection rate limit (429).
    pub rate_limited: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections admitted since the start.
    pub connections_accepted: u64,
    /// Connections refused by the connection limits (503).
    pub connections_refused: u64,
    /// WebSocket connections open now.
    pub ws_open: u64,
    /// WebSocket connections accepted since the start.
    pub ws_accepted: u64,
    /// Messages received from WebSocket clients.
    pub ws_messages_received: u64,
    /// WebSockets closed for going over the rate limit.
    pub ws_closed_rate_limit: u64,
    /// Frames sent to WebSocket clients (deltas, resets, replies).
    pub ws_frames_sent: u64,
    /// Bytes of those frames before permessage-deflate.
    pub ws_bytes_sent: u64,
    /// Frames merged into a slow client's waiting frame instead of sent apart.
    pub ws_frames_skipped: u64,
    /// Reset frames (a whole area of interest) sent.
    pub ws_resets_sent: u64,
    /// Position updates the streaming hub processed (one per published view).
    pub stream_frames: u64,
    /// Wall-clock microseconds the hub took for the last one (apply, index, fan out).
    pub stream_last_frame_us: u64,
    /// NPCs in the hub's view of the world.
    pub stream_view_npcs: u64,
    /// Times the hub fell so far behind that the tick sent it the whole world again.
    pub stream_resyncs: u64,
    /// Requests answered 503 for taking longer than `request_timeout_s`.
    pub http_timed_out: u64,
    /// Spawns refused: the world at `max_npcs` (409) or the key's spawn budget spent (429).
    pub spawns_refused: u64,
    /// WebSocket upgrades refused at `max_ws_connections` (503).
    pub ws_refused: u64,
    /// WebSockets closed for sending no message or pong for `ws_idle_timeout_s`.
    pub ws_closed_idle: u64,
    /// Frames dropped because the bytes buffered for all clients reached
    /// `ws_max_buffered_bytes` (the client gets a reset later).
    pub ws_frames_dropped: u64,
    /// Bytes of frames cut and not yet sent, all clients together, now.
    pub ws_buffered_bytes: u64,
}

macro_rules! bump {
    ($($name:ident),* $(,)?) => {
        $(pub(crate) fn $name(&self) { self.$name.fetch_add(1, Relaxed); })*
    };
}

impl ServerStats {
    bump!(auth_rejected, rate_limited, connections_refused, ws_messages_received, ws_closed_rate_limit);
    bump!(ws_frames_skipped, ws_resets_sent, stream_resyncs);
    bump!(timed_out, spawns_refused, ws_refused, ws_closed_idle, ws_frames_dropped);

    pub(crate) fn connection_accepted(&self) {
        self.connections_accepted.fetch_add(1, Relaxed);
    }

    pub(crate) fn request(&self, status: u16) {
        self.requests.fetch_add(1, Relaxed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Relaxed);
    }

    pub(crate) fn ws_opened(&self) {
        self.ws_accepted.fetch_add(1, Relaxed);
        self.ws_open.fetch_add(1, Relaxed);
    }

    pub(crate) fn ws_closed(&self) {
        self.ws_open.fetch_sub(1, Relaxed);
    }

    pub(crate) fn ws_sent(&self, bytes: usize) {
        self.ws_frames_sent.fetch_add(1, Relaxed);
        self.ws_bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    pub(crate) fn stream_frame(&self, micros: u64, view_npcs: usize) {
        self.stream_frames.fetch_add(1, Relaxed);
        self.stream_last_frame_us.store(micros, Relaxed);
        self.stream_view_npcs.store(view_npcs as u64, Relaxed);
    }

    pub(crate) fn figures(&self, connections_open: usize) -> ServerFigures {
        let l = |a: &AtomicU64| a.load(Relaxed);
        ServerFigures {
            http_requests: l(&self.requests),
            http_responses: std::array::from_fn(|i| l(&self.responses[i])),
            auth_rejected: l(&self.auth_rejected),
            rate_limited: l(&self.rate_limited),
            connections_open: connections_open as u64,
            connections_accepted: l(&self.connections_accepted),
            connections_refused: l(&self.connections_refused),
            ws_open: l(&self.ws_open),
            ws_accepted: l(&self.ws_accepted),
            ws_messages_received: l(&self.ws_messages_received),
            ws_closed_rate_limit: l(&self.ws_closed_rate_limit),
            ws_frames_sent: l(&self.ws_frames_sent),
            ws_bytes_sent: l(&self.ws_bytes_sent),
            ws_frames_skipped: l(&self.ws_frames_skipped),
            ws_resets_sent: l(&self.ws_resets_sent),
            stream_frames: l(&self.stream_frames),
            stream_last_frame_us: l(&self.stream_last_frame_us),
            stream_view_npcs: l(&self.stream_view_npcs),
            stream_resyncs: l(&self.stream_resyncs),
            http_timed_out: l(&self.timed_out),
            spawns_refused: l(&self.spawns_refused),
            ws_refused: l(&self.ws_refused),
            ws_closed_idle: l(&self.ws_closed_idle),
            ws_frames_dropped: l(&self.ws_frames_dropped),
            ws_buffered_bytes: self.ws_buffered_bytes.load(Relaxed) as u64,
        }
    }
}

/// The server's counters: name and help text (every family on `/metrics` has a HELP line).
pub(crate) const COUNTERS: &[(&str, &str)] = &[
    ("terrarium_http_requests_total", "HTTP requests received."),
    ("terrarium_http_responses_total", "HTTP responses sent, by status class."),
    ("terrarium_http_auth_rejected_total", "Requests refused for a missing or wrong API key."),
    ("terrarium_http_rate_limited_total", "Requests and WebSocket messages refused by the rate limit."),
    ("terrarium_connections_accepted_total", "TCP connections accepted."),
    ("terrarium_connections_refused_total", "TCP connections refused over the connection caps."),
    ("terrarium_ws_connections_total", "WebSocket connections upgraded."),
    ("terrarium_ws_messages_received_total", "WebSocket messages received from clients."),
    ("terrarium_ws_closed_rate_limit_total", "WebSocket connections closed for exceeding the rate limit."),
    ("terrarium_ws_frames_sent_total", "WebSocket frames sent to clients."),
    ("terrarium_ws_bytes_sent_total", "WebSocket payload bytes sent to clients."),
    (
        "terrarium_ws_frames_skipped_total",
        "Frames merged into a slow client's waiting frame instead of sent apart.",
    ),
    ("terrarium_http_timed_out_total", "Requests answered 503 for exceeding request_timeout_s."),
    ("terrarium_spawns_refused_total", "Spawns refused by max_npcs (409) or the spawn budget (429)."),
    ("terrarium_ws_refused_total", "WebSocket upgrades refused at max_ws_connections."),
    (
        "terrarium_ws_closed_idle_total",
        "WebSockets closed after ws_idle_timeout_s without a message or pong.",
    ),
    ("terrarium_ws_frames_dropped_total", "Frames dropped at ws_max_buffered_bytes (a reset follows)."),
    ("terrarium_ws_resets_sent_total", "Full views sent to clients that fell behind."),
    ("terrarium_stream_frames_total", "Views the tick published for streaming."),
    ("terrarium_stream_resyncs_total", "Times the hub fell behind and took a full view."),
    ("terrarium_tick_skipped_total", "Ticks skipped because the tick thread fell behind its rate."),
];

/// The server's gauges: name and help text.
pub(crate) const GAUGES: &[(&str, &str)] = &[
    ("terrarium_connections_open", "TCP connections open."),
    ("terrarium_ws_connections_open", "WebSocket connections open."),
    ("terrarium_ws_buffered_bytes", "Bytes of frames cut for WebSocket clients and not yet sent."),
    ("terrarium_stream_last_frame_seconds", "Wall-clock time the hub took to cut the last frames."),
    ("terrarium_stream_view_npcs", "NPCs in the last published view."),
];

impl ServerFigures {
    /// Sets the server's metrics on the current `metrics` recorder.
    pub(crate) fn export(&self) {
        counter!("terrarium_http_requests_total").absolute(self.http_requests);
        for (i, n) in self.http_responses.iter().enumerate() {
            counter!("terrarium_http_responses_total", "class" => format!("{}xx", i + 1)).absolute(*n);
        }
        counter!("terrarium_http_auth_rejected_total").absolute(self.auth_rejected);
        counter!("terrarium_http_rate_limited_total").absolute(self.rate_limited);
        gauge!("terrarium_connections_open").set(self.connections_open as f64);
        counter!("terrarium_connections_accepted_total").absolute(self.connections_accepted);
        counter!("terrarium_connections_refused_total").absolute(self.connections_refused);
        gauge!("terrarium_ws_connections_open").set(self.ws_open as f64);
        counter!("terrarium_ws_connections_total").absolute(self.ws_accepted);
        counter!("terrarium_ws_messages_received_total").absolute(self.ws_messages_received);
        counter!("terrarium_ws_closed_rate_limit_total").absolute(self.ws_closed_rate_limit);
        counter!("terrarium_ws_frames_sent_total").absolute(self.ws_frames_sent);
        counter!("terrarium_ws_bytes_sent_total").absolute(self.ws_bytes_sent);
        counter!("terrarium_ws_frames_skipped_total").absolute(self.ws_frames_skipped);
        counter!("terrarium_ws_resets_sent_total").absolute(self.ws_resets_sent);
        counter!("terrarium_stream_frames_total").absolute(self.stream_frames);
        gauge!("terrarium_stream_last_frame_seconds").set(self.stream_last_frame_us as f64 / 1e6);
        gauge!("terrarium_stream_view_npcs").set(self.stream_view_npcs as f64);
        counter!("terrarium_stream_resyncs_total").absolute(self.stream_resyncs);
        counter!("terrarium_http_timed_out_total").absolute(self.http_timed_out);
        counter!("terrarium_spawns_refused_total").absolute(self.spawns_refused);
        counter!("terrarium_ws_refused_total").absolute(self.ws_refused);
        counter!("terrarium_ws_closed_idle_total").absolute(self.ws_closed_idle);
        counter!("terrarium_ws_frames_dropped_total").absolute(self.ws_frames_dropped);
        gauge!("terrarium_ws_buffered_bytes").set(self.ws_buffered_bytes as f64);
    }
}
