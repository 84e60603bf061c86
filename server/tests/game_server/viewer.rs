//! The viewer's side of the server: its static files (no key, strict headers) and the keyed
//! reads it draws from (`/api/world`, `/api/world/npcs`, `/api/world/map`), checked against the
//! world itself. The page in a real browser is `server/tests/browser/viewer.test.mjs`.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::Value;
use terrarium::engine::voxel::VoxelWorld;
use terrarium::engine::{Brain, Engine, NpcId, Role, Status};
use terrarium_server::Server;

#[cfg(feature = "file-store")]
use crate::harness::world_positions;
use crate::harness::{TestServer, start, start_with, test_config};

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
    // Agents only: no NPC list.
    let (status, none) = s.get("/api/world/npcs?npcs=false").await;
    assert_eq!(status, StatusCode::OK, "{none}");
    assert_eq!(
        (none["npcs"].as_array().unwrap().len(), none["agents"].as_array().map(Vec::len)),
        (0, Some(0))
    );
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
    let (_, only) = s.get("/api/world/npcs?npcs=false").await;
    assert_eq!((only["npcs"].as_array().unwrap().len(), only["agents"].as_array().unwrap().len()), (0, 40));
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

#[cfg(feature = "file-store")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_npcs_track_is_read_from_storage_in_pages() {
    use terrarium::persistence::BackendKind;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("track.db");
    let s = start(50, move |c| {
        c.storage.backend = BackendKind::Embedded;
        c.storage.embedded.path = path;
    })
    .await;
    // Put NPC 7 somewhere it could not have wandered to: its track must get there.
    let far = [200.0, 20.0, 30.0];
    let (status, body) =
        s.post("/api/npcs/7/orders", &serde_json::json!({"order": "teleport", "position": far})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let t = s
        .get_until("/api/npcs/7/track?since_tick=0", |st, b| {
            st == StatusCode::OK
                && b["points"].as_array().is_some_and(|p| {
                    p.len() >= 4 && p.iter().any(|q| (q[1].as_f64().unwrap() - far[0]).abs() < 3.0)
                })
        })
        .await;
    assert_eq!(t["id"], 7);
    let points = t["points"].as_array().unwrap();
    let ticks: Vec<u64> = points.iter().map(|p| p[0].as_u64().unwrap()).collect();
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "oldest first, one per tick: {ticks:?}");
    let (since, until) = (t["since_tick"].as_u64().unwrap(), t["until_tick"].as_u64().unwrap());
    assert!(ticks.iter().all(|&k| since <= k && k < until), "{since}..{until}: {ticks:?}");
    // Where the world has it now is where its track heads (it wanders at 8 blocks/s).
    let (_, now) = world_positions(&s.server).await;
    let last = points.last().unwrap();
    let here = now[&7];
    let d = ((last[1].as_f64().unwrap() - f64::from(here[0])).powi(2)
        + (last[3].as_f64().unwrap() - f64::from(here[2])).powi(2))
    .sqrt();
    assert!(d < 40.0, "the stored track ends {d} blocks from the NPC");

    // A limit cuts it; `next_since_tick` goes on right after, with nothing skipped.
    let (_, first) = s.get(&format!("/api/npcs/7/track?since_tick={}&limit=2", ticks[0])).await;
    let two = first["points"].as_array().unwrap();
    assert_eq!(two.len(), 2, "{first}");
    assert_eq!((two[0][0].as_u64(), two[1][0].as_u64()), (Some(ticks[0]), Some(ticks[1])));
    let next = first["next_since_tick"].as_u64().unwrap();
    assert_eq!(next, ticks[1] + 1);
    let (_, rest) = s.get(&format!("/api/npcs/7/track?since_tick={next}&limit=1")).await;
    assert_eq!(rest["points"][0][0].as_u64(), Some(ticks[2]), "{rest}");

    // Bad input: typed JSON errors.
    for (path, code) in [
        ("/api/npcs/7/track?limit=0", StatusCode::BAD_REQUEST),
        ("/api/npcs/7/track?limit=1001", StatusCode::BAD_REQUEST),
        ("/api/npcs/7/track?since_tick=-1", StatusCode::BAD_REQUEST),
        ("/api/npcs/7/track?colour=red", StatusCode::BAD_REQUEST),
        ("/api/npcs/x/track", StatusCode::BAD_REQUEST),
        ("/api/npcs/0/track", StatusCode::NOT_FOUND),
        ("/api/npcs/999999/track", StatusCode::NOT_FOUND),
    ] {
        let (status, e) = s.get(path).await;
        assert_eq!(status, code, "{path}: {e}");
        assert_eq!(e["status"], code.as_u16(), "{path}: {e}");
        assert!(e["error"].is_string(), "{path}: {e}");
    }
    // A start past every tick: nothing yet, nothing to go on with.
    let (status, late) = s.get(&format!("/api/npcs/7/track?since_tick={}", u64::MAX)).await;
    assert_eq!(status, StatusCode::OK, "{late}");
    assert_eq!((late["points"].as_array().map(Vec::len), &late["next_since_tick"]), (Some(0), &Value::Null));
    let res = s.http.get(s.url("/api/npcs/7/track")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    s.server.shutdown().await.unwrap();
}

