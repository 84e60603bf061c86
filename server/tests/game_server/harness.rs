//! What every game-server test shares: a server in process with a small fast world, and
//! clients for it; building and running the examples.

#[path = "../../../tests/common/build.rs"]
mod build;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use terrarium::engine::{Engine, NpcId, Position};
use terrarium::{Config, StoragePipeline};
use terrarium_server::Server;

pub const KEY: &str = "test-key-0123456789abcdefghijklmnop";

pub struct TestServer {
    pub server: Server,
    pub base: String,
    pub http: reqwest::Client,
}

/// A small, dense world ticking fast, batching quickly, storing in memory.
pub fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.engine.seed = 11;
    cfg.engine.threads = 1;
    cfg.engine.tick_hz = 50;
    cfg.engine.world.max = [256.0, 64.0, 256.0];
    cfg.engine.npc.wander_speed = 8.0;
    cfg.engine.batching.positions.max_age_ms = 100;
    cfg.write_behind.commit_interval_ms = 5;
    cfg.server.api_key = KEY.into();
    cfg.server.port = 0;
    cfg.server.ws_hz = 25;
    cfg.server.ws_deflate_min_bytes = 256;
    cfg
}

pub async fn start(npcs: u64, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut cfg = test_config();
    tweak(&mut cfg);
    start_with(cfg, |engine| {
        terrarium::systems::wander::spawn_wanderers(engine, npcs);
    })
    .await
}

/// A server of `cfg` over a world `populate` fills, storing through a pipeline of `cfg`.
pub async fn start_with(cfg: Config, populate: impl FnOnce(&mut Engine)) -> TestServer {
    let mut engine =
        Engine::builder(cfg.engine.clone()).add_plugin(terrarium::systems::core_plugin).build().unwrap();
    populate(&mut engine);
    // On the test's runtime, like the example; started off its workers (it blocks).
    let (handle, storage_cfg) = (tokio::runtime::Handle::current(), cfg.clone());
    let storage = tokio::task::spawn_blocking(move || StoragePipeline::start_on(&handle, &storage_cfg))
        .await
        .unwrap()
        .unwrap();
    let server = Server::start(&cfg, engine, Some(storage)).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    TestServer { server, base, http: reqwest::Client::new() }
}

/// Storage in the PostgreSQL at `url` (a server of the test's own), in a schema of its own,
/// set to fail fast: short pool and call timeouts, no retry, the breaker opening at the first
/// failure and trying again after `reset_timeout_ms`.
#[cfg(feature = "postgres")]
pub fn fast_failing_postgres(cfg: &mut Config, url: String, reset_timeout_ms: u64) {
    let s = &mut cfg.storage;
    s.backend = terrarium::persistence::BackendKind::Postgres;
    s.postgres.url = url;
    s.postgres.schema = terrarium::persistence::testing::unique_name();
    s.postgres.wait_timeout_ms = 300;
    s.postgres.connect_timeout_ms = 300;
    s.postgres.create_timeout_ms = 300;
    s.retention.enabled = false;
    s.retry.max_attempts = 1;
    s.breaker.failure_threshold = 1;
    s.breaker.call_timeout_ms = 400;
    s.breaker.reset_timeout_ms = reset_timeout_ms;
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self.http.get(self.url(path)).header("x-api-key", KEY).send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let res = self.http.post(self.url(path)).header("x-api-key", KEY).json(body).send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Polls `GET path` until `done` says yes (storage trails the world by a batch).
    pub async fn get_until(&self, path: &str, done: impl Fn(StatusCode, &Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.get(path).await;
            if done(status, &body) {
                return body;
            }
            assert!(Instant::now() < deadline, "GET {path} never got there: {status} {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every NPC listed, page by page.
    pub async fn list_all(&self, query: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after: Option<u64> = None;
        loop {
            let cursor = after.map_or(String::new(), |a| format!("&after={a}"));
            let (status, page) = self.get(&format!("/api/npcs?limit=100{query}{cursor}")).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let npcs = page["npcs"].as_array().unwrap();
            assert!(npcs.len() <= 100);
            all.extend(npcs.iter().cloned());
            match page["next"].as_u64() {
                Some(n) => after = Some(n),
                None => return all,
            }
        }
    }
}

/// Where every NPC is, from the tick thread between two ticks.
pub async fn world_positions(s: &Server) -> (u64, HashMap<u64, [f32; 3]>) {
    s.with_engine(|e| {
        let tick = e.clock().tick;
        let mut q = e.world_mut().query::<(&NpcId, &Position)>();
        (tick, q.iter(e.world()).map(|(id, p)| (id.0, [p.x, p.y, p.z])).collect())
    })
    .await
    .unwrap()
}

/// The path of example `name` of this crate, built up to date with this test's features.
pub fn example(name: &str) -> std::path::PathBuf {
    let features = [
        ("parallel", cfg!(feature = "parallel")),
        ("file-store", cfg!(feature = "file-store")),
        ("postgres", cfg!(feature = "postgres")),
        ("redis", cfg!(feature = "redis")),
    ];
    build::build_example(env!("CARGO_MANIFEST_DIR"), name, &features)
}

/// Runs an example and returns its stdout; fails the test on a non-zero exit.
pub fn run(name: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(example(name)).args(args).output().expect("example starts");
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The last line of `stdout`, parsed as JSON.
pub fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().expect("some output")).expect("last line is JSON")
}
