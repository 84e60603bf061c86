//! The read path: current state by id, by filter with cursor pagination, all of it; and the
//! history tables for tools and tests.

use std::ops::Range;
use std::pin::pin;

use futures_util::TryStreamExt;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{BACKEND, PgStore, bits, to_i64, unbits};
use crate::{
    EntityKind, EventRow, MetricRow, NpcFilter, NpcPage, NpcRecord, Page, PositionRow, SmolStr, StorageError,
};

/// Largest inventory accepted when decoding a stored row.
const INVENTORY_LIMIT: usize = 64 * 1024;

/// Registry columns, then the NPC's current position from its block (NULL when it has none).
pub(super) const NPC_COLUMNS: &str = "n.id, n.role, n.status, n.swarm, n.agent, n.x, n.y, n.z, n.health, n.inventory, \
                           n.updated_tick, b.ticks[k.i], b.xs[k.i], b.ys[k.i], b.zs[k.i]";

/// `npcs` with each NPC's block and its place in it (`k.i`).
pub(super) const NPC_FROM: &str = "npcs AS n LEFT JOIN position_blocks AS b ON b.block = n.id / 64 \
                        LEFT JOIN LATERAL (SELECT array_position(b.ids, n.id) AS i) AS k ON true";

/// Which events [`PgStore::events`] returns (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventQuery {
    /// Every event.
    Recent,
    /// Events of one type (`events_type_idx`).
    Type(String),
    /// Events about one entity (`events_entity_idx`).
    Entity(EntityKind, u64),
    /// Events of one story (`events_correlation_idx`).
    Correlation(u64),
}

/// Rows per table (exact counts: a full scan of each table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// `npcs`.
    pub npcs: u64,
    /// Position history: one per NPC per flush (`npc_positions`, a view over the blocks).
    pub positions: u64,
    /// `metrics`.
    pub metrics: u64,
    /// `events`.
    pub events: u64,
}

impl PgStore {
    pub(super) async fn read_npc(&self, id: u64) -> Result<Option<NpcRecord>, StorageError> {
        let Ok(id) = i64::try_from(id) else { return Ok(None) };
        let client = self.read_client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {NPC_COLUMNS} FROM {NPC_FROM} WHERE n.id = $1"))
            .await
            .map_err(|e| self.pg_error(e))?;
        client
            .query_opt(&stmt, &[&id])
            .await
            .map_err(|e| self.pg_error(e))?
            .map(|r| npc_from_row(&r))
            .transpose()
    }

