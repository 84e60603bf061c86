-- V6: a region's own state (issue 17, persistence/DESIGN.md "Regions"): what a region process
-- resumes from besides the NPCs it owns. Written by the region's fenced syncs, in the same
-- transaction as its NPCs' rows, so the tick and the rows are of one moment; only the lease
-- holder (checked by the epoch first) writes it. Its own table, not columns of region_leases:
-- a sync that updated the lease row would block the region's hand-offs and renewals (which
-- lock that row) for as long as it rewrites its NPCs' rows.
CREATE TABLE region_state (
    region    integer     PRIMARY KEY,
    -- The region world's tick (its SimClock) at the sync; a restart continues from it.
    tick      bigint      NOT NULL,
    -- The epoch of the lease holder that wrote it (for people reading it; the fence checks).
    epoch     bigint      NOT NULL,
    -- NPCs the sync wrote.
    npcs      bigint      NOT NULL,
    synced_at timestamptz NOT NULL DEFAULT now()
);
