-- Read positions and exact unread counts. One file for both stores
-- (migrations/sqlite/0002_read_positions.sql links here): PostgreSQL and
-- SQLite run it as it is. Seqs have no gaps, so a member's unread count is
--   (last_seq - system_count) - (read_seq - read_system)
-- the TEXT messages after its read position: SYSTEM events never count, and
-- neither do its own messages, because sending one moves the sender's read
-- position to it. No message row is read to compute it.

-- The SYSTEM events (membership changes) among the conversation's seqs.
ALTER TABLE conversations ADD COLUMN system_count BIGINT NOT NULL DEFAULT 0;
-- The member's read position, and the SYSTEM events at or below it.
ALTER TABLE members ADD COLUMN read_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN read_system BIGINT NOT NULL DEFAULT 0;

-- MarkRead counts the SYSTEM events at or below the position it sets.
CREATE INDEX messages_system ON messages (conversation_id, seq) WHERE kind = 2;

UPDATE conversations SET system_count = (
    SELECT COUNT(*) FROM messages AS m WHERE m.conversation_id = conversations.id AND m.kind = 2
);

-- Whatever was stored before read positions existed counts as read.
UPDATE members SET
    read_seq = (SELECT c.last_seq FROM conversations AS c WHERE c.id = members.conversation_id),
    read_system = (SELECT c.system_count FROM conversations AS c WHERE c.id = members.conversation_id);
