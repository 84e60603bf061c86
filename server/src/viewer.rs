//! The browser viewer: its static files, compiled into the binary and served at `/` without a
//! key (they hold no data; everything they show comes from keyed routes), and the small keyed
//! reads only a viewer needs, taken from the world itself between two ticks (the track from
//! storage). The tick thread only copies: the NPC list's columns, or for the map a clone of
//! the voxel world, which shares its chunks copy on write (0.35 ms for a 1552² world, where
//! making the map there took 25–60 ms); the rest runs on blocking tasks, cached per tick (the
//! list) or until the next block edit (the map):
//!
//! | route | what |
//! |---|---|
//! | `GET /api/world` | tick, bounds, NPC and agent counts, the names of roles, statuses and agent states, the voxel world's size and its depots (`null` / `[]` without one) |
//! | `GET /api/world/npcs?min_x=&min_z=&max_x=&max_z=&npcs=` | role and status of every NPC in the area (all of them without an area) as `[id, role, status]` (indices into `roles`, `statuses`; an empty list with `npcs=false`, for a viewer that has them from its `terrarium.binary.v2` frames), and every agent's state and goal as `[id, state, goal, x, y, z]` |
//! | `GET /api/npcs/{id}/track?since_tick=&limit=` | an NPC's stored track: at most `limit` (1 ..= 1000, default 500) positions `[tick, x, y, z]` from `since_tick` on (default: the last minute), oldest first, read through the storage stack's read circuit; `next_since_tick` continues it |
//! | `GET /api/world/map?size=N` | a top-down map of the voxel world, at most `N` (16 ..= 512, default 256) samples a side: per sample the height of the surface, its block, and the most valuable ore below it (404 without a voxel world) |
//!
//! The viewer is plain JavaScript (`server/viewer/`), no build step: a Web Worker holds the
//! WebSocket and applies `reset`/`delta` frames to typed arrays, the page draws them with WebGL
//! (or a 2D canvas with typed arrays when WebGL is missing).

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use terrarium::engine::voxel::{Block, BlockPos, Ore, VoxelWorld};
use terrarium::engine::{
    Agent, Brain, BrainState, Engine, Goal, NpcId, NpcIndex, Position, Role, SimClock, Status, WorldBounds,
};

use crate::AppState;
use crate::error::{ApiError, ApiPath, ApiQuery};
use crate::tick::Job;

/// One static file: where it is served, its content type, its bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// An asset of `server/viewer/`, served at `path`.
macro_rules! asset {
    ($path:literal, $file:literal, $type:literal) => {
        Asset { path: $path, content_type: $type, body: include_bytes!(concat!("../viewer/", $file)) }
    };
}

/// The viewer's files. `/` is `index.html`.
const ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/viewer/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/viewer/app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!("/viewer/render.js", "render.js", "text/javascript; charset=utf-8"),
    asset!("/viewer/stream.js", "stream.js", "text/javascript; charset=utf-8"),
];

/// What the page may load and where it may connect: only this server. The key lives in
/// `sessionStorage`, so no script from elsewhere may run beside it.
const CSP: &str = "default-src 'none'; script-src 'self'; worker-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// Largest side of a map, samples.
const MAX_MAP_SIZE: u32 = 512;

/// The routes that need no key: the static files.
pub(crate) fn public() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for asset in ASSETS {
        router = router.route(asset.path, get(move || async move { serve(asset) }));
    }
    router
}

/// The keyed reads (the caller adds the key check).
pub(crate) fn keyed() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/world", get(world))
        .route("/api/world/npcs", get(npcs))
        .route("/api/world/map", get(map))
        .route("/api/npcs/{id}/track", get(track))
        .layer(Extension(Arc::new(MapCache::default())))
        .layer(Extension(Arc::new(ColumnsCache::default())))
}

fn serve(asset: &Asset) -> Response {
    let mut res = asset.body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // A new server binary may bring new files: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY"));
    res
}

/// Runs `f` on the tick thread between two ticks.
async fn on_tick<R: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&mut Engine) -> R + Send + 'static,
) -> Result<R, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move |engine: &mut Engine| {
        let _ = tx.send(f(engine));
    });
    let gone = || ApiError::unavailable("the tick has stopped", 5);
    state.jobs.send(job).map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

