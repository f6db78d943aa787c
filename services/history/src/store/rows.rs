//! Rows as both stores keep them (the same tables in PostgreSQL and SQLite,
//! see `migrations/`), decoded once into the API's types.

use super::decide::reads::{Position, ReadFacts};
use super::{timestamp, ConversationPage, ListAfter, StoreError};
use confab_proto::internal::v1::PresenceUpdate;
use confab_proto::prost::Message as _;
use confab_proto::v1::{Conversation, MemberRead, MembershipEvent, Message, Tombstone};
use std::sync::LazyLock;

/// A row of `messages`.
#[derive(sqlx::FromRow)]
pub struct MessageRow {
    conversation_id: String,
    seq: i64,
    sender_id: String,
    client_msg_id: String,
    kind: i32,
    body: String,
    /// An encoded `MembershipEvent`, for SYSTEM messages.
    membership: Option<Vec<u8>>,
    created_at_ms: i64,
    reply_to_seq: i64,
    target_seq: i64,
    emoji: String,
    reaction_removed: i32,
    edit_count: i64,
    edited_at_ms: i64,
    deleted_by: String,
    deleted_at_ms: i64,
    /// Rows in `reactions` for this message (they are read apart).
    reaction_count: i64,
}

/// The columns of [`MessageRow`], in order.
pub const MESSAGE_COLUMNS: &str = "conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms, \
     reply_to_seq, target_seq, emoji, reaction_removed, edit_count, edited_at_ms, deleted_by, deleted_at_ms, reaction_count";

impl MessageRow {
    /// Whether members reacted to it (see [`MessagePage::reacted`](super::MessagePage)).
    pub fn reacted(&self) -> bool {
        self.reaction_count > 0
    }
}

impl TryFrom<MessageRow> for Message {
    type Error = StoreError;

    fn try_from(row: MessageRow) -> Result<Self, StoreError> {
        let membership = row
            .membership
            .map(|b| MembershipEvent::decode(b.as_slice()))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("membership event: {e}")))?;
        Ok(Message {
            conversation_id: row.conversation_id,
            seq: seq_from(row.seq)?,
            sender_id: row.sender_id,
            client_msg_id: row.client_msg_id,
            body: row.body,
            created_at: Some(timestamp(row.created_at_ms)),
            kind: row.kind,
            membership,
            reply_to_seq: seq_from(row.reply_to_seq)?,
            target_seq: seq_from(row.target_seq)?,
            emoji: row.emoji,
            reaction_removed: row.reaction_removed != 0,
            ..changed_state(
                row.edit_count,
                row.edited_at_ms,
                row.deleted_by,
                row.deleted_at_ms,
            )?
        })
    }
}

/// The edit and delete state of a TEXT message as its row keeps it (or a
/// conversation's row, for its newest TEXT message).
fn changed_state(
    edit_count: i64,
    edited_at_ms: i64,
    deleted_by: String,
    deleted_at_ms: i64,
) -> Result<Message, StoreError> {
    Ok(Message {
        edit_count: u32::try_from(edit_count)
            .map_err(|_| StoreError::Corrupt(format!("edit count {edit_count}")))?,
        edited_at: (edit_count > 0).then(|| timestamp(edited_at_ms)),
        deleted: (deleted_at_ms != 0).then(|| Tombstone {
            deleted_by,
            deleted_at: Some(timestamp(deleted_at_ms)),
        }),
        ..Message::default()
    })
}

/// A conversation's newest TEXT message as its row keeps it (migration
/// 0006: written with `last_seq` by each run of sends; 0007: its edits and
/// deletion).
pub struct LastTextRow {
    last_text_seq: i64,
    last_text_sender: String,
    last_text_client_msg_id: String,
    last_text_body: String,
    last_text_at_ms: i64,
    last_text_edit_count: i64,
    last_text_edited_at_ms: i64,
    last_text_deleted_by: String,
    last_text_deleted_at_ms: i64,
}

/// The columns of [`LastTextRow`], for a statement on `conversations`
/// aliased `alias`.
pub fn last_text_columns(alias: &str) -> String {
    LAST_TEXT_COLUMNS.map(|c| format!("{alias}.{c}")).join(", ")
}

/// The columns of [`LastTextRow`].
const LAST_TEXT_COLUMNS: [&str; 9] = [
    "last_text_seq",
    "last_text_sender",
    "last_text_client_msg_id",
    "last_text_body",
    "last_text_at_ms",
    "last_text_edit_count",
    "last_text_edited_at_ms",
    "last_text_deleted_by",
    "last_text_deleted_at_ms",
];

impl LastTextRow {
    /// The message, if conversation `conversation_id` has a TEXT message.
    pub fn message(self, conversation_id: &str) -> Result<Option<Message>, StoreError> {
        if self.last_text_seq == 0 {
            return Ok(None);
        }
        Ok(Some(Message {
            conversation_id: conversation_id.to_string(),
            seq: seq_from(self.last_text_seq)?,
            sender_id: self.last_text_sender,
            client_msg_id: self.last_text_client_msg_id,
            body: self.last_text_body,
            created_at: Some(timestamp(self.last_text_at_ms)),
            kind: confab_proto::v1::MessageKind::Text as i32,
            ..changed_state(
                self.last_text_edit_count,
                self.last_text_edited_at_ms,
                self.last_text_deleted_by,
                self.last_text_deleted_at_ms,
            )?
        }))
    }
}

/// A row of `conversations`, and for listings one of its members.
#[derive(sqlx::FromRow)]
pub struct ConversationRow {
    id: String,
    kind: i32,
    title: String,
    last_seq: i64,
    created_at_ms: i64,
    history_visibility: i32,
}

impl ConversationRow {
    /// The conversation with `member_ids`.
    pub fn with_members(self, members: Vec<MemberRead>) -> Result<Conversation, StoreError> {
        Ok(Conversation {
            id: self.id,
            kind: self.kind,
            title: self.title,
            member_ids: members.iter().map(|m| m.user_id.clone()).collect(),
            member_reads: members,
            history_visibility: self.history_visibility,
            last_seq: seq_from(self.last_seq)?,
            created_at: Some(timestamp(self.created_at_ms)),
            ..Conversation::default()
        })
    }
}

/// A conversation of the lister's page, with the lister's read position:
/// the first kind of row of a [`Listing`] query.
pub struct ListedConversation {
    conversation: ConversationRow,
    last_text: LastTextRow,
    /// Whether the lister may read it (see [`visible`]).
    last_text_visible: bool,
    last_activity_ms: i64,
    read_seq: i64,
    unread_count: i64,
    /// Its members (see [`member_reads`]).
    members: Option<String>,
}

/// The columns of a [`Listing`] query's rows, in order: a conversation's,
/// then its newest TEXT message's ([`LAST_TEXT_COLUMNS`]), then the
/// lister's ([`LISTER_COLUMNS`]), then its members (see [`member_reads`]).
const CONVERSATION_COLUMNS: [&str; 7] = [
    "id",
    "kind",
    "title",
    "last_seq",
    "created_at_ms",
    "history_visibility",
    "last_activity_ms",
];

/// See [`CONVERSATION_COLUMNS`].
const LISTER_COLUMNS: [&str; 3] = ["last_text_visible", "read_seq", "unread_count"];

