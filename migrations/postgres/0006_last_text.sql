-- Every listing (ListConversations, Sync, GetConversation) shows each
-- conversation's newest TEXT message. It is kept on the conversation's row,
-- written by the statement that moves `last_seq` for each run of sends, so a
-- listing of 1,000 conversations reads no `messages` row (an index probe
-- per conversation was half of a 1,000-conversation Sync). `last_text_seq`
-- 0: no TEXT message yet. One file for both stores
-- (migrations/sqlite/0006_last_text.sql links here).
ALTER TABLE conversations ADD COLUMN last_text_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN last_text_sender TEXT NOT NULL DEFAULT '';
ALTER TABLE conversations ADD COLUMN last_text_client_msg_id TEXT NOT NULL DEFAULT '';
ALTER TABLE conversations ADD COLUMN last_text_body TEXT NOT NULL DEFAULT '';
ALTER TABLE conversations ADD COLUMN last_text_at_ms BIGINT NOT NULL DEFAULT 0;

UPDATE conversations
SET (last_text_seq, last_text_sender, last_text_client_msg_id, last_text_body, last_text_at_ms) = (
    SELECT m.seq, m.sender_id, m.client_msg_id, m.body, m.created_at_ms FROM messages AS m
    WHERE m.conversation_id = conversations.id AND m.kind = 1
    ORDER BY m.seq DESC LIMIT 1
)
WHERE EXISTS (
    SELECT 1 FROM messages AS m WHERE m.conversation_id = conversations.id AND m.kind = 1
);
