-- ListConversations lists a user's conversations most recent activity first:
-- when the conversation's newest message or event was stored (the same in
-- PostgreSQL and SQLite).
ALTER TABLE conversations ADD COLUMN last_activity_ms INTEGER NOT NULL DEFAULT 0;

UPDATE conversations SET last_activity_ms = COALESCE(
    (SELECT m.created_at_ms FROM messages AS m
     WHERE m.conversation_id = conversations.id AND m.seq = conversations.last_seq),
    created_at_ms
);
