//! FileStore (SQLite) on a real file in a temporary directory: the same contract as PgStore
//! (exactly once per batch id, folding, reads, migrations), checkpoints, and the errors a
//! damaged file gives.
#![cfg(feature = "file-store")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{batch, event, metric, npc, position};
use terrarium_persistence::{
    BatchId, Checkpoint, EmbeddedConfig, FileStore, MemoryStore, NpcFilter, Page, Storage, StorageError,
    WriteBatch,
};

fn cfg(dir: &Path) -> EmbeddedConfig {
    EmbeddedConfig { path: dir.join("data").join("world.db"), ..Default::default() }
}

fn checkpoint(tick: u64, seq: u64, clean: bool) -> Checkpoint {
    Checkpoint { run: 7, seq, tick, clean, bytes: (0..10_000u32).map(|i| (i * tick as u32) as u8).collect() }
}

#[tokio::test]
async fn every_record_type_round_trips_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&cfg(dir.path())).await.unwrap();
    let npcs: Vec<_> = (1..=20).map(npc).collect();
    let positions: Vec<_> = (1..=20).flat_map(|id| (2..5).map(move |t| position(id, t))).collect();
    let first = WriteBatch { npcs: npcs.clone(), ..batch(1, 1) };
    let second = WriteBatch {
        positions: positions.clone(),
        metrics: vec![metric(1, "distance_travelled", 4), metric(2, "ore", 4)],
        events: vec![event(u64::MAX - 1, "npc_spawned", 3, 77, 2), event(11, "task_completed", 3, 77, 3)],
        removed: vec![20],
        ..batch(1, 2)
    };
    store.write(&[first, second]).await.unwrap();

    let mut want = npc(5);
    (want.x, want.y, want.z, want.updated_tick) = (position(5, 4).x, position(5, 4).y, position(5, 4).z, 4);
    assert_eq!(store.get_npc(5).await.unwrap(), Some(want.clone()));
    assert_eq!(store.get_npc(20).await.unwrap(), None, "removed");
    assert_eq!(store.get_npc(u64::MAX).await.unwrap(), None);
    let all = store.load_npcs().await.unwrap();
    assert_eq!(all.len(), 19);
    assert_eq!(all[4], want);
    assert_eq!(
        store.position_history(5, 0..100).await.unwrap(),
        (2..5).map(|t| position(5, t)).collect::<Vec<_>>()
    );
    assert_eq!(store.row_counts().await.unwrap(), [19, 60, 2, 2]);
    let m = store.metrics();
    assert_eq!((m.batches_applied, m.position_rows, m.npc_upserts, m.npc_removals), (2, 60, 19, 0));
    drop(store);

    // Everything is on disk: a new process (a new store) reads the same.
    let again = FileStore::open(&cfg(dir.path())).await.unwrap();
    assert_eq!(again.load_npcs().await.unwrap(), all);
    assert_eq!(again.applied_seq(1).await.unwrap(), Some(2));
    assert!(dir.path().join("data").join("world.db").exists());
}

#[tokio::test]
async fn a_retried_batch_lands_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&cfg(dir.path())).await.unwrap();
    let b = |seq| WriteBatch {
        positions: vec![position(1, seq), position(2, seq)],
        events: vec![event(seq, "moved", 1, 0, seq)],
        metrics: vec![metric(1, "steps", seq)],
        npcs: if seq == 1 { vec![npc(1), npc(2)] } else { vec![] },
        ..batch(7, seq)
    };
    store.write(&[b(1)]).await.unwrap();
    store.write(&[b(1)]).await.unwrap(); // a retry after a lost reply
    store.write(&[b(1), b(2), b(3)]).await.unwrap(); // a group overlapping what landed
    store.write(&[b(2)]).await.unwrap(); // an older batch of the same run
    let (four, again) = ([b(4)], [b(4)]);
    let (x, y) = tokio::join!(store.write(&four), store.write(&again));
    x.unwrap();
    y.unwrap();
    store.write(&[WriteBatch { positions: vec![position(1, 9)], ..batch(8, 1) }]).await.unwrap();
    let [_, positions, metrics, events] = store.row_counts().await.unwrap();
    assert_eq!((positions, events, metrics), (4 * 2 + 1, 4, 4));
    let m = store.metrics();
    assert_eq!((m.batches_applied, m.batches_skipped), (5, 4));
    assert_eq!(store.get_npc(1).await.unwrap().unwrap().updated_tick, 9);
}

