//! The retention job: deletes history and events older than a configured age, a bounded chunk
//! per statement, so no single statement holds locks or writes WAL for long.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::PgStore;
use crate::{RetentionConfig, StorageError};

/// Tables the job trims. Constants: the only table names spliced into SQL text.
/// Position history is dropped a partition at a time; only its default partition (rows that
/// found no hourly partition) is trimmed here.
const TABLES: [&str; 3] = ["position_history_default", "metrics", "events"];

/// What one retention run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// History rows (one per block and flush tick) deleted from `position_history_default`.
    pub positions: u64,
    /// Hourly `position_history` partitions dropped whole.
    pub partitions_dropped: u64,
    /// Rows deleted from `metrics`.
    pub metrics: u64,
    /// Rows deleted from `events`.
    pub events: u64,
    /// DELETE statements run (each its own transaction).
    pub statements: u64,
}

impl PgStore {
    /// Drops the hourly position history partitions that end more than `max_age` ago, then
    /// deletes rows stored more than `max_age` ago from the history's default partition,
    /// `metrics` and `events`, at most `chunk_rows` per statement. The age is measured on the
    /// server's clock.
    ///
    /// # Errors
    /// When the server can't be reached; what was deleted before stays deleted.
    pub async fn purge_older_than(
        &self,
        max_age: Duration,
        chunk_rows: u32,
    ) -> Result<RetentionReport, StorageError> {
        let age_s = max_age.as_secs_f64();
        let chunk = i64::from(chunk_rows.max(1));
        let mut report = RetentionReport::default();
        let client = self.client().await?;
        let dropped: i32 = self
            .timed(async {
                client
                    .query_one("SELECT drop_position_partitions(now() - $1 * interval '1 second')", &[&age_s])
                    .await
                    .map_err(|e| self.pg_error(e))
            })
            .await?
            .get(0);
        drop(client);
        report.partitions_dropped = u64::try_from(dropped).unwrap_or(0);
        report.statements += 1;
        for table in TABLES {
            // `ctid` picks the chunk's rows without a second index; the BRIN (positions,
            // metrics) or btree (events) index on recorded_at finds them.
            let sql = format!(
                "DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} \
                 WHERE recorded_at < now() - $1 * interval '1 second' LIMIT $2))"
            );
            loop {
                let client = self.client().await?;
                let n = self
                    .timed(async {
                        client.execute(&sql, &[&age_s, &chunk]).await.map_err(|e| self.pg_error(e))
                    })
                    .await?;
                drop(client);
                report.statements += 1;
                self.inner.counters.retention_deleted.fetch_add(n, Ordering::Relaxed);
                match table {
                    "position_history_default" => report.positions += n,
                    "metrics" => report.metrics += n,
                    _ => report.events += n,
                }
                if n < chunk as u64 {
                    break;
                }
                // Let writers in between chunks.
                tokio::task::yield_now().await;
            }
        }
        Ok(report)
    }

    /// Runs [`PgStore::purge_older_than`] every `cfg.interval_s` in a tokio task, first after one
    /// interval. A failed run is logged and counted (`retention_failures`); the next one tries
    /// again. Abort the handle to stop it.
    #[must_use = "dropping the handle does not stop the job; abort it to stop"]
    pub fn spawn_retention(&self, cfg: &RetentionConfig) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        let max_age = Duration::from_secs(cfg.max_age_s);
        let chunk = cfg.chunk_rows;
        let every = Duration::from_secs(cfg.interval_s.max(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match store.purge_older_than(max_age, chunk).await {
                    Ok(r) => tracing::info!(?r, "retention run finished"),
                    Err(e) => {
                        store.inner.counters.retention_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "retention run failed; trying again next interval");
                    }
                }
            }
        })
    }
}
