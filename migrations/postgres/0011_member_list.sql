-- Each small conversation keeps its members' list, as a listing returns it
-- (`user read_seq role joined_seq` per member, space-separated: see
-- MEMBER_LIST_ENTRY in services/history/src/store/rows.rs), written in the
-- same transaction as every change to its members. A listing (Sync,
-- ListConversations, GetConversation) reads it with the conversation's row
-- instead of looking up every member: a Sync of 1,000 conversations spent
-- over half of PostgreSQL's time on those lookups (docs/benchmarks.md).
-- NULL where the conversation has more members than a list holds, or has not
-- changed since this migration: a listing then reads the members.
ALTER TABLE conversations ADD COLUMN member_list TEXT;
