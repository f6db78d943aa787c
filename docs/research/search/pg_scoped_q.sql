-- :tpl is the tsquery template; '@' is replaced by each member conversation's prefix.
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
WITH q AS MATERIALIZED (
  SELECT string_agg('(' || replace(:'tpl', '@', to_hex(substr(mb.conversation_id, 6)::int) || '_') || ')', ' | ')::tsquery AS q
  FROM members mb WHERE mb.user_id = 'bench-user'
)
SELECT s.conversation_id, s.seq, m.sender_id, m.body, ts_rank(s.tsv, q.q) AS rank
FROM q, scoped s
JOIN members mb ON mb.conversation_id = s.conversation_id AND mb.user_id = 'bench-user'
JOIN messages m ON m.conversation_id = s.conversation_id AND m.seq = s.seq
WHERE s.tsv @@ q.q AND s.seq > mb.from_seq
ORDER BY rank DESC, s.conversation_id, s.seq LIMIT 20;