#[tokio::test]
async fn a_failed_batch_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&cfg(dir.path())).await.unwrap();
    let bad = WriteBatch {
        positions: vec![position(1, 1), position(u64::MAX, 1)],
        npcs: vec![npc(1)],
        ..batch(1, 1)
    };
    let err = store.write(&[bad]).await.unwrap_err();
    assert!(matches!(err, StorageError::Rejected { .. }) && !err.is_transient(), "{err}");
    assert_eq!(store.row_counts().await.unwrap(), [0; 4]);
    store.write(&[WriteBatch { npcs: vec![npc(1)], ..batch(1, 1) }]).await.unwrap();
    assert_eq!(store.row_counts().await.unwrap()[0], 1);
}

#[tokio::test]
async fn pages_match_the_memory_store_for_every_filter() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&cfg(dir.path())).await.unwrap();
    let mem = MemoryStore::default();
    let write = WriteBatch { npcs: (1..=333).map(npc).collect(), ..batch(1, 1) };
    store.write(std::slice::from_ref(&write)).await.unwrap();
    mem.write(&[write]).await.unwrap();
    let filters = [
        NpcFilter::default(),
        NpcFilter { status: Some("idle".into()), ..Default::default() },
        NpcFilter { role: Some("guard".into()), ..Default::default() },
        NpcFilter { swarm: Some(3), ..Default::default() },
        NpcFilter { swarm: Some(1), status: Some("moving".into()), role: Some("trader".into()) },
        NpcFilter { status: Some("nobody has this".into()), ..Default::default() },
    ];
    for filter in &filters {
        let mut page = Page::first(37);
        loop {
            let (a, b) =
                (store.list_npcs(filter, page).await.unwrap(), mem.list_npcs(filter, page).await.unwrap());
            assert_eq!(a, b, "{filter:?} {page:?}");
            match a.next {
                Some(after) => page = Page { after: Some(after), limit: 37 },
                None => break,
            }
        }
    }
}

#[tokio::test]
async fn checkpoints_keep_the_newest_and_resume_reads_what_came_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&cfg(dir.path())).await.unwrap();
    assert!(store.resume_point().await.unwrap().is_none(), "an empty store holds no world");
    store.write(&[WriteBatch { npcs: (1..=5).map(npc).collect(), ..batch(7, 1) }]).await.unwrap();
    for (tick, seq) in [(10, 1), (20, 1), (30, 1)] {
        store.save_checkpoint(checkpoint(tick, seq, false), 2).await.unwrap();
    }
    // After the checkpoint: NPC 2 moved, NPC 3 removed, NPC 9 spawned.
    store
        .write(&[WriteBatch {
            positions: vec![position(2, 35)],
            npcs: vec![common::npc(9)]
                .into_iter()
                .map(|mut r| {
                    r.updated_tick = 36;
                    r
                })
                .collect(),
            removed: vec![3],
            ..batch(7, 2)
        }])
        .await
        .unwrap();
    let p = store.resume_point().await.unwrap().unwrap();
    assert_eq!(p.checkpoint, checkpoint(30, 1, false));
    assert!(p.batches_committed);
    assert_eq!(p.ids, [1, 2, 4, 5, 9]);
    assert_eq!(p.newer.iter().map(|r| (r.id, r.updated_tick)).collect::<Vec<_>>(), [(2, 35), (9, 36)]);
    // Only the newest two are kept; a checkpoint of an older tick written late is not "latest".
    store.save_checkpoint(checkpoint(25, 1, true), 2).await.unwrap();
    assert_eq!(store.latest_checkpoint().await.unwrap().unwrap().tick, 30);
    drop(store);
    let sql = rusqlite::Connection::open(dir.path().join("data").join("world.db")).unwrap();
    let ticks: Vec<i64> = sql
        .prepare("SELECT tick FROM checkpoints ORDER BY tick")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ticks, [25, 30]);
}

#[tokio::test]
async fn a_checkpoint_that_fails_its_checksum_is_a_typed_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = FileStore::open(&c).await.unwrap();
    store.save_checkpoint(checkpoint(10, 0, true), 2).await.unwrap();
    drop(store);
    let sql = rusqlite::Connection::open(&c.path).unwrap();
    // One byte flipped in place (the size is right, the checksum is not).
    sql.execute("UPDATE checkpoints SET bytes = CAST(zeroblob(10000) AS BLOB)", []).unwrap();
    drop(sql);
    let store = FileStore::open(&c).await.unwrap();
    let err = store.resume_point().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(text.contains("world.db") && text.contains("checksum"), "{text}");
}

