//! The thread-safe command queue: other threads (a network task, an admin console) send
//! spawns, moves and orders; the tick applies them at its start, in a deterministic order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::{CommandError, NpcId, NpcSpec, Position, Role, Velocity};

/// Something another thread asks the world to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Spawn an NPC under an id reserved by [`CommandSender::spawn`].
    Spawn {
        /// The reserved id.
        id: NpcId,
        /// What to spawn.
        spec: NpcSpec,
    },
    /// Remove an NPC.
    Despawn {
        /// Which one.
        id: NpcId,
    },
    /// Put an NPC somewhere (clamped into the world bounds).
    Teleport {
        /// Which one.
        id: NpcId,
        /// Where.
        position: Position,
    },
    /// Set an NPC's velocity.
    SetVelocity {
        /// Which one.
        id: NpcId,
        /// New velocity, blocks per second.
        velocity: Velocity,
    },
    /// Give an NPC an order.
    Order {
        /// Which one.
        id: NpcId,
        /// The order.
        order: Order,
    },
}

impl Command {
    /// The NPC the command is about.
    #[must_use]
    pub fn npc(&self) -> NpcId {
        match self {
            Command::Spawn { id, .. }
            | Command::Despawn { id }
            | Command::Teleport { id, .. }
            | Command::SetVelocity { id, .. }
            | Command::Order { id, .. } => *id,
        }
    }

    /// Order of kinds for one NPC within a tick: spawn first, despawn last.
    fn rank(&self) -> u8 {
        match self {
            Command::Spawn { .. } => 0,
            Command::Teleport { .. } => 1,
            Command::SetVelocity { .. } => 2,
            Command::Order { .. } => 3,
            Command::Despawn { .. } => 4,
        }
    }
}

/// Orders an NPC can be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Order {
    /// Walk to a point (plain NPCs walk straight; agents plan a path).
    MoveTo(Position),
    /// Stop where you are and go idle.
    Stop,
    /// Change role.
    SetRole(Role),
    /// Join a swarm (0 leaves it).
    JoinSwarm(u32),
}

/// A command with the place it came from, so the tick can order commands deterministically.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub(crate) sender: u32,
    pub(crate) seq: u64,
    pub(crate) command: Command,
}

impl Queued {
    /// The order in which the tick applies commands: by NPC id, then kind (spawn before anything
    /// else, despawn after), then sender, then the sender's own order.
    pub(crate) fn key(&self) -> (u64, u8, u32, u64) {
        (self.command.npc().0, self.command.rank(), self.sender, self.seq)
    }
}

/// A handle for sending commands to the engine from any thread. Cheap to clone; each clone is a
/// distinct sender whose commands keep their relative order.
///
/// # Examples
/// ```
/// use terrarium_engine::{Engine, EngineConfig, NpcSpec, Position, Role};
/// let mut engine = Engine::builder(EngineConfig::default()).build().unwrap();
/// let sender = engine.command_sender();
/// let id = std::thread::spawn(move || sender.spawn(NpcSpec::new(Role::Scout, Position::default())).unwrap())
///     .join()
///     .unwrap();
/// assert!(engine.entity(id).is_none(), "applied at the start of the next tick");
/// engine.tick();
/// assert!(engine.entity(id).is_some());
/// ```
#[derive(Debug)]
pub struct CommandSender {
    tx: mpsc::SyncSender<Queued>,
    shared: Arc<SenderShared>,
    id: u32,
    seq: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct SenderShared {
    pub(crate) next_npc: Arc<AtomicU64>,
    pub(crate) next_sender: AtomicU64,
    pub(crate) capacity: usize,
}

impl CommandSender {
    pub(crate) fn new(tx: mpsc::SyncSender<Queued>, shared: Arc<SenderShared>) -> Self {
        let id = u32::try_from(shared.next_sender.fetch_add(1, Ordering::Relaxed)).unwrap_or(u32::MAX);
        Self { tx, shared, id, seq: AtomicU64::new(0) }
    }

    /// Queues `command` for the next tick.
    ///
    /// # Errors
    /// [`CommandError::QueueFull`] when `commands.queue_capacity` commands are waiting,
    /// [`CommandError::Disconnected`] when the engine is gone.
    pub fn send(&self, command: Command) -> Result<(), CommandError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.tx.try_send(Queued { sender: self.id, seq, command }).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => CommandError::QueueFull { capacity: self.shared.capacity },
            mpsc::TrySendError::Disconnected(_) => CommandError::Disconnected,
        })
    }

    /// The id the next spawn will get (from any sender or the engine itself): every id below
    /// it has been handed out, none above it has.
    #[must_use]
    pub fn next_npc_id(&self) -> NpcId {
        NpcId(self.shared.next_npc.load(Ordering::Relaxed))
    }

    /// Reserves an id now and queues the spawn for the next tick.
    ///
    /// # Errors
    /// As [`CommandSender::send`]. The id stays reserved (unused) when queueing fails.
    pub fn spawn(&self, spec: NpcSpec) -> Result<NpcId, CommandError> {
        let id = NpcId(self.shared.next_npc.fetch_add(1, Ordering::Relaxed));
        self.send(Command::Spawn { id, spec })?;
        Ok(id)
    }
}

impl Clone for CommandSender {
    fn clone(&self) -> Self {
        Self::new(self.tx.clone(), Arc::clone(&self.shared))
    }
}
