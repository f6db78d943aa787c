//! `ListConversations` for the reader of [`super::reads::generate`]'s table
//! (a user in every generated conversation): the first page of 50, with
//! every conversation far behind as generated, or with each set `unread`
//! messages behind. A count is two counters (docs/architecture.md), so the
//! page should cost the same either way. And `Sync` for the same reader
//! from a cursor that many changes are behind ([`measure_sync`]).

use super::reads::{bearer, gateway_client};
use super::{clock_ticks_per_sec, cpu_ticks, per_sec, server_cpu_ticks, Latency, Recorder};
use anyhow::{ensure, Context, Result};
use confab_proto::v1::{ListConversationsRequest, SendMessageRequest, SyncRequest};
use futures::StreamExt as _;
use serde::Serialize;
use sqlx::{Connection as _, PgConnection};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Conversations per page.
pub const PAGE: u32 = 50;
/// Unrecorded calls before the clock starts.
const WARMUP: u64 = 50;

/// What to measure.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct InboxOpts {
    /// A gateway serving the generated database.
    pub gateway: SocketAddr,
    /// The gateway's `CONFAB_JWT_SECRET`.
    pub secret: String,
    /// The reader of the generated data.
    pub reader: String,
    /// The generated database, where `unread` is set.
    pub database_url: String,
    /// The generated conversations (a page holds 50 of them, or all).
    pub conversations: u64,
    /// Sets the reader's position in every conversation this many
    /// messages before its newest; `None`: as generated (it has read only
    /// the creation).
    pub unread: Option<u64>,
    /// Recorded calls, one at a time.
    pub requests: u64,
}

/// What [`measure`] saw.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct InboxReport {
    /// The fewest unread messages of a conversation on the pages read.
    pub min_unread: u64,
    /// Calls recorded.
    pub requests: u64,
    /// Conversations per page.
    pub page: u32,
    /// Calls per second.
    pub per_sec: f64,
    /// Latency of the calls that returned OK.
    pub latency: Latency,
    /// Failed calls by gRPC code, and `wrong_page` (not a full page, or a
    /// count that is not what the reader's position leaves).
    pub errors: BTreeMap<String, u64>,
}

/// Sets the positions (see [`InboxOpts::unread`]), then reads the first page
/// `requests` times after a warm-up, checking every count.
pub async fn measure(opts: &InboxOpts) -> Result<InboxReport> {
    if let Some(unread) = opts.unread {
        let mut conn = PgConnection::connect(&opts.database_url)
            .await
            .context("connect to the generated database")?;
        // Seq 1, the creation, is each conversation's one SYSTEM event.
        sqlx::query(
            "UPDATE members AS m
             SET read_seq = GREATEST(1, c.last_seq - $2), read_system = 1
             FROM conversations AS c
             WHERE c.id = m.conversation_id AND m.user_id = $1",
        )
        .bind(&opts.reader)
        .bind(unread as i64)
        .execute(&mut conn)
        .await
        .context("set the reader's positions")?;
    }
    let bearer = bearer(&opts.secret, &opts.reader)?;
    let mut client = gateway_client(opts.gateway).await?;
    let mut latency = Recorder::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut min_unread = u64::MAX;
    let mut started = Instant::now();
    for i in 0..WARMUP + opts.requests {
        if i == WARMUP {
            started = Instant::now();
        }
        let mut req = tonic::Request::new(ListConversationsRequest {
            page_token: String::new(),
            limit: PAGE,
        });
        req.metadata_mut().insert("authorization", bearer.clone());
        let at = Instant::now();
        let got = client.list_conversations(req).await;
        let took = at.elapsed();
        let error = match got {
            Err(status) => Some(format!("{:?}", status.code())),
            Ok(resp) => {
                let page = resp.into_inner().conversations;
                let full = u64::from(PAGE).min(opts.conversations) as usize;
                let right = page.len() == full
                    && page.iter().all(|c| {
                        let behind = c.last_seq.saturating_sub(1);
                        let expected = opts.unread.map_or(behind, |u| u.min(behind));
                        c.unread_count == expected
                    });
                min_unread = page
                    .iter()
                    .map(|c| c.unread_count)
                    .fold(min_unread, u64::min);
                if i >= WARMUP {
                    latency.record(took);
                }
                (!right).then(|| "wrong_page".to_string())
            }
        };
        if let (Some(e), true) = (error, i >= WARMUP) {
            *errors.entry(e).or_insert(0) += 1;
        }
    }
    ensure!(min_unread != u64::MAX, "no page was read");
    Ok(InboxReport {
        min_unread,
        requests: opts.requests,
        page: PAGE,
        per_sec: per_sec(opts.requests, started.elapsed()),
        latency: latency.summary(),
        errors,
    })
}

/// What [`measure_sync`] measures.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SyncOpts {
    /// A gateway serving the generated database.
    pub gateway: SocketAddr,
    /// The gateway's `CONFAB_JWT_SECRET`.
    pub secret: String,
    /// The reader of the generated data (a member of every conversation).
    pub reader: String,
    /// Conversations changed after the cursor, one message each (at most
    /// the reader's conversations).
    pub changes: u64,
    /// Recorded syncs from that cursor, one at a time.
    pub requests: u64,
    /// Processes whose CPU time per recorded sync is reported, by label
    /// (a label's processes summed: PostgreSQL's backends).
    pub watch: Vec<(String, Watched)>,
}

