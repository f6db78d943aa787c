//! Per-user limits: messages per second (a token bucket with burst, shared
//! by unary `SendMessage` and stream `send` frames), concurrent `Connect`
//! streams, and conversations created per minute. Every refusal is a
//! RESOURCE_EXHAUSTED naming the limit, the variable that sets it and its
//! value, and saying what to do; one user's state never touches another's.
//! Calls are charged by [`crate::guard`], stream `send` frames by the
//! session that reads them.

use confab_core::error::ChatError;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Default sustained messages per second per user.
pub const DEFAULT_MESSAGES_PER_SEC: u32 = 20;
/// Default concurrent `Connect` streams per user.
pub const DEFAULT_MAX_STREAMS_PER_USER: u32 = 8;
/// Default conversations a user may create per minute.
pub const DEFAULT_CONVERSATIONS_PER_MIN: u32 = 30;
/// Default read positions a user may set per second (burst twice that).
pub const DEFAULT_READS_PER_SEC: u32 = 50;

/// A user untouched this long, with full buckets and no open stream, is
/// forgotten: a fresh bucket starts full, so nothing is lost.
pub const IDLE: Duration = Duration::from_secs(60);

/// Shards of the user map, so users hashed apart never contend.
const SHARDS: usize = 32;

/// The per-user limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLimits {
    /// Sustained messages per second per user.
    pub messages_per_sec: u32,
    /// Messages a user may send at once after being quiet.
    pub messages_burst: u32,
    /// Concurrent `Connect` streams per user.
    pub max_streams_per_user: u32,
    /// Conversations a user may create per minute (also the burst).
    pub conversations_per_min: u32,
    /// Read positions a user may set per second (burst twice that).
    pub reads_per_sec: u32,
}

impl Default for UserLimits {
    fn default() -> Self {
        Self {
            messages_per_sec: DEFAULT_MESSAGES_PER_SEC,
            messages_burst: 2 * DEFAULT_MESSAGES_PER_SEC,
            max_streams_per_user: DEFAULT_MAX_STREAMS_PER_USER,
            conversations_per_min: DEFAULT_CONVERSATIONS_PER_MIN,
            reads_per_sec: DEFAULT_READS_PER_SEC,
        }
    }
}

/// What an RPC costs against its caller's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Nothing (reads, membership changes).
    Free,
    /// One message.
    Message,
    /// One new conversation.
    Conversation,
    /// One read position set (`MarkRead`, a `read` frame).
    Read,
}

/// A token bucket: `capacity` tokens, refilled at `per_sec`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left at `at`.
    tokens: f64,
    /// When `tokens` was computed.
    at: Instant,
}

/// The shape of one kind of bucket.
#[derive(Debug, Clone, Copy)]
struct Rate {
    /// Most tokens a bucket holds.
    capacity: f64,
    /// Tokens added per second.
    per_sec: f64,
}