#[tokio::test]
async fn a_damaged_or_truncated_file_is_a_typed_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = FileStore::open(&c).await.unwrap();
    let big = WriteBatch { npcs: (1..=5000).map(npc).collect(), ..batch(1, 1) };
    store.write(&[big]).await.unwrap();
    store.save_checkpoint(checkpoint(10, 1, true), 2).await.unwrap();
    drop(store);
    let bytes = std::fs::read(&c.path).unwrap();
    assert!(bytes.len() > 64 * 1024, "{} bytes", bytes.len());

    // Truncated to half.
    std::fs::write(&c.path, &bytes[..bytes.len() / 2]).unwrap();
    let err = FileStore::open(&c).await.unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("world.db") && err.to_string().contains("truncated"), "{err}");

    // Not a database at all.
    std::fs::write(
        &c.path,
        b"this is not a database, it is a text file with enough bytes to hold a header......",
    )
    .unwrap();
    let err = FileStore::open(&c).await.unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }) && err.to_string().contains("world.db"), "{err}");

    // Pages overwritten in the middle (the header intact): SQLite's own checks find it.
    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid..mid + 8192].fill(0xA5);
    std::fs::write(&c.path, &damaged).unwrap();
    let found = match FileStore::open(&c).await {
        Err(e) => Some(e),
        Ok(store) => match store.load_npcs().await {
            Err(e) => Some(e),
            Ok(_) => store.resume_point().await.err(),
        },
    };
    let err = found.expect("damage in the middle of the file goes unnoticed");
    assert!(matches!(err, StorageError::Corrupt { .. }) && err.to_string().contains("world.db"), "{err:?}");
}

#[tokio::test]
async fn a_newer_schema_or_an_edited_migration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    drop(FileStore::open(&c).await.unwrap());
    let sql = rusqlite::Connection::open(&c.path).unwrap();
    sql.execute("UPDATE schema_migrations SET checksum = checksum + 1 WHERE version = 1", []).unwrap();
    let err = FileStore::open(&c).await.unwrap_err();
    assert!(format!("{err:?}").contains("changed"), "{err:?}");
    sql.execute("UPDATE schema_migrations SET checksum = checksum - 1 WHERE version = 1", []).unwrap();
    sql.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0, 0)", []).unwrap();
    let err = FileStore::open(&c).await.unwrap_err();
    assert!(format!("{err:?}").contains("newer than this build"), "{err:?}");
}

#[tokio::test]
async fn wipe_forgets_the_world() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = FileStore::open(&c).await.unwrap();
    store.write(&[WriteBatch { npcs: vec![npc(1)], ..batch(1, 1) }]).await.unwrap();
    // Rows and no checkpoint: not an empty store, a world that can't be resumed (typed, naming
    // the file).
    let err = store.resume_point().await.unwrap_err();
    assert!(
        matches!(err, StorageError::NoCheckpoint { npcs: 1, batches: 1, .. })
            && err.to_string().contains(&c.path.display().to_string()),
        "{err}"
    );
    store.save_checkpoint(checkpoint(1, 1, true), 2).await.unwrap();
    store.wipe().await.unwrap();
    assert!(store.resume_point().await.unwrap().is_none());
    assert_eq!(store.row_counts().await.unwrap(), [0; 4]);
    assert_eq!(store.applied_seq(1).await.unwrap(), None);
    let _ = (BatchId::default(), common::service_url);
}

/// The same batches into the embedded store and `MemoryStore` give the same NPCs.
async fn same_as_memory(store: &FileStore, batches: &[WriteBatch]) {
    let memory = MemoryStore::default();
    for b in batches {
        store.write(std::slice::from_ref(b)).await.unwrap();
        memory.write(std::slice::from_ref(b)).await.unwrap();
    }
    let (got, want) = (store.load_npcs().await.unwrap(), memory.load_npcs().await.unwrap());
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
}

