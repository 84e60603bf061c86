//! The crash loop of issue 12, long form: a `game_server` with `--npcs` wandering NPCs and
//! `--agents` mining agents at `--tick-hz`, SIGKILLed at `--kills` seeded random moments over
//! `--seconds` and restarted each time, while a client spawns and despawns NPCs through the
//! API. It prints figures, one JSON object on the last line of stdout; the CI-sized test is
//! `server/tests/game_server/crash.rs`.
//!
//! ```text
//! cargo build --release -p terrarium-server --features postgres --example game_server --example crash_loop
//! target/release/examples/crash_loop --storage embedded
//! target/release/examples/crash_loop --storage postgres --database-url "$DATABASE_URL"
//! ```
//!
//! After every kill, from the store as the next start will find it: the NPC count and every
//! stored position inside the world (`npcs_now` on PostgreSQL; on SQLite the registry and the
//! position blocks, read here: its `npcs_now` view is far too slow at 100k); the write-behind's
//! promise (every batch it had settled or spilled to the outbox before the kill, read from
//! `/api/performance` just before it, is in the store or in the outbox: `lost` counts those that
//! are not); the newest checkpoint conserves ore (`OreLedger`). After every restart: the world
//! was resumed, with the NPC count the store had committed (read once the restart replayed the
//! outbox, before the client's first spawn), and how long resuming took
//! (`resume_ms`, as the server reports it). Over the whole run: no id handed out twice.
//! `ok` is false (and the exit status 1) when any check failed.
//!
//! `--resume-equals-continue` checks the issue's other acceptance at full size instead (the CI
//! test `tests/resume.rs` runs 300 agents): `headless` (next to this binary) runs `--ticks`
//! ticks in one go, and half of them twice, the second run resuming the first from the store;
//! both must end with the same `world_hash`. With `--npcs 3000 --agents 2000 --ticks 600`:
//!
//! ```text
//! cargo build --release --features postgres --example headless
//! target/release/examples/crash_loop --resume-equals-continue --npcs 3000 --agents 2000 --storage embedded
//! ```
//!
//! The server is the `game_server` next to this binary (`--server` to name another): build
//! both with the same profile. Its data goes to a temporary directory (`--data-dir` to keep
//! it), the outbox to `DIR/outbox.bin` with a spill threshold of `--spill-rows` (below a
//! position batch, so batches do go through the outbox); on PostgreSQL to a new schema,
//! dropped at the end unless `--keep`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};
use terrarium::engine::{Engine, EngineConfig};
use terrarium::systems::agents::OreLedger;
use terrarium_persistence::testing::outbox_batch_ids;

#[path = "../../examples/common/mod.rs"]
mod common;

/// A key for the server this harness starts (never a secret: it lives as long as the run).
const KEY: &str = "crash-loop-key-0123456789abcdefghijkl";

/// Where the server stores its world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Store {
    /// SQLite in the data directory.
    Embedded,
    /// PostgreSQL (the server must be built with `--features postgres`).
    Postgres,
}

