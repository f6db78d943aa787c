//! The load generator's clients: one user and one HTTP/2 connection each,
//! and the conversations they share.

use super::tally::code_name;
use super::LoadOpts;
use anyhow::{anyhow, Context, Result};
use confab_auth::Authenticator;
use confab_proto::v1::chat_client::ChatClient;
use confab_proto::v1::{ConversationKind, CreateConversationRequest};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::Request;

/// One client's connection and identity.
pub(super) struct Client {
    pub(super) index: usize,
    pub(super) user: String,
    pub(super) bearer: AsciiMetadataValue,
    pub(super) chat: ChatClient<Channel>,
    /// Conversations it sends in.
    pub(super) convs: Vec<Arc<str>>,
}

impl Client {
    pub(super) fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("authorization", self.bearer.clone());
        r
    }
}

/// Each conversation's members (client indexes), where messages are
/// delivered (empty against a server that delivers none).
pub(super) type Members = HashMap<Arc<str>, Vec<usize>>;

/// The members of conversation `j` (user indexes): GROUPs first.
pub(super) fn members(j: usize, opts: &LoadOpts, groups: usize) -> Vec<usize> {
    let n = opts.clients;
    if j < groups {
        let size = opts.group_size.clamp(2, n);
        (0..size).map(|k| (j * size + k) % n).collect()
    } else {
        let d = j - groups;
        let a = d % n;
        let b = (a + 1 + (d / n) % (n - 1)) % n;
        vec![a, b]
    }
}

/// Connects every client, one connection each.
pub(super) async fn connect(opts: &LoadOpts) -> Result<Vec<Client>> {
    let auth = Authenticator::new(&opts.secret);
    let uri = format!("http://{}", opts.target);
    let mut clients = Vec::with_capacity(opts.clients);
    let connects = futures::stream::iter(0..opts.clients)
        .map(|i| {
            let uri = uri.clone();
            async move {
                let channel = Channel::from_shared(uri)?
                    .connect_timeout(Duration::from_secs(10))
                    .connect()
                    .await
                    .context("connect")?;
                anyhow::Ok((i, channel))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut channels: Vec<Option<Channel>> = vec![None; opts.clients];
    for c in connects {
        let (i, channel) = c?;
        channels[i] = Some(channel);
    }
    for (i, channel) in channels.into_iter().enumerate() {
        let user = format!("{}-u{i}", opts.run_id);
        let token = auth
            .mint(&user, 24 * 3600)
            .map_err(|e| anyhow!("mint a token: {e}"))?;
        clients.push(Client {
            index: i,
            bearer: format!("Bearer {token}")
                .parse()
                .context("token is ascii")?,
            user,
            chat: ChatClient::new(channel.context("every client connected")?)
                .max_decoding_message_size(64 << 20),
            convs: Vec::new(),
        });
    }

    Ok(clients)
}

/// Creates the conversations (GROUPs first, `groups` of them; only named
/// when the target is not Confab) and gives each client the ones it is in:
/// the members of each conversation, and how many are DIRECT.
pub(super) async fn create_conversations(
    opts: &LoadOpts,
    clients: &mut [Client],
    groups: usize,
) -> Result<(Members, usize)> {
    let mut members_of: Members = HashMap::new();
    let mut direct = 0;
    let plan: Vec<(usize, Vec<usize>)> = (0..opts.conversations)
        .map(|j| (j, members(j, opts, groups)))
        .collect();
    let created = futures::stream::iter(plan.iter())
        .map(|(j, m)| {
            let clients = &clients;
            async move {
                if !opts.confab {
                    return anyhow::Ok((format!("{}-c{j}", opts.run_id), m.clone()));
                }
                let creator = &clients[m[0]];
                let kind = if *j < groups {
                    ConversationKind::Group
                } else {
                    ConversationKind::Direct
                };
                let req = CreateConversationRequest {
                    history_visibility: 0,
                    kind: kind as i32,
                    title: format!("{} {j}", opts.run_id),
                    member_ids: m[1..].iter().map(|&k| clients[k].user.clone()).collect(),
                };
                let conv = creator
                    .chat
                    .clone()
                    .create_conversation(creator.req(req))
                    .await
                    .map_err(|s| {
                        anyhow!(
                            "create conversation {j}: {} {}",
                            code_name(s.code()),
                            s.message()
                        )
                    })?
                    .into_inner();
                anyhow::Ok((conv.id, m.clone()))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for c in created {
        let (id, m) = c?;
        if m.len() == 2 {
            direct += 1;
        }
        let id: Arc<str> = id.into();
        for &k in &m {
            clients[k].convs.push(id.clone());
        }
        if opts.confab {
            members_of.insert(id.clone(), m);
        }
    }
    Ok((members_of, direct))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_have_distinct_members() {
        let mut opts = LoadOpts::new("t", "127.0.0.1:1".parse().expect("addr"), "s");
        opts.clients = 10;
        opts.group_size = 4;
        let mut pairs = std::collections::HashSet::new();
        for j in 0..30 {
            let m = members(j, &opts, 5);
            let mut d = m.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), m.len(), "conversation {j}: {m:?}");
            if j >= 5 {
                assert_eq!(m.len(), 2);
                assert!(pairs.insert(d), "direct pair repeated: {m:?}");
            } else {
                assert_eq!(m.len(), 4);
            }
        }
    }
}