/// A row's columns read by position, in the order its statement selects
/// them. A listing reads a thousand rows, and finding each column by its
/// name (a hash and a compare of the name, per column and row) was a tenth
/// of history's CPU in a `Sync`. Each read still names its column: debug
/// builds (every test) check that the name is the one at that position, so
/// the decoder cannot drift from the statement's column list.
struct Columns<'r, R> {
    row: &'r R,
    at: usize,
}

impl<'r, R> Columns<'r, R>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
{
    /// `row`'s columns from the first.
    fn of(row: &'r R) -> Self {
        Self { row, at: 0 }
    }

    /// The next column, which the statement names `name`.
    fn next<T>(&mut self, name: &str) -> Result<T, sqlx::Error>
    where
        T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let at = self.at;
        self.at += 1;
        debug_assert_eq!(
            self.row.columns().get(at).map(sqlx::Column::name),
            Some(name),
            "column {at}"
        );
        self.row.try_get(at)
    }
}

impl<'r, R> sqlx::FromRow<'r, R> for ListedConversation
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let mut c = Columns::of(row);
        Ok(ListedConversation {
            conversation: ConversationRow {
                id: c.next("id")?,
                kind: c.next("kind")?,
                title: c.next("title")?,
                last_seq: c.next("last_seq")?,
                created_at_ms: c.next("created_at_ms")?,
                history_visibility: c.next("history_visibility")?,
            },
            last_activity_ms: c.next("last_activity_ms")?,
            last_text: LastTextRow {
                last_text_seq: c.next("last_text_seq")?,
                last_text_sender: c.next("last_text_sender")?,
                last_text_client_msg_id: c.next("last_text_client_msg_id")?,
                last_text_body: c.next("last_text_body")?,
                last_text_at_ms: c.next("last_text_at_ms")?,
                last_text_edit_count: c.next("last_text_edit_count")?,
                last_text_edited_at_ms: c.next("last_text_edited_at_ms")?,
                last_text_deleted_by: c.next("last_text_deleted_by")?,
                last_text_deleted_at_ms: c.next("last_text_deleted_at_ms")?,
            },
            last_text_visible: c.next("last_text_visible")?,
            read_seq: c.next("read_seq")?,
            unread_count: c.next("unread_count")?,
            members: c.next("members")?,
        })
    }
}

/// One member of `m2` as a [`Listing`] row lists its conversation's
/// members: `user read_seq role joined_seq`, the members joined by spaces
/// ([`member_list`]; a user id holds no whitespace:
/// `validate::check_user_id`). [`member_reads`] reads the list back. One
/// row per conversation instead of one per member: a `Sync` of a thousand
/// conversations reads a thousand rows, not three thousand.
const MEMBER_LIST_ENTRY: &str =
    "m2.user_id || ' ' || m2.read_seq || ' ' || m2.role || ' ' || m2.joined_seq";

/// The most members whose list a conversation keeps in its row
/// (`conversations.member_list`, migrations 0011); a larger one's listing
/// reads its members. A list of 32 user ids of the longest allowed is
/// about 5 KB; a direct conversation's, about 60 bytes.
pub const MEMBER_LIST_MAX: usize = 32;

/// The list of the members of conversation `conv` (an SQL expression) as
/// [`member_reads`] reads it, NULL without members; when `kept`, as
/// `conversations.member_list` keeps it: NULL too above
/// [`MEMBER_LIST_MAX`] members (which it counts no further). Both stores'
/// SQL (SQLite has `string_agg` since 3.44).
pub fn member_list(conv: &str, kept: bool) -> String {
    if kept {
        format!(
            "(SELECT CASE WHEN COUNT(*) <= {MEMBER_LIST_MAX} THEN string_agg(l.entry, ' ') END
              FROM (SELECT {MEMBER_LIST_ENTRY} AS entry FROM members m2
                    WHERE m2.conversation_id = {conv} LIMIT {}) l)",
            MEMBER_LIST_MAX + 1
        )
    } else {
        format!(
            "(SELECT string_agg({MEMBER_LIST_ENTRY}, ' ') FROM members m2 WHERE m2.conversation_id = {conv})"
        )
    }
}

/// The `SET` items of an update of conversation `conv` (an SQL
/// expression) that keep its member list, written in its change
/// (`partition`, `no`: SQL expressions, the stamp the same statement
/// writes, or for [`Shared::KeepMemberList`] the row's own).
///
/// The one rule of the kept list: it is read only while its stamp is the
/// conversation's ([`kept_member_list`]). Every statement of this release
/// that stamps a conversation writes the list with the stamp (a send's, a
/// read's) or, where it changes no member (an event's), carries a current
/// list into the new stamp; a membership or role change writes it after
/// its steps. Members change only in a change that stamps their
/// conversation, so a writer that does not keep the list (the previous
/// release, during a rolling upgrade) moves the stamp past it and the list
/// goes unread until this release writes it again.
pub fn keep_member_list(conv: &str, partition: &str, no: &str) -> String {
    format!(
        "member_list = {}, member_list_partition = {partition}, member_list_no = {no}",
        member_list(conv, true)
    )
}

/// Whether the member list conversation row `alias` keeps is current: its
/// stamp is the row's (see [`keep_member_list`]).
fn kept_member_list_current(alias: &str) -> String {
    format!(
        "({alias}.member_list_no = {alias}.change_no
          AND {alias}.member_list_partition = {alias}.change_partition)"
    )
}

/// The kept member list of conversation row `alias` where it is current,
/// else NULL.
fn kept_member_list(alias: &str) -> String {
    format!(
        "CASE WHEN {} THEN {alias}.member_list END",
        kept_member_list_current(alias)
    )
}

/// Keeps conversation `$1`'s member list after members were added or
/// removed or their roles changed, in the stamp the conversation has.
static KEEP_MEMBER_LIST: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE conversations SET {} WHERE id = $1",
        keep_member_list("$1", "change_partition", "change_no")
    )
});

/// Stamps conversation `$1` with change (`$2` partition, `$3` number) and
/// keeps its member list: a read position moved.
static CHANGED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE conversations SET change_partition = $2, change_no = $3, {} WHERE id = $1",
        keep_member_list("$1", "$2", "$3")
    )
});

/// Appends a SYSTEM event or a change (`$2` its seq) to conversation `$1`
/// at `$3`, in change (`$4` partition, `$5` number). An event changes no
/// member by itself (a membership or role change keeps the list after its
/// steps: [`Shared::KeepMemberList`]), so a current list is carried into
/// the new stamp as it is, and a stale one stays stale.
static EVENT_APPENDED: LazyLock<String> = LazyLock::new(|| {
    let current = kept_member_list_current("conversations");
    format!(
        "UPDATE conversations
         SET last_seq = $2, system_count = system_count + 1, last_activity_ms = $3,
             change_partition = $4, change_no = $5,
             member_list_partition = CASE WHEN {current} THEN $4 ELSE member_list_partition END,
             member_list_no = CASE WHEN {current} THEN $5 ELSE member_list_no END
         WHERE id = $1"
    )
});

