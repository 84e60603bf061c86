//! Spawning, despawning and the cross-thread command queue, through the public API.

use terrarium_engine::{
    Command, CommandError, Engine, EngineConfig, MoveTarget, NpcId, NpcSpec, Order, Position, Role, Status,
    Swarm, TickLog, Velocity,
};

fn engine() -> Engine {
    Engine::builder(EngineConfig { seed: 5, threads: 1, ..EngineConfig::default() }).build().unwrap()
}

fn pos(engine: &Engine, id: NpcId) -> Position {
    *engine.world().get::<Position>(engine.entity(id).unwrap()).unwrap()
}

#[test]
fn spawn_batch_gives_consecutive_ids_and_despawn_removes() {
    let mut e = engine();
    let first = e.spawn_npc(NpcSpec::new(Role::Guard, Position::new(1.0, 0.0, 1.0)));
    let ids: Vec<NpcId> = e
        .spawn_batch((0..10).map(|i| {
            let spec = NpcSpec::new(Role::Miner, Position::new(i as f32, 0.0, 0.0));
            if i % 3 == 0 { spec.as_agent() } else { spec }
        }))
        .collect();
    assert_eq!(ids.len(), 10);
    assert!(ids.windows(2).all(|w| w[1].0 == w[0].0 + 1), "consecutive ids");
    assert_eq!(ids[0].0, first.0 + 1);
    assert_eq!(e.npc_count(), 11);
    assert_eq!(e.agent_count(), 4);
    // Each id maps to the entity that carries it, agents included.
    for id in &ids {
        let ent = e.entity(*id).unwrap();
        assert_eq!(e.world().get::<NpcId>(ent), Some(id));
    }
    assert!(e.despawn(ids[3]));
    assert!(!e.despawn(ids[3]), "second despawn of the same id");
    assert!(e.entity(ids[3]).is_none());
    assert_eq!(e.npc_count(), 10);
    assert_eq!(e.world().resource::<TickLog>().despawned, vec![ids[3]]);
    e.tick();
    assert!(e.world().resource::<TickLog>().despawned.is_empty(), "the log is per tick");
}

#[test]
fn spawns_are_clamped_into_the_world() {
    let mut e = engine();
    let id = e.spawn_npc(NpcSpec::new(Role::Scout, Position::new(-50.0, f32::NAN, 1e9)));
    let p = pos(&e, id);
    let max = e.config().world.max;
    assert_eq!(p, Position::new(0.0, 0.0, max[2]));
}

#[test]
fn commands_apply_at_the_next_tick_in_a_deterministic_order() {
    // Two senders race to teleport the same NPC. Whatever the arrival order, the tick applies
    // them sorted by (npc, kind, sender, seq): the later sender's last command wins.
    let run = |reverse: bool| {
        let mut e = engine();
        let id = e.spawn_npc(NpcSpec::new(Role::Guard, Position::new(0.0, 0.0, 0.0)));
        let (a, b) = (e.command_sender(), e.command_sender());
        let send = |s: &terrarium_engine::CommandSender, x: f32| {
            s.send(Command::Teleport { id, position: Position::new(x, 0.0, 0.0) }).unwrap();
        };
        if reverse {
            std::thread::scope(|t| {
                t.spawn(|| send(&b, 20.0)).join().unwrap();
                t.spawn(|| send(&a, 10.0)).join().unwrap();
            });
        } else {
            std::thread::scope(|t| {
                t.spawn(|| send(&a, 10.0)).join().unwrap();
                t.spawn(|| send(&b, 20.0)).join().unwrap();
            });
        }
        assert_eq!(pos(&e, id).x, 0.0, "nothing happens before the tick");
        e.tick();
        assert_eq!(e.world().resource::<TickLog>().commands_applied, 2);
        pos(&e, id).x
    };
    assert_eq!(run(false), 20.0);
    assert_eq!(run(true), 20.0);
}

#[test]
fn spawn_then_order_in_one_tick_and_despawn_last() {
    let mut e = engine();
    let s = e.command_sender();
    let id = s.spawn(NpcSpec::new(Role::Trader, Position::new(5.0, 0.0, 5.0))).unwrap();
    // Sent before the spawn in queue order, but applied after it (spawn ranks first).
    s.send(Command::Order { id, order: Order::MoveTo(Position::new(9.0, 0.0, 9.0)) }).unwrap();
    s.send(Command::Order { id, order: Order::SetRole(Role::Scout) }).unwrap();
    s.send(Command::Order { id, order: Order::JoinSwarm(4) }).unwrap();
    s.send(Command::SetVelocity { id, velocity: Velocity::new(1.0, 0.0, 0.0) }).unwrap();
    e.tick();
    let ent = e.entity(id).expect("spawned by the command");
    assert_eq!(e.world().get::<Role>(ent), Some(&Role::Scout));
    assert_eq!(e.world().get::<Swarm>(ent), Some(&Swarm(4)));
    assert_eq!(e.world().get::<MoveTarget>(ent), Some(&MoveTarget(Position::new(9.0, 0.0, 9.0))));
    assert_eq!(e.world().get::<Status>(ent), Some(&Status::Moving));
    s.send(Command::Despawn { id }).unwrap();
    s.send(Command::Order { id, order: Order::Stop }).unwrap();
    e.tick();
    assert!(e.entity(id).is_none(), "despawn ranks after the order in the same tick");
    let log = e.world().resource::<TickLog>();
    assert_eq!((log.commands_applied, log.commands_rejected), (2, 0));
}

#[test]
fn commands_for_unknown_npcs_and_duplicate_spawns_are_rejected_and_counted() {
    let mut e = engine();
    let s = e.command_sender();
    let id = e.spawn_npc(NpcSpec::new(Role::Guard, Position::default()));
    s.send(Command::Teleport { id: NpcId(999_999), position: Position::default() }).unwrap();
    s.send(Command::Spawn { id, spec: NpcSpec::new(Role::Scout, Position::default()) }).unwrap();
    e.tick();
    let log = e.world().resource::<TickLog>();
    assert_eq!((log.commands_applied, log.commands_rejected), (0, 2));
    assert_eq!(e.world().get::<Role>(e.entity(id).unwrap()), Some(&Role::Guard));
}

#[test]
fn a_full_queue_refuses_with_a_typed_error() {
    let mut cfg = EngineConfig::default();
    cfg.commands.queue_capacity = 2;
    let mut e = Engine::builder(cfg).build().unwrap();
    let s = e.command_sender();
    let stop = |id| Command::Order { id: NpcId(id), order: Order::Stop };
    s.send(stop(1)).unwrap();
    s.send(stop(2)).unwrap();
    assert_eq!(s.send(stop(3)), Err(CommandError::QueueFull { capacity: 2 }));
    e.tick();
    s.send(stop(3)).expect("room again after the tick");
    drop(e);
    assert_eq!(s.send(stop(4)), Err(CommandError::Disconnected));
}

#[test]
fn ids_named_far_beyond_the_counter_still_work() {
    let mut e = engine();
    let s = e.command_sender();
    let far = NpcId(1 << 40);
    s.send(Command::Spawn { id: far, spec: NpcSpec::new(Role::Scout, Position::default()) }).unwrap();
    e.tick();
    assert!(e.entity(far).is_some());
    assert!(e.next_npc_id().0 > far.0, "the counter moves past ids named by commands");
    let next = e.spawn_npc(NpcSpec::new(Role::Scout, Position::default()));
    assert!(next.0 > far.0);
    assert!(e.despawn(far));
    assert_eq!(e.npc_count(), 1);
}
