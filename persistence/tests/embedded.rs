//! FileStore (SQLite) on a real file in a temporary directory: the same contract as PgStore
//! (exactly once per batch id, folding, reads, migrations), checkpoints, and the errors a
//! damaged file gives.
#![cfg(feature = "file-store")]

mod common;

use std::path::Path;

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
    let store = FileStore::open(&cfg(dir.path())).await.unwrap();
    store.write(&[WriteBatch { npcs: vec![npc(1)], ..batch(1, 1) }]).await.unwrap();
    store.save_checkpoint(checkpoint(1, 1, true), 2).await.unwrap();
    store.wipe().await.unwrap();
    assert!(store.resume_point().await.unwrap().is_none());
    assert_eq!(store.row_counts().await.unwrap(), [0; 4]);
    assert_eq!(store.applied_seq(1).await.unwrap(), None);
    let _ = (BatchId::default(), common::service_url);
}
