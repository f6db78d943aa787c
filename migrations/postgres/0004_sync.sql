-- Sync cursors that never expire and never skip (docs/architecture.md,
-- "Sync"). Each ingress partition has one writer at a time; every
-- transaction that changes conversations draws the next number of its
-- partition's counter (the row stays locked until it commits, so the
-- numbers of a partition follow commit order) and stamps each conversation
-- it changed with (partition, number). A client's cursor is the vector of
-- the counters it has seen; a conversation changed since the cursor when
-- its number is above the cursor's entry for its partition.
CREATE TABLE change_counters (
    log_partition INTEGER PRIMARY KEY,
    change_no     BIGINT NOT NULL
);

-- The newest change of each conversation. 0: none since this migration
-- (only a sync without a cursor reports those).
ALTER TABLE conversations ADD COLUMN change_partition INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN change_no BIGINT NOT NULL DEFAULT 0;

-- Who left or was removed from which conversation, and in which change:
-- what a sync reports as removed while the user is not a member again.
CREATE TABLE departures (
    user_id          TEXT COLLATE "C" NOT NULL,
    conversation_id  TEXT COLLATE "C" NOT NULL,
    change_partition INTEGER NOT NULL,
    change_no        BIGINT NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
);
