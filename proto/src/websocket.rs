//! WebSocket messages to and from frames (docs/browser.md): each message is one
//! `ClientFrame` or `ServerFrame`, as protobuf (`confab.v1.proto`, binary
//! messages) or in the protobuf JSON mapping (`confab.v1.json`, text
//! messages, for people debugging by hand).

use crate::v1::{ClientFrame, ServerFrame};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use std::sync::LazyLock;

/// The frame format of one WebSocket, chosen by subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `confab.v1.proto`: binary messages, protobuf.
    Proto,
    /// `confab.v1.json`: text messages, the protobuf JSON mapping.
    Json,
}

/// Every format, in the order the gateway prefers them.
pub const FORMATS: [Format; 2] = [Format::Proto, Format::Json];

impl Format {
    /// Its subprotocol name.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Format::Proto => "confab.v1.proto",
            Format::Json => "confab.v1.json",
        }
    }

    /// The format named `subprotocol`, if any.
    pub fn named(subprotocol: &str) -> Option<Self> {
        FORMATS.into_iter().find(|f| f.subprotocol() == subprotocol)
    }

    /// The kind of WebSocket message this format's frames travel in.
    pub const fn message_kind(self) -> &'static str {
        match self {
            Format::Proto => "binary",
            Format::Json => "text",
        }
    }

    /// The client frame in `data`, or what is wrong with it (a sentence a
    /// client developer can act on).
    pub fn decode(self, data: &[u8]) -> Result<ClientFrame, String> {
        self.read(data, "confab.v1.ClientFrame")
    }

    /// The server frame in `data` (what a client reads).
    pub fn decode_server(self, data: &[u8]) -> Result<ServerFrame, String> {
        self.read(data, "confab.v1.ServerFrame")
    }

    /// `frame` as a message's payload.
    pub fn encode(self, frame: &ServerFrame) -> Vec<u8> {
        self.write(frame, "confab.v1.ServerFrame")
    }

    fn read<M: Message + Default>(self, data: &[u8], name: &str) -> Result<M, String> {
        match self {
            Format::Proto => {
                M::decode(data).map_err(|e| format!("the message is not a protobuf {name}: {e}"))
            }
            Format::Json => from_json(data, name),
        }
    }

    fn write<M: Message>(self, frame: &M, name: &str) -> Vec<u8> {
        match self {
            Format::Proto => frame.encode_to_vec(),
            Format::Json => to_json(frame, name).into_bytes(),
        }
    }
}

/// The public API's descriptors, for the JSON mapping.
static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(crate::PUBLIC_FILE_DESCRIPTOR_SET).ok());

fn descriptor(name: &str) -> Option<MessageDescriptor> {
    POOL.as_ref()?.get_message_by_name(name)
}

fn from_json<M: Message + Default>(data: &[u8], name: &str) -> Result<M, String> {
    let desc =
        descriptor(name).ok_or("JSON frames cannot be read (the descriptors did not load)")?;
    let mut de = serde_json::Deserializer::from_slice(data);
    let message = DynamicMessage::deserialize(desc, &mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| format!("the message is not a {name} in the protobuf JSON mapping: {e}"))?;
    message
        .transcode_to::<M>()
        .map_err(|e| format!("the message is not a {name}: {e}"))
}

fn to_json<M: Message>(frame: &M, name: &str) -> String {
    let encoded = descriptor(name)
        .and_then(|desc| DynamicMessage::decode(desc, frame.encode_to_vec().as_slice()).ok())
        .and_then(|m| serde_json::to_string(&m).ok());
    // Only if the descriptors built into this crate did not load (a test
    // below would fail).
    encoded.unwrap_or_else(|| "{}".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{client_frame, server_frame, Ping, Pong, SendFrame};

    #[test]
    fn json_frames_follow_the_protobuf_json_mapping() {
        let frame = Format::Json
            .decode(br#"{"send":{"conversationId":"c1","clientMsgId":"m1","body":"hi","replyToSeq":"3"}}"#)
            .expect("a send frame");
        assert_eq!(
            frame.frame,
            Some(client_frame::Frame::Send(SendFrame {
                conversation_id: "c1".into(),
                client_msg_id: "m1".into(),
                body: "hi".into(),
                reply_to_seq: 3,
            }))
        );
        // Field names as in the .proto are accepted too.
        let ping = Format::Json
            .decode(br#"{"ping":{"nonce":"7"}}"#)
            .expect("a ping");
        assert_eq!(
            ping.frame,
            Some(client_frame::Frame::Ping(Ping { nonce: 7 }))
        );
        let out = Format::Json.encode(&ServerFrame {
            frame: Some(server_frame::Frame::Pong(Pong { nonce: 7 })),
        });
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"pong":{"nonce":"7"}}"#
        );
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        let e = Format::Json
            .decode(b"{\"sned\":{}}")
            .expect_err("unknown field");
        assert!(e.contains("sned"), "{e}");
        let e = Format::Json.decode(b"{} trailing").expect_err("trailing");
        assert!(e.contains("ClientFrame"), "{e}");
        let e = Format::Proto
            .decode(&[0xff, 0xff])
            .expect_err("not protobuf");
        assert!(e.contains("protobuf confab.v1.ClientFrame"), "{e}");
    }
}
