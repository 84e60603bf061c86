//! The write path: one transaction per `write` call, exactly once per batch id.

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::atomic::Ordering;

use deadpool_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use super::{PgStore, bits, to_i64};
use crate::{NpcRecord, PositionRow, StorageError, WriteBatch};

/// What one `write` call does to `npcs`, per NPC, after folding its batches in order.
#[derive(Debug)]
enum NpcChange<'a> {
    /// Insert or replace the whole row (a later position in the same call already applied).
    Upsert(NpcRecord),
    /// Move an existing row, unless it holds a newer tick.
    Move(&'a PositionRow),
    /// Delete the row.
    Remove,
}

impl PgStore {
    pub(super) async fn write_batches(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        if batches.is_empty() {
            return Ok(());
        }
        let err = |e| self.pg_error(e);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err)?;
        let fresh = self.claim(&tx, batches).await?;
        let c = &self.inner.counters;
        c.batches_skipped.fetch_add((batches.len() - fresh.len()) as u64, Ordering::Relaxed);
        if fresh.is_empty() {
            tx.commit().await.map_err(err)?;
            return Ok(());
        }
        let mut rows: Vec<&PositionRow> = Vec::with_capacity(fresh.iter().map(|b| b.positions.len()).sum());
        for b in &fresh {
            rows.extend(b.positions.iter());
        }
        // In index order: an NPC's rows of the call land next to each other in the (npc_id, tick)
        // index (fewer pages touched per insert) and in the heap (its history reads fewer pages).
        rows.sort_unstable_by_key(|p| (p.npc_id, p.tick));
        let positions = self.copy_positions(&tx, &rows).await?;
        let metrics = self.copy_metrics(&tx, &fresh).await?;
        let events = self.insert_events(&tx, &fresh).await?;
        let (upserts, moves, removals) = self.apply_npc_changes(&tx, &fresh).await?;
        self.raise_high_water(&tx, &fresh).await?;
        tx.commit().await.map_err(err)?;
        c.batches_applied.fetch_add(fresh.len() as u64, Ordering::Relaxed);
        c.position_rows.fetch_add(positions, Ordering::Relaxed);
        c.metric_rows.fetch_add(metrics, Ordering::Relaxed);
        c.event_rows.fetch_add(events, Ordering::Relaxed);
        c.npc_upserts.fetch_add(upserts, Ordering::Relaxed);
        c.npc_position_updates.fetch_add(moves, Ordering::Relaxed);
        c.npc_removals.fetch_add(removals, Ordering::Relaxed);
        Ok(())
    }

    /// Locks the rows of the batches' runs in `applied_batches` (creating them) and returns the
    /// batches not applied yet, in order.
    async fn claim<'b>(
        &self,
        tx: &Transaction<'_>,
        batches: &'b [WriteBatch],
    ) -> Result<Vec<&'b WriteBatch>, StorageError> {
        let err = |e| self.pg_error(e);
        let mut runs: Vec<i64> = batches.iter().map(|b| bits(b.id.run)).collect();
        runs.sort_unstable();
        runs.dedup();
        // Sorted, so two writers with overlapping runs lock them in the same order.
        let create = tx
            .prepare_cached(
                "INSERT INTO applied_batches (run, seq) SELECT r, -1 FROM unnest($1::int8[]) AS r ORDER BY r \
                 ON CONFLICT (run) DO NOTHING",
            )
            .await
            .map_err(err)?;
        tx.execute(&create, &[&runs]).await.map_err(err)?;
        let lock = tx
            .prepare_cached(
                "SELECT run, seq FROM applied_batches WHERE run = ANY($1) ORDER BY run FOR UPDATE",
            )
            .await
            .map_err(err)?;
        let mut done: HashMap<i64, i64> =
            tx.query(&lock, &[&runs]).await.map_err(err)?.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut fresh = Vec::with_capacity(batches.len());
        for b in batches {
            let seq = to_i64("batch seq", b.id.seq)?;
            let high = done.entry(bits(b.id.run)).or_insert(-1);
            if seq > *high {
                *high = seq;
                fresh.push(b);
            }
        }
        Ok(fresh)
    }

    /// Raises each run's high-water mark to the last batch applied now.
    async fn raise_high_water(
        &self,
        tx: &Transaction<'_>,
        fresh: &[&WriteBatch],
    ) -> Result<(), StorageError> {
        let mut high: BTreeMap<i64, i64> = BTreeMap::new();
        for b in fresh {
            let seq = to_i64("batch seq", b.id.seq)?;
            let e = high.entry(bits(b.id.run)).or_insert(seq);
            *e = (*e).max(seq);
        }
        let (runs, seqs): (Vec<i64>, Vec<i64>) = high.into_iter().unzip();
        let stmt = tx
            .prepare_cached(
                "UPDATE applied_batches AS a SET seq = u.seq, applied_at = now() \
                 FROM unnest($1::int8[], $2::int8[]) AS u(run, seq) WHERE a.run = u.run",
            )
            .await
            .map_err(|e| self.pg_error(e))?;
        tx.execute(&stmt, &[&runs, &seqs]).await.map_err(|e| self.pg_error(e))?;
        Ok(())
    }

    /// COPY BINARY into `npc_positions`; returns the rows copied.
    pub(super) async fn copy_positions(
        &self,
        tx: &Transaction<'_>,
        rows: &[&PositionRow],
    ) -> Result<u64, StorageError> {
        let err = |e| self.pg_error(e);
        if rows.is_empty() {
            return Ok(0);
        }
        let stmt = tx
            .prepare_cached("COPY npc_positions (npc_id, tick, x, y, z) FROM STDIN (FORMAT binary)")
            .await
            .map_err(err)?;
        let sink = tx.copy_in(&stmt).await.map_err(err)?;
        let types = [Type::INT8, Type::INT8, Type::FLOAT4, Type::FLOAT4, Type::FLOAT4];
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
        for p in rows {
            let (id, tick) = (to_i64("npc id", p.npc_id)?, to_i64("tick", p.tick)?);
            writer.as_mut().write(&[&id, &tick, &p.x, &p.y, &p.z]).await.map_err(err)?;
        }
        writer.finish().await.map_err(err)
    }

    /// COPY BINARY into `metrics`; returns the rows copied.
    async fn copy_metrics(&self, tx: &Transaction<'_>, fresh: &[&WriteBatch]) -> Result<u64, StorageError> {
        let err = |e| self.pg_error(e);
        if fresh.iter().all(|b| b.metrics.is_empty()) {
            return Ok(0);
        }
        let stmt = tx
            .prepare_cached(
                "COPY metrics (entity_kind, entity_id, name, tick, value, samples) FROM STDIN (FORMAT binary)",
            )
            .await
            .map_err(err)?;
        let sink = tx.copy_in(&stmt).await.map_err(err)?;
        let types = [Type::TEXT, Type::INT8, Type::TEXT, Type::INT8, Type::FLOAT8, Type::INT8];
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
        for &b in fresh {
            for m in &b.metrics {
                let (kind, id, tick, samples) =
                    (m.entity_kind.name(), bits(m.entity_id), to_i64("tick", m.tick)?, i64::from(m.samples));
                writer
                    .as_mut()
                    .write(&[&kind, &id, &m.name, &tick, &m.value, &samples])
                    .await
                    .map_err(err)?;
            }
        }
        writer.finish().await.map_err(err)
    }

    /// Set-based insert into `events`; an event id stored before is skipped. Returns the rows
    /// offered.
    async fn insert_events(&self, tx: &Transaction<'_>, fresh: &[&WriteBatch]) -> Result<u64, StorageError> {
        let events: Vec<_> = fresh.iter().flat_map(|b| &b.events).collect();
        if events.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(events.len());
        let (mut types, mut kinds, mut entities) = (Vec::new(), Vec::new(), Vec::new());
        let (mut correlations, mut ticks, mut times) = (Vec::new(), Vec::new(), Vec::new());
        let (mut payloads, mut compressed, mut counts) = (Vec::new(), Vec::new(), Vec::new());
        for e in &events {
            ids.push(bits(e.event_id));
            types.push(e.event_type.as_str());
            kinds.push(e.entity_kind.name());
            entities.push(bits(e.entity_id));
            correlations.push(bits(e.correlation_id));
            ticks.push(to_i64("tick", e.tick)?);
            times.push(to_i64("time_ms", e.time_ms)?);
            payloads.push(e.payload.as_slice());
            compressed.push(e.compressed);
            counts.push(i64::from(e.count));
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO events (event_id, event_type, entity_kind, entity_id, correlation_id, tick, \
                 sim_time_ms, payload, compressed, count) \
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], \
                 $7::int8[], $8::bytea[], $9::bool[], $10::int8[]) \
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .await
            .map_err(|e| self.pg_error(e))?;
        tx.execute(
            &stmt,
            &[
                &ids,
                &types,
                &kinds,
                &entities,
                &correlations,
                &ticks,
                &times,
                &payloads,
                &compressed,
                &counts,
            ],
        )
        .await
        .map_err(|e| self.pg_error(e))?;
        Ok(events.len() as u64)
    }

    /// Folds the batches' upserts, positions and removals per NPC (in batch order, as
    /// [`crate::MemoryStore`] applies them one by one), then runs at most one statement of each
    /// kind. Returns (rows upserted, rows moved, rows deleted).
    async fn apply_npc_changes(
        &self,
        tx: &Transaction<'_>,
        fresh: &[&WriteBatch],
    ) -> Result<(u64, u64, u64), StorageError> {
        let mut changes: HashMap<u64, NpcChange<'_>> = HashMap::new();
        for b in fresh {
            for r in &b.npcs {
                changes.insert(r.id, NpcChange::Upsert(r.clone()));
            }
            for p in &b.positions {
                match changes.get_mut(&p.npc_id) {
                    Some(NpcChange::Upsert(r)) => {
                        if p.tick >= r.updated_tick {
                            (r.x, r.y, r.z, r.updated_tick) = (p.x, p.y, p.z, p.tick);
                        }
                    }
                    Some(NpcChange::Move(q)) => {
                        if p.tick >= q.tick {
                            *q = p;
                        }
                    }
                    Some(NpcChange::Remove) => {}
                    None => {
                        changes.insert(p.npc_id, NpcChange::Move(p));
                    }
                }
            }
            for &id in &b.removed {
                changes.insert(id, NpcChange::Remove);
            }
        }
        let mut ids: Vec<u64> = changes.keys().copied().collect();
        // Rows are locked in id order, so concurrent writers can't deadlock on them.
        ids.sort_unstable();
        let mut removed = Vec::new();
        let mut upserts = Vec::new();
        let mut moves = Vec::new();
        for id in ids {
            match changes.remove(&id) {
                Some(NpcChange::Remove) => removed.push(to_i64("npc id", id)?),
                Some(NpcChange::Upsert(r)) => upserts.push(r),
                Some(NpcChange::Move(p)) => moves.push(p),
                None => {}
            }
        }
        let deleted = self.delete_npcs(tx, &removed).await?;
        let upserted = self.upsert_npcs(tx, &upserts).await?;
        let moved = self.move_npcs(tx, &moves).await?;
        Ok((upserted, moved, deleted))
    }

    async fn delete_npcs(&self, tx: &Transaction<'_>, ids: &[i64]) -> Result<u64, StorageError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let stmt =
            tx.prepare_cached("DELETE FROM npcs WHERE id = ANY($1)").await.map_err(|e| self.pg_error(e))?;
        tx.execute(&stmt, &[&ids]).await.map_err(|e| self.pg_error(e))
    }

    /// Inserts or replaces whole rows, one statement for all of them (`unnest` of column arrays).
    /// A row equal to the stored one is left alone (no new row version, no WAL); the count is of
    /// rows written.
    pub(super) async fn upsert_npcs(
        &self,
        tx: &Transaction<'_>,
        rows: &[NpcRecord],
    ) -> Result<u64, StorageError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let n = rows.len();
        let (mut ids, mut roles, mut statuses, mut swarms) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut agents, mut xs, mut ys, mut zs) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut healths, mut inventories, mut ticks) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for r in rows {
            ids.push(to_i64("npc id", r.id)?);
            roles.push(r.role.as_str());
            statuses.push(r.status.as_str());
            swarms.push(i64::from(r.swarm));
            agents.push(r.agent);
            xs.push(r.x);
            ys.push(r.y);
            zs.push(r.z);
            healths.push(i32::from(r.health));
            inventories.push(encode_inventory(&r.inventory)?);
            ticks.push(to_i64("tick", r.updated_tick)?);
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO npcs (id, role, status, swarm, agent, x, y, z, health, inventory, updated_tick) \
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::bool[], $6::float4[], \
                 $7::float4[], $8::float4[], $9::int4[], $10::bytea[], $11::int8[]) \
                 ON CONFLICT (id) DO UPDATE SET role = EXCLUDED.role, status = EXCLUDED.status, \
                 swarm = EXCLUDED.swarm, agent = EXCLUDED.agent, x = EXCLUDED.x, y = EXCLUDED.y, z = EXCLUDED.z, \
                 health = EXCLUDED.health, inventory = EXCLUDED.inventory, updated_tick = EXCLUDED.updated_tick \
                 WHERE (npcs.role, npcs.status, npcs.swarm, npcs.agent, npcs.x, npcs.y, npcs.z, npcs.health, \
                 npcs.inventory, npcs.updated_tick) IS DISTINCT FROM (EXCLUDED.role, EXCLUDED.status, \
                 EXCLUDED.swarm, EXCLUDED.agent, EXCLUDED.x, EXCLUDED.y, EXCLUDED.z, EXCLUDED.health, \
                 EXCLUDED.inventory, EXCLUDED.updated_tick)",
            )
            .await
            .map_err(|e| self.pg_error(e))?;
        tx.execute(
            &stmt,
            &[&ids, &roles, &statuses, &swarms, &agents, &xs, &ys, &zs, &healths, &inventories, &ticks],
        )
        .await
        .map_err(|e| self.pg_error(e))
    }

    /// Moves existing rows to their latest position, unless a row holds a newer tick.
    async fn move_npcs(&self, tx: &Transaction<'_>, rows: &[&PositionRow]) -> Result<u64, StorageError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let n = rows.len();
        let (mut ids, mut ticks) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut xs, mut ys, mut zs) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for p in rows {
            ids.push(to_i64("npc id", p.npc_id)?);
            ticks.push(to_i64("tick", p.tick)?);
            xs.push(p.x);
            ys.push(p.y);
            zs.push(p.z);
        }
        let stmt = tx
            .prepare_cached(
                "UPDATE npcs AS n SET x = u.x, y = u.y, z = u.z, updated_tick = u.tick \
                 FROM unnest($1::int8[], $2::int8[], $3::float4[], $4::float4[], $5::float4[]) \
                 AS u(id, tick, x, y, z) WHERE n.id = u.id AND n.updated_tick <= u.tick",
            )
            .await
            .map_err(|e| self.pg_error(e))?;
        tx.execute(&stmt, &[&ids, &ticks, &xs, &ys, &zs]).await.map_err(|e| self.pg_error(e))
    }
}

/// Inventories are stored as codec bytes: `(item kind, count)` stacks.
fn encode_inventory(stacks: &[(u16, u16)]) -> Result<Vec<u8>, StorageError> {
    terrarium_codec::encode(stacks).map_err(|e| StorageError::failed(super::BACKEND, e))
}