/// Kills a game server at random moments and checks what each restart resumes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The store under test.
    #[arg(long, value_enum, default_value = "embedded")]
    storage: Store,
    /// PostgreSQL URL (`--storage postgres`); else `DATABASE_URL`.
    #[arg(long = "database-url")]
    database_url: Option<String>,
    /// Wandering NPCs of the first start.
    #[arg(long, default_value_t = 100_000)]
    npcs: u64,
    /// Mining agents of the first start.
    #[arg(long, default_value_t = 2_000)]
    agents: u64,
    /// SIGKILLs; one more start follows the last, stopped with SIGTERM.
    #[arg(long, default_value_t = 10)]
    kills: u32,
    /// The kills fall at seeded random moments of this many seconds (a kill never comes
    /// sooner than `--min-up` after its start is listening).
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Shortest time a start serves before it is killed, seconds.
    #[arg(long = "min-up", default_value_t = 1.0)]
    min_up: f64,
    /// Seed of the world and of the kill moments.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Tick rate of the server.
    #[arg(long = "tick-hz", default_value_t = 20)]
    tick_hz: u32,
    /// Worker threads of the server's systems (its default when not given).
    #[arg(long)]
    threads: Option<usize>,
    /// The server's `--checkpoint-every` (ticks).
    #[arg(long = "checkpoint-every", default_value_t = 100)]
    checkpoint_every: u64,
    /// `write_behind.spill_queued_rows` of the server: above this many rows waiting, batches
    /// go to the outbox.
    #[arg(long = "spill-rows", default_value_t = 50_000)]
    spill_rows: u64,
    /// NPCs the client spawns (and, a third as many, despawns) per second through the API.
    #[arg(long = "api-spawns", default_value_t = 20)]
    api_spawns: u32,
    /// The game_server binary (default: the one next to this one).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Keep the world here (embedded store, outbox) instead of a temporary directory.
    #[arg(long = "data-dir")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL schema (a plain identifier; default a new one per run).
    #[arg(long)]
    schema: Option<String>,
    /// Keep the PostgreSQL schema at the end.
    #[arg(long)]
    keep: bool,
    /// Instead of the crash loop: `headless` for `--ticks` ticks, and for half of them twice
    /// (the second run resuming the first); prints both `world_hash`es.
    #[arg(long = "resume-equals-continue")]
    resume_equals_continue: bool,
    /// Ticks of `--resume-equals-continue` (even).
    #[arg(long, default_value_t = 600)]
    ticks: u64,
}

/// What `--resume-equals-continue` found.
#[derive(Serialize)]
struct ContinueReport {
    storage: Store,
    npcs: u64,
    agents: u64,
    ticks: u64,
    seed: u64,
    checkpoint_every: u64,
    straight_hash: Value,
    resumed_hash: Value,
    equal: bool,
    resumed: bool,
    resumed_tick: u64,
    resumed_agents: u64,
    resume_ms: f64,
    /// Wall-clock seconds of the three runs.
    wall_s: f64,
    ok: bool,
}