/// The members of a conversation from its [`MEMBER_LIST_ENTRY`] list,
/// sorted by user id.
fn member_reads(list: Option<&str>) -> Result<Vec<MemberRead>, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("member list {list:?}"));
    let mut words = list.unwrap_or_default().split_ascii_whitespace();
    let mut out = Vec::with_capacity(2);
    while let Some(user_id) = words.next() {
        let mut number = || {
            words
                .next()
                .and_then(|w| w.parse::<i64>().ok())
                .ok_or_else(corrupt)
        };
        let (read_seq, role, joined_seq) = (number()?, number()?, number()?);
        out.push(MemberRead {
            user_id: user_id.to_string(),
            read_seq: seq_from(read_seq)?,
            role: i32::try_from(role).map_err(|_| corrupt())?,
            joined_seq: seq_from(joined_seq)?,
        });
    }
    out.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
    Ok(out)
}

/// Which of a user's conversations a listing reads, and in what order.
#[derive(Debug, Clone, Copy)]
pub enum Listing<'a> {
    /// Most recent activity first, after this one (`ListConversations`).
    Recent(Option<&'a ListAfter>),
    /// In id order after `after` (`Sync`): every one (`since` is `None`),
    /// or those whose newest change is above the cursor `since` (per
    /// partition; see migrations 0004).
    Changed {
        /// The cursor's change number per partition.
        since: Option<&'a [u64]>,
        /// The last id already given ("" for none).
        after: &'a str,
    },
    /// The one with this id (`GetConversation`).
    One(&'a str),
}

impl Listing<'_> {
    /// Up to `$N` conversations of user `$1`, a row each
    /// ([`ListedConversation`]), with the user's read position and unread
    /// count (see `decide::reads`) and every member's read position in one
    /// column ([`member_reads`]): the list the conversation keeps, or, where
    /// it keeps none, one read from its members ([`member_list`]). The page
    /// is chosen first, so only its members are read. The rows come in no
    /// order; [`Listed`] gathers them
    /// and [`conversation_page`] puts them in the listing's.
    /// `Recent` binds (`$2` activity, `$3` id) after which it continues
    /// and `$4` for `$N`; `Changed` binds `$2` (the id after which it
    /// continues), `$3` for `$N`, and with a cursor `$4` (taken as
    /// `cursor` says); `One` binds (`$2` id) and `$3` for `$N`
    /// ([`Listing::gather`] binds them).
    pub fn sql(&self, dialect: Dialect) -> String {
        let (filter, order, limit) = match self {
            Listing::Recent(_) => (
                "(c.last_activity_ms < $2 OR (c.last_activity_ms = $2 AND c.id > $3))".to_string(),
                "c.last_activity_ms DESC, c.id",
                "$4",
            ),
            Listing::Changed { since, .. } => (
                match since {
                    None => "m.conversation_id > $2".to_string(),
                    Some(_) => format!(
                        "m.conversation_id > $2 AND c.change_no > {}",
                        dialect.since("c", "$4")
                    ),
                },
                "m.conversation_id",
                "$3",
            ),
            Listing::One(_) => (
                "m.conversation_id = $2".to_string(),
                "m.conversation_id",
                "$3",
            ),
        };
        let columns: Vec<String> = CONVERSATION_COLUMNS
            .into_iter()
            .chain(LAST_TEXT_COLUMNS)
            .chain(LISTER_COLUMNS)
            .map(|c| format!("page.{c}"))
            .collect();
        format!(
            "WITH page AS (
                 SELECT c.id, c.kind, c.title, c.last_seq, c.created_at_ms, c.history_visibility,
                        c.last_activity_ms, {}, {} AS last_text_visible, m.read_seq,
                        {} AS member_list,
                        (c.last_seq - c.system_count) - (m.read_seq - m.read_system) AS unread_count
                 FROM members m
                 JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.user_id = $1 AND {filter}
                 ORDER BY {order}
                 LIMIT {limit}
             )
             SELECT {}, COALESCE(page.member_list, {}) AS members
             FROM page",
            last_text_columns("c"),
            visible("c.last_text_seq", "c.id", "c.history_visibility", "$1"),
            kept_member_list("c"),
            columns.join(", "),
            member_list("page.id", false),
        )
    }

    /// The rows of [`Listing::sql`] for `user`, up to `limit`
    /// conversations, read from `executor` (of either store) and gathered
    /// as they arrive.
    pub async fn gather<'e, DB, E>(
        &self,
        user: &'e str,
        limit: u32,
        dialect: Dialect,
        executor: E,
    ) -> Result<Listed, StoreError>
    where
        DB: sqlx::Database,
        E: sqlx::Executor<'e, Database = DB> + 'e,
        for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        ListedConversation: for<'r> sqlx::FromRow<'r, DB::Row>,
    {
        let sql = self.sql(dialect);
        let q = sqlx::query(&sql).bind(user);
        let q = match *self {
            Listing::Recent(after) => {
                let (activity, id) = match after {
                    None => (i64::MAX, String::new()),
                    Some(a) => (a.last_activity_ms, a.conversation_id.clone()),
                };
                q.bind(activity).bind(id)
            }
            Listing::Changed { after, .. } => q.bind(after.to_string()),
            Listing::One(id) => q.bind(id.to_string()),
        };
        let q = q.bind(i64::from(limit));
        let q = match *self {
            Listing::Changed {
                since: Some(since), ..
            } => q.bind(dialect.bound(since)),
            _ => q,
        };
        let mut rows = q.fetch(executor);
        let mut listed = Listed::with_capacity(limit);
        while let Some(row) = futures::TryStreamExt::try_next(&mut rows).await? {
            listed.push(<ListedConversation as sqlx::FromRow<'_, DB::Row>>::from_row(&row)?)?;
        }
        Ok(listed)
    }
}

/// Where the two stores' SQL differs in the statements both run: how a
/// statement takes a sync cursor (bound as one parameter, so a statement
/// is prepared once for every cursor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: a cursor is an `int8[]`.
    Postgres,
    /// SQLite: a cursor is a JSON array of numbers.
    Sqlite,
}

impl Dialect {
    /// The change number above which a row of `alias` (with
    /// `change_partition` and `change_no` columns) changed since the
    /// cursor bound as `param`: the cursor's entry for the row's partition,
    /// 0 past its end (a partition the cursor has not seen).
    pub fn since(self, alias: &str, param: &str) -> String {
        match self {
            // Cast once for the statement (an InitPlan), not per row.
            Dialect::Postgres => {
                format!("COALESCE(((SELECT {param}::int8[]))[{alias}.change_partition + 1], 0)")
            }
            Dialect::Sqlite => format!(
                "COALESCE(json_extract({param}, '$[' || {alias}.change_partition || ']'), 0)"
            ),
        }
    }

    /// A cursor as the statements of [`Dialect::since`] bind it: text,
    /// an array literal for `Postgres` (which casts it), JSON for `Sqlite`.
    pub fn bound(self, since: &[u64]) -> String {
        let entries: Vec<String> = since
            .iter()
            .map(|n| i64::try_from(*n).unwrap_or(i64::MAX).to_string())
            .collect();
        match self {
            Dialect::Postgres => format!("{{{}}}", entries.join(",")),
            Dialect::Sqlite => format!("[{}]", entries.join(",")),
        }
    }
}

/// The conversations user `$1` left or was removed from since the cursor
/// `$3` (see [`Dialect::since`]), with ids after `$2`, that the user
/// is not a member of again, in id order.
pub fn departed_sql(dialect: Dialect) -> String {
    format!(
        "SELECT d.conversation_id FROM departures d
         WHERE d.user_id = $1 AND d.conversation_id > $2
           AND d.change_no > {}
           AND NOT EXISTS (
               SELECT 1 FROM members m WHERE m.conversation_id = d.conversation_id AND m.user_id = $1
           )
         ORDER BY d.conversation_id",
        dialect.since("d", "$3")
    )
}

