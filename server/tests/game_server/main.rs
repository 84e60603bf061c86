//! The game server with real clients: reqwest for HTTP, yawc and tokio-tungstenite for
//! WebSockets, raw sockets from other loopback addresses for the connection limits. Each test
//! starts its own server in process on an ephemeral port (the example tests run the example
//! binary and stop it with SIGTERM). One binary, one file per topic, `harness` shared.

mod api;
// The crash loop resumes from the embedded store (the example's default storage).
#[cfg(feature = "file-store")]
mod crash;
// PostgreSQL of its own, frozen and thawed.
#[cfg(feature = "postgres")]
mod half_open;
mod harness;
mod limits;
mod load_test;
mod metrics;
mod shutdown;
mod slowloris;
mod viewer;
mod websocket;
