//! Disks that fill (issue 21, part 3): embedded mode's data directory, and
//! distributed history's PostgreSQL tables, on a small filesystem that
//! fills up under load. Sends are refused with RESOURCE_EXHAUSTED saying
//! the store is out of disk space (not UNAVAILABLE at their deadline), reads
//! keep working, nothing acknowledged is lost or changed, nothing refused
//! was stored, and writes are taken again by themselves once space is
//! freed. One body, [`fills_and_frees`], runs against both stores.

use confab_tests::cluster::{Cluster, Shape};
use confab_tests::postgres::PgCluster;
use confab_tests::small_fs::SmallFs;
use confab_tests::*;
use std::collections::{BTreeMap, HashMap};

/// The small filesystem: room for the empty store and a first history.
const FS_BYTES: u64 = 24 << 20;
/// What the filler leaves free: filled by a few dozen batches.
const HEADROOM: u64 = 384 << 10;
/// Concurrent senders while the disk fills.
const WRITERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_refuses_writes_while_its_disk_is_full_and_takes_them_once_freed() {
    let fs = SmallFs::mount(FS_BYTES).unwrap_or_else(|e| panic!("{e:#}"));
    let data = fs.dir("data");
    let mut server = DevProcess::start(&data, free_port()).expect("confab dev");
    let alice = User::connect(server.addr, "alice").await;
    fills_and_frees(&alice, &fs).await;
    // The database file itself is sound after the failed writes.
    server.stop().await;
    let url = format!("sqlite://{}?mode=ro", data.join("confab.db").display());
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("open the database");
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut db)
        .await
        .expect("integrity check");
    assert_eq!(check, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_history_refuses_writes_while_postgres_is_full_and_takes_them_once_freed() {
    let fs = SmallFs::mount(FS_BYTES).unwrap_or_else(|e| panic!("{e:#}"));
    // A cluster of the test's own: the tablespace is a directory of this
    // machine that the server must own.
    let pg = PgCluster::start_local().expect("postgres");
    let url = pg
        .fresh_database_in(&fs.dir("pg"))
        .await
        .expect("a database whose tables live on the small filesystem");
    let cluster = Cluster::start_on(Shape::default(), pg, url).await;
    let alice = cluster.user(0, "alice").await;
    fills_and_frees(&alice, &fs).await;
    cluster.stop().await;
}

/// The body of `i`th message of a writer: a kilobyte that does not
/// compress, so every message takes room.
fn body(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:016x}", x)
        })
        .collect()
}

/// The number a writer's key `w<writer>-<i>` ends in.
fn number(key: &str) -> u64 {
    key.rsplit('-')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a writer's key"))
}

/// Fills `fs` while `alice` sends to a new conversation, checks what the
/// senders and readers see, frees the space and checks that writes are
/// taken again.
async fn fills_and_frees(alice: &User, fs: &SmallFs) {
    let conv = alice.group("filling up", &["bob"]).await;
    fs.fill_leaving(HEADROOM).expect("fill the filesystem");
    // Senders go on until the store refuses them.
    let writers = Writers::sending(alice, &conv.id, WRITERS, body);
    let (acked, refused) = tokio::time::timeout(DEADLINE * 3, writers.stopped())
        .await
        .expect("the disk filled up: every writer was refused within a minute");
    assert!(!acked.is_empty(), "some sends were stored before it filled");
    assert_eq!(refused.len(), WRITERS);
    for (key, status) in &refused {
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "{key} was refused with {status:?}"
        );
        assert!(
            status.message().contains("out of disk space")
                && status.message().contains("same client_msg_id"),
            "{key}: {}",
            status.message()
        );
    }
    // Reads keep working, and every acknowledged message is there as sent.
    let stored = alice
        .all_messages(&conv.id)
        .await
        .expect("history while full");
    assert_stored(&stored, &acked);
    alice.list().await.expect("the inbox while full");

    fs.free().expect("free the space");
    // Writes are taken again by themselves: each refused send, retried
    // with its key, is stored now and was not before (it gets a new seq).
    let newest = stored.last().map_or(0, |m| m.seq);
    let mut retried = Vec::new();
    for (key, _) in &refused {
        let m = alice
            .send(&conv.id, key, &body(number(key)))
            .await
            .unwrap_or_else(|e| panic!("{key} once space is free: {e:?}"));
        assert!(m.seq > newest, "{key} was stored although refused");
        retried.push((key.clone(), m.seq));
    }
    let all: Vec<(String, u64)> = acked.iter().chain(&retried).cloned().collect();
    let stored = alice.all_messages(&conv.id).await.expect("history");
    assert_stored(&stored, &all);
    // A retry of an acknowledged send still returns the original.
    let (key, seq) = &acked[acked.len() / 2];
    let replayed = alice
        .send(&conv.id, key, &body(number(key)))
        .await
        .expect("retry");
    assert_eq!(replayed.seq, *seq);
}

/// `stored` (all of the conversation, oldest first) is gap-free, and holds
/// each of `sent` at its seq with the body it was sent with.
fn assert_stored(stored: &[confab_proto::v1::Message], sent: &[(String, u64)]) {
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_acked_stored(sent, &seqs);
    let by_seq: HashMap<u64, &confab_proto::v1::Message> =
        stored.iter().map(|m| (m.seq, m)).collect();
    let keys: BTreeMap<&str, u64> = sent.iter().map(|(k, s)| (k.as_str(), *s)).collect();
    assert_eq!(keys.len(), sent.len(), "each key acknowledged once");
    for (key, seq) in sent {
        let m = by_seq[seq];
        assert_eq!(
            (m.client_msg_id.as_str(), m.body.as_str()),
            (key.as_str(), body(number(key)).as_str()),
            "seq {seq}"
        );
    }
}