/// Draws the next change number of partition `$1` (its first is 1). The
/// counter's row stays locked until the transaction ends, so a partition's
/// numbers follow the order its transactions commit in.
pub const NEXT_CHANGE: &str =
    "INSERT INTO change_counters (log_partition, change_no) VALUES ($1, 1)
     ON CONFLICT (log_partition) DO UPDATE SET change_no = change_counters.change_no + 1
     RETURNING change_no";

/// Every partition's newest change number, as (partition, number).
pub const CHANGE_COUNTERS: &str = "SELECT log_partition, change_no FROM change_counters";

/// The counters of [`CHANGE_COUNTERS`] rows as a cursor: the number of
/// each partition by index, 0 for a partition without changes.
pub fn counters(rows: Vec<(i32, i64)>) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for (partition, no) in rows {
        let i = usize::try_from(partition)
            .map_err(|_| StoreError::Corrupt(format!("negative partition {partition}")))?;
        if out.len() <= i {
            out.resize(i + 1, 0);
        }
        out[i] = seq_from(no)?;
    }
    Ok(out)
}

/// Where a transaction's changes fall in its partition's order: stamped on
/// every conversation it changes (and every departure it records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeStamp {
    /// The ingress partition whose writer made the change.
    pub partition: i32,
    /// Its number in that partition (see [`NEXT_CHANGE`]).
    pub no: i64,
}

/// The rows of a [`Listing`] query gathered as they arrive (see
/// [`Store::listed`](super::Store::listed)): each conversation decoded once
/// into the API's type, each member kept with its conversation's id.
#[derive(Default)]
pub struct Listed {
    conversations: Vec<(Conversation, i64)>,
}

impl Listed {
    /// Room for a listing of `limit` conversations.
    pub fn with_capacity(limit: u32) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(4096);
        Self {
            conversations: Vec::with_capacity(limit),
        }
    }

    /// Takes one row.
    pub fn push(&mut self, row: ListedConversation) -> Result<(), StoreError> {
        let members = member_reads(row.members.as_deref())?;
        self.conversations.push((
            Conversation {
                last_message: match row.last_text_visible {
                    true => row.last_text.message(&row.conversation.id)?,
                    false => None,
                },
                read_seq: seq_from(row.read_seq)?,
                unread_count: seq_from(row.unread_count)?,
                last_activity_at: Some(timestamp(row.last_activity_ms)),
                ..row.conversation.with_members(members)?
            },
            row.last_activity_ms,
        ));
        Ok(())
    }
}

/// The first `limit` conversations of `rows` in the order of `listing`,
/// each with its members by id, with where the next page starts when there
/// were more.
pub fn conversation_page(
    rows: Listed,
    listing: &Listing<'_>,
    limit: usize,
) -> Result<ConversationPage, StoreError> {
    let Listed {
        conversations: mut out,
    } = rows;
    match listing {
        Listing::Recent(_) => {
            out.sort_unstable_by(|(a, at), (b, bt)| bt.cmp(at).then(a.id.cmp(&b.id)))
        }
        Listing::Changed { .. } | Listing::One(_) => {
            out.sort_unstable_by(|(a, _), (b, _)| a.id.cmp(&b.id))
        }
    }
    let more = out.len() > limit;
    out.truncate(limit);
    let next = out
        .last()
        .filter(|_| more)
        .map(|(c, last_activity_ms)| ListAfter {
            last_activity_ms: *last_activity_ms,
            conversation_id: c.id.clone(),
        });
    Ok(ConversationPage {
        conversations: out.into_iter().map(|(c, _)| c).collect(),
        next,
    })
}

/// What deciding a read of seq `$3` by user `$2` in conversation `$1`
/// reads (see `decide::reads::ReadFacts`); no row when the conversation
/// does not exist, NULL positions when the user is not a member. A store
/// whose writers are concurrent appends its row lock.
pub const READ_FACTS: &str = "SELECT c.last_seq, c.system_count, m.read_seq, m.read_system,
            (SELECT COUNT(*) FROM messages x
             WHERE x.conversation_id = c.id AND (x.kind <> 1 OR x.deleted_at_ms <> 0)
               AND x.seq <= $3) AS system_at_seq
     FROM conversations c
     LEFT JOIN members m ON m.conversation_id = c.id AND m.user_id = $2
     WHERE c.id = $1";

/// [`READ_FACTS`] for a read of `seq` by `user` in conversation `id`, as
/// a query for either store.
pub async fn read_facts<'c, DB, E>(
    executor: E,
    id: &str,
    user: &str,
    seq: u64,
) -> Result<Option<ReadFacts>, StoreError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    ReadFactsRow: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let row: Option<ReadFactsRow> = sqlx::query_as(READ_FACTS)
        .bind(id)
        .bind(user)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .fetch_optional(executor)
        .await?;
    row.map(ReadFacts::try_from).transpose()
}

/// A row of [`READ_FACTS`].
#[derive(sqlx::FromRow)]
pub struct ReadFactsRow {
    last_seq: i64,
    system_count: i64,
    read_seq: Option<i64>,
    read_system: Option<i64>,
    system_at_seq: i64,
}

impl TryFrom<ReadFactsRow> for ReadFacts {
    type Error = StoreError;

    fn try_from(row: ReadFactsRow) -> Result<Self, StoreError> {
        let position = match (row.read_seq, row.read_system) {
            (Some(read_seq), Some(read_system)) => Some(Position {
                read_seq: seq_from(read_seq)?,
                read_system: seq_from(read_system)?,
            }),
            _ => None,
        };
        Ok(ReadFacts {
            last_seq: seq_from(row.last_seq)?,
            system_count: seq_from(row.system_count)?,
            position,
            system_at_seq: seq_from(row.system_at_seq)?,
        })
    }
}

/// A stored seq as the API's unsigned one.
pub fn seq_from(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative seq {v}")))
}

