//! Writes the outbox fuzzer's seeds (`fuzz/seeds/outbox/`): run by hand after a format change,
//! `cargo test -p terrarium-persistence --features testing --test fuzz_seeds -- --ignored`.

use terrarium_persistence::testing::{npc, write_outbox};
use terrarium_persistence::{BatchId, EntityKind, EventRow, MetricRow, PositionRow, WriteBatch};

#[test]
#[ignore = "writes files under fuzz/seeds; run by hand after a format change"]
fn write_outbox_seeds() {
    let batch = |seq: u64| WriteBatch {
        id: BatchId { run: 7, seq },
        tick: seq * 10,
        positions: vec![PositionRow { npc_id: 1, tick: seq * 10, x: 1.5, y: 2.0, z: 3.25 }],
        metrics: vec![MetricRow {
            entity_kind: EntityKind::Npc,
            entity_id: 1,
            name: "distance_travelled".into(),
            tick: seq * 10,
            value: 4.5,
            samples: 3,
        }],
        events: vec![EventRow {
            event_id: seq,
            correlation_id: 1,
            event_type: "npc_spawned".into(),
            entity_kind: EntityKind::Npc,
            entity_id: 1,
            tick: seq * 10,
            time_ms: seq * 500,
            payload: vec![1, 2, 3],
            compressed: false,
            count: 1,
        }],
        npcs: vec![npc(1, 2)],
        removed: vec![9],
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/outbox");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("two_batches");
    let _ = std::fs::remove_file(&path);
    write_outbox(&path, &[batch(1), batch(2)], 1 << 20).unwrap();
    std::fs::write(dir.join("one_batch.payload"), terrarium_codec::encode(&batch(3)).unwrap()).unwrap();
}
