-- Conversations, their members and their sequenced messages (embedded mode).
CREATE TABLE conversations (
    id            TEXT PRIMARY KEY NOT NULL,
    kind          INTEGER NOT NULL,
    title         TEXT NOT NULL,
    -- The newest seq handed out; the next one is last_seq + 1.
    last_seq      INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE members (
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    user_id         TEXT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;

-- ListConversations reads a user's memberships.
CREATE INDEX members_by_user ON members (user_id, conversation_id);

CREATE TABLE messages (
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    seq             INTEGER NOT NULL,
    sender_id       TEXT NOT NULL,
    client_msg_id   TEXT NOT NULL,
    kind            INTEGER NOT NULL,
    body            TEXT NOT NULL,
    -- Encoded confab.v1.MembershipEvent for SYSTEM messages.
    membership      BLOB,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;

-- The retry key: one stored message per (conversation, sender, client_msg_id).
CREATE UNIQUE INDEX messages_dedupe
    ON messages (conversation_id, sender_id, client_msg_id)
    WHERE kind = 1;
