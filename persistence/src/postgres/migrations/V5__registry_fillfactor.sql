-- V5: `npcs` is the registry only since V3 (positions live in `position_blocks`), so the room
-- V1's fillfactor 50 left on each page for HOT position updates is no longer used: new pages
-- are filled (a million-row registry is written in about half the pages). Rows already stored
-- keep their pages until they are rewritten.
ALTER TABLE npcs SET (fillfactor = 100);
