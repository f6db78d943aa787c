-- Bench schema: the messages table of migrations/postgres/0001_init.sql plus
-- the proposed search column; members with a per-member lower seq bound.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE TABLE conversations (
    id TEXT COLLATE "C" PRIMARY KEY, kind INTEGER NOT NULL, title TEXT NOT NULL,
    last_seq BIGINT NOT NULL, created_at_ms BIGINT NOT NULL);
CREATE TABLE members (
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations (id),
    user_id TEXT COLLATE "C" NOT NULL,
    from_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id));
CREATE INDEX members_by_user ON members (user_id, conversation_id);
CREATE TABLE messages (
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations (id),
    seq BIGINT NOT NULL, sender_id TEXT COLLATE "C" NOT NULL, client_msg_id TEXT COLLATE "C" NOT NULL,
    kind INTEGER NOT NULL, body TEXT NOT NULL, membership BYTEA, created_at_ms BIGINT NOT NULL,
    search_tokens tsvector,
    PRIMARY KEY (conversation_id, seq));
CREATE UNIQUE INDEX messages_dedupe ON messages (conversation_id, sender_id, client_msg_id) WHERE kind = 1;
CREATE INDEX messages_system ON messages (conversation_id, seq) WHERE kind = 2;
