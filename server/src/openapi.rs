//! `GET /api/openapi.json`: the OpenAPI 3.1 document of the HTTP API, generated (utoipa) from
//! the handlers' `#[utoipa::path]` attributes and the request and response types. Types that
//! live in other crates (the NPC records, the performance snapshot) are described here by
//! mirrors, which a test holds to the JSON the server really sends.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema};
use utoipa::{IntoResponses, Modify, OpenApi, PartialSchema, ToSchema};

use crate::keys::API_KEY_HEADER;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Terrarium game server", description = "NPCs, orders, performance figures and health of a running world. WebSocket position streams: `GET /ws` (see the crate doc)."),
    paths(
        crate::api::list_npcs,
        crate::api::spawn_npc,
        crate::api::get_npc,
        crate::viewer::track,
        world,
        world_npcs,
        world_map,
        ws,
        crate::api::order_npc,
        crate::api::performance,
        crate::api::metrics,
        crate::api::health,
        crate::api::openapi_json,
    ),
    components(schemas(ErrorBody, NpcRecord, NpcPage, World, WorldNpcs, WorldMap, crate::api::SpawnRequest, crate::api::OrderRequest, crate::api::Queued, Health, AnyObject)),
    modifiers(&KeyScheme),
    security(("api_key" = [])),
)]
pub(crate) struct ApiDoc;

/// The API key header as the document's security scheme.
struct KeyScheme;

impl Modify for KeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(API_KEY_HEADER))),
        );
    }
}

/// Every error: `{"error": "...", "status": N}`.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the body is built by ApiError")]
pub(crate) struct ErrorBody {
    /// What went wrong, for people.
    error: String,
    /// The HTTP status, again.
    status: u16,
}

/// The errors of every route that reads or writes through the storage stack or the tick's
/// queue, written once for their `responses(...)` lists.
#[derive(IntoResponses)]
#[allow(dead_code, reason = "documentation only: the bodies are built by ApiError")]
pub(crate) enum StorageRouteErrors {
    #[response(status = 400, description = "malformed request")]
    Malformed(ErrorBody),
    #[response(status = 401, description = "missing or wrong API key")]
    NoKey(ErrorBody),
    #[response(status = 429, description = "rate limit")]
    RateLimited(ErrorBody),
    #[response(status = 503, description = "unavailable (storage, shutdown, request timeout)")]
    Unavailable(ErrorBody),
}

/// The errors every route answered by the tick thread shares (its 400, where it has one, says
/// what that route refuses).
#[derive(IntoResponses)]
#[allow(dead_code, reason = "documentation only: the bodies are built by ApiError")]
pub(crate) enum TickRouteErrors {
    #[response(status = 401, description = "missing or wrong API key")]
    NoKey(ErrorBody),
    #[response(status = 429, description = "rate limit")]
    RateLimited(ErrorBody),
    #[response(status = 503, description = "unavailable (the tick stopped, shutdown, request timeout)")]
    Unavailable(ErrorBody),
}

/// An NPC as stored (`terrarium::persistence::NpcRecord`).
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the body is the persistence crate's NpcRecord")]
pub(crate) struct NpcRecord {
    id: u64,
    /// `miner`, `builder`, `guard`, `trader`, `scout` or `other:N`.
    role: String,
    /// `idle`, `moving`, `mining`, `returning`, `depositing`, `fleeing` or `dead`.
    status: String,
    /// 0 for none.
    swarm: u32,
    /// True for agents.
    agent: bool,
    x: f32,
    y: f32,
    z: f32,
    health: u16,
    /// `[item kind, count]` stacks.
    inventory: Vec<[u16; 2]>,
    /// Tick of the last change written.
    updated_tick: u64,
}

/// A page of NPCs by ascending id; `next` is the cursor of the next page (null on the last).
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the body is the persistence crate's NpcPage")]
pub(crate) struct NpcPage {
    npcs: Vec<NpcRecord>,
    next: Option<u64>,
}

