//! The crash loop (issue 12), CI size: the game_server example on the embedded store, with
//! wandering NPCs and mining agents, SIGKILLed at seeded random moments and restarted, while a
//! client spawns and despawns NPCs through the API. After every restart: the world was
//! resumed, its NPC count is what the store had committed, no id was handed out twice, every
//! stored NPC is inside the world; the checkpoint the next start resumes from conserves ore
//! (`OreLedger`: blocks out of the ground = blocks mined, items mined = carried + deposited);
//! with the outbox on (and a low spill threshold, so batches do go through it), every batch
//! the write-behind had settled or spilled before the kill is in the store or the outbox.
//! The long run (10 kills over 60 s, 100k NPCs + 2k agents, embedded and PostgreSQL) is the
//! `crash_loop` example, with its figures in BENCHMARKS.md.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use terrarium::engine::{Engine, EngineConfig};
use terrarium::systems::agents::OreLedger;
use terrarium_persistence::testing::outbox_batch_ids;

use crate::harness::{KEY, example};

/// One start of the server: its address, and what it said on stderr about resuming.
struct Started {
    child: std::process::Child,
    addr: String,
    resumed_npcs: Option<u64>,
}

fn start(data: &Path, npcs: &str, agents: &str) -> Started {
    start_every(data, npcs, agents, "20")
}

/// As [`start`], with `--checkpoint-every every` (0: no periodic checkpoint).
fn start_every(data: &Path, npcs: &str, agents: &str, every: &str) -> Started {
    let mut child = Command::new(example("game_server"))
        .args(["--port", "0", "--tick-hz", "20", "--threads", "1", "--checkpoint-every", every])
        .args(["--npcs", npcs, "--agents", agents, "--seed", "5", "--data-dir"])
        .arg(data)
        .arg("--outbox")
        .arg(data.join("outbox.bin"))
        .env("TERRARIUM_SERVER__API_KEY", KEY)
        // Waiting position batches (5,100 rows) go to the outbox: the check below then covers
        // batches in the outbox as well as in the store.
        .env("TERRARIUM_WRITE_BEHIND__SPILL_QUEUED_ROWS", "1000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut first = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    // Keep reading, so the summary at a clean stop finds its pipe open.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addr = first.trim().strip_prefix("listening on http://").unwrap_or_else(|| {
        let _ = child.kill();
        let rest: Vec<String> = rx.try_iter().collect();
        panic!("no address: {first:?}\n{}", rest.join("\n"))
    });
    // The resume notice is written before the address, but the reader thread may not have
    // passed it on yet: wait for it a little.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut lines = std::iter::from_fn(|| {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        rx.recv_timeout(left).ok()
    });
    let resumed_npcs = lines.find_map(|l| {
        let rest = l.split("resumed the stored world at tick ").nth(1)?;
        rest.split('(').nth(1)?.split(' ').next()?.parse().ok()
    });
    Started { addr: addr.to_string(), child, resumed_npcs }
}

/// NPCs in the store, the highest id, and whether every stored position is inside the world
/// (the registry's and the current ones in `position_blocks`: little-endian f32 x, y, z per
/// NPC, schema V2).
fn committed(db: &Path) -> (u64, u64, bool) {
    let sql = rusqlite::Connection::open(db).unwrap();
    let inside = |x: f32, y: f32, z: f32| {
        (0.0..=4096.0).contains(&x) && (0.0..=256.0).contains(&y) && (0.0..=4096.0).contains(&z)
    };
    let (count, max_id, registry_inside) = sql
        .query_row(
            "SELECT count(*), coalesce(max(id), 0), \
             coalesce(min(x >= 0 AND x <= 4096 AND y >= 0 AND y <= 256 AND z >= 0 AND z <= 4096), 1) FROM npcs",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? == 1)),
        )
        .unwrap();
    let mut stmt = sql.prepare("SELECT xyz FROM position_blocks").unwrap();
    let blobs: Vec<Vec<u8>> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    let f = |c: &[u8], k: usize| f32::from_le_bytes(c[k..k + 4].try_into().unwrap());
    let blocks_inside =
        blobs.iter().flat_map(|b| b.chunks_exact(12)).all(|c| inside(f(c, 0), f(c, 4), f(c, 8)));
    (count, max_id, registry_inside && blocks_inside)
}

