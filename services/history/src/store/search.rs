//! How each store keeps and finds the words of messages for
//! `SearchMessages` (docs/architecture.md, "Search"). Both take their words
//! from [`confab_core::search`]; this module writes them in each index's
//! language: a PostgreSQL `tsvector` / `tsquery` whose lexemes carry their
//! conversation's scope, and an FTS5 token list / query.
//!
//! What a caller may find is what `GetHistory` shows it now: the live TEXT
//! messages of its conversations, within the one visibility rule
//! ([`rows::visible`]). Hits come newest first, by (sent at, conversation,
//! seq), a key no write changes, so paging is stable.

use super::rows;
use confab_core::search::{self, Term};

/// A search as a store runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery<'a> {
    /// Who searches.
    pub caller: &'a str,
    /// What to find (not empty).
    pub terms: &'a [Term],
    /// Only this conversation ("" for all of the caller's).
    pub conversation_id: &'a str,
    /// Only hits older than this one (see [`SearchAfter::FIRST`]).
    pub after: SearchAfter,
    /// Rows wanted.
    pub limit: u32,
}

/// Where a page of hits starts: after the hit with this key, in the order
/// newest first (sent at, then conversation id, then seq, each descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchAfter {
    /// When the last hit was sent (ms since the epoch).
    pub sent_at_ms: i64,
    /// Its conversation.
    pub conversation_id: String,
    /// Its seq.
    pub seq: u64,
}

impl SearchAfter {
    /// Before every hit: the first page.
    pub const FIRST: SearchAfter = SearchAfter {
        sent_at_ms: i64::MAX,
        conversation_id: String::new(),
        seq: 0,
    };
}

/// A hit as a store finds it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SearchRow {
    /// Its conversation.
    pub conversation_id: String,
    /// Its seq.
    pub seq: i64,
    /// Who sent it.
    pub sender_id: String,
    /// Its current body.
    pub body: String,
    /// When it was sent (ms since the epoch).
    pub created_at_ms: i64,
}

/// The SQL text of conversation `conv`'s scope, prefixed to each of its
/// lexemes in PostgreSQL: the first 7 hex digits of the md5 of its id and
/// "_" (a collision only costs a probe a few more rows, which the join on
/// the conversation drops).
fn pg_scope(conv: &str) -> String {
    format!("(left(md5({conv}), 7) || '_')")
}

/// `literal` (SQL text of a [`pg_document`] or [`pg_query`], with scope
/// marks) as a `ty` (`tsvector` or `tsquery`) of conversation `conv`: the
/// one place the marks become the conversation's scope.
pub fn pg_scoped(literal: &str, conv: &str, ty: &str) -> String {
    format!(
        "replace({literal}, '{SCOPE_MARK}', {})::{ty}",
        pg_scope(conv)
    )
}

/// Where a lexeme's scope goes in the literals below; `replace(x, '@',
/// pg_scope(..))` puts it there (no token holds '@': tokens are letters and
/// digits).
const SCOPE_MARK: char = '@';

/// Words of one message that are indexed: the rest of a longer message is
/// not found by search. It keeps a message's `tsvector` well under
/// PostgreSQL's 1 MB (at most 64 characters a word), so no body that the
/// gateway lets through (`CONFAB_MAX_BODY_BYTES`) fails its batch.
pub const MAX_INDEXED_WORDS: usize = 4096;

/// The words of `body` that are indexed.
fn indexed(body: &str) -> impl Iterator<Item = search::Token> {
    search::tokens(body).into_iter().take(MAX_INDEXED_WORDS)
}

/// A lexeme as a PostgreSQL literal.
fn pg_lexeme(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    out.push('\'');
    out.push(SCOPE_MARK);
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The words of `body` as a `tsvector` literal with scope marks (the SQL
/// replaces them with [`pg_scope`]).
pub fn pg_document(body: &str) -> String {
    let mut out = String::new();
    for token in indexed(body) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&pg_lexeme(&token.text));
        out.push(':');
        // PostgreSQL keeps positions up to 16,383.
        out.push_str(&token.pos.min(16_383).to_string());
    }
    out
}

/// `terms` as a `tsquery` literal with scope marks: every term, a phrase
/// as adjacent pairs, one character as a prefix.
pub fn pg_query(terms: &[Term]) -> String {
    let parts: Vec<String> = terms
        .iter()
        .map(|term| match term {
            Term::Word(w) => pg_lexeme(w),
            Term::Prefix(c) => format!("{}:*", pg_lexeme(c)),
            Term::Phrase(pairs) => {
                let pairs: Vec<String> = pairs.iter().map(|p| pg_lexeme(p)).collect();
                format!("({})", pairs.join(" <-> "))
            }
        })
        .collect();
    parts.join(" & ")
}

