//! Upgrades that keep every message (issue 21, part 4), from the previous
//! release (`tests/previous-release`: the commit before the newest schema
//! change), whose binaries `tests/previous-release.sh` builds and these
//! tests run as a user's earlier deployment would.
//!
//! - embedded mode: the previous `confab dev` writes a data directory (a
//!   group and a DIRECT conversation with replies, edits, a delete,
//!   reactions, a role, read positions); the new one opens it, migrating
//!   by itself, and shows every conversation, member, message and seq as
//!   they were, answers every stored `client_msg_id` with its original
//!   seq, goes on without a gap and finds old messages by search;
//! - distributed mode: the same over PostgreSQL written by the previous
//!   release's stack and migrated with `confab-history migrate`;
//! - a migration that fails (an object in the way) leaves either database
//!   as it was: the new release refuses to start, and the previous one
//!   opens the database again with everything in it;
//! - a rolling upgrade of the distributed stack under load (each history,
//!   router and gateway replaced in turn by the new binary while clients
//!   send, the chaos run's checker after it): nothing lost, repeated, out
//!   of order or left with a gap.

use confab_proto::v1::{Conversation, ConversationKind, Message, Role};
use confab_tests::release::previous_release;
use confab_tests::stack::{Backing, ProcStack};
use confab_tests::*;
use confab_tools::chaos::{self, Config};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Something in the way of the first migration the previous release does
/// not have (0011 adds this column, last: the columns it adds before must
/// go too).
const IN_THE_WAY: &str = "ALTER TABLE conversations ADD COLUMN member_list_no BIGINT";

