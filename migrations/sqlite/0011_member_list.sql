-- Each small conversation keeps its members' list, as a listing returns it
-- (`user read_seq role joined_seq` per member, space-separated: see
-- member_list in services/history/src/store/rows.rs), written in the same
-- statement as the conversation's change stamp and after every change to its
-- members. A listing (Sync, ListConversations, GetConversation) reads it with
-- the conversation's row instead of looking up every member: a Sync of 1,000
-- conversations spent over half of PostgreSQL's time on those lookups
-- (docs/benchmarks.md). The list is read only while the stamp written with it
-- is the conversation's: a release that does not keep it (the previous one,
-- during a rolling upgrade) moves the stamp past it. NULL where the
-- conversation has more members than a list holds, or has not changed since
-- this migration: a listing then reads the members.
ALTER TABLE conversations ADD COLUMN member_list TEXT;
ALTER TABLE conversations ADD COLUMN member_list_partition INTEGER;
ALTER TABLE conversations ADD COLUMN member_list_no BIGINT;
