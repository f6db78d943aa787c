//! `SearchMessages`, for every store: it finds exactly the live TEXT
//! messages a caller may read whose current body matches (English words,
//! and Chinese, Japanese and Korean text), edits and deletes change what
//! it finds at once, pages are stable, and bad queries are refused
//! precisely.

use super::changes::{delete, edit};
use super::reads::Lcg;
use super::{add, apply, create_group, record, remove, send};
use crate::queries::LocalHistory;
use crate::store::Store;
use confab_core::error::ChatError;
use confab_core::seams::HistoryApi;
use confab_core::search;
use confab_proto::internal::v1::{ingress_record::Command, CreateCommand};
use confab_proto::v1::{
    ConversationKind, HistoryVisibility, Message, MessageKind, SearchHit, SearchMessagesRequest,
    SearchMessagesResponse,
};
use std::collections::BTreeSet;
use std::sync::Arc;
use tonic::Code;

/// Real sentences in four languages, as people write them.
pub const SENTENCES: &[&str] = &[
    "The quarterly report is due on Friday, can you review it?",
    "Let's move the meeting to Tuesday morning.",
    "Kubernetes upgrade finished; the cluster looks healthy.",
    "Lunch at noon? The new ramen place near the office.",
    "我们明天在东京开会，别忘了带资料。",
    "服务器故障已经修复了，请大家确认一下。",
    "周末一起去北京看展览吧。",
    "明日の会議は東京駅の近くで行います。",
    "猫が好きなので、子猫を飼い始めました。",
    "資料は金曜日までに送ってください。",
    "내일 서울에서 회의가 있습니다.",
    "보고서를 금요일까지 확인해 주세요.",
    "서울역 근처에서 점심 먹을까요?",
];

/// Queries to try, in every language, including one-character CJK ones.
const QUERIES: &[&str] = &[
    "report",
    "meeting tuesday",
    "the",
    "Kubernetes",
    "东京",
    "开会",
    "北京",
    "東京駅",
    "会議",
    "猫",
    "서울",
    "회의",
    "금요일",
    "ramen 東京",
    "nothing-here",
];

fn searching(
    query: &str,
    conversation_id: &str,
    page_token: &str,
    limit: u32,
) -> SearchMessagesRequest {
    SearchMessagesRequest {
        query: query.into(),
        conversation_id: conversation_id.into(),
        page_token: page_token.into(),
        limit,
    }
}