#[tokio::test]
async fn positions_live_in_blocks_and_never_rewrite_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&cfg(dir.path())).await.unwrap();
    // 200 NPCs: blocks 0 to 3. A spawn, then moves, a removal, a move older than what is
    // stored, and a spawn after its first position.
    let spawn = WriteBatch {
        npcs: (1..=200).map(npc).collect(),
        positions: (1..=200).map(|id| position(id, 1)).collect(),
        ..batch(1, 1)
    };
    let moves = WriteBatch { positions: (1..=200).map(|id| position(id, 5)).collect(), ..batch(1, 2) };
    let gone = WriteBatch { removed: vec![70, 128], positions: vec![position(71, 6)], ..batch(1, 3) };
    let early = WriteBatch { positions: vec![position(300, 7)], ..batch(1, 4) };
    let late = WriteBatch { npcs: vec![npc(300)], ..batch(1, 5) };
    same_as_memory(&store, &[spawn, moves, gone, early, late]).await;
    // Across calls the newer tick wins (as in PostgreSQL; MemoryStore keeps the last written).
    store.write(&[WriteBatch { positions: vec![position(5, 3)], ..batch(1, 6) }]).await.unwrap();
    assert_eq!(store.get_npc(5).await.unwrap().unwrap().updated_tick, 5, "an older position does not win");
    assert_eq!(store.get_npc(71).await.unwrap().unwrap().x, position(71, 6).x);
    assert_eq!(store.get_npc(70).await.unwrap(), None);

    let sql = rusqlite::Connection::open(&cfg(dir.path()).path).unwrap();
    // The registry keeps the position of its last write (the spawn's), the blocks the newest.
    let (x, tick): (f64, i64) = sql
        .query_row("SELECT x, updated_tick FROM npcs WHERE id = 5", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!((x as f32, tick), (npc(5).x, npc(5).updated_tick as i64));
    let blocks: Vec<(i64, i64)> = sql
        .prepare("SELECT block, length(ids) / 8 FROM position_blocks ORDER BY block")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Block 0: ids 1..=63; 1: 64..=127 less 70; 2: 129..=191 (128 removed); 3: 192..=200; 4: 300.
    assert_eq!(blocks, vec![(0, 63), (1, 63), (2, 63), (3, 9), (4, 1)]);
    // History: one row per block and flush tick.
    let [_, positions, ..] = store.row_counts().await.unwrap();
    assert_eq!(positions, 200 + 200 + 1 + 1 + 1);
    assert_eq!(
        store.position_history(71, 0..100).await.unwrap(),
        vec![position(71, 1), position(71, 5), position(71, 6)]
    );
}

#[tokio::test]
async fn the_sql_views_decode_the_blocks_as_the_store_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&cfg(dir.path())).await.unwrap();
    // Ids over several blocks, a removal, positions of every sign and size, a registry row
    // newer than its block's position, an NPC with a registry row only.
    let spread = |id: u64, t: u64| {
        let f = id as f32;
        terrarium_persistence::PositionRow {
            npc_id: id,
            tick: t,
            x: f * 37.25 - 2000.0,
            y: (f * 0.001).powi(3) - 1e-7,
            z: f * f * 1e-3 + 3.0e9,
        }
    };
    let spawn = WriteBatch { npcs: (1..=300).map(npc).collect(), ..batch(1, 1) };
    let moves = WriteBatch { positions: (1..=290).map(|id| spread(id, 50)).collect(), ..batch(1, 2) };
    let gone = WriteBatch { removed: vec![7, 128], ..batch(1, 3) };
    let newer = WriteBatch {
        npcs: vec![terrarium_persistence::NpcRecord { updated_tick: 60, ..npc(11) }],
        ..batch(1, 4)
    };
    store.write(&[spawn, moves, gone, newer]).await.unwrap();
    let want = store.load_npcs().await.unwrap();
    assert_eq!(want.len(), 298);
    drop(store);

    let sql = rusqlite::Connection::open(&cfg(dir.path()).path).unwrap();
    let got: Vec<(u64, f32, f32, f32, u64)> = sql
        .prepare("SELECT id, x, y, z, updated_tick FROM npcs_now ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, f64>(1)? as f32,
                r.get::<_, f64>(2)? as f32,
                r.get::<_, f64>(3)? as f32,
                r.get(4)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let want: Vec<_> = want.iter().map(|n| (n.id, n.x, n.y, n.z, n.updated_tick)).collect();
    assert_eq!(got, want);
    // Bit for bit: the view's value converts back to the f32 that was stored.
    let (x, tick): (f64, i64) = sql
        .query_row("SELECT x, tick FROM npc_current_positions WHERE npc_id = 200", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(((x as f32).to_bits(), tick), (spread(200, 50).x.to_bits(), 50));
    let current: i64 = sql.query_row("SELECT count(*) FROM npc_current_positions", [], |r| r.get(0)).unwrap();
    assert_eq!(current, 290 - 2);
}

#[tokio::test]
async fn a_version_1_database_is_converted_to_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    std::fs::create_dir_all(c.path.parent().unwrap()).unwrap();
    {
        // A database as the V1 build left it.
        let sql = rusqlite::Connection::open(&c.path).unwrap();
        let v1 = include_str!("../src/file/migrations/V1__initial.sql");
        sql.execute_batch(v1).unwrap();
        sql.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, \
             checksum INTEGER NOT NULL, applied_at INTEGER NOT NULL)",
        )
        .unwrap();
        let sum = terrarium_codec::checksum(v1.as_bytes()) as i64;
        sql.execute("INSERT INTO schema_migrations VALUES (1, 'initial', ?1, 0)", [sum]).unwrap();
        for id in [3i64, 64, 65] {
            sql.execute(
                "INSERT INTO npcs VALUES (?1, 'miner', 'idle', 0, 0, ?2, 1.5, 2.5, 10, x'00', 9)",
                rusqlite::params![id, id as f64],
            )
            .unwrap();
        }
        let day_ms = 86_400_000i64;
        for (id, tick, at) in
            [(3i64, 8i64, day_ms * 5), (3, 9, day_ms * 6 + 1), (64, 9, day_ms * 6), (64, 9, day_ms * 6)]
        {
            sql.execute(
                "INSERT INTO npc_positions VALUES (?1, ?2, ?3, 0.5, 0.25, ?4)",
                rusqlite::params![id, tick, tick as f64, at],
            )
            .unwrap();
        }
    }
    let store = FileStore::open(&c).await.unwrap();
    let three = store.get_npc(3).await.unwrap().unwrap();
    assert_eq!((three.x, three.y, three.z, three.updated_tick), (3.0, 1.5, 2.5, 9));
    assert_eq!(store.load_npcs().await.unwrap().len(), 3);
    let track = store.position_history(3, 0..100).await.unwrap();
    assert_eq!(track.iter().map(|p| (p.tick, p.x)).collect::<Vec<_>>(), vec![(8, 8.0), (9, 9.0)]);
    assert_eq!(store.position_history(64, 0..100).await.unwrap().len(), 1, "a duplicate V1 row is one");
    drop(store);
    let sql = rusqlite::Connection::open(&c.path).unwrap();
    let tables: Vec<String> = sql
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'position%' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(tables, ["position_blocks", "position_history_d5", "position_history_d6"]);
    let old: i64 = sql
        .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'npc_positions'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(old, 0);
}

