-- V1: the tables of FileStore (SQLite), the same as PgStore's. Ids and ticks are INTEGER
-- (signed 64-bit): NPC ids and ticks are checked to fit on write; event and correlation ids
-- and batch runs are opaque and stored bit for bit. Times (`recorded_at`, `applied_at`,
-- `created_at`) are Unix milliseconds of the writer's clock.

-- Current state: one row per NPC in the world. `id` is the rowid (INTEGER PRIMARY KEY).
CREATE TABLE npcs (
    id           INTEGER PRIMARY KEY,
    role         TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    swarm        INTEGER NOT NULL,
    agent        INTEGER NOT NULL,
    x            REAL    NOT NULL,
    y            REAL    NOT NULL,
    z            REAL    NOT NULL,
    health       INTEGER NOT NULL,
    inventory    BLOB    NOT NULL,
    updated_tick INTEGER NOT NULL
);
-- Listings filter on one of these and page by id, so id ends each index.
CREATE INDEX npcs_status_idx       ON npcs (status, id);
CREATE INDEX npcs_role_idx         ON npcs (role, id);
CREATE INDEX npcs_swarm_status_idx ON npcs (swarm, status, id);

-- Position history, append only.
CREATE TABLE npc_positions (
    npc_id      INTEGER NOT NULL,
    tick        INTEGER NOT NULL,
    x           REAL    NOT NULL,
    y           REAL    NOT NULL,
    z           REAL    NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX npc_positions_npc_tick_idx    ON npc_positions (npc_id, tick);
CREATE INDEX npc_positions_recorded_at_idx ON npc_positions (recorded_at);

-- Aggregated metrics, append only.
CREATE TABLE metrics (
    entity_kind TEXT    NOT NULL,
    entity_id   INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    tick        INTEGER NOT NULL,
    value       REAL    NOT NULL,
    samples     INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX metrics_name_tick_idx   ON metrics (name, tick);
CREATE INDEX metrics_recorded_at_idx ON metrics (recorded_at);

-- Domain events; an event id is stored once.
CREATE TABLE events (
    event_id       INTEGER PRIMARY KEY,
    event_type     TEXT    NOT NULL,
    entity_kind    TEXT    NOT NULL,
    entity_id      INTEGER NOT NULL,
    correlation_id INTEGER NOT NULL,
    tick           INTEGER NOT NULL,
    sim_time_ms    INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    compressed     INTEGER NOT NULL,
    count          INTEGER NOT NULL
);
CREATE INDEX events_type_idx        ON events (event_type);
CREATE INDEX events_entity_idx      ON events (entity_kind, entity_id);
CREATE INDEX events_correlation_idx ON events (correlation_id);
CREATE INDEX events_recorded_at_idx ON events (recorded_at);

-- Exactly once: the highest batch seq applied per producer run, updated in the same
-- transaction as the batch's rows.
CREATE TABLE applied_batches (
    run        INTEGER PRIMARY KEY,
    seq        INTEGER NOT NULL,
    applied_at INTEGER NOT NULL
);

-- Checkpoints: the engine's snapshot frame of the whole world at `tick`, stored after every
-- batch of `run` up to `seq` was committed; `clean` when a clean shutdown wrote it; `checksum` is the xxh3-64 of `bytes`.
CREATE TABLE checkpoints (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run        INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    tick       INTEGER NOT NULL,
    clean      INTEGER NOT NULL,
    checksum   INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    bytes      BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX checkpoints_tick_idx ON checkpoints (tick, id);
