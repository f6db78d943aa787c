-- Replies, edits, deletes and reactions (docs/architecture.md, "Edits,
-- deletes and reactions"). Each is a message with a seq of its own; the
-- TEXT message it changes keeps its current state on its row, so a page of
-- history is read as it is shown. The same tables as
-- migrations/postgres/0007_message_changes.sql.

-- A reply: the seq of the TEXT message it replies to (0: not a reply).
ALTER TABLE messages ADD COLUMN reply_to_seq BIGINT NOT NULL DEFAULT 0;
-- EDIT, DELETE and REACTION events: the TEXT message they change, and for
-- a REACTION its emoji and whether it was taken back (1).
ALTER TABLE messages ADD COLUMN target_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN emoji TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN reaction_removed INTEGER NOT NULL DEFAULT 0;
-- A TEXT message's edits (how many, when last; 0: never) and deletion
-- (by whom; '' not deleted), and its reactions (rows in `reactions`).
ALTER TABLE messages ADD COLUMN edit_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN edited_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN deleted_by TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN deleted_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN reaction_count BIGINT NOT NULL DEFAULT 0;

-- The retry key covers every message a member writes (sends, edits,
-- deletes, reactions): one client_msg_id, one outcome.
DROP INDEX messages_dedupe;
CREATE UNIQUE INDEX messages_dedupe
    ON messages (conversation_id, sender_id, client_msg_id)
    WHERE kind <> 2;

-- Unread counts: what is not unread is every seq but the TEXT messages
-- that are not deleted. `system_count` and `read_system` (0002) count
-- those seqs from now on; MarkRead counts them at or below its position
-- with this index.
DROP INDEX messages_system;
CREATE INDEX messages_uncounted ON messages (conversation_id, seq)
    WHERE kind <> 1 OR deleted_at_ms <> 0;

-- A delete erases the bodies of the edits of the message it deletes.
CREATE INDEX messages_targets ON messages (conversation_id, target_seq)
    WHERE target_seq <> 0;

-- Every body a TEXT message had before its current one, version 0 the
-- original; erased when the message is deleted.
CREATE TABLE message_versions (
    conversation_id TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    body            TEXT NOT NULL,
    written_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, seq, version)
) WITHOUT ROWID;

-- Who reacted to which message with which emoji.
CREATE TABLE reactions (
    conversation_id TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    user_id         TEXT NOT NULL,
    emoji           TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, seq, emoji, user_id)
) WITHOUT ROWID;

-- A conversation's newest TEXT message (0006) as it is now.
ALTER TABLE conversations ADD COLUMN last_text_edit_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN last_text_edited_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN last_text_deleted_by TEXT NOT NULL DEFAULT '';
ALTER TABLE conversations ADD COLUMN last_text_deleted_at_ms BIGINT NOT NULL DEFAULT 0;