/// The users of the conversations the previous release writes.
const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// What the previous release was asked to write.
struct Written {
    /// The conversations, by id.
    convs: Vec<String>,
    /// Every write acknowledged: (user, conversation, client_msg_id, seq).
    keys: Vec<(String, String, String, u64)>,
    /// A word only an old message holds, and that message's seq in the
    /// group.
    word: (&'static str, u64),
}

/// What the API shows of [`Written`]: each conversation with its members
/// and every message, and each user's inbox.
#[derive(Debug, PartialEq)]
struct Shown {
    convs: BTreeMap<String, (Conversation, Vec<Message>)>,
    inboxes: BTreeMap<String, Vec<Conversation>>,
}

/// Writes a little of everything through `addr`.
async fn populate(addr: std::net::SocketAddr) -> Written {
    let alice = User::connect(addr, "alice").await;
    let bob = User::connect(addr, "bob").await;
    let group = alice
        .group_when_ready("before the upgrade", &["bob", "carol"])
        .await;
    let direct = alice
        .create(ConversationKind::Direct, "", &["bob"])
        .await
        .expect("a DIRECT conversation");
    let mut keys = Vec::new();
    let mut acked = |user: &str, conv: &str, key: &str, m: Message| {
        keys.push((user.to_string(), conv.to_string(), key.to_string(), m.seq));
        m.seq
    };
    let mut first = 0;
    for i in 0..5 {
        let key = format!("a{i}");
        let m = alice
            .send_until_acked(&group.id, &key, &format!("hello {i}"))
            .await;
        first = if i == 0 { m.seq } else { first };
        acked("alice", &group.id, &key, m);
    }
    let m = bob
        .send_until_acked(&group.id, "b0", "zanzibar is where we meet")
        .await;
    let word = ("zanzibar", acked("bob", &group.id, "b0", m));
    let m = bob
        .reply(&group.id, "b1", "a reply", first)
        .await
        .expect("reply");
    acked("bob", &group.id, "b1", m);
    let m = alice
        .edit(&group.id, "e0", first + 1, "hello again, edited")
        .await
        .expect("edit");
    acked("alice", &group.id, "e0", m);
    let m = alice
        .delete(&group.id, "d0", first + 2)
        .await
        .expect("delete");
    acked("alice", &group.id, "d0", m);
    let m = bob
        .react(&group.id, "r0", first, "👍", false)
        .await
        .expect("react");
    acked("bob", &group.id, "r0", m);
    alice
        .set_role(&group.id, "carol", Role::Admin)
        .await
        .expect("make carol an admin");
    bob.mark_read(&group.id, first + 3, false)
        .await
        .expect("bob reads");
    for i in 0..3 {
        let key = format!("d{i}");
        let m = alice
            .send_until_acked(&direct.id, &key, &format!("direct {i}"))
            .await;
        acked("alice", &direct.id, &key, m);
    }
    Written {
        convs: vec![group.id, direct.id],
        keys,
        word,
    }
}

/// What `addr` shows of `written`.
async fn shown(addr: std::net::SocketAddr, written: &Written) -> Shown {
    let mut convs = BTreeMap::new();
    let alice = User::connect(addr, "alice").await;
    for id in &written.convs {
        let conv = alice.get_conversation(id).await.expect("the conversation");
        let messages = alice.all_messages(id).await.expect("its messages");
        convs.insert(id.clone(), (conv, messages));
    }
    let mut inboxes = BTreeMap::new();
    for user in USERS {
        let u = User::connect(addr, user).await;
        let listed = u.list().await.expect("the inbox");
        inboxes.insert(user.to_string(), listed.conversations);
    }
    Shown { convs, inboxes }
}

/// The new release at `addr` keeps `written` as `before` showed it: the
/// same conversations, members and messages; every stored
/// `client_msg_id` answered with its original seq; new messages go on
/// from the newest seq; an old message is found by search.
async fn assert_kept(addr: std::net::SocketAddr, written: &Written, before: &Shown) {
    let after = shown(addr, written).await;
    assert_eq!(&after, before, "what the new release shows");
    for (user, conv, key, seq) in &written.keys {
        let u = User::connect(addr, user).await;
        // The body does not matter to a retry: the key decides.
        let again = u.send(conv, key, "retried").await;
        match again {
            Ok(m) => assert_eq!(m.seq, *seq, "{user}'s {key} in {conv}"),
            // A retried edit, delete or reaction returns its event too;
            // a retried send with a key used for another kind of write
            // says so: either way nothing new is stored.
            Err(e) => assert_eq!(e.code(), tonic::Code::AlreadyExists, "{key}: {e:?}"),
        }
    }
    let alice = User::connect(addr, "alice").await;
    let group = &written.convs[0];
    let newest = before.convs[group].1.last().map_or(0, |m| m.seq);
    let next = alice
        .send(group, "after-upgrade", "after the upgrade")
        .await
        .expect("a send after the upgrade");
    assert_eq!(next.seq, newest + 1);
    let seqs = alice.all_seqs(group).await;
    assert_eq!(seqs, (1..=next.seq).collect::<Vec<_>>(), "no gap");
    let (word, seq) = written.word;
    let bob = User::connect(addr, "bob").await;
    let found = poll(
        "an old message found by search",
        DEADLINE,
        Duration::from_millis(50),
        || {
            let bob = bob.clone();
            async move {
                let page = bob.search(word, "", "", 10).await?;
                let hits: Vec<u64> = page.hits.iter().map(|h| h.seq).collect();
                Ok((!hits.is_empty()).then_some(hits))
            }
        },
    )
    .await
    .expect("search");
    assert_eq!(found, [seq]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_opens_what_the_previous_release_wrote() {
    let previous = previous_release();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut old = DevProcess::start_binary(&previous.join("confab"), dir.path(), port, &[], None)
        .expect("the previous release's confab dev");
    let written = populate(old.addr).await;
    let before = shown(old.addr, &written).await;
    old.stop().await;
    drop(old);
    let mut new = DevProcess::start(dir.path(), port).expect("this release's confab dev");
    assert_kept(new.addr, &written, &before).await;
    new.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_written_by_the_previous_release_is_migrated_by_confab_history_migrate() {
    let backing = Backing::start().await;
    let mut stack = ProcStack::builder("upgrade")
        .binaries(previous_release())
        .metrics()
        .start(&backing.broker, &backing.database_url);
    let gateway = stack.gateway_addr(0);
    let written = populate(gateway).await;
    let before = shown(gateway, &written).await;
    for (label, s) in stack.terminate(DEADLINE).await {
        assert!(s.status.is_some_and(|st| st.success()), "{label}: {s:?}");
    }
    migrate(&backing.database_url).expect("confab-history migrate");
    for service in stack.all_mut() {
        service.bin_dir = None;
    }
    tokio::task::block_in_place(|| stack.start_all());
    stack.wait_ready(DEADLINE * 3).await;
    assert_kept(stack.gateway_addr(0), &written, &before).await;
}

/// `confab-history migrate` of this release on `url`: Ok, or its output.
fn migrate(url: &str) -> Result<(), String> {
    let out = Command::new(confab_bin().with_file_name("confab-history"))
        .arg("migrate")
        .env("CONFAB_DATABASE_URL", url)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The schema and the migrations applied, as SQLite lists them.
async fn sqlite_schema(db: &Path) -> Vec<(String, String)> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("open the database");
    sqlx::query_as(
        "SELECT name, COALESCE(sql, '') FROM sqlite_master
         UNION ALL SELECT 'migration ' || version, description FROM _sqlx_migrations
         ORDER BY 1, 2",
    )
    .fetch_all(&mut conn)
    .await
    .expect("the schema")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_leaves_sqlite_as_it_was() {
    let previous = previous_release();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("confab.db");
    let port = free_port();
    let old_bin = previous.join("confab");
    let mut old = DevProcess::start_binary(&old_bin, dir.path(), port, &[], None)
        .expect("the previous release's confab dev");
    let written = populate(old.addr).await;
    let before = shown(old.addr, &written).await;
    old.stop().await;
    drop(old);
    let url = format!("sqlite://{}", db.display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("open the database");
    sqlx::query(IN_THE_WAY)
        .execute(&mut conn)
        .await
        .expect("something in the way");
    drop(conn);
    let schema = sqlite_schema(&db).await;
    let log = dir.path().join("new.log");
    let refused = DevProcess::refusal(dir.path(), &[], Some(&log))
        .expect("the new release refuses to start over a failed migration");
    assert!(!refused.success(), "it exits with an error: {refused}");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said.contains("migrat"), "its log says why: {said}");
    assert_eq!(sqlite_schema(&db).await, schema, "the schema as it was");
    // The previous release still opens it, with everything in it.
    let mut old = DevProcess::start_binary(&old_bin, dir.path(), port, &[], None)
        .expect("the previous release again");
    assert_eq!(shown(old.addr, &written).await, before);
    old.stop().await;
}

/// The schema (tables, columns, indexes) and the migrations applied, as
/// PostgreSQL lists them.
async fn postgres_schema(url: &str) -> Vec<(String, String)> {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .expect("connect");
    sqlx::query_as(
        "SELECT table_name::text, string_agg(column_name || ' ' || data_type, ', ' ORDER BY column_name)
           FROM information_schema.columns WHERE table_schema = 'public' GROUP BY table_name
         UNION ALL SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public'
         UNION ALL SELECT 'migration ' || version, description FROM _sqlx_migrations
         ORDER BY 1, 2",
    )
    .fetch_all(&mut conn)
    .await
    .expect("the schema")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_leaves_postgres_as_it_was() {
    let backing = Backing::start().await;
    let mut stack = ProcStack::builder("upgrade-fails")
        .binaries(previous_release())
        .start(&backing.broker, &backing.database_url);
    let written = populate(stack.gateway_addr(0)).await;
    let before = shown(stack.gateway_addr(0), &written).await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&backing.database_url)
        .await
        .expect("connect");
    sqlx::query(IN_THE_WAY)
        .execute(&mut conn)
        .await
        .expect("something in the way");
    drop(conn);
    let schema = postgres_schema(&backing.database_url).await;
    let refused = migrate(&backing.database_url).expect_err("a migration in the way fails");
    assert!(refused.contains("migrat"), "it says why: {refused}");
    assert_eq!(postgres_schema(&backing.database_url).await, schema);
    // The previous release's stack, still running, shows everything.
    assert_eq!(shown(stack.gateway_addr(0), &written).await, before);
    stack.terminate(DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_under_load_loses_and_repeats_nothing() {
    let report = chaos::run(Config {
        from_release: Some(previous_release()),
        faults: Config::rolling_upgrade(),
        ..Config::short()
    })
    .await;
    println!("{report}");
    assert!(
        report.acknowledged > 100,
        "too little traffic to judge:\n{report}"
    );
    assert_eq!(report.faults.len(), Config::rolling_upgrade().len());
    assert_eq!(report.violations(), 0, "\n{report}");
}