/// `GET /api/world`.
#[derive(Debug, Serialize)]
struct WorldBody {
    tick: u64,
    tick_hz: u32,
    bounds: Bounds,
    npcs: u64,
    agents: u64,
    roles: Vec<String>,
    statuses: Vec<&'static str>,
    agent_states: Vec<&'static str>,
    goals: [&'static str; 4],
    /// `null` without a voxel world.
    voxel: Option<VoxelInfo>,
    depots: Vec<DepotInfo>,
}

#[derive(Debug, Serialize)]
struct Bounds {
    min: [f32; 3],
    max: [f32; 3],
}

#[derive(Debug, Serialize)]
struct VoxelInfo {
    /// Blocks `[x, y, z]`, from the origin.
    size: [i32; 3],
    /// Block edits since generation.
    edits: u64,
}

#[derive(Debug, Serialize)]
struct DepotInfo {
    /// The cell agents stand in to use it.
    cell: [i32; 3],
    /// Items handed in, per ore (`coal`, `iron`, `gold`, `diamond`).
    stock: std::collections::BTreeMap<&'static str, u64>,
}

/// Goal kinds, in the order `[id, state, goal, …]` refers to them.
const GOALS: [&str; 4] = ["none", "deposit", "depot", "point"];

async fn world(State(state): State<Arc<AppState>>) -> Result<axum::Json<WorldBody>, ApiError> {
    let body = on_tick(&state, |engine: &mut Engine| {
        let w = engine.world_mut();
        let agents = w.query_filtered::<(), bevy_ecs::query::With<Agent>>().iter(w).count() as u64;
        let b = *w.resource::<WorldBounds>();
        let voxel = w.get_resource::<VoxelWorld>();
        WorldBody {
            tick: w.resource::<SimClock>().tick,
            tick_hz: 0,
            bounds: Bounds { min: b.min, max: b.max },
            npcs: w.resource::<NpcIndex>().len() as u64,
            agents,
            roles: Role::BUILT_IN.iter().map(|r| r.name()).collect(),
            statuses: Status::ALL.iter().map(|s| s.name()).collect(),
            agent_states: BrainState::ALL.iter().map(|s| s.name()).collect(),
            goals: GOALS,
            voxel: voxel.map(|v| VoxelInfo { size: v.size(), edits: v.edits() }),
            depots: voxel.map_or_else(Vec::new, |v| {
                v.depots()
                    .iter()
                    .map(|d| DepotInfo {
                        cell: [d.cell.x, d.cell.y, d.cell.z],
                        stock: Ore::ALL.iter().map(|o| (o.name(), d.stock[o.index()])).collect(),
                    })
                    .collect()
            }),
        }
    })
    .await?;
    Ok(axum::Json(WorldBody { tick_hz: state.tick_hz, ..body }))
}

/// Query of `GET /api/world/npcs`: an area of the ground plane (`min` inclusive, `max`
/// exclusive), all four or none; `npcs=false` leaves the NPC list out (agents only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AreaParams {
    min_x: Option<f32>,
    min_z: Option<f32>,
    max_x: Option<f32>,
    max_z: Option<f32>,
    npcs: Option<bool>,
}