/// Every hit of `caller`'s search, `limit` at a time, checking that pages
/// are newest first and never repeat a hit.
async fn all_hits(
    reader: &LocalHistory,
    caller: &str,
    query: &str,
    conv: &str,
    limit: u32,
) -> Vec<SearchHit> {
    let mut out: Vec<SearchHit> = Vec::new();
    let mut token = String::new();
    loop {
        let page: SearchMessagesResponse = reader
            .search_messages(caller, searching(query, conv, &token, limit))
            .await
            .unwrap_or_else(|e| panic!("search {query:?} for {caller}: {e:?}"));
        assert!(page.hits.len() <= limit as usize);
        out.extend(page.hits);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let keys: Vec<_> = out
        .iter()
        .map(|h| {
            let at = h
                .sent_at
                .as_ref()
                .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000));
            (at, h.conversation_id.clone(), h.seq)
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(keys, sorted, "{query:?}: newest first, each hit once");
    out
}

/// The (conversation, seq) of each hit, as a set.
fn found(hits: &[SearchHit]) -> BTreeSet<(String, u64)> {
    hits.iter()
        .map(|h| (h.conversation_id.clone(), h.seq))
        .collect()
}

/// What a search must find, brute force: the TEXT messages of `views`
/// (each conversation as `GetHistory` shows it) whose current body
/// matches.
fn expected(views: &[(&str, &Vec<Message>)], query: &str) -> BTreeSet<(String, u64)> {
    let terms = search::terms(query);
    let mut out = BTreeSet::new();
    for (conv, view) in views {
        for m in view.iter() {
            if m.kind == MessageKind::Text as i32
                && m.deleted.is_none()
                && search::matches(&m.body, &terms)
            {
                out.insert((conv.to_string(), m.seq));
            }
        }
    }
    out
}

/// Random sends of real sentences, edits and deletes in two groups, then
/// every query for each member, compared with a brute-force match over
/// what each reads with `GetHistory`; hits carry a marked snippet and a
/// rank, and paging in small pages finds the same set as one page.
pub async fn search_finds_what_each_member_may_read(store: Arc<dyn Store>) {
    let reader = LocalHistory::new(store.clone());
    apply(
        &store,
        vec![
            create_group("s1", "alice", &["alice", "bob"]),
            create_group("s2", "alice", &["alice", "carol"]),
        ],
    )
    .await;
    let mut rng = Lcg(7);
    let mut texts: Vec<(String, u64, String)> = Vec::new();
    for i in 0..80 {
        let conv = if rng.below(2) == 0 { "s1" } else { "s2" };
        let sender = "alice";
        let roll = rng.below(10);
        let mine: Vec<&(String, u64, String)> = texts.iter().filter(|t| t.0 == conv).collect();
        let rec = if roll < 7 || mine.is_empty() {
            let body = SENTENCES[rng.below(SENTENCES.len() as u64) as usize];
            send(conv, sender, &format!("m{i}"), body)
        } else if roll < 9 {
            let target = mine[rng.below(mine.len() as u64) as usize];
            let body = SENTENCES[rng.below(SENTENCES.len() as u64) as usize];
            edit(
                conv,
                sender,
                &format!("e{i}"),
                target.1,
                &format!("{body} (edited)"),
            )
        } else {
            let target = mine[rng.below(mine.len() as u64) as usize];
            delete(conv, sender, &format!("d{i}"), target.1)
        };
        let out = apply(&store, vec![rec]).await;
        if let Some(confab_proto::internal::v1::outcome_record::Result::Message(m)) = &out[0].result
        {
            if m.kind == MessageKind::Text as i32 {
                texts.push((conv.into(), m.seq, m.body.clone()));
            }
        }
    }
    let mut views = Vec::new();
    for conv in ["s1", "s2"] {
        views.push((
            conv,
            super::changes::history_of(&reader, "alice", conv).await,
        ));
    }
    let v = |which: &[&str]| -> Vec<(&str, &Vec<Message>)> {
        views
            .iter()
            .filter(|(c, _)| which.contains(c))
            .map(|(c, v)| (*c, v))
            .collect()
    };
    let mut total = 0;
    for query in QUERIES {
        for (caller, convs) in [
            ("alice", vec!["s1", "s2"]),
            ("bob", vec!["s1"]),
            ("carol", vec!["s2"]),
            ("dave", vec![]),
        ] {
            let want = expected(&v(&convs), query);
            let hits = all_hits(&reader, caller, query, "", 3).await;
            assert_eq!(found(&hits), want, "{caller} searching {query:?}");
            total += hits.len();
            let one_page = all_hits(&reader, caller, query, "", 100).await;
            assert_eq!(found(&one_page), want, "{caller}: {query:?} in one page");
            for hit in &hits {
                assert!(hit.rank > 0.0 && hit.rank <= 1.0, "{hit:?}");
                assert!(
                    !hit.highlights.is_empty(),
                    "{query:?} marks a match: {hit:?}"
                );
                let chars: Vec<char> = hit.snippet.chars().collect();
                for h in &hit.highlights {
                    assert!(h.start < h.end && h.end as usize <= chars.len(), "{hit:?}");
                }
                assert_eq!(hit.sender_id, "alice");
            }
        }
        // One conversation only.
        let want = expected(&v(&["s2"]), query);
        assert_eq!(
            found(&all_hits(&reader, "alice", query, "s2", 4).await),
            want
        );
    }
    assert!(total > 100, "the mix finds little: {total} hits");

    // A CJK hit's snippet marks what was asked for.
    let hits = all_hits(&reader, "alice", "東京駅", "", 100).await;
    let hit = hits.first().expect("東京駅 is in the mix");
    let h = &hit.highlights[0];
    let marked: String = hit
        .snippet
        .chars()
        .skip(h.start as usize)
        .take((h.end - h.start) as usize)
        .collect();
    assert_eq!(marked, "東京駅");
}

/// Edits change what is found and deletes remove it, at once; leaving a
/// group, or a SINCE_JOINED group's earlier history, takes messages out of
/// reach.
pub async fn search_follows_edits_deletes_and_membership(store: Arc<dyn Store>) {
    let reader = LocalHistory::new(store.clone());
    apply(&store, vec![create_group("f", "alice", &["alice", "bob"])]).await;
    apply(
        &store,
        vec![
            send("f", "alice", "m1", "the invoice is attached"),
            send("f", "alice", "m2", "東京で会いましょう"),
        ],
    )
    .await;
    let seqs = |hits: Vec<SearchHit>| hits.iter().map(|h| h.seq).collect::<Vec<_>>();
    assert_eq!(seqs(all_hits(&reader, "bob", "invoice", "", 10).await), [2]);
    apply(
        &store,
        vec![edit("f", "alice", "e1", 2, "the receipt is attached")],
    )
    .await;
    assert!(
        all_hits(&reader, "bob", "invoice", "", 10).await.is_empty(),
        "edited away"
    );
    assert_eq!(seqs(all_hits(&reader, "bob", "receipt", "", 10).await), [2]);
    apply(&store, vec![delete("f", "alice", "d1", 3)]).await;
    assert!(
        all_hits(&reader, "bob", "東京", "", 10).await.is_empty(),
        "deleted"
    );
    apply(&store, vec![remove("f", "bob", "bob")]).await;
    assert!(
        all_hits(&reader, "bob", "receipt", "", 10).await.is_empty(),
        "bob left"
    );
    assert_eq!(
        seqs(all_hits(&reader, "alice", "receipt", "", 10).await),
        [2]
    );

    // SINCE_JOINED: carol finds only what was sent while she is a member.
    apply(
        &store,
        vec![record(
            "j",
            "alice",
            Command::Create(CreateCommand {
                kind: ConversationKind::Group as i32,
                title: "t".into(),
                member_ids: vec!["alice".into()],
                history_visibility: HistoryVisibility::SinceJoined as i32,
            }),
        )],
    )
    .await;
    let out = apply(&store, vec![send("j", "alice", "j1", "budget draft one")]).await;
    let one = super::seq_of(&out[0]);
    apply(&store, vec![add("j", "alice", &["carol"])]).await;
    let out = apply(&store, vec![send("j", "alice", "j2", "budget draft two")]).await;
    let two = super::seq_of(&out[0]);
    assert_eq!(
        seqs(all_hits(&reader, "carol", "budget", "", 10).await),
        [two]
    );
    assert_eq!(all_hits(&reader, "alice", "budget", "", 10).await.len(), 2);

    // Stable paging: a message sent between pages goes before the first
    // page, so the rest of the pages are unchanged.
    let first = reader
        .search_messages("alice", searching("budget", "", "", 1))
        .await
        .expect("page 1");
    apply(&store, vec![send("j", "alice", "j3", "budget draft three")]).await;
    let second = reader
        .search_messages("alice", searching("budget", "", &first.next_page_token, 1))
        .await
        .expect("page 2");
    assert_eq!(first.hits[0].seq, two);
    assert_eq!(second.hits.len(), 1);
    assert_eq!(second.hits[0].seq, one);
    assert!(second.next_page_token.is_empty());
}

/// Empty, too long, wordless and foreign-token queries, and someone
/// else's conversation, each get a precise refusal.
pub async fn bad_searches_are_refused_precisely(store: Arc<dyn Store>) {
    let reader = LocalHistory::new(store.clone());
    apply(&store, vec![create_group("b", "alice", &["alice"])]).await;
    apply(&store, vec![send("b", "alice", "m1", "hello there")]).await;
    let refused = |r: Result<SearchMessagesResponse, ChatError>| match r {
        Err(e) => {
            let status = tonic::Status::from(e);
            (status.code(), status.message().to_string())
        }
        Ok(ok) => panic!("accepted: {ok:?}"),
    };
    let search = |caller: &'static str, req: SearchMessagesRequest| {
        let reader = reader.clone();
        async move { reader.search_messages(caller, req).await }
    };
    let (code, msg) = refused(search("alice", searching("", "", "", 0)).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("query is required"), "{msg}");
    let (code, msg) = refused(search("alice", searching(&"a".repeat(257), "", "", 0)).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("the limit is 256"), "{msg}");
    let (code, msg) = refused(search("alice", searching("?! 👍", "", "", 0)).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("no words to find"), "{msg}");
    let (code, msg) = refused(search("alice", searching("hello", "", "garbage", 0)).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("page_token"), "{msg}");
    let (code, _) = refused(search("bob", searching("hello", "b", "", 0)).await);
    assert_eq!(code, Code::PermissionDenied);
    let (code, _) = refused(search("alice", searching("hello", "nope", "", 0)).await);
    assert_eq!(code, Code::NotFound);
    // Another query's token is not this one's.
    let page = search("alice", searching("hello", "", "", 1))
        .await
        .expect("hello");
    assert_eq!(page.hits.len(), 1);
    apply(&store, vec![send("b", "alice", "m2", "hello again")]).await;
    let page = search("alice", searching("hello", "", "", 1))
        .await
        .expect("hello");
    let (code, msg) =
        refused(search("alice", searching("there", "", &page.next_page_token, 1)).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("another search"), "{msg}");
}

