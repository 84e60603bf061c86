//! Engine configuration: TOML with environment overrides, checked against allowed ranges.
//!
//! `assets/config/default.toml` documents every key. Environment variables override the file:
//! `TERRARIUM_ENGINE__TICK_HZ=30` sets `tick_hz`, `TERRARIUM_ENGINE__WORLD__MAX='[512, 64, 512]'`
//! sets `world.max` (the part after the prefix is the key path, `__` between levels). Values
//! are read as TOML scalars or arrays, or as strings when they are neither.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
pub use terrarium_codec::in_range;

/// Everything the engine needs to build a world. Every field has a default.
#[derive(bevy_ecs::resource::Resource, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Seed of every random choice in the world.
    pub seed: u64,
    /// Fixed ticks per simulated second; 1 ..= 1000.
    pub tick_hz: u32,
    /// Worker threads for parallel systems (rayon); 0 means one per CPU core; at most 1024.
    pub threads: usize,
    /// Pin each worker thread to a CPU of its own (off by default). On a machine the world has
    /// to itself, with as many workers as CPUs, it keeps the kernel from queueing two workers
    /// on one CPU while the other idles: measured on 2 cores at 1M NPCs (memory store, quiet),
    /// the median tick went from 3.8–4.2 ms to 2.1–2.3 ms and a position cut's copy from
    /// 2.1–4.5 ms to 1.9–2.2 ms (BENCHMARKS.md, "Ninth pass"). Leave it off when other busy
    /// processes (a database on the same cores), or other engines of this process, share those
    /// CPUs: a pinned worker cannot move away from a busy one.
    pub pin_threads: bool,
    /// World bounds.
    pub world: WorldConfig,
    /// Plain NPC behaviour.
    pub npc: NpcConfig,
    /// The cross-thread command queue.
    pub commands: CommandConfig,
    /// Snapshot limits.
    pub snapshot: SnapshotConfig,
    /// Batching of position, metric and event updates.
    pub batching: BatchingConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            tick_hz: 20,
            threads: 0,
            pin_threads: false,
            world: WorldConfig::default(),
            npc: NpcConfig::default(),
            commands: CommandConfig::default(),
            snapshot: SnapshotConfig::default(),
            batching: BatchingConfig::default(),
        }
    }
}

/// The box NPCs live in, in blocks. `y` is up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldConfig {
    /// Lowest corner `[x, y, z]`.
    pub min: [f32; 3],
    /// Highest corner `[x, y, z]`; each coordinate above `min`, extent at most 1 000 000.
    pub max: [f32; 3],
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self { min: [0.0, 0.0, 0.0], max: [4096.0, 256.0, 4096.0] }
    }
}

/// How plain NPCs wander.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NpcConfig {
    /// Walking speed in blocks per second; 0 ..= 100.
    pub wander_speed: f32,
    /// Shortest time between two turns, seconds; 0.05 ..= 3600.
    pub turn_min_s: f32,
    /// Longest time between two turns, seconds; `turn_min_s` ..= 3600.
    pub turn_max_s: f32,
}

impl Default for NpcConfig {
    fn default() -> Self {
        Self { wander_speed: 1.4, turn_min_s: 2.0, turn_max_s: 6.0 }
    }
}

/// The queue through which other threads send commands to the tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandConfig {
    /// Commands that may wait for the next tick; a full queue refuses more. 1 ..= 16 777 216.
    pub queue_capacity: usize,
}

impl Default for CommandConfig {
    fn default() -> Self {
        Self { queue_capacity: 65_536 }
    }
}

/// Snapshot limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Largest snapshot payload that loading accepts, bytes; 1 KiB ..= 64 GiB.
    pub max_bytes: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self { max_bytes: 4 << 30 }
    }
}

/// Batching of position, metric and event updates (sizes in rows, ages in simulated time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Position rows: one per moved NPC per flush.
    pub positions: BatchLimits,
    /// Metric rows: one per (entity, metric) per flush.
    pub metrics: BatchLimits,
    /// Domain events.
    pub events: EventBatchConfig,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            positions: BatchLimits::new(100, 500),
            metrics: BatchLimits::new(200, 5_000),
            events: EventBatchConfig::default(),
        }
    }
}

