//! Checkpoints (the engine's snapshot frame, opaque here) and what a resume reads: the newest
//! checkpoint, checksum verified, and the current state committed after it.

use std::pin::pin;

use futures_util::TryStreamExt;

use super::read::npc_from_row;
use deadpool_postgres::Object;

use super::{BACKEND, PgStore, bits, to_i64, unbits};
use crate::{Checkpoint, ResumePoint, StorageError};

impl PgStore {
    /// Stores a checkpoint and keeps the newest `keep` (at least 1), in one transaction.
    ///
    /// # Errors
    /// When the server can't be reached or refuses the row.
    pub async fn save_checkpoint(&self, cp: &Checkpoint, keep: u32) -> Result<(), StorageError> {
        let mut client = self.client().await?;
        let stored = self.insert_checkpoint(&mut client, cp, keep).await;
        // A checkpoint is the biggest message a connection sends (about 100 MB at a million
        // NPCs); the connection would keep buffers that size for as long as it lives.
        super::discard(client);
        stored
    }

    async fn insert_checkpoint(
        &self,
        client: &mut Object,
        cp: &Checkpoint,
        keep: u32,
    ) -> Result<(), StorageError> {
        let err = |e| self.pg_error(e);
        let tx = client.transaction().await.map_err(err)?;
        let size = i64::try_from(cp.bytes.len()).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO checkpoints (run, seq, tick, clean, checksum, size, bytes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &bits(cp.run),
                &to_i64("batch seq", cp.seq)?,
                &to_i64("tick", cp.tick)?,
                &cp.clean,
                &bits(terrarium_codec::checksum(&cp.bytes)),
                &size,
                &cp.bytes,
            ],
        )
        .await
        .map_err(err)?;
        tx.execute(
            "DELETE FROM checkpoints WHERE id NOT IN (SELECT id FROM checkpoints ORDER BY tick DESC, id DESC LIMIT $1)",
            &[&i64::from(keep.max(1))],
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    /// The newest checkpoint, its checksum verified.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] naming the schema and checkpoint when the checksum or size
    /// does not match; otherwise as any read.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StorageError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, run, seq, tick, checksum, size, bytes, clean FROM checkpoints ORDER BY tick DESC, id DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(|e| self.pg_error(e));
        // The row was read into the connection's buffer whole (see `save_checkpoint`).
        super::discard(client);
        let row = row?;
        let Some(r) = row else { return Ok(None) };
        let (id, run, seq, tick, sum, size): (i64, i64, i64, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        let bytes: Vec<u8> = r.get(6);
        let clean: bool = r.get(7);
        let corrupt = |why: String| StorageError::Corrupt {
            what: format!("postgres schema {}: checkpoint {id} (tick {tick}): {why}", self.schema()),
        };
        if i64::try_from(bytes.len()).ok() != Some(size) {
            return Err(corrupt(format!("{} bytes stored, {size} recorded", bytes.len())));
        }
        if unbits(sum) != terrarium_codec::checksum(&bytes) {
            return Err(corrupt("checksum mismatch".into()));
        }
        Ok(Some(Checkpoint {
            run: unbits(run),
            seq: u64::try_from(seq).map_err(|_| corrupt(format!("seq {seq}")))?,
            tick: u64::try_from(tick).map_err(|_| corrupt(format!("tick {tick}")))?,
            clean,
            bytes,
        }))
    }

    /// The newest checkpoint and the current state committed after it; `None` when the schema
    /// holds nothing (no checkpoint, no NPC row, no applied batch). Read in one repeatable-read
    /// transaction, so the parts agree.
    ///
    /// # Errors
    /// As [`PgStore::latest_checkpoint`]; [`StorageError::NoCheckpoint`] naming the schema when
    /// it holds rows or applied batches but no checkpoint.
    pub async fn resume_point(&self) -> Result<Option<ResumePoint>, StorageError> {
        let err = |e| self.pg_error(e);
        let Some(checkpoint) = self.latest_checkpoint().await? else {
            // Rows without a checkpoint are a world that can't be resumed, not an empty schema.
            let client = self.client().await?;
            let row = client
                .query_one("SELECT (SELECT count(*) FROM npcs), (SELECT count(*) FROM applied_batches)", &[])
                .await
                .map_err(err)?;
            let (npcs, batches): (i64, i64) = (row.get(0), row.get(1));
            if npcs > 0 || batches > 0 {
                return Err(StorageError::NoCheckpoint {
                    store: format!("postgres schema {}", self.schema()),
                    npcs: u64::try_from(npcs).unwrap_or(0),
                    batches: u64::try_from(batches).unwrap_or(0),
                });
            }
            return Ok(None);
        };
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(err)?;
        let mark: Option<i64> = tx
            .query_opt("SELECT seq FROM applied_batches WHERE run = $1", &[&bits(checkpoint.run)])
            .await
            .map_err(err)?
            .map(|r| r.get(0));
        let tick = to_i64("tick", checkpoint.tick)?;
        let bad = |what: &str| StorageError::Corrupt { what: format!("{BACKEND} {what}") };
        // Every id, and which registry rows changed after the checkpoint: one scan of `npcs`.
        let (mut ids, mut wanted) = (Vec::new(), Vec::new());
        {
            let stmt = tx.prepare("SELECT id, updated_tick FROM npcs ORDER BY id").await.map_err(err)?;
            let mut rows = pin!(tx.query_raw(&stmt, std::iter::empty::<i64>()).await.map_err(err)?);
            while let Some(row) = rows.try_next().await.map_err(err)? {
                let (id, updated): (i64, i64) = (row.get(0), row.get(1));
                let id = u64::try_from(id).map_err(|_| bad(&format!("npcs.id {id}")))?;
                ids.push(id);
                if updated > tick {
                    wanted.push(id);
                }
            }
        }
        // Positions written after the checkpoint: only blocks whose newest tick is newer
        // (positions never touch `npcs`).
        let mut moved: Vec<(u64, u64, [f32; 3])> = Vec::new();
        {
            let stmt = tx
                .prepare("SELECT ids, ticks, xs, ys, zs FROM position_blocks WHERE tick > $1 ORDER BY block")
                .await
                .map_err(err)?;
            let mut rows = pin!(tx.query_raw(&stmt, [tick]).await.map_err(err)?);
            while let Some(row) = rows.try_next().await.map_err(err)? {
                let (bids, ticks): (Vec<i64>, Vec<i64>) = (row.get(0), row.get(1));
                let (xs, ys, zs): (Vec<f32>, Vec<f32>, Vec<f32>) = (row.get(2), row.get(3), row.get(4));
                if [ticks.len(), xs.len(), ys.len(), zs.len()].iter().any(|&n| n != bids.len()) {
                    return Err(bad("position_blocks arrays"));
                }
                for k in 0..bids.len() {
                    if ticks[k] > tick {
                        let id = u64::try_from(bids[k]).map_err(|_| bad("position_blocks.ids"))?;
                        let t = u64::try_from(ticks[k]).map_err(|_| bad("position_blocks.ticks"))?;
                        moved.push((id, t, [xs[k], ys[k], zs[k]]));
                    }
                }
            }
        }
        wanted.extend(moved.iter().map(|m| m.0).filter(|id| ids.binary_search(id).is_ok()));
        wanted.sort_unstable();
        wanted.dedup();
        let mut newer = Vec::with_capacity(wanted.len());
        if !wanted.is_empty() {
            let keys: Vec<i64> = wanted.iter().map(|&id| to_i64("npc id", id)).collect::<Result<_, _>>()?;
            let stmt = tx
                .prepare(
                    "SELECT id, role, status, swarm, agent, x, y, z, health, inventory, updated_tick \
                     FROM npcs WHERE id = ANY($1) ORDER BY id",
                )
                .await
                .map_err(err)?;
            let mut rows = pin!(tx.query_raw(&stmt, [&keys]).await.map_err(err)?);
            while let Some(row) = rows.try_next().await.map_err(err)? {
                newer.push(npc_from_row(&row)?);
            }
        }
        // Lay the newer positions over (both ascending by id; when not older).
        let mut at = 0usize;
        for (id, t, [x, y, z]) in moved {
            while at < newer.len() && newer[at].id < id {
                at += 1;
            }
            if at < newer.len() && newer[at].id == id && t >= newer[at].updated_tick {
                let rec = &mut newer[at];
                (rec.x, rec.y, rec.z, rec.updated_tick) = (x, y, z, t);
            }
        }
        tx.commit().await.map_err(err)?;
        let batches_committed =
            checkpoint.seq == 0 || mark.is_some_and(|m| u64::try_from(m).is_ok_and(|m| m >= checkpoint.seq));
        Ok(Some(ResumePoint { checkpoint, ids, newer, batches_committed }))
    }

    /// Highest batch `seq` applied for `run`.
    ///
    /// # Errors
    /// When the server can't be reached.
    pub async fn applied_seq(&self, run: u64) -> Result<Option<u64>, StorageError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT seq FROM applied_batches WHERE run = $1", &[&bits(run)])
            .await
            .map_err(|e| self.pg_error(e))?;
        Ok(row.and_then(|r| u64::try_from(r.get::<_, i64>(0)).ok()))
    }

    /// Deletes every row of every table (the schema stays): a new world starts here.
    ///
    /// # Errors
    /// When the server can't be reached.
    pub async fn wipe(&self) -> Result<(), StorageError> {
        let client = self.client().await?;
        client
            .batch_execute(
                "TRUNCATE npcs, position_blocks, position_history, metrics, events, applied_batches, checkpoints \
                 RESTART IDENTITY",
            )
            .await
            .map_err(|e| self.pg_error(e))
    }
}
