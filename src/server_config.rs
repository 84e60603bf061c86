//! `[server]`: the game server's settings (feature `server` runs it; the section parses in every
//! build, so one configuration file serves every binary).

use serde::{Deserialize, Serialize};
use terrarium_engine::{ConfigError, in_range};

/// Settings of the game server (the `terrarium-server` crate, `server/examples/game_server.rs`).
///
/// Limits protect the process from clients; every one is per server unless its name says
/// otherwise. A "client" is an IP address, IPv6 addresses counted by their first
/// `ipv6_prefix_bits` bits (one customer's /64 is one client), or, behind a trusted proxy, the
/// address that proxy saw.
///
/// `Debug` prints neither key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: String,
    /// TCP port; 0 picks a free one.
    pub port: u16,
    /// The read-write key every request but `GET /health` must carry in the `x-api-key`
    /// header (or, for `/ws`, where browsers can't set headers, as the WebSocket sub-protocol
    /// `terrarium.key.<KEY>` beside `terrarium.v1`, or the `api_key` query parameter). Required,
    /// at least 32 bytes of printable ASCII: the server refuses to start otherwise. Set it with
    /// `TERRARIUM_SERVER__API_KEY` rather than in a file.
    pub api_key: String,
    /// An optional read-only key (same rules, different from `api_key`): `GET` routes and
    /// `/ws`; anything else answers 403. Empty: none.
    pub read_api_key: String,
    /// Open TCP connections, all clients together; one more is answered 503 and closed.
    /// 1 ..= 1 000 000.
    pub max_connections: usize,
    /// Open TCP connections from one client (IPv6 by prefix). 1 ..= `max_connections`.
    pub max_connections_per_ip: usize,
    /// Messages per second one client may send (HTTP requests, WebSocket messages; all its
    /// connections share one token bucket, so reconnecting does not refill it), sustained; over
    /// it, HTTP answers 429 and a WebSocket is closed (code 1008). 1 ..= 1 000 000.
    pub rate_limit_per_s: u32,
    /// Messages one client may send in a burst above the sustained rate.
    /// 1 ..= 1 000 000.
    pub rate_burst: u32,
    /// Clients whose token buckets are remembered (a bounded map: a bucket idle long enough
    /// to be full again is forgotten first; past the bound, unknown clients share one bucket).
    /// 1 ..= 10 000 000.
    pub rate_limit_clients: usize,
    /// Leading bits of an IPv6 address that name a client (64: a /64, what one customer gets).
    /// 16 ..= 128.
    pub ipv6_prefix_bits: u8,
    /// Proxies whose `X-Forwarded-For` is believed, as addresses or CIDR blocks
    /// (`["10.0.0.1", "192.168.0.0/16"]`). Empty (the default): the header is ignored. A request
    /// from a trusted proxy is counted for the rightmost address in the header that is not a
    /// trusted proxy; connection caps per client do not apply to the proxies themselves.
    pub trusted_proxies: Vec<String>,
    /// Refused connections answered (a 503 with a JSON body) at once; past this many, a refused
    /// connection is closed without an answer, so a flood costs no more work. 0 ..= 65 536.
    pub max_pending_refusals: usize,
    /// Seconds a client has to send a request's whole header, counted from when the
    /// connection is ready for one (so an idle keep-alive connection is closed after it too).
    /// 1 ..= 300.
    pub header_read_timeout_s: u64,
    /// Seconds a connection may move no byte in either direction (a stalled body upload or
    /// response download, an idle keep-alive) before it is closed; WebSockets have their own
    /// (`ws_idle_timeout_s`). 1 ..= 3600.
    pub idle_timeout_s: u64,
    /// Seconds one HTTP request may take from its header to its response (503 after).
    /// 1 ..= 3600.
    pub request_timeout_s: u64,
    /// TCP keepalive: seconds of silence before the kernel probes a connection whose peer may
    /// have vanished (0: off). 0 ..= 7200.
    pub tcp_keepalive_s: u64,
    /// Most NPCs in the world: a spawn that would go over it answers 409. 1 ..= 100 000 000.
    pub max_npcs: u64,
    /// Requests per second one API key may make, all its clients together, sustained (429
    /// over it): a key used from many addresses (a leaked key, a botnet) is bounded as a whole,
    /// where `rate_limit_per_s` bounds each address. Each configured key has its own bucket.
    /// 1 ..= 1 000 000.
    pub key_rate_limit_per_s: u32,
    /// Requests one API key may make in a burst above that rate. 1 ..= 1 000 000.
    pub key_rate_burst: u32,
    /// Spawns per second one API key may make, sustained (429 over it). 1 ..= 1 000 000.
    pub spawn_rate_per_s: u32,
    /// Spawns one key may make in a burst above that rate. 1 ..= 1 000 000.
    pub spawn_burst: u32,
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
    /// Kept for old configuration files; no effect. Each client now has one slot that holds
    /// the latest frame not yet sent (a client that falls behind gets a reset of its area
    /// instead of a queue). 1 ..= 1024.
    pub ws_queue_frames: usize,
    /// Open WebSocket connections, all clients together (503 over it); each is also one of
    /// `max_connections`. 1 ..= 1 000 000.
    pub max_ws_connections: usize,
    /// Bytes of frames cut for WebSocket clients and not yet sent, all clients together (a
    /// frame that would go over it is dropped and its client later gets a reset).
    /// 64 KiB ..= 64 GiB.
    pub ws_max_buffered_bytes: usize,
    /// Shortest time between two resets (whole areas) sent to one client, milliseconds;
    /// subscribing again sooner gets the reset later. 0 ..= 60 000.
    pub ws_reset_interval_ms: u64,
    /// Seconds between pings to a WebSocket client. 1 ..= 3600.
    pub ws_ping_interval_s: u64,
    /// Seconds without any message or pong from a WebSocket client before it is closed
    /// (1001). `ws_ping_interval_s + 1` ..= 86 400.
    pub ws_idle_timeout_s: u64,
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
            read_api_key: String::new(),
            max_connections: 4096,
            max_connections_per_ip: 64,
            rate_limit_per_s: 200,
            rate_burst: 400,
            rate_limit_clients: 65_536,
            ipv6_prefix_bits: 64,
            trusted_proxies: Vec::new(),
            max_pending_refusals: 64,
            header_read_timeout_s: 10,
            idle_timeout_s: 60,
            request_timeout_s: 30,
            tcp_keepalive_s: 60,
            max_npcs: 1_000_000,
            key_rate_limit_per_s: 5000,
            key_rate_burst: 10_000,
            spawn_rate_per_s: 100,
            spawn_burst: 1000,
            max_body_bytes: 64 << 10,
            max_ws_message_bytes: 16 << 10,
            ws_hz: 10,
            ws_deflate_min_bytes: 1024,
            ws_max_area: 1024.0 * 1024.0,
            ws_cell_blocks: 32.0,
            ws_queue_frames: 8,
            max_ws_connections: 1024,
            ws_max_buffered_bytes: 256 << 20,
            ws_reset_interval_ms: 1000,
            ws_ping_interval_s: 15,
            ws_idle_timeout_s: 45,
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
        in_range("server.rate_limit_clients", self.rate_limit_clients, &(1..=10_000_000))?;
        in_range("server.ipv6_prefix_bits", self.ipv6_prefix_bits, &(16..=128))?;
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            parse_cidr(p).map_err(|reason| ConfigError::Invalid {
                key: format!("server.trusted_proxies[{i}]"),
                reason,
            })?;
        }
        in_range("server.max_pending_refusals", self.max_pending_refusals, &(0..=65_536))?;
        in_range("server.header_read_timeout_s", self.header_read_timeout_s, &(1..=300))?;
        in_range("server.idle_timeout_s", self.idle_timeout_s, &(1..=3600))?;
        in_range("server.request_timeout_s", self.request_timeout_s, &(1..=3600))?;
        in_range("server.tcp_keepalive_s", self.tcp_keepalive_s, &(0..=7200))?;
        in_range("server.max_npcs", self.max_npcs, &(1..=100_000_000))?;
        in_range("server.key_rate_limit_per_s", self.key_rate_limit_per_s, &(1..=Self::MAX_RATE))?;
        in_range("server.key_rate_burst", self.key_rate_burst, &(1..=Self::MAX_RATE))?;
        in_range("server.spawn_rate_per_s", self.spawn_rate_per_s, &(1..=Self::MAX_RATE))?;
        in_range("server.spawn_burst", self.spawn_burst, &(1..=Self::MAX_RATE))?;
        in_range("server.max_ws_connections", self.max_ws_connections, &(1..=1_000_000))?;
        in_range("server.ws_max_buffered_bytes", self.ws_max_buffered_bytes, &(64 << 10..=64 << 30))?;
        in_range("server.ws_reset_interval_ms", self.ws_reset_interval_ms, &(0..=60_000))?;
        in_range("server.ws_ping_interval_s", self.ws_ping_interval_s, &(1..=3600))?;
        in_range(
            "server.ws_idle_timeout_s",
            self.ws_idle_timeout_s,
            &(self.ws_ping_interval_s + 1..=86_400),
        )?;
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