/// With search off (`CONFAB_SEARCH_INDEX=off`), messages are stored without
/// their words and `SearchMessages` is FAILED_PRECONDITION; on again, every
/// message is found as it is now, including those sent, edited or deleted
/// while it was off. `open(on)` opens the same database each time.
pub async fn search_turned_off_and_on_again_finds_everything<F, Fut>(open: F)
where
    F: Fn(bool) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    let store = open(true).await;
    apply(&store, vec![create_group("o", "alice", &["alice"])]).await;
    apply(
        &store,
        vec![
            send("o", "alice", "m1", "alpha stays"),
            send("o", "alice", "m2", "beta changes"),
        ],
    )
    .await;
    drop(store);

    let store = open(false).await;
    let reader = LocalHistory::new(store.clone());
    match reader
        .search_messages("alice", searching("alpha", "", "", 0))
        .await
    {
        Err(ChatError::FailedPrecondition(m)) => {
            assert!(m.contains("CONFAB_SEARCH_INDEX=off"), "{m}")
        }
        other => panic!("search while off: {other:?}"),
    }
    apply(
        &store,
        vec![
            send("o", "alice", "m3", "gamma while off"),
            edit("o", "alice", "e1", 3, "delta now"),
            delete("o", "alice", "d1", 2),
        ],
    )
    .await;
    drop((reader, store));

    let store = open(true).await;
    let reader = LocalHistory::new(store.clone());
    for (query, want) in [
        ("alpha", vec![]),
        ("beta", vec![]),
        ("delta", vec![3]),
        ("gamma", vec![4]),
    ] {
        let hits = all_hits(&reader, "alice", query, "", 10).await;
        let seqs: Vec<u64> = hits.iter().map(|h| h.seq).collect();
        assert_eq!(seqs, want, "{query:?} after search is on again");
    }
}
