//! RegionStore: the region protocol's transactions in PostgreSQL (feature `postgres`): leases
//! with epochs, the fence every transaction starts with, hand-off, adoption, load and sync of
//! the ownership rows, and the notifications that wake a destination.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Transaction};

use super::{Epoch, Move, MoveResult, OwnerRow, RegionError, RegionId};
use crate::{PgStore, PostgresConfig, is_identifier};

/// What travels with an NPC's ownership row: who it is and where it was going.
#[derive(Debug, Clone, PartialEq)]
pub struct NpcState {
    /// Role name.
    pub role: String,
    /// Swarm, 0 for none.
    pub swarm: u32,
    /// Position, blocks.
    pub position: [f32; 3],
    /// Velocity, blocks per second.
    pub velocity: [f32; 3],
}

/// Rows an adoption (or a load) took, with how long each was out of any world.
#[derive(Debug, Clone, Default)]
pub struct Adopted {
    /// The rows (to give to `RegionCore::on_arrivals`, which says which to spawn).
    pub rows: Vec<OwnerRow<NpcState>>,
    /// Per row: from leaving the source world to this adoption, ms (PostgreSQL's clock).
    pub latency_ms: Vec<f64>,
    /// False when the connection was lost at the commit: the rows are the region's all the
    /// same (adoption only flips a flag), but the store must be reconnected.
    pub commit_known: bool,
    /// [`RegionStore::load`] only: the region world's tick as of its newest committed sync
    /// (`region_state`), which a restarted region continues from; `None` for a region never
    /// synced (a new world). Always `None` from [`RegionStore::adopt`].
    pub region_tick: Option<u64>,
}

/// The ownership table at a glance (supervisors and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnershipSummary {
    /// Rows in `npc_owners`.
    pub rows: u64,
    /// Rows per region, ascending by region.
    pub per_region: Vec<(RegionId, u64)>,
    /// Rows handed to a region that has not adopted them yet.
    pub not_adopted: u64,
    /// Hand-offs committed so far (sum of every row's `handoff_seq`).
    pub handoffs: u64,
    /// Writes refused by a fence (`region_fence_log`).
    pub fence_rejections: u64,
}

/// One connection to the ownership tables, for one region process (or a supervisor). The
/// connection also receives the region's hand-off notifications ([`RegionStore::listen`]).
pub struct RegionStore {
    client: Client,
    schema: String,
    notices: mpsc::UnboundedReceiver<String>,
}

impl std::fmt::Debug for RegionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionStore").field("schema", &self.schema).finish_non_exhaustive()
    }
}

/// How long PostgreSQL lets a region connection sit inside a transaction without a statement
/// (ms) before it ends the session; our transactions send their statements back to back.
pub const IDLE_IN_TX_MS: u64 = 500;

