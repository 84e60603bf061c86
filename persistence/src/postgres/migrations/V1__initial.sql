-- V1: the tables of PgStore. Runs with search_path set to the store's schema.
-- Ids and ticks are bigint: NPC ids and ticks are checked to fit on write; event and
-- correlation ids and batch runs are opaque and stored bit for bit.

-- Current state: one row per NPC in the world. fillfactor 50 leaves room on each page for a
-- new version of every row, so position updates (no indexed column changes) stay HOT and touch
-- no index; measured: at 80, most updates after the first were not HOT and cost 3 index inserts.
CREATE TABLE npcs (
    id           bigint  PRIMARY KEY,
    role         text    NOT NULL,
    status       text    NOT NULL,
    swarm        bigint  NOT NULL,
    agent        boolean NOT NULL,
    x            real    NOT NULL,
    y            real    NOT NULL,
    z            real    NOT NULL,
    health       integer NOT NULL,
    inventory    bytea   NOT NULL,
    updated_tick bigint  NOT NULL
) WITH (fillfactor = 50);
-- Listings filter on one of these and page by id, so id ends each index.
CREATE INDEX npcs_status_idx       ON npcs (status, id);
CREATE INDEX npcs_role_idx         ON npcs (role, id);
CREATE INDEX npcs_swarm_status_idx ON npcs (swarm, status, id);

-- Position history, append only (COPY). BRIN on the insert time: tiny, and all the retention
-- job needs on a table written in time order.
CREATE TABLE npc_positions (
    npc_id      bigint      NOT NULL,
    tick        bigint      NOT NULL,
    x           real        NOT NULL,
    y           real        NOT NULL,
    z           real        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX npc_positions_npc_tick_idx    ON npc_positions (npc_id, tick);
CREATE INDEX npc_positions_recorded_at_idx ON npc_positions USING brin (recorded_at);

-- Aggregated metrics, append only (COPY).
CREATE TABLE metrics (
    entity_kind text             NOT NULL,
    entity_id   bigint           NOT NULL,
    name        text             NOT NULL,
    tick        bigint           NOT NULL,
    value       double precision NOT NULL,
    samples     bigint           NOT NULL,
    recorded_at timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX metrics_name_tick_idx   ON metrics (name, tick);
CREATE INDEX metrics_recorded_at_idx ON metrics USING brin (recorded_at);

-- Domain events; an event id is stored once. `recorded_at` is the wall-clock time it was
-- stored (the "time" of queries and retention); `sim_time_ms` is simulated time.
CREATE TABLE events (
    event_id       bigint      PRIMARY KEY,
    event_type     text        NOT NULL,
    entity_kind    text        NOT NULL,
    entity_id      bigint      NOT NULL,
    correlation_id bigint      NOT NULL,
    tick           bigint      NOT NULL,
    sim_time_ms    bigint      NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    payload        bytea       NOT NULL,
    compressed     boolean     NOT NULL,
    count          bigint      NOT NULL
);
CREATE INDEX events_type_idx        ON events (event_type);
CREATE INDEX events_entity_idx      ON events (entity_kind, entity_id);
CREATE INDEX events_correlation_idx ON events (correlation_id);
CREATE INDEX events_recorded_at_idx ON events (recorded_at DESC);

-- Exactly once: the highest batch seq applied per producer run, updated in the same
-- transaction as the batch's rows.
CREATE TABLE applied_batches (
    run        bigint      PRIMARY KEY,
    seq        bigint      NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