/// A statement both stores run as it is, written with `$N` parameters
/// (SQLite takes `$N` as parameter N, as PostgreSQL does).
#[derive(Debug, Clone, Copy)]
pub enum Shared<'q> {
    /// Inserts conversation `id` with no messages yet (last seq 0), unless
    /// it exists: no row is affected then.
    CreateConversation {
        /// The conversation.
        id: &'q str,
        /// `ConversationKind` as stored.
        kind: i32,
        /// Its title.
        title: &'q str,
        /// `HistoryVisibility` as stored.
        visibility: i32,
        /// Milliseconds since the epoch.
        now: i64,
    },
    /// Opens a span (see `member_spans`) for each member of conversation
    /// `id` that joined at its last seq (the event just appended).
    OpenSpans {
        /// The conversation.
        id: &'q str,
    },
    /// Ends `user`'s open span in conversation `id` at the seq about to
    /// be appended (its removal).
    CloseSpan {
        /// The conversation.
        id: &'q str,
        /// The member.
        user: &'q str,
    },
    /// Gives conversation `id` the history visibility `visibility`.
    SetVisibility {
        /// The conversation.
        id: &'q str,
        /// `HistoryVisibility` as stored.
        visibility: i32,
    },
    /// Removes `user` from conversation `id`.
    RemoveMember {
        /// The conversation.
        id: &'q str,
        /// The member.
        user: &'q str,
    },
    /// Inserts `message`.
    InsertMessage {
        /// The message.
        message: &'q Message,
        /// Milliseconds since the epoch.
        now: i64,
    },
    /// Makes `seq`, a SYSTEM event stored at `now` in change `stamp`, the
    /// last seq of conversation `id`, carrying its member list into the
    /// stamp when it is current ([`keep_member_list`]).
    EventAppended {
        /// The conversation.
        id: &'q str,
        /// Its new last seq.
        seq: u64,
        /// Milliseconds since the epoch.
        now: i64,
        /// The change.
        stamp: ChangeStamp,
    },
    /// Stamps conversation `id` as changed in `stamp` (a read position
    /// moved), and keeps its member list ([`keep_member_list`]).
    Changed {
        /// The conversation.
        id: &'q str,
        /// The change.
        stamp: ChangeStamp,
    },
    /// Keeps the member list of conversation `id` ([`keep_member_list`])
    /// after members were added or removed or their roles changed.
    KeepMemberList {
        /// The conversation.
        id: &'q str,
    },
    /// Records that `user` left or was removed from conversation `id` in
    /// change `stamp`.
    Departed {
        /// The conversation.
        id: &'q str,
        /// The former member.
        user: &'q str,
        /// The change.
        stamp: ChangeStamp,
    },
    /// Gives the members of conversation `id` that have no read position
    /// yet (just added) its last seq as theirs: what came before they
    /// joined is not unread for them. It is also the seq they joined at
    /// (the event that added them).
    SeatNewMembers {
        /// The conversation.
        id: &'q str,
    },
    /// Keeps the current body of the TEXT message at `seq` of conversation
    /// `id` as a version (before an edit replaces it).
    KeepVersion {
        /// The conversation.
        id: &'q str,
        /// The message.
        seq: u64,
    },
    /// Replaces the body of the message at `seq`, edited at `now`.
    Edit {
        /// The conversation.
        id: &'q str,
        /// The message.
        seq: u64,
        /// Its new body.
        body: &'q str,
        /// Milliseconds since the epoch.
        now: i64,
    },
    /// [`Shared::Edit`] on the conversation's row, when `seq` is its
    /// newest TEXT message.
    LastTextEdited {
        /// The conversation.
        id: &'q str,
        /// The message.
        seq: u64,
        /// Its new body.
        body: &'q str,
        /// Milliseconds since the epoch.
        now: i64,
    },
    /// Makes the message at `seq` a tombstone: deleted by `by` at `now`,
    /// its body erased.
    Erase {
        /// The conversation.
        id: &'q str,
        /// The message.
        seq: u64,
        /// Who deleted it.
        by: &'q str,
        /// Milliseconds since the epoch.
        now: i64,
    },
    /// Erases the earlier versions of the message at `seq`.
    EraseVersions {
        /// The conversation.
        id: &'q str,
        /// The message.
        seq: u64,
    },
    /// Erases the bodies of the EDIT events of the message at `seq`.
    EraseEdits {
        /// The conversation.
        id: &'q str,
        /// The message.
        seq: u64,
    },
    /// Erases the reactions to the message at `seq`.
    EraseReactions {
        /// The conversation.
        id: &'q str,
        /// The message.
        seq: u64,
    },
    /// [`Shared::Erase`] on the conversation's row, when `seq` is its
    /// newest TEXT message.
    LastTextDeleted {
        /// The conversation.
        id: &'q str,
        /// The message.
        seq: u64,
        /// Who deleted it.
        by: &'q str,
        /// Milliseconds since the epoch.
        now: i64,
    },
    /// One more of conversation `id`'s seqs is not unread (a TEXT message
    /// was deleted): its `system_count` grows by one.
    NoLongerCounted {
        /// The conversation.
        id: &'q str,
    },
    /// The same for the members whose read position is at or past `seq`
    /// (the deleted message): their `read_system` grows by one.
    NoLongerCountedBelow {
        /// The conversation.
        id: &'q str,
        /// The deleted message.
        seq: u64,
    },
    /// `user` reacted to the message at `seq` with `emoji`.
    AddReaction {
        /// The conversation.
        id: &'q str,
        /// The message.
        seq: u64,
        /// The member.
        user: &'q str,
        /// The emoji, fully qualified.
        emoji: &'q str,
        /// Milliseconds since the epoch.
        now: i64,
    },
    /// `user` took back the reaction with `emoji` to the message at `seq`.
    RemoveReaction {
        /// The conversation.
        id: &'q str,
        /// The message.
        seq: u64,
        /// The member.
        user: &'q str,
        /// The emoji, fully qualified.
        emoji: &'q str,
    },
    /// Adds `delta` to the reactions counted on the message at `seq`.
    ReactionsCounted {
        /// The conversation.
        id: &'q str,
        /// The message.
        seq: u64,
        /// +1 or -1.
        delta: i64,
    },
    /// Gives `user` of conversation `id` the role `role`.
    SetRole {
        /// The conversation.
        id: &'q str,
        /// The member.
        user: &'q str,
        /// `Role` as stored.
        role: i32,
    },
    /// Gives conversation `id` the title `title`.
    SetTitle {
        /// The conversation.
        id: &'q str,
        /// The new title.
        title: &'q str,
    },
    /// Moves `user`'s read position in conversation `id` forward to `seq`,
    /// at or below which lie `system` SYSTEM events.
    SetRead {
        /// The conversation.
        id: &'q str,
        /// The member.
        user: &'q str,
        /// The new position.
        seq: u64,
        /// The SYSTEM events at or below it.
        system: u64,
    },
}

type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>;