/// Parses a trusted proxy: an IP address, or a CIDR block `ADDR/BITS`; returns the network's
/// address and prefix length (32 or 128 for a single address).
///
/// # Errors
/// Why it is not one, for [`ConfigError::Invalid`].
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let addr: std::net::IpAddr =
        addr.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) => b
            .parse::<u8>()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0 ..= {max}"))?,
    };
    Ok((addr, bits))
}

impl std::fmt::Debug for ServerConfig {
    /// Every setting but the keys, which show only whether they are set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |k: &str| if k.is_empty() { "<unset>" } else { "<redacted>" };
        f.debug_struct("ServerConfig")
            .field("bind", &self.bind)
            .field("port", &self.port)
            .field("api_key", &redacted(&self.api_key))
            .field("read_api_key", &redacted(&self.read_api_key))
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("rate_limit_per_s", &self.rate_limit_per_s)
            .field("rate_burst", &self.rate_burst)
            .field("rate_limit_clients", &self.rate_limit_clients)
            .field("ipv6_prefix_bits", &self.ipv6_prefix_bits)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("max_pending_refusals", &self.max_pending_refusals)
            .field("header_read_timeout_s", &self.header_read_timeout_s)
            .field("idle_timeout_s", &self.idle_timeout_s)
            .field("request_timeout_s", &self.request_timeout_s)
            .field("tcp_keepalive_s", &self.tcp_keepalive_s)
            .field("max_npcs", &self.max_npcs)
            .field("key_rate_limit_per_s", &self.key_rate_limit_per_s)
            .field("key_rate_burst", &self.key_rate_burst)
            .field("spawn_rate_per_s", &self.spawn_rate_per_s)
            .field("spawn_burst", &self.spawn_burst)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_ws_message_bytes", &self.max_ws_message_bytes)
            .field("ws_hz", &self.ws_hz)
            .field("ws_deflate_min_bytes", &self.ws_deflate_min_bytes)
            .field("ws_max_area", &self.ws_max_area)
            .field("ws_cell_blocks", &self.ws_cell_blocks)
            .field("ws_queue_frames", &self.ws_queue_frames)
            .field("max_ws_connections", &self.max_ws_connections)
            .field("ws_max_buffered_bytes", &self.ws_max_buffered_bytes)
            .field("ws_reset_interval_ms", &self.ws_reset_interval_ms)
            .field("ws_ping_interval_s", &self.ws_ping_interval_s)
            .field("ws_idle_timeout_s", &self.ws_idle_timeout_s)
            .field("shutdown_timeout_s", &self.shutdown_timeout_s)
            .field("perf_window_s", &self.perf_window_s)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_key() {
        let c = ServerConfig {
            api_key: "the-secret-write-key".into(),
            read_api_key: "the-secret-read-key".into(),
            ..ServerConfig::default()
        };
        let text = format!("{c:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("<redacted>") && text.contains("max_npcs"), "{text}");
    }

    #[test]
    fn new_limits_are_range_checked_by_name() {
        let bad = |f: fn(&mut ServerConfig)| {
            let mut c = ServerConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.header_read_timeout_s = 0).contains("server.header_read_timeout_s"));
        assert!(bad(|c| c.max_npcs = 0).contains("server.max_npcs"));
        assert!(bad(|c| c.ws_idle_timeout_s = c.ws_ping_interval_s).contains("server.ws_idle_timeout_s"));
        assert!(bad(|c| c.max_ws_connections = 0).contains("server.max_ws_connections"));
        assert!(bad(|c| c.ipv6_prefix_bits = 8).contains("server.ipv6_prefix_bits"));
        assert!(
            bad(|c| c.trusted_proxies = vec!["10.0.0.0/33".into()]).contains("server.trusted_proxies[0]")
        );
        assert_eq!(parse_cidr("10.1.0.0/16"), Ok(("10.1.0.0".parse().unwrap(), 16)));
        assert_eq!(parse_cidr("::1"), Ok(("::1".parse().unwrap(), 128)));
        assert!(parse_cidr("localhost").is_err());
    }
}