impl Rate {
    fn full(&self, now: Instant) -> Bucket {
        Bucket {
            tokens: self.capacity,
            at: now,
        }
    }

    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + elapsed * self.per_sec).min(self.capacity)
    }

    /// Takes a token if there is one.
    fn take(&self, b: &mut Bucket, now: Instant) -> bool {
        b.tokens = self.level(b, now);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One user's state.
#[derive(Debug)]
struct UserState {
    /// Message budget.
    messages: Bucket,
    /// Conversation-creation budget.
    conversations: Bucket,
    /// Read-position budget.
    reads: Bucket,
    /// Open `Connect` streams.
    streams: u32,
    /// Last time anything happened for this user.
    touched: Instant,
}

/// Shared by every clone of a [`Limiter`] and by its stream guards.
#[derive(Debug)]
struct Inner {
    /// The configured limits.
    limits: UserLimits,
    /// Message bucket shape.
    messages: Rate,
    /// Conversation bucket shape.
    conversations: Rate,
    /// Read-position bucket shape.
    reads: Rate,
    /// Users by id, sharded by a randomly keyed hash (no chosen-id flooding).
    shards: Vec<Mutex<HashMap<String, UserState>>>,
    /// Keys the shard hash.
    hasher: RandomState,
    /// Origin of `next_sweep_ms`.
    epoch: Instant,
    /// When idle users are next swept out, in ms after `epoch`.
    next_sweep_ms: AtomicU64,
}

/// The per-user limits of one gateway; cheap to clone.
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

/// One open `Connect` stream; dropping it frees the user's slot.
#[derive(Debug)]
pub struct StreamGuard {
    /// The limiter that counted it.
    inner: Arc<Inner>,
    /// Whose stream it is.
    user: String,
}

impl Limiter {
    /// A limiter enforcing `limits`.
    pub fn new(limits: UserLimits) -> Self {
        let now = Instant::now();
        Self {
            inner: Arc::new(Inner {
                limits,
                messages: Rate {
                    capacity: f64::from(limits.messages_burst.max(1)),
                    per_sec: f64::from(limits.messages_per_sec.max(1)),
                },
                conversations: Rate {
                    capacity: f64::from(limits.conversations_per_min.max(1)),
                    per_sec: f64::from(limits.conversations_per_min.max(1)) / 60.0,
                },
                reads: Rate {
                    capacity: 2.0 * f64::from(limits.reads_per_sec.max(1)),
                    per_sec: f64::from(limits.reads_per_sec.max(1)),
                },
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: RandomState::new(),
                epoch: now,
                next_sweep_ms: AtomicU64::new(IDLE.as_millis() as u64),
            }),
        }
    }

    /// The limits enforced.
    pub fn limits(&self) -> UserLimits {
        self.inner.limits
    }

    /// Charges `cost` to `user`, or says which limit refused it.
    pub fn admit(&self, user: &str, cost: Cost) -> Result<(), ChatError> {
        let l = &self.inner.limits;
        let now = Instant::now();
        let admitted = match cost {
            Cost::Free => return Ok(()),
            Cost::Message => self.inner.with_user(user, now, |u| {
                self.inner.messages.take(&mut u.messages, now)
            }),
            Cost::Conversation => self.inner.with_user(user, now, |u| {
                self.inner.conversations.take(&mut u.conversations, now)
            }),
            Cost::Read => self
                .inner
                .with_user(user, now, |u| self.inner.reads.take(&mut u.reads, now)),
        };
        self.inner.maybe_sweep(now);
        if admitted {
            return Ok(());
        }
        let limit = match cost {
            Cost::Message => "messages",
            Cost::Read => "reads",
            _ => "conversations",
        };
        metrics::counter!(confab_core::metrics::RATE_LIMITED, "limit" => limit).increment(1);
        Err(ChatError::ResourceExhausted(match cost {
            Cost::Message => format!(
                "rate limit: at most {} per second per user, {} at once \
                 (CONFAB_RATE_MESSAGES_PER_SEC={}, CONFAB_RATE_MESSAGES_BURST={}); \
                 slow down and retry later",
                plural(l.messages_per_sec, "message"),
                l.messages_burst,
                l.messages_per_sec,
                l.messages_burst
            ),
            Cost::Read => format!(
                "read limit: at most {} per second per user, {} at once \
                 (CONFAB_RATE_READS_PER_SEC={}); mark read less often (the newest seq read is enough)",
                plural(l.reads_per_sec, "read position"),
                2 * u64::from(l.reads_per_sec),
                l.reads_per_sec
            ),
            _ => format!(
                "conversation limit: at most {} created per minute per user \
                 (CONFAB_RATE_CONVERSATIONS_PER_MIN={}); wait before creating more",
                plural(l.conversations_per_min, "conversation"),
                l.conversations_per_min
            ),
        }))
    }

    /// Counts a new `Connect` stream of `user` until the guard is dropped,
    /// or refuses it when the user already has the most allowed.
    pub fn open_stream(&self, user: &str) -> Result<StreamGuard, ChatError> {
        let max = self.inner.limits.max_streams_per_user;
        let now = Instant::now();
        let opened = self.inner.with_user(user, now, |u| {
            if u.streams >= max {
                return false;
            }
            u.streams += 1;
            true
        });
        self.inner.maybe_sweep(now);
        if !opened {
            metrics::counter!(confab_core::metrics::RATE_LIMITED, "limit" => "streams")
                .increment(1);
            return Err(ChatError::ResourceExhausted(format!(
                "stream limit: at most {} per user (CONFAB_MAX_STREAMS_PER_USER={max}); \
                 close one before opening another",
                plural(max, "concurrent Connect stream")
            )));
        }
        Ok(StreamGuard {
            inner: self.inner.clone(),
            user: user.to_string(),
        })
    }

    /// Users currently remembered (bounded by recent activity; for tests).
    #[cfg(any(test, feature = "testing"))]
    pub fn tracked_users(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).len()).sum()
    }
}