/// The newest hits of `$1`'s search `$2` (a [`pg_query`]) in PostgreSQL:
/// one GIN probe per conversation of the caller's (`$3` = one, or '' for
/// all), each reading only that conversation's postings, then the
/// visibility rule, then the page after `($4, $5, $6)`, `$7` rows.
pub fn pg_search_sql() -> String {
    format!(
        "WITH scope AS MATERIALIZED (
             SELECT mb.conversation_id, c.history_visibility AS vis,
                    {} AS q
             FROM members mb JOIN conversations c ON c.id = mb.conversation_id
             WHERE mb.user_id = $1 AND ($3 = '' OR mb.conversation_id = $3)
         )
         SELECT h.conversation_id, h.seq, h.sender_id, h.body, h.created_at_ms
         FROM scope s
         CROSS JOIN LATERAL (
             -- OFFSET 0 keeps the conversation out of the probe: with it, the
             -- planner ANDs each probe with a bitmap of the whole
             -- conversation's rows (docs/research/search).
             SELECT m.conversation_id, m.seq, m.sender_id, m.body, m.created_at_ms
             FROM messages m
             WHERE m.search_tokens @@ s.q AND m.search_tokens IS NOT NULL
             OFFSET 0
         ) h
         WHERE h.conversation_id = s.conversation_id AND {}
           AND (h.created_at_ms, h.conversation_id, h.seq) < ($4, $5, $6)
         ORDER BY h.created_at_ms DESC, h.conversation_id DESC, h.seq DESC
         LIMIT $7",
        pg_scoped("$2", "mb.conversation_id", "tsquery"),
        rows::visible("h.seq", "h.conversation_id", "s.vis", "$1"),
    )
}

/// `(search_no << 32) | seq`: the FTS5 rowid of a message, given its
/// conversation's `search_no` and its seq as SQL (seqs stay below 2^32
/// in an embedded store).
pub fn fts_rowid(search_no: &str, seq: &str) -> String {
    format!("(({search_no} << 32) | {seq})")
}

/// The words of `body` as FTS5 text: the tokens, space-separated (FTS5's
/// `ascii` tokenizer splits on spaces and keeps them whole).
pub fn fts_document(body: &str) -> String {
    let tokens: Vec<String> = indexed(body).map(|t| t.text).collect();
    tokens.join(" ")
}

/// `terms` as an FTS5 query: every term, a phrase as a quoted string of
/// pairs, one character as a prefix.
pub fn fts_query(terms: &[Term]) -> String {
    let quoted = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let parts: Vec<String> = terms
        .iter()
        .map(|term| match term {
            Term::Word(w) => quoted(w),
            Term::Prefix(c) => format!("{}*", quoted(c)),
            Term::Phrase(pairs) => quoted(&pairs.join(" ")),
        })
        .collect();
    parts.join(" AND ")
}

/// The newest hits of `$1`'s search `$2` (an [`fts_query`]) in SQLite: one
/// FTS5 match (within one conversation's rowids when `one_conversation`,
/// `$3`), joined to the caller's memberships, then the visibility rule,
/// then the page after `($4, $5, $6)`, `$7` rows.
pub fn sqlite_search_sql(one_conversation: bool) -> String {
    let within = if one_conversation {
        let no = "(SELECT sc.search_no FROM conversations sc WHERE sc.id = $3)";
        format!(
            "AND message_search.rowid >= {} AND message_search.rowid <= {}",
            fts_rowid(no, "0"),
            fts_rowid(no, "4294967295")
        )
    } else {
        String::new()
    };
    format!(
        "SELECT m.conversation_id, m.seq, m.sender_id, m.body, m.created_at_ms
         FROM message_search
         CROSS JOIN conversations c ON c.search_no = (message_search.rowid >> 32)
         CROSS JOIN members mb ON mb.conversation_id = c.id AND mb.user_id = $1
         CROSS JOIN messages m ON m.conversation_id = c.id AND m.seq = (message_search.rowid & 4294967295)
         WHERE message_search MATCH $2 {within} AND ($3 = '' OR c.id = $3) AND {}
           AND (m.created_at_ms, m.conversation_id, m.seq) < ($4, $5, $6)
         ORDER BY m.created_at_ms DESC, m.conversation_id DESC, m.seq DESC
         LIMIT $7",
        rows::visible("m.seq", "m.conversation_id", "c.history_visibility", "$1"),
    )
}

/// Leaves the row that makes the next start with search on index every
/// message again (see each store's backfill).
pub const MARK_PENDING: &str = "INSERT INTO search_backfill (pending)
     SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM search_backfill)";

/// Messages indexed per statement when a store indexes what was stored
/// before search existed.
pub const BACKFILL_BATCH: i64 = 1000;

/// The next [`BACKFILL_BATCH`] live TEXT messages after `($1, $2)` in key
/// order, for either store's backfill.
pub const BACKFILL_NEXT: &str = "SELECT conversation_id, seq, body FROM messages
     WHERE kind = 1 AND deleted_at_ms = 0 AND (conversation_id, seq) > ($1, $2)
     ORDER BY conversation_id, seq LIMIT $3";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_carry_scope_marks_and_positions() {
        assert_eq!(pg_document("Meet 東京"), "'@meet':1 '@東京':2 '@京':3");
        assert_eq!(
            pg_query(&search::terms("meet 東京駅 猫")),
            "'@meet' & ('@東京' <-> '@京駅') & '@猫':*"
        );
        assert_eq!(fts_document("Meet 東京"), "meet 東京 京");
        assert_eq!(
            fts_query(&search::terms("meet 東京駅 猫")),
            "\"meet\" AND \"東京 京駅\" AND \"猫\"*"
        );
        assert_eq!(pg_document("!!"), "", "no words, an empty tsvector");
    }

    #[test]
    fn a_huge_body_keeps_its_document_under_postgresql_limits() {
        // 1 MB of distinct 64-character words.
        let body: String = (0..16_000).map(|i| format!("{i:064} ")).collect();
        let doc = pg_document(&body);
        assert!(doc.len() < 512 * 1024, "{} bytes", doc.len());
        assert_eq!(doc.matches(':').count(), MAX_INDEXED_WORDS);
        assert_eq!(fts_document(&body).split(' ').count(), MAX_INDEXED_WORDS);
    }
}
