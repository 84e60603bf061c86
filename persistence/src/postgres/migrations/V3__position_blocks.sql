-- V3: positions in blocks. Runs with search_path set to the store's schema.
--
-- A position no longer touches `npcs`: `npcs` is the registry (role, status, swarm, health,
-- inventory; rewritten only when one of them changes, or at a spawn), and positions live in
-- blocks of 64 consecutive ids (block = id / 64), one row per block holding arrays. A
-- million NPCs are about 15,600 rows per flush instead of a million, each under the 2 kB
-- TOAST threshold (64 * 28 bytes of arrays), so nothing is compressed or stored out of line.
-- Views with `unnest` show one row per NPC to anyone with psql.

-- Current positions: one row per block, arrays sorted by id, one element per NPC.
CREATE TABLE position_blocks (
    block bigint   PRIMARY KEY,
    tick  bigint   NOT NULL,   -- newest tick in the block
    ids   bigint[] NOT NULL,
    ticks bigint[] NOT NULL,   -- tick of each NPC's position
    xs    real[]   NOT NULL,
    ys    real[]   NOT NULL,
    zs    real[]   NOT NULL
) WITH (fillfactor = 50);

-- History: one row per block per flush tick, time-partitioned by the server's insert time
-- (hourly partitions named position_history_h<hours since the epoch>, created ahead by the
-- writer with ensure_position_partitions; retention drops whole partitions). The default
-- partition catches rows if a partition is missing; retention deletes from it row by row.
CREATE TABLE position_history (
    block       bigint      NOT NULL,
    tick        bigint      NOT NULL,
    ids         bigint[]    NOT NULL,
    xs          real[]      NOT NULL,
    ys          real[]      NOT NULL,
    zs          real[]      NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (recorded_at);
CREATE TABLE position_history_default PARTITION OF position_history DEFAULT;
-- One NPC's track over a tick range: its block's rows by tick.
CREATE INDEX position_history_block_tick_idx ON position_history (block, tick);

-- Creates the hourly partitions from the hour of `from_ts` through `hours` hours later
-- (those that do not exist yet); returns the end of the last one.
CREATE FUNCTION ensure_position_partitions(from_ts timestamptz, hours integer)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    h0 bigint := floor(extract(epoch FROM from_ts) / 3600);
    h  bigint;
BEGIN
    FOR h IN h0 .. h0 + hours LOOP
        IF to_regclass(format('position_history_h%s', h)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE position_history_h%s PARTITION OF position_history FOR VALUES FROM (%L) TO (%L)',
                h, to_timestamp(h * 3600), to_timestamp((h + 1) * 3600));
        END IF;
    END LOOP;
    RETURN to_timestamp((h0 + hours + 1) * 3600);
END $$;

-- Drops every hourly partition that ends at or before `older_than`; returns how many.
CREATE FUNCTION drop_position_partitions(older_than timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part    record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname, substr(c.relname, 19)::bigint AS h
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'position_history'::regclass AND c.relname ~ '^position_history_h[0-9]+$'
    LOOP
        IF to_timestamp((part.h + 1) * 3600) <= older_than THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

SELECT ensure_position_partitions(now(), 2);

-- What V1 stored moves over: current positions from npcs, history grouped into blocks.
INSERT INTO position_blocks (block, tick, ids, ticks, xs, ys, zs)
SELECT id / 64, max(updated_tick), array_agg(id ORDER BY id), array_agg(updated_tick ORDER BY id),
       array_agg(x ORDER BY id), array_agg(y ORDER BY id), array_agg(z ORDER BY id)
FROM npcs GROUP BY id / 64;
INSERT INTO position_history (block, tick, ids, xs, ys, zs, recorded_at)
SELECT npc_id / 64, tick, array_agg(npc_id ORDER BY npc_id), array_agg(x ORDER BY npc_id),
       array_agg(y ORDER BY npc_id), array_agg(z ORDER BY npc_id), min(recorded_at)
FROM (SELECT DISTINCT ON (npc_id, tick) * FROM npc_positions ORDER BY npc_id, tick) AS p
GROUP BY npc_id / 64, tick;
DROP TABLE npc_positions;

-- One row per NPC, for people: the same columns V1's tables had.
CREATE VIEW npc_positions AS
    SELECT u.npc_id, h.tick, u.x, u.y, u.z, h.recorded_at
    FROM position_history AS h, unnest(h.ids, h.xs, h.ys, h.zs) AS u(npc_id, x, y, z);
CREATE VIEW npc_current_positions AS
    SELECT u.npc_id, u.tick, u.x, u.y, u.z
    FROM position_blocks AS b, unnest(b.ids, b.ticks, b.xs, b.ys, b.zs) AS u(npc_id, tick, x, y, z);
-- The registry with each NPC's current position laid over it (what get_npc returns).
CREATE VIEW npcs_now AS
    SELECT n.id, n.role, n.status, n.swarm, n.agent,
           CASE WHEN p.tick >= n.updated_tick THEN p.x ELSE n.x END AS x,
           CASE WHEN p.tick >= n.updated_tick THEN p.y ELSE n.y END AS y,
           CASE WHEN p.tick >= n.updated_tick THEN p.z ELSE n.z END AS z,
           n.health, n.inventory, greatest(n.updated_tick, p.tick) AS updated_tick
    FROM npcs AS n LEFT JOIN npc_current_positions AS p ON p.npc_id = n.id;
