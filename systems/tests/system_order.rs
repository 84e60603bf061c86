//! Every two systems of a stage that touch the same data, one of them writing, have a declared
//! order: the stages with every plugin of this crate are built with bevy's ambiguity detection
//! as an error. Without a declared order bevy may run them either way, and a plugin added
//! elsewhere could change the world a seed gives.

use std::sync::Arc;

use bevy_ecs::prelude::*;
use terrarium_engine::{Engine, EngineConfig, EngineError, Position, TickSet};
use terrarium_persistence::testing::RecordingSink;
use terrarium_systems::{agents, batching, core_plugin, steering};

fn every_plugin() -> Engine {
    Engine::builder(EngineConfig { seed: 1, threads: 1, ..EngineConfig::default() })
        .add_plugin(core_plugin)
        .add_plugin(steering::register)
        .add_plugin(agents::plugin)
        .add_plugin(batching::plugin(Arc::new(RecordingSink::new(1))))
        .build()
        .unwrap()
}

#[test]
fn every_stage_orders_the_systems_that_share_data() {
    let mut engine = every_plugin();
    if let Err(e) = engine.check_system_order() {
        panic!("{e}\n(system names: rerun with `--features bevy_ecs/debug`)");
    }
    // The check leaves the engine as it was: it still ticks.
    engine.run_ticks(3);
    assert_eq!(engine.clock().tick, 3);
}

#[test]
fn an_unordered_writer_is_reported_with_its_stage() {
    fn nudge(mut q: Query<&mut Position>) {
        for mut p in &mut q {
            p.x += 0.0;
        }
    }
    let mut engine = every_plugin();
    engine.add_systems(TickSet::Act, nudge);
    match engine.check_system_order() {
        Err(EngineError::Schedule { stage, report }) => {
            assert_eq!(stage, "act");
            // One writer too many in `Act`: it conflicts with walking and with both movement
            // systems (bevy names them only with its `debug` feature).
            assert!(report.starts_with("3 pairs of systems with conflicting data access"), "{report}");
        }
        other => panic!("expected an ambiguity in act, got {other:?}"),
    }
}
