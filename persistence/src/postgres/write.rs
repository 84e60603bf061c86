//! The write path: one transaction per `write` call, exactly once per batch id.

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::atomic::Ordering;

use deadpool_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::{PgStore, bits, to_i64};
use crate::{NpcRecord, PositionRow, StorageError, WriteBatch};

/// Ids per position block: a block is the NPCs with ids `block * BLOCK ..= block * BLOCK + 63`,
/// one row of `position_blocks` (current) and one row of `position_history` per flush tick.
/// 64 ids keep a row's arrays (64 × 28 bytes) under PostgreSQL's 2 kB TOAST threshold.
pub(super) const BLOCK: u64 = 64;

/// Bytes of COPY data per message to the server in [`PgStore::copy_in`].
const COPY_CHUNK: usize = 256 * 1024;

/// A value COPY could not encode (a bug: every column type is ours).
#[derive(Debug, thiserror::Error)]
#[error("encoding a COPY value: {0}")]
struct CopyValue(String);

/// Registry rows from which a write goes by `COPY` rather than one `unnest` statement.
const COPY_REGISTRY_ROWS: usize = 2_048;

/// Registry rows into an empty `npcs` from which its secondary indexes are built after the
/// load rather than kept up to date row by row.
const BULK_REGISTRY_ROWS: usize = 50_000;

/// What one `write` call does to `npcs` (the registry), per NPC, after folding its batches.
#[derive(Debug)]
enum NpcChange {
    /// Insert or replace the whole row.
    Upsert(NpcRecord),
    /// Delete the row.
    Remove,
}

/// One history row: a block's positions at one tick, ids ascending.
#[derive(Debug, Default)]
struct BlockRows {
    block: i64,
    tick: i64,
    ids: Vec<i64>,
    ticks: Vec<i64>,
    xs: Vec<f32>,
    ys: Vec<f32>,
    zs: Vec<f32>,
    /// Ids to take out of the block (removed NPCs); current blocks only.
    removed: Vec<i64>,
    /// History rows only: this row is all the call has for its block (one tick, ids strictly
    /// ascending, no removal in the block), so it is also the block's current positions.
    simple: bool,
}

impl BlockRows {
    fn new(block: i64, tick: i64) -> Self {
        Self { block, tick, ..Self::default() }
    }

    fn push(&mut self, p: &PositionRow, id: i64, tick: i64) {
        self.ids.push(id);
        self.ticks.push(tick);
        self.xs.push(p.x);
        self.ys.push(p.y);
        self.zs.push(p.z);
        self.tick = self.tick.max(tick);
    }
}

impl PgStore {
    pub(super) async fn write_batches(&self, batches: &[WriteBatch]) -> Result<(), StorageError> {
        if batches.is_empty() {
            return Ok(());
        }
        let err = |e| self.pg_error(e);
        let t0 = std::time::Instant::now();
        let mut client = self.client().await?;
        // Outside the transaction: partitions made here stay even if the write rolls back.
        self.ensure_partitions(&client).await?;
        let tx = client.transaction().await.map_err(err)?;
        let fresh = self.claim(&tx, batches).await?;
        let c = &self.inner.counters;
        c.batches_skipped.fetch_add((batches.len() - fresh.len()) as u64, Ordering::Relaxed);
        if fresh.is_empty() {
            tx.commit().await.map_err(err)?;
            return Ok(());
        }
        let t_claim = t0.elapsed();
        let history = history_blocks(&fresh)?;
        let positions = self.copy_history(&tx, &history).await?;
        let t_history = t0.elapsed();
        let metrics = self.copy_metrics(&tx, &fresh).await?;
        let events = self.insert_events(&tx, &fresh).await?;
        let (upserts, removals) = self.apply_registry_changes(&tx, &fresh).await?;
        let t_registry = t0.elapsed();
        let moves = self.joined_by_key(&tx, self.apply_current_positions(&tx, &fresh, &history)).await?;
        drop(history);
        let t_current = t0.elapsed();
        self.raise_high_water(&tx, &fresh).await?;
        tx.commit().await.map_err(err)?;
        // Where a call's time goes (`RUST_LOG=terrarium_persistence::postgres=debug`).
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            batches = fresh.len(),
            positions,
            connect_claim_ms = ms(t_claim),
            history_ms = ms(t_history - t_claim),
            metrics_events_registry_ms = ms(t_registry - t_history),
            current_ms = ms(t_current - t_registry),
            commit_ms = ms(t0.elapsed() - t_current),
            "postgres write"
        );
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

