-- The same as migrations/postgres/0005_presence.sql without its collation.
-- Presence (docs/architecture.md, "Presence"): who is online and when each
-- user was last seen. Not history: no seq, nothing sequenced. Routers (the
-- gateway in embedded mode) write it as sessions come and go; an online
-- user's row is renewed while it stays online, so a row whose writers all
-- died stops counting as online once `alive_until_ms` passes.
CREATE TABLE presence (
    user_id        TEXT PRIMARY KEY,
    -- Online until then (ms since the epoch); 0 once offline.
    alive_until_ms BIGINT NOT NULL,
    -- When the user's last session ended; 0: never seen offline.
    last_seen_ms   BIGINT NOT NULL
);