impl Inner {
    fn shard(&self, user: &str) -> &Mutex<HashMap<String, UserState>> {
        let i = self.hasher.hash_one(user) as usize % self.shards.len();
        &self.shards[i]
    }

    fn with_user<R>(&self, user: &str, now: Instant, f: impl FnOnce(&mut UserState) -> R) -> R {
        let mut shard = lock(self.shard(user));
        let state = match shard.get_mut(user) {
            Some(s) => s,
            None => shard.entry(user.to_string()).or_insert(UserState {
                messages: self.messages.full(now),
                conversations: self.conversations.full(now),
                reads: self.reads.full(now),
                streams: 0,
                touched: now,
            }),
        };
        state.touched = now;
        f(state)
    }

    /// Forgets idle users, at most once per [`IDLE`], so memory follows the
    /// users active in the last minute or two, not every user ever seen.
    fn maybe_sweep(&self, now: Instant) {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let due = self.next_sweep_ms.load(Ordering::Relaxed);
        if now_ms < due
            || self
                .next_sweep_ms
                .compare_exchange(
                    due,
                    now_ms + IDLE.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        for shard in &self.shards {
            lock(shard).retain(|_, u| {
                u.streams > 0
                    || now.saturating_duration_since(u.touched) < IDLE
                    || self.messages.level(&u.messages, now) < self.messages.capacity
                    || self.conversations.level(&u.conversations, now) < self.conversations.capacity
                    || self.reads.level(&u.reads, now) < self.reads.capacity
            });
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut shard = lock(self.inner.shard(&self.user));
        // Never evicted while counted, so the entry is there.
        if let Some(u) = shard.get_mut(&self.user) {
            u.streams = u.streams.saturating_sub(1);
            u.touched = now;
        }
    }
}

/// A poisoned shard only means a panic elsewhere mid-update of plain
/// counters; the counters are still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn plural(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn limits(per_sec: u32, burst: u32, streams: u32, convs: u32) -> UserLimits {
        UserLimits {
            messages_per_sec: per_sec,
            messages_burst: burst,
            max_streams_per_user: streams,
            conversations_per_min: convs,
            reads_per_sec: 2,
        }
    }

