-- V3: views that decode the position blocks for the `sqlite3` shell, in SQL alone (no
-- extension, no math functions): the same names and columns as PgStore's V3 views.
--
--   npc_current_positions (npc_id, tick, x, y, z)  one row per NPC in `position_blocks`
--   npcs_now                                       the registry with the current position laid
--                                                  over it (what get_npc returns)
--
-- How: a block row holds up to 64 NPCs (`ids`, `ticks`: little-endian i64; `xyz`: three
-- little-endian IEEE-754 f32 per NPC). `slot` numbers the elements 0..63; `hex()` turns each
-- element's bytes into text, `instr('0123456789ABCDEF', digit) - 1` turns a hex digit back
-- into its value, and the bytes are put together least significant first. A float is then
-- rebuilt from its bits: sign, exponent e and mantissa m give (-1)^sign * (m + 2^23) * 2^(e - 150)
-- (e = 0: m * 2^-149), the power of two made of integer shifts (no pow() needed); NaN and
-- infinities (e = 255) read as NULL. Exact for every finite f32. Decoding is a few hundred
-- string calls per NPC: about a second per million NPCs, for looking, not for the hot path
-- (the store itself reads blocks in Rust). History (day tables `position_history_d<day>`,
-- created as days pass) has no view: a view can't name tables that do not exist yet.
CREATE VIEW npc_current_positions AS
WITH RECURSIVE slot(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM slot WHERE i < 63),
hexed AS (
    SELECT hex(substr(b.ids, s.i * 8 + 1, 8))    AS hid,
           hex(substr(b.ticks, s.i * 8 + 1, 8))  AS htick,
           hex(substr(b.xyz, s.i * 12 + 1, 4))   AS hx,
           hex(substr(b.xyz, s.i * 12 + 5, 4))   AS hy,
           hex(substr(b.xyz, s.i * 12 + 9, 4))   AS hz
    FROM position_blocks AS b JOIN slot AS s ON s.i < length(b.ids) / 8
),
bits AS (
    SELECT (instr('0123456789ABCDEF', substr(hid, 1, 1)) * 16 + instr('0123456789ABCDEF', substr(hid, 2, 1)) - 17)
               | ((instr('0123456789ABCDEF', substr(hid, 3, 1)) * 16 + instr('0123456789ABCDEF', substr(hid, 4, 1)) - 17) << 8)
               | ((instr('0123456789ABCDEF', substr(hid, 5, 1)) * 16 + instr('0123456789ABCDEF', substr(hid, 6, 1)) - 17) << 16)
               | ((instr('0123456789ABCDEF', substr(hid, 7, 1)) * 16 + instr('0123456789ABCDEF', substr(hid, 8, 1)) - 17) << 24)
               | ((instr('0123456789ABCDEF', substr(hid, 9, 1)) * 16 + instr('0123456789ABCDEF', substr(hid, 10, 1)) - 17) << 32)
               | ((instr('0123456789ABCDEF', substr(hid, 11, 1)) * 16 + instr('0123456789ABCDEF', substr(hid, 12, 1)) - 17) << 40)
               | ((instr('0123456789ABCDEF', substr(hid, 13, 1)) * 16 + instr('0123456789ABCDEF', substr(hid, 14, 1)) - 17) << 48)
               | ((instr('0123456789ABCDEF', substr(hid, 15, 1)) * 16 + instr('0123456789ABCDEF', substr(hid, 16, 1)) - 17) << 56) AS npc_id,
           (instr('0123456789ABCDEF', substr(htick, 1, 1)) * 16 + instr('0123456789ABCDEF', substr(htick, 2, 1)) - 17)
               | ((instr('0123456789ABCDEF', substr(htick, 3, 1)) * 16 + instr('0123456789ABCDEF', substr(htick, 4, 1)) - 17) << 8)
               | ((instr('0123456789ABCDEF', substr(htick, 5, 1)) * 16 + instr('0123456789ABCDEF', substr(htick, 6, 1)) - 17) << 16)
               | ((instr('0123456789ABCDEF', substr(htick, 7, 1)) * 16 + instr('0123456789ABCDEF', substr(htick, 8, 1)) - 17) << 24)
               | ((instr('0123456789ABCDEF', substr(htick, 9, 1)) * 16 + instr('0123456789ABCDEF', substr(htick, 10, 1)) - 17) << 32)
               | ((instr('0123456789ABCDEF', substr(htick, 11, 1)) * 16 + instr('0123456789ABCDEF', substr(htick, 12, 1)) - 17) << 40)
               | ((instr('0123456789ABCDEF', substr(htick, 13, 1)) * 16 + instr('0123456789ABCDEF', substr(htick, 14, 1)) - 17) << 48)
               | ((instr('0123456789ABCDEF', substr(htick, 15, 1)) * 16 + instr('0123456789ABCDEF', substr(htick, 16, 1)) - 17) << 56) AS tick,
           (instr('0123456789ABCDEF', substr(hx, 1, 1)) * 16 + instr('0123456789ABCDEF', substr(hx, 2, 1)) - 17)
               | ((instr('0123456789ABCDEF', substr(hx, 3, 1)) * 16 + instr('0123456789ABCDEF', substr(hx, 4, 1)) - 17) << 8)
               | ((instr('0123456789ABCDEF', substr(hx, 5, 1)) * 16 + instr('0123456789ABCDEF', substr(hx, 6, 1)) - 17) << 16)
               | ((instr('0123456789ABCDEF', substr(hx, 7, 1)) * 16 + instr('0123456789ABCDEF', substr(hx, 8, 1)) - 17) << 24) AS ux,
           (instr('0123456789ABCDEF', substr(hy, 1, 1)) * 16 + instr('0123456789ABCDEF', substr(hy, 2, 1)) - 17)
               | ((instr('0123456789ABCDEF', substr(hy, 3, 1)) * 16 + instr('0123456789ABCDEF', substr(hy, 4, 1)) - 17) << 8)
               | ((instr('0123456789ABCDEF', substr(hy, 5, 1)) * 16 + instr('0123456789ABCDEF', substr(hy, 6, 1)) - 17) << 16)
               | ((instr('0123456789ABCDEF', substr(hy, 7, 1)) * 16 + instr('0123456789ABCDEF', substr(hy, 8, 1)) - 17) << 24) AS uy,
           (instr('0123456789ABCDEF', substr(hz, 1, 1)) * 16 + instr('0123456789ABCDEF', substr(hz, 2, 1)) - 17)
               | ((instr('0123456789ABCDEF', substr(hz, 3, 1)) * 16 + instr('0123456789ABCDEF', substr(hz, 4, 1)) - 17) << 8)
               | ((instr('0123456789ABCDEF', substr(hz, 5, 1)) * 16 + instr('0123456789ABCDEF', substr(hz, 6, 1)) - 17) << 16)
               | ((instr('0123456789ABCDEF', substr(hz, 7, 1)) * 16 + instr('0123456789ABCDEF', substr(hz, 8, 1)) - 17) << 24) AS uz
    FROM hexed
),
parts AS (
    SELECT npc_id, tick,
           ux >> 31 AS sx, (ux >> 23) & 255 AS ex, ux & 8388607 AS mx,
           uy >> 31 AS sy, (uy >> 23) & 255 AS ey, uy & 8388607 AS my,
           uz >> 31 AS sz, (uz >> 23) & 255 AS ez, uz & 8388607 AS mz
    FROM bits
)
SELECT npc_id, tick,
       CASE WHEN ex = 255 THEN NULL
         ELSE (1 - 2 * sx) * (CASE WHEN ex = 0 THEN mx ELSE mx + 8388608 END)
              * (CASE WHEN max(ex, 1) - 150 >= 0 THEN (1 << (max(ex, 1) - 150) / 2) * 1.0 * (1 << (max(ex, 1) - 150) - (max(ex, 1) - 150) / 2)
                 ELSE 1.0 / (1 << -(max(ex, 1) - 150) / 3) / (1 << -(max(ex, 1) - 150) / 3) / (1 << -(max(ex, 1) - 150) - 2 * (-(max(ex, 1) - 150) / 3)) END) END AS x,
       CASE WHEN ey = 255 THEN NULL
         ELSE (1 - 2 * sy) * (CASE WHEN ey = 0 THEN my ELSE my + 8388608 END)
              * (CASE WHEN max(ey, 1) - 150 >= 0 THEN (1 << (max(ey, 1) - 150) / 2) * 1.0 * (1 << (max(ey, 1) - 150) - (max(ey, 1) - 150) / 2)
                 ELSE 1.0 / (1 << -(max(ey, 1) - 150) / 3) / (1 << -(max(ey, 1) - 150) / 3) / (1 << -(max(ey, 1) - 150) - 2 * (-(max(ey, 1) - 150) / 3)) END) END AS y,
       CASE WHEN ez = 255 THEN NULL
         ELSE (1 - 2 * sz) * (CASE WHEN ez = 0 THEN mz ELSE mz + 8388608 END)
              * (CASE WHEN max(ez, 1) - 150 >= 0 THEN (1 << (max(ez, 1) - 150) / 2) * 1.0 * (1 << (max(ez, 1) - 150) - (max(ez, 1) - 150) / 2)
                 ELSE 1.0 / (1 << -(max(ez, 1) - 150) / 3) / (1 << -(max(ez, 1) - 150) / 3) / (1 << -(max(ez, 1) - 150) - 2 * (-(max(ez, 1) - 150) / 3)) END) END AS z
FROM parts;

CREATE VIEW npcs_now AS
    SELECT n.id, n.role, n.status, n.swarm, n.agent,
           CASE WHEN p.tick >= n.updated_tick THEN p.x ELSE n.x END AS x,
           CASE WHEN p.tick >= n.updated_tick THEN p.y ELSE n.y END AS y,
           CASE WHEN p.tick >= n.updated_tick THEN p.z ELSE n.z END AS z,
           n.health, n.inventory, max(n.updated_tick, coalesce(p.tick, n.updated_tick)) AS updated_tick
    FROM npcs AS n LEFT JOIN npc_current_positions AS p ON p.npc_id = n.id;
