//! `SearchMessages` on [`super::reads::generate`]'s table, for a user in
//! some of its conversations: [`measure`] has the reader (the owner of
//! every generated group) add the searcher to them through the gateway,
//! then runs [`corpus::QUERIES`] in turn, one search at a time, and checks
//! every answer against what the generated rows say (the generator's
//! choice of text per row is computed here too, [`corpus::pick`]).

use super::corpus::{self, Corpus, QueryClass, Scope};
use super::inbox::{cpu_ms_per_call, ticks_now};
use super::reads::{bearer, conversation_id, gateway_client, row_of};
use super::{per_sec, Latency, Recorder};
use anyhow::{ensure, Context, Result};
use confab_core::search::{self, Term};
use confab_proto::v1::{
    AddMembersRequest, SearchHit, SearchMessagesRequest, SearchMessagesResponse,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long one call may take before it counts as `client_timeout`.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What to measure.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SearchOpts {
    /// A gateway serving the generated database.
    pub gateway: SocketAddr,
    /// The gateway's `CONFAB_JWT_SECRET`.
    pub secret: String,
    /// The generated data's reader: the owner of every conversation, who
    /// adds the searcher.
    pub reader: String,
    /// Who searches: a user in none of the generated conversations yet.
    pub searcher: String,
    /// The table as generated: [`super::reads::GenerateOpts::rows`],
    /// `conversations` and `body_bytes`.
    pub rows: u64,
    pub conversations: u64,
    pub body_bytes: usize,
    /// Conversations the searcher is added to, spread evenly over the
    /// generated ones (all of them if there are fewer).
    pub member_of: u64,
    /// Recorded searches, after one unrecorded round of the queries.
    pub requests: u64,
    /// Hits per page (`limit`).
    pub limit: u32,
    /// Processes whose CPU time per recorded search is reported, by label
    /// (a label's processes summed: PostgreSQL's).
    pub watch: Vec<(String, super::inbox::Watched)>,
}

/// One kind of query, as measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ClassReport {
    /// [`QueryClass::label`].
    pub class: String,
    /// Its queries.
    pub queries: Vec<String>,
    /// Messages its queries match in the searcher's conversations (mean
    /// over the queries).
    pub mean_matches: f64,
    /// Recorded searches.
    pub requests: u64,
    /// Latency of those that returned OK.
    pub latency: Latency,
}

/// What [`measure`] saw.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SearchReport {
    /// Conversations the searcher is in.
    pub member_of: u64,
    /// Generated TEXT messages in them.
    pub messages_in_scope: u64,
    /// Searches recorded, one at a time.
    pub requests: u64,
    /// Hits per page asked for.
    pub limit: u32,
    /// Searches per second.
    pub per_sec: f64,
    /// Latency of the calls that returned OK, every query.
    pub latency: Latency,
    /// The same per kind of query, in [`QueryClass`] order.
    pub classes: Vec<ClassReport>,
    /// Failed calls by gRPC code, `client_timeout`, and wrong answers:
    /// `too_many_hits`, `not_a_member` (a hit in a conversation the
    /// searcher is not in), `wrong_hit` (a message the query does not
    /// match, or one not generated), `out_of_order` (not newest first),
    /// `wrong_count` (not `min(limit, matches)` hits, or a next page
    /// token when there is no more, or none when there is),
    /// `no_highlight`.
    pub errors: BTreeMap<String, u64>,
    /// CPU time per recorded search (ms) of each watched process and of
    /// this client (`bench client`), in `watch` order.
    pub cpu_ms_per_search: Vec<(String, f64)>,
}

/// The conversations (by index) a searcher in `member_of` of
/// `conversations` is in: spread evenly, the first among them.
pub fn searched_conversations(conversations: u64, member_of: u64) -> Vec<u64> {
    let n = member_of.min(conversations);
    (0..n).map(|i| i * conversations / n).collect()
}

