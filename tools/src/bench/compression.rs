//! Compressed answers through the gateway: the same `GetHistory` pages
//! read plain and in each encoding the servers answer in, in interleaved
//! rounds, with the bytes the client received per answer (counted on its
//! socket: HTTP/2 framing included) and the CPU time per call of the
//! gateway, history, PostgreSQL and the client (which decompresses).

use super::inbox::{cpu_ms_per_call, ticks_now};
use super::reads::{bearer, conversation_id, right_page, XorShift};
use super::{per_sec, Latency, Recorder};
use anyhow::{bail, ensure, Context, Result};
use confab_proto::v1::chat_client::ChatClient;
use confab_proto::v1::GetHistoryRequest;
use serde::Serialize;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint, Uri};

/// What to read.
#[derive(Debug, Clone)]
pub struct CompressionOpts {
    /// A gateway serving a database filled by `reads::generate`.
    pub gateway: SocketAddr,
    /// The gateway's `CONFAB_JWT_SECRET`.
    pub secret: String,
    /// The reader of the generated data.
    pub reader: String,
    /// Conversations read from (the first ones generated).
    pub conversations: u64,
    /// Messages every conversation has at least.
    pub rows_per_conversation: u64,
    /// Messages per page.
    pub page: u32,
    /// Recorded calls per run.
    pub requests: u64,
    /// Rounds of one run per encoding, interleaved.
    pub rounds: usize,
    /// Processes whose CPU time per call is reported, by label.
    pub watch: Vec<(String, super::inbox::Watched)>,
}

/// One run: `requests` pages in one encoding.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct CompressionRun {
    /// `identity` (none asked for), `gzip`, `zstd` or `deflate`.
    pub encoding: String,
    /// Bytes the client received per call, HTTP/2 framing included.
    pub bytes_per_call: f64,
    /// Calls per second, one at a time.
    pub per_sec: f64,
    /// Latency of a call.
    pub latency: Latency,
    /// CPU time per call (ms) of each watched process and of this client
    /// (`bench client`), in `watch` order.
    pub cpu_ms_per_call: Vec<(String, f64)>,
}

/// What [`measure`] saw.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct CompressionReport {
    /// Messages per page.
    pub page: u32,
    /// Every run, in the order run.
    pub runs: Vec<CompressionRun>,
}

/// A connection that counts the bytes it reads.
struct Counted {
    inner: TcpStream,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        this.read.fetch_add(got as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A channel to `addr` whose bytes read are added to `read`.
async fn counted_channel(addr: SocketAddr, read: Arc<AtomicU64>) -> Result<Channel> {
    let connector = tower::service_fn(move |_: Uri| {
        let read = read.clone();
        async move {
            let inner = TcpStream::connect(addr).await?;
            inner.set_nodelay(true)?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Counted { inner, read }))
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))
        .context("gateway uri")?
        .connect_with_connector(connector)
        .await
        .with_context(|| format!("connect to the gateway at {addr}"))
}

/// The encodings measured, `None` for none.
const ENCODINGS: [Option<CompressionEncoding>; 4] = [
    None,
    Some(CompressionEncoding::Gzip),
    Some(CompressionEncoding::Zstd),
    Some(CompressionEncoding::Deflate),
];

/// Pages read before a run is recorded.
const WARMUP: u64 = 50;

/// Reads the same pages in every encoding, `rounds` times over.
pub async fn measure(opts: &CompressionOpts) -> Result<CompressionReport> {
    if opts.conversations == 0 || opts.page == 0 || opts.requests == 0 {
        bail!("conversations, page and requests must be at least 1");
    }
    ensure!(
        opts.rows_per_conversation > u64::from(opts.page),
        "pages of {} need more rows per conversation than {}",
        opts.page,
        opts.rows_per_conversation
    );
    let auth = bearer(&opts.secret, &opts.reader)?;
    let mut watch = opts.watch.clone();
    watch.push((
        "bench client".into(),
        super::inbox::Watched::Processes(vec![std::process::id()]),
    ));
    let mut runs = Vec::new();
    for _ in 0..opts.rounds.max(1) {
        for encoding in ENCODINGS {
            let read = Arc::new(AtomicU64::new(0));
            let mut client = ChatClient::new(counted_channel(opts.gateway, read.clone()).await?);
            if let Some(encoding) = encoding {
                client = client.accept_compressed(encoding);
            }
            // The same pages for every encoding.
            let mut rng = XorShift::new(21);
            let mut latency = Recorder::new();
            let (mut started, mut ticks, mut bytes_before) = (Instant::now(), Vec::new(), 0);
            for i in 0..WARMUP + opts.requests {
                if i == WARMUP {
                    started = Instant::now();
                    ticks = ticks_now(&watch);
                    bytes_before = read.load(Ordering::Relaxed);
                }
                let before = u64::from(opts.page)
                    + 1
                    + rng.below(opts.rows_per_conversation - u64::from(opts.page));
                let mut req = tonic::Request::new(GetHistoryRequest {
                    conversation_id: conversation_id(rng.below(opts.conversations)),
                    before_seq: Some(before),
                    after_seq: None,
                    limit: opts.page,
                });
                req.metadata_mut().insert("authorization", auth.clone());
                let at = Instant::now();
                let page = client
                    .get_history(req)
                    .await
                    .context("a page")?
                    .into_inner();
                if i >= WARMUP {
                    latency.record(at.elapsed());
                }
                ensure!(
                    right_page(&page.messages, before, opts.page),
                    "a wrong page before seq {before}"
                );
            }
            let window = started.elapsed();
            let calls = opts.requests as f64;
            runs.push(CompressionRun {
                encoding: encoding.map_or("identity".to_string(), |e| e.to_string()),
                bytes_per_call: (read.load(Ordering::Relaxed) - bytes_before) as f64 / calls,
                per_sec: per_sec(opts.requests, window),
                latency: latency.summary(),
                cpu_ms_per_call: cpu_ms_per_call(&watch, &ticks, opts.requests),
            });
        }
    }
    Ok(CompressionReport {
        page: opts.page,
        runs,
    })
}