#[tokio::test]
async fn retention_drops_whole_day_tables() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = FileStore::open(&c).await.unwrap();
    store
        .write(&[WriteBatch { positions: vec![position(1, 5), position(2, 5)], ..batch(1, 1) }])
        .await
        .unwrap();
    {
        // A day table from 1970 with a row in it.
        let sql = rusqlite::Connection::open(&c.path).unwrap();
        sql.execute_batch(
            "CREATE TABLE position_history_d3 (block INTEGER NOT NULL, tick INTEGER NOT NULL, ids BLOB NOT NULL, \
             xyz BLOB NOT NULL, recorded_at INTEGER NOT NULL); \
             INSERT INTO position_history_d3 VALUES (0, 1, zeroblob(16), zeroblob(24), 259200000);",
        )
        .unwrap();
    }
    assert_eq!(store.row_counts().await.unwrap()[1], 4);
    let deleted = store.purge_older_than(Duration::from_secs(3600), 1000).await.unwrap();
    assert_eq!(deleted, 2, "the old table's two positions");
    assert_eq!(store.row_counts().await.unwrap()[1], 2, "today's stay");
    let sql = rusqlite::Connection::open(&c.path).unwrap();
    let old: i64 = sql
        .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'position_history_d3'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(old, 0, "dropped whole");
}

#[tokio::test]
async fn a_thousand_sample_track_reads_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&cfg(dir.path())).await.unwrap();
    let n = 2_000u64;
    // 1000 flushes of every NPC, written 100 batches per call (a write-behind catching up).
    for call in 0..10u64 {
        let group: Vec<WriteBatch> = (1..=100u64)
            .map(|k| {
                let t = call * 100 + k;
                WriteBatch {
                    npcs: if t == 1 { (1..=n).map(npc).collect() } else { vec![] },
                    positions: (1..=n).map(|id| position(id, t)).collect(),
                    ..batch(9, t)
                }
            })
            .collect();
        store.write(&group).await.unwrap();
    }
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let track = store.position_history(1234, 0..2000).await.unwrap();
        best = best.min(t.elapsed());
        assert_eq!(track.len(), 1000);
        assert_eq!(track[999], position(1234, 1000));
    }
    eprintln!("embedded: 1000-sample track of one NPC among {n}: {best:?}");
    assert!(best < Duration::from_millis(500), "{best:?}");
}