/// `statement` as a query for either store.
pub fn shared<'q, DB>(statement: Shared<'q>) -> Query<'q, DB>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<Vec<u8>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    match statement {
        Shared::CreateConversation {
            id,
            kind,
            title,
            visibility,
            now,
        } => sqlx::query(
            "INSERT INTO conversations (id, kind, title, last_seq, created_at_ms, last_activity_ms, history_visibility)
             VALUES ($1, $2, $3, 0, $4, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(kind)
        .bind(title)
        .bind(now)
        .bind(visibility),
        Shared::OpenSpans { id } => sqlx::query(
            "INSERT INTO member_spans (conversation_id, user_id, from_seq, to_seq)
             SELECT m.conversation_id, m.user_id, m.joined_seq, 9223372036854775807 FROM members m
             WHERE m.conversation_id = $1
               AND m.joined_seq = (SELECT c.last_seq FROM conversations c WHERE c.id = $1)",
        )
        .bind(id),
        Shared::CloseSpan { id, user } => sqlx::query(
            "UPDATE member_spans SET to_seq = (SELECT c.last_seq + 1 FROM conversations c WHERE c.id = $1)
             WHERE conversation_id = $1 AND user_id = $2 AND to_seq = 9223372036854775807",
        )
        .bind(id)
        .bind(user),
        Shared::SetVisibility { id, visibility } => {
            sqlx::query("UPDATE conversations SET history_visibility = $2 WHERE id = $1")
                .bind(id)
                .bind(visibility)
        }
        Shared::RemoveMember { id, user } => {
            sqlx::query("DELETE FROM members WHERE conversation_id = $1 AND user_id = $2")
                .bind(id)
                .bind(user)
        }
        Shared::InsertMessage { message: m, now } => sqlx::query(
            "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body, membership, created_at_ms,
                                   reply_to_seq, target_seq, emoji, reaction_removed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(m.conversation_id.as_str())
        .bind(m.seq as i64)
        .bind(m.sender_id.as_str())
        .bind(m.client_msg_id.as_str())
        .bind(m.kind)
        .bind(m.body.as_str())
        .bind(m.membership.as_ref().map(|e| e.encode_to_vec()))
        .bind(now)
        .bind(m.reply_to_seq as i64)
        .bind(m.target_seq as i64)
        .bind(m.emoji.as_str())
        .bind(i32::from(m.reaction_removed)),
        Shared::KeepVersion { id, seq } => sqlx::query(
            "INSERT INTO message_versions (conversation_id, seq, version, body, written_at_ms)
             SELECT conversation_id, seq, edit_count, body,
                    CASE WHEN edit_count = 0 THEN created_at_ms ELSE edited_at_ms END
             FROM messages WHERE conversation_id = $1 AND seq = $2",
        )
        .bind(id)
        .bind(seq as i64),
        Shared::Edit { id, seq, body, now } => sqlx::query(
            "UPDATE messages SET body = $3, edit_count = edit_count + 1, edited_at_ms = $4
             WHERE conversation_id = $1 AND seq = $2",
        )
        .bind(id)
        .bind(seq as i64)
        .bind(body)
        .bind(now),
        Shared::LastTextEdited { id, seq, body, now } => sqlx::query(
            "UPDATE conversations SET last_text_body = $3,
                 last_text_edit_count = last_text_edit_count + 1, last_text_edited_at_ms = $4
             WHERE id = $1 AND last_text_seq = $2",
        )
        .bind(id)
        .bind(seq as i64)
        .bind(body)
        .bind(now),
        Shared::Erase { id, seq, by, now } => sqlx::query(
            "UPDATE messages SET body = '', deleted_by = $3, deleted_at_ms = $4, reaction_count = 0
             WHERE conversation_id = $1 AND seq = $2",
        )
        .bind(id)
        .bind(seq as i64)
        .bind(by)
        .bind(now),
        Shared::EraseVersions { id, seq } => {
            sqlx::query("DELETE FROM message_versions WHERE conversation_id = $1 AND seq = $2")
                .bind(id)
                .bind(seq as i64)
        }
        Shared::EraseEdits { id, seq } => sqlx::query(
            "UPDATE messages SET body = '' WHERE conversation_id = $1 AND target_seq = $2 AND kind = 3",
        )
        .bind(id)
        .bind(seq as i64),
        Shared::EraseReactions { id, seq } => {
            sqlx::query("DELETE FROM reactions WHERE conversation_id = $1 AND seq = $2")
                .bind(id)
                .bind(seq as i64)
        }
        Shared::LastTextDeleted { id, seq, by, now } => sqlx::query(
            "UPDATE conversations SET last_text_body = '', last_text_deleted_by = $3,
                 last_text_deleted_at_ms = $4
             WHERE id = $1 AND last_text_seq = $2",
        )
        .bind(id)
        .bind(seq as i64)
        .bind(by)
        .bind(now),
        Shared::NoLongerCounted { id } => {
            sqlx::query("UPDATE conversations SET system_count = system_count + 1 WHERE id = $1")
                .bind(id)
        }
        Shared::NoLongerCountedBelow { id, seq } => sqlx::query(
            "UPDATE members SET read_system = read_system + 1
             WHERE conversation_id = $1 AND read_seq >= $2",
        )
        .bind(id)
        .bind(seq as i64),
        Shared::AddReaction {
            id,
            seq,
            user,
            emoji,
            now,
        } => sqlx::query(
            "INSERT INTO reactions (conversation_id, seq, user_id, emoji, created_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(seq as i64)
        .bind(user)
        .bind(emoji)
        .bind(now),
        Shared::RemoveReaction {
            id,
            seq,
            user,
            emoji,
        } => sqlx::query(
            "DELETE FROM reactions WHERE conversation_id = $1 AND seq = $2 AND user_id = $3 AND emoji = $4",
        )
        .bind(id)
        .bind(seq as i64)
        .bind(user)
        .bind(emoji),
        Shared::ReactionsCounted { id, seq, delta } => sqlx::query(
            "UPDATE messages SET reaction_count = reaction_count + $3 WHERE conversation_id = $1 AND seq = $2",
        )
        .bind(id)
        .bind(seq as i64)
        .bind(delta),
        Shared::EventAppended {
            id,
            seq,
            now,
            stamp,
        } => sqlx::query(EVENT_APPENDED.as_str())
        .bind(id)
        .bind(seq as i64)
        .bind(now)
        .bind(stamp.partition)
        .bind(stamp.no),
        Shared::SetRole { id, user, role } => sqlx::query(
            "UPDATE members SET role = $3 WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user)
        .bind(role),
        Shared::SetTitle { id, title } => {
            sqlx::query("UPDATE conversations SET title = $2 WHERE id = $1")
                .bind(id)
                .bind(title)
        }
        Shared::Changed { id, stamp } => sqlx::query(CHANGED.as_str())
            .bind(id)
            .bind(stamp.partition)
            .bind(stamp.no),
        Shared::KeepMemberList { id } => sqlx::query(KEEP_MEMBER_LIST.as_str()).bind(id),
        Shared::Departed { id, user, stamp } => sqlx::query(
            "INSERT INTO departures (user_id, conversation_id, change_partition, change_no)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, conversation_id)
             DO UPDATE SET change_partition = $3, change_no = $4",
        )
        .bind(user)
        .bind(id)
        .bind(stamp.partition)
        .bind(stamp.no),
        Shared::SeatNewMembers { id } => sqlx::query(
            "UPDATE members SET
                 read_seq = (SELECT c.last_seq FROM conversations c WHERE c.id = $1),
                 joined_seq = (SELECT c.last_seq FROM conversations c WHERE c.id = $1),
                 read_system = (SELECT c.system_count FROM conversations c WHERE c.id = $1)
             WHERE conversation_id = $1 AND read_seq = 0",
        )
        .bind(id),
        Shared::SetRead {
            id,
            user,
            seq,
            system,
        } => sqlx::query(
            "UPDATE members SET read_seq = $3, read_system = $4
             WHERE conversation_id = $1 AND user_id = $2 AND read_seq < $3",
        )
        .bind(id)
        .bind(user)
        .bind(seq as i64)
        .bind(system as i64),
    }
}

/// `$from, $from+1, ...`: `n` parameters for an `IN (...)` list.
pub fn params(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The members other than `$1` of `$1`'s DIRECT conversations.
pub const DIRECT_PARTNERS: &str = "SELECT DISTINCT m2.user_id
     FROM members m1
     JOIN conversations c ON c.id = m1.conversation_id AND c.kind = 1
     JOIN members m2 ON m2.conversation_id = m1.conversation_id AND m2.user_id <> m1.user_id
     WHERE m1.user_id = $1
     ORDER BY m2.user_id";

/// Which of the `n` users `$2..` share a conversation with user `$1`.
pub fn shared_with_sql(n: usize) -> String {
    format!(
        "SELECT DISTINCT m2.user_id
         FROM members m1
         JOIN members m2 ON m2.conversation_id = m1.conversation_id
         WHERE m1.user_id = $1 AND m2.user_id IN ({})",
        params(2, n)
    )
}

/// The presence rows of the `n` users `$1..`: (user, alive until, last
/// seen), in ms since the epoch.
pub fn presence_sql(n: usize) -> String {
    format!(
        "SELECT user_id, alive_until_ms, last_seen_ms FROM presence WHERE user_id IN ({})",
        params(1, n)
    )
}

/// Records `n` presence updates of distinct users, `$1..$3` the first
/// (user, online until (0: offline), last seen (0: as it was)), `$4..$6`
/// the next, and so on.
pub fn record_presence_sql(n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| format!("({})", params(3 * i + 1, 3)))
        .collect();
    format!(
        "INSERT INTO presence (user_id, alive_until_ms, last_seen_ms) VALUES {}
         ON CONFLICT (user_id) DO UPDATE SET
             alive_until_ms = excluded.alive_until_ms,
             last_seen_ms = CASE WHEN excluded.last_seen_ms > 0
                 THEN excluded.last_seen_ms ELSE presence.last_seen_ms END",
        rows.join(", ")
    )
}

/// Users a [`record_presence_sql`] statement records at most (3 parameters
/// each, well under either store's limit).
const PRESENCE_ROWS: usize = 1000;

/// `updates` as one update per user, in the order users first appear, with
/// the same effect as recording them one after another: the last online
/// time, and the last last-seen time that is set. An id with a NUL is no
/// user (PostgreSQL text cannot hold one) and is passed over.
pub fn collapsed(updates: &[PresenceUpdate]) -> Vec<(&str, i64, i64)> {
    let mut out: Vec<(&str, i64, i64)> = Vec::with_capacity(updates.len());
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for u in updates.iter().filter(|u| !u.user_id.contains('\0')) {
        let user = u.user_id.as_str();
        match at.get(user) {
            Some(&i) => {
                let row = &mut out[i];
                row.1 = u.alive_until_ms;
                if u.last_seen_ms > 0 {
                    row.2 = u.last_seen_ms;
                }
            }
            None => {
                at.insert(user, out.len());
                out.push((user, u.alive_until_ms, u.last_seen_ms));
            }
        }
    }
    out
}

/// Records `updates` (see [`collapsed`]) on `conn`, a transaction of either
/// store, [`PRESENCE_ROWS`] users a statement.
pub async fn record_presence<DB>(
    conn: &mut DB::Connection,
    updates: &[PresenceUpdate],
) -> Result<(), StoreError>
where
    DB: sqlx::Database + sqlx::database::HasStatementCache,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    for rows in collapsed(updates).chunks(PRESENCE_ROWS) {
        let sql = record_presence_sql(rows.len());
        rows.iter()
            // One statement a batch size: not worth a place among the
            // prepared ones.
            .fold(
                sqlx::query(&sql).persistent(false),
                |q, (user, alive, seen)| q.bind(*user).bind(*alive).bind(*seen),
            )
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A row of [`presence_sql`].
pub type PresenceRow = (String, i64, i64);

/// The message at seq `$2` of conversation `$1` as a change to it is
/// decided, or as a version or reply preview shows it: its kind, sender,
/// current body, creation, edits and deletion.
pub const TARGET: &str =
    "SELECT seq, kind, sender_id, body, created_at_ms, edit_count, edited_at_ms, deleted_at_ms
     FROM messages WHERE conversation_id = $1 AND seq = $2";

/// A row of [`TARGET`] (or of [`targets_sql`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TargetRow {
    /// Its seq.
    pub seq: i64,
    /// `MessageKind` as stored.
    pub kind: i32,
    /// Who sent it.
    pub sender_id: String,
    /// Its current body ("" once deleted).
    pub body: String,
    /// When it was sent.
    pub created_at_ms: i64,
    /// Edits so far.
    pub edit_count: i64,
    /// When last edited.
    pub edited_at_ms: i64,
    /// When deleted; 0 while not.
    pub deleted_at_ms: i64,
}

/// What a run's replies need, for (conversation, seq, replier) triples
/// bound as `source` (a row source with those columns, aliased `k`: an
/// `UNNEST` or a `VALUES` list): the conversation's visibility, and the
/// message at the seq (NULL columns if not stored yet) with whether the
/// replier may read it.
pub fn reply_facts_sql(source: &str) -> String {
    format!(
        "SELECT k.conversation_id AS target_conversation, k.seq AS asked_seq, k.replier,
                c.history_visibility, x.seq, x.kind, x.sender_id, x.body, x.created_at_ms,
                x.edit_count, x.edited_at_ms, x.deleted_at_ms, {} AS readable
         FROM {source}
         JOIN conversations c ON c.id = k.conversation_id
         LEFT JOIN messages x ON x.conversation_id = k.conversation_id AND x.seq = k.seq",
        visible(
            "k.seq",
            "k.conversation_id",
            "c.history_visibility",
            "k.replier"
        )
    )
}

/// A row of [`reply_facts_sql`].
pub fn reply_facts<'r, R>(row: &'r R) -> Result<super::decide::ReplyFacts, StoreError>
where
    R: sqlx::Row,
    &'r str: sqlx::ColumnIndex<R>,
    TargetRow: sqlx::FromRow<'r, R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let stored: Option<i64> = row.try_get("seq")?;
    let target = match stored {
        Some(_) => Some((
            <TargetRow as sqlx::FromRow<'r, R>>::from_row(row)?,
            row.try_get("readable")?,
        )),
        None => None,
    };
    let visibility: i32 = row.try_get("history_visibility")?;
    Ok(super::decide::ReplyFacts {
        conversation_id: row.try_get("target_conversation")?,
        seq: seq_from(row.try_get("asked_seq")?)?,
        replier: row.try_get("replier")?,
        since_joined: visibility == confab_proto::v1::HistoryVisibility::SinceJoined as i32,
        target,
    })
}

/// [`TARGET`] for those of the `n` seqs `$3..` that user `$2` may read
/// (reply previews, versions).
pub fn targets_sql(n: usize) -> String {
    format!(
        "SELECT seq, kind, sender_id, body, created_at_ms, edit_count, edited_at_ms, deleted_at_ms
         FROM messages x WHERE x.conversation_id = $1 AND x.seq IN ({}) AND {}",
        params(3, n),
        visible_in("x.seq", "$1", "$2"),
    )
}

/// Whether user `user` may read the seq `seq` of conversation `conv`,
/// whose `history_visibility` is `visibility` (all SQL expressions): the
/// one rule of history visibility, for every read (history pages, reply
/// previews, versions, the newest message of a listing, search). SHARED
/// (1): every seq; SINCE_JOINED: the seqs of one of the user's spans.
pub fn visible(seq: &str, conv: &str, visibility: &str, user: &str) -> String {
    format!(
        "({visibility} = 1 OR EXISTS (
             SELECT 1 FROM member_spans s
             WHERE s.conversation_id = {conv} AND s.user_id = {user}
               AND {seq} >= s.from_seq AND {seq} <= s.to_seq))"
    )
}

