//! Determinism of swarm flocking: the same seed gives the same world for 1 and 2 threads, and a
//! run continued from a snapshot matches one that never stopped; the Flocking benchmark's
//! published checksums, with and without the `parallel` feature.

use terrarium_engine::rng::StreamRng;
use terrarium_engine::{Engine, EngineConfig, NpcSpec, ParPool, Position, Role, Velocity};
use terrarium_systems::steering::{Boid, Flock, FlockParams, Space, benchmark_order};

fn engine(threads: usize) -> Engine {
    let mut cfg = EngineConfig { seed: 5, threads, tick_hz: 10, ..EngineConfig::default() };
    cfg.world.max = [60.0, 10.0, 60.0];
    Engine::builder(cfg)
        .add_plugin(terrarium_systems::core_plugin)
        .add_plugin(terrarium_systems::steering::register)
        .build()
        .unwrap()
}

/// 3 000 NPCs in three swarms (several parallel chunks of the flocking step), plus wanderers,
/// scattered with random headings.
fn populate(engine: &mut Engine) {
    let mut r = StreamRng::new(17);
    let specs: Vec<NpcSpec> = (0..3_500)
        .map(|i| {
            let pos = Position::new(r.range_f32(0.0, 60.0), 0.0, r.range_f32(0.0, 60.0));
            let vel = Velocity::new(r.range_f32(-1.0, 1.0), 0.0, r.range_f32(-1.0, 1.0));
            let spec = NpcSpec::new(Role::Scout, pos).moving(vel);
            if i < 3_000 { spec.in_swarm(1 + i % 3) } else { spec }
        })
        .collect();
    engine.spawn_batch(specs);
}

#[test]
fn same_world_for_one_and_two_threads_and_after_a_snapshot() {
    let (mut one, mut two) = (engine(1), engine(2));
    populate(&mut one);
    populate(&mut two);
    one.run_ticks(30);
    two.run_ticks(30);
    assert_eq!(one.world_hash(), two.world_hash());

    let mut bytes = Vec::new();
    two.save_snapshot(&mut bytes).unwrap();
    let mut loaded = Engine::builder(two.config().clone())
        .add_plugin(terrarium_systems::core_plugin)
        .add_plugin(terrarium_systems::steering::register)
        .build_from_snapshot(&mut bytes.as_slice())
        .unwrap();
    two.run_ticks(30);
    loaded.run_ticks(30);
    assert_eq!(two.world_hash(), loaded.world_hash());

    let mut still = engine(2);
    populate(&mut still);
    still.run_ticks(60);
    assert_eq!(still.world_hash(), two.world_hash(), "the same seed gives the same world");
}

/// The checksums `BENCHMARKS.md` publishes for `examples/flocking.rs` ("seed 42, any machine, any
/// thread count for `parallel`"), from the library the example runs: `scripts/test.sh` runs this
/// with the `parallel` feature and without it (the example's own test, `tests/examples.rs`,
/// runs in the all-features build). The 100k case is the parallel step on 2 threads.
#[test]
fn the_flocking_benchmark_gives_the_checksums_benchmarks_md_publishes() {
    // (name, boids, extent, vision, parallel step, checksum)
    let cases = [
        ("small", 200, 100.0, 5.0, false, "a62d70d605dbee3b"),
        ("large", 400, 150.0, 15.0, false, "2ea9f7d93c16d529"),
        ("10k", 10_000, 100.0, 5.0, false, "7735c721ce26b277"),
        ("100k parallel, 2 threads", 100_000, 2236.0, 5.0, true, "d4c2edc7ffcd8075"),
    ];
    let benchmarks =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md")).unwrap();
    let pool = ParPool::new(2).unwrap();
    for (name, boids, extent, vision, parallel, want) in cases {
        assert!(
            benchmarks.contains(&format!("`{want}`")),
            "BENCHMARKS.md no longer publishes {want} ({name})"
        );
        let params = FlockParams { vision, ..FlockParams::default() };
        let mut flock = Flock::new(params, Space::periodic([extent, extent]).unwrap()).unwrap();
        flock.load(Boid::scattered(boids, extent, 42));
        let mut order = benchmark_order(42);
        for _ in 0..100 {
            if parallel {
                flock.step_parallel(&pool);
            } else {
                flock.step_faithful(&mut order);
            }
        }
        let got = format!("{:016x}", flock.checksum());
        assert_eq!(got, want, "{name}, parallel feature = {}", cfg!(feature = "parallel"));
    }
}
