EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
WITH scope AS MATERIALIZED (
    SELECT mb.conversation_id, mb.from_seq,
           replace(:'tpl', '@', left(md5(mb.conversation_id), 7) || '_')::tsquery AS q
    FROM members mb
    WHERE mb.user_id = :'user'
)
SELECT h.conversation_id, h.seq, h.sender_id, h.body, h.rank
FROM scope s
CROSS JOIN LATERAL (
    -- OFFSET 0: the conversation test stays a filter (no BitmapAnd with messages_pkey).
    SELECT m.conversation_id, m.seq, m.sender_id, m.body, ts_rank(m.search_tokens, s.q) AS rank
    FROM messages m
    WHERE m.search_tokens @@ s.q AND m.kind = 1
    OFFSET 0
) h
WHERE h.conversation_id = s.conversation_id AND h.seq > s.from_seq
ORDER BY h.rank DESC, h.conversation_id, h.seq LIMIT 20;
