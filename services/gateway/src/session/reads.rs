//! The session's `read` frames: each moves the user's read position through
//! the log like the unary `MarkRead` ([`crate::service::mark_read`]) and is
//! answered by a `read` frame once history has decided, without holding up
//! this session's deliveries.
//!
//! A client that marks every message read as it shows it sends a read per
//! message. A stream's reads of a conversation go to the log one at a time
//! and at least `read_spacing` (`CONFAB_READ_SPACING_MS`) apart, start to
//! start: the first goes at once, and the reads of that conversation that
//! follow it on this stream while it is on its way, or sooner than the
//! spacing after it went, wait and go as one read of the highest seq among
//! them. The position ends where the last of them would have put it,
//! members get one receipt for it rather than one per message, and each
//! waiting frame gets its own answer (the state after the merged read).
//! Only reads of seqs this stream has delivered wait like that, so a merged
//! read is never refused for a seq past the newest when one of its frames
//! alone would not have been; reads with `private` set and without merge
//! separately.
use super::{Gone, State, MAX_SENDS_IN_FLIGHT};
use crate::user_limits::Cost;
use confab_core::error::ChatError;
use confab_core::metrics::READS_MERGED;
use confab_proto::v1::{server_frame, MarkReadRequest, ReadAck, ReadState, ServerFrame};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::time::Instant;

/// Most reads that wait behind the one in flight, per conversation; more
/// are refused with RESOURCE_EXHAUSTED.
const MAX_WAITING: usize = MAX_SENDS_IN_FLIGHT;

/// Which reads may merge: same conversation, same `private`.
type Key = (String, bool);

/// For each key with a read in flight or gone within the spacing, the reads
/// waiting behind it (an entry exists exactly while that is so).
#[derive(Debug, Clone, Default)]
pub(super) struct Waiting(Arc<Mutex<HashMap<Key, Vec<MarkReadRequest>>>>);

impl Waiting {
    /// Runs `f` on the map (never held across an await).
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Key, Vec<MarkReadRequest>>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The reads waiting under `key`, taken; none (and `key` no longer in
    /// flight) when nothing waits.
    fn next(&self, key: &Key) -> Vec<MarkReadRequest> {
        self.with(|m| match m.get_mut(key) {
            Some(w) if !w.is_empty() => std::mem::take(w),
            _ => {
                m.remove(key);
                Vec::new()
            }
        })
    }
}

/// The `read` frame answering `req`.
fn ack(req: &MarkReadRequest, result: Result<ReadState, ChatError>) -> server_frame::Frame {
    let (state, error) = match result {
        Ok(state) => (Some(state), None),
        Err(e) => (None, Some(e.to_proto())),
    };
    server_frame::Frame::Read(ReadAck {
        conversation_id: req.conversation_id.clone(),
        seq: req.seq,
        state,
        error,
    })
}

/// What waiting reads come to: one read of the highest seq among them.
fn merged(batch: &[MarkReadRequest]) -> Option<MarkReadRequest> {
    batch.iter().max_by_key(|r| r.seq).cloned()
}

impl State {
    /// A `read` frame (see the module's text). Reads share the sends'
    /// in-flight bound; a read waiting behind another holds no slot. The
    /// user's read budget is spent by each read that goes to the log (a
    /// merged one once), so merging is what lets a client mark every
    /// message read in a busy conversation.
    pub(super) async fn mark_read(&mut self, req: MarkReadRequest) -> Result<(), Gone> {
        let delivered = req.seq >= 1
            && self
                .cursors
                .get(&req.conversation_id)
                .is_some_and(|c| req.seq <= c.last);
        let key = (req.conversation_id.clone(), req.private);
        if delivered {
            // Behind a read in flight: it waits (or is refused when too many do).
            let full = self.reads.with(|m| match m.get_mut(&key) {
                Some(w) if w.len() < MAX_WAITING => {
                    w.push(req.clone());
                    Some(false)
                }
                Some(_) => Some(true),
                None => None,
            });
            match full {
                Some(false) => {
                    metrics::counter!(READS_MERGED).increment(1);
                    return Ok(());
                }
                Some(true) => {
                    let e = ChatError::ResourceExhausted(format!(
                        "{MAX_WAITING} reads of conversation {} are already waiting for their answer on this stream; wait for them before sending more",
                        req.conversation_id
                    ));
                    return self.send(ack(&req, Err(e))).await;
                }
                None => {}
            }
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let e = ChatError::ResourceExhausted(format!(
                "{MAX_SENDS_IN_FLIGHT} sends and reads are already waiting for their answer on this stream; wait for them before sending more"
            ));
            return self.send(ack(&req, Err(e))).await;
        };
        if delivered {
            self.reads.with(|m| m.insert(key.clone(), Vec::new()));
        }
        let waiting = self.reads.clone();
        let in_flight = self.in_flight.clone();
        let spacing = self.s.read_spacing;
        let submitter = self.s.submitter.clone();
        let limiter = self.s.limiter.clone();
        let out = self.s.out.clone();
        let user = self.s.user.clone();
        tokio::spawn(async move {
            // A slot of the stream's in-flight bound, held while a read is
            // on its way and its answers go out, not while spacing waits.
            let mut slot = Some(permit);
            let mut batch = vec![req];
            while let Some(read) = merged(&batch) {
                let went = Instant::now();
                let result = match limiter.admit(&user, Cost::Read) {
                    Ok(()) => crate::service::mark_read(&submitter, &user, read).await,
                    Err(e) => Err(e),
                };
                for r in &batch {
                    let frame = ack(r, result.clone());
                    if out
                        .send(Box::new(ServerFrame { frame: Some(frame) }))
                        .await
                        .is_err()
                    {
                        // The stream is gone, and the waiting reads with it.
                        return;
                    }
                }
                drop(slot.take());
                if !delivered {
                    return;
                }
                if !spacing.is_zero() {
                    tokio::time::sleep_until(went + spacing).await;
                }
                batch = waiting.next(&key);
                if !batch.is_empty() {
                    // The waiting reads were taken in: they wait for a slot
                    // (sends free theirs within the send timeout) rather
                    // than being refused, or end with the stream (at
                    // shutdown, which holds every slot, the stream ends
                    // UNAVAILABLE and the client resumes).
                    slot = tokio::select! {
                        permit = in_flight.clone().acquire_owned() => match permit {
                            Ok(permit) => Some(permit),
                            Err(_) => return,
                        },
                        () = out.closed() => return,
                    };
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(conv: &str, seq: u64) -> MarkReadRequest {
        MarkReadRequest {
            conversation_id: conv.into(),
            seq,
            private: false,
        }
    }

    #[test]
    fn waiting_reads_go_as_one_of_the_highest_seq() {
        assert_eq!(merged(&[]), None);
        assert_eq!(
            merged(&[read("c", 4), read("c", 9), read("c", 7)]).map(|r| r.seq),
            Some(9)
        );
    }

    #[test]
    fn a_key_is_in_flight_until_nothing_waits() {
        let w = Waiting::default();
        let key = ("c".to_string(), false);
        w.with(|m| m.insert(key.clone(), vec![read("c", 3), read("c", 5)]));
        assert_eq!(w.next(&key).len(), 2);
        // Still in flight (the merged read is on its way), nothing waiting.
        assert!(w.with(|m| m.contains_key(&key)));
        assert!(w.next(&key).is_empty());
        assert!(!w.with(|m| m.contains_key(&key)));
    }
}