/// When a batch is flushed: at `max_items` rows or when its oldest row is `max_age_ms` old.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLimits {
    /// Rows that trigger a flush; 1 ..= 10 000 000.
    pub max_items: usize,
    /// Simulated milliseconds after which pending rows are flushed; 1 ..= 3 600 000.
    pub max_age_ms: u64,
    /// Positions only (metrics ignore it): a flush due by size (`max_items`) waits until this
    /// many simulated milliseconds have passed since the previous position flush; one due by
    /// age does not wait. 0 ..= 3 600 000, 0 = no wait; default 200. With a million NPCs
    /// moving, `max_items` is passed every tick, and a store fast enough to take a batch every
    /// tick (memory, embedded) had the whole population copied on the tick every tick. It
    /// applies only in a world of at least `min_interval_npcs` NPCs (a small world's cut is
    /// cheap, and its store keeps the freshest positions), and never to the first position
    /// flush after a tick that applied commands: a spawned or teleported NPC is stored where
    /// it was put (the game server's API promises that), not where it walked to by the next
    /// spaced flush.
    #[serde(default = "default_min_interval_ms")]
    pub min_interval_ms: u64,
    /// Positions only: `min_interval_ms` applies while the world has at least this many NPCs;
    /// 0 ..= 1 000 000 000, 0 = always; default 100 000.
    #[serde(default = "default_min_interval_npcs")]
    pub min_interval_npcs: usize,
    /// Positions only: in a world of at least `min_interval_npcs` NPCs, a position cut due by
    /// size or age (not a forced one, nor the first after commands) reads the NPCs a slice per
    /// tick over this many simulated milliseconds instead of all in one tick (slices of at least
    /// 65 536 NPCs, at most 16 of them), so no tick pays for copying the whole population: at a
    /// million NPCs the copy is about as much memory traffic as the movement pass. The batch
    /// carries the tick the cut began; the next one is due `min_interval_ms` after that, and
    /// not before this one ended. 0 ..= 60 000, 0 = one tick; default 400.
    #[serde(default = "default_spread_ms")]
    pub spread_ms: u64,
}

impl BatchLimits {
    /// `max_items` and `max_age_ms`, the rest at their defaults.
    #[must_use]
    pub const fn new(max_items: usize, max_age_ms: u64) -> Self {
        Self {
            max_items,
            max_age_ms,
            min_interval_ms: default_min_interval_ms(),
            min_interval_npcs: default_min_interval_npcs(),
            spread_ms: default_spread_ms(),
        }
    }
}

const fn default_spread_ms() -> u64 {
    400
}

const fn default_min_interval_ms() -> u64 {
    200
}

const fn default_min_interval_npcs() -> usize {
    100_000
}

/// Event batching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventBatchConfig {
    /// Events that trigger a flush; 1 ..= 10 000 000.
    pub max_items: usize,
    /// Simulated milliseconds after which pending events are flushed; 1 ..= 3 600 000.
    pub max_age_ms: u64,
    /// Identical events within this many simulated milliseconds are stored once; 0 ..= 3 600 000.
    pub dedup_window_ms: u64,
    /// Payloads larger than this many bytes are compressed; 64 ..= 16 777 216.
    pub compress_threshold_bytes: usize,
}

impl Default for EventBatchConfig {
    fn default() -> Self {
        Self { max_items: 500, max_age_ms: 1_000, dedup_window_ms: 1_000, compress_threshold_bytes: 1024 }
    }
}

impl EngineConfig {
    /// Environment prefix of engine keys.
    pub const ENV_PREFIX: &'static str = "TERRARIUM_ENGINE__";