/// A query of the mix, with what it must find.
struct Query {
    class: QueryClass,
    text: &'static str,
    terms: Vec<Term>,
    /// Messages it matches in the searcher's conversations.
    matches: u64,
}

/// The newest-first key of a hit: (sent at in ms, conversation, seq).
fn hit_key(h: &SearchHit) -> (i64, &str, u64) {
    let ms = h
        .sent_at
        .as_ref()
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
    (ms, h.conversation_id.as_str(), h.seq)
}

/// What the generated table has, to check answers against.
struct Truth<'a> {
    corpus: &'a Corpus,
    rows: u64,
    conversations: u64,
    /// The searcher's conversations, by id.
    member: BTreeSet<String>,
    limit: u32,
}

impl Truth<'_> {
    /// What is wrong with `resp` as the answer to `q`, if anything.
    fn wrong(&self, q: &Query, resp: &SearchMessagesResponse) -> Option<&'static str> {
        let hits = &resp.hits;
        if hits.len() > self.limit as usize {
            return Some("too_many_hits");
        }
        if hits
            .iter()
            .any(|h| !self.member.contains(&h.conversation_id))
        {
            return Some("not_a_member");
        }
        if hits.iter().any(|h| !self.generated_match(q, h)) {
            return Some("wrong_hit");
        }
        if hits.windows(2).any(|w| hit_key(&w[0]) <= hit_key(&w[1])) {
            return Some("out_of_order");
        }
        let want = q.matches.min(u64::from(self.limit));
        let more = q.matches > u64::from(self.limit);
        if hits.len() as u64 != want || resp.next_page_token.is_empty() == more {
            return Some("wrong_count");
        }
        if hits.iter().any(|h| h.highlights.is_empty()) {
            return Some("no_highlight");
        }
        None
    }

    /// Whether `h` is a generated TEXT message that `q` matches.
    fn generated_match(&self, q: &Query, h: &SearchHit) -> bool {
        let conv = h
            .conversation_id
            .strip_prefix("bench-read-")
            .and_then(|n| n.parse::<u64>().ok());
        let row = conv.and_then(|c| row_of(self.rows, self.conversations, c, h.seq));
        // Seq 1 is each conversation's creation, not a TEXT message.
        match row {
            Some(g) if h.seq > 1 => {
                let body = self
                    .corpus
                    .body(corpus::pick(g, self.corpus.sentences.len()));
                search::matches(&body, &q.terms)
            }
            _ => false,
        }
    }
}

