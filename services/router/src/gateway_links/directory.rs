//! Who is where, as the gateways announced it: each attached gateway's link
//! with its users, and for each user the gateways holding their sessions,
//! kept consistent with each other.

use confab_core::presence::Seen;
use confab_proto::internal::v1::RouterFrame;
use std::collections::{BTreeSet, HashMap, HashSet};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// One attached gateway's stream.
pub(super) struct Link {
    /// Tells this stream apart from an earlier or later one of the same gateway.
    pub(super) id: u64,
    /// Frames for the gateway, in order.
    pub(super) tx: mpsc::Sender<RouterFrame>,
    /// Ends the stream at once with a status, ahead of the queued frames.
    pub(super) kill: mpsc::Sender<Status>,
    /// Users with at least one session on that gateway.
    pub(super) users: HashSet<String>,
    /// Whether the gateway completes requests from `Deliver.completes`
    /// (its `Hello` said so).
    pub(super) completes_in_deliveries: bool,
    /// Dropped with the link: stops the task reading the gateway's frames.
    pub(super) _gone: oneshot::Sender<()>,
}

/// Who is where, as the gateways announced it.
#[derive(Default)]
pub(super) struct Directory {
    /// Attached gateways by gateway id.
    pub(super) gateways: HashMap<String, Link>,
    /// Gateway ids holding each user's sessions.
    pub(super) users: HashMap<String, BTreeSet<String>>,
    /// Users who got a first session on any gateway, or lost their last
    /// one, since [`Directory::take_seen`] was last called.
    seen: Vec<Seen>,
}

impl Directory {
    pub(super) fn add_user(&mut self, gateway_id: &str, user: String) {
        let Some(link) = self.gateways.get_mut(gateway_id) else {
            return;
        };
        if link.users.insert(user.clone()) {
            let gateways = self.users.entry(user.clone()).or_default();
            if gateways.is_empty() {
                self.seen.push(Seen::Arrived(user));
            }
            gateways.insert(gateway_id.to_string());
        }
    }

    /// The presence changes since the last call, in order.
    pub(super) fn take_seen(&mut self) -> Vec<Seen> {
        std::mem::take(&mut self.seen)
    }

    pub(super) fn remove_user(&mut self, gateway_id: &str, user: &str) {
        if let Some(link) = self.gateways.get_mut(gateway_id) {
            link.users.remove(user);
        }
        if let Some(gateways) = self.users.get_mut(user) {
            gateways.remove(gateway_id);
            if gateways.is_empty() {
                self.users.remove(user);
                self.seen.push(Seen::Left(user.to_string()));
            }
        }
    }

    /// Removes a gateway's link and every user it announced.
    pub(super) fn remove_link(&mut self, gateway_id: &str) -> Option<Link> {
        let link = self.gateways.remove(gateway_id)?;
        for user in &link.users {
            if let Some(gateways) = self.users.get_mut(user) {
                gateways.remove(gateway_id);
                if gateways.is_empty() {
                    self.users.remove(user);
                    self.seen.push(Seen::Left(user.clone()));
                }
            }
        }
        Some(link)
    }

    /// The current link of `gateway_id`, if it is `link`.
    pub(super) fn is_current(&self, gateway_id: &str, link: u64) -> bool {
        self.gateways.get(gateway_id).is_some_and(|l| l.id == link)
    }
}