    /// Reads engine keys from TOML text, applies `env` overrides and validates the result.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] for bad TOML or an unknown key, [`ConfigError::Env`] for an override
    /// that can't be applied, [`ConfigError::OutOfRange`]/[`ConfigError::Invalid`] for bad values.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let cfg: Self = load_layered(text, env, Self::ENV_PREFIX)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value against its allowed range.
    ///
    /// # Errors
    /// The first value out of range, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range("tick_hz", self.tick_hz, &(1..=1000))?;
        in_range("threads", self.threads, &(0..=1024))?;
        for (axis, name) in ["x", "y", "z"].iter().enumerate() {
            let (lo, hi) = (self.world.min[axis], self.world.max[axis]);
            in_range(&format!("world.min[{axis}] ({name})"), lo, &(-1e9..=1e9))?;
            // The extent, so that `max <= min` and a world too large to index are one message.
            in_range(&format!("world.max[{axis}] - world.min[{axis}] ({name})"), hi - lo, &(0.001..=1e6))?;
        }
        in_range("npc.wander_speed", self.npc.wander_speed, &(0.0..=100.0))?;
        in_range("npc.turn_min_s", self.npc.turn_min_s, &(0.05..=3600.0))?;
        in_range("npc.turn_max_s", self.npc.turn_max_s, &(self.npc.turn_min_s..=3600.0))?;
        in_range("commands.queue_capacity", self.commands.queue_capacity, &(1..=16_777_216))?;
        in_range("snapshot.max_bytes", self.snapshot.max_bytes, &(1024..=(64 << 30)))?;
        for (name, l) in [("positions", self.batching.positions), ("metrics", self.batching.metrics)] {
            in_range(&format!("batching.{name}.max_items"), l.max_items, &(1..=10_000_000))?;
            in_range(&format!("batching.{name}.max_age_ms"), l.max_age_ms, &(1..=3_600_000))?;
            in_range(&format!("batching.{name}.min_interval_ms"), l.min_interval_ms, &(0..=3_600_000))?;
            in_range(
                &format!("batching.{name}.min_interval_npcs"),
                l.min_interval_npcs,
                &(0..=1_000_000_000),
            )?;
            in_range(&format!("batching.{name}.spread_ms"), l.spread_ms, &(0..=60_000))?;
        }
        let ev = &self.batching.events;
        in_range("batching.events.max_items", ev.max_items, &(1..=10_000_000))?;
        in_range("batching.events.max_age_ms", ev.max_age_ms, &(1..=3_600_000))?;
        in_range("batching.events.dedup_window_ms", ev.dedup_window_ms, &(0..=3_600_000))?;
        in_range(
            "batching.events.compress_threshold_bytes",
            ev.compress_threshold_bytes,
            &(64..=16_777_216),
        )?;
        Ok(())
    }

    /// Threads to use: `threads`, or the number of CPU cores when it is 0.
    #[must_use]
    pub fn effective_threads(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            self.threads
        }
    }

    /// Length of one tick.
    #[must_use]
    pub fn dt(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(1_000_000_000 / u64::from(self.tick_hz.max(1)))
    }
}

/// Deserialises `T` from TOML `text` after applying environment overrides.
///
/// Only variables that start with `prefix` are used; the rest of the name, lower-cased and split
/// at `__`, is the key path. Values that parse as a TOML value are used as such (numbers, booleans,
/// arrays); anything else is a string.
///
/// # Errors
/// [`ConfigError::Parse`] for bad TOML, type errors and unknown keys (the message names the key),
/// [`ConfigError::Env`] for an override whose path runs through a non-table value.
pub fn load_layered<T: DeserializeOwned>(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
    prefix: &str,
) -> Result<T, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e| ConfigError::parse(text, e))?;
    let mut overrides: Vec<(String, String)> =
        env.into_iter().filter(|(k, _)| k.starts_with(prefix) && k.len() > prefix.len()).collect();
    // Apply in name order so the result never depends on the environment's iteration order.
    overrides.sort();
    for (var, raw) in &overrides {
        let path: Vec<String> = var[prefix.len()..].split("__").map(str::to_ascii_lowercase).collect();
        set_path(&mut table, &path, parse_env_value(raw))
            .map_err(|reason| ConfigError::Env { var: var.clone(), reason })?;
    }
    let overrides_applied = overrides;
    // Render the merged table back to text so serde errors carry the key path and position.
    let merged = toml::to_string(&table)
        .map_err(|e| ConfigError::Invalid { key: prefix.to_string(), reason: e.to_string() })?;
    toml::from_str(&merged).map_err(|source| blame::<T>(text, &overrides_applied, prefix, source))
}

