-- SearchMessages (docs/architecture.md, "Search"). Each live TEXT message
-- keeps its words as a tsvector written by history from its current body
-- (confab_core::search tokenizes it: words, and Chinese, Japanese and Korean
-- runs as overlapping pairs plus the last character). Every lexeme starts
-- with its conversation's scope, left(md5(conversation_id), 7) || '_', so a
-- search probes only the postings of the caller's conversations. NULL for
-- everything else: events, and deleted messages (their words are erased).
ALTER TABLE messages ADD COLUMN search_tokens tsvector;

-- fastupdate = off: a pending list would be scanned in full by every probe
-- (85-270 ms per query when partly full, measured: docs/research/search).
CREATE INDEX messages_search ON messages USING gin (search_tokens)
    WITH (fastupdate = off) WHERE search_tokens IS NOT NULL;

-- Messages stored before this migration are indexed by history when it
-- opens the store (the tokenizer is Rust); this row says that is pending.
CREATE TABLE search_backfill (pending INTEGER NOT NULL);
INSERT INTO search_backfill SELECT 1 WHERE EXISTS (SELECT 1 FROM messages WHERE kind = 1);
