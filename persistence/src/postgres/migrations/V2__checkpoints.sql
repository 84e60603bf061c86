-- V2: checkpoints, the engine's snapshot frame of the whole world at `tick`, stored after
-- every batch of `run` up to `seq` was committed; `clean` when a clean shutdown wrote it; `checksum` is the xxh3-64 of `bytes`.
CREATE TABLE checkpoints (
    id         bigserial   PRIMARY KEY,
    run        bigint      NOT NULL,
    seq        bigint      NOT NULL,
    tick       bigint      NOT NULL,
    clean      boolean     NOT NULL,
    checksum   bigint      NOT NULL,
    size       bigint      NOT NULL,
    bytes      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX checkpoints_tick_idx ON checkpoints (tick, id);
-- Snapshot frames don't compress (positions are floats): don't try, store them out of line.
ALTER TABLE checkpoints ALTER COLUMN bytes SET STORAGE EXTERNAL;
