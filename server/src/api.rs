//! The HTTP routes: NPCs (list, read through the cache, spawn, orders), performance, metrics,
//! health. Every error is a JSON body `{"error": "...", "status": N}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use terrarium::engine::{
    Command, Engine, NpcId, NpcIndex, NpcSpec, Order, Position, Role, Velocity, WorldBounds,
};
use terrarium::persistence::{NpcFilter, NpcPage, NpcRecord, Page, Storage};

use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::guard::{deadline, rate_limit, require_api_key};
use crate::openapi::{AnyObject, ErrorBody, StorageRouteErrors};
use crate::protocol::parse_npc_query;
use crate::spawns::SpawnRefused;
use crate::stats::ServerFigures;
use crate::stream::ws;
use crate::tick::Job;
use terrarium::perf::PerformanceSnapshot;

/// Fastest walk an API caller may set, blocks per second.
const MAX_SPEED: f32 = 100.0;

/// Every route, with the API key check on all but `/health`, the per-connection rate limit
/// and response counting on all.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let keyed = Router::new()
        .route("/api/npcs", get(list_npcs).post(spawn_npc))
        .route("/api/npcs/{id}", get(get_npc))
        .route("/api/npcs/{id}/orders", post(order_npc))
        .route("/api/performance", get(performance))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws::upgrade))
        .merge(crate::viewer::keyed())
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), require_api_key));
    Router::new()
        .merge(keyed)
        .merge(crate::viewer::public())
        .route("/health", get(health))
        .route("/api/openapi.json", get(openapi_json))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&state), rate_limit))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), deadline))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), count_responses))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

async fn count_responses(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    state.stats.request(res.status().as_u16());
    res
}

/// A page of NPCs, read through the storage stack.
#[utoipa::path(get, path = "/api/npcs",
    params(
        ("status" = Option<String>, Query, description = "only this status"),
        ("role" = Option<String>, Query, description = "only this role"),
        ("swarm" = Option<u32>, Query, description = "only this swarm"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "page size, default 50"),
        ("after" = Option<u64>, Query, description = "cursor: the previous page's next"),
    ),
    responses(
        (status = 200, description = "a page", body = crate::openapi::NpcPage),
        StorageRouteErrors,
    ))]
pub(crate) async fn list_npcs(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<NpcPage>, ApiError> {
    let q =
        parse_npc_query(query.as_deref().unwrap_or("")).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let store = state.store()?;
    let filter = NpcFilter { status: q.status, role: q.role, swarm: q.swarm };
    let page = store
        .list_npcs(&filter, Page { after: q.after, limit: q.limit })
        .await
        .map_err(|e| ApiError::storage(&e))?;
    Ok(axum::Json(page))
}

/// One NPC (L1 cache first).
#[utoipa::path(get, path = "/api/npcs/{id}",
    params(("id" = u64, Path, description = "the NPC")),
    responses(
        (status = 200, description = "the NPC", body = crate::openapi::NpcRecord),
        (status = 404, description = "no such NPC", body = ErrorBody),
        StorageRouteErrors,
    ))]
pub(crate) async fn get_npc(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<u64>,
) -> Result<axum::Json<NpcRecord>, ApiError> {
    match state.store()?.get_npc(id).await {
        Ok(Some(r)) => Ok(axum::Json(r)),
        Ok(None) => Err(ApiError::not_found(format!("no npc {id}"))),
        Err(e) => Err(ApiError::storage(&e)),
    }
}

/// Body of `POST /api/npcs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpawnRequest {
    role: String,
    /// `[x, y, z]`, blocks, inside the world.
    position: [f32; 3],
    /// `[x, y, z]`, blocks per second (at most 100); default standing still.
    #[serde(default)]
    velocity: Option<[f32; 3]>,
    /// 0 for none.
    #[serde(default)]
    swarm: u32,
    /// Hit points, 1 ..= 65535; default 100.
    #[serde(default)]
    health: Option<u16>,
}

/// A spawn or order taken: applied at the next tick.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Queued {
    id: u64,
    status: &'static str,
}

/// Spawns an NPC at the next tick.
#[utoipa::path(post, path = "/api/npcs",
    request_body = SpawnRequest,
    responses(
        (status = 202, description = "queued", body = Queued),
        (status = 403, description = "read-only key", body = ErrorBody),
        (status = 409, description = "the world holds max_npcs", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 422, description = "a value is out of range", body = ErrorBody),
        StorageRouteErrors,
    ))]
