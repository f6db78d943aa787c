-- History visibility (docs/architecture.md, "History visibility"): SHARED
-- (1, members read every seq) or SINCE_JOINED (2, members read the seqs of
-- their memberships). One file for both stores
-- (migrations/sqlite/0009_history_visibility.sql links here).
ALTER TABLE conversations ADD COLUMN history_visibility INTEGER NOT NULL DEFAULT 1;

-- Each membership of a user in a conversation, from the seq of the event
-- that made it a member to the seq of the one that removed it (the largest
-- BIGINT while it is a member): what a SINCE_JOINED conversation lets it
-- read.
CREATE TABLE member_spans (
    conversation_id TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    from_seq        BIGINT NOT NULL,
    to_seq          BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id, from_seq)
);

-- Members from before joined at seq 1 (0008).
INSERT INTO member_spans (conversation_id, user_id, from_seq, to_seq)
SELECT conversation_id, user_id, joined_seq, 9223372036854775807 FROM members;
