\timing on
BEGIN;
\i pg_schema.sql
\copy conversations (id, kind, title, last_seq, created_at_ms) FROM 'data.tsv.convs'
\copy messages (conversation_id, seq, sender_id, client_msg_id, kind, body, created_at_ms, search_tokens) FROM 'data.tsv'
COMMIT;
-- bench-user is in every 10th conversation (100), with a lower seq bound of 0;
-- 5 other members each.
INSERT INTO members (conversation_id, user_id, from_seq)
SELECT id, 'bench-user', 0 FROM conversations WHERE (substr(id, 6)::int) % 10 = 0;
INSERT INTO members (conversation_id, user_id)
SELECT c.id, 'user-' || ((substr(c.id, 6)::int * 7 + k) % 5000) FROM conversations c, generate_series(1, 5) k
ON CONFLICT DO NOTHING;
VACUUM ANALYZE;
SELECT pg_size_pretty(pg_table_size('messages')) AS messages_heap_with_toast,
       pg_size_pretty(sum(pg_column_size(body))) AS body_bytes,
       pg_size_pretty(sum(pg_column_size(search_tokens))) AS tsv_bytes FROM messages;
