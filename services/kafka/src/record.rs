//! What the adapter needs to know about each kind of record: its topic and
//! the idempotency key carried in the `confab-idempotency-key` header.

use crate::KafkaConfig;
use confab_proto::internal::v1::{ingress_record, outcome_record, IngressRecord, OutcomeRecord};

/// Header naming the logical write a record belongs to, so a consumer (or a
/// person reading the topic) can tell a retried or replayed record from a
/// new one without decoding it.
pub const IDEMPOTENCY_KEY_HEADER: &str = "confab-idempotency-key";

/// W3C trace context, passed through unchanged when the caller gives one.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A protobuf record that travels on one of Confab's topics.
pub trait KafkaRecord: prost::Message + Default + Send + Sync + 'static {
    /// Which of Confab's topics this kind of record is published to
    /// (`ingress`, `messages`): the topic is `<prefix>.<TOPIC_KIND>`, and
    /// this is the `topic_kind` label of the produce metrics, whatever the
    /// prefix.
    const TOPIC_KIND: &'static str;

    /// The topic this kind of record is published to.
    fn topic(config: &KafkaConfig) -> String {
        config.topic(Self::TOPIC_KIND)
    }

    /// The idempotency key of this record, if it has one.
    fn idempotency_key(&self) -> Option<String>;

    /// The record's W3C trace context field (empty: none).
    fn traceparent_field(&self) -> &str;

    /// The W3C trace context to send as the `traceparent` header.
    fn traceparent(&self) -> Option<&str> {
        Some(self.traceparent_field()).filter(|t| !t.is_empty())
    }
}

/// `<gateway_id>/<request_id>`: one request of one gateway.
fn origin_key(origin: Option<&confab_proto::internal::v1::Origin>) -> Option<String> {
    origin
        .filter(|o| !o.gateway_id.is_empty())
        .map(|o| format!("{}/{}", o.gateway_id, o.request_id))
}

/// `<conversation_id>/<sender_id>/<client_msg_id>`: the retry key history
/// deduplicates sends on.
fn send_key(conversation_id: &str, sender_id: &str, client_msg_id: &str) -> Option<String> {
    (!client_msg_id.is_empty()).then(|| format!("{conversation_id}/{sender_id}/{client_msg_id}"))
}

impl KafkaRecord for IngressRecord {
    const TOPIC_KIND: &'static str = "ingress";

    fn traceparent_field(&self) -> &str {
        &self.traceparent
    }

    /// A send: `<conversation_id>/<actor_id>/<client_msg_id>` (the same for
    /// every retry, from any gateway). Anything else (or a send without a
    /// client_msg_id): `<gateway_id>/<request_id>` of its origin.
    fn idempotency_key(&self) -> Option<String> {
        if let Some(ingress_record::Command::Send(send)) = &self.command {
            if let Some(key) = send_key(&self.conversation_id, &self.actor_id, &send.client_msg_id)
            {
                return Some(key);
            }
        }
        origin_key(self.origin.as_ref())
    }
}

impl KafkaRecord for OutcomeRecord {
    const TOPIC_KIND: &'static str = "messages";

    fn traceparent_field(&self) -> &str {
        &self.traceparent
    }

    /// The key of the ingress record it answers, as far as the outcome
    /// tells: a message result with a client_msg_id carries the send's key
    /// (so a replayed outcome has the original's key); otherwise the origin
    /// `<gateway_id>/<request_id>`; without an origin,
    /// `<conversation_id>#<seq>` of its first event.
    fn idempotency_key(&self) -> Option<String> {
        if let Some(outcome_record::Result::Message(m)) = &self.result {
            if let Some(key) = send_key(&m.conversation_id, &m.sender_id, &m.client_msg_id) {
                return Some(key);
            }
        }
        origin_key(self.origin.as_ref()).or_else(|| {
            self.events
                .first()
                .map(|e| format!("{}#{}", self.conversation_id, e.seq))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_proto::internal::v1::{CreateCommand, Origin, RemoveMemberCommand, SendCommand};
    use confab_proto::v1::{Error as PbError, Message};

    fn origin() -> Option<Origin> {
        Some(Origin {
            gateway_id: "gw-1".into(),
            request_id: 42,
        })
    }

    fn send(client_msg_id: &str) -> IngressRecord {
        IngressRecord {
            origin: origin(),
            actor_id: "alice".into(),
            conversation_id: "grp-1".into(),
            command: Some(ingress_record::Command::Send(SendCommand {
                reply_to_seq: 0,
                client_msg_id: client_msg_id.into(),
                body: "hi".into(),
            })),
            traceparent: String::new(),
            accepted_at_ms: 0,
        }
    }

    #[test]
    fn a_send_is_keyed_by_its_retry_key_whatever_gateway_carried_it() {
        let a = send("m-1");
        let mut b = send("m-1");
        b.origin = Some(Origin {
            gateway_id: "gw-2".into(),
            request_id: 7,
        });
        assert_eq!(a.idempotency_key().as_deref(), Some("grp-1/alice/m-1"));
        assert_eq!(a.idempotency_key(), b.idempotency_key());
        assert_ne!(a.idempotency_key(), send("m-2").idempotency_key());
    }

    #[test]
    fn other_commands_are_keyed_by_their_origin() {
        let create = IngressRecord {
            command: Some(ingress_record::Command::Create(CreateCommand::default())),
            ..send("")
        };
        assert_eq!(create.idempotency_key().as_deref(), Some("gw-1/42"));
        let remove = IngressRecord {
            command: Some(ingress_record::Command::RemoveMember(RemoveMemberCommand {
                member_id: "bob".into(),
            })),
            ..send("")
        };
        assert_eq!(remove.idempotency_key().as_deref(), Some("gw-1/42"));
        // A send without a client_msg_id falls back to the origin.
        assert_eq!(send("").idempotency_key().as_deref(), Some("gw-1/42"));
        // Nothing to key on: no header.
        let bare = IngressRecord {
            origin: None,
            ..send("")
        };
        assert_eq!(bare.idempotency_key(), None);
    }

    #[test]
    fn outcomes_carry_the_key_of_what_they_answer() {
        let stored = Message {
            conversation_id: "grp-1".into(),
            seq: 9,
            sender_id: "alice".into(),
            client_msg_id: "m-1".into(),
            ..Default::default()
        };
        let sent = OutcomeRecord {
            origin: origin(),
            conversation_id: "grp-1".into(),
            events: vec![stored.clone()],
            result: Some(outcome_record::Result::Message(stored.clone())),
            ..Default::default()
        };
        assert_eq!(
            sent.idempotency_key(),
            send("m-1").idempotency_key(),
            "a send's outcome has the send's key"
        );
        let refused = OutcomeRecord {
            origin: origin(),
            conversation_id: "grp-1".into(),
            result: Some(outcome_record::Result::Error(PbError::default())),
            ..Default::default()
        };
        assert_eq!(refused.idempotency_key().as_deref(), Some("gw-1/42"));
        let system = Message {
            client_msg_id: String::new(),
            ..stored
        };
        let unowned = OutcomeRecord {
            origin: None,
            conversation_id: "grp-1".into(),
            events: vec![system],
            ..Default::default()
        };
        assert_eq!(unowned.idempotency_key().as_deref(), Some("grp-1#9"));
        assert_eq!(OutcomeRecord::default().idempotency_key(), None);
    }

    #[test]
    fn records_know_their_topic() {
        let c = KafkaConfig::default();
        assert_eq!(IngressRecord::topic(&c), "confab.ingress");
        assert_eq!(OutcomeRecord::topic(&c), "confab.messages");
    }
}