/// The error to report when the merged configuration does not deserialise: the file's own
/// error when the file alone is wrong, otherwise the first environment variable that makes it
/// wrong, named (its value never appears in a TOML line the user did not write).
fn blame<T: DeserializeOwned>(
    text: &str,
    overrides: &[(String, String)],
    prefix: &str,
    merged_error: toml::de::Error,
) -> ConfigError {
    if let Err(e) = toml::from_str::<T>(text) {
        return ConfigError::parse(text, e);
    }
    let Ok(file) = text.parse::<toml::Table>() else { return ConfigError::parse(text, merged_error) };
    for (var, raw) in overrides {
        let mut table = file.clone();
        let path: Vec<String> = var[prefix.len()..].split("__").map(str::to_ascii_lowercase).collect();
        if set_path(&mut table, &path, parse_env_value(raw)).is_err() {
            continue;
        }
        let Ok(one) = toml::to_string(&table) else { continue };
        if let Err(e) = toml::from_str::<T>(&one) {
            return ConfigError::Env { var: var.clone(), reason: format!("{} ({raw:?})", e.message()) };
        }
    }
    // Not reached in practice (some single override fails when all of them do); the merged
    // text is what the error's position refers to.
    let merged = toml::to_string(&file).unwrap_or_default();
    ConfigError::parse(&merged, merged_error)
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut cur = table;
    for (i, key) in parents.iter().enumerate() {
        let entry = cur.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| format!("`{}` is not a table", parents[..=i].join(".")))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_batching() {
        let cfg = EngineConfig::from_toml_str("", []).unwrap();
        assert_eq!(cfg, EngineConfig::default());
        let limits = |max_items, max_age_ms| BatchLimits {
            max_items,
            max_age_ms,
            min_interval_ms: 200,
            min_interval_npcs: 100_000,
            spread_ms: 400,
        };
        assert_eq!(cfg.batching.positions, limits(100, 500));
        assert_eq!(cfg.batching.metrics, limits(200, 5_000));
        // A table written before the interval existed gets the defaults too.
        let cfg =
            EngineConfig::from_toml_str("[batching.positions]\nmax_items = 100\nmax_age_ms = 500\n", [])
                .unwrap();
        assert_eq!(cfg.batching.positions, limits(100, 500));
    }

    #[test]
    fn env_overrides_file() {
        let cfg = EngineConfig::from_toml_str(
            "tick_hz = 10\n[npc]\nwander_speed = 2.0\n",
            env(&[
                ("TERRARIUM_ENGINE__TICK_HZ", "30"),
                ("TERRARIUM_ENGINE__WORLD__MAX", "[64, 16, 64]"),
                ("TERRARIUM_OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.tick_hz, 30);
        assert_eq!(cfg.world.max, [64.0, 16.0, 64.0]);
        assert!((cfg.npc.wander_speed - 2.0).abs() < f32::EPSILON);
    }

    #[test]
    fn out_of_range_names_key_and_range() {
        let err = EngineConfig::from_toml_str("tick_hz = 0", []).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::OutOfRange(ref e) if e.key == "tick_hz"), "{msg}");
        assert!(msg.contains("1 ..= 1000"), "{msg}");
        let err = EngineConfig::from_toml_str("", env(&[("TERRARIUM_ENGINE__NPC__TURN_MAX_S", "1.0")]))
            .unwrap_err();
        assert!(err.to_string().contains("npc.turn_max_s"), "{err}");
    }

    #[test]
    fn unknown_and_mistyped_keys_are_parse_errors_naming_the_key() {
        let err = EngineConfig::from_toml_str("tick_hertz = 20", []).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(err.to_string().contains("tick_hertz"), "{err}");
        let err = EngineConfig::from_toml_str("[npc]\nwander_speed = \"fast\"", []).unwrap_err();
        assert!(err.to_string().contains("wander_speed"), "{err}");
        let err = EngineConfig::from_toml_str("tick_hz = 20", env(&[("TERRARIUM_ENGINE__TICK_HZ__X", "1")]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }), "{err}");
    }
}
