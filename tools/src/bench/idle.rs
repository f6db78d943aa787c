//! Memory per idle `Connect` stream: many users, each with one live session
//! that says nothing, multiplexed over a few HTTP/2 connections (or each on
//! a WebSocket of its own, as browsers hold them); the server's resident
//! memory before and after, once it has settled.

use super::reads::code_name;
use super::rss_kib;
use anyhow::{anyhow, bail, Context, Result};
use confab_auth::Authenticator;
use confab_proto::v1::chat_client::ChatClient;
use confab_proto::v1::{client_frame, server_frame, ClientFrame, Ping, Pong, ServerFrame};
use futures::StreamExt as _;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// Streams being opened at once.
const OPEN_CONCURRENCY: usize = 256;
/// How long one stream may take to open and answer its ping.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors this process keeps beside its connections.
const FD_HEADROOM: u64 = 100;

/// What to open.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct IdleOpts {
    /// The gateway (or `confab dev`).
    pub addr: SocketAddr,
    /// Its process id, for its resident memory.
    pub server_pid: u32,
    /// Its `CONFAB_JWT_SECRET`.
    pub secret: String,
    /// Stream `i` belongs to user `{user_prefix}{i}`.
    pub user_prefix: String,
    /// Idle `Connect` streams.
    pub streams: usize,
    /// HTTP/2 connections they are spread over, round-robin.
    pub connections: usize,
    /// The HTTP listener whose WebSocket holds every session instead (one
    /// connection each, as browsers hold them; `connections` unused).
    #[serde(default)]
    pub websocket: Option<SocketAddr>,
}

/// What [`run`] measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct IdleReport {
    /// Streams that opened and were answered (held idle together).
    pub streams: usize,
    /// HTTP/2 connections.
    pub connections: usize,
    /// The server's settled RSS before anything was opened.
    pub rss_before_kib: u64,
    /// Its settled RSS with every stream open.
    pub rss_after_kib: u64,
    /// `(after - before) / streams`, in bytes (connections included).
    pub bytes_per_stream: f64,
    /// From the first connection to the last stream answered.
    pub open_seconds: f64,
    /// Streams that failed to open, by gRPC code name (or `timeout`,
    /// `ended`, `unexpected_frame`, `mint`).
    pub errors: BTreeMap<String, u64>,
}

/// An open, idle stream: both halves kept so the server keeps it.
struct Idle {
    _tx: mpsc::Sender<ClientFrame>,
    _inbound: confab_tests::client::Inbound,
}

/// Opens the streams, reads the server's memory, closes them.
pub async fn run(opts: &IdleOpts) -> Result<IdleReport> {
    if opts.connections == 0 || opts.streams == 0 {
        bail!("streams and connections must be at least 1");
    }
    if let Some(soft) = nofile_soft_limit()? {
        if opts.connections as u64 + FD_HEADROOM > soft {
            bail!(
                "{} connections need about {} file descriptors, but this process's soft \
                 RLIMIT_NOFILE is {soft}: use fewer connections or raise it (ulimit -n)",
                opts.connections,
                opts.connections as u64 + FD_HEADROOM
            );
        }
    }
    let rss_before_kib = settled_rss(opts.server_pid).await;
    if rss_before_kib == 0 {
        bail!("cannot read the RSS of process {}", opts.server_pid);
    }
    let started = Instant::now();
    let endpoint = Channel::from_shared(format!("http://{}", opts.addr))
        .context("server uri")?
        .http2_adaptive_window(false);
    let channels: Vec<Channel> = futures::stream::iter(0..opts.connections)
        .map(|_| endpoint.connect())
        .buffer_unordered(OPEN_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .with_context(|| format!("connect to {}", opts.addr))?;

    let auth = Authenticator::new(&opts.secret);
    let websocket = opts.websocket;
    let results: Vec<Result<Idle, String>> = futures::stream::iter(0..opts.streams)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            let token = auth.mint(&format!("{}{i}", opts.user_prefix), 3600);
            async move {
                let token = token.map_err(|_| "mint".to_string())?;
                let opened = async {
                    match websocket {
                        Some(http) => open_websocket(http, &token).await,
                        None => open(channel, &token).await,
                    }
                };
                tokio::time::timeout(OPEN_TIMEOUT, opened)
                    .await
                    .unwrap_or_else(|_| Err("timeout".into()))
            }
        })
        .buffer_unordered(OPEN_CONCURRENCY)
        .collect()
        .await;
    let open_seconds = started.elapsed().as_secs_f64();
    let mut idle = Vec::with_capacity(results.len());
    let mut errors = BTreeMap::new();
    for r in results {
        match r {
            Ok(s) => idle.push(s),
            Err(e) => *errors.entry(e).or_insert(0) += 1,
        }
    }

    let rss_after_kib = settled_rss(opts.server_pid).await;
    let streams = idle.len();
    let bytes_per_stream = if streams == 0 {
        0.0
    } else {
        (rss_after_kib as f64 - rss_before_kib as f64) * 1024.0 / streams as f64
    };
    drop(idle);
    drop(channels);
    Ok(IdleReport {
        streams,
        connections: opts.connections,
        rss_before_kib,
        rss_after_kib,
        bytes_per_stream,
        open_seconds,
        errors,
    })
}

