-- Conversations, their members and their sequenced messages (distributed mode).
-- The same tables as migrations/sqlite/0001_init.sql. Identifier columns use
-- the "C" collation so that ORDER BY (conversation ids, member lists) is byte
-- order, as in SQLite, whatever locale the cluster was created with.
CREATE TABLE conversations (
    id            TEXT COLLATE "C" PRIMARY KEY,
    kind          INTEGER NOT NULL,
    title         TEXT NOT NULL,
    -- The newest seq handed out; the next one is last_seq + 1.
    last_seq      BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE members (
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations (id),
    user_id         TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);

-- ListConversations reads a user's memberships.
CREATE INDEX members_by_user ON members (user_id, conversation_id);

CREATE TABLE messages (
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations (id),
    seq             BIGINT NOT NULL,
    sender_id       TEXT COLLATE "C" NOT NULL,
    client_msg_id   TEXT COLLATE "C" NOT NULL,
    kind            INTEGER NOT NULL,
    body            TEXT NOT NULL,
    -- Encoded confab.v1.MembershipEvent for SYSTEM messages.
    membership      BYTEA,
    created_at_ms   BIGINT NOT NULL,
    -- GetHistory is a range scan of this index at any table size.
    PRIMARY KEY (conversation_id, seq)
);

-- The retry key: one stored message per (conversation, sender, client_msg_id).
CREATE UNIQUE INDEX messages_dedupe
    ON messages (conversation_id, sender_id, client_msg_id)
    WHERE kind = 1;
