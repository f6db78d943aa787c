//! The seed corpora in `fuzz/corpus/<target>/`: a few valid inputs per
//! target (and a few near misses), written by `examples/seed_corpus.rs`.
//! Deterministic, so regenerating changes nothing unless this file does.

use crate::token::{self, Key};
use confab_proto::v1::*;
use prost::Message;
use serde_json::json;

/// 2100-01-01: far enough for seeds to stay valid tokens.
pub const FAR_EXP: u64 = 4_102_444_800;

/// One seed: its file name and its bytes.
pub type Seed = (&'static str, Vec<u8>);

fn frame(f: client_frame::Frame) -> Vec<u8> {
    ClientFrame { frame: Some(f) }.encode_to_vec()
}

/// Seeds of `client_frame`.
pub fn client_frame() -> Vec<Seed> {
    let send = |conversation_id: &str, client_msg_id: &str, body: &str| {
        frame(client_frame::Frame::Send(SendFrame {
            reply_to_seq: 0,
            conversation_id: conversation_id.into(),
            client_msg_id: client_msg_id.into(),
            body: body.into(),
        }))
    };
    // One frame per position, concatenated: protobuf merges them into one
    // resume, and the bytes do not depend on a HashMap's order.
    let resume = |positions: &[(&str, u64)]| {
        positions
            .iter()
            .flat_map(|(c, s)| {
                frame(client_frame::Frame::Resume(Resume {
                    last_seq: [(c.to_string(), *s)].into(),
                }))
            })
            .collect::<Vec<u8>>()
    };
    vec![
        ("send", send("grp-1", "m-1", "hello")),
        ("send-empty-body", send("grp-1", "m-2", "")),
        ("send-nul", send("dm-1", "m\0", "a\0b")),
        ("resume", resume(&[("grp-1", 0), ("dm-1", 42)])),
        ("resume-max-seq", resume(&[("grp-1", u64::MAX)])),
        ("resume-bad-id", resume(&[("", 1), ("a\nb", 2)])),
        ("ping", frame(client_frame::Frame::Ping(Ping { nonce: 7 }))),
        (
            "typing",
            frame(client_frame::Frame::Typing(TypingFrame {
                conversation_id: "grp-1".into(),
                active: true,
            })),
        ),
        (
            "read",
            frame(client_frame::Frame::Read(MarkReadRequest {
                conversation_id: "grp-1".into(),
                seq: 12,
                private: true,
            })),
        ),
        (
            "sync",
            frame(client_frame::Frame::Sync(SyncRequest {
                cursor: sync_cursor(&[3, 0, 7]),
                limit: 0,
            })),
        ),
        ("empty", Vec::new()),
    ]
}

/// A cursor `Sync` gives the fuzz targets' caller after seeing `seen`.
fn sync_cursor(seen: &[u64]) -> String {
    confab_core::sync_cursor::encode(crate::CALLER, seen, None)
}

/// Seeds of `requests`.
pub fn requests() -> Vec<Seed> {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        (
            "edit",
            EditMessageRequest {
                conversation_id: "grp-1".into(),
                seq: 2,
                body: "hello, fixed".into(),
                client_msg_id: "e-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            "delete",
            DeleteMessageRequest {
                conversation_id: "grp-1".into(),
                seq: 2,
                client_msg_id: "d-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            "react",
            ReactRequest {
                conversation_id: "grp-1".into(),
                seq: 2,
                emoji: "👍🏽".into(),
                remove: false,
                client_msg_id: "r-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            "react-not-an-emoji",
            ReactRequest {
                conversation_id: "grp-1".into(),
                seq: 2,
                emoji: "❤".into(),
                remove: true,
                client_msg_id: "r-2".into(),
            }
            .encode_to_vec(),
        ),
        (
            "set-role",
            SetRoleRequest {
                conversation_id: "grp-1".into(),
                user_id: "bob".into(),
                role: Role::Admin as i32,
            }
            .encode_to_vec(),
        ),
        (
            "update",
            UpdateConversationRequest {
                conversation_id: "grp-1".into(),
                title: Some("renamed".into()),
                history_visibility: HistoryVisibility::SinceJoined as i32,
            }
            .encode_to_vec(),
        ),
        (
            "search",
            SearchMessagesRequest {
                query: "东京 meeting 猫".into(),
                conversation_id: "grp-1".into(),
                page_token: String::new(),
                limit: 5,
            }
            .encode_to_vec(),
        ),
        (
            "edit-history",
            GetEditHistoryRequest {
                conversation_id: "grp-1".into(),
                seq: 2,
            }
            .encode_to_vec(),
        ),
        (
            "reply",
            SendMessageRequest {
                reply_to_seq: 2,
                conversation_id: "grp-1".into(),
                client_msg_id: "m-2".into(),
                body: "a reply".into(),
            }
            .encode_to_vec(),
        ),
        (
            "send",
            SendMessageRequest {
                reply_to_seq: 0,
                conversation_id: "grp-1".into(),
                client_msg_id: "m-1".into(),
                body: "hello".into(),
            }
            .encode_to_vec(),
        ),
        (
            "create-direct",
            CreateConversationRequest {
                history_visibility: 0,
                kind: ConversationKind::Direct as i32,
                title: String::new(),
                member_ids: strings(&["bob"]),
            }
            .encode_to_vec(),
        ),
        (
            "create-group",
            CreateConversationRequest {
                history_visibility: 0,
                kind: ConversationKind::Group as i32,
                title: "team".into(),
                member_ids: strings(&["bob", "carol", "dave"]),
            }
            .encode_to_vec(),
        ),
        (
            "add-members",
            AddMembersRequest {
                conversation_id: "grp-1".into(),
                member_ids: strings(&["erin", "frank", "erin"]),
            }
            .encode_to_vec(),
        ),
        (
            "get-conversation",
            GetConversationRequest {
                conversation_id: "grp-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            "presence",
            GetPresenceRequest {
                user_ids: strings(&["bob", "carol", "bob"]),
            }
            .encode_to_vec(),
        ),
        (
            "sync-first",
            SyncRequest {
                cursor: String::new(),
                limit: 2,
            }
            .encode_to_vec(),
        ),
        (
            "sync-cursor",
            SyncRequest {
                cursor: sync_cursor(&[12, 0, 0, 5]),
                limit: u32::MAX,
            }
            .encode_to_vec(),
        ),
        (
            "sync-paged",
            SyncRequest {
                cursor: confab_core::sync_cursor::encode(
                    crate::CALLER,
                    &[9, 9],
                    Some(confab_core::sync_cursor::Paging {
                        since: Some(vec![4, 2]),
                        until: vec![9, 9],
                        after: "grp-1".into(),
                    }),
                ),
                limit: 50,
            }
            .encode_to_vec(),
        ),
        (
            "mark-read",
            MarkReadRequest {
                conversation_id: "grp-1".into(),
                seq: 3,
                private: false,
            }
            .encode_to_vec(),
        ),
        (
            "remove-member",
            RemoveMemberRequest {
                conversation_id: "grp-1".into(),
                member_id: "bob".into(),
            }
            .encode_to_vec(),
        ),
        (
            "history-before",
            GetHistoryRequest {
                conversation_id: "grp-1".into(),
                before_seq: Some(10),
                after_seq: None,
                limit: 20,
            }
            .encode_to_vec(),
        ),
        (
            "history-after",
            GetHistoryRequest {
                conversation_id: "dm-1".into(),
                before_seq: None,
                after_seq: Some(0),
                limit: 1000,
            }
            .encode_to_vec(),
        ),
        (
            "history-both",
            GetHistoryRequest {
                conversation_id: "dm-1".into(),
                before_seq: Some(5),
                after_seq: Some(1),
                limit: 0,
            }
            .encode_to_vec(),
        ),
        ("list", ListConversationsRequest::default().encode_to_vec()),
        (
            "list-page",
            ListConversationsRequest {
                page_token: "CgNib2IQgICA8IG5tZMYGgVncnAtMQ".into(),
                limit: 1_000,
            }
            .encode_to_vec(),
        ),
    ]
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(rest);
    v
}

/// Seeds of `token`.
pub fn token() -> Vec<Seed> {
    let sign = |key: Key, kid: Option<&str>, claims: serde_json::Value| {
        let signer = token::signer(key).clone();
        let signer = match kid {
            Some(k) => signer.with_kid(k),
            None => signer,
        };
        signer.sign(&claims).expect("seed token")
    };
    let alice = json!({"sub": "alice", "exp": FAR_EXP});
    let hs = sign(Key::Hs256, None, alice.clone());
    let hs_iss_aud = sign(
        Key::Hs256,
        None,
        json!({"sub": "alice", "exp": FAR_EXP, "iss": token::ISSUER, "aud": [token::AUDIENCE]}),
    );
    let ed = sign(Key::Ed1, Some("ed-1"), alice.clone());
    let rsa = sign(Key::Rsa1, Some("rsa-1"), alice.clone());
    let expired = sign(Key::Hs256, None, json!({"sub": "alice", "exp": 1}));
    let raw = |t: &str| with_mode(token::RAW, t.as_bytes());
    vec![
        ("raw-hs256", raw(&hs)),
        ("raw-hs256-iss-aud", raw(&hs_iss_aud)),
        ("raw-eddsa-kid", raw(&ed)),
        ("raw-rs256-kid", raw(&rsa)),
        ("raw-expired", raw(&expired)),
        ("raw-garbage", raw("not-a-jwt")),
        (
            "raw-alg-none",
            raw("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."),
        ),
        (
            "metadata-bearer",
            with_mode(token::METADATA, format!("Bearer {hs}").as_bytes()),
        ),
        (
            "metadata-lowercase",
            with_mode(token::METADATA, format!("bearer  {ed} ").as_bytes()),
        ),
        (
            "metadata-basic",
            with_mode(token::METADATA, b"Basic YWxpY2U6cHc="),
        ),
        // Arbitrary claims: the bytes are read by `arbitrary`, so these
        // only give the mutator a start.
        (
            "claims-a",
            with_mode(token::CLAIMS, &[0, 0, 1, 0, 5, 1, 0, 0, 0]),
        ),
        (
            "claims-b",
            with_mode(token::CLAIMS, &[1, 1, 0, 1, 1, 2, 5, 9, 9, 9, 9]),
        ),
        (
            "signed-json",
            with_mode(
                token::SIGNED_JSON,
                format!("{{\"alg\":\"HS256\"}}\n{alice}").as_bytes(),
            ),
        ),
        (
            "signed-json-alg-confusion",
            with_mode(
                token::SIGNED_JSON,
                format!("{{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}}\n{alice}").as_bytes(),
            ),
        ),
    ]
}

/// One gRPC frame (flag, length, payload).
fn grpc_frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Seeds of `wire`: the method byte, the encoding byte, then the body
/// (see `crate::wire`).
pub fn wire() -> Vec<Seed> {
    use std::io::Write;
    let call = |method: u8, encoding: u8, body: Vec<u8>| {
        let mut out = vec![method, encoding];
        out.extend(body);
        out
    };
    let send = SendMessageRequest {
        reply_to_seq: 0,
        conversation_id: "grp-1".into(),
        client_msg_id: "m-1".into(),
        body: "hello".into(),
    }
    .encode_to_vec();
    let mut bad_utf8 = send.clone();
    let at = bad_utf8.len() - 5;
    bad_utf8[at] = 0xff;
    let gzip = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&send).expect("in memory");
        e.finish().expect("in memory")
    };
    let ping = frame(client_frame::Frame::Ping(Ping { nonce: 1 }));
    let mut two_frames = grpc_frame(0, &ping);
    two_frames.extend(grpc_frame(0, &frame(client_frame::Frame::Sync(SyncRequest::default()))));
    vec![
        ("send", call(1, 0, grpc_frame(0, &send))),
        ("send-bad-utf8", call(1, 0, grpc_frame(0, &bad_utf8))),
        ("send-truncated", call(1, 0, grpc_frame(0, &send[..send.len() - 2]))),
        ("send-gzip", call(1, 1, grpc_frame(1, &gzip))),
        ("send-flag-without-encoding", call(1, 0, grpc_frame(1, &send))),
        ("send-over-limit", call(1, 0, grpc_frame(0, &vec![0x2a; 5000]))),
        ("history", call(8, 0, grpc_frame(0, &GetHistoryRequest::default().encode_to_vec()))),
        ("connect", call(0, 0, two_frames)),
        ("connect-zstd-flagged", call(0, 3, grpc_frame(1, &ping))),
    ]
}
