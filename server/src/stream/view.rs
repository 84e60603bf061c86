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

type Row<'a> = (&'a NpcId, &'a Position, &'a Role, &'a Status);
/// Position, role or status changed since the last run.
type AnyChange = Or<(Changed<Position>, Changed<Role>, Changed<Status>)>;

/// Runs only when due, so `Changed` covers every change since its last run. (A system that
/// writes a role or status without changing it makes a row the hub then finds unchanged.)
fn publish(
    mut p: ResMut<Publisher>,
    clock: Res<SimClock>,
    index: Res<NpcIndex>,
    changed: Query<Row<'_>, AnyChange>,
    all: Query<Row<'_>>,
) {
    let (mut delta, full): (ViewDelta, bool) = p.inbox.buffer();
    let rows = |(id, pos, &role, &status): Row<'_>| (id.0, [pos.x, pos.y, pos.z], NpcKind { role, status });
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
