-- V2: positions in blocks, as PgStore's V3. A position no longer touches `npcs`: `npcs` is the
-- registry (role, status, swarm, health, inventory, and the position at its last write), and
-- positions live in blocks of 64 consecutive ids (block = id / 64), one row per block.
-- Columns are BLOBs of little-endian values, one element per NPC, ascending by id: `ids` and
-- `ticks` 64-bit integers, `xyz` three 32-bit floats (x, y, z).
--
-- History moves to one table per day of the writer's clock (position_history_d<days since
-- 1970>, created by the writer; retention drops whole tables), one row per block per flush
-- tick: (block, tick, ids, xyz, recorded_at), indexed on (block, tick).
--
-- The rows V1 stored are converted by the store when it applies this migration (current
-- positions from `npcs`, history from `npc_positions` into day tables); then npc_positions is
-- dropped.
CREATE TABLE position_blocks (
    block INTEGER PRIMARY KEY,
    tick  INTEGER NOT NULL,   -- newest tick in the block
    ids   BLOB    NOT NULL,
    ticks BLOB    NOT NULL,
    xyz   BLOB    NOT NULL
);
