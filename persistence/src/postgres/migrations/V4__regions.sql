-- V4: regions (issue 17, persistence/DESIGN.md "Regions"): who owns each NPC, the regions'
-- leases with their fencing epochs, and the writes a fence refused.

-- One lease per region. `epoch` is bumped by every take and checked (FOR SHARE) first by every
-- transaction of a region process; times are PostgreSQL's own (now()).
CREATE TABLE region_leases (
    region     integer     PRIMARY KEY,
    epoch      bigint      NOT NULL,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per NPC, unpartitioned: the primary key is what forbids two owners. The NPC's state
-- travels with the row at a hand-off and is refreshed by the owner's syncs.
CREATE TABLE npc_owners (
    npc_id      bigint      PRIMARY KEY,
    region      integer     NOT NULL,
    handoff_seq bigint      NOT NULL DEFAULT 0,
    adopted     boolean     NOT NULL,
    role        text        NOT NULL,
    swarm       bigint      NOT NULL,
    x           real        NOT NULL,
    y           real        NOT NULL,
    z           real        NOT NULL,
    vx          real        NOT NULL,
    vy          real        NOT NULL,
    vz          real        NOT NULL,
    handed_at   timestamptz,
    adopted_at  timestamptz
) WITH (fillfactor = 70);
CREATE INDEX npc_owners_region_idx ON npc_owners (region, npc_id);
-- Arrivals not yet adopted: tiny, read on every notification.
CREATE INDEX npc_owners_arrivals_idx ON npc_owners (region, npc_id) WHERE NOT adopted;

-- A write refused by a fence, kept after the refused process stopped.
CREATE TABLE region_fence_log (
    id            bigserial   PRIMARY KEY,
    region        integer     NOT NULL,
    epoch         bigint      NOT NULL,
    current_epoch bigint,
    what          text        NOT NULL,
    at            timestamptz NOT NULL DEFAULT now()
);