/// `GET /api/world/npcs`.
#[derive(Debug, Serialize)]
struct NpcsBody {
    tick: u64,
    /// Names the `role` indices of `npcs` refer to.
    roles: Vec<String>,
    /// Names the `status` indices refer to.
    statuses: Vec<&'static str>,
    /// Names the `state` indices of `agents` refer to.
    agent_states: Vec<&'static str>,
    /// Names the `goal` indices refer to.
    goals: [&'static str; 4],
    /// `[id, role, status]`.
    npcs: Vec<(u64, u16, u8)>,
    /// `[id, state, goal, x, y, z]`: the goal's cell (a deposit, a depot's cell, a point);
    /// zeros for `none`.
    agents: Vec<(u64, u8, u8, i32, i32, i32)>,
}

async fn npcs(
    State(state): State<Arc<AppState>>,
    Extension(cache): Extension<Arc<ColumnsCache>>,
    ApiQuery(q): ApiQuery<AreaParams>,
) -> Result<axum::Json<NpcsBody>, ApiError> {
    let area = match (q.min_x, q.min_z, q.max_x, q.max_z) {
        (None, None, None, None) => None,
        (Some(a), Some(b), Some(c), Some(d)) if [a, b, c, d].iter().all(|v| v.is_finite()) => {
            Some(([a, b], [c, d]))
        }
        _ => {
            return Err(ApiError::bad_request(
                "give min_x, min_z, max_x and max_z (finite numbers), or none",
            ));
        }
    };
    let columns = columns(&state, &cache).await?;
    // Filtering, naming and sorting 100k rows takes longer than copying them: off the tick.
    let list = q.npcs.unwrap_or(true);
    let body = tokio::task::spawn_blocking(move || npcs_body(&columns, area, list))
        .await
        .map_err(|_| ApiError::unavailable("the NPC list could not be built", 1))?;
    Ok(axum::Json(body))
}

/// What `/api/world/npcs` needs of every NPC, copied on the tick thread as it is (no filter, no
/// order): the tick thread only copies, the rest happens elsewhere.
struct Columns {
    tick: u64,
    depots: Vec<BlockPos>,
    /// `(id, x, z, role, status)`.
    npcs: Vec<(u64, f32, f32, Role, Status)>,
    /// `(id, x, z, state, goal)` of agents.
    brains: Vec<(u64, f32, f32, BrainState, Goal)>,
}

/// The last copy and the tick count the server had published when it was asked for, reused by
/// every read until the world ticks again (several viewers polling cost the tick one copy per
/// tick at most).
#[derive(Default)]
struct ColumnsCache(Mutex<Option<(u64, Arc<Columns>)>>);

/// The columns of the world's current tick: the cached copy when no tick ran since, else a
/// new one, taken on the tick thread between two ticks.
async fn columns(state: &AppState, cache: &Arc<ColumnsCache>) -> Result<Arc<Columns>, ApiError> {
    let now = state.tick.tick.load(std::sync::atomic::Ordering::Relaxed);
    if let Some((at, c)) = cache.0.lock().unwrap_or_else(PoisonError::into_inner).as_ref()
        && *at == now
    {
        return Ok(Arc::clone(c));
    }
    // Taken at `now` or later: a read that sees `now` published gets a copy at least as new.
    let fresh = Arc::new(on_tick(state, gather).await?);
    *cache.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((now, Arc::clone(&fresh)));
    Ok(fresh)
}

/// The tick thread's part of `/api/world/npcs`: one pass, copying.
fn gather(engine: &mut Engine) -> Columns {
    let w = engine.world_mut();
    let tick = w.resource::<SimClock>().tick;
    let depots: Vec<BlockPos> =
        w.get_resource::<VoxelWorld>().map_or_else(Vec::new, |v| v.depots().iter().map(|d| d.cell).collect());
    let n = w.resource::<NpcIndex>().len();
    let (mut npcs, mut brains) = (Vec::with_capacity(n), Vec::new());
    let mut q = w.query::<(&NpcId, &Position, &Role, &Status, Option<&Brain>)>();
    for (id, p, role, status, brain) in q.iter(w) {
        npcs.push((id.0, p.x, p.z, *role, *status));
        if let Some(b) = brain {
            brains.push((id.0, p.x, p.z, b.state, b.goal));
        }
    }
    Columns { tick, depots, npcs, brains }
}

/// The rest of `/api/world/npcs`, off the tick thread: the area, role names, order by id;
/// `list`: with the NPC list (else agents only).
fn npcs_body(c: &Columns, area: Option<([f32; 2], [f32; 2])>, list: bool) -> NpcsBody {
    let inside =
        |x: f32, z: f32| area.is_none_or(|(min, max)| x >= min[0] && x < max[0] && z >= min[1] && z < max[1]);
    let mut roles: Vec<Role> = Role::BUILT_IN.to_vec();
    let mut npcs = Vec::new();
    for &(id, x, z, role, status) in c.npcs.iter().filter(|_| list) {
        if !inside(x, z) {
            continue;
        }
        let r = roles.iter().position(|x| *x == role).unwrap_or_else(|| {
            roles.push(role);
            roles.len() - 1
        });
        npcs.push((id, u16::try_from(r).unwrap_or(u16::MAX), status as u8));
    }
    let mut agents: Vec<_> = c
        .brains
        .iter()
        .filter(|&&(_, x, z, ..)| inside(x, z))
        .map(|&(id, _, _, state, goal)| {
            let (goal, cell) = match goal {
                Goal::None => (0, BlockPos::default()),
                Goal::Deposit(c) => (1, c),
                Goal::Depot(i) => (2, c.depots.get(i as usize).copied().unwrap_or_default()),
                Goal::Point(c) => (3, c),
            };
            (id, state as u8, goal, cell.x, cell.y, cell.z)
        })
        .collect();
    npcs.sort_unstable_by_key(|n| n.0);
    agents.sort_unstable_by_key(|a| a.0);
    NpcsBody {
        tick: c.tick,
        roles: roles.into_iter().map(Role::name).collect(),
        statuses: Status::ALL.iter().map(|s| s.name()).collect(),
        agent_states: BrainState::ALL.iter().map(|s| s.name()).collect(),
        goals: GOALS,
        npcs,
        agents,
    }
}

/// Most positions one track read returns.
const MAX_TRACK_POINTS: u32 = 1000;
/// Simulated seconds one track read spans at most (it reads the stored history of that span).
const MAX_TRACK_SECONDS: u64 = 600;
/// Simulated seconds a track goes back when the caller gives no `since_tick`.
const DEFAULT_TRACK_SECONDS: u64 = 60;

/// Query of `GET /api/npcs/{id}/track`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TrackParams {
    /// The first tick wanted (default: a minute of simulated time ago).
    since_tick: Option<u64>,
    /// Most positions, 1 ..= 1000 (default 500).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// `GET /api/npcs/{id}/track`: the positions stored for one NPC, oldest first. Storage keeps
/// one per NPC per flush of the position batcher (the memory store only the newest).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TrackBody {
    id: u64,
    /// The span read: `since_tick` ..< `until_tick` (at most ten simulated minutes).
    since_tick: u64,
    until_tick: u64,
    /// `[tick, x, y, z]`, by tick.
    #[schema(value_type = Vec<Vec<f64>>)]
    points: Vec<(u64, f32, f32, f32)>,
    /// Where the next read goes on (`since_tick` of it): `limit` cut this one short, or its
    /// span ended before the world's tick. `null`: nothing more is stored yet.
    next_since_tick: Option<u64>,
}

