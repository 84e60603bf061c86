//! The engine's error types, one per boundary.

/// A configuration could not be loaded or is out of range.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML is malformed, has an unknown key or a value of the wrong type: the message
    /// says what, and on which line. The parser's error (with the offending line quoted) is
    /// kept in `toml`, deliberately not as the error's source: printed as a chain, the same
    /// problem would appear twice.
    #[error("config: {message}")]
    Parse {
        /// What is wrong and where (`line 2, column 11 (`tick_hz = "x"`): invalid type: …`).
        message: String,
        /// The parser's error.
        toml: Box<toml::de::Error>,
    },
    /// An environment override could not be applied.
    #[error("config: environment variable {var}: {reason}")]
    Env {
        /// The variable's name.
        var: String,
        /// Why it was refused.
        reason: String,
    },
    /// A value is outside its allowed range (the key is a dotted path, for example
    /// `batching.positions.max_items`).
    #[error("config: {0}")]
    OutOfRange(#[from] terrarium_codec::OutOfRange),
    /// A value is invalid for another reason.
    #[error("config: {key}: {reason}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// A [`ConfigError::Parse`] for `error`, found in `text`.
    #[must_use]
    pub fn parse(text: &str, error: toml::de::Error) -> Self {
        let place = error.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.len() - start + 1;
            let quoted = redact(text[start..].lines().next().unwrap_or("").trim());
            format!("line {line}, column {column} (`{quoted}`): ")
        });
        Self::Parse {
            message: format!("{}{}", place.unwrap_or_default(), error.message()),
            toml: Box::new(error),
        }
    }
}

/// A configuration line as it may appear in an error: the value of a key that may hold a
/// secret (an API key, a password, a URL with credentials) is left out.
fn redact(line: &str) -> String {
    const SECRET_WORDS: [&str; 5] = ["key", "password", "secret", "token", "url"];
    match line.split_once('=') {
        Some((key, _)) if SECRET_WORDS.iter().any(|w| key.to_ascii_lowercase().contains(w)) => {
            format!("{key}= …")
        }
        _ => line.to_string(),
    }
}

