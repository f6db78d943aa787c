-- Roles in groups (docs/architecture.md, "Roles"): OWNER 1, ADMIN 2,
-- MEMBER 3; 0 in DIRECT conversations, which have none. And the seq of the
-- event that made each member one. One file for both stores
-- (migrations/sqlite/0008_roles.sql links here).
ALTER TABLE members ADD COLUMN role INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN joined_seq BIGINT NOT NULL DEFAULT 0;

-- Members from before: as if they joined at the start (they could read
-- everything, and still can), members of their groups,
UPDATE members SET joined_seq = 1;
UPDATE members SET role = 3
WHERE conversation_id IN (SELECT c.id FROM conversations AS c WHERE c.kind = 2);
-- the creator its owner (seq 1 is the creation, sent by its creator),
UPDATE members SET role = 1
WHERE role = 3 AND EXISTS (
    SELECT 1 FROM messages AS x
    WHERE x.conversation_id = members.conversation_id AND x.seq = 1 AND x.kind = 2
      AND x.sender_id = members.user_id
);
-- and a group whose creator left owned by its first member by id.
UPDATE members SET role = 1
WHERE role = 3
  AND NOT EXISTS (
      SELECT 1 FROM members AS o WHERE o.conversation_id = members.conversation_id AND o.role = 1
  )
  AND user_id = (
      SELECT MIN(f.user_id) FROM members AS f WHERE f.conversation_id = members.conversation_id
  );