    /// `COPY … FROM STDIN (FORMAT binary)` of `rows`, encoded here and sent in chunks of
    /// [`COPY_CHUNK`] bytes (`BinaryCopyInWriter` sends every 4 kB: a thousand sends, each a
    /// wake-up of the connection task, for a quarter of a million positions).
    async fn copy_in<const N: usize>(
        &self,
        tx: &Transaction<'_>,
        statement: &str,
        types: &[Type; N],
        rows: &[[&(dyn ToSql + Sync); N]],
    ) -> Result<(), StorageError> {
        use bytes::BufMut;
        use futures_util::SinkExt;
        let err = |e| self.pg_error(e);
        let stmt = tx.prepare_cached(statement).await.map_err(err)?;
        let sink = tx.copy_in::<_, bytes::Bytes>(&stmt).await.map_err(err)?;
        let mut sink = pin!(sink);
        let fields = i16::try_from(N).map_err(|e| StorageError::failed(super::BACKEND, e))?;
        let mut buf = bytes::BytesMut::with_capacity(COPY_CHUNK + 64 * 1024);
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension
        for row in rows {
            buf.put_i16(fields);
            for (value, ty) in row.iter().zip(types) {
                let at = buf.len();
                buf.put_i32(0);
                let len = match value.to_sql_checked(ty, &mut buf) {
                    Ok(tokio_postgres::types::IsNull::Yes) => -1,
                    Ok(tokio_postgres::types::IsNull::No) => i32::try_from(buf.len() - at - 4)
                        .map_err(|e| StorageError::failed(super::BACKEND, e))?,
                    Err(e) => return Err(StorageError::failed(super::BACKEND, CopyValue(e.to_string()))),
                };
                buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
            if buf.len() >= COPY_CHUNK {
                sink.send(buf.split().freeze()).await.map_err(err)?;
            }
        }
        buf.put_i16(-1);
        sink.send(buf.split().freeze()).await.map_err(err)?;
        sink.as_mut().finish().await.map_err(err)?;
        Ok(())
    }

    /// The call's history rows, one per block and tick: `COPY BINARY` into a temporary stage,
    /// then one `INSERT … SELECT` into `position_history`. The stage is read again for the
    /// current positions of the blocks whose row is all the call has for them (the steady state:
    /// every block), so each position crosses the wire and is parsed by the server once, not
    /// once for history and again for current positions. Returns the positions copied.
    async fn copy_history(&self, tx: &Transaction<'_>, blocks: &[BlockRows]) -> Result<u64, StorageError> {
        if blocks.is_empty() {
            return Ok(0);
        }
        let err = |e| self.pg_error(e);
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS history_stage (block bigint, tick bigint, ids bigint[], \
             xs real[], ys real[], zs real[], simple boolean) ON COMMIT DELETE ROWS",
        )
        .await
        .map_err(err)?;
        let (int8, int8s, float4s) = (Type::INT8, Type::INT8_ARRAY, Type::FLOAT4_ARRAY);
        let rows: Vec<[&(dyn ToSql + Sync); 7]> = blocks
            .iter()
            .map(|b| [&b.block as &(dyn ToSql + Sync), &b.tick, &b.ids, &b.xs, &b.ys, &b.zs, &b.simple])
            .collect();
        self.copy_in(
            tx,
            "COPY history_stage (block, tick, ids, xs, ys, zs, simple) FROM STDIN (FORMAT binary)",
            &[int8.clone(), int8, int8s, float4s.clone(), float4s.clone(), float4s, Type::BOOL],
            &rows,
        )
        .await?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO position_history (block, tick, ids, xs, ys, zs) \
                 SELECT block, tick, ids, xs, ys, zs FROM history_stage",
            )
            .await
            .map_err(err)?;
        tx.execute(&insert, &[]).await.map_err(err)?;
        Ok(blocks.iter().map(|b| b.ids.len() as u64).sum())
    }

    /// Creates the history partitions for this hour and the next two when the last ones known
    /// end within the hour (asked of the server once an hour or so, not per write).
    async fn ensure_partitions(&self, client: &tokio_postgres::Client) -> Result<(), StorageError> {
        let now = std::time::SystemTime::now();
        let known = *self.inner.partitions_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.is_some_and(|until| now + std::time::Duration::from_secs(3600) < until) {
            return Ok(());
        }
        let row = client
            .query_one("SELECT ensure_position_partitions(now(), 2)", &[])
            .await
            .map_err(|e| self.pg_error(e))?;
        let until: std::time::SystemTime = row.get(0);
        *self.inner.partitions_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
        Ok(())
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

    /// Folds the batches' registry upserts and removals per NPC (in batch order, as
    /// [`crate::MemoryStore`] applies them one by one), then runs at most one statement of each
    /// kind. Positions do not touch `npcs` (they go to `position_blocks`). Returns (rows
    /// upserted, rows deleted).
    async fn apply_registry_changes(
        &self,
        tx: &Transaction<'_>,
        fresh: &[&WriteBatch],
    ) -> Result<(u64, u64), StorageError> {
        let mut changes: HashMap<u64, NpcChange> = HashMap::new();
        for b in fresh {
            for r in &b.npcs {
                changes.insert(r.id, NpcChange::Upsert(r.clone()));
            }
            for &id in &b.removed {
                changes.insert(id, NpcChange::Remove);
            }
        }
        if changes.is_empty() {
            return Ok((0, 0));
        }
        let mut ids: Vec<u64> = changes.keys().copied().collect();
        // Rows are locked in id order, so concurrent writers can't deadlock on them.
        ids.sort_unstable();
        let mut removed = Vec::new();
        let mut upserts = Vec::new();
        for id in ids {
            match changes.remove(&id) {
                Some(NpcChange::Remove) => removed.push(to_i64("npc id", id)?),
                Some(NpcChange::Upsert(r)) => upserts.push(r),
                None => {}
            }
        }
        let deleted = self.delete_npcs(tx, &removed).await?;
        let upserted = self.upsert_npcs(tx, &upserts).await?;
        Ok((upserted, deleted))
    }

    async fn delete_npcs(&self, tx: &Transaction<'_>, ids: &[i64]) -> Result<u64, StorageError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let stmt =
            tx.prepare_cached("DELETE FROM npcs WHERE id = ANY($1)").await.map_err(|e| self.pg_error(e))?;
        tx.execute(&stmt, &[&ids]).await.map_err(|e| self.pg_error(e))
    }

    /// Inserts or replaces whole registry rows. A row equal to the stored one is left alone
    /// (no new row version, no WAL); the count is of rows written. `rows` ascend by id.
    ///
    /// Few rows (the steady state: status changes) go in one `INSERT … SELECT FROM unnest`.
    /// Many rows (a spawn wave, the first write of a world) travel by `COPY BINARY`: straight
    /// into `npcs` when every id is above the highest stored one (a new world, or new NPCs: no
    /// row can conflict), otherwise into a temporary stage merged by one `INSERT … SELECT …
    /// ON CONFLICT`. Building arrays of a million strings for `unnest` costs the client and the
    /// server more than the rows themselves.
    pub(super) async fn upsert_npcs(
        &self,
        tx: &Transaction<'_>,
        rows: &[NpcRecord],
    ) -> Result<u64, StorageError> {
        if rows.is_empty() {
            return Ok(0);
        }
        if rows.len() < COPY_REGISTRY_ROWS {
            return self.upsert_npcs_unnest(tx, rows).await;
        }
        let err = |e| self.pg_error(e);
        let first = to_i64("npc id", rows[0].id)?;
        let high: Option<i64> = tx.query_one("SELECT max(id) FROM npcs", &[]).await.map_err(err)?.get(0);
        if high.is_none() && rows.len() >= BULK_REGISTRY_ROWS {
            return self.bulk_load_npcs(tx, rows).await;
        }
        if high.is_none_or(|h| h < first) {
            self.copy_npcs(tx, "npcs", rows).await?;
            return Ok(rows.len() as u64);
        }
        self.merge_npcs(tx, rows).await
    }

    /// Registry rows through the temporary stage, merged into `npcs` by one `INSERT … ON
    /// CONFLICT`; a row equal to the stored one is left alone. Returns the rows written.
    async fn merge_npcs(&self, tx: &Transaction<'_>, rows: &[NpcRecord]) -> Result<u64, StorageError> {
        let err = |e| self.pg_error(e);
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS npc_stage (id bigint, role text, status text, swarm bigint, \
             agent boolean, x real, y real, z real, health integer, inventory bytea, updated_tick bigint) \
             ON COMMIT DELETE ROWS",
        )
        .await
        .map_err(err)?;
        self.copy_npcs(tx, "npc_stage", rows).await?;
        let merge = tx
            .prepare_cached(
                "INSERT INTO npcs (id, role, status, swarm, agent, x, y, z, health, inventory, updated_tick) \
                 SELECT id, role, status, swarm, agent, x, y, z, health, inventory, updated_tick \
                 FROM npc_stage ORDER BY id \
                 ON CONFLICT (id) DO UPDATE SET role = EXCLUDED.role, status = EXCLUDED.status, \
                 swarm = EXCLUDED.swarm, agent = EXCLUDED.agent, x = EXCLUDED.x, y = EXCLUDED.y, z = EXCLUDED.z, \
                 health = EXCLUDED.health, inventory = EXCLUDED.inventory, updated_tick = EXCLUDED.updated_tick \
                 WHERE (npcs.role, npcs.status, npcs.swarm, npcs.agent, npcs.x, npcs.y, npcs.z, npcs.health, \
                 npcs.inventory, npcs.updated_tick) IS DISTINCT FROM (EXCLUDED.role, EXCLUDED.status, \
                 EXCLUDED.swarm, EXCLUDED.agent, EXCLUDED.x, EXCLUDED.y, EXCLUDED.z, EXCLUDED.health, \
                 EXCLUDED.inventory, EXCLUDED.updated_tick)",
            )
            .await
            .map_err(err)?;
        tx.execute(&merge, &[]).await.map_err(err)
    }

    /// The registry's first write into an empty `npcs` (a new world): its secondary indexes
    /// are dropped, the rows copied in, and the indexes built again from the catalog's own
    /// definitions, all in this transaction. Building an index over a million rows by one sort
    /// costs PostgreSQL about a third of inserting them one by one into three B-trees
    /// (BENCHMARKS.md, "Fourth pass"). The primary key stays (it is appended to in id order,
    /// cheap). Dropping an index locks `npcs` against readers until the call commits; a
    /// rollback brings the indexes back unchanged.
    async fn bulk_load_npcs(&self, tx: &Transaction<'_>, rows: &[NpcRecord]) -> Result<u64, StorageError> {
        let err = |e| self.pg_error(e);
        // Index names and definitions come from the catalog, never from input.
        let indexes: Vec<(String, String)> = tx
            .query(
                "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index AS i \
                 WHERE i.indrelid = 'npcs'::regclass AND NOT i.indisunique ORDER BY 1",
                &[],
            )
            .await
            .map_err(err)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if !indexes.is_empty() {
            let names: Vec<&str> = indexes.iter().map(|(name, _)| name.as_str()).collect();
            tx.batch_execute(&format!("DROP INDEX {}", names.join(", "))).await.map_err(err)?;
        }
        // The lock is held now: another writer may have filled the table since `max(id)`.
        let empty: bool =
            tx.query_one("SELECT NOT EXISTS (SELECT 1 FROM npcs)", &[]).await.map_err(err)?.get(0);
        let written = if empty {
            self.copy_npcs(tx, "npcs", rows).await?;
            rows.len() as u64
        } else {
            self.merge_npcs(tx, rows).await?
        };
        tx.batch_execute("SET LOCAL maintenance_work_mem = '128MB'").await.map_err(err)?;
        for (_, def) in &indexes {
            tx.batch_execute(def).await.map_err(err)?;
        }
        Ok(written)
    }

    /// `COPY BINARY` of registry rows into `table` (`npcs` or the stage).
    async fn copy_npcs(
        &self,
        tx: &Transaction<'_>,
        table: &str,
        rows: &[NpcRecord],
    ) -> Result<(), StorageError> {
        let err = |e| self.pg_error(e);
        let stmt = tx
            .prepare_cached(&format!(
                "COPY {table} (id, role, status, swarm, agent, x, y, z, health, inventory, updated_tick) \
                 FROM STDIN (FORMAT binary)"
            ))
            .await
            .map_err(err)?;
        let sink = tx.copy_in(&stmt).await.map_err(err)?;
        let types = [
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::BOOL,
            Type::FLOAT4,
            Type::FLOAT4,
            Type::FLOAT4,
            Type::INT4,
            Type::BYTEA,
            Type::INT8,
        ];
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
        // Most NPCs carry nothing: their inventory's bytes are encoded once.
        let empty = encode_inventory(&[])?;
        for r in rows {
            let (id, swarm, health, tick) = (
                to_i64("npc id", r.id)?,
                i64::from(r.swarm),
                i32::from(r.health),
                to_i64("tick", r.updated_tick)?,
            );
            let owned;
            let inv: &[u8] = if r.inventory.is_empty() {
                &empty
            } else {
                owned = encode_inventory(&r.inventory)?;
                &owned
            };
            let (role, status) = (r.role.as_str(), r.status.as_str());
            writer
                .as_mut()
                .write(&[&id, &role, &status, &swarm, &r.agent, &r.x, &r.y, &r.z, &health, &inv, &tick])
                .await
                .map_err(err)?;
        }
        writer.finish().await.map_err(err)?;
        Ok(())
    }

    /// The registry upsert of a few rows: one statement over column arrays.
    async fn upsert_npcs_unnest(
        &self,
        tx: &Transaction<'_>,
        rows: &[NpcRecord],
    ) -> Result<u64, StorageError> {
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

    /// Runs `statements` with hash and merge joins off, so staged blocks are joined to
    /// `position_blocks` by its primary key, block by block: the planner (no statistics on a
    /// stage, a stale count of the blocks) otherwise hashes the whole table on (block, ids) and
    /// spills to disk, which took twice the time of the update itself at a million NPCs (31 of
    /// 68 ms a call).
    async fn joined_by_key<T>(
        &self,
        tx: &Transaction<'_>,
        statements: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let err = |e| self.pg_error(e);
        tx.batch_execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
            .await
            .map_err(err)?;
        let out = statements.await?;
        tx.batch_execute("RESET enable_hashjoin; RESET enable_mergejoin").await.map_err(err)?;
        Ok(out)
    }

    /// Brings `position_blocks` up to date. First the blocks whose only history row of the call
    /// holds the same NPCs as stored, at a tick no older (the steady state: every block but
    /// the one or two where a part of a population starts or ends), straight from the history
    /// stage. For the rest, each NPC's latest position of the call (removed NPCs taken out),
    /// one staged row per block, then one statement for the blocks whose NPCs are the same as
    /// stored (replace the arrays), one for new blocks and one that merges the others element
    /// by element. Returns the positions written. Runs inside [`Self::joined_by_key`].
    async fn apply_current_positions(
        &self,
        tx: &Transaction<'_>,
        fresh: &[&WriteBatch],
        history: &[BlockRows],
    ) -> Result<u64, StorageError> {
        let err = |e| self.pg_error(e);
        // The steady state: a block's only history row of the call, with the same NPCs as
        // stored and nothing older, replaces its arrays straight from the history stage.
        let mut done: Vec<i64> = Vec::new();
        let mut n_done = 0u64;
        if history.iter().any(|b| b.simple) {
            let from_history = tx
                .prepare_cached(
                    "UPDATE position_blocks AS p SET tick = s.tick, ticks = array_fill(s.tick, ARRAY[cardinality(s.ids)]), \
                     xs = s.xs, ys = s.ys, zs = s.zs \
                     FROM history_stage AS s WHERE s.simple AND p.block = s.block AND p.ids = s.ids AND p.tick <= s.tick \
                     RETURNING p.block",
                )
                .await
                .map_err(err)?;
            done = tx.query(&from_history, &[]).await.map_err(err)?.iter().map(|r| r.get(0)).collect();
            done.sort_unstable();
            n_done = history
                .iter()
                .filter(|b| b.simple && done.binary_search(&b.block).is_ok())
                .map(|b| b.ids.len() as u64)
                .sum();
        }
        let blocks = current_blocks(fresh, &done)?;
        if blocks.is_empty() {
            return Ok(n_done);
        }
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS position_stage (block bigint, tick bigint, ids bigint[], \
             ticks bigint[], xs real[], ys real[], zs real[], removed bigint[]) ON COMMIT DELETE ROWS",
        )
        .await
        .map_err(err)?;
        let (int8, int8s, float4s) = (Type::INT8, Type::INT8_ARRAY, Type::FLOAT4_ARRAY);
        let rows: Vec<[&(dyn ToSql + Sync); 8]> = blocks
            .iter()
            .map(|b| {
                [&b.block as &(dyn ToSql + Sync), &b.tick, &b.ids, &b.ticks, &b.xs, &b.ys, &b.zs, &b.removed]
            })
            .collect();
        self.copy_in(
            tx,
            "COPY position_stage (block, tick, ids, ticks, xs, ys, zs, removed) FROM STDIN (FORMAT binary)",
            &[
                int8.clone(),
                int8,
                int8s.clone(),
                int8s.clone(),
                float4s.clone(),
                float4s.clone(),
                float4s,
                int8s,
            ],
            &rows,
        )
        .await?;
        let n: u64 = n_done + blocks.iter().map(|b| b.ids.len() as u64).sum::<u64>();
        // Same NPCs as stored, nothing older (the steady state): replace the arrays (no
        // unnest, no sort).
        let same = tx
            .prepare_cached(
                "UPDATE position_blocks AS p SET tick = s.tick, ticks = s.ticks, xs = s.xs, ys = s.ys, zs = s.zs \
                 FROM position_stage AS s WHERE p.block = s.block AND p.ids = s.ids AND p.tick <= s.tick \
                 AND cardinality(s.removed) = 0 RETURNING p.block",
            )
            .await
            .map_err(err)?;
        let mut handled: Vec<i64> =
            tx.query(&same, &[]).await.map_err(err)?.iter().map(|r| r.get(0)).collect();
        handled.sort_unstable();
        let rest = |handled: &[i64]| -> Vec<i64> {
            blocks.iter().map(|b| b.block).filter(|b| handled.binary_search(b).is_err()).collect()
        };
        // The blocks a statement is to take, or None for every staged one: `= ANY` walks the
        // list for each staged row, fine for the few a steady-state call leaves over.
        let only = |left: &[i64]| -> Option<Vec<i64>> {
            (left.len() < blocks.len() && left.len().saturating_mul(blocks.len()) <= 1 << 20)
                .then(|| left.to_vec())
        };
        let mut left = rest(&handled);
        if left.is_empty() {
            return Ok(n);
        }
        // Blocks not stored yet (a new world, a spawn wave): the staged arrays are the block
        // (ids ascending, one element per NPC, `tick` their newest), inserted as they are.
        let new = tx
            .prepare_cached(
                "INSERT INTO position_blocks (block, tick, ids, ticks, xs, ys, zs) \
                 SELECT s.block, s.tick, s.ids, s.ticks, s.xs, s.ys, s.zs FROM position_stage AS s \
                 WHERE ($1::int8[] IS NULL OR s.block = ANY($1)) AND cardinality(s.removed) = 0 \
                   AND NOT EXISTS (SELECT 1 FROM position_blocks AS p WHERE p.block = s.block) \
                 ON CONFLICT (block) DO NOTHING RETURNING block",
            )
            .await
            .map_err(err)?;
        handled
            .extend(tx.query(&new, &[&only(&left)]).await.map_err(err)?.iter().map(|r| r.get::<_, i64>(0)));
        handled.sort_unstable();
        // What is left: blocks whose NPCs changed (a part of a call that starts or ends inside
        // a block, NPCs that appeared or went), older ticks. The steady state leaves one or two
        // blocks per call, so the merge looks each one up by its key rather than joining the
        // whole table (a hash of every block, which spilled to disk: 95 ms of a 200 ms call at
        // a million NPCs).
        left = rest(&handled);
        if left.is_empty() {
            return Ok(n);
        }
        // Per NPC the newest tick wins (the staged row on a tie); removed NPCs are left out.
        // `LIMIT 1` keeps the lookup a subquery run per staged row (one index probe), so the
        // planner can't turn it back into a join over the whole table.
        let merge = tx
            .prepare_cached(
                "INSERT INTO position_blocks AS p (block, tick, ids, ticks, xs, ys, zs) \
                 SELECT s.block, m.tick, m.ids, m.ticks, m.xs, m.ys, m.zs \
                 FROM position_stage AS s \
                 LEFT JOIN LATERAL (SELECT b.tick, b.ids, b.ticks, b.xs, b.ys, b.zs FROM position_blocks AS b \
                                    WHERE b.block = s.block LIMIT 1) AS o ON true \
                 CROSS JOIN LATERAL ( \
                   SELECT max(t) AS tick, array_agg(id ORDER BY id) AS ids, array_agg(t ORDER BY id) AS ticks, \
                          array_agg(x ORDER BY id) AS xs, array_agg(y ORDER BY id) AS ys, array_agg(z ORDER BY id) AS zs \
                   FROM (SELECT DISTINCT ON (id) id, t, x, y, z FROM ( \
                           SELECT n.*, 0 AS src FROM unnest(s.ids, s.ticks, s.xs, s.ys, s.zs) AS n(id, t, x, y, z) \
                           UNION ALL \
                           SELECT q.*, 1 AS src FROM unnest(o.ids, o.ticks, o.xs, o.ys, o.zs) AS q(id, t, x, y, z) \
                         ) AS a ORDER BY id, t DESC, src) AS d \
                   WHERE id <> ALL (s.removed) \
                 ) AS m \
                 WHERE ($1::int8[] IS NULL OR s.block = ANY($1)) AND m.ids IS NOT NULL \
                   AND NOT (o.ids IS NOT DISTINCT FROM s.ids AND o.tick <= s.tick AND cardinality(s.removed) = 0) \
                 ON CONFLICT (block) DO UPDATE SET tick = EXCLUDED.tick, ids = EXCLUDED.ids, ticks = EXCLUDED.ticks, \
                 xs = EXCLUDED.xs, ys = EXCLUDED.ys, zs = EXCLUDED.zs",
            )
            .await
            .map_err(err)?;
        tx.execute(&merge, &[&only(&left)]).await.map_err(err)?;
        // Blocks whose every NPC was removed.
        let emptied: Vec<i64> = blocks.iter().filter(|b| !b.removed.is_empty()).map(|b| b.block).collect();
        if !emptied.is_empty() {
            let delete = tx
                .prepare_cached(
                    "DELETE FROM position_blocks AS p USING position_stage AS s \
                     WHERE p.block = s.block AND s.block = ANY($1) AND p.ids <@ s.removed",
                )
                .await
                .map_err(err)?;
            tx.execute(&delete, &[&emptied]).await.map_err(err)?;
        }
        Ok(n)
    }
}