/// Adds the searcher to its conversations (as the reader, through the
/// gateway), then searches `requests` times after one unrecorded round
/// of the queries, checking every answer.
pub async fn measure(opts: &SearchOpts) -> Result<SearchReport> {
    ensure!(
        opts.conversations > 0 && opts.member_of > 0 && opts.limit > 0,
        "conversations, member_of and limit must be at least 1"
    );
    let corpus = Corpus::new(opts.body_bytes);
    let convs = searched_conversations(opts.conversations, opts.member_of);
    let owner = bearer(&opts.secret, &opts.reader)?;
    let mut client = gateway_client(opts.gateway).await?;
    for &c in &convs {
        let mut req = tonic::Request::new(AddMembersRequest {
            conversation_id: conversation_id(c),
            member_ids: vec![opts.searcher.clone()],
        });
        req.metadata_mut().insert("authorization", owner.clone());
        let conv = client
            .add_members(req)
            .await
            .with_context(|| format!("add {} to {}", opts.searcher, conversation_id(c)))?
            .into_inner();
        ensure!(
            conv.member_ids.contains(&opts.searcher),
            "{} is not a member of {} after being added",
            opts.searcher,
            conv.id
        );
    }

    // What each query must find: every generated TEXT message of the
    // searcher's conversations, counted by what it says.
    let mut scope = Scope::default();
    let (base, extra) = (
        opts.rows / opts.conversations,
        opts.rows % opts.conversations,
    );
    for &c in &convs {
        let rows = base + u64::from(c < extra);
        for seq in 2..=rows {
            if let Some(g) = row_of(opts.rows, opts.conversations, c, seq) {
                scope.add(corpus::pick(g, corpus.sentences.len()));
            }
        }
    }
    let queries: Vec<Query> = corpus::QUERIES
        .iter()
        .map(|&(class, text)| {
            let terms = search::terms(text);
            let matches = corpus.matcher(&terms).map_or(0, |mut m| m.count(&scope));
            Query {
                class,
                text,
                terms,
                matches,
            }
        })
        .collect();
    let truth = Truth {
        corpus: &corpus,
        rows: opts.rows,
        conversations: opts.conversations,
        member: convs.iter().map(|&c| conversation_id(c)).collect(),
        limit: opts.limit,
    };

    let auth = bearer(&opts.secret, &opts.searcher)?;
    let warmup = queries.len() as u64;
    let mut all = Recorder::new();
    let mut per_class: BTreeMap<QueryClass, (Recorder, u64)> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut watch = opts.watch.clone();
    watch.push((
        "bench client".into(),
        super::inbox::Watched::Processes(vec![std::process::id()]),
    ));
    let mut ticks: Vec<u64> = Vec::new();
    let mut started = Instant::now();
    for i in 0..warmup + opts.requests {
        if i == warmup {
            started = Instant::now();
            ticks = ticks_now(&watch);
        }
        let q = &queries[(i % queries.len() as u64) as usize];
        let mut req = tonic::Request::new(SearchMessagesRequest {
            query: q.text.to_string(),
            conversation_id: String::new(),
            page_token: String::new(),
            limit: opts.limit,
        });
        req.metadata_mut().insert("authorization", auth.clone());
        let at = Instant::now();
        let got = tokio::time::timeout(CALL_TIMEOUT, client.search_messages(req)).await;
        let took = at.elapsed();
        let recorded = i >= warmup;
        let error = match got {
            Err(_) => Some("client_timeout"),
            Ok(Err(status)) => Some(super::reads::code_name(status.code())),
            Ok(Ok(resp)) => {
                if recorded {
                    all.record(took);
                    let class = per_class.entry(q.class).or_insert((Recorder::new(), 0));
                    class.0.record(took);
                    class.1 += 1;
                }
                truth.wrong(q, &resp.into_inner())
            }
        };
        if let (Some(e), true) = (error, recorded) {
            *errors.entry(e.to_string()).or_insert(0) += 1;
        }
    }
    let window = started.elapsed();
    let cpu_ms_per_search = cpu_ms_per_call(&watch, &ticks, opts.requests);
    let classes = per_class
        .into_iter()
        .map(|(class, (latency, requests))| {
            let of_class: Vec<&Query> = queries.iter().filter(|q| q.class == class).collect();
            ClassReport {
                class: class.label().to_string(),
                queries: of_class.iter().map(|q| q.text.to_string()).collect(),
                mean_matches: of_class.iter().map(|q| q.matches as f64).sum::<f64>()
                    / of_class.len().max(1) as f64,
                requests,
                latency: latency.summary(),
            }
        })
        .collect();
    Ok(SearchReport {
        member_of: convs.len() as u64,
        messages_in_scope: scope.messages,
        requests: opts.requests,
        limit: opts.limit,
        per_sec: per_sec(opts.requests, window),
        latency: all.summary(),
        classes,
        errors,
        cpu_ms_per_search,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_proto::v1::Highlight;

    #[test]
    fn the_searcher_is_spread_over_the_conversations() {
        assert_eq!(searched_conversations(1000, 100)[..3], [0, 10, 20]);
        assert_eq!(searched_conversations(1000, 100).len(), 100);
        assert_eq!(searched_conversations(10, 100), (0..10).collect::<Vec<_>>());
        assert_eq!(searched_conversations(250, 100)[..4], [0, 2, 5, 7]);
    }

    #[test]
    fn answers_are_checked_against_the_generated_rows() {
        let corpus = Corpus::new(100);
        // 10 conversations of 100 rows: row g is conversation g / 100,
        // seq g % 100 + 1.
        let (rows, conversations) = (1_000, 10);
        let truth = Truth {
            corpus: &corpus,
            rows,
            conversations,
            member: [conversation_id(0), conversation_id(3)].into(),
            limit: 2,
        };
        // Seqs of conversations 0 and 3 whose text has "budget".
        let terms = search::terms("budget");
        let found: Vec<(u64, u64)> = [0u64, 3]
            .iter()
            .flat_map(|&c| (2..=100).map(move |seq| (c, seq)))
            .filter(|&(c, seq)| {
                let g = row_of(rows, conversations, c, seq).unwrap_or(u64::MAX);
                search::matches(
                    &corpus.body(corpus::pick(g, corpus.sentences.len())),
                    &terms,
                )
            })
            .collect();
        assert!(found.len() > 2, "{found:?}");
        let hit = |c: u64, seq: u64| SearchHit {
            conversation_id: conversation_id(c),
            seq,
            highlights: vec![Highlight { start: 0, end: 1 }],
            sent_at: Some(prost_types_timestamp(1_000_000 + seq as i64)),
            ..Default::default()
        };
        let q = Query {
            class: QueryClass::FrequentWord,
            text: "budget",
            terms,
            matches: found.len() as u64,
        };
        // Newest first: the highest seqs.
        let mut newest = found.clone();
        newest.sort_by_key(|&(c, seq)| std::cmp::Reverse((seq, c)));
        let page = |hits: Vec<SearchHit>, token: &str| SearchMessagesResponse {
            hits,
            next_page_token: token.into(),
        };
        let right: Vec<SearchHit> = newest[..2].iter().map(|&(c, s)| hit(c, s)).collect();
        assert_eq!(truth.wrong(&q, &page(right.clone(), "more")), None);
        assert_eq!(
            truth.wrong(&q, &page(right.clone(), "")),
            Some("wrong_count"),
            "there is more"
        );
        assert_eq!(
            truth.wrong(&q, &page(right[..1].to_vec(), "more")),
            Some("wrong_count")
        );
        let reversed: Vec<SearchHit> = right.iter().rev().cloned().collect();
        assert_eq!(
            truth.wrong(&q, &page(reversed, "more")),
            Some("out_of_order")
        );
        let three: Vec<SearchHit> = newest[..3].iter().map(|&(c, s)| hit(c, s)).collect();
        assert_eq!(truth.wrong(&q, &page(three, "more")), Some("too_many_hits"));
        let (c, s) = newest[0];
        let stranger = vec![hit(1, s)];
        assert_eq!(
            truth.wrong(&q, &page(stranger, "more")),
            Some("not_a_member")
        );
        let not_budget = (2..=100)
            .find(|&seq| !found.contains(&(c, seq)))
            .unwrap_or(2);
        let wrong = vec![hit(c, s), hit(c, not_budget)];
        assert_eq!(truth.wrong(&q, &page(wrong, "more")), Some("wrong_hit"));
        let creation = vec![hit(c, s), hit(c, 1)];
        assert_eq!(truth.wrong(&q, &page(creation, "more")), Some("wrong_hit"));
        let mut bare = right.clone();
        bare[1].highlights.clear();
        assert_eq!(truth.wrong(&q, &page(bare, "more")), Some("no_highlight"));
        // A query with nothing to find: an empty last page.
        let none = Query {
            class: QueryClass::NoMatch,
            text: "kubernetes",
            terms: search::terms("kubernetes"),
            matches: 0,
        };
        assert_eq!(truth.wrong(&none, &page(vec![], "")), None);
        assert_eq!(
            truth.wrong(&none, &page(right[..1].to_vec(), "")),
            Some("wrong_hit")
        );
    }

    fn prost_types_timestamp(ms: i64) -> confab_proto::prost_types::Timestamp {
        confab_proto::prost_types::Timestamp {
            seconds: ms / 1000,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }
    }
}
