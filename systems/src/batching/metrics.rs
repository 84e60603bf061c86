//! Metric batching: counters that systems add to between flushes ([`Metrics`]), aggregated to
//! one row per (entity, metric) per flush, and the metrics the batching systems sample
//! themselves (stage times, commands, distance walked by agents and ordered NPCs).

use std::collections::BTreeMap;

use bevy_ecs::prelude::*;
use terrarium_engine::{Agent, MoveTarget, NpcId, SimClock, StageTimings, TickLog, TickSet, Velocity};
use terrarium_persistence::{EntityKind, MetricRow};

/// Well-known metric names.
pub mod names {
    /// Blocks an NPC walked (agents and NPCs walking to an ordered target).
    pub const DISTANCE_TRAVELLED: &str = "distance_travelled";
    /// Blocks an NPC mined.
    pub const BLOCKS_MINED: &str = "blocks_mined";
    /// Paths computed for an NPC.
    pub const PATHS_COMPUTED: &str = "paths_computed";
    /// Tasks an NPC completed.
    pub const TASKS_SUCCEEDED: &str = "tasks_succeeded";
    /// Tasks an NPC gave up.
    pub const TASKS_FAILED: &str = "tasks_failed";
    /// Wall-clock microseconds a stage took (entity: the stage's index in `TickSet::ALL`).
    pub const STAGE_US: &str = "stage_us";
    /// Commands applied at tick starts (entity: the world).
    pub const COMMANDS_APPLIED: &str = "commands_applied";
    /// Commands refused at tick starts (entity: the world).
    pub const COMMANDS_REJECTED: &str = "commands_rejected";
}

/// Counters aggregated between metric flushes: one row per (entity, metric) per flush, with
/// the sum of the values and the number of samples.
///
/// # Examples
/// ```
/// use terrarium_persistence::EntityKind;
/// use terrarium_systems::batching::{Metrics, metric_names};
/// let mut m = Metrics::default();
/// m.add(EntityKind::Npc, 7, metric_names::BLOCKS_MINED, 1.0, 10);
/// m.add(EntityKind::Npc, 7, metric_names::BLOCKS_MINED, 2.0, 11);
/// assert_eq!(m.pending(), 1);
/// let rows = m.take(12);
/// assert_eq!((rows[0].value, rows[0].samples), (3.0, 2));
/// ```
#[derive(Resource, Debug, Default)]
pub struct Metrics {
    totals: BTreeMap<(EntityKind, u64, &'static str), (f64, u32)>,
    first_tick: Option<u64>,
    samples: u64,
}

impl Metrics {
    /// Adds `value` to the metric `name` of one entity, sampled at `tick`.
    pub fn add(&mut self, kind: EntityKind, entity_id: u64, name: &'static str, value: f64, tick: u64) {
        let e = self.totals.entry((kind, entity_id, name)).or_insert((0.0, 0));
        e.0 += value;
        e.1 = e.1.saturating_add(1);
        self.samples += 1;
        self.first_tick.get_or_insert(tick);
    }

    /// Rows the next flush would write (distinct (entity, metric) pairs).
    #[must_use]
    pub fn pending(&self) -> usize {
        self.totals.len()
    }

    /// Samples added since the last flush.
    #[must_use]
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Tick of the oldest sample waiting.
    #[must_use]
    pub fn first_pending_tick(&self) -> Option<u64> {
        self.first_tick
    }

    /// Takes the aggregated rows (in key order), stamped with the flush tick.
    pub fn take(&mut self, tick: u64) -> Vec<MetricRow> {
        self.first_tick = None;
        self.samples = 0;
        std::mem::take(&mut self.totals)
            .into_iter()
            .map(|((entity_kind, entity_id, name), (value, samples))| MetricRow {
                entity_kind,
                entity_id,
                name: name.to_string(),
                tick,
                value,
                samples,
            })
            .collect()
    }
}

/// Whether the batching systems sample stage times (wall clock, so not reproducible; every
/// other metric is).
#[derive(Resource, Debug, Clone, Copy)]
pub(crate) struct SampleStageTimes(pub bool);

/// NPCs whose distance is tracked: agents and NPCs walking to an ordered target.
type Walking = Or<(With<Agent>, With<MoveTarget>)>;

/// Samples the metrics the batching owns: stage times of the previous tick, commands, and the
/// distance walked this tick by agents and NPCs with a move order (plain wanderers are not
/// tracked one by one: a million rows every flush would say little the positions do not).
pub(crate) fn sample_metrics(
    mut metrics: ResMut<Metrics>,
    clock: Res<SimClock>,
    timings: Res<StageTimings>,
    stage_times: Res<SampleStageTimes>,
    log: Res<TickLog>,
    walkers: Query<(&NpcId, &Velocity), Walking>,
) {
    let tick = clock.tick;
    if stage_times.0 && timings.ticks > 0 {
        for set in TickSet::ALL {
            let us = timings.last[set.index()].as_secs_f64() * 1e6;
            metrics.add(EntityKind::System, set.index() as u64, names::STAGE_US, us, tick);
        }
    }
    if log.commands_applied > 0 {
        metrics.add(EntityKind::World, 0, names::COMMANDS_APPLIED, f64::from(log.commands_applied), tick);
    }
    if log.commands_rejected > 0 {
        metrics.add(EntityKind::World, 0, names::COMMANDS_REJECTED, f64::from(log.commands_rejected), tick);
    }
    let dt = clock.dt_secs();
    for (id, v) in &walkers {
        let speed = (v.x * v.x + v.y * v.y + v.z * v.z).sqrt();
        if speed > 0.0 {
            metrics.add(EntityKind::Npc, id.0, names::DISTANCE_TRAVELLED, f64::from(speed * dt), tick);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_entity_and_metric_per_flush() {
        let mut m = Metrics::default();
        for t in 1..=10 {
            m.add(EntityKind::Npc, 1, names::BLOCKS_MINED, 1.0, t);
            m.add(EntityKind::Npc, 2, names::BLOCKS_MINED, 2.0, t);
            m.add(EntityKind::Npc, 1, names::TASKS_FAILED, 1.0, t);
        }
        assert_eq!((m.pending(), m.samples(), m.first_pending_tick()), (3, 30, Some(1)));
        let rows = m.take(11);
        let got: Vec<_> = rows.iter().map(|r| (r.entity_id, r.name.as_str(), r.value, r.samples)).collect();
        assert_eq!(
            got,
            [(1, "blocks_mined", 10.0, 10), (1, "tasks_failed", 10.0, 10), (2, "blocks_mined", 20.0, 10)]
        );
        assert!(rows.iter().all(|r| r.tick == 11));
        assert_eq!((m.pending(), m.first_pending_tick()), (0, None));
    }
}