pub(crate) async fn spawn_npc(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<SpawnRequest>,
) -> Result<Response, ApiError> {
    let role = req.role.parse::<Role>().map_err(|e| ApiError::invalid(format!("role: {e}")))?;
    let position = inside("position", req.position, &state.bounds)?;
    let mut spec = NpcSpec::new(role, position).in_swarm(req.swarm);
    if let Some(v) = req.velocity {
        spec = spec.moving(velocity("velocity", v)?);
    }
    if let Some(h) = req.health {
        if h == 0 {
            return Err(ApiError::invalid("health: must be at least 1"));
        }
        spec.health.current = h;
        spec.health.max = spec.health.max.max(h);
    }
    match state.spawns.admit(state.tick.population(state.commands.next_npc_id().0)) {
        Ok(()) => {}
        Err(SpawnRefused::Full) => {
            state.stats.spawns_refused();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("the world is full: server.max_npcs = {}", state.config.max_npcs),
            ));
        }
        Err(SpawnRefused::Budget(wait)) => {
            state.stats.spawns_refused();
            let per_s = state.config.spawn_rate_per_s;
            return Err(ApiError::too_many_requests(
                format!("spawn budget: {per_s} spawns per second per key"),
                wait,
            ));
        }
    }
    let id = state.commands.spawn(spec).map_err(|e| ApiError::command(&e))?;
    state.spawns.remember(id.0);
    let mut res = (StatusCode::ACCEPTED, axum::Json(Queued { id: id.0, status: "queued" })).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/npcs/{}", id.0)) {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(res)
}

/// Body of `POST /api/npcs/{id}/orders`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "order", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum OrderRequest {
    /// Walk to `target` (`[x, y, z]`, inside the world).
    MoveTo { target: [f32; 3] },
    /// Stop and go idle.
    Stop,
    /// Change role.
    SetRole { role: String },
    /// Join a swarm (0 leaves it).
    JoinSwarm { swarm: u32 },
    /// Put it somewhere now.
    Teleport { position: [f32; 3] },
    /// Remove it from the world.
    Despawn,
}

/// Gives an NPC an order, applied at the next tick.
#[utoipa::path(post, path = "/api/npcs/{id}/orders",
    params(("id" = u64, Path, description = "the NPC")),
    request_body = OrderRequest,
    responses(
        (status = 202, description = "queued", body = Queued),
        (status = 403, description = "read-only key", body = ErrorBody),
        (status = 404, description = "no such NPC", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 422, description = "a value is out of range", body = ErrorBody),
        StorageRouteErrors,
    ))]
pub(crate) async fn order_npc(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<u64>,
    ApiJson(req): ApiJson<OrderRequest>,
) -> Result<Response, ApiError> {
    let npc = NpcId(id);
    let command = match req {
        OrderRequest::MoveTo { target } => {
            Command::Order { id: npc, order: Order::MoveTo(inside("target", target, &state.bounds)?) }
        }
        OrderRequest::Stop => Command::Order { id: npc, order: Order::Stop },
        OrderRequest::SetRole { role } => {
            let role = role.parse::<Role>().map_err(|e| ApiError::invalid(format!("role: {e}")))?;
            Command::Order { id: npc, order: Order::SetRole(role) }
        }
        OrderRequest::JoinSwarm { swarm } => Command::Order { id: npc, order: Order::JoinSwarm(swarm) },
        OrderRequest::Teleport { position } => {
            Command::Teleport { id: npc, position: inside("position", position, &state.bounds)? }
        }
        OrderRequest::Despawn => Command::Despawn { id: npc },
    };
    if !state.npc_known(id).await? {
        return Err(ApiError::not_found(format!("no npc {id}")));
    }
    state.commands.send(command).map_err(|e| ApiError::command(&e))?;
    Ok((StatusCode::ACCEPTED, axum::Json(Queued { id, status: "queued" })).into_response())
}

/// `GET /api/performance`: the snapshot, with the server's own counters under `server`.
#[derive(Debug, Serialize)]
pub(crate) struct PerformanceBody {
    #[serde(flatten)]
    snapshot: PerformanceSnapshot,
    server: ServerFigures,
    /// Ticks the tick thread skipped because it fell more than a second behind.
    ticks_skipped: u64,
}

/// The performance snapshot, with the server's counters under `server`.
#[utoipa::path(get, path = "/api/performance",
    responses(
        (status = 200, description = "the figures", body = AnyObject),
        StorageRouteErrors,
    ))]
pub(crate) async fn performance(State(state): State<Arc<AppState>>) -> axum::Json<PerformanceBody> {
    axum::Json(PerformanceBody {
        snapshot: state.perf.snapshot(),
        server: state.figures(),
        ticks_skipped: state.tick.skipped.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// The same figures as Prometheus text.
#[utoipa::path(get, path = "/metrics",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        StorageRouteErrors,
    ))]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.perf.snapshot();
    let figures = state.figures();
    let skipped = state.tick.skipped.load(std::sync::atomic::Ordering::Relaxed);
    state.exporter.record(&snapshot);
    state.exporter.with(|| {
        figures.export();
        metrics::counter!("terrarium_tick_skipped_total").absolute(skipped);
    });
    let mut res = state.exporter.render().into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    res
}

