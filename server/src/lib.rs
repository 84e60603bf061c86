//! A game server that links the engine (the `terrarium-server` crate): the tick on a thread of its own at
//! `tick_hz`, an axum HTTP API over the storage stack, and WebSocket streams of position deltas
//! per area of interest.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/npcs?status=&role=&swarm=&limit=&after=` | a page of NPCs (limit 1 ..= 100, cursor `after` = the previous page's `next`) |
//! | `GET /api/npcs/{id}` | one NPC, read through the storage stack's caches (L1 first) |
//! | `POST /api/npcs` | spawn: `{"role":"miner","position":[x,y,z],"velocity":[..],"swarm":0,"health":100}` → 202 `{"id":..}` |
//! | `POST /api/npcs/{id}/orders` | `{"order":"move_to","target":[x,y,z]}`, `stop`, `set_role`, `join_swarm`, `teleport`, `despawn` → 202 |
//! | `GET /api/performance` | the performance snapshot (`terrarium::perf::PerformanceSnapshot`), plus `server` counters and `ticks_skipped` |
//! | `GET /metrics` | the same figures as Prometheus text |
//! | `GET /health` | no key needed; 503 when the tick is stuck or the server is stopping |
//! | `GET /api/openapi.json` | no key needed; the OpenAPI 3.1 document of these routes (generated from the handlers' types) |
//! | `GET /ws` | WebSocket position deltas: see "WebSocket protocol" below |
//! | `GET /` | the browser viewer (no key needed for its files; the page asks for the key, or takes it from `/#key=…`) |
//! | `GET /api/world` | for the viewer: tick, bounds, counts, role/status/state names, the voxel world's size and depots |
//! | `GET /api/world/npcs?min_x=&min_z=&max_x=&max_z=&npcs=` | for the viewer: `[id, role, status]` of the NPCs in an area (or all; none with `npcs=false`), agents' states and goals |
//! | `GET /api/npcs/{id}/track?since_tick=&limit=` | an NPC's stored track, `[tick, x, y, z]` oldest first (limit 1 ..= 1000, default 500; `since_tick` default a minute ago; `next_since_tick` continues it) |
//! | `GET /api/world/map?size=N` | for the viewer: a top-down height and ore map of the voxel world (404 without one) |
//!
//! Reads come from storage, which trails the world by one batch (about `max_age_ms` of the
//! position batcher plus the write-behind's commit interval): a spawned NPC can be read once
//! its first batch is written.
//!
//! # WebSocket protocol
//!
//! `GET /ws` with an API key upgrades to a WebSocket. The key travels in one of:
//!
//! - the `x-api-key` header (any client that can set headers);
//! - the sub-protocol offer, for browsers (which can't set headers on a WebSocket): offer the
//!   two sub-protocols `terrarium.v1` and `terrarium.key.<KEY>`, as in
//!   `new WebSocket(url, ["terrarium.v1", "terrarium.key." + key])`. The server selects
//!   `terrarium.v1` (its answer's `Sec-WebSocket-Protocol` says exactly that; it never echoes
//!   the key). A key offered without `terrarium.v1`, two keys, or an entry that is not an HTTP
//!   token is answered 400. A key sent this way must itself be a token (letters, digits,
//!   ``!#$%&'*+-.^_`|~``; `openssl rand -hex 32` makes one);
//! - the `api_key` query parameter (kept for old clients; a URL ends up in proxy logs and
//!   browser history, so prefer the sub-protocol).
//!
//! A client that offers `terrarium.v1` gets it selected whichever way it sent its key. Every
//! message both ways is one JSON text frame; the server deflates large frames
//! (permessage-deflate, RFC 7692) when the client offered it.
//!
//! Compact frames: a client that also offers `terrarium.binary.v1` (first, as in
//! `["terrarium.binary.v1", "terrarium.v1", "terrarium.key." + key]`; a key still needs
//! `terrarium.v1` beside it) gets that selected, and then receives `reset` and `delta` as
//! binary messages of little-endian typed arrays (ids u32, or u64 when one doesn't fit,
//! `x y z` f32; the layout is [`protocol::BinaryFrame`]'s doc, about 16 bytes per NPC against
//! about 40 in JSON). One that offers `terrarium.binary.v2` (first of all, as the viewer does:
//! `["terrarium.binary.v2", "terrarium.binary.v1", "terrarium.v1", "terrarium.key." + key]`)
//! gets v2 selected: the same frames, plus each NPC's role and status after the v1 arrays,
//! for every NPC of a `reset` and for those that entered the area or changed role or status
//! in a `delta` (a v2 frame without such entries is byte for byte a v1 frame; a v1 client's
//! frames never have any). Every other message, and everything the client sends, stays JSON
//! text. A server that does not know a binary protocol selects one it knows (or
//! `terrarium.v1`): the selected protocol says which frames come. JSON frames carry no role
//! or status (`GET /api/world/npcs` has them).
//! Positions are always arrays in this field order: `[id, x, y, z]` (id an integer, x y z
//! blocks as floats); areas are `[x, z]` pairs of the ground plane, `min` inclusive, `max`
//! exclusive.
//!
//! Client → server:
//!
//! | message | meaning |
//! |---|---|
//! | `{"type":"subscribe","min":[x,z],"max":[x,z]}` | the area of interest (at most `max_area` square blocks); replaces the previous one; the next frame is a `reset` of it |
//! | `{"type":"unsubscribe"}` | no more frames until the next `subscribe` |
//!
//! Server → client:
//!
//! | message | meaning |
//! |---|---|
//! | `{"type":"hello","tick_hz":20,"ws_hz":10.0,"world":{"min":[x,y,z],"max":[x,y,z]},"max_area":A}` | first frame: the tick rate, frames per second, the world's bounds, the largest area a client may subscribe to |
//! | `{"type":"subscribed","min":[x,z],"max":[x,z]}` | the area now streamed |
//! | `{"type":"unsubscribed"}` | streaming stopped |
//! | `{"type":"reset","tick":T,"npcs":[[id,x,y,z],…]}` | every NPC in the area as of tick `T` (after a subscribe, or when the client fell behind) |
//! | `{"type":"delta","tick":T,"moved":[[id,x,y,z],…],"gone":[id,…]}` | NPCs that moved in the area or entered it, then those that left it or were removed, since the previous frame: applying `moved` then `gone` to what the client held gives the area as of tick `T` |
//! | `{"type":"error","error":"…"}` | a message was refused (unknown type, bad area); the connection stays open |
//!
//! Unknown fields are refused. More messages than the connection's rate limit closes the
//! connection (close code 1008); a message over `max_ws_message_bytes` closes it (1009); a
//! server shutting down closes it with 1001.
//!
//! # Examples
//! ```
//! use terrarium::{Config, StoragePipeline};
//! use terrarium::engine::{Engine, NpcSpec, Position, Role};
//! use terrarium_server::Server;
//! let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
//! let mut config = Config::default(); // memory storage, no database needed
//! config.server.api_key = "a-long-random-key-of-32-bytes-or-more".into();
//! config.server.port = 0; // any free port
//! // The storage stack and write-behind, on the server's runtime (call it outside the runtime:
//! // it blocks until storage is connected).
//! let storage = StoragePipeline::start_on(runtime.handle(), &config)?;
//! let mut engine = Engine::builder(config.engine.clone()).add_plugin(terrarium::systems::core_plugin).build()?;
//! engine.spawn_npc(NpcSpec::new(Role::Guard, Position::new(5.0, 0.0, 5.0)));
//! runtime.block_on(async {
//!     let server = Server::start(&config, engine, Some(storage)).await?;
//!     println!("listening on {}", server.local_addr());
//!     let summary = server.shutdown().await?;
//!     assert_eq!(summary.write_behind.unwrap().stats.writes_dropped, 0);
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod api;
mod error;
mod guard;
mod http;
mod keys;
mod openapi;
mod priority;
pub mod protocol;
mod rate;
mod server;
mod spawns;
mod stats;
mod stream;
mod tick;
mod viewer;

pub use error::{ApiError, ApiJson, ApiPath, ApiQuery, ServerError};
pub use keys::{API_KEY_HEADER, Access, MIN_KEY_BYTES};
pub use priority::{HTTP_WORKER_NICENESS, TICK_NICENESS, yield_to_the_tick};
pub use server::{Server, ShutdownSummary};
pub use stats::ServerFigures;

pub(crate) use server::AppState;
