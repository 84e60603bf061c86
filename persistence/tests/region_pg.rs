//! The region tables against a real PostgreSQL (`TERRARIUM_TEST_PG_URL`): leases and their
//! expiry on PostgreSQL's clock, the fence refusing a process whose lease was taken, a
//! hand-off applied exactly once even when it is sent again or its connection dies at
//! `COMMIT`, and the region's tick stored with
//! its syncs (what a restart resumes from). Each test owns a schema.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use common::{PgSchema, service_url};
use terrarium_persistence::PostgresConfig;
use terrarium_persistence::region::{
    Move, MoveResult, NpcState, OwnerRow, RegionCore, RegionError, RegionId, RegionStore,
};

const PG: &str = "TERRARIUM_TEST_PG_URL";
const A: RegionId = RegionId(0);
const B: RegionId = RegionId(1);

fn state(x: f32) -> NpcState {
    NpcState { role: "scout".into(), swarm: 0, position: [x, 0.0, 1.0], velocity: [1.0, 0.0, 0.0] }
}

fn row(npc: u64, region: RegionId) -> OwnerRow<NpcState> {
    OwnerRow { npc, region, seq: 0, adopted: true, state: state(npc as f32) }
}

async fn store(schema: &PgSchema) -> RegionStore {
    let cfg = PostgresConfig {
        url: schema.url.clone(),
        schema: schema.store.schema().to_owned(),
        ..Default::default()
    };
    RegionStore::connect(&cfg).await.unwrap()
}

#[tokio::test]
async fn a_lease_is_taken_once_renewed_and_taken_over_only_after_it_expires() {
    let Some(url) = service_url(PG) else { return };
    let schema = PgSchema::new(&url).await;
    let (one, two) = (store(&schema).await, store(&schema).await);
    let ttl = Duration::from_millis(600);
    let e1 = one.take_lease(A, "one", ttl).await.unwrap().expect("a free lease is taken");
    assert_eq!(two.take_lease(A, "two", ttl).await.unwrap(), None, "a running lease is refused");
    // Renewing keeps it past its first expiry.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        one.renew(A, e1, ttl).await.unwrap();
        assert_eq!(two.take_lease(A, "two", ttl).await.unwrap(), None);
    }
    // Left to expire (PostgreSQL's clock), it is taken with a higher epoch.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(one.lease(A).await.unwrap(), Some((e1, true)));
    let e2 = two.take_lease(A, "two", ttl).await.unwrap().expect("an expired lease is taken");
    assert!(e2 > e1);
    // The old holder's renewal is refused and logged.
    let err = one.renew(A, e1, ttl).await.unwrap_err();
    assert!(
        matches!(err, RegionError::Fenced { epoch, current: Some(c), .. } if epoch == e1 && c == e2),
        "{err:?}"
    );
    assert_eq!(two.summary().await.unwrap().fence_rejections, 1);
    // Other regions' leases are their own.
    assert!(one.take_lease(B, "one", ttl).await.unwrap().is_some());
}

#[tokio::test]
async fn a_zombie_write_is_refused_after_another_process_took_the_lease() {
    let Some(url) = service_url(PG) else { return };
    let schema = PgSchema::new(&url).await;
    let (mut zombie, mut fresh) = (store(&schema).await, store(&schema).await);
    zombie.seed(&[row(1, A), row(2, A), row(3, B)]).await.unwrap();
    let ttl = Duration::from_millis(300);
    let old = zombie.take_lease(A, "zombie", ttl).await.unwrap().unwrap();
    assert_eq!(zombie.load(A, old).await.unwrap().rows.len(), 2);
    // The zombie is "frozen" past its lease; a new process takes the region over.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = fresh.take_lease(A, "fresh", ttl).await.unwrap().unwrap();
    assert_eq!(fresh.load(A, new).await.unwrap().rows.len(), 2);
    // Thawed, every write it tries is refused and changes nothing.
    let mv = Move { npc: 1, from: A, to: B, seq: 0, state: state(99.0) };
    let err = zombie.hand_off(A, old, std::slice::from_ref(&mv), &[Duration::ZERO]).await.unwrap_err();
    assert!(err.is_fenced(), "{err:?}");
    let err = zombie.sync(A, old, 1_000, &[1, 2], &[[5.0; 3]; 2], &[[0.0; 3]; 2]).await.unwrap_err();
    assert!(err.is_fenced(), "{err:?}");
    assert!(zombie.adopt(A, old, 100).await.unwrap_err().is_fenced());
    assert!(zombie.load(A, old).await.unwrap_err().is_fenced());
    assert_eq!(fresh.read_owners(&[1]).await.unwrap(), vec![(1, Some((A, 0)))], "the row did not move");
    let loaded = fresh.load(A, new).await.unwrap();
    assert_eq!(loaded.rows[0].state.position, [1.0, 0.0, 1.0], "the zombie's sync did not land");
    assert_eq!(loaded.region_tick, None, "nor did its tick");
    assert_eq!(fresh.summary().await.unwrap().fence_rejections, 4);
    // The rightful holder writes.
    assert_eq!(fresh.sync(A, new, 7, &[1, 2], &[[5.0; 3]; 2], &[[0.0; 3]; 2]).await.unwrap(), 2);
    assert_eq!(fresh.load(A, new).await.unwrap().region_tick, Some(7));
}

