//! The tick's side of streaming: every few ticks, the positions that changed (bevy change
//! ticks, so the cost follows what moved) and the despawns since the last time, handed to the
//! hub's [`Inbox`].

use std::sync::Arc;

use bevy_ecs::prelude::*;
use terrarium::engine::{Engine, NpcId, NpcIndex, Position, SimClock, TickLog, TickSet};

use super::{Inbox, ViewDelta};

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

/// Runs only when due, so `Changed` covers every change since its last run.
fn publish(
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
    // Twice the population waiting means the hub is a whole view behind: resynchronise.
    let max_rows = 2 * index.len() + 65_536;
    if !p.inbox.submit(delta, max_rows) {
        tracing::warn!("the streaming hub fell behind; the next view will be sent whole");
    }
}