/// An NPC's recent track, from storage.
#[utoipa::path(get, path = "/api/npcs/{id}/track",
    params(("id" = u64, Path, description = "the NPC"), TrackParams),
    responses(
        (status = 200, description = "the track", body = TrackBody),
        (status = 404, description = "no such NPC", body = crate::openapi::ErrorBody),
        (status = 400, description = "malformed request", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or wrong API key", body = crate::openapi::ErrorBody),
        (status = 429, description = "rate limit", body = crate::openapi::ErrorBody),
        (status = 503, description = "unavailable (storage off or its circuit open, shutdown, request timeout)", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn track(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(q): ApiQuery<TrackParams>,
) -> Result<axum::Json<TrackBody>, ApiError> {
    let limit = q.limit.unwrap_or(500);
    if !(1..=MAX_TRACK_POINTS).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be 1 ..= {MAX_TRACK_POINTS}, got {limit}")));
    }
    // Ids are never reused: one never handed out has no track. A despawned NPC keeps its
    // stored history.
    if id == 0 || id >= state.commands.next_npc_id().0 {
        return Err(ApiError::not_found(format!("no npc {id}")));
    }
    let hz = u64::from(state.tick_hz.max(1));
    let now = state.tick.tick.load(std::sync::atomic::Ordering::Relaxed);
    let since = q.since_tick.unwrap_or_else(|| now.saturating_sub(DEFAULT_TRACK_SECONDS * hz));
    let until = since.saturating_add(MAX_TRACK_SECONDS * hz).min(now.max(since).saturating_add(1));
    let rows = state
        .store()?
        .position_history(id, since..until, limit as usize)
        .await
        .map_err(|e| ApiError::storage(&e))?;
    let next_since_tick = match rows.last() {
        Some(last) if rows.len() == limit as usize => Some(last.tick + 1),
        _ if until <= now => Some(until),
        _ => None,
    };
    Ok(axum::Json(TrackBody {
        id,
        since_tick: since,
        until_tick: until,
        points: rows.iter().map(|p| (p.tick, p.x, p.y, p.z)).collect(),
        next_since_tick,
    }))
}

/// Query of `GET /api/world/map`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapParams {
    /// Largest side in samples, 16 ..= 512 (default 256).
    size: Option<u32>,
}

/// `GET /api/world/map`: row-major, `z` rows of `x` samples.
#[derive(Debug, Serialize)]
struct MapBody {
    /// Block edits of the world this map shows (it changes when agents dig).
    edits: u64,
    /// The voxel world's size in blocks `[x, y, z]`.
    world: [i32; 3],
    /// Samples `[x, z]`.
    size: [u32; 2],
    /// Blocks between two samples (each sample is the column at its lower corner).
    step: u32,
    /// Names of the block codes in `top` and `ore`.
    blocks: Vec<&'static str>,
    /// Height of the highest solid block (-1: none).
    height: Vec<i16>,
    /// Its block code.
    top: Vec<u8>,
    /// The most valuable ore in the column below it (block code), 0 for none.
    ore: Vec<u8>,
}

/// The last map made, reused while the world has no new edit. One request at a time updates
/// it; another waits and reuses the result. (Sampling again only the chunk columns edited since
/// the last map was tried and dropped: a busy colony edits every column between two polls.)
#[derive(Default)]
struct MapCache(tokio::sync::Mutex<Option<CachedMap>>);

struct CachedMap {
    /// The `size` asked for.
    size: u32,
    /// The world's edit count the map shows.
    edits: u64,
    /// The map as JSON.
    json: axum::body::Bytes,
}

async fn map(
    State(state): State<Arc<AppState>>,
    Extension(cache): Extension<Arc<MapCache>>,
    ApiQuery(q): ApiQuery<MapParams>,
) -> Result<Response, ApiError> {
    let size = q.size.unwrap_or(256);
    if !(16..=MAX_MAP_SIZE).contains(&size) {
        return Err(ApiError::bad_request(format!("size must be 16 ..= {MAX_MAP_SIZE}, got {size}")));
    }
    let mut cached = cache.0.lock().await;
    let fresh_at = cached.as_ref().filter(|c| c.size == size).map(|c| c.edits);
    // The tick thread's part: nothing when nothing changed, else a clone of the world, which
    // shares its blocks (copy on write) and so costs the chunk table, not the blocks.
    let snapshot = on_tick(&state, move |engine: &mut Engine| {
        let voxel = engine.world().get_resource::<VoxelWorld>()?;
        Some((fresh_at != Some(voxel.edits())).then(|| voxel.clone()))
    })
    .await?
    .ok_or_else(|| {
        ApiError::not_found("this world has no voxel world (start game_server with --agents N)")
    })?;
    if let Some(voxel) = snapshot {
        // Made, encoded and dropped (the snapshot's share of the blocks with it) off the tick.
        let made = tokio::task::spawn_blocking(move || make_map(&voxel, size))
            .await
            .map_err(|_| ApiError::unavailable("the map could not be made", 1))?;
        let made = made.map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("the map does not encode: {e}"),
            )
        })?;
        *cached = Some(made);
    }
    let json = cached.as_ref().map(|c| c.json.clone()).unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json).into_response())
}

