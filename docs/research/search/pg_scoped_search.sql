-- The proposed PostgreSQL search statement. :user, :tpl (tsquery template,
-- '@' = scope), :conv (NULL = all), :after_rank/:after_conv/:after_seq (keyset), :lim.
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
WITH scope AS MATERIALIZED (
    SELECT mb.conversation_id, mb.from_seq,
           replace(:'tpl', '@', left(md5(mb.conversation_id), 7) || '_')::tsquery AS q
    FROM members mb
    WHERE mb.user_id = :'user'
), anyq AS MATERIALIZED (
    SELECT string_agg('(' || q::text || ')', ' | ')::tsquery AS q FROM scope
)
SELECT * FROM (
    SELECT m.conversation_id, m.seq, m.sender_id, m.body, ts_rank(m.search_tokens, s.q) AS rank
    FROM anyq
    JOIN messages m ON m.search_tokens @@ anyq.q
    JOIN scope s ON s.conversation_id = m.conversation_id
    WHERE m.kind = 1 AND m.seq > s.from_seq
) h
ORDER BY h.rank DESC, h.conversation_id, h.seq LIMIT 20;