/// The call's position rows as history rows: one per block and tick, ids ascending.
fn history_blocks(fresh: &[&WriteBatch]) -> Result<Vec<BlockRows>, StorageError> {
    let mut rows: Vec<&PositionRow> = Vec::with_capacity(fresh.iter().map(|b| b.positions.len()).sum());
    for b in fresh {
        rows.extend(b.positions.iter());
    }
    // Grouped by block, then tick; ids ascending inside a group.
    rows.sort_unstable_by_key(|p| (p.npc_id / BLOCK, p.tick, p.npc_id));
    let mut out: Vec<BlockRows> = Vec::new();
    for p in rows {
        let (id, tick) = (to_i64("npc id", p.npc_id)?, to_i64("tick", p.tick)?);
        let block = id / BLOCK as i64;
        match out.last_mut() {
            Some(b) if b.block == block && b.tick == tick => b.push(p, id, tick),
            _ => {
                let mut b = BlockRows::new(block, tick);
                b.push(p, id, tick);
                out.push(b);
            }
        }
    }
    // Simple: the only row of its block (rows are sorted by block), ids strictly ascending (an
    // NPC twice in one tick is left to the merge), no NPC of the block removed in the call.
    let mut removed: Vec<i64> = Vec::new();
    for b in fresh {
        for &id in &b.removed {
            removed.push(to_i64("npc id", id)? / BLOCK as i64);
        }
    }
    removed.sort_unstable();
    for i in 0..out.len() {
        let block = out[i].block;
        let alone = (i == 0 || out[i - 1].block != block) && out.get(i + 1).is_none_or(|n| n.block != block);
        out[i].simple =
            alone && out[i].ids.windows(2).all(|w| w[0] < w[1]) && removed.binary_search(&block).is_err();
    }
    Ok(out)
}

