//! Traffic the durability tests (and tools) generate and check: writers
//! that send until the server dies under them, and the check of what they
//! were acknowledged against what is stored.

use crate::User;
use std::collections::HashSet;

/// A conversation of a test's (or a tool's) plan, and its members.
#[derive(Debug, Clone)]
pub struct Conv {
    /// Its id.
    pub id: String,
    /// Its members' user ids.
    pub members: Vec<String>,
}

/// Senders to one conversation that go on until a send fails (the server
/// died under them, or refused them).
pub struct Writers(Vec<tokio::task::JoinHandle<Written>>);

/// What one writer was acknowledged, and the failure that stopped it.
type Written = (Vec<(String, u64)>, Option<(String, tonic::Status)>);

impl Writers {
    /// `n` writers sending `keep me` to `conv` as `user`, with keys
    /// `w<writer>-<i>`.
    pub fn start(user: &User, conv: &str, n: usize) -> Writers {
        Self::sending(user, conv, n, |_| "keep me".into())
    }

    /// `n` writers sending `body(i)` as their `i`th message to `conv` as
    /// `user`, with keys `w<writer>-<i>`.
    pub fn sending(
        user: &User,
        conv: &str,
        n: usize,
        body: impl Fn(u64) -> String + Clone + Send + 'static,
    ) -> Writers {
        Writers(
            (0..n)
                .map(|w| {
                    let (user, conv, body) = (user.clone(), conv.to_string(), body.clone());
                    tokio::spawn(async move {
                        let mut acked = Vec::new();
                        for i in 0.. {
                            let key = format!("w{w}-{i}");
                            match user.send(&conv, &key, &body(i)).await {
                                Ok(m) => acked.push((key, m.seq)),
                                Err(e) => return (acked, Some((key, e))),
                            }
                        }
                        (acked, None)
                    })
                })
                .collect(),
        )
    }

    /// Every `(client_msg_id, seq)` acknowledged, once every writer has
    /// stopped: at least `least` of them.
    pub async fn acked_at_least(self, least: usize) -> Vec<(String, u64)> {
        let (all, _) = self.stopped().await;
        assert!(
            all.len() >= least,
            "only {} sends were acknowledged, not {least}",
            all.len()
        );
        all
    }

    /// Once every writer has stopped: every `(client_msg_id, seq)`
    /// acknowledged, and the send that stopped each writer with its error.
    pub async fn stopped(self) -> (Vec<(String, u64)>, Vec<(String, tonic::Status)>) {
        let (mut all, mut failed) = (Vec::new(), Vec::new());
        for w in self.0 {
            let (acked, failure) = w.await.expect("writer");
            all.extend(acked);
            failed.extend(failure);
        }
        (all, failed)
    }
}

/// After a crash and a restart: every acknowledged `(client_msg_id, seq)`
/// is among the `stored` seqs (all of a conversation, oldest first), and
/// those are 1, 2, 3, … without a gap.
pub fn assert_acked_stored(acked: &[(String, u64)], stored: &[u64]) {
    let set: HashSet<u64> = stored.iter().copied().collect();
    for (key, seq) in acked {
        assert!(
            set.contains(seq),
            "acknowledged message {key} (seq {seq}) was lost"
        );
    }
    assert_eq!(
        stored,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "no gaps after the crash"
    );
}