/// Opens one `Connect` stream with a ping and waits for the pong (the
/// session is registered then); an error is the name it is counted under.
async fn open(channel: Channel, token: &str) -> Result<Idle, String> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(ClientFrame {
        frame: Some(client_frame::Frame::Ping(Ping { nonce: 1 })),
    })
    .await
    .map_err(|_| "ended".to_string())?;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| "mint".to_string())?;
    req.metadata_mut().insert("authorization", bearer);
    let inbound = ChatClient::new(channel)
        .connect(req)
        .await
        .map_err(status_name)?
        .into_inner();
    answered(tx, Box::pin(inbound)).await
}

/// Opens one session over the WebSocket at `http` with a ping, as [`open`].
async fn open_websocket(http: SocketAddr, token: &str) -> Result<Idle, String> {
    let (tx, inbound) = confab_tests::ws::open(http, token)
        .await
        .map_err(status_name)?;
    tx.send(ClientFrame {
        frame: Some(client_frame::Frame::Ping(Ping { nonce: 1 })),
    })
    .await
    .map_err(|_| "ended".to_string())?;
    answered(tx, inbound).await
}

/// The session once its first frame, a ping, is answered with its pong.
async fn answered(
    tx: mpsc::Sender<ClientFrame>,
    mut inbound: confab_tests::client::Inbound,
) -> Result<Idle, String> {
    match inbound.next().await.transpose().map_err(status_name)? {
        Some(ServerFrame {
            frame: Some(server_frame::Frame::Pong(Pong { nonce: 1 })),
        }) => Ok(Idle {
            _tx: tx,
            _inbound: inbound,
        }),
        Some(_) => Err("unexpected_frame".into()),
        None => Err("ended".into()),
    }
}

/// The name a failed open is counted under: its gRPC code's.
fn status_name(s: tonic::Status) -> String {
    code_name(s.code()).to_string()
}

/// `pid`'s RSS once two readings 500 ms apart are within 1% (at most ~10 s
/// of polling; the last reading then).
async fn settled_rss(pid: u32) -> u64 {
    let mut last: Option<u64> = None;
    let settled = confab_tests::poll(
        "a settled RSS",
        Duration::from_secs(10),
        Duration::from_millis(500),
        || {
            let now = rss_kib(pid);
            let previous = last.replace(now);
            std::future::ready(Ok(previous
                .filter(|before| now.abs_diff(*before) * 100 <= *before)
                .map(|_| now)))
        },
    )
    .await;
    settled.unwrap_or_else(|_| rss_kib(pid))
}

/// This process's soft `RLIMIT_NOFILE` (`None`: unlimited).
fn nofile_soft_limit() -> Result<Option<u64>> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("read /proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| anyhow!("no 'Max open files' in /proc/self/limits"))?;
    match line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()
    {
        Some("unlimited") => Ok(None),
        Some(n) => Ok(Some(n.parse().with_context(|| format!("parse {line:?}"))?)),
        None => bail!("cannot parse {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_file_limit() {
        let soft = nofile_soft_limit().expect("readable");
        assert!(soft.is_none_or(|n| n > 0), "{soft:?}");
    }
}
