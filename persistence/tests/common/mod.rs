//! Shared by the service tests: how they find their servers, name their schemas and key
//! prefixes, and build records.
#![allow(dead_code, unused_imports, reason = "each test binary uses a different part of this module")]

use terrarium_persistence::{BatchId, EntityKind, EventRow, MetricRow, NpcRecord, PositionRow, WriteBatch};

pub use terrarium_persistence::testing::{service_url, unique_name};

/// A varied NPC.
pub fn npc(id: u64) -> NpcRecord {
    NpcRecord {
        id,
        role: ["miner", "guard", "trader"][(id % 3) as usize].into(),
        status: ["idle", "moving", "working", "fleeing"][(id % 4) as usize].into(),
        swarm: (id % 5) as u32,
        agent: id.is_multiple_of(7),
        x: id as f32 * 0.5,
        y: 64.0,
        z: -(id as f32),
        health: (id % 100) as u16 + 1,
        inventory: (0..(id % 4) as u16).map(|k| (k + 1, (id % 60) as u16)).collect(),
        updated_tick: 1,
    }
}

pub fn position(npc_id: u64, tick: u64) -> PositionRow {
    PositionRow { npc_id, tick, x: npc_id as f32 + tick as f32, y: 64.5, z: tick as f32 * 0.25 }
}

pub fn metric(entity_id: u64, name: &str, tick: u64) -> MetricRow {
    MetricRow {
        entity_kind: EntityKind::Npc,
        entity_id,
        name: name.into(),
        tick,
        value: tick as f64 * 1.5,
        samples: 3,
    }
}

pub fn event(event_id: u64, kind: &str, entity_id: u64, correlation_id: u64, tick: u64) -> EventRow {
    EventRow {
        event_id,
        correlation_id,
        event_type: kind.into(),
        entity_kind: EntityKind::Npc,
        entity_id,
        tick,
        time_ms: tick * 50,
        payload: vec![1, 2, 3, (event_id % 256) as u8],
        compressed: event_id.is_multiple_of(2),
        count: 1,
    }
}

pub fn batch(run: u64, seq: u64) -> WriteBatch {
    WriteBatch { id: BatchId { run, seq }, tick: seq, ..Default::default() }
}

/// A PostgreSQL store in a schema of its own, dropped when the guard goes (also when the test
/// panics).
#[cfg(feature = "postgres")]
pub struct PgSchema {
    pub store: terrarium_persistence::PgStore,
    pub url: String,
}

#[cfg(feature = "postgres")]
impl PgSchema {
    pub async fn new(url: &str) -> Self {
        Self::with(url, |_| {}).await
    }

    pub async fn with(url: &str, tweak: impl FnOnce(&mut terrarium_persistence::PostgresConfig)) -> Self {
        let mut cfg = terrarium_persistence::PostgresConfig {
            url: url.into(),
            schema: unique_name(),
            min_size: 1,
            max_size: 8,
            ..Default::default()
        };
        tweak(&mut cfg);
        Self { store: terrarium_persistence::PgStore::connect(&cfg).await.unwrap(), url: url.into() }
    }
}

#[cfg(feature = "postgres")]
impl Drop for PgSchema {
    fn drop(&mut self) {
        // Drop can't await, and the store's pooled connections are driven by the test's runtime,
        // which is blocked here: use a fresh connection on a thread with its own runtime.
        let (url, schema) = (self.url.clone(), self.store.schema().to_string());
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                // A test that failed mid-transaction may leave a pooled session holding locks in
                // the schema, and its runtime is blocked in this drop: end those sessions.
                client
                    .execute(
                        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
                         JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()",
                        &[&schema],
                    )
                    .await?;
                // `schema` came from unique_name(): a plain identifier.
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop schema {}: {dropped:?}", self.store.schema());
        }
    }
}

/// A plain client for checks the store's API does not offer, with `search_path` set to `schema`.
#[cfg(feature = "postgres")]
pub async fn sql_client(url: &str, schema: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("SET search_path TO {schema}")).await.unwrap();
    client
}
