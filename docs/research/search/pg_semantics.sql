\pset pager off
SELECT current_setting('lc_ctype') AS db_ctype;
CREATE EXTENSION IF NOT EXISTS pg_trgm;
-- (a) to_tsvector('simple') on CJK
SELECT to_tsvector('simple', 'The quick brown fox jumps over the lazy dog') AS en;
SELECT to_tsvector('simple', '我们明天去东京开会，你好吗？') AS zh;
SELECT to_tsvector('simple', '東京駅で友達に会いました') AS ja;
SELECT to_tsvector('simple', '안녕하세요 서울에서 만나요') AS ko;
SELECT to_tsvector('simple', '我们明天去东京开会') @@ plainto_tsquery('simple', '东京') AS zh_match_东京;
SELECT to_tsvector('simple', '東京駅で友達に会いました') @@ plainto_tsquery('simple', '東京') AS ja_match_東京;
SELECT to_tsvector('simple', '안녕하세요 서울에서 만나요') @@ plainto_tsquery('simple', '서울') AS ko_match_서울;
-- (b) pg_trgm
SELECT show_trgm('我们明天去东京开会') AS zh_trgm;
SELECT show_trgm('東京駅で友達に会いました') AS ja_trgm;
SELECT show_trgm('서울에서 만나요') AS ko_trgm;
SELECT show_trgm('Hello, World!') AS en_trgm;
SELECT '我们明天去东京开会' ILIKE '%东京%' AS like_zh, word_similarity('东京', '我们明天去东京开会') AS wsim_zh, similarity('东京开会', '我们明天去东京开会') AS sim_zh;