/// A snapshot could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error("snapshot i/o failed")]
    Io(#[from] std::io::Error),
    /// The input ended early: the file was cut short.
    #[error("snapshot truncated: expected {expected} bytes, found {found}")]
    Truncated {
        /// Bytes the header promises.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// The input is not a Terrarium snapshot.
    #[error("not a terrarium snapshot (bad magic {found:?})")]
    BadMagic {
        /// The first eight bytes.
        found: [u8; 8],
    },
    /// The snapshot was written by an incompatible format version.
    #[error("snapshot format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Versions this build reads.
        supported: u32,
    },
    /// The payload does not match its checksum: the file is corrupted.
    #[error("snapshot corrupted: checksum {actual:#018x} does not match {expected:#018x}")]
    Corrupted {
        /// Checksum in the header.
        expected: u64,
        /// Checksum of the payload.
        actual: u64,
    },
    /// The payload is larger than `snapshot.max_bytes`.
    #[error("snapshot payload of {len} bytes is over the limit of {limit} bytes (snapshot.max_bytes)")]
    TooLarge {
        /// Payload size.
        len: u64,
        /// Configured limit.
        limit: u64,
    },
    /// The checksum matched but the payload is not a valid snapshot body.
    #[error("snapshot payload could not be decoded")]
    Decode(#[source] terrarium_codec::CodecError),
    /// The world could not be encoded.
    #[error("snapshot could not be encoded")]
    Encode(#[source] terrarium_codec::CodecError),
    /// The payload decoded but describes an impossible world (columns of different lengths,
    /// a move target or decision state of no NPC, a voxel world that does not add up).
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
    /// The world bounds on one axis break the rule of `[engine.world]` (`min` within ±10⁹,
    /// `max - min` from 0.001 to [`crate::WorldBounds::MAX_EXTENT`]).
    #[error(
        "snapshot world bounds on axis {axis}: min {min}, max {max} (min within 1e9 of 0, max above it by 0.001 ..= 1000000)"
    )]
    Bounds {
        /// 0 = x, 1 = y, 2 = z.
        axis: usize,
        /// `min` on that axis.
        min: f32,
        /// `max` on that axis.
        max: f32,
    },
    /// The clock is impossible: `tick_hz` outside 1 ..= 1000, or a tick count so large that
    /// time arithmetic would overflow.
    #[error(
        "snapshot clock: tick {tick} at {tick_hz} Hz is out of range (tick at most {max_tick}, 1 ..= 1000 Hz)"
    )]
    Clock {
        /// The tick.
        tick: u64,
        /// Ticks per second.
        tick_hz: u32,
        /// The largest tick a snapshot may hold.
        max_tick: u64,
    },
    /// An NPC id is at or above [`crate::snapshot::ID_LIMIT`] (ids are stored as signed 64-bit
    /// integers, and the id counter must stay above every id without overflowing).
    #[error("snapshot npc id {id} is out of range (ids are below {limit})")]
    IdOutOfRange {
        /// The id.
        id: u64,
        /// [`crate::snapshot::ID_LIMIT`].
        limit: u64,
    },
    /// Two NPCs have the same id.
    #[error("snapshot holds npc id {id} twice")]
    DuplicateId {
        /// The id.
        id: u64,
    },
    /// The id counter is not above every id (the next spawn would reuse one), or is above
    /// [`crate::snapshot::ID_LIMIT`].
    #[error("snapshot id counter {next_id} is not above npc id {id} (or over the limit {limit})")]
    IdCounter {
        /// The counter.
        next_id: u64,
        /// The largest id held.
        id: u64,
        /// [`crate::snapshot::ID_LIMIT`].
        limit: u64,
    },
    /// A position (or a move target) is not finite, or lies outside the world bounds.
    #[error("snapshot npc {id}: {what} {value:?} is not finite or outside the world bounds")]
    Position {
        /// The NPC.
        id: u64,
        /// `position` or `move target`.
        what: &'static str,
        /// The coordinates.
        value: [f32; 3],
    },
    /// A velocity is not finite.
    #[error("snapshot npc {id}: velocity {value:?} is not finite")]
    Velocity {
        /// The NPC.
        id: u64,
        /// The components.
        value: [f32; 3],
    },
    /// Health above its maximum.
    #[error("snapshot npc {id}: health {current} is above its maximum {max}")]
    Health {
        /// The NPC.
        id: u64,
        /// Hit points left.
        current: u16,
        /// Hit points when unhurt.
        max: u16,
    },
    /// An inventory slot holds more than a stack, or items of kind 0 ("nothing").
    #[error(
        "snapshot npc {id}: inventory slot {slot} holds {count} of kind {kind} (at most 64, none of kind 0)"
    )]
    Inventory {
        /// The NPC.
        id: u64,
        /// The slot.
        slot: usize,
        /// Its item kind.
        kind: u16,
        /// Its count.
        count: u16,
    },
    /// An agent's decision state is impossible (tool power outside 1 ..= 8, a path position
    /// past its end, a depot that does not exist).
    #[error("snapshot agent {id}: {reason}")]
    Agent {
        /// The agent.
        id: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Rebuilding the voxel world would allocate more than the configured limit.
    #[error(
        "snapshot voxel world needs {needed} bytes, over the limit of {limit} bytes (snapshot.max_bytes)"
    )]
    VoxelTooLarge {
        /// Bytes the record asks for (decompressed blocks and chunk tables).
        needed: u64,
        /// `snapshot.max_bytes`.
        limit: u64,
    },
}

impl From<terrarium_codec::FrameError> for SnapshotError {
    fn from(e: terrarium_codec::FrameError) -> Self {
        use terrarium_codec::FrameError as F;
        match e {
            F::Io(io) => Self::Io(io),
            F::Truncated { expected, found } => Self::Truncated { expected, found },
            F::BadMagic { found, .. } => Self::BadMagic { found },
            F::UnsupportedVersion { found, .. } => {
                Self::UnsupportedVersion { found, supported: crate::snapshot::FORMAT_VERSION }
            }
            F::ChecksumMismatch { expected, actual } => Self::Corrupted { expected, actual },
            F::TooLarge { len, limit } => Self::TooLarge { len, limit },
            other => Self::Io(std::io::Error::other(other)),
        }
    }
}

/// The engine could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The worker thread pool could not be started.
    #[error("could not start {threads} worker threads")]
    ThreadPool {
        /// Threads asked for.
        threads: usize,
        /// rayon's error.
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
    /// Loading the starting snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A stage's schedule could not be built (see [`crate::Engine::check_system_order`]).
    #[error("stage {stage}: {report}")]
    Schedule {
        /// The stage's name ([`crate::TickSet::name`]).
        stage: &'static str,
        /// bevy's report, naming the systems involved.
        report: String,
    },
}

/// A command could not be queued for the next tick.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The queue holds `commands.queue_capacity` commands already; try again after the next tick.
    #[error("command queue is full ({capacity} commands); retry after the next tick")]
    QueueFull {
        /// The configured capacity.
        capacity: usize,
    },
    /// The engine has been dropped.
    #[error("engine is gone")]
    Disconnected,
}
