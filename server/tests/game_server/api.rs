//! Every endpoint, pagination and JSON errors.

use std::collections::HashMap;

use crate::harness::*;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use terrarium::engine::NpcId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_and_only_health_goes_without_the_key() {
    // The position interval on, as in a world of 100k NPCs or more (`min_interval_npcs`): what
    // commands change reaches the store with it on too (the tick a command's change is cut at is
    // pinned in systems/tests/batching.rs, against a sink that is always ready).
    let t = start(200, |c| c.engine.batching.positions.min_interval_npcs = 0).await;

    // /health needs no key; everything else does, and says so in JSON.
    let res = t.http.get(t.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let health: Value = res.json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    for path in ["/api/npcs", "/api/npcs/1", "/api/performance", "/metrics", "/ws"] {
        let res = t.http.get(t.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body: Value = res.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("x-api-key"), "{body}");
        let res = t.http.get(t.url(path)).header("x-api-key", "wrong-key-0123456789").send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path} with a wrong key");
    }
    let res = t.http.post(t.url("/api/npcs")).json(&json!({"role":"guard","position":[1,0,1]})).send().await;
    assert_eq!(res.unwrap().status(), StatusCode::UNAUTHORIZED);

    // GET /api/npcs/{id}: through the storage stack, once the first batch is written.
    let one = t.get_until("/api/npcs/1", |s, _| s == StatusCode::OK).await;
    assert_eq!(one["id"], 1);
    assert!(["miner", "builder", "guard", "trader", "scout"].contains(&one["role"].as_str().unwrap()));
    let (status, body) = t.get("/api/npcs/999999").await;
    assert_eq!((status, body["status"].as_u64()), (StatusCode::NOT_FOUND, Some(404)));

    // POST /api/npcs spawns; the NPC is readable once its batch is written, where it was put.
    let since = t.get("/api/performance").await.1["tick"].as_u64().unwrap();
    let (status, body) =
        t.post("/api/npcs", &json!({"role": "trader", "position": [100.5, 0, 20.25], "swarm": 3})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_u64().unwrap();
    assert!(id > 200, "ids continue after the population: {id}");
    let npc = stored_where_put(&t, id, [100.5, 20.25], since).await;
    assert_eq!((npc["role"].as_str(), npc["swarm"].as_u64()), (Some("trader"), Some(3)));

    // POST /api/npcs/{id}/orders: applied at the next tick (in the order sent), visible once
    // written. Out of its swarm and stopped first, it stays where it is teleported, so the
    // store ends up with exactly that however far behind the write-behind is.
    for order in [json!({"order": "join_swarm", "swarm": 0}), json!({"order": "stop"})] {
        let (status, body) = t.post(&format!("/api/npcs/{id}/orders"), &order).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let (status, _) =
        t.post(&format!("/api/npcs/{id}/orders"), &json!({"order": "teleport", "position": [7, 0, 9]})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    t.get_until(&format!("/api/npcs/{id}"), |_, b| {
        b["x"].as_f64() == Some(7.0) && b["z"].as_f64() == Some(9.0) && b["swarm"] == 0
    })
    .await;
    let (status, _) =
        t.post(&format!("/api/npcs/{id}/orders"), &json!({"order": "set_role", "role": "guard"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    t.get_until(&format!("/api/npcs/{id}"), |_, b| b["role"] == "guard").await;
    let (status, _) = t.post(&format!("/api/npcs/{id}/orders"), &json!({"order": "despawn"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    t.get_until(&format!("/api/npcs/{id}"), |s, _| s == StatusCode::NOT_FOUND).await;
    let (status, body) = t.post("/api/npcs/424242/orders", &json!({"order": "stop"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // GET /api/performance: the snapshot, with the server's counters.
    let (status, perf) = t.get("/api/performance").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(perf["npcs"], 200, "the spawned one is gone again: {perf}");
    assert_eq!(perf["tick_hz"], 50);
    assert!(perf["ticks_total"].as_u64().unwrap() > 0);
    assert!(perf["tick_latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(perf["stages"].as_array().unwrap().len(), 6);
    assert!(perf["batchers"]["batches"].as_u64().unwrap() > 0);
    assert_eq!(perf["write_behind"]["writes_dropped"], 0);
    assert_eq!(perf["caches"][0]["tier"], "l1");
    assert!(perf["caches"][0]["hits"].as_u64().unwrap() > 0, "repeated reads hit the L1: {perf}");
    assert_eq!(perf["circuit_breakers"][0]["name"], "storage.memory");
    assert_eq!(perf["circuit_breakers"][0]["state"], "closed");
    assert_eq!(perf["pathfinding"]["threads"], 1);
    assert!(perf["server"]["auth_rejected"].as_u64().unwrap() >= 11);

    // GET /ws: the upgrade needs the key, in the header or (for browsers) the query.
    let url = format!("ws://{}/ws?api_key={KEY}", t.server.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let hello: Value = serde_json::from_str(&hello).unwrap();
    assert_eq!((hello["type"].as_str(), hello["ws_hz"].as_f64()), (Some("hello"), Some(25.0)));
    let res = t.http.get(t.url("/ws")).header("x-api-key", KEY).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "a plain GET is not an upgrade");

    t.server.shutdown().await.unwrap();
}

/// NPC `id`'s stored record, once it shows the NPC put at `at` (`[x, z]`) by a command sent
/// after tick `since`: a record of a later tick, no farther from `at` than the NPC could walk
/// since then. The store holds an NPC's latest position: the first position flush after the
/// command carries where it was put (`systems/tests/batching.rs` pins that tick), unless the
/// write-behind is still busy with the previous one (a loaded machine) and the NPC walks on
/// meanwhile.
async fn stored_where_put(t: &TestServer, id: u64, at: [f64; 2], since: u64) -> Value {
    let cfg = test_config();
    // The fastest anything walks in this world: wanderers or swarms.
    let swarm_pace = terrarium::systems::steering::Flocking::default().params().speed;
    let pace = f64::from(cfg.engine.npc.wander_speed).max(swarm_pace);
    let hz = f64::from(cfg.engine.tick_hz);
    t.get_until(&format!("/api/npcs/{id}"), |s, b| {
        let (Some(x), Some(z), Some(tick)) = (b["x"].as_f64(), b["z"].as_f64(), b["updated_tick"].as_u64())
        else {
            return false;
        };
        let walked = pace * tick.saturating_sub(since) as f64 / hz;
        s == StatusCode::OK && tick > since && (x - at[0]).hypot(z - at[1]) <= walked + 1e-3
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_walks_every_npc_once_and_filters_match_the_world() {
    let t = start(250, |_| {}).await;
    // Wait until the registry holds the whole population.
    t.get_until("/api/npcs/250", |s, _| s == StatusCode::OK).await;
    let all = t.list_all("").await;
    let ids: Vec<u64> = all.iter().map(|n| n["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=250).collect::<Vec<u64>>(), "ascending, each once, across 3 pages");
    let (_, first) = t.get("/api/npcs?limit=7").await;
    assert_eq!((first["npcs"].as_array().unwrap().len(), first["next"].as_u64()), (7, Some(7)));
    let (_, second) = t.get("/api/npcs?limit=7&after=7").await;
    assert_eq!(second["npcs"][0]["id"], 8);

    // Filters agree with the world.
    let roles: HashMap<u64, String> = t
        .server
        .with_engine(|e| {
            let mut q = e.world_mut().query::<(&NpcId, &terrarium::engine::Role)>();
            q.iter(e.world()).map(|(id, r)| (id.0, r.name())).collect()
        })
        .await
        .unwrap();
    let miners = t.list_all("&role=miner").await;
    let want = roles.values().filter(|r| *r == "miner").count();
    assert!(want > 0 && miners.len() == want, "{} listed, {want} in the world", miners.len());
    assert!(miners.iter().all(|n| n["role"] == "miner"));
    let moving = t.list_all("&status=moving&role=scout").await;
    assert!(!moving.is_empty() && moving.iter().all(|n| n["status"] == "moving" && n["role"] == "scout"));
    assert!(t.list_all("&swarm=9").await.is_empty());

    // Bad queries are 400s that say what is wrong.
    for (query, says) in [
        ("limit=101", "limit must be 1 ..= 100"),
        ("limit=0", "limit must be"),
        ("limit=ten", "limit"),
        ("status=asleep", "unknown status"),
        ("role=wizard", "unknown role"),
        ("colour=red", "unknown field"),
    ] {
        let (status, body) = t.get(&format!("/api/npcs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{query}: {body}");
    }
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_json_errors() {
    let t = start(10, |c| c.server.max_body_bytes = 1024).await;
    let post_raw = |path: &str, body: &str, json: bool| {
        let mut req = t.http.post(t.url(path)).header("x-api-key", KEY).body(body.to_string());
        if json {
            req = req.header("content-type", "application/json");
        }
        req.send()
    };
    let cases: Vec<(&str, String, bool, StatusCode, &str)> = vec![
        ("/api/npcs", "{not json".into(), true, StatusCode::BAD_REQUEST, "parse the request body as JSON"),
        ("/api/npcs", r#"{"position":[1,0,1]}"#.into(), true, StatusCode::UNPROCESSABLE_ENTITY, "role"),
        (
            "/api/npcs",
            r#"{"role":"guard","position":[1,0,1],"hp":3}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field",
        ),
        (
            "/api/npcs",
            r#"{"role":"wizard","position":[1,0,1]}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown role",
        ),
        (
            "/api/npcs",
            r#"{"role":"guard","position":[1,0,999]}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "position",
        ),
        (
            "/api/npcs",
            r#"{"role":"guard","position":[1,0,1],"velocity":[500,0,0]}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "velocity",
        ),
        (
            "/api/npcs",
            r#"{"role":"guard","position":[1,0,1],"health":0}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "health",
        ),
        (
            "/api/npcs",
            r#"{"role":"guard","position":[1,0,1]}"#.into(),
            false,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            "/api/npcs",
            format!(r#"{{"role":"guard","position":[1,0,1],"pad":"{}"}}"#, "x".repeat(2000)),
            true,
            StatusCode::PAYLOAD_TOO_LARGE,
            "length limit",
        ),
        (
            "/api/npcs/1/orders",
            r#"{"order":"fly"}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown variant",
        ),
        (
            "/api/npcs/1/orders",
            r#"{"order":"move_to","target":[1,0]}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "target",
        ),
        (
            "/api/npcs/1/orders",
            r#"{"order":"move_to","target":[1,-5,1]}"#.into(),
            true,
            StatusCode::UNPROCESSABLE_ENTITY,
            "not inside the world",
        ),
        ("/api/npcs/x/orders", r#"{"order":"stop"}"#.into(), true, StatusCode::BAD_REQUEST, "parse"),
    ];
    for (path, body, json, want, says) in cases {
        let res = post_raw(path, &body, json).await.unwrap();
        let status = res.status();
        assert_eq!(res.headers()["content-type"], "application/json", "{path} {body}");
        let got: Value = res.json().await.unwrap();
        assert_eq!(status, want, "{path} {body}: {got}");
        assert!(got["error"].as_str().unwrap().contains(says), "{path} {body}: {got}");
        assert_eq!(got["status"], want.as_u16());
    }
    let (status, body) = t.get("/api/npcs/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = t.get("/nope").await;
    assert_eq!((status, body["status"].as_u64()), (StatusCode::NOT_FOUND, Some(404)));
    let res = t.http.delete(t.url("/api/npcs")).header("x-api-key", KEY).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(res.json::<Value>().await.unwrap()["error"].is_string());
    t.server.shutdown().await.unwrap();
}

/// A key shorter than 32 bytes is refused at start-up, naming the setting and not the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_api_key_is_refused_at_start() {
    let mut cfg = test_config();
    cfg.server.api_key = "short-but-not-empty".into();
    let engine = terrarium::engine::Engine::builder(cfg.engine.clone()).build().unwrap();
    let err = terrarium_server::Server::start(&cfg, engine, None).await.unwrap_err().to_string();
    assert!(err.contains("server.api_key") && err.contains("32"), "{err}");
    assert!(!err.contains("short-but-not-empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_reads_and_ws_are_in_the_openapi_document_as_sent() {
    let t = start(20, |_| {}).await;
    let doc: Value = t.http.get(t.url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    for (path, schema) in [("/api/world", "World"), ("/api/world/npcs", "WorldNpcs")] {
        let op = &doc["paths"][path]["get"];
        let named = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].as_str();
        assert_eq!(named, Some(format!("#/components/schemas/{schema}").as_str()), "{path}: {op}");
        let (status, body) = t.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let mut sent: Vec<&String> = body.as_object().unwrap().keys().collect();
        let mut documented: Vec<&String> =
            doc["components"]["schemas"][schema]["properties"].as_object().unwrap().keys().collect();
        sent.sort();
        documented.sort();
        assert_eq!(sent, documented, "{path}: the mirror {schema} has exactly the keys sent");
    }
    // No voxel world here: the map is a documented 404; a plain GET of /ws a documented 400.
    let (status, _) = t.get("/api/world/map").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(doc["paths"]["/api/world/map"]["get"]["responses"]["404"].is_object());
    let (status, _) = t.get("/ws").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(doc["paths"]["/ws"]["get"]["responses"]["400"].is_object());
    assert!(doc["paths"]["/ws"]["get"]["responses"]["101"].is_object());
    t.server.shutdown().await.unwrap();
}
