-- SearchMessages (docs/architecture.md, "Search"). Each live TEXT message
-- keeps its words, as confab_core::search tokenizes its current body, in a
-- contentless FTS5 table (no second copy of the text). Its rowid is
-- search_no << 32 | seq: search_no is a small number per conversation,
-- kept in a column because VACUUM may renumber implicit rowids.
ALTER TABLE conversations ADD COLUMN search_no INTEGER;
UPDATE conversations SET search_no = rowid;
CREATE UNIQUE INDEX conversations_search_no ON conversations (search_no);
CREATE TRIGGER conversations_search_no AFTER INSERT ON conversations
WHEN NEW.search_no IS NULL
BEGIN
    UPDATE conversations SET search_no = (SELECT COALESCE(MAX(search_no), 0) + 1 FROM conversations)
    WHERE id = NEW.id;
END;

-- tokenize = 'ascii': the tokens come space-separated from Rust, and every
-- non-ASCII character stays part of its token. secure-delete: a 'delete'
-- (given the words that were indexed) removes them from the file, so a
-- deleted message's words are erased, not hidden.
CREATE VIRTUAL TABLE message_search USING fts5 (tokens, content = '', tokenize = 'ascii');
INSERT INTO message_search (message_search, rank) VALUES ('secure-delete', 1);

-- Messages stored before this migration are indexed by history when it
-- opens the store (the tokenizer is Rust); this row says that is pending.
CREATE TABLE search_backfill (pending INTEGER NOT NULL);
INSERT INTO search_backfill SELECT 1 WHERE EXISTS (SELECT 1 FROM messages WHERE kind = 1);