/// `headless` for `ticks` in one go and twice `ticks / 2`, the second resuming the first.
async fn resume_equals_continue(args: &Args) -> Result<Value> {
    ensure!(args.ticks >= 2 && args.ticks.is_multiple_of(2), "--ticks must be even");
    let exe = std::env::current_exe()?.with_file_name(format!("headless{}", std::env::consts::EXE_SUFFIX));
    let tmp = tempfile::tempdir()?;
    let url = args.database_url.clone().or_else(|| std::env::var("DATABASE_URL").ok());
    let base = format!("resume_check_{}", std::process::id());
    let run = |name: &str, ticks: u64| -> Result<Value> {
        let mut cmd = Command::new(&exe);
        cmd.args(["--quiet", "--json", "--seed", &args.seed.to_string()])
            .args(["--npcs", &args.npcs.to_string(), "--agents", &args.agents.to_string()])
            .args(["--ticks", &ticks.to_string(), "--checkpoint-every", &args.checkpoint_every.to_string()]);
        if let Some(t) = args.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        match args.storage {
            Store::Embedded => {
                cmd.args(["--storage", "embedded", "--data-dir"]).arg(tmp.path().join(name));
            }
            Store::Postgres => {
                let url =
                    url.as_deref().context("--storage postgres needs --database-url or DATABASE_URL")?;
                cmd.args(["--storage", "postgres", "--database-url", url])
                    .env("TERRARIUM_STORAGE__POSTGRES__SCHEMA", format!("{base}_{name}"));
            }
        }
        let out = cmd.output().with_context(|| format!("cannot start {}", exe.display()))?;
        ensure!(out.status.success(), "headless failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok(serde_json::from_str(stdout.lines().last().context("no summary")?)?)
    };
    let began = Instant::now();
    let straight = run("straight", args.ticks)?;
    let first = run("halves", args.ticks / 2)?;
    ensure!(first["resumed"] == false, "the first half resumed a world: {first}");
    let second = run("halves", args.ticks / 2)?;
    let wall_s = began.elapsed().as_secs_f64();
    if let (Store::Postgres, Some(url), false) = (args.storage, url.as_deref(), args.keep) {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        for name in ["straight", "halves"] {
            // Plain identifiers made here.
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS {base}_{name} CASCADE")).await?;
        }
    }
    let equal = straight["world_hash"] == second["world_hash"] && !straight["world_hash"].is_null();
    let resumed = second["resumed"] == true;
    let report = ContinueReport {
        storage: args.storage,
        npcs: args.npcs,
        agents: args.agents,
        ticks: args.ticks,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        straight_hash: straight["world_hash"].clone(),
        resumed_hash: second["world_hash"].clone(),
        equal,
        resumed,
        resumed_tick: second["resumed_tick"].as_u64().unwrap_or(0),
        resumed_agents: second["resumed_agents"].as_u64().unwrap_or(0),
        resume_ms: second["resume_ms"].as_f64().unwrap_or(0.0),
        wall_s,
        ok: equal && resumed && second["final_tick"] == straight["final_tick"],
    };
    Ok(serde_json::to_value(report)?)
}

/// One restart after a kill.
#[derive(Serialize, Default)]
struct Restart {
    /// 1 for the start after the first kill.
    round: u32,
    /// Wall-clock milliseconds from starting the process to its address on stdout.
    start_ms: f64,
    /// Milliseconds from asking the store to a world ready to tick, as the server says.
    resume_ms: f64,
    resumed: bool,
    resumed_tick: u64,
    resumed_npcs: u64,
    /// NPCs the store held after the kill before it.
    committed_npcs: u64,
    /// NPCs the store held once this start had replayed the outbox (read before the client's
    /// first spawn): what the resume must equal. Above `committed_npcs` by the spawns of the
    /// batches the killed process had spilled to the outbox.
    replayed_npcs: u64,
}

/// One kill.
#[derive(Serialize, Default)]
struct Kill {
    round: u32,
    /// Seconds the start had served when it was killed.
    up_s: f64,
    /// Batches of the run the write-behind had settled or spilled just before the kill.
    batches_safe: u64,
    /// Of those, missing from both the store and the outbox.
    lost: u64,
    /// NPCs in the store after the kill.
    committed_npcs: u64,
    /// Stored NPCs outside the world's bounds.
    outside_world: u64,
    /// Tick of the newest checkpoint (what the next start resumes from).
    checkpoint_tick: u64,
    /// Items mined as of that checkpoint, all ores.
    ore_mined: u64,
    ore_conserved: bool,
}

#[derive(Serialize)]
struct Report {
    storage: Store,
    npcs: u64,
    agents: u64,
    kills: u32,
    seconds: f64,
    seed: u64,
    tick_hz: u32,
    checkpoint_every: u64,
    spill_rows: u64,
    /// Wall-clock seconds of the whole loop.
    wall_s: f64,
    /// Batches lost (settled or spilled, then missing), over all kills.
    lost: u64,
    resume_ms_max: f64,
    resume_ms_mean: f64,
    start_ms_max: f64,
    /// Every checkpoint after a kill, and the one of the clean stop, conserved ore.
    ore_conserved: bool,
    /// Items mined, by the clean stop's checkpoint.
    ore_mined: u64,
    /// Every restart resumed, with the NPC count the store had committed.
    resumes_match: bool,
    ids_handed: u64,
    ids_unique: bool,
    outside_world: u64,
    batches_spilled: u64,
    api_despawns: u64,
    /// The last start stopped cleanly on SIGTERM.
    clean_stop: bool,
    ok: bool,
    restarts: Vec<Restart>,
    kill_rounds: Vec<Kill>,
}

fn main() -> ExitCode {
    let mut failed = false;
    let code = common::main_with("crash_loop", |args: &Args| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?;
        let report = if args.resume_equals_continue {
            rt.block_on(resume_equals_continue(args))?
        } else {
            serde_json::to_value(rt.block_on(run(args))?)?
        };
        println!("{report}");
        failed = report["ok"] != true;
        Ok(())
    });
    if failed { ExitCode::FAILURE } else { code }
}