#[tokio::test]
async fn a_sync_stores_the_region_tick_with_its_rows_and_an_older_sync_never_overwrites_it() {
    let Some(url) = service_url(PG) else { return };
    let schema = PgSchema::new(&url).await;
    let (mut one, mut two) = (store(&schema).await, store(&schema).await);
    one.seed(&[row(1, A), row(2, A), row(3, B)]).await.unwrap();
    let ttl = Duration::from_millis(300);
    let e1 = one.take_lease(A, "one", ttl).await.unwrap().unwrap();
    assert_eq!(one.load(A, e1).await.unwrap().region_tick, None, "a new world has no tick stored");
    // Two syncs of one process (its two connections): the newer tick commits first.
    assert_eq!(one.sync(A, e1, 40, &[1, 2], &[[4.0; 3]; 2], &[[0.0; 3]; 2]).await.unwrap(), 2);
    assert_eq!(two.sync(A, e1, 30, &[1, 2], &[[3.0; 3]; 2], &[[0.0; 3]; 2]).await.unwrap(), 0);
    let loaded = one.load(A, e1).await.unwrap();
    assert_eq!(loaded.region_tick, Some(40), "the older sync wrote nothing");
    assert!(loaded.rows.iter().all(|r| r.state.position == [4.0; 3]), "rows and tick of one moment");
    // Another region's tick is its own.
    let eb = two.take_lease(B, "b", ttl).await.unwrap().unwrap();
    assert_eq!(two.load(B, eb).await.unwrap().region_tick, None);
    // Killed (no more renewals): the next holder resumes from tick 40, and its own syncs go on.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let e2 = two.take_lease(A, "two", ttl).await.unwrap().unwrap();
    let resumed = two.load(A, e2).await.unwrap();
    assert_eq!((resumed.region_tick, resumed.rows.len()), (Some(40), 2));
    assert_eq!(two.sync(A, e2, 41, &[1, 2], &[[5.0; 3]; 2], &[[0.0; 3]; 2]).await.unwrap(), 2);
    // The old holder's sync, even of a later tick, is fenced and changes nothing.
    assert!(one.sync(A, e1, 1_000, &[1, 2], &[[9.0; 3]; 2], &[[0.0; 3]; 2]).await.unwrap_err().is_fenced());
    let after = two.load(A, e2).await.unwrap();
    assert_eq!(after.region_tick, Some(41));
    assert!(after.rows.iter().all(|r| r.state.position == [5.0; 3]));
}

#[tokio::test]
async fn a_hand_off_moves_once_even_when_sent_again_and_is_adopted_once() {
    let Some(url) = service_url(PG) else { return };
    let schema = PgSchema::new(&url).await;
    let (mut src, mut dst) = (store(&schema).await, store(&schema).await);
    src.seed(&[row(1, A), row(2, A), row(3, B)]).await.unwrap();
    let ttl = Duration::from_secs(30);
    let (ea, eb) = (
        src.take_lease(A, "a", ttl).await.unwrap().unwrap(),
        dst.take_lease(B, "b", ttl).await.unwrap().unwrap(),
    );
    dst.listen(B).await.unwrap();
    let mut a = RegionCore::new(A);
    a.on_lease(ea);
    assert_eq!(a.on_loaded(src.load(A, ea).await.unwrap().rows).len(), 2);
    let mut b = RegionCore::new(B);
    b.on_lease(eb);
    assert_eq!(b.on_loaded(dst.load(B, eb).await.unwrap().rows).len(), 1);

    assert!(a.crossed(1, B, state(50.0)));
    let moves = a.take_sendable(10);
    let first = src.hand_off(A, ea, &moves, &[Duration::from_millis(5)]).await.unwrap();
    assert_eq!(first, vec![(1, MoveResult::Moved)]);
    // The same transaction sent again (a retry after a lost reply) moves nothing...
    let again = src.hand_off(A, ea, &moves, &[Duration::ZERO]).await.unwrap();
    assert_eq!(again, vec![(1, MoveResult::Stale)]);
    // ...and reading the row back says the first one committed.
    a.on_commit_unknown();
    let read = src.read_owners(&a.unresolved()).await.unwrap();
    assert_eq!(read, vec![(1, Some((B, 1)))]);
    a.on_rows_read(&read);
    assert_eq!((a.outgoing_len(), a.stats().handed_off), (0, 1));

    // The destination was notified (only after the commit) and adopts it once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !dst.take_notifications() {
        assert!(tokio::time::Instant::now() < deadline, "no notification");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let adopted = dst.adopt(B, eb, 100).await.unwrap();
    assert!(adopted.commit_known);
    assert_eq!(adopted.rows.len(), 1);
    assert_eq!(adopted.rows[0].state.position, [50.0, 0.0, 1.0], "the state travelled with the row");
    assert!(
        adopted.latency_ms[0] >= 5.0,
        "time out of any world counts from leaving: {:?}",
        adopted.latency_ms
    );
    let spawn = b.on_arrivals(adopted.rows.clone());
    assert_eq!(spawn.len(), 1);
    assert!(dst.adopt(B, eb, 100).await.unwrap().rows.is_empty(), "adopted rows are not offered again");
    assert!(b.on_arrivals(adopted.rows).is_empty(), "a duplicate offer spawns nothing");
    assert!(b.holds(1) && !a.holds(1));

    // Back again: seq 1 → 2; a stale seq can't move it.
    assert!(b.crossed(1, A, state(10.0)));
    let back = b.take_sendable(10);
    assert_eq!(back[0].seq, 1);
    assert_eq!(dst.hand_off(B, eb, &back, &[]).await.unwrap(), vec![(1, MoveResult::Moved)]);
    let stale = Move { npc: 1, from: A, to: B, seq: 0, state: state(0.0) };
    assert_eq!(src.hand_off(A, ea, &[stale], &[]).await.unwrap(), vec![(1, MoveResult::Stale)]);
    let summary = src.summary().await.unwrap();
    assert_eq!((summary.rows, summary.handoffs, summary.not_adopted), (3, 2, 1));
    assert_eq!(summary.per_region, vec![(A, 2), (B, 1)]);
    assert_eq!(src.owned_by(A).await.unwrap(), vec![1, 2]);
}

