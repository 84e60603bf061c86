//! The facade's systems keep a declared order too: every stage of an engine with every plugin
//! of `terrarium-systems` plus the performance recorder is built with bevy's ambiguity
//! detection as an error (`systems/tests/system_order.rs` checks the systems alone).

use std::sync::Arc;

use terrarium::engine::{Engine, EngineConfig};
use terrarium::perf::Performance;
use terrarium::persistence::testing::RecordingSink;
use terrarium::systems::{agents, batching, core_plugin, steering};

#[test]
fn every_stage_with_the_facade_plugins_orders_the_systems_that_share_data() {
    let perf = Performance::new();
    let mut engine = Engine::builder(EngineConfig { seed: 1, threads: 1, ..EngineConfig::default() })
        .add_plugin(perf.plugin())
        .add_plugin(core_plugin)
        .add_plugin(steering::register)
        .add_plugin(agents::plugin)
        .add_plugin(batching::plugin(Arc::new(RecordingSink::new(1))))
        .build()
        .unwrap();
    if let Err(e) = engine.check_system_order() {
        panic!("{e}\n(system names: rerun with `--features bevy_ecs/debug`)");
    }
    engine.run_ticks(3);
    assert_eq!(engine.clock().tick, 3);
}