/// The store, read as the next start will find it.
enum Reader {
    Sqlite(PathBuf),
    Pg(tokio_postgres::Client),
}

impl Reader {
    /// NPCs, and those outside `[min, max]`.
    async fn npcs(&self, min: [f32; 3], max: [f32; 3]) -> Result<(u64, u64)> {
        let outside = format!(
            "SELECT count(*), coalesce(sum(CASE WHEN x BETWEEN {} AND {} AND y BETWEEN {} AND {} \
             AND z BETWEEN {} AND {} THEN 0 ELSE 1 END), 0) FROM npcs_now",
            min[0], max[0], min[1], max[1], min[2], max[2]
        );
        Ok(match self {
            // Not `npcs_now` on SQLite: the view decodes blocks in SQL and its join has no index
            // (at 100k NPCs the count ran for over ten minutes). The registry's positions and
            // every block's (little-endian f32 x, y, z per NPC), read here, are a superset of
            // the current ones the view shows.
            Reader::Sqlite(db) => {
                let sql = rusqlite::Connection::open(db)?;
                let registry = outside.replace("FROM npcs_now", "FROM npcs");
                let (count, mut out) = sql.query_row(&registry, [], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })?;
                let mut stmt = sql.prepare("SELECT xyz FROM position_blocks")?;
                let mut rows = stmt.query([])?;
                let f = |c: &[u8], k: usize| f32::from_le_bytes([c[k], c[k + 1], c[k + 2], c[k + 3]]);
                while let Some(r) = rows.next()? {
                    let xyz: Vec<u8> = r.get(0)?;
                    for c in xyz.chunks_exact(12) {
                        let p = [f(c, 0), f(c, 4), f(c, 8)];
                        if (0..3).any(|k| !(min[k]..=max[k]).contains(&p[k])) {
                            out += 1;
                        }
                    }
                }
                (count, out)
            }
            Reader::Pg(c) => {
                let row = c.query_one(&outside, &[]).await?;
                (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
            }
        })
    }

    /// The store's mark for producer `run`.
    async fn mark(&self, run: u64) -> Result<u64> {
        let q = "SELECT coalesce(max(seq), 0) FROM applied_batches WHERE run = $1";
        // Runs are stored bit for bit in a signed 64-bit column.
        let run = run as i64;
        Ok(match self {
            Reader::Sqlite(db) => {
                let sql = rusqlite::Connection::open(db)?;
                sql.query_row(&q.replace("$1", "?1"), [run], |r| r.get::<_, i64>(0))? as u64
            }
            Reader::Pg(c) => c.query_one(q, &[&run]).await?.get::<_, i64>(0) as u64,
        })
    }

    /// The newest checkpoint: its tick and bytes (`None` before the first).
    async fn checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let q = "SELECT tick, bytes FROM checkpoints ORDER BY tick DESC LIMIT 1";
        Ok(match self {
            Reader::Sqlite(db) => {
                let sql = rusqlite::Connection::open(db)?;
                let mut stmt = sql.prepare(q)?;
                let mut rows = stmt.query([])?;
                match rows.next()? {
                    Some(r) => Some((r.get::<_, i64>(0)? as u64, r.get(1)?)),
                    None => None,
                }
            }
            Reader::Pg(c) => c.query_opt(q, &[]).await?.map(|row| (row.get::<_, i64>(0) as u64, row.get(1))),
        })
    }
}

/// A started server: its process, address, and its stderr lines.
struct Started {
    child: Child,
    addr: String,
    stderr: mpsc::Receiver<String>,
    start_ms: f64,
}

