-- ListConversations lists a user's conversations most recent activity first:
-- when the conversation's newest message or event was stored. One file for
-- both stores (migrations/sqlite/0003_last_activity.sql links here).
ALTER TABLE conversations ADD COLUMN last_activity_ms BIGINT NOT NULL DEFAULT 0;

UPDATE conversations SET last_activity_ms = COALESCE(
    (SELECT m.created_at_ms FROM messages AS m
     WHERE m.conversation_id = conversations.id AND m.seq = conversations.last_seq),
    created_at_ms
);