/// The ore ledger of the newest checkpoint in the store: the world the next start resumes.
fn checkpoint_ledger(db: &Path) -> (u64, OreLedger) {
    let sql = rusqlite::Connection::open(db).unwrap();
    let (tick, bytes): (i64, Vec<u8>) = sql
        .query_row("SELECT tick, bytes FROM checkpoints ORDER BY tick DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let mut engine =
        Engine::builder(EngineConfig::default()).build_from_snapshot(&mut bytes.as_slice()).unwrap();
    (tick as u64, OreLedger::of(engine.world_mut()).expect("a world with agents has a voxel world"))
}

/// What the write-behind said it had made safe: every batch of `run_id` up to `seq` is
/// settled (in the store) or waits in the outbox.
struct Durable {
    raw: Value,
    run_id: u64,
    seq: u64,
    spilled_total: u64,
}

async fn durable(http: &reqwest::Client, addr: &str) -> Durable {
    let v: Value = http
        .get(format!("http://{addr}/api/performance"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let wb = &v["write_behind"];
    assert_eq!(wb["failed_batches"], 0, "{wb}");
    let n = |k: &str| wb[k].as_u64().unwrap_or_else(|| panic!("write_behind.{k}: {wb}"));
    Durable {
        raw: wb.clone(),
        run_id: n("run_id"),
        seq: n("settled_through_seq") + n("outbox_batches"),
        spilled_total: n("batches_spilled"),
    }
}

/// Of `run`'s batches 1, 2, …: how many in a row are in the store (its mark) or in the outbox.
fn safe_through(db: &Path, outbox: &Path, run: u64) -> (u64, String) {
    let sql = rusqlite::Connection::open(db).unwrap();
    // Runs are stored bit for bit as INTEGER.
    let mark: i64 = sql
        .query_row("SELECT coalesce(max(seq), 0) FROM applied_batches WHERE run = ?1", [run as i64], |r| {
            r.get(0)
        })
        .unwrap();
    let ids = outbox_batch_ids(outbox, 1 << 30).unwrap();
    let mut seqs: BTreeSet<u64> = ids.iter().filter(|b| b.run == run).map(|b| b.seq).collect();
    let said = format!("store mark {mark}, outbox {ids:?}");
    seqs.extend(1..=mark as u64);
    ((1..).find(|s| !seqs.contains(s)).unwrap() - 1, said)
}

#[test]
fn killed_at_random_moments_it_resumes_what_the_store_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("terrarium.db");
    let mut rng = fastrand::Rng::with_seed(12);
    let mut handed: Vec<u64> = Vec::new();
    let mut alive: Vec<u64> = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let http = reqwest::Client::new();
    let kills = 4;
    let mut at_kill = 0;
    let outbox = dir.path().join("outbox.bin");
    let (mut spilled, mut mined_at_kills) = (0, 0);
    for round in 0..=kills {
        let s = start(dir.path(), "5000", "100");
        if round == 0 {
            assert_eq!(s.resumed_npcs, None, "a new data directory holds no world");
        } else {
            // The start replayed the outbox before reading the world back: batches the killed
            // process had spilled (their spawns) are in the store now. Nothing came through the
            // API yet.
            let replayed = committed(&db).0;
            assert!(replayed >= at_kill, "round {round}: {replayed} after the replay, {at_kill} at the kill");
            assert_eq!(s.resumed_npcs, Some(replayed), "round {round}: resumed = what the store committed");
        }
        // Some spawns and despawns through the API, then a kill at a seeded moment.
        rt.block_on(async {
            for _ in 0..20 {
                let body =
                    json!({"role": "scout", "position": [rng.f32() * 4000.0, 10.0, rng.f32() * 4000.0]});
                let res = http
                    .post(format!("http://{}/api/npcs", s.addr))
                    .header("x-api-key", KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let v: Value = res.json().await.unwrap();
                let id = v["id"].as_u64().unwrap();
                handed.push(id);
                alive.push(id);
            }
            for _ in 0..5 {
                if alive.is_empty() {
                    break;
                }
                let id = alive.swap_remove(rng.usize(..alive.len()));
                // A despawn of an NPC that a crash took back answers 404: both are fine here.
                let _ = http
                    .post(format!("http://{}/api/npcs/{id}/orders", s.addr))
                    .header("x-api-key", KEY)
                    .json(&json!({"order": "despawn"}))
                    .send()
                    .await
                    .unwrap();
            }
        });
        let mut child = s.child;
        if round < kills {
            std::thread::sleep(Duration::from_millis(rng.u64(700..2500)));
            // What the write-behind had made safe, read just before the kill.
            let before = rt.block_on(durable(&http, &s.addr));
            child.kill().unwrap();
            child.wait().unwrap();
            let (count, _, inside) = committed(&db);
            assert!(inside, "round {round}: a stored NPC outside the world");
            at_kill = count;
            let (safe, said) = safe_through(&db, &outbox, before.run_id);
            assert!(
                safe >= before.seq,
                "round {round}: batches up to {} were settled or spilled, only {safe} are in the store or the outbox \
                 (run {}: {said}; write-behind {})",
                before.seq,
                before.run_id,
                before.raw
            );
            spilled += before.spilled_total;
            let (tick, ledger) = checkpoint_ledger(&db);
            assert!(ledger.conserved(), "round {round}: checkpoint of tick {tick}: {ledger:?}");
            mined_at_kills = mined_at_kills.max(ledger.total_mined());
        } else {
            std::thread::sleep(Duration::from_millis(500));
            let ok =
                Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success();
            assert!(ok);
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let unique: BTreeSet<u64> = handed.iter().copied().collect();
    assert_eq!(unique.len(), handed.len(), "an id was handed out twice: {handed:?}");
    let (count, _, inside) = committed(&db);
    assert!(inside && count >= 5000, "{count}");
    // The checks above were not vacuous: batches went through the outbox, agents mined.
    assert!(spilled > 0, "no batch was spilled: the outbox check checked nothing");
    let (tick, ledger) = checkpoint_ledger(&db);
    assert!(ledger.conserved(), "the clean stop's checkpoint of tick {tick}: {ledger:?}");
    assert!(ledger.total_mined().max(mined_at_kills) > 0, "no ore mined: {ledger:?}");
}

/// Issue 12's open bug: a process killed before its first periodic checkpoint left rows and no
/// checkpoint, and the next start took the store for empty, spawned a new world over the rows
/// and handed their ids out again. Now a new world's first checkpoint is stored before any
/// batch: every restart resumes, with what the store committed, and no id comes twice.
#[test]
fn killed_before_its_first_periodic_checkpoint_it_resumes_and_hands_no_id_out_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("terrarium.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let http = reqwest::Client::new();
    let mut handed: Vec<u64> = Vec::new();
    for round in 0..3u64 {
        // No periodic checkpoint at all (`0`): only the new world's first one.
        let s = start_every(dir.path(), "2000", "20", "0");
        let (stored, stored_max, _) = committed(&db);
        if round == 0 {
            assert_eq!(s.resumed_npcs, None, "a new data directory holds no world");
        } else {
            // Read after the start replayed the outbox, before any spawn through the API.
            assert_eq!(s.resumed_npcs, Some(stored), "round {round}: resumed = what the store committed");
        }
        rt.block_on(async {
            for k in 0..10 {
                let body = json!({"role": "scout", "position": [100.0 + k as f32, 10.0, 100.0]});
                let v: Value = http
                    .post(format!("http://{}/api/npcs", s.addr))
                    .header("x-api-key", KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let id = v["id"].as_u64().unwrap();
                assert!(
                    id > stored_max,
                    "round {round}: id {id} handed out, the store holds ids up to {stored_max}"
                );
                handed.push(id);
            }
        });
        // Kill once the population and this round's spawns are committed (a periodic
        // checkpoint never comes).
        let want = 2020 + 10 * (round + 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while committed(&db).0 < want && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut child = s.child;
        child.kill().unwrap();
        child.wait().unwrap();
        let (count, _, inside) = committed(&db);
        assert!(inside, "round {round}: a stored NPC outside the world");
        assert!(count >= want, "round {round}: {count} NPCs committed, {want} expected");
        let (tick, ledger) = checkpoint_ledger(&db);
        assert_eq!(tick, 0, "round {round}: only the first checkpoint was stored");
        assert!(ledger.conserved(), "{ledger:?}");
    }
    let unique: BTreeSet<u64> = handed.iter().copied().collect();
    assert_eq!(unique.len(), handed.len(), "an id was handed out twice: {handed:?}");
}