fn start(args: &Args, exe: &Path, dir: &Path, url: Option<&str>, schema: &str) -> Result<Started> {
    let mut cmd = Command::new(exe);
    cmd.args(["--port", "0", "--checkpoint-every", &args.checkpoint_every.to_string()])
        .args(["--tick-hz", &args.tick_hz.to_string(), "--seed", &args.seed.to_string()])
        .args(["--npcs", &args.npcs.to_string(), "--agents", &args.agents.to_string()])
        .arg("--outbox")
        .arg(dir.join("outbox.bin"))
        .env("TERRARIUM_SERVER__API_KEY", KEY)
        .env("TERRARIUM_WRITE_BEHIND__SPILL_QUEUED_ROWS", args.spill_rows.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = args.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    match (args.storage, url) {
        (Store::Embedded, _) => {
            cmd.args(["--storage", "embedded", "--data-dir"]).arg(dir);
        }
        (Store::Postgres, Some(url)) => {
            cmd.args(["--storage", "postgres", "--database-url", url])
                .env("TERRARIUM_STORAGE__POSTGRES__SCHEMA", schema);
        }
        (Store::Postgres, None) => bail!("--storage postgres needs --database-url or DATABASE_URL"),
    }
    let began = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", exe.display()))?;
    let (tx, stderr) = mpsc::channel();
    let err = child.stderr.take().context("no stderr")?;
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (first_tx, first_rx) = mpsc::channel();
    let out = child.stdout.take().context("no stdout")?;
    std::thread::spawn(move || {
        let mut out = BufReader::new(out);
        let mut first = String::new();
        let _ = out.read_line(&mut first);
        let _ = first_tx.send(first);
        // Keep reading, so the summary at a clean stop finds its pipe open.
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    let first = first_rx.recv_timeout(Duration::from_secs(600)).unwrap_or_default();
    let Some(addr) = first.trim().strip_prefix("listening on http://") else {
        let _ = child.kill();
        let _ = child.wait();
        let said: Vec<String> = stderr.try_iter().collect();
        bail!("the server did not start: {first:?}\n{}", said.join("\n"));
    };
    Ok(Started { child, addr: addr.to_string(), stderr, start_ms: began.elapsed().as_secs_f64() * 1e3 })
}

/// `(tick, npcs, agents, ms)` from the server's resume notice, if it resumed.
fn resume_notice(stderr: &mpsc::Receiver<String>) -> Option<(u64, u64, u64, f64)> {
    // The notice is written before the address; the reader thread may not have passed it on.
    let deadline = Instant::now() + Duration::from_secs(3);
    std::iter::from_fn(|| stderr.recv_timeout(deadline.checked_duration_since(Instant::now())?).ok())
        .find_map(|l| {
            let rest = l.split("resumed the stored world at tick ").nth(1)?;
            let tick = rest.split(' ').next()?.parse().ok()?;
            let inner = rest.split('(').nth(1)?;
            let npcs = inner.split(' ').next()?.parse().ok()?;
            let agents = inner.split(", ").nth(1)?.split(' ').next()?.parse().ok()?;
            let ms = rest.split(" in ").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((tick, npcs, agents, ms))
        })
}

/// What the write-behind had made safe: every batch of `run` up to `seq`, and spills so far.
async fn durable(http: &reqwest::Client, addr: &str) -> Result<(u64, u64, u64)> {
    let v: Value = http
        .get(format!("http://{addr}/api/performance"))
        .header("x-api-key", KEY)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let wb = &v["write_behind"];
    let n = |k: &str| wb[k].as_u64().with_context(|| format!("write_behind.{k} missing: {wb}"));
    Ok((n("run_id")?, n("settled_through_seq")? + n("outbox_batches")?, n("batches_spilled")?))
}

/// The client: what it spawned through the API, and what it holds alive.
struct Load {
    http: reqwest::Client,
    per_s: u32,
    rng: fastrand::Rng,
    handed: Vec<u64>,
    alive: Vec<u64>,
    despawns: u64,
}

impl Load {
    /// Spawns and despawns NPCs through the API of the server at `addr` until `until`.
    async fn until(&mut self, addr: &str, until: Instant) {
        let pause = Duration::from_secs_f64(1.0 / f64::from(self.per_s.max(1)));
        let mut n = 0u64;
        while Instant::now() < until {
            let rng = &mut self.rng;
            let body = json!({"role": "scout", "position": [rng.f32() * 4000.0, 10.0, rng.f32() * 4000.0]});
            let res =
                self.http.post(format!("http://{addr}/api/npcs")).header("x-api-key", KEY).json(&body).send();
            if let Ok(res) = res.await
                && let Ok(v) = res.json::<Value>().await
                && let Some(id) = v["id"].as_u64()
            {
                self.handed.push(id);
                self.alive.push(id);
            }
            n += 1;
            if n.is_multiple_of(3) && !self.alive.is_empty() {
                let id = self.alive.swap_remove(self.rng.usize(..self.alive.len()));
                // A despawn of an NPC a crash took back answers 404: both are fine.
                let _ = self
                    .http
                    .post(format!("http://{addr}/api/npcs/{id}/orders"))
                    .header("x-api-key", KEY)
                    .json(&json!({"order": "despawn"}))
                    .send()
                    .await;
                self.despawns += 1;
            }
            tokio::time::sleep(pause).await;
        }
    }
}

async fn run(args: &Args) -> Result<Report> {
    ensure!(args.kills > 0 && args.seconds > 0.0, "--kills and --seconds must be above 0");
    let exe = match &args.server {
        Some(p) => p.clone(),
        None => {
            std::env::current_exe()?.with_file_name(format!("game_server{}", std::env::consts::EXE_SUFFIX))
        }
    };
    let tmp = tempfile::tempdir()?;
    let dir = args.data_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let url = args.database_url.clone().or_else(|| std::env::var("DATABASE_URL").ok());
    let schema = args.schema.clone().unwrap_or_else(|| format!("crash_loop_{}", std::process::id()));
    ensure!(
        !schema.is_empty()
            && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !schema.starts_with(|c: char| c.is_ascii_digit()),
        "--schema must be a plain identifier (a-z, 0-9, _)"
    );
    let reader = match args.storage {
        Store::Embedded => Reader::Sqlite(dir.join("terrarium.db")),
        Store::Postgres => {
            let url = url.as_deref().context("--storage postgres needs --database-url or DATABASE_URL")?;
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            // A plain identifier, checked above.
            client.batch_execute(&format!("SET search_path TO {schema}")).await?;
            Reader::Pg(client)
        }
    };
    let bounds = EngineConfig::default().world;
    let outbox = dir.join("outbox.bin");
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let mut moments: Vec<f64> = (0..args.kills).map(|_| rng.f64() * args.seconds).collect();
    moments.sort_by(f64::total_cmp);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let mut load = Load {
        http: http.clone(),
        per_s: args.api_spawns,
        rng: fastrand::Rng::with_seed(args.seed ^ 0xC1),
        handed: Vec::new(),
        alive: Vec::new(),
        despawns: 0,
    };
    let (mut restarts, mut kills) = (Vec::new(), Vec::new());
    let (mut spilled, mut committed_at_kill) = (0u64, None::<u64>);
    let began = Instant::now();
    let mut clean_stop = false;
    for round in 0..=args.kills {
        let s = start(args, &exe, &dir, url.as_deref(), &schema)?;
        let notice = resume_notice(&s.stderr);
        if let Some(committed) = committed_at_kill {
            let (tick, npcs, _, ms) = notice.unwrap_or_default();
            // The outbox was replayed before the world was read back; no spawn or despawn has
            // come through the API yet.
            let (replayed, _) = reader.npcs(bounds.min, bounds.max).await?;
            restarts.push(Restart {
                round,
                start_ms: s.start_ms,
                resume_ms: ms,
                resumed: notice.is_some(),
                resumed_tick: tick,
                resumed_npcs: npcs,
                committed_npcs: committed,
                replayed_npcs: replayed,
            });
        } else {
            ensure!(notice.is_none(), "the first start resumed a world: use an empty --data-dir or --schema");
        }
        let listening = Instant::now();
        let mut child = s.child;
        if round < args.kills {
            let at = began + Duration::from_secs_f64(moments[round as usize]);
            let until = at.max(listening + Duration::from_secs_f64(args.min_up));
            load.until(&s.addr, until).await;
            let (run_id, safe_seq, spilled_now) = durable(&http, &s.addr).await?;
            child.kill()?;
            child.wait()?;
            spilled += spilled_now;
            let mark = reader.mark(run_id).await?;
            let mut seqs: BTreeSet<u64> = outbox_batch_ids(&outbox, 1 << 32)?
                .into_iter()
                .filter(|b| b.run == run_id)
                .map(|b| b.seq)
                .collect();
            seqs.extend(1..=mark);
            let lost = (1..=safe_seq).filter(|q| !seqs.contains(q)).count() as u64;
            let (count, outside) = reader.npcs(bounds.min, bounds.max).await?;
            // A new world's first checkpoint is stored before its first batch: a kill that finds
            // none is a failure (`ore_conserved` false), not a kill too early to check.
            let (tick, ledger, found) = match reader.checkpoint().await? {
                Some((tick, bytes)) => (tick, ledger_of(&bytes)?, true),
                None => (0, OreLedger::default(), false),
            };
            committed_at_kill = Some(count);
            kills.push(Kill {
                round,
                up_s: listening.elapsed().as_secs_f64(),
                batches_safe: safe_seq,
                lost,
                committed_npcs: count,
                outside_world: outside,
                checkpoint_tick: tick,
                ore_mined: ledger.total_mined(),
                ore_conserved: found && ledger.conserved(),
            });
        } else {
            let until = listening + Duration::from_secs_f64(args.min_up.max(2.0));
            load.until(&s.addr, until).await;
            let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?.success();
            clean_stop = ok && child.wait()?.success();
        }
    }
    let wall_s = began.elapsed().as_secs_f64();
    let last = match reader.checkpoint().await? {
        Some((_, bytes)) => ledger_of(&bytes)?,
        None => bail!("no checkpoint after the clean stop"),
    };
    let (_, outside_end) = reader.npcs(bounds.min, bounds.max).await?;
    if let (Reader::Pg(c), false) = (&reader, args.keep) {
        // A plain identifier, checked above.
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await?;
    }
    let unique: BTreeSet<u64> = load.handed.iter().copied().collect();
    let resume: Vec<f64> = restarts.iter().map(|r| r.resume_ms).collect();
    let lost = kills.iter().map(|k| k.lost).sum();
    let outside_world = kills.iter().map(|k| k.outside_world).sum::<u64>() + outside_end;
    let ore_conserved = last.conserved() && kills.iter().all(|k| k.ore_conserved);
    let resumes_match = restarts.iter().all(|r| r.resumed && r.resumed_npcs == r.replayed_npcs);
    let ids_unique = unique.len() == load.handed.len();
    Ok(Report {
        storage: args.storage,
        npcs: args.npcs,
        agents: args.agents,
        kills: args.kills,
        seconds: args.seconds,
        seed: args.seed,
        tick_hz: args.tick_hz,
        checkpoint_every: args.checkpoint_every,
        spill_rows: args.spill_rows,
        wall_s,
        lost,
        resume_ms_max: resume.iter().copied().fold(0.0, f64::max),
        resume_ms_mean: resume.iter().sum::<f64>() / resume.len().max(1) as f64,
        start_ms_max: restarts.iter().map(|r| r.start_ms).fold(0.0, f64::max),
        ore_conserved,
        ore_mined: last.total_mined(),
        resumes_match,
        ids_handed: load.handed.len() as u64,
        ids_unique,
        outside_world,
        batches_spilled: spilled,
        api_despawns: load.despawns,
        clean_stop,
        ok: lost == 0 && ore_conserved && resumes_match && ids_unique && outside_world == 0 && clean_stop,
        restarts,
        kill_rounds: kills,
    })
}

/// The ore ledger of a checkpoint's world.
fn ledger_of(bytes: &[u8]) -> Result<OreLedger> {
    let mut engine = Engine::builder(EngineConfig::default())
        .build_from_snapshot(&mut &bytes[..])
        .context("cannot restore the newest checkpoint")?;
    OreLedger::of(engine.world_mut()).context("the checkpoint holds no voxel world (no agents?)")
}
