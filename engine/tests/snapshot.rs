//! Snapshots: round trip, and every way a file can be bad.

use terrarium_engine::{
    Engine, EngineConfig, EngineError, ItemKind, NpcSpec, Order, Position, Role, SnapshotError, Velocity,
};

fn world() -> Engine {
    let mut e =
        Engine::builder(EngineConfig { seed: 11, threads: 1, ..EngineConfig::default() }).build().unwrap();
    let ids: Vec<_> = e
        .spawn_batch((0..500).map(|i| {
            let mut s = NpcSpec::new(Role::BUILT_IN[i % 5], Position::new(i as f32, 1.0, 2.0 * i as f32))
                .moving(Velocity::new(0.5, 0.0, -0.25))
                .in_swarm((i % 7) as u32);
            s.inventory.add(ItemKind(3), (i % 70) as u16);
            if i % 10 == 0 { s.as_agent() } else { s }
        }))
        .collect();
    e.command_sender()
        .send(terrarium_engine::Command::Order {
            id: ids[1],
            order: Order::MoveTo(Position::new(50.0, 0.0, 50.0)),
        })
        .unwrap();
    e.run_ticks(3);
    e
}

fn bytes(e: &mut Engine) -> Vec<u8> {
    let mut out = Vec::new();
    let n = e.save_snapshot(&mut out).unwrap();
    assert_eq!(n, out.len() as u64);
    out
}

fn load(bytes: &[u8]) -> Result<Engine, EngineError> {
    Engine::builder(EngineConfig::default()).build_from_snapshot(&mut &bytes[..])
}

fn snapshot_error(bytes: &[u8]) -> SnapshotError {
    match load(bytes) {
        Err(EngineError::Snapshot(e)) => e,
        Err(other) => panic!("expected a snapshot error, got {other}"),
        Ok(_) => panic!("a bad snapshot loaded"),
    }
}

#[test]
fn round_trip_keeps_world_hash_clock_and_ids() {
    let mut e = world();
    let b = bytes(&mut e);
    let mut back = load(&b).unwrap();
    assert_eq!(back.world_hash(), e.world_hash());
    assert_eq!(back.clock(), e.clock());
    assert_eq!(back.npc_count(), 500);
    assert_eq!(back.agent_count(), 50);
    assert_eq!(back.next_npc_id(), e.next_npc_id());
    assert_eq!(bytes(&mut back), b, "saving a loaded world gives the same bytes");
}

#[test]
fn corrupted_payload_is_detected() {
    let mut b = bytes(&mut world());
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    assert!(matches!(snapshot_error(&b), SnapshotError::Corrupted { .. }));
}

#[test]
fn truncated_files_are_detected() {
    let b = bytes(&mut world());
    for cut in [0, 1, 20, 31, 32, 33, b.len() / 2, b.len() - 1] {
        assert!(matches!(snapshot_error(&b[..cut]), SnapshotError::Truncated { .. }), "cut at {cut}");
    }
}

#[test]
fn wrong_version_and_wrong_magic_are_detected() {
    let mut b = bytes(&mut world());
    b[8..12].copy_from_slice(&99u32.to_le_bytes());
    assert!(matches!(snapshot_error(&b), SnapshotError::UnsupportedVersion { found: 99, .. }));
    let mut b = bytes(&mut world());
    b[..8].copy_from_slice(b"NOTASNAP");
    assert!(matches!(snapshot_error(&b), SnapshotError::BadMagic { .. }));
}

#[test]
fn oversized_payload_is_refused_before_reading_it() {
    let b = bytes(&mut world());
    let mut cfg = EngineConfig::default();
    cfg.snapshot.max_bytes = 1024;
    match Engine::builder(cfg).build_from_snapshot(&mut &b[..]) {
        Err(EngineError::Snapshot(SnapshotError::TooLarge { limit: 1024, .. })) => {}
        other => panic!("expected TooLarge, got {:?}", other.err()),
    }
}

#[test]
fn a_valid_frame_with_a_garbage_payload_is_a_decode_error() {
    let mut b = Vec::new();
    terrarium_codec::write_frame(
        &mut b,
        terrarium_engine::snapshot::MAGIC,
        terrarium_engine::snapshot::FORMAT_VERSION,
        &[7u8; 100],
    )
    .unwrap();
    assert!(matches!(snapshot_error(&b), SnapshotError::Decode(_)));
}

#[test]
fn errors_read_well() {
    let b = bytes(&mut world());
    let msg = snapshot_error(&b[..b.len() - 10]).to_string();
    assert!(msg.starts_with("snapshot truncated"), "{msg}");
}