/// [`visible`] for seqs of the one conversation with id `conv` (a
/// parameter): its visibility read once, and no seq before the user's
/// first span considered, so a page that reaches back past it stops there
/// instead of walking the seqs before.
pub fn visible_in(seq: &str, conv: &str, user: &str) -> String {
    let visibility =
        format!("(SELECT vc.history_visibility FROM conversations vc WHERE vc.id = {conv})");
    format!(
        "{} AND {seq} >= (CASE WHEN {visibility} = 1 THEN 0 ELSE COALESCE(
             (SELECT MIN(fs.from_seq) FROM member_spans fs
              WHERE fs.conversation_id = {conv} AND fs.user_id = {user}), 9223372036854775807) END)",
        visible(seq, conv, &visibility, user)
    )
}

/// What deciding a reaction of user `$3` with emoji `$4` to the message at
/// seq `$2` of conversation `$1` reads: the distinct emoji on the message,
/// the user's reactions to it, whether the user reacted with `$4`, whether
/// anyone did.
pub const REACTION_FACTS: &str = "SELECT COUNT(DISTINCT emoji) AS emoji,
            COALESCE(SUM(CASE WHEN user_id = $3 THEN 1 ELSE 0 END), 0) AS mine,
            COALESCE(SUM(CASE WHEN user_id = $3 AND emoji = $4 THEN 1 ELSE 0 END), 0) AS mine_with,
            COALESCE(SUM(CASE WHEN emoji = $4 THEN 1 ELSE 0 END), 0) AS with
     FROM reactions WHERE conversation_id = $1 AND seq = $2";