/// `GET /health`.
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the body is built as JSON in the handler")]
pub(crate) struct Health {
    /// `ok`, `degraded`, `stalled` or `shutting_down`.
    status: String,
    tick: u64,
    tick_hz: u32,
    since_last_tick_ms: u64,
    /// The write-behind's state; null without storage.
    #[schema(value_type = Option<AnyObject>)]
    storage: Option<()>,
}

/// A JSON object whose keys are documented elsewhere (the performance snapshot).
pub(crate) struct AnyObject;

impl PartialSchema for AnyObject {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().into()
    }
}

impl ToSchema for AnyObject {}

// The viewer's reads and the WebSocket stream, documented here (their handlers live in
// `viewer.rs` and `stream/ws.rs`): these functions only carry the paths' attributes.

/// The world at a glance: tick, bounds, counts, the names the other reads' indices refer to,
/// the voxel world and its depots.
#[utoipa::path(get, path = "/api/world",
    responses(
        (status = 200, description = "the world", body = World),
        TickRouteErrors,
    ))]
#[allow(dead_code, reason = "documentation only: the handler is viewer::world")]
fn world() {}

/// Every NPC (or those in an area of the ground plane) as compact rows, for the viewer.
#[utoipa::path(get, path = "/api/world/npcs",
    params(
        ("min_x" = Option<f32>, Query, description = "area: lowest x (inclusive); all four or none"),
        ("min_z" = Option<f32>, Query, description = "area: lowest z (inclusive)"),
        ("max_x" = Option<f32>, Query, description = "area: x limit (exclusive)"),
        ("max_z" = Option<f32>, Query, description = "area: z limit (exclusive)"),
        ("npcs" = Option<bool>, Query, description = "false: leave the NPC list out (agents only); default true"),
    ),
    responses(
        (status = 200, description = "the NPCs", body = WorldNpcs),
        (status = 400, description = "malformed request (some of the four bounds only, or not finite)", body = ErrorBody),
        TickRouteErrors,
    ))]
#[allow(dead_code, reason = "documentation only: the handler is viewer::npcs")]
fn world_npcs() {}

/// A top-down map of the voxel world (height, surface block, best ore per sampled column).
#[utoipa::path(get, path = "/api/world/map",
    params(("size" = Option<u32>, Query, minimum = 16, maximum = 512, description = "largest side in samples, default 256")),
    responses(
        (status = 200, description = "the map, row-major: z rows of x samples", body = WorldMap),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 404, description = "this world has no voxel world", body = ErrorBody),
        TickRouteErrors,
    ))]
#[allow(dead_code, reason = "documentation only: the handler is viewer::map")]
fn world_map() {}

/// The WebSocket position stream (RFC 6455; messages in the crate doc, "WebSocket
/// protocol"). The key may also come as the sub-protocol `terrarium.key.<KEY>` next to
/// `terrarium.v1` (browsers), or, for old clients, as `api_key` in the query. Offering
/// `terrarium.binary.v2` (or `terrarium.binary.v1`) as well selects compact binary position
/// frames (`protocol::BinaryFrame`; v2 with each NPC's role and status).
#[utoipa::path(get, path = "/ws",
    params(
        ("Sec-WebSocket-Protocol" = Option<String>, Header, description = "`terrarium.v1, terrarium.key.<KEY>`; add `terrarium.binary.v2` (selected first when offered) or `terrarium.binary.v1` for binary `reset`/`delta` frames: little-endian, a 24-byte header (kind u8 1 reset 2 delta, flags u8 bit 0 u64 ids, u16 0, moved u32, gone u32, role/status entries u32 (0 in v1), tick u64), moved ids (u32, or u64 with the flag), their x y z (f32), padding to the id width, gone ids, then (v2) the entries' ids and their role/status words (u32: bits 0-16 role code, bits 24-31 status)"),
        ("api_key" = Option<String>, Query, description = "the key (old clients; ends up in logs)"),
    ),
    responses(
        (status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, description = "not a WebSocket upgrade, or a malformed sub-protocol offer", body = ErrorBody),
        (status = 401, description = "missing or wrong API key", body = ErrorBody),
        (status = 429, description = "rate limit", body = ErrorBody),
        (status = 503, description = "at the WebSocket limit, or shutting down", body = ErrorBody),
    ))]
