//! The tick's side of streaming: every few ticks, the NPCs whose position, role or status
//! changed (bevy change ticks, so the cost follows what changed) and the despawns since the
//! last time, handed to the hub's [`Inbox`].

use std::sync::Arc;

use bevy_ecs::prelude::*;
use terrarium::engine::{Engine, NpcId, NpcIndex, Position, Role, SimClock, Status, TickLog, TickSet};

use super::{Inbox, ViewDelta};
use crate::protocol::NpcKind;

/// Adds the view publisher to the `Flush` stage: despawns are collected every tick, positions
/// every `every` ticks.
pub(crate) fn register(engine: &mut Engine, inbox: Arc<Inbox>, every: u64) {
    engine.world_mut().insert_resource(Publisher { inbox, every: every.max(1), removed: Vec::new() });
    engine.add_systems(TickSet::Flush, (collect_despawns, publish.run_if(due)).chain());
}

#[derive(Resource)]
struct Publisher {
    inbox: Arc<Inbox>,
    every: u64,
    removed: Vec<u64>,
}

fn due(clock: Res<SimClock>, p: Res<Publisher>) -> bool {
    clock.tick.is_multiple_of(p.every)
}

/// `TickLog::despawned` is cleared at the end of every tick, so it is read every tick.
fn collect_despawns(log: Res<TickLog>, mut p: ResMut<Publisher>) {
    if !log.despawned.is_empty() {
        p.removed.extend(log.despawned.iter().map(|id| id.0));
    }
}

type Kind<'a> = (&'a NpcId, &'a Role, &'a Status);
/// NPCs whose position changed since the last run, and those whose role or status did (or
/// were added).
type Changes<'w, 's> = (
    Query<'w, 's, (&'static NpcId, &'static Position), Changed<Position>>,
    Query<'w, 's, Kind<'static>, Or<(Changed<Role>, Changed<Status>)>>,
);
/// Every NPC's position, and every NPC's role and status.
type Everything<'w, 's> = (Query<'w, 's, (&'static NpcId, &'static Position)>, Query<'w, 's, Kind<'static>>);

/// Runs only when due, so `Changed` covers every change since its last run. (A system that
/// writes a role or status without changing it makes an entry the hub then finds unchanged.)
fn publish(
    mut p: ResMut<Publisher>,
    clock: Res<SimClock>,
    index: Res<NpcIndex>,
    (moved, kinds): Changes<'_, '_>,
    (all, all_kinds): Everything<'_, '_>,
) {
    let (mut delta, full): (ViewDelta, bool) = p.inbox.buffer();
    let row = |(id, pos): (&NpcId, &Position)| (id.0, [pos.x, pos.y, pos.z]);
    let kind = |(id, &role, &status): Kind<'_>| (id.0, NpcKind { role, status });
    if full {
        delta.moved.extend(all.iter().map(row));
        delta.kinds.extend(all_kinds.iter().map(kind));
    } else {
        delta.moved.extend(moved.iter().map(row));
        delta.kinds.extend(kinds.iter().map(kind));
    }
    delta.removed.append(&mut p.removed);
    delta.tick = clock.tick;
    delta.full = full;
    // Twice the population waiting means the hub is a whole view behind: resynchronise.
    let max_rows = 2 * index.len() + 65_536;
    if !p.inbox.submit(delta, max_rows) {
        tracing::warn!("the streaming hub fell behind; the next view will be sent whole");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the tick thread pays to publish views at 100k wandering NPCs (all move every tick),
    /// now (positions, and a scan for role/status changes, none here) against before role and
    /// status were streamed (positions only), over the tick without publishing: ticks
    /// interleaved, medians of 31, publishing every tick:
    /// `cargo test --release -p terrarium-server --lib stream::view::tests::publish_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement: run it in release"]
    fn publish_cost() {
        /// The publisher before role and status were streamed (positions only), as it was.
        fn publish_before(
            mut p: ResMut<Publisher>,
            clock: Res<SimClock>,
            index: Res<NpcIndex>,
            changed: Query<(&NpcId, &Position), Changed<Position>>,
            all: Query<(&NpcId, &Position)>,
        ) {
            let (mut delta, full): (ViewDelta, bool) = p.inbox.buffer();
            let rows = |(id, pos): (&NpcId, &Position)| (id.0, [pos.x, pos.y, pos.z]);
            if full {
                delta.moved.extend(all.iter().map(rows));
            } else {
                delta.moved.extend(changed.iter().map(rows));
            }
            delta.removed.append(&mut p.removed);
            delta.tick = clock.tick;
            delta.full = full;
            let max_rows = 2 * index.len() + 65_536;
            p.inbox.submit(delta, max_rows);
        }
        let engine = |publisher: u8| {
            let cfg = terrarium::Config::default().engine;
            let mut e = Engine::builder(cfg).add_plugin(terrarium::systems::core_plugin).build().unwrap();
            terrarium::systems::wander::spawn_wanderers(&mut e, 100_000);
            let inbox = Arc::new(Inbox::default());
            match publisher {
                1 => {
                    let p = Publisher { inbox: Arc::clone(&inbox), every: 1, removed: Vec::new() };
                    e.world_mut().insert_resource(p);
                    e.add_systems(TickSet::Flush, (collect_despawns, publish_before.run_if(due)).chain());
                }
                2 => register(&mut e, Arc::clone(&inbox), 1),
                _ => {}
            }
            e.tick();
            (e, inbox)
        };
        let mut engines = [engine(0), engine(1), engine(2)];
        let mut ms = [vec![], vec![], vec![]];
        for _ in 0..31 {
            for (k, (e, inbox)) in engines.iter_mut().enumerate() {
                let t = std::time::Instant::now();
                e.tick();
                ms[k].push(t.elapsed().as_secs_f64() * 1e3);
                if let Some(d) = inbox.take(std::time::Duration::ZERO) {
                    assert!(d.moved.len() > 90_000, "{} rows", d.moved.len());
                    inbox.give_back(d);
                }
            }
        }
        let [none, before, now] = ms.map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        });
        println!(
            "100k wanderers, medians of 31 ticks: no publisher {none:.3} ms; publishing positions (before) {before:.3} ms \
             (+{:.3}); positions, role and status (now) {now:.3} ms (+{:.3})",
            before - none,
            now - none
        );
    }
}
