//! The session's typing indicators: `typing` frames are relayed to the
//! other members of the conversation (through the hub: straight to local
//! sessions in embedded mode, through one router otherwise), never stored
//! and never sequenced. A renewal of an active indicator is relayed at most
//! every [`RENEW`]; one not renewed for [`TTL`] is ended by the server. A
//! session relays at most [`RELAYS_PER_SEC`] indicators a second; more are
//! dropped (and counted as rate-limited), so a client cannot flood others.
//! A session that sends more than [`FRAMES_PER_SEC`] typing frames in a
//! second (relayed or not) is not read from until that second ends: its
//! client's stream is held back by flow control, so a flood costs the
//! gateway a handful of frames a second, not one decode per frame the
//! client can write.

use super::{Gone, State};
use confab_core::error::ChatError;
use confab_core::metrics::RATE_LIMITED;
use confab_core::validate;
use confab_proto::v1::{server_frame, Typing, TypingFrame};
use std::time::Duration;
use tokio::time::Instant;

/// Least time between two relays of an active indicator that is renewed.
pub const RENEW: Duration = Duration::from_secs(3);

/// How long an active indicator lasts without a renewal.
pub const TTL: Duration = Duration::from_secs(6);

/// Most indicators one session relays per second.
pub const RELAYS_PER_SEC: u32 = 4;

/// Most typing frames one session is read for per second; past that its
/// inbound stream is paused until the second ends.
pub const FRAMES_PER_SEC: u32 = 20;

/// An active indicator this session relayed for one conversation (a
/// stopped or expired one is removed).
#[derive(Debug, Clone)]
pub(super) struct Indicator {
    /// When it was relayed.
    relayed_at: Instant,
    /// When it ends unless renewed.
    expires: Instant,
    /// The members it went to (the stop goes to the same ones).
    recipients: Vec<String>,
}

/// The indicators of one session, and its relay budget.
#[derive(Debug, Default)]
pub(super) struct Indicators {
    /// By conversation.
    by_conversation: std::collections::HashMap<String, Indicator>,
    /// The current one-second budget window.
    window: Option<Window>,
    /// Until when the session's inbound stream is not read (a typing flood).
    pub(super) paused_until: Option<Instant>,
}

/// One second of a session's typing budget.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// When it started.
    start: Instant,
    /// Typing frames received in it.
    frames: u32,
    /// Indicators relayed in it.
    relays: u32,
}

impl Indicators {
    /// When the earliest active indicator expires.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.by_conversation.values().map(|i| i.expires).min()
    }

    /// The window `now` falls in, a new one if the last has ended.
    fn window(&mut self, now: Instant) -> &mut Window {
        let w = self.window.get_or_insert(Window {
            start: now,
            frames: 0,
            relays: 0,
        });
        if now >= w.start + Duration::from_secs(1) {
            *w = Window {
                start: now,
                frames: 0,
                relays: 0,
            };
        }
        w
    }

    /// Counts one typing frame received; false (and the inbound stream
    /// paused until the window ends) when it is over [`FRAMES_PER_SEC`].
    fn receive(&mut self, now: Instant) -> bool {
        let w = self.window(now);
        w.frames += 1;
        if w.frames <= FRAMES_PER_SEC {
            return true;
        }
        let end = w.start + Duration::from_secs(1);
        self.paused_until = Some(end);
        false
    }

    /// Spends one relay of the budget, if any is left.
    fn spend(&mut self, now: Instant) -> bool {
        let w = self.window(now);
        if w.relays >= RELAYS_PER_SEC {
            return false;
        }
        w.relays += 1;
        true
    }
}

impl State {
    /// A `typing` frame: relayed unless it changes nothing (a renewal within
    /// [`RENEW`], a repeated stop) or the budget is spent; refused with a
    /// `typing` frame carrying the error for a conversation the user is not
    /// in.
    pub(super) async fn typing(&mut self, f: TypingFrame) -> Result<(), Gone> {
        let now = Instant::now();
        if !self.indicators.receive(now) {
            metrics::counter!(RATE_LIMITED, "limit" => "typing").increment(1);
            return Ok(());
        }
        let conv = f.conversation_id.clone();
        if let Err(e) = validate::conversation_id(&conv) {
            return self.refuse_typing(f, e).await;
        }
        match (self.indicators.by_conversation.get_mut(&conv), f.active) {
            (Some(i), true) if now < i.relayed_at + RENEW => {
                i.expires = now + TTL;
                return Ok(());
            }
            (None, false) => return Ok(()),
            _ => {}
        }
        if !self.indicators.spend(now) {
            metrics::counter!(RATE_LIMITED, "limit" => "typing").increment(1);
            return Ok(());
        }
        if !f.active {
            // A stop goes to those the start went to: no history call.
            if let Some(i) = self.indicators.by_conversation.remove(&conv) {
                self.relay_typing(conv, i.recipients, false);
            }
            return Ok(());
        }
        let members = match self.s.history.conversation(&conv).await {
            Ok(c) if c.member_ids.contains(&self.s.user) => c.member_ids,
            Ok(_) => return self.refuse_typing(f, ChatError::not_member(&conv)).await,
            Err(e) => return self.refuse_typing(f, e).await,
        };
        let recipients: Vec<String> = members.into_iter().filter(|m| *m != self.s.user).collect();
        self.relay_typing(conv.clone(), recipients.clone(), true);
        self.indicators.by_conversation.insert(
            conv,
            Indicator {
                relayed_at: now,
                expires: now + TTL,
                recipients,
            },
        );
        Ok(())
    }

    /// Ends the indicators that were not renewed in time.
    pub(super) fn expire_typing(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .indicators
            .by_conversation
            .iter()
            .filter(|(_, i)| i.expires <= now)
            .map(|(conv, _)| conv.clone())
            .collect();
        for conv in expired {
            if let Some(i) = self.indicators.by_conversation.remove(&conv) {
                self.relay_typing(conv, i.recipients, false);
            }
        }
    }

    /// Relays this session's user's indicator in `conv` to `recipients`.
    fn relay_typing(&self, conv: String, recipients: Vec<String>, active: bool) {
        self.s.hub.relay_typing(
            recipients,
            Typing {
                conversation_id: conv,
                user_id: self.s.user.clone(),
                active,
                error: None,
            },
        );
    }

    /// Answers this session's own `typing` frame with why it was refused.
    async fn refuse_typing(&self, f: TypingFrame, e: ChatError) -> Result<(), Gone> {
        self.send(server_frame::Frame::Typing(Typing {
            conversation_id: f.conversation_id,
            user_id: self.s.user.clone(),
            active: f.active,
            error: Some(e.to_proto()),
        }))
        .await
    }
}
