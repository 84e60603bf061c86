//! Checkpoints (the engine's snapshot frame, opaque here) and what a resume reads: the newest
//! checkpoint, checksum verified, and the current state committed after it.

use std::pin::pin;

use futures_util::TryStreamExt;

use super::read::{NPC_COLUMNS, NPC_FROM, npc_from_row};
use super::{BACKEND, PgStore, bits, to_i64, unbits};
use crate::{Checkpoint, ResumePoint, StorageError};

impl PgStore {
    /// Stores a checkpoint and keeps the newest `keep` (at least 1), in one transaction.
    ///
    /// # Errors
    /// When the server can't be reached or refuses the row.
    pub async fn save_checkpoint(&self, cp: &Checkpoint, keep: u32) -> Result<(), StorageError> {
        let err = |e| self.pg_error(e);
        let mut client = self.client().await?;
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
            .map_err(|e| self.pg_error(e))?;
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
    /// holds no checkpoint. Read in one repeatable-read transaction, so the parts agree.
    ///
    /// # Errors
    /// As [`PgStore::latest_checkpoint`].
    pub async fn resume_point(&self) -> Result<Option<ResumePoint>, StorageError> {
        let Some(checkpoint) = self.latest_checkpoint().await? else { return Ok(None) };
        let err = |e| self.pg_error(e);
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
        let ids_rows = tx.query("SELECT id FROM npcs ORDER BY id", &[]).await.map_err(err)?;
        let mut ids = Vec::with_capacity(ids_rows.len());
        for r in &ids_rows {
            let id: i64 = r.get(0);
            ids.push(
                u64::try_from(id)
                    .map_err(|_| StorageError::Corrupt { what: format!("{BACKEND} npcs.id {id}") })?,
            );
        }
        drop(ids_rows);
        let tick = to_i64("tick", checkpoint.tick)?;
        let stmt = tx
            // Newer: the registry row changed, or the NPC's position in its block did (positions
            // do not touch `npcs`); a block untouched since the checkpoint is skipped whole.
            .prepare(&format!(
                "SELECT {NPC_COLUMNS} FROM {NPC_FROM} WHERE n.updated_tick > $1 \
                 OR (b.tick > $1 AND b.ticks[k.i] > $1) ORDER BY n.id"
            ))
            .await
            .map_err(err)?;
        let mut rows = pin!(tx.query_raw(&stmt, [tick]).await.map_err(err)?);
        let mut newer = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(err)? {
            newer.push(npc_from_row(&row)?);
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