/// A hand-off whose connection PostgreSQL really ends at `COMMIT` (a deferred trigger that
/// terminates its own backend while the commit runs): the store answers `CommitUnknown`, never
/// a guess; the region reads the row back on a new connection, sends again only if it did not
/// commit (same seq), and the NPC moves exactly once. (PostgreSQL ends the session while the
/// deferred triggers run, before the commit record, so the row says "not committed" here; the
/// committed branch of a read-back is in `a_hand_off_moves_once_even_when_sent_again…`.)
#[tokio::test]
async fn a_hand_off_whose_connection_dies_at_commit_is_settled_by_reading_the_row_and_moves_once() {
    let Some(url) = service_url(PG) else { return };
    let schema = PgSchema::new(&url).await;
    let name = schema.store.schema().to_owned();
    let mut src = store(&schema).await;
    src.seed(&[row(1, A), row(2, A), row(3, B)]).await.unwrap();
    let ttl = Duration::from_secs(30);
    let ea = src.take_lease(A, "a", ttl).await.unwrap().unwrap();
    let mut a = RegionCore::new(A);
    a.on_lease(ea);
    assert_eq!(a.on_loaded(src.load(A, ea).await.unwrap().rows).len(), 2);
    let (sql, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    // The schema name is ours (unique_name: a checked identifier).
    sql.batch_execute(&format!(
        "CREATE FUNCTION {name}.die_at_commit() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER die_at_commit AFTER UPDATE ON {name}.npc_owners
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}.die_at_commit();"
    ))
    .await
    .unwrap();

    assert!(a.crossed(1, B, state(50.0)));
    let moves = a.take_sendable(10);
    let err = src.hand_off(A, ea, &moves, &[Duration::ZERO]).await.unwrap_err();
    assert!(matches!(err, RegionError::CommitUnknown { what: "hand-off", .. }), "{err:?}");
    a.on_commit_unknown();
    assert_eq!(a.unresolved(), vec![1]);
    assert!(a.take_sendable(10).is_empty(), "nothing is sent again before the row is read");
    sql.batch_execute(&format!("DROP TRIGGER die_at_commit ON {name}.npc_owners")).await.unwrap();

    // A new connection reads the row: the outcome is what it says, never guessed.
    let mut src = store(&schema).await;
    let read = src.read_owners(&a.unresolved()).await.unwrap();
    let committed = match read[0].1 {
        Some((r, 1)) if r == B => true,
        Some((r, 0)) if r == A => false,
        other => panic!("the row is neither before nor after the move: {other:?}"),
    };
    a.on_rows_read(&read);
    let again = a.take_sendable(10);
    assert_eq!(again.len(), usize::from(!committed), "sent again only when it did not commit");
    if !committed {
        assert_eq!(again[0].seq, 0, "sent again with the same seq, so it can't apply twice");
        let results = src.hand_off(A, ea, &again, &[Duration::ZERO]).await.unwrap();
        assert_eq!(results, vec![(1, MoveResult::Moved)]);
        a.on_committed(&results);
    }
    assert_eq!((a.outgoing_len(), a.stats().handed_off, a.stats().unknown_commits), (0, 1, 1));
    assert_eq!(src.read_owners(&[1, 2]).await.unwrap(), vec![(1, Some((B, 1))), (2, Some((A, 0)))]);
    let summary = src.summary().await.unwrap();
    assert_eq!((summary.rows, summary.handoffs), (3, 1), "moved exactly once");
    eprintln!("the lost commit had {}committed", if committed { "" } else { "not " });
}