/// Each NPC's latest position of the call, or its removal, grouped into blocks, leaving out
/// the blocks in `done` (sorted; already brought up to date from the history stage).
fn current_blocks(fresh: &[&WriteBatch], done: &[i64]) -> Result<Vec<BlockRows>, StorageError> {
    let skip = |id: u64| {
        !done.is_empty() && i64::try_from(id / BLOCK).is_ok_and(|block| done.binary_search(&block).is_ok())
    };
    // (id, order in the call, the position or None for a removal); the last per id wins.
    let mut all: Vec<(u64, u32, Option<&PositionRow>)> = Vec::new();
    let mut order = 0u32;
    for b in fresh {
        for p in b.positions.iter().filter(|p| !skip(p.npc_id)) {
            all.push((p.npc_id, order, Some(p)));
        }
        order += 1;
        for &id in b.removed.iter().filter(|&&id| !skip(id)) {
            all.push((id, order, None));
        }
        order += 1;
    }
    all.sort_unstable_by_key(|&(id, order, _)| (id, order));
    let mut out: Vec<BlockRows> = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let id = all[i].0;
        let mut j = i;
        // The last entry of this id; a position never replaces a newer one of the call.
        let mut pick = all[i].2;
        while j + 1 < all.len() && all[j + 1].0 == id {
            j += 1;
            pick = match (pick, all[j].2) {
                (Some(old), Some(new)) if new.tick < old.tick => Some(old),
                (_, next) => next,
            };
        }
        i = j + 1;
        let sid = to_i64("npc id", id)?;
        let block = sid / BLOCK as i64;
        if out.last().is_none_or(|b| b.block != block) {
            out.push(BlockRows::new(block, 0));
        }
        let b = out.last_mut().expect("pushed above");
        match pick {
            Some(p) => b.push(p, sid, to_i64("tick", p.tick)?),
            None => b.removed.push(sid),
        }
    }
    Ok(out)
}

/// Inventories are stored as codec bytes: `(item kind, count)` stacks.
fn encode_inventory(stacks: &[(u16, u16)]) -> Result<Vec<u8>, StorageError> {
    terrarium_codec::encode(stacks).map_err(|e| StorageError::failed(super::BACKEND, e))
}