    /// One page by ascending id. The SQL text only varies in which fixed conditions it has;
    /// every value is a parameter, and each filter has an index ending in `id`.
    pub(super) async fn read_page(&self, filter: &NpcFilter, page: Page) -> Result<NpcPage, StorageError> {
        let limit = page.limit.clamp(1, Page::MAX_LIMIT);
        let after = match page.after {
            None => -1,
            Some(after) => match i64::try_from(after) {
                Ok(a) => a,
                Err(_) => return Ok(NpcPage::default()),
            },
        };
        let fetch = i64::from(limit) + 1;
        let swarm = filter.swarm.map(i64::from);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after];
        let mut sql = format!("SELECT {NPC_COLUMNS} FROM {NPC_FROM} WHERE n.id > $1");
        if let Some(status) = &filter.status {
            params.push(status);
            sql += &format!(" AND n.status = ${}", params.len());
        }
        if let Some(role) = &filter.role {
            params.push(role);
            sql += &format!(" AND n.role = ${}", params.len());
        }
        if let Some(swarm) = &swarm {
            params.push(swarm);
            sql += &format!(" AND n.swarm = ${}", params.len());
        }
        params.push(&fetch);
        sql += &format!(" ORDER BY n.id LIMIT ${}", params.len());
        let client = self.read_client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(|e| self.pg_error(e))?;
        let rows = client.query(&stmt, &params).await.map_err(|e| self.pg_error(e))?;
        let mut npcs = rows.iter().map(npc_from_row).collect::<Result<Vec<_>, _>>()?;
        let next = if npcs.len() > limit as usize {
            npcs.truncate(limit as usize);
            npcs.last().map(|r| r.id)
        } else {
            None
        };
        Ok(NpcPage { npcs, next })
    }

    /// Every NPC by id: the registry streamed row by row, then every block's positions laid
    /// over it (two sequential scans, no join per NPC).
    pub(super) async fn read_all(&self) -> Result<Vec<NpcRecord>, StorageError> {
        let err = |e| self.pg_error(e);
        let client = self.read_client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, role, status, swarm, agent, x, y, z, health, inventory, updated_tick \
                 FROM npcs ORDER BY id",
            )
            .await
            .map_err(err)?;
        let mut rows = pin!(client.query_raw(&stmt, std::iter::empty::<i64>()).await.map_err(err)?);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(err)? {
            out.push(npc_from_row(&row)?);
        }
        let stmt = client
            .prepare_cached("SELECT ids, ticks, xs, ys, zs FROM position_blocks ORDER BY block")
            .await
            .map_err(err)?;
        let mut blocks = pin!(client.query_raw(&stmt, std::iter::empty::<i64>()).await.map_err(err)?);
        // Both in id order: walk them together.
        let mut at = 0usize;
        while let Some(row) = blocks.try_next().await.map_err(err)? {
            let (ids, ticks): (Vec<i64>, Vec<i64>) = (row.get(0), row.get(1));
            let (xs, ys, zs): (Vec<f32>, Vec<f32>, Vec<f32>) = (row.get(2), row.get(3), row.get(4));
            if [ticks.len(), xs.len(), ys.len(), zs.len()].iter().any(|&n| n != ids.len()) {
                return Err(corrupt("position_blocks arrays"));
            }
            for (k, &id) in ids.iter().enumerate() {
                let id = from_i64("position_blocks.ids", id)?;
                while at < out.len() && out[at].id < id {
                    at += 1;
                }
                if at < out.len() && out[at].id == id {
                    overlay(&mut out[at], Some(ticks[k]), Some(xs[k]), Some(ys[k]), Some(zs[k]))?;
                }
            }
        }
        Ok(out)
    }

    /// An NPC's positions with `tick` in `ticks`, by tick: its block's history rows
    /// (`position_history_block_tick_idx`), its element picked from each.
    ///
    /// # Errors
    /// When the server can't be reached or a stored row is out of range.
    pub async fn position_history(
        &self,
        npc_id: u64,
        ticks: Range<u64>,
    ) -> Result<Vec<PositionRow>, StorageError> {
        let (id, from, to) = (to_i64("npc id", npc_id)?, clamp_i64(ticks.start), clamp_i64(ticks.end));
        let block = id / 64;
        let client = self.read_client().await?;
        let rows = self
            .timed(async {
                let stmt = client
                    .prepare_cached(
                        "SELECT h.tick, h.xs[k.i], h.ys[k.i], h.zs[k.i] FROM position_history AS h \
                         CROSS JOIN LATERAL (SELECT array_position(h.ids, $1::int8) AS i) AS k \
                         WHERE h.block = $2 AND h.tick >= $3 AND h.tick < $4 AND k.i IS NOT NULL ORDER BY h.tick",
                    )
                    .await
                    .map_err(|e| self.pg_error(e))?;
                client.query(&stmt, &[&id, &block, &from, &to]).await.map_err(|e| self.pg_error(e))
            })
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PositionRow {
                    npc_id,
                    tick: from_i64("position_history.tick", r.get(0))?,
                    x: r.get(1),
                    y: r.get(2),
                    z: r.get(3),
                })
            })
            .collect()
    }

    /// Rows of the metric `name` with `tick` in `ticks`, by tick (`metrics_name_tick_idx`).
    ///
    /// # Errors
    /// When the server can't be reached or a stored row is out of range.
    pub async fn metric_rows(&self, name: &str, ticks: Range<u64>) -> Result<Vec<MetricRow>, StorageError> {
        let (from, to) = (clamp_i64(ticks.start), clamp_i64(ticks.end));
        let client = self.read_client().await?;
        let rows = self
            .timed(async {
                client
                    .query(
                        "SELECT entity_kind, entity_id, name, tick, value, samples FROM metrics \
                         WHERE name = $1 AND tick >= $2 AND tick < $3 ORDER BY tick, entity_kind, entity_id",
                        &[&name, &from, &to],
                    )
                    .await
                    .map_err(|e| self.pg_error(e))
            })
            .await?;
        rows.iter()
            .map(|r| {
                Ok(MetricRow {
                    entity_kind: kind_from(r.get(0))?,
                    entity_id: unbits(r.get(1)),
                    name: r.get(2),
                    tick: from_i64("metrics.tick", r.get(3))?,
                    value: r.get(4),
                    samples: u32::try_from(r.get::<_, i64>(5)).map_err(|_| corrupt("metrics.samples"))?,
                })
            })
            .collect()
    }

    /// At most `limit` (1 ..= 1000) events matching `query`, newest first (by time stored, then
    /// event id).
    ///
    /// # Errors
    /// When the server can't be reached or a stored row is out of range.
    pub async fn events(&self, query: &EventQuery, limit: u32) -> Result<Vec<EventRow>, StorageError> {
        const COLUMNS: &str = "event_id, correlation_id, event_type, entity_kind, entity_id, tick, sim_time_ms, \
                               payload, compressed, count";
        let limit = i64::from(limit.clamp(1, 1000));
        let client = self.read_client().await?;
        let order = "ORDER BY recorded_at DESC, event_id DESC LIMIT";
        let rows = self
            .timed(async {
                let r = match query {
                    EventQuery::Recent => {
                        client.query(&format!("SELECT {COLUMNS} FROM events {order} $1"), &[&limit]).await
                    }
                    EventQuery::Type(t) => {
                        let sql = format!("SELECT {COLUMNS} FROM events WHERE event_type = $1 {order} $2");
                        client.query(&sql, &[t, &limit]).await
                    }
                    EventQuery::Entity(kind, id) => {
                        let sql =
                            format!("SELECT {COLUMNS} FROM events WHERE entity_kind = $1 AND entity_id = $2 {order} $3");
                        client.query(&sql, &[&kind.name(), &bits(*id), &limit]).await
                    }
                    EventQuery::Correlation(c) => {
                        let sql = format!("SELECT {COLUMNS} FROM events WHERE correlation_id = $1 {order} $2");
                        client.query(&sql, &[&bits(*c), &limit]).await
                    }
                };
                r.map_err(|e| self.pg_error(e))
            })
            .await?;
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    event_id: unbits(r.get(0)),
                    correlation_id: unbits(r.get(1)),
                    event_type: r.get(2),
                    entity_kind: kind_from(r.get(3))?,
                    entity_id: unbits(r.get(4)),
                    tick: from_i64("events.tick", r.get(5))?,
                    time_ms: from_i64("events.sim_time_ms", r.get(6))?,
                    payload: r.get(7),
                    compressed: r.get(8),
                    count: u32::try_from(r.get::<_, i64>(9)).map_err(|_| corrupt("events.count"))?,
                })
            })
            .collect()
    }

    /// Exact row counts of the data tables.
    ///
    /// # Errors
    /// When the server can't be reached.
    pub async fn row_counts(&self) -> Result<RowCounts, StorageError> {
        let client = self.read_client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM npcs), (SELECT count(*) FROM npc_positions), \
                 (SELECT count(*) FROM metrics), (SELECT count(*) FROM events)",
                &[],
            )
            .await
            .map_err(|e| self.pg_error(e))?;
        let n = |i| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(RowCounts { npcs: n(0), positions: n(1), metrics: n(2), events: n(3) })
    }
}