/// The storage banner: with the database gone, the fields the viewer's banner reads
/// (`write_behind.degraded`/`breaker_open`, `circuit_breakers[].state` of
/// `/api/performance`) say so, `/health` says `degraded`, the track is a typed 503, and
/// positions still stream. (The banner's text from those fields: the browser test.)
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_storage_down_the_banners_fields_say_so_and_positions_still_stream() {
    use crate::harness::fast_failing_postgres;
    use futures_util::StreamExt;
    use terrarium::persistence::testing::{OwnServers, service_url};
    if service_url("TERRARIUM_TEST_PG_URL").is_none() {
        return;
    }
    let servers = OwnServers::new();
    servers.run("start-pg");
    let url = servers.url("DATABASE_URL");
    let s = start(200, |c| fast_failing_postgres(c, url, 60_000)).await;
    let healthy =
        s.get_until("/api/performance", |st, p| st == StatusCode::OK && p["write_behind"].is_object()).await;
    assert_eq!(healthy["write_behind"]["degraded"], false, "{healthy}");
    s.get_until("/api/npcs/3/track?since_tick=0", |st, _| st == StatusCode::OK).await;

    servers.run("kill-pg");
    let perf = s
        .get_until("/api/performance", |st, p| {
            let wb = &p["write_behind"];
            st == StatusCode::OK
                && (wb["degraded"] == true || wb["breaker_open"] == true)
                && p["circuit_breakers"].as_array().is_some_and(|b| b.iter().any(|c| c["state"] == "open"))
        })
        .await;
    let (_, health) = s.get("/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    // Reads of history go through the same read circuit: refused at once, as JSON.
    let e =
        s.get_until("/api/npcs/3/track?since_tick=0", |st, _| st == StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(e["status"], 503, "{e}");
    assert!(e["error"].is_string(), "{e}");
    // Positions still stream, and the world still ticks.
    let url = format!("ws://{}/ws", s.server.local_addr());
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut().insert("x-api-key", crate::harness::KEY.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let sub = r#"{"type":"subscribe","min":[0,0],"max":[256,256]}"#;
    futures_util::SinkExt::send(&mut ws, tokio_tungstenite::tungstenite::Message::text(sub)).await.unwrap();
    let mut ticks = Vec::new();
    while ticks.len() < 3 {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Ok(text) = msg.into_text() else { continue };
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["type"] == "reset" || v["type"] == "delta" {
            ticks.push(v["tick"].as_u64().unwrap());
        }
    }
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "frames of new ticks while storage is down: {ticks:?}");
    let (_, perf2) = s.get("/api/performance").await;
    assert!(perf2["tick"].as_u64() > perf["tick"].as_u64(), "the world ticks on");
    drop(ws);
    // No graceful shutdown: its drain would wait for the dead database (`Drop` drains
    // nothing).
    drop(s);
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
    start_with(test_config(), |engine| {
        terrarium::systems::agents::spawn_colony(engine, agents, 7).unwrap();
        let brains = engine.world_mut().query::<&Brain>().iter(engine.world()).count();
        assert_eq!(brains as u64, agents);
    })
    .await
}