fn db(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> RegionError {
    move |source| RegionError::Db { what, source }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn region_i32(r: RegionId) -> Result<i32, RegionError> {
    i32::try_from(r.0).map_err(|_| RegionError::Invalid(format!("{r} does not fit a PostgreSQL integer")))
}

fn npc_i64(npc: u64) -> Result<i64, RegionError> {
    i64::try_from(npc).map_err(|_| RegionError::Invalid(format!("npc id {npc} does not fit a bigint")))
}

fn region_of(v: i32) -> RegionId {
    RegionId(u32::try_from(v).unwrap_or(u32::MAX))
}

impl RegionStore {
    /// Connects (one connection), brings the schema up to date (the store's migrations,
    /// region tables included) and sets the schema as the search path.
    ///
    /// # Errors
    /// [`RegionError::Invalid`] for a malformed URL or schema name; [`RegionError::Db`] when
    /// the server can't be reached or the migration fails.
    pub async fn connect(cfg: &PostgresConfig) -> Result<Self, RegionError> {
        if !is_identifier(&cfg.schema) || cfg.schema.len() > 40 {
            return Err(RegionError::Invalid(format!(
                "schema {:?} is not a short plain identifier",
                cfg.schema
            )));
        }
        let migrator = PgStore::connect_lazy(cfg).map_err(|e| RegionError::Invalid(e.to_string()))?;
        migrator.migrate().await.map_err(|e| RegionError::Invalid(format!("migration: {e}")))?;
        drop(migrator);
        // TLS as the store's pool has it (the URL's sslmode / sslrootcert and the settings).
        let tls = crate::tls::PgTls::from_config(cfg).map_err(|e| RegionError::Invalid(e.to_string()))?;
        let connector = tls.connector().map_err(|e| RegionError::Invalid(e.to_string()))?;
        let mut pg: tokio_postgres::Config =
            tls.url.parse().map_err(|_| RegionError::Invalid("malformed database URL".to_owned()))?;
        pg.ssl_mode(tls.driver_mode());
        // The schema is a checked identifier: the only value spliced into a setting. A client
        // frozen inside a transaction (SIGSTOP, a partition) would hold the lease row's lock and
        // its rows' locks and so block the process taking its region over: PostgreSQL ends such
        // a session after IDLE_IN_TX_MS, well inside any lease.
        pg.options(format!(
            "-c search_path={} -c idle_in_transaction_session_timeout={IDLE_IN_TX_MS}",
            cfg.schema
        ));
        pg.application_name("terrarium-region");
        pg.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
        let (client, mut connection) = pg.connect(connector).await.map_err(db("connect"))?;
        let (tx, notices) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.channel().to_owned()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "region store connection ended");
                        break;
                    }
                }
            }
        });
        Ok(Self { client, schema: cfg.schema.clone(), notices })
    }

    /// The notification channel of `region` in this schema (an identifier we build).
    fn channel(&self, region: RegionId) -> String {
        format!("{}_region_{}", self.schema, region.0)
    }

    /// Subscribes this connection to `region`'s hand-off notifications.
    ///
    /// # Errors
    /// [`RegionError::Db`].
    pub async fn listen(&self, region: RegionId) -> Result<(), RegionError> {
        // LISTEN takes an identifier, not a parameter: the schema is checked, the rest is ours.
        self.client.batch_execute(&format!("LISTEN {}", self.channel(region))).await.map_err(db("listen"))
    }

    /// Notifications received since the last call (true when any arrived).
    pub fn take_notifications(&mut self) -> bool {
        let mut any = false;
        while self.notices.try_recv().is_ok() {
            any = true;
        }
        any
    }

    /// True when the connection is gone (reconnect with a new store).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Takes `region`'s lease for `ttl` if it is free or expired, bumping its epoch; `None`
    /// while another holder's lease runs.
    ///
    /// # Errors
    /// [`RegionError::Db`].
    pub async fn take_lease(
        &self,
        region: RegionId,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Epoch>, RegionError> {
        let row = self
            .client
            .query_opt(
                "INSERT INTO region_leases (region, epoch, holder, expires_at)
                 VALUES ($1, 1, $2, now() + $3::float8 * interval '1 millisecond')
                 ON CONFLICT (region) DO UPDATE
                   SET epoch = region_leases.epoch + 1, holder = EXCLUDED.holder,
                       expires_at = EXCLUDED.expires_at, taken_at = now()
                   WHERE region_leases.expires_at <= now()
                 RETURNING epoch",
                &[&region_i32(region)?, &holder, &ms(ttl)],
            )
            .await
            .map_err(db("take lease"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Renews the lease `epoch` for `ttl` from now.
    ///
    /// # Errors
    /// [`RegionError::Fenced`] when a newer epoch took the lease (logged in
    /// `region_fence_log`); [`RegionError::Db`].
    pub async fn renew(&self, region: RegionId, epoch: Epoch, ttl: Duration) -> Result<(), RegionError> {
        let n = self
            .client
            .execute(
                "UPDATE region_leases SET expires_at = now() + $3::float8 * interval '1 millisecond'
                 WHERE region = $1 AND epoch = $2",
                &[&region_i32(region)?, &epoch, &ms(ttl)],
            )
            .await
            .map_err(db("renew lease"))?;
        if n == 1 { Ok(()) } else { Err(self.refused(region, epoch, "renew").await) }
    }

    /// Checks the fence inside `tx`: the lease row, locked `FOR SHARE` until the transaction
    /// ends (a take waits for it), must still carry `epoch`.
    async fn fence(
        tx: &Transaction<'_>,
        region: RegionId,
        epoch: Epoch,
    ) -> Result<Result<(), Option<Epoch>>, RegionError> {
        let row = tx
            .query_opt("SELECT epoch FROM region_leases WHERE region = $1 FOR SHARE", &[&region_i32(region)?])
            .await
            .map_err(db("fence"))?;
        let current: Option<Epoch> = row.map(|r| r.get(0));
        Ok(if current == Some(epoch) { Ok(()) } else { Err(current) })
    }

    /// Records a refused write (its own transaction) and builds the error.
    async fn refused(&self, region: RegionId, epoch: Epoch, what: &'static str) -> RegionError {
        let current: Option<Epoch> = match self
            .client
            .query_opt(
                "SELECT epoch FROM region_leases WHERE region = $1",
                &[&i32::try_from(region.0).unwrap_or(-1)],
            )
            .await
        {
            Ok(row) => row.map(|r| r.get(0)),
            Err(_) => None,
        };
        if let Err(e) = self
            .client
            .execute(
                "INSERT INTO region_fence_log (region, epoch, current_epoch, what) VALUES ($1, $2, $3, $4)",
                &[&i32::try_from(region.0).unwrap_or(-1), &epoch, &current, &what],
            )
            .await
        {
            tracing::warn!(error = %e, "could not log a refused write");
        }
        tracing::warn!(region = region.0, epoch, ?current, what, "write refused by the fence: lease lost");
        RegionError::Fenced { region, epoch, current }
    }

    /// Opens a transaction and checks the fence in it; [`RegionError::Fenced`] (rolled back,
    /// not yet logged) when the fence refuses.
    async fn open_fenced(
        &mut self,
        region: RegionId,
        epoch: Epoch,
        what: &'static str,
    ) -> Result<Transaction<'_>, RegionError> {
        let tx = self.client.transaction().await.map_err(db(what))?;
        match Self::fence(&tx, region, epoch).await? {
            Ok(()) => Ok(tx),
            Err(current) => {
                drop(tx.rollback().await);
                Err(RegionError::Fenced { region, epoch, current })
            }
        }
    }

    /// Logs a refusal in `region_fence_log` (its own transaction) when `r` is one.
    async fn logged<T>(&self, r: Result<T, RegionError>, what: &'static str) -> Result<T, RegionError> {
        match r {
            Err(RegionError::Fenced { region, epoch, .. }) => Err(self.refused(region, epoch, what).await),
            other => other,
        }
    }

    /// Start-up: every row `region` owns (adopted or not), fenced; the ones not yet adopted
    /// are marked adopted in the same transaction.
    ///
    /// # Errors
    /// [`RegionError::Fenced`], [`RegionError::CommitUnknown`], [`RegionError::Db`].
    async fn load_tx(&mut self, region: RegionId, epoch: Epoch) -> Result<Adopted, RegionError> {
        let r = region_i32(region)?;
        let tx = self.open_fenced(region, epoch, "load").await?;
        let rows = tx
            .query(
                "SELECT npc_id, handoff_seq, adopted, role, swarm, x, y, z, vx, vy, vz,
                        coalesce(extract(epoch FROM now() - handed_at)::float8 * 1000.0, 0.0)
                 FROM npc_owners WHERE region = $1 ORDER BY npc_id",
                &[&r],
            )
            .await
            .map_err(db("load"))?;
        // Only the rows read: a hand-off to this region may commit between the two statements
        // (READ COMMITTED), and marking its row adopted unread would leave it in no world.
        let waiting: Vec<i64> =
            rows.iter().filter(|row| !row.get::<_, bool>(2)).map(|row| row.get(0)).collect();
        if !waiting.is_empty() {
            tx.execute(
                "UPDATE npc_owners SET adopted = true, adopted_at = now() WHERE npc_id = ANY($1) AND region = $2",
                &[&waiting, &r],
            )
            .await
            .map_err(db("load"))?;
        }
        // Written only by this region's fenced syncs: no one else can change it now.
        let state = tx
            .query_opt("SELECT tick FROM region_state WHERE region = $1", &[&r])
            .await
            .map_err(db("load"))?;
        tx.commit().await.map_err(|source| RegionError::CommitUnknown { what: "load", source })?;
        Ok(Adopted {
            latency_ms: rows.iter().map(|row| row.get(11)).collect(),
            rows: rows.iter().map(|row| owner_row(row, region)).collect(),
            commit_known: true,
            region_tick: state.map(|row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)),
        })
    }

    /// Moves each NPC's row from `region` to its destination if it still is `(region, seq)`,
    /// with its state, and notifies the destinations; one fenced transaction. `queued` is how
    /// long each NPC has been out of any world (so `handed_at` is when it left).
    ///
    /// # Errors
    /// [`RegionError::Fenced`] (nothing moved, stop), [`RegionError::CommitUnknown`] (read the
    /// rows back), [`RegionError::Db`] (rolled back: send again).
    async fn hand_off_tx(
        &mut self,
        region: RegionId,
        epoch: Epoch,
        moves: &[Move<NpcState>],
        queued: &[Duration],
    ) -> Result<Vec<(u64, MoveResult)>, RegionError> {
        let r = region_i32(region)?;
        let mut ids = Vec::with_capacity(moves.len());
        let mut to = Vec::with_capacity(moves.len());
        let mut seqs = Vec::with_capacity(moves.len());
        let mut cols: [Vec<f32>; 6] = Default::default();
        let mut waited = Vec::with_capacity(moves.len());
        for (i, mv) in moves.iter().enumerate() {
            if mv.from != region {
                return Err(RegionError::Invalid(format!("a move from {} sent by {region}", mv.from)));
            }
            ids.push(npc_i64(mv.npc)?);
            to.push(region_i32(mv.to)?);
            seqs.push(mv.seq);
            for (k, v) in mv.state.position.iter().chain(&mv.state.velocity).enumerate() {
                cols[k].push(*v);
            }
            waited.push(queued.get(i).map_or(0.0, |d| ms(*d)));
        }
        let channels: std::collections::BTreeSet<String> = moves.iter().map(|m| self.channel(m.to)).collect();
        let tx = self.open_fenced(region, epoch, "hand-off").await?;
        let moved = tx
            .query(
                "UPDATE npc_owners o
                 SET region = m.dest, handoff_seq = o.handoff_seq + 1, adopted = false,
                     x = m.x, y = m.y, z = m.z, vx = m.vx, vy = m.vy, vz = m.vz,
                     handed_at = now() - m.waited * interval '1 millisecond', adopted_at = NULL
                 FROM unnest($2::bigint[], $3::integer[], $4::bigint[], $5::real[], $6::real[], $7::real[],
                             $8::real[], $9::real[], $10::real[], $11::float8[])
                      AS m(npc_id, dest, seq, x, y, z, vx, vy, vz, waited)
                 WHERE o.npc_id = m.npc_id AND o.region = $1 AND o.handoff_seq = m.seq
                 RETURNING o.npc_id",
                &[&r, &ids, &to, &seqs, &cols[0], &cols[1], &cols[2], &cols[3], &cols[4], &cols[5], &waited],
            )
            .await
            .map_err(db("hand-off"))?;
        for channel in &channels {
            tx.execute("SELECT pg_notify($1, '')", &[channel]).await.map_err(db("hand-off notify"))?;
        }
        tx.commit().await.map_err(|source| RegionError::CommitUnknown { what: "hand-off", source })?;
        let moved: std::collections::HashSet<i64> = moved.iter().map(|row| row.get(0)).collect();
        Ok(moves
            .iter()
            .zip(&ids)
            .map(|(m, id)| (m.npc, if moved.contains(id) { MoveResult::Moved } else { MoveResult::Stale }))
            .collect())
    }

    /// Reads the owner and hand-off count of each NPC (an unknown outcome's read-back). Not
    /// fenced: it writes nothing.
    ///
    /// # Errors
    /// [`RegionError::Db`].
    pub async fn read_owners(
        &self,
        npcs: &[u64],
    ) -> Result<Vec<(u64, Option<(RegionId, i64)>)>, RegionError> {
        let ids = npcs.iter().map(|&n| npc_i64(n)).collect::<Result<Vec<_>, _>>()?;
        let rows = self
            .client
            .query("SELECT npc_id, region, handoff_seq FROM npc_owners WHERE npc_id = ANY($1)", &[&ids])
            .await
            .map_err(db("read owners"))?;
        let found: std::collections::HashMap<i64, (RegionId, i64)> =
            rows.iter().map(|r| (r.get(0), (region_of(r.get(1)), r.get(2)))).collect();
        Ok(npcs.iter().zip(&ids).map(|(&n, id)| (n, found.get(id).copied())).collect())
    }

    /// Up to `max` rows handed to `region` and not adopted yet, marked adopted; fenced.
    ///
    /// # Errors
    /// [`RegionError::Fenced`], [`RegionError::Db`]. A commit whose outcome is unknown still
    /// returns the rows (`commit_known` false).
    async fn adopt_tx(&mut self, region: RegionId, epoch: Epoch, max: i64) -> Result<Adopted, RegionError> {
        let r = region_i32(region)?;
        let tx = self.open_fenced(region, epoch, "adopt").await?;
        let rows = tx
            .query(
                "SELECT npc_id, handoff_seq, adopted, role, swarm, x, y, z, vx, vy, vz,
                        extract(epoch FROM now() - handed_at)::float8 * 1000.0
                 FROM npc_owners WHERE region = $1 AND NOT adopted ORDER BY npc_id LIMIT $2 FOR UPDATE",
                &[&r, &max],
            )
            .await
            .map_err(db("adopt"))?;
        let mut out = Adopted { commit_known: true, ..Adopted::default() };
        if rows.is_empty() {
            drop(tx.rollback().await);
            return Ok(out);
        }
        let ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        tx.execute(
            "UPDATE npc_owners SET adopted = true, adopted_at = now() WHERE npc_id = ANY($1) AND region = $2",
            &[&ids, &r],
        )
        .await
        .map_err(db("adopt"))?;
        out.commit_known = tx.commit().await.is_ok();
        out.latency_ms = rows.iter().map(|row| row.get::<_, Option<f64>>(11).unwrap_or(0.0)).collect();
        out.rows = rows.iter().map(|row| owner_row(row, region)).collect();
        Ok(out)
    }

    /// Writes the current state of NPCs `region` holds into their rows and the region's
    /// `tick` into `region_state`, all of one moment, in one fenced transaction. Returns how
    /// many rows matched (fewer than given: the world holds an NPC its region does not own);
    /// 0 and nothing written when a newer tick is already stored (an older sync that
    /// committed late).
    ///
    /// # Errors
    /// [`RegionError::Fenced`], [`RegionError::CommitUnknown`], [`RegionError::Db`].
    async fn sync_tx(
        &mut self,
        region: RegionId,
        epoch: Epoch,
        tick: u64,
        npcs: &[u64],
        position: &[[f32; 3]],
        velocity: &[[f32; 3]],
    ) -> Result<u64, RegionError> {
        let r = region_i32(region)?;
        let tick = i64::try_from(tick)
            .map_err(|_| RegionError::Invalid(format!("tick {tick} does not fit a bigint")))?;
        let ids = npcs.iter().map(|&n| npc_i64(n)).collect::<Result<Vec<_>, _>>()?;
        let col = |v: &[[f32; 3]], k: usize| v.iter().map(|p| p[k]).collect::<Vec<f32>>();
        let (x, y, z) = (col(position, 0), col(position, 1), col(position, 2));
        let (vx, vy, vz) = (col(velocity, 0), col(velocity, 1), col(velocity, 2));
        let tx = self.open_fenced(region, epoch, "sync").await?;
        // Locked until the commit: the region's two connections' syncs take turns here, and
        // one that finds a newer tick stored writes nothing (rows and tick never go back).
        let stored = tx
            .query_opt("SELECT tick FROM region_state WHERE region = $1 FOR UPDATE", &[&r])
            .await
            .map_err(db("sync"))?;
        if stored.is_some_and(|row| row.get::<_, i64>(0) > tick) {
            drop(tx.rollback().await);
            return Ok(0);
        }
        let n = tx
            .execute(
                "UPDATE npc_owners o SET x = s.x, y = s.y, z = s.z, vx = s.vx, vy = s.vy, vz = s.vz
                 FROM unnest($2::bigint[], $3::real[], $4::real[], $5::real[], $6::real[], $7::real[], $8::real[])
                      AS s(npc_id, x, y, z, vx, vy, vz)
                 WHERE o.npc_id = s.npc_id AND o.region = $1",
                &[&r, &ids, &x, &y, &z, &vx, &vy, &vz],
            )
            .await
            .map_err(db("sync"))?;
        tx.execute(
            "INSERT INTO region_state (region, tick, epoch, npcs, synced_at) VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (region) DO UPDATE
               SET tick = EXCLUDED.tick, epoch = EXCLUDED.epoch, npcs = EXCLUDED.npcs, synced_at = now()",
            &[&r, &tick, &epoch, &i64::try_from(n).unwrap_or(i64::MAX)],
        )
        .await
        .map_err(db("sync"))?;
        tx.commit().await.map_err(|source| RegionError::CommitUnknown { what: "sync", source })?;
        Ok(n)
    }

    /// Start-up: every row `region` owns (adopted or not), fenced; the ones not yet adopted
    /// (`adopted` false in what is returned, `latency_ms` how long they waited) are marked
    /// adopted in the same transaction, which also reads the region's tick as of its newest
    /// sync (`region_tick`, what the process resumes from).
    ///
    /// # Errors
    /// [`RegionError::Fenced`] (logged in `region_fence_log`), [`RegionError::CommitUnknown`],
    /// [`RegionError::Db`].
    pub async fn load(&mut self, region: RegionId, epoch: Epoch) -> Result<Adopted, RegionError> {
        let r = self.load_tx(region, epoch).await;
        self.logged(r, "load").await
    }

    /// Moves each NPC's row from `region` to its destination if it still is `(region, seq)`,
    /// with its state, and notifies the destinations; one fenced transaction. `queued` is how
    /// long each NPC has been out of any world (so `handed_at` is when it left).
    ///
    /// # Errors
    /// [`RegionError::Fenced`] (nothing moved, stop; logged), [`RegionError::CommitUnknown`]
    /// (read the rows back), [`RegionError::Db`] (rolled back: send again).
    pub async fn hand_off(
        &mut self,
        region: RegionId,
        epoch: Epoch,
        moves: &[Move<NpcState>],
        queued: &[Duration],
    ) -> Result<Vec<(u64, MoveResult)>, RegionError> {
        let r = self.hand_off_tx(region, epoch, moves, queued).await;
        self.logged(r, "hand-off").await
    }

    /// Up to `max` rows handed to `region` and not adopted yet, marked adopted; fenced.
    ///
    /// # Errors
    /// [`RegionError::Fenced`] (logged), [`RegionError::Db`]. A commit whose outcome is
    /// unknown still returns the rows (`commit_known` false).
    pub async fn adopt(&mut self, region: RegionId, epoch: Epoch, max: i64) -> Result<Adopted, RegionError> {
        let r = self.adopt_tx(region, epoch, max).await;
        self.logged(r, "adopt").await
    }

    /// Writes the current state of NPCs `region` holds into their rows and the region world's
    /// `tick` (what a restart resumes from) into `region_state`, all taken at one moment, in
    /// one fenced transaction. Returns how many rows matched (fewer than given: an NPC handed
    /// off meanwhile); 0, writing nothing, when a newer tick is already stored.
    ///
    /// # Errors
    /// [`RegionError::Fenced`] (logged), [`RegionError::CommitUnknown`], [`RegionError::Db`],
    /// [`RegionError::Invalid`] for a tick or an id that does not fit a bigint.
    pub async fn sync(
        &mut self,
        region: RegionId,
        epoch: Epoch,
        tick: u64,
        npcs: &[u64],
        position: &[[f32; 3]],
        velocity: &[[f32; 3]],
    ) -> Result<u64, RegionError> {
        let r = self.sync_tx(region, epoch, tick, npcs, position, velocity).await;
        self.logged(r, "sync").await
    }

    /// Administrative (a supervisor, not fenced): empties the region tables, then inserts one
    /// adopted row per NPC, in statements of at most 50,000 rows.
    ///
    /// # Errors
    /// [`RegionError::Db`], [`RegionError::Invalid`] for ids that don't fit.
    pub async fn seed(&mut self, rows: &[OwnerRow<NpcState>]) -> Result<(), RegionError> {
        let tx = self.client.transaction().await.map_err(db("seed"))?;
        tx.batch_execute("TRUNCATE npc_owners, region_leases, region_fence_log, region_state")
            .await
            .map_err(db("seed"))?;
        for chunk in rows.chunks(50_000) {
            let ids = chunk.iter().map(|r| npc_i64(r.npc)).collect::<Result<Vec<_>, _>>()?;
            let regions = chunk.iter().map(|r| region_i32(r.region)).collect::<Result<Vec<_>, _>>()?;
            let roles: Vec<&str> = chunk.iter().map(|r| r.state.role.as_str()).collect();
            let swarms: Vec<i64> = chunk.iter().map(|r| i64::from(r.state.swarm)).collect();
            let col = |k: usize| {
                chunk
                    .iter()
                    .map(|r| if k < 3 { r.state.position[k] } else { r.state.velocity[k - 3] })
                    .collect::<Vec<f32>>()
            };
            let (x, y, z, vx, vy, vz) = (col(0), col(1), col(2), col(3), col(4), col(5));
            tx.execute(
                "INSERT INTO npc_owners (npc_id, region, handoff_seq, adopted, role, swarm, x, y, z, vx, vy, vz)
                 SELECT id, region, 0, true, role, swarm, x, y, z, vx, vy, vz
                 FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::bigint[], $5::real[], $6::real[],
                             $7::real[], $8::real[], $9::real[], $10::real[])
                      AS s(id, region, role, swarm, x, y, z, vx, vy, vz)",
                &[&ids, &regions, &roles, &swarms, &x, &y, &z, &vx, &vy, &vz],
            )
            .await
            .map_err(db("seed"))?;
        }
        tx.commit().await.map_err(db("seed"))
    }

    /// Counts of the ownership table and the fence log (not fenced, reads only).
    ///
    /// # Errors
    /// [`RegionError::Db`].
    pub async fn summary(&self) -> Result<OwnershipSummary, RegionError> {
        let per_region = self
            .client
            .query("SELECT region, count(*) FROM npc_owners GROUP BY region ORDER BY region", &[])
            .await
            .map_err(db("summary"))?;
        let totals = self
            .client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE NOT adopted), coalesce(sum(handoff_seq), 0)::bigint,
                        (SELECT count(*) FROM region_fence_log)
                 FROM npc_owners",
                &[],
            )
            .await
            .map_err(db("summary"))?;
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(OwnershipSummary {
            rows: count(totals.get(0)),
            per_region: per_region.iter().map(|r| (region_of(r.get(0)), count(r.get(1)))).collect(),
            not_adopted: count(totals.get(1)),
            handoffs: count(totals.get(2)),
            fence_rejections: count(totals.get(3)),
        })
    }

    /// The NPC ids `region` owns, ascending (a supervisor's end check).
    ///
    /// # Errors
    /// [`RegionError::Db`].
    pub async fn owned_by(&self, region: RegionId) -> Result<Vec<u64>, RegionError> {
        let rows = self
            .client
            .query("SELECT npc_id FROM npc_owners WHERE region = $1 ORDER BY npc_id", &[&region_i32(region)?])
            .await
            .map_err(db("owned by"))?;
        Ok(rows.iter().map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)).collect())
    }

    /// The lease's epoch and whether it has expired (PostgreSQL's clock), if taken.
    ///
    /// # Errors
    /// [`RegionError::Db`].
    pub async fn lease(&self, region: RegionId) -> Result<Option<(Epoch, bool)>, RegionError> {
        let row = self
            .client
            .query_opt(
                "SELECT epoch, expires_at <= now() FROM region_leases WHERE region = $1",
                &[&region_i32(region)?],
            )
            .await
            .map_err(db("lease"))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }
}

fn owner_row(row: &tokio_postgres::Row, region: RegionId) -> OwnerRow<NpcState> {
    OwnerRow {
        npc: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        region,
        seq: row.get(1),
        adopted: row.get(2),
        state: NpcState {
            role: row.get(3),
            swarm: u32::try_from(row.get::<_, i64>(4)).unwrap_or(0),
            position: [row.get(5), row.get(6), row.get(7)],
            velocity: [row.get(8), row.get(9), row.get(10)],
        },
    }
}