/// A registry row (11 columns), with the block position (4 more, maybe NULL) laid over it
/// when the row has them.
pub(super) fn npc_from_row(r: &Row) -> Result<NpcRecord, StorageError> {
    let inventory: &[u8] = r.get(9);
    let mut rec = NpcRecord {
        id: from_i64("npcs.id", r.get(0))?,
        role: SmolStr::new(r.get::<_, &str>(1)),
        status: SmolStr::new(r.get::<_, &str>(2)),
        swarm: u32::try_from(r.get::<_, i64>(3)).map_err(|_| corrupt("npcs.swarm"))?,
        agent: r.get(4),
        x: r.get(5),
        y: r.get(6),
        z: r.get(7),
        health: u16::try_from(r.get::<_, i32>(8)).map_err(|_| corrupt("npcs.health"))?,
        inventory: terrarium_codec::decode(inventory, INVENTORY_LIMIT)
            .map_err(|_| corrupt("npcs.inventory"))?,
        updated_tick: from_i64("npcs.updated_tick", r.get(10))?,
    };
    if r.len() >= 15 {
        overlay(&mut rec, r.get(11), r.get(12), r.get(13), r.get(14))?;
    }
    Ok(rec)
}

/// Lays a block position over a registry record when it is not older (what `MemoryStore`
/// does with its last positions).
fn overlay(
    rec: &mut NpcRecord,
    tick: Option<i64>,
    x: Option<f32>,
    y: Option<f32>,
    z: Option<f32>,
) -> Result<(), StorageError> {
    if let (Some(tick), Some(x), Some(y), Some(z)) = (tick, x, y, z) {
        let tick = from_i64("position_blocks.ticks", tick)?;
        if tick >= rec.updated_tick {
            (rec.x, rec.y, rec.z, rec.updated_tick) = (x, y, z, tick);
        }
    }
    Ok(())
}

fn kind_from(name: &str) -> Result<EntityKind, StorageError> {
    [EntityKind::Npc, EntityKind::System, EntityKind::World, EntityKind::Storage]
        .into_iter()
        .find(|k| k.name() == name)
        .ok_or_else(|| corrupt("entity_kind"))
}

fn from_i64(what: &str, v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| corrupt(what))
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt { what: format!("{BACKEND} column {what}") }
}
