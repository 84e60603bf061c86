//! `[server]`: the game server's settings (feature `server` runs it; the section parses in every
//! build, so one configuration file serves every binary).

use serde::{Deserialize, Serialize};
use terrarium_engine::{ConfigError, in_range};

/// Settings of the game server (the `terrarium-server` crate, `server/examples/game_server.rs`).
///
/// Limits protect the process from clients; every one is per server unless its name says
/// otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: String,
    /// TCP port; 0 picks a free one.
    pub port: u16,
    /// The key every request but `GET /health` must carry in the `x-api-key` header (or, for
    /// `/ws`, where browsers can't set headers, the `api_key` query parameter). Required: the
    /// server refuses to start without one. Set it with `TERRARIUM_SERVER__API_KEY` rather
    /// than in a file.
    pub api_key: String,
    /// Open TCP connections, all clients together; one more is answered 503 and closed.
    /// 1 ..= 1 000 000.
    pub max_connections: usize,
    /// Open TCP connections from one IP address. 1 ..= `max_connections`.
    pub max_connections_per_ip: usize,
    /// Messages per second one connection may send (HTTP requests, WebSocket messages),
    /// sustained; over it, HTTP answers 429 and a WebSocket is closed (code 1008).
    /// 1 ..= 1 000 000.
    pub rate_limit_per_s: u32,
    /// Messages one connection may send in a burst above the sustained rate.
    /// 1 ..= 1 000 000.
    pub rate_burst: u32,
    /// Largest HTTP request body, bytes (413 above it). 64 ..= 16 MiB.
    pub max_body_bytes: usize,
    /// Largest WebSocket message a client may send, bytes; a larger one closes the connection
    /// (code 1009). 64 ..= 16 MiB.
    pub max_ws_message_bytes: usize,
    /// Position deltas per second sent to each WebSocket client, 1 ..= the engine's `tick_hz`.
    pub ws_hz: u32,
    /// WebSocket frames at least this large are deflated (permessage-deflate, when the client
    /// offers it). 0 ..= 16 MiB.
    pub ws_deflate_min_bytes: usize,
    /// Largest area of interest a client may subscribe to, square blocks. 1 ..= 10¹².
    pub ws_max_area: f64,
    /// Side of the cells the streaming index buckets positions by, blocks. 1 ..= 4096.
    pub ws_cell_blocks: f32,
    /// Frames waiting for one slow client before it is skipped and later sent a full reset
    /// of its area instead. 1 ..= 1024.
    pub ws_queue_frames: usize,
    /// How long a graceful shutdown waits for the write-behind to drain, seconds (what is left
    /// goes to the outbox, or is counted as dropped without one). 1 ..= 3600.
    pub shutdown_timeout_s: u64,
    /// Length of a latency window of the performance figures, seconds. 0.1 ..= 3600.
    pub perf_window_s: f64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1".into(),
            port: 8080,
            api_key: String::new(),
            max_connections: 4096,
            max_connections_per_ip: 64,
            rate_limit_per_s: 200,
            rate_burst: 400,
            max_body_bytes: 64 << 10,
            max_ws_message_bytes: 16 << 10,
            ws_hz: 10,
            ws_deflate_min_bytes: 1024,
            ws_max_area: 1024.0 * 1024.0,
            ws_cell_blocks: 32.0,
            ws_queue_frames: 8,
            shutdown_timeout_s: 30,
            perf_window_s: 10.0,
        }
    }
}

impl ServerConfig {
    /// The largest `rate_limit_per_s` and `rate_burst`.
    pub const MAX_RATE: u32 = 1_000_000;

    /// Checks every value against its allowed range (the API key is checked when the server
    /// starts, so a configuration for other binaries needs none).
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] or [`ConfigError::Invalid`] naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bind.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "server.bind".into(),
                reason: format!("{:?} is not an IP address", self.bind),
            });
        }
        in_range("server.max_connections", self.max_connections, &(1..=1_000_000))?;
        in_range("server.max_connections_per_ip", self.max_connections_per_ip, &(1..=self.max_connections))?;
        in_range("server.rate_limit_per_s", self.rate_limit_per_s, &(1..=Self::MAX_RATE))?;
        in_range("server.rate_burst", self.rate_burst, &(1..=Self::MAX_RATE))?;
        in_range("server.max_body_bytes", self.max_body_bytes, &(64..=16 << 20))?;
        in_range("server.max_ws_message_bytes", self.max_ws_message_bytes, &(64..=16 << 20))?;
        in_range("server.ws_hz", self.ws_hz, &(1..=1000))?;
        in_range("server.ws_deflate_min_bytes", self.ws_deflate_min_bytes, &(0..=16 << 20))?;
        in_range("server.ws_queue_frames", self.ws_queue_frames, &(1..=1024))?;
        in_range("server.shutdown_timeout_s", self.shutdown_timeout_s, &(1..=3600))?;
        // A range holds no NaN and no infinity, so these also refuse non-finite values.
        in_range("server.ws_max_area", self.ws_max_area, &(1.0..=1e12))?;
        in_range("server.ws_cell_blocks", self.ws_cell_blocks, &(1.0..=4096.0))?;
        in_range("server.perf_window_s", self.perf_window_s, &(0.1..=3600.0))?;
        Ok(())
    }
}