/// Liveness and storage state; no key needed.
#[utoipa::path(get, path = "/health", security(()),
    responses(
        (status = 200, description = "ticking", body = crate::openapi::Health),
        (status = 429, description = "rate limit", body = ErrorBody),
        (status = 503, description = "stalled or shutting down", body = crate::openapi::Health),
    ))]
pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Response {
    let since = state.tick.since_last_tick();
    // A tick loop that has not ticked for 20 ticks' time (at least 2 s) is stuck.
    let stalled = since > (Duration::from_secs(1) * 20 / state.tick_hz.max(1)).max(Duration::from_secs(2));
    let stopping = *state.shutdown.borrow();
    let storage = state.write_behind.as_ref().map(|wb| {
        let s = wb.stats();
        serde_json::json!({
            "degraded": s.degraded,
            "breaker_open": s.breaker_open,
            "queued_rows": s.queued_rows,
            "writes_dropped": s.writes_dropped,
        })
    });
    let degraded = storage.as_ref().is_some_and(|s| s["degraded"] == true);
    let status = match (stopping, stalled, degraded) {
        (true, ..) => "shutting_down",
        (_, true, _) => "stalled",
        (.., true) => "degraded",
        _ => "ok",
    };
    let code = if stopping || stalled { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = serde_json::json!({
        "status": status,
        "tick": state.tick.tick.load(std::sync::atomic::Ordering::Relaxed),
        "tick_hz": state.tick_hz,
        "since_last_tick_ms": since.as_millis() as u64,
        "storage": storage,
    });
    (code, axum::Json(body)).into_response()
}

/// This document; no key needed.
#[utoipa::path(get, path = "/api/openapi.json", security(()),
    responses(
        (status = 200, description = "the OpenAPI 3.1 document", body = AnyObject),
        (status = 429, description = "rate limit", body = ErrorBody),
    ))]
pub(crate) async fn openapi_json() -> Response {
    let mut res = crate::openapi::json().into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// `p` if it is finite and inside the world.
fn inside(field: &str, p: [f32; 3], b: &WorldBounds) -> Result<Position, ApiError> {
    let ok = (0..3).all(|i| p[i].is_finite() && p[i] >= b.min[i] && p[i] <= b.max[i]);
    if ok {
        Ok(Position::new(p[0], p[1], p[2]))
    } else {
        Err(ApiError::invalid(format!("{field}: {p:?} is not inside the world {:?} ..= {:?}", b.min, b.max)))
    }
}

/// `v` if it is finite and at most [`MAX_SPEED`].
fn velocity(field: &str, v: [f32; 3]) -> Result<Velocity, ApiError> {
    let speed_sq = v.iter().map(|c| c * c).sum::<f32>();
    if v.iter().all(|c| c.is_finite()) && speed_sq <= MAX_SPEED * MAX_SPEED {
        Ok(Velocity::new(v[0], v[1], v[2]))
    } else {
        Err(ApiError::invalid(format!(
            "{field}: {v:?} must be finite and at most {MAX_SPEED} blocks per second"
        )))
    }
}

impl AppState {
    pub(crate) fn store(&self) -> Result<&terrarium::persistence::StorageStack, ApiError> {
        self.storage
            .as_deref()
            .ok_or_else(|| ApiError::unavailable("storage is off (--storage none): NPCs can't be read", 60))
    }

    fn figures(&self) -> ServerFigures {
        self.stats.figures(self.limits.open())
    }

    /// Whether `id` is an NPC: spawned through the API moments ago (the spawn may still wait
    /// in the command queue), or in the world now (asked on the tick thread between two ticks;
    /// storage lags by a batch, so it can't say).
    async fn npc_known(&self, id: u64) -> Result<bool, ApiError> {
        if id == 0 || id >= self.commands.next_npc_id().0 {
            return Ok(false);
        }
        if self.spawns.is_recent(id) {
            return Ok(true);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ask: Job = Box::new(move |engine: &mut Engine| {
            let _ = tx.send(engine.world().resource::<NpcIndex>().get(NpcId(id)).is_some());
        });
        let gone = || ApiError::unavailable("the tick has stopped", 5);
        self.jobs.send(ask).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_velocities_are_checked() {
        let b = WorldBounds { min: [0.0; 3], max: [10.0; 3] };
        assert!(inside("p", [0.0, 10.0, 5.0], &b).is_ok());
        let e = inside("target", [11.0, 0.0, 0.0], &b).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.message.starts_with("target:"), "{}", e.message);
        assert!(inside("p", [f32::NAN, 0.0, 0.0], &b).is_err());
        assert!(velocity("v", [60.0, 0.0, 80.0]).is_ok());
        assert!(velocity("v", [60.0, 0.0, 81.0]).is_err());
        assert!(velocity("v", [f32::INFINITY, 0.0, 0.0]).is_err());
    }
}