/// A row of [`REACTION_FACTS`].
pub type ReactionFactsRow = (i64, i64, i64, i64);

/// The reactions to the messages at seqs `$2` to `$3` of conversation
/// `$1`, per message and emoji in that order: how many, and whether user
/// `$4` is among them.
pub const PAGE_REACTIONS: &str = "SELECT seq, emoji, COUNT(*) AS n,
            SUM(CASE WHEN user_id = $4 THEN 1 ELSE 0 END) AS mine
     FROM reactions WHERE conversation_id = $1 AND seq >= $2 AND seq <= $3
     GROUP BY seq, emoji ORDER BY seq, emoji";

/// A row of [`PAGE_REACTIONS`].
pub type ReactionRow = (i64, String, i64, i64);

/// The earlier versions of the message at seq `$2` of conversation `$1`,
/// oldest first: (version, body, written at).
pub const VERSIONS: &str = "SELECT version, body, written_at_ms FROM message_versions
     WHERE conversation_id = $1 AND seq = $2 ORDER BY version";

/// A row of [`VERSIONS`].
pub type VersionRow = (i64, String, i64);

/// A [`REACTION_FACTS`] row as a decision reads it.
pub fn reaction_facts(row: ReactionFactsRow) -> super::decide::ops::ReactionFacts {
    let (emoji, mine, mine_with, with) = row;
    super::decide::ops::ReactionFacts {
        emoji: u64::try_from(emoji).unwrap_or(0),
        mine: u64::try_from(mine).unwrap_or(0),
        mine_with: mine_with > 0,
        with: with > 0,
    }
}

/// [`TARGET`] for the message at `seq` of conversation `id`, from either
/// store.
pub async fn target<'c, DB, E>(
    executor: E,
    id: &str,
    seq: u64,
) -> Result<Option<TargetRow>, StoreError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    TargetRow: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    Ok(sqlx::query_as(TARGET)
        .bind(id)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .fetch_optional(executor)
        .await?)
}

/// [`REACTION_FACTS`] for a reaction of `user` with `emoji` to the message
/// at `seq` of conversation `id`, from either store.
pub async fn reaction_facts_of<'c, DB, E>(
    executor: E,
    id: &str,
    seq: u64,
    user: &str,
    emoji: &str,
) -> Result<super::decide::ops::ReactionFacts, StoreError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    ReactionFactsRow: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let row: ReactionFactsRow = sqlx::query_as(REACTION_FACTS)
        .bind(id)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(user)
        .bind(emoji)
        .fetch_one(executor)
        .await?;
    Ok(reaction_facts(row))
}

/// [`PAGE_REACTIONS`] for the messages at seqs `from` to `to` of
/// conversation `id`, as `caller` sees them, from either store.
pub async fn page_reactions<'c, DB, E>(
    executor: E,
    id: &str,
    (from, to): (u64, u64),
    caller: &str,
) -> Result<Vec<ReactionRow>, StoreError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    ReactionRow: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let bound = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    Ok(sqlx::query_as(PAGE_REACTIONS)
        .bind(id)
        .bind(bound(from))
        .bind(bound(to))
        .bind(caller)
        .fetch_all(executor)
        .await?)
}

/// [`targets_sql`] for those of `seqs` of conversation `id` that `caller`
/// may read, from either store.
pub async fn targets<'c, DB, E>(
    executor: E,
    id: &str,
    caller: &str,
    seqs: &[u64],
) -> Result<Vec<TargetRow>, StoreError>
where
    DB: sqlx::Database + sqlx::database::HasStatementCache,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    TargetRow: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let sql = targets_sql(seqs.len());
    let q = seqs.iter().fold(
        // One statement a page's count of replies: not worth a place among
        // the prepared ones.
        sqlx::query_as(&sql).persistent(false).bind(id).bind(caller),
        |q, s| q.bind(i64::try_from(*s).unwrap_or(i64::MAX)),
    );
    Ok(q.fetch_all(executor).await?)
}

/// [`VERSIONS`] of the message at `seq` of conversation `id`, from either
/// store.
pub async fn versions<'c, DB, E>(
    executor: E,
    id: &str,
    seq: u64,
) -> Result<Vec<VersionRow>, StoreError>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    VersionRow: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    Ok(sqlx::query_as(VERSIONS)
        .bind(id)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .fetch_all(executor)
        .await?)
}

/// The members of conversation `$1` by user id, each with its read
/// position, role and the seq it joined at.
pub const MEMBERS: &str = "SELECT user_id, read_seq, role, joined_seq FROM members
     WHERE conversation_id = $1 ORDER BY user_id";

/// A row of [`MEMBERS`].
pub type MemberRow = (String, i64, i32, i64);

/// [`MEMBERS`] rows as the API's.
pub fn members(rows: Vec<MemberRow>) -> Result<Vec<MemberRead>, StoreError> {
    rows.into_iter()
        .map(|(user_id, read_seq, role, joined_seq)| {
            Ok(MemberRead {
                user_id,
                read_seq: seq_from(read_seq)?,
                role,
                joined_seq: seq_from(joined_seq)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_list_is_read_sorted_by_user() {
        let members = member_reads(Some("zoë 7 0 1 al 3 2 5")).expect("read");
        let got: Vec<(&str, u64, i32, u64)> = members
            .iter()
            .map(|m| (m.user_id.as_str(), m.read_seq, m.role, m.joined_seq))
            .collect();
        assert_eq!(got, [("al", 3, 2, 5), ("zoë", 7, 0, 1)]);
        assert!(member_reads(None).expect("none").is_empty());
        assert!(member_reads(Some("")).expect("empty").is_empty());
    }

    #[test]
    fn a_broken_member_list_is_corrupt() {
        for list in [
            "al 3 2",
            "al x 2 5",
            "al 3 2 5 bo",
            "al -1 2 5",
            "al 3 99999999999 5",
        ] {
            match member_reads(Some(list)) {
                Err(StoreError::Corrupt(_)) => {}
                other => panic!("{list:?}: {:?}", other.map(|m| m.len())),
            }
        }
    }
}