    fn takes(l: &Limiter, user: &str, cost: Cost, n: usize) -> usize {
        (0..n).filter(|_| l.admit(user, cost).is_ok()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn reads_have_a_budget_of_their_own() {
        // reads_per_sec 2: a burst of 4, then 2 a second.
        let l = Limiter::new(limits(10, 30, 1, 1));
        assert_eq!(takes(&l, "alice", Cost::Read, 10), 4, "the burst");
        match l.admit("alice", Cost::Read) {
            Err(ChatError::ResourceExhausted(m)) => {
                assert!(m.contains("CONFAB_RATE_READS_PER_SEC=2"), "{m}")
            }
            other => panic!("over the budget: {other:?}"),
        }
        // Messages and other users are not touched.
        assert_eq!(takes(&l, "alice", Cost::Message, 30), 30);
        assert_eq!(takes(&l, "bob", Cost::Read, 4), 4);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            takes(&l, "alice", Cost::Read, 10),
            2,
            "refilled at the rate"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill_at_the_rate() {
        let l = Limiter::new(limits(10, 30, 1, 1));
        assert_eq!(takes(&l, "alice", Cost::Message, 100), 30, "the burst");
        let err = l.admit("alice", Cost::Message).expect_err("refused");
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(
            err.to_string(),
            "rate limit: at most 10 messages per second per user, 30 at once \
             (CONFAB_RATE_MESSAGES_PER_SEC=10, CONFAB_RATE_MESSAGES_BURST=30); slow down and retry later"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(takes(&l, "alice", Cost::Message, 100), 5, "half a second");
        // A long pause refills only up to the burst.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(takes(&l, "alice", Cost::Message, 100), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn one_users_exhaustion_leaves_others_untouched() {
        let l = Limiter::new(limits(1, 2, 1, 1));
        assert_eq!(takes(&l, "alice", Cost::Message, 10), 2);
        assert_eq!(takes(&l, "bob", Cost::Message, 10), 2);
        assert!(l.admit("alice", Cost::Conversation).is_ok());
        assert!(l.admit("bob", Cost::Conversation).is_ok());
        let _a = l.open_stream("alice").expect("alice's stream");
        let _b = l.open_stream("bob").expect("bob's stream");
        assert!(l.admit("alice", Cost::Free).is_ok(), "reads are free");
    }

    #[tokio::test(start_paused = true)]
    async fn conversations_per_minute() {
        let l = Limiter::new(limits(1, 1, 1, 3));
        assert_eq!(takes(&l, "alice", Cost::Conversation, 10), 3);
        let err = l.admit("alice", Cost::Conversation).expect_err("refused");
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(
            err.to_string(),
            "conversation limit: at most 3 conversations created per minute per user \
             (CONFAB_RATE_CONVERSATIONS_PER_MIN=3); wait before creating more"
        );
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(l.admit("alice", Cost::Conversation).is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.admit("alice", Cost::Conversation).is_ok(), "one per 20 s");
        // Conversations and messages are separate budgets.
        assert!(l.admit("alice", Cost::Message).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_slot_is_freed_when_its_guard_drops() {
        let l = Limiter::new(limits(1, 1, 2, 1));
        let a1 = l.open_stream("alice").expect("first");
        let _a2 = l.open_stream("alice").expect("second");
        let err = l.open_stream("alice").expect_err("third refused");
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(
            err.to_string(),
            "stream limit: at most 2 concurrent Connect streams per user \
             (CONFAB_MAX_STREAMS_PER_USER=2); close one before opening another"
        );
        let _b = l.open_stream("bob").expect("bob is not alice");
        drop(a1);
        let _a3 = l.open_stream("alice").expect("a slot was freed");
        assert!(l.open_stream("alice").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_users_are_forgotten_but_not_while_limited_or_streaming() {
        let l = Limiter::new(limits(1, 5, 1, 1));
        for i in 0..1000 {
            assert!(l.admit(&format!("u{i}"), Cost::Free).is_ok());
            l.admit(&format!("u{i}"), Cost::Message)
                .expect("first send");
        }
        assert_eq!(l.tracked_users(), 1000);
        let streaming = l.open_stream("streamer").expect("stream");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(takes(&l, "drained", Cost::Message, 10), 5);
        tokio::time::advance(Duration::from_secs(2)).await;
        // The next call sweeps: the 1000 are idle and full again; "drained"
        // was touched 2 s ago; "streamer" has a stream open.
        l.admit("trigger", Cost::Message).expect("send");
        assert_eq!(l.tracked_users(), 3, "drained, streamer, trigger");
        // The stream still counts after the sweep.
        assert!(l.open_stream("streamer").is_err());
        drop(streaming);
        tokio::time::advance(Duration::from_secs(61)).await;
        l.admit("late", Cost::Message).expect("send");
        assert_eq!(l.tracked_users(), 1, "only the caller that swept");
        // A forgotten user starts with a full burst, as if never seen.
        assert_eq!(takes(&l, "drained", Cost::Message, 10), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drained_bucket_is_kept_even_when_untouched() {
        // A slow refill (burst 600 at 1/s) outlives the idle time: forgetting
        // the user would hand back a full burst early.
        let l = Limiter::new(limits(1, 600, 1, 1));
        assert_eq!(takes(&l, "alice", Cost::Message, 1000), 600);
        tokio::time::advance(Duration::from_secs(61)).await;
        l.admit("trigger", Cost::Message).expect("send");
        assert_eq!(l.tracked_users(), 2);
        assert_eq!(takes(&l, "alice", Cost::Message, 1000), 61);
    }
}
