//! The viewer's side of the server: its static files (no key, strict headers) and the keyed
//! reads it draws from (`/api/world`, `/api/world/npcs`, `/api/world/map`), checked against the
//! world itself. The page in a real browser is `server/tests/browser/viewer.test.mjs`.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::Value;
use terrarium::StoragePipeline;
use terrarium::engine::voxel::VoxelWorld;
use terrarium::engine::{Brain, Engine, NpcId, Role, Status};
use terrarium_server::Server;

use crate::harness::{TestServer, start, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_files_are_served_without_a_key_and_with_a_strict_policy() {
    let s = start(10, |_| {}).await;
    let res = s.http.get(s.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let html = res.text().await.unwrap();
    assert!(html.contains("/viewer/app.js"), "{html}");
    for (path, kind) in [
        ("/viewer/app.js", "text/javascript"),
        ("/viewer/render.js", "text/javascript"),
        ("/viewer/stream.js", "text/javascript"),
        ("/viewer/style.css", "text/css"),
    ] {
        let res = s.http.get(s.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        assert!(!res.bytes().await.unwrap().is_empty());
    }
    // The page takes the key from the fragment and never puts it in a URL.
    let app = s.http.get(s.url("/viewer/app.js")).send().await.unwrap().text().await.unwrap();
    assert!(app.contains("history.replaceState") && app.contains("sessionStorage"));
    assert!(!app.contains("api_key="), "the key never goes into a query string");
    // Files that don't exist are not served, and the data routes still want the key.
    assert_eq!(s.http.get(s.url("/viewer/nope.js")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(s.http.get(s.url("/api/world")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn world_and_npcs_describe_the_world_as_it_is() {
    let s = start(300, |_| {}).await;
    let (status, w) = s.get("/api/world").await;
    assert_eq!(status, StatusCode::OK, "{w}");
    assert_eq!(w["npcs"], 300);
    assert_eq!(w["agents"], 0);
    assert_eq!(w["tick_hz"], 50);
    assert_eq!(w["bounds"]["max"], serde_json::json!([256.0, 64.0, 256.0]));
    assert_eq!(w["voxel"], Value::Null);
    assert_eq!(w["depots"], serde_json::json!([]));
    assert_eq!(w["roles"][0], "miner");
    assert_eq!(w["statuses"][1], "moving");

    // Every NPC with its role and status, as the world holds them.
    let (_, all) = s.get("/api/world/npcs").await;
    let kinds = kinds(&s.server).await;
    let listed = all["npcs"].as_array().unwrap();
    assert_eq!(listed.len(), 300);
    let roles = all["roles"].as_array().unwrap();
    let statuses = all["statuses"].as_array().unwrap();
    for n in listed {
        let id = n[0].as_u64().unwrap();
        let (role, status) = &kinds[&id];
        assert_eq!(roles[n[1].as_u64().unwrap() as usize], role.name().as_str(), "npc {id}");
        assert_eq!(statuses[n[2].as_u64().unwrap() as usize], status.name(), "npc {id}");
    }

    // An area holds fewer, and only those inside it (at the time of the read).
    let (status, part) = s.get("/api/world/npcs?min_x=0&min_z=0&max_x=128&max_z=128").await;
    assert_eq!(status, StatusCode::OK, "{part}");
    let n = part["npcs"].as_array().unwrap().len();
    assert!(n > 0 && n < 300, "{n} of 300 in a quarter of the world");
    // Half an area is refused with a JSON error.
    let (status, e) = s.get("/api/world/npcs?min_x=0&max_x=10").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["error"].as_str().unwrap().contains("min_x"), "{e}");
    // No voxel world: no map.
    let (status, _) = s.get("/api/world/map").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mining_world_shows_its_agents_goals_depots_and_map() {
    let s = start_colony(40).await;
    let (status, w) = s.get("/api/world").await;
    assert_eq!(status, StatusCode::OK, "{w}");
    assert_eq!(w["agents"], 40);
    let size = w["voxel"]["size"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>();
    assert_eq!(size.len(), 3);
    assert!(!w["depots"].as_array().unwrap().is_empty());
    assert!(w["depots"][0]["stock"]["coal"].is_u64());

    // Agents get goals within a few simulated seconds; what the route says is what the world holds.
    let body = s
        .get_until("/api/world/npcs", |st, b| {
            st == StatusCode::OK && b["agents"].as_array().is_some_and(|a| a.iter().any(|x| x[2] != 0))
        })
        .await;
    let agents = body["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 40);
    let goals = body["goals"].as_array().unwrap();
    let states = body["agent_states"].as_array().unwrap();
    for a in agents {
        assert!(a[1].as_u64().unwrap() < states.len() as u64);
        assert!(a[2].as_u64().unwrap() < goals.len() as u64);
    }

    // The map: one sample per column of this small world, heights the world's surface.
    let (status, m) = s.get("/api/world/map?size=512").await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["step"], 1);
    assert_eq!(m["size"][0].as_i64().unwrap(), size[0]);
    let heights = m["height"].as_array().unwrap();
    assert_eq!(heights.len() as i64, size[0] * size[2]);
    let expected = s
        .server
        .with_engine(|e| {
            let v = e.world().resource::<VoxelWorld>();
            (v.surface_y(3, 5), v.surface_y(0, 0))
        })
        .await
        .unwrap();
    let width = m["size"][0].as_u64().unwrap() as usize;
    let at = |x: usize, z: usize| heights[z * width + x].as_i64().unwrap();
    // Agents may dig meanwhile; they dig ore and their way to it, rarely a column's top.
    assert!((at(3, 5) - i64::from(expected.0.unwrap())).abs() <= 2);
    assert!((at(0, 0) - i64::from(expected.1.unwrap())).abs() <= 2);
    assert!(m["ore"].as_array().unwrap().iter().any(|o| o.as_u64().unwrap() > 0), "some column holds ore");
    // A smaller map samples every few columns; sizes out of range are refused.
    let (_, small) = s.get("/api/world/map?size=16").await;
    assert!(small["step"].as_u64().unwrap() > 1);
    assert!(small["size"][0].as_u64().unwrap() <= 16);
    assert_eq!(s.get("/api/world/map?size=4").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(s.get("/api/world/map?size=100000").await.0, StatusCode::BAD_REQUEST);
    s.server.shutdown().await.unwrap();
}

/// Role and status of every NPC, from the tick thread.
async fn kinds(s: &Server) -> HashMap<u64, (Role, Status)> {
    s.with_engine(|e: &mut Engine| {
        let mut q = e.world_mut().query::<(&NpcId, &Role, &Status)>();
        q.iter(e.world()).map(|(id, r, st)| (id.0, (*r, *st))).collect()
    })
    .await
    .unwrap()
}

/// A server over a small mining colony (no plain NPCs).
async fn start_colony(agents: u64) -> TestServer {
    let cfg = test_config();
    let mut engine =
        Engine::builder(cfg.engine.clone()).add_plugin(terrarium::systems::core_plugin).build().unwrap();
    terrarium::systems::agents::spawn_colony(&mut engine, agents, 7).unwrap();
    let brains = engine.world_mut().query::<&Brain>().iter(engine.world()).count();
    assert_eq!(brains as u64, agents);
    let (handle, storage_cfg) = (tokio::runtime::Handle::current(), cfg.clone());
    let storage = tokio::task::spawn_blocking(move || StoragePipeline::start_on(&handle, &storage_cfg))
        .await
        .unwrap()
        .unwrap();
    let server = Server::start(&cfg, engine, Some(storage)).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    TestServer { server, base, http: reqwest::Client::new() }
}