/// The map of `voxel` (a snapshot, off the tick thread) as JSON.
fn make_map(voxel: &VoxelWorld, size: u32) -> Result<CachedMap, serde_json::Error> {
    let body = top_down(voxel, size);
    Ok(CachedMap { size, edits: body.edits, json: axum::body::Bytes::from(serde_json::to_vec(&body)?) })
}

/// Samples the world column by column from the top: the first solid block is the surface, the
/// most valuable ore below it the column's ore.
fn top_down(voxel: &VoxelWorld, size: u32) -> MapBody {
    let [sx, sy, sz] = voxel.size();
    let longest = u32::try_from(sx.max(sz)).unwrap_or(1).max(1);
    let step = longest.div_ceil(size).max(1);
    let (w, h) =
        (u32::try_from(sx).unwrap_or(0).div_ceil(step), u32::try_from(sz).unwrap_or(0).div_ceil(step));
    let n = (w * h) as usize;
    let (mut height, mut top, mut ore) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let worth = |b: Block| b.ore().map_or(0, |o| o.index() + 1);
    for j in 0..h {
        for i in 0..w {
            let (x, z) = ((i * step) as i32, (j * step) as i32);
            let mut surface: Option<(i32, Block)> = None;
            let mut best = Block::Air;
            for y in (0..sy).rev() {
                let b = voxel.get(BlockPos::new(x, y, z));
                if surface.is_none() && b.is_solid() {
                    surface = Some((y, b));
                }
                if surface.is_some() && worth(b) > worth(best) {
                    best = b;
                }
            }
            let (y, b) = surface.unwrap_or((-1, Block::Air));
            height.push(i16::try_from(y).unwrap_or(i16::MAX));
            top.push(b as u8);
            ore.push(if best == Block::Air { 0 } else { best as u8 });
        }
    }
    MapBody {
        edits: voxel.edits(),
        world: [sx, sy, sz],
        size: [w, h],
        step,
        blocks: Block::ALL.iter().map(|b| b.name()).collect(),
        height,
        top,
        ore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use terrarium::engine::voxel::WorldGen;

    #[test]
    fn every_asset_is_served_with_its_type_and_the_policy() {
        for a in ASSETS {
            let res = serve(a);
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()[header::CONTENT_TYPE], a.content_type);
            assert!(
                res.headers()[header::CONTENT_SECURITY_POLICY]
                    .to_str()
                    .unwrap()
                    .contains("connect-src 'self'")
            );
            assert!(!a.body.is_empty(), "{}", a.path);
        }
    }

    /// A world of `n` wanderers of the default configuration (as game_server makes one).
    fn wanderers(n: u64) -> Engine {
        let cfg = terrarium::Config::default().engine;
        let mut e = Engine::builder(cfg).add_plugin(terrarium::systems::core_plugin).build().unwrap();
        terrarium::systems::wander::spawn_wanderers(&mut e, n);
        e.tick();
        e
    }

    #[test]
    fn the_npc_list_from_columns_is_the_world_in_order() {
        let mut e = wanderers(500);
        let c = gather(&mut e);
        assert_eq!(c.npcs.len(), 500);
        let all = npcs_body(&c, None, true);
        assert_eq!(all.npcs.len(), 500);
        assert!(all.npcs.windows(2).all(|w| w[0].0 < w[1].0), "by id");
        let mid = [c.npcs[0].1, c.npcs[0].2];
        let part = npcs_body(&c, Some(([mid[0] - 1.0, mid[1] - 1.0], [mid[0] + 1.0, mid[1] + 1.0])), true);
        assert!(part.npcs.iter().any(|n| n.0 == c.npcs[0].0), "the NPC at the area's centre");
        assert!(part.npcs.len() < 500);
        let status = c.npcs[0].4 as u8;
        assert_eq!(part.npcs.iter().find(|n| n.0 == c.npcs[0].0).unwrap().2, status);
    }

    /// What `/api/world/npcs` costs the tick thread at 100k NPCs, against a tick:
    /// `cargo test --release -p terrarium-server --lib viewer::tests::tick_thread_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement: run it in release"]
    fn tick_thread_cost_of_the_npc_list() {
        let mut e = wanderers(100_000);
        let time = |f: &mut dyn FnMut()| median_ms(f, 15);
        let tick = time(&mut || {
            e.tick();
        });
        let copy = time(&mut || {
            std::hint::black_box(gather(&mut e));
        });
        let c = gather(&mut e);
        let rest = time(&mut || {
            std::hint::black_box(npcs_body(&c, None, true));
        });
        println!(
            "100k NPCs, medians of 15: tick {tick:.2} ms; /api/world/npcs on the tick thread: before (≈ copy + list + sort) {:.2} ms, now (copy) {copy:.2} ms; off the tick {rest:.2} ms",
            copy + rest
        );
    }

    /// The median of `n` runs of `f`, in milliseconds.
    fn median_ms(f: &mut dyn FnMut(), n: usize) -> f64 {
        let mut v: Vec<f64> = (0..n)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    /// What a new map costs the tick thread now (a clone of the voxel world, which shares its
    /// blocks), against making it there as before; what it costs off the tick; and what a tick
    /// costs while such a clone is alive (each chunk it edits is copied once):
    /// `cargo test --release -p terrarium-server --lib viewer::tests::tick_thread_cost -- --ignored --nocapture --test-threads 1`
    #[test]
    #[ignore = "a measurement: run it in release"]
    fn tick_thread_cost_of_the_map() {
        let median = median_ms;
        for agents in [1_000, 100_000] {
            let cfg = terrarium::Config::default().engine;
            let mut e = Engine::builder(cfg).add_plugin(terrarium::systems::core_plugin).build().unwrap();
            terrarium::systems::agents::spawn_colony(&mut e, agents, 1).unwrap();
            for _ in 0..5 {
                e.tick();
            }
            let v = e.world().resource::<VoxelWorld>();
            let (size, samples) = (v.size(), top_down(v, 256).size);
            let before = median(&mut || drop(std::hint::black_box(top_down(v, 256))), 5);
            let clone = median(&mut || drop(std::hint::black_box(v.clone())), 15);
            let off = median(&mut || drop(std::hint::black_box(make_map(&v.clone(), 256).unwrap())), 5);
            let tick = median(
                &mut || {
                    e.tick();
                },
                9,
            );
            let mut shared: Vec<f64> = (0..9)
                .map(|_| {
                    let snapshot = e.world().resource::<VoxelWorld>().clone();
                    let t = std::time::Instant::now();
                    e.tick();
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    drop(snapshot);
                    ms
                })
                .collect();
            shared.sort_by(f64::total_cmp);
            let shared = shared[shared.len() / 2];
            println!(
                "colony of {agents} agents, world {size:?}, map {samples:?}, medians: on the tick thread before {before:.1} ms, \
                 now (a clone) {clone:.3} ms; off the tick (map + JSON) {off:.1} ms; a tick {tick:.1} ms, with a clone alive {shared:.1} ms"
            );
        }
    }

    #[test]
    fn the_map_finds_surfaces_and_ores() {
        let mut world = VoxelWorld::generate(WorldGen::small()).unwrap();
        let m = top_down(&world, 16);
        let [sx, sy, sz] = world.size();
        assert_eq!(m.world, [sx, sy, sz]);
        assert_eq!(m.height.len(), (m.size[0] * m.size[1]) as usize);
        let (x, z) = (0, 0);
        let y = world.surface_y(x, z).unwrap();
        assert_eq!(i32::from(m.height[0]), y);
        assert_eq!(m.top[0], world.get(BlockPos::new(x, y, z)) as u8);
        // Bury a diamond under the first column: the map shows it, on a clone (the snapshot a
        // request takes) made after the edit only.
        let snapshot = world.clone();
        world.set(BlockPos::new(x, 1, z), Block::Diamond);
        assert_eq!(top_down(&world, 16).ore[0], Block::Diamond as u8);
        assert_ne!(top_down(&snapshot, 16).ore[0], Block::Diamond as u8);
        let made = make_map(&world.clone(), 16).unwrap();
        assert_eq!(made.edits, world.edits());
        let json: serde_json::Value = serde_json::from_slice(&made.json).unwrap();
        assert_eq!(json["ore"][0], Block::Diamond as u8);
        assert_eq!(json["height"].as_array().unwrap().len(), m.height.len());
    }
}