/// What [`measure_sync`] saw.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SyncReport {
    /// Conversations changed after the cursor (each one a message).
    pub changes: u64,
    /// Pages a sync from the cursor took (`limit` 1000).
    pub pages: u64,
    /// Syncs recorded.
    pub requests: u64,
    /// Syncs per second.
    pub per_sec: f64,
    /// Latency of a whole sync from the cursor, every page.
    pub latency: Latency,
    /// Failed syncs by gRPC code, and `wrong_changes` (a sync that did not
    /// report exactly the changed conversations).
    pub errors: BTreeMap<String, u64>,
    /// CPU time per recorded sync (ms) of each watched process, and of
    /// this client (`bench client`), in `watch` order.
    #[serde(default)]
    pub cpu_ms_per_sync: Vec<(String, f64)>,
}

/// Processes whose CPU time a part reports under one label.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub enum Watched {
    /// These processes together.
    Processes(Vec<u32>),
    /// A server whose processes are all children of this one (PostgreSQL's
    /// postmaster), with the backends that start and exit during the run
    /// (see [`server_cpu_ticks`]).
    Server(u32),
}

impl Watched {
    /// The CPU ticks used so far.
    fn ticks(&self) -> u64 {
        match self {
            Watched::Processes(pids) => pids.iter().filter_map(|p| cpu_ticks(*p)).sum(),
            Watched::Server(root) => server_cpu_ticks(*root).unwrap_or(0),
        }
    }
}

/// The CPU ticks of each of `watch`'s labels now, for [`cpu_ms_per_call`].
pub(super) fn ticks_now(watch: &[(String, Watched)]) -> Vec<u64> {
    watch.iter().map(|(_, w)| w.ticks()).collect()
}

/// CPU milliseconds per call of each of `watch`'s labels since `before`
/// ([`ticks_now`]), over `calls` calls.
pub(super) fn cpu_ms_per_call(
    watch: &[(String, Watched)],
    before: &[u64],
    calls: u64,
) -> Vec<(String, f64)> {
    let per_tick_ms = 1000.0 / clock_ticks_per_sec() as f64;
    watch
        .iter()
        .zip(before)
        .map(|((label, watched), before)| {
            let used = watched.ticks().saturating_sub(*before) as f64 * per_tick_ms;
            (label.clone(), used / calls.max(1) as f64)
        })
        .collect()
}

/// Page a sync asks for: the largest, so 1,000 changes come in one answer.
const SYNC_PAGE: u32 = confab_core::validate::MAX_SYNC_PAGE;

/// The reader syncs (keeping the cursor), sends one message in each of
/// `changes` of its conversations, then syncs from that cursor `requests`
/// times after a warm-up, every page each time, checking that exactly the
/// changed conversations come back.
pub async fn measure_sync(opts: &SyncOpts) -> Result<SyncReport> {
    let bearer = bearer(&opts.secret, &opts.reader)?;
    let client = gateway_client(opts.gateway).await?;
    let sync = |cursor: String| {
        let (mut client, bearer) = (client.clone(), bearer.clone());
        async move {
            let mut req = tonic::Request::new(SyncRequest {
                cursor,
                limit: SYNC_PAGE,
            });
            req.metadata_mut().insert("authorization", bearer);
            client.sync(req).await.map(|r| r.into_inner())
        }
    };
    // Every page of a sync from `cursor`: the ids reported, the pages, and
    // the cursor after it.
    let full = |cursor: String| {
        let sync = &sync;
        async move {
            let (mut ids, mut pages, mut cursor) = (Vec::new(), 0u64, cursor);
            loop {
                let page = sync(cursor).await?;
                pages += 1;
                ids.extend(page.conversations.into_iter().map(|c| c.id));
                cursor = page.cursor;
                if !page.has_more {
                    return Ok::<_, tonic::Status>((ids, pages, cursor));
                }
            }
        }
    };
    let (all, _, cursor) = full(String::new()).await.context("the first sync")?;
    let changed: Vec<String> = all.into_iter().take(opts.changes as usize).collect();
    ensure!(!changed.is_empty(), "the reader has no conversations");
    // One message in each, 16 at a time.
    let mut sends = futures::stream::iter(changed.iter().enumerate().map(|(i, id)| {
        let (mut client, bearer) = (client.clone(), bearer.clone());
        async move {
            let mut req = tonic::Request::new(SendMessageRequest {
                reply_to_seq: 0,
                conversation_id: id.clone(),
                client_msg_id: format!("sync-bench-{i}"),
                body: "changed".into(),
            });
            req.metadata_mut().insert("authorization", bearer);
            client.send_message(req).await
        }
    }))
    .buffer_unordered(16);
    while let Some(sent) = sends.next().await {
        sent.context("a change before the measured syncs")?;
    }
    let mut expected = changed.clone();
    expected.sort();
    let mut latency = Recorder::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut pages = 0;
    let mut started = Instant::now();
    let mut watch = opts.watch.clone();
    watch.push((
        "bench client".into(),
        Watched::Processes(vec![std::process::id()]),
    ));
    let mut ticks: Vec<u64> = Vec::new();
    for i in 0..WARMUP + opts.requests {
        if i == WARMUP {
            started = Instant::now();
            ticks = ticks_now(&watch);
        }
        let at = Instant::now();
        let got = full(cursor.clone()).await;
        let took = at.elapsed();
        let error = match got {
            Err(status) => Some(format!("{:?}", status.code())),
            Ok((ids, n, _)) => {
                pages = n;
                if i >= WARMUP {
                    latency.record(took);
                }
                (ids != expected).then(|| "wrong_changes".to_string())
            }
        };
        if let (Some(e), true) = (error, i >= WARMUP) {
            *errors.entry(e).or_insert(0) += 1;
        }
    }
    let cpu_ms_per_sync = cpu_ms_per_call(&watch, &ticks, opts.requests);
    Ok(SyncReport {
        cpu_ms_per_sync,
        changes: changed.len() as u64,
        pages,
        requests: opts.requests,
        per_sec: per_sec(opts.requests, started.elapsed()),
        latency: latency.summary(),
        errors,
    })
}