#[allow(dead_code, reason = "documentation only: the handler is stream::ws::upgrade")]
fn ws() {}

/// `GET /api/world` (mirrors `viewer::WorldBody`).
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the body is built in viewer.rs")]
pub(crate) struct World {
    tick: u64,
    tick_hz: u32,
    /// `min` and `max`, each `[x, y, z]`.
    #[schema(value_type = AnyObject)]
    bounds: (),
    npcs: u64,
    agents: u64,
    roles: Vec<String>,
    statuses: Vec<String>,
    agent_states: Vec<String>,
    goals: Vec<String>,
    /// `{size: [x, y, z], edits}`; null without a voxel world.
    #[schema(value_type = Option<AnyObject>)]
    voxel: Option<()>,
    /// `{cell: [x, y, z], stock: {ore: count}}`.
    #[schema(value_type = Vec<AnyObject>)]
    depots: Vec<()>,
}

/// `GET /api/world/npcs` (mirrors `viewer::NpcsBody`).
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the body is built in viewer.rs")]
pub(crate) struct WorldNpcs {
    tick: u64,
    roles: Vec<String>,
    statuses: Vec<String>,
    agent_states: Vec<String>,
    goals: Vec<String>,
    /// `[id, role, status]` (indices into `roles`, `statuses`).
    npcs: Vec<Vec<u64>>,
    /// `[id, state, goal, x, y, z]`: the goal's cell, zeros for `none`.
    agents: Vec<Vec<i64>>,
}

/// `GET /api/world/map` (mirrors `viewer::MapBody`).
#[derive(ToSchema)]
#[allow(dead_code, reason = "a schema only: the body is built in viewer.rs")]
pub(crate) struct WorldMap {
    /// Block edits of the world this map shows.
    edits: u64,
    /// The voxel world's size in blocks `[x, y, z]`.
    world: Vec<i32>,
    /// Samples `[x, z]`.
    size: Vec<u32>,
    /// Blocks between two samples.
    step: u32,
    /// Names of the block codes in `top` and `ore`.
    blocks: Vec<String>,
    /// Height of the highest solid block (-1: none).
    height: Vec<i16>,
    /// Its block code.
    top: Vec<u8>,
    /// The most valuable ore below it (block code), 0 for none.
    ore: Vec<u8>,
}

/// The document as JSON.
pub(crate) fn json() -> String {
    ApiDoc::openapi().to_json().expect("the document is plain data and always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(&json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for path in [
            "/api/npcs",
            "/api/npcs/{id}",
            "/api/npcs/{id}/orders",
            "/api/npcs/{id}/track",
            "/api/world",
            "/api/world/npcs",
            "/api/world/map",
            "/ws",
            "/api/performance",
            "/metrics",
            "/health",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert_eq!(doc["components"]["securitySchemes"]["api_key"]["name"], API_KEY_HEADER);
        // The mirror has exactly the fields the server sends.
        let record = terrarium::persistence::NpcRecord {
            id: 1,
            role: "miner".into(),
            status: "idle".into(),
            swarm: 0,
            agent: false,
            x: 0.0,
            y: 0.0,
            z: 0.0,
            health: 1,
            inventory: vec![(1, 2)],
            updated_tick: 0,
        };
        let sent = serde_json::to_value(&record).unwrap();
        let mut sent_keys: Vec<&String> = sent.as_object().unwrap().keys().collect();
        let props = doc["components"]["schemas"]["NpcRecord"]["properties"].as_object().unwrap();
        let mut doc_keys: Vec<&String> = props.keys().collect();
        sent_keys.sort();
        doc_keys.sort();
        assert_eq!(sent_keys, doc_keys);
        assert_eq!(sent["inventory"], serde_json::json!([[1, 2]]), "a stack is a two-number array");
    }
}
