//! The harness the integration and end-to-end tests share: start Confab on
//! port 0 (in-process, or the built binary as a real process), and typed
//! clients that act as one user each.

use anyhow::{anyhow, Context, Result};
use confab::dev::DevConfig;
use confab_auth::Authenticator;
use confab_proto::v1::chat_client::ChatClient;
use confab_proto::v1::*;
use served::Served;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

pub mod broker;
pub mod cluster;
pub mod http;
pub mod make_stack;
pub mod postgres;
pub mod procs;
pub mod served;
pub mod server;
pub mod stack;
pub mod topology;

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The secret every test server uses.
pub const SECRET: &str = "integration-test-secret-0123456789";

/// Initialises logging once per test process (quiet unless CONFAB_LOG is set).
pub fn init_tracing() {
    if std::env::var("CONFAB_LOG").is_ok() {
        confab_runtime::telemetry::init(false);
    }
}

/// Per-user limits high enough that no test hits them unless it means to:
/// most tests send as fast as they can as one user. Tests of the limits set
/// their own values on top.
pub const GENEROUS_LIMITS: &[(&str, &str)] = &[
    ("CONFAB_RATE_MESSAGES_PER_SEC", "1000000"),
    ("CONFAB_RATE_MESSAGES_BURST", "1000000"),
    ("CONFAB_MAX_STREAMS_PER_USER", "10000"),
    ("CONFAB_RATE_CONVERSATIONS_PER_MIN", "1000000"),
];

/// Gateway settings for test topologies: defaults, with `GENEROUS_LIMITS`.
pub fn test_gateway_config() -> confab_gateway::GatewayConfig {
    let env: HashMap<String, String> = GENEROUS_LIMITS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    confab_gateway::GatewayConfig::from_env(&env).expect("generous limits are valid")
}

/// A configuration for a test server with its data in `data_dir`.
pub fn test_config(data_dir: &Path, overrides: &[(&str, &str)]) -> DevConfig {
    let mut env: HashMap<String, String> = HashMap::new();
    for (k, v) in GENEROUS_LIMITS {
        env.insert(k.to_string(), v.to_string());
    }
    env.insert("CONFAB_JWT_SECRET".into(), SECRET.into());
    env.insert("CONFAB_DATA_DIR".into(), data_dir.display().to_string());
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    DevConfig::from_env(&env).expect("test config is valid")
}

/// Embedded mode running inside the test process on a free port.
pub struct Embedded {
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    /// The server.
    served: Served,
    /// Holds the data directory for the test's lifetime.
    _dir: tempfile::TempDir,
}

impl Embedded {
    /// Starts embedded mode with default settings.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts embedded mode with some `CONFAB_*` settings overridden.
    pub async fn start_with(overrides: &[(&str, &str)]) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(dir.path(), overrides);
        let served =
            Served::listen(|listener, signal| confab::dev::run(config, listener, signal)).await;
        Self {
            addr: served.addr(),
            served,
            _dir: dir,
        }
    }

    /// A client acting as `user`.
    pub async fn user(&self, user: &str) -> User {
        User::connect(self.addr, user).await
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(self) {
        self.served.stop("server").await;
    }
}

/// A signed token for `user` with the test secret.
pub fn token(user: &str) -> String {
    Authenticator::new(SECRET).mint(user, 3600).expect("mint")
}

/// One user's client.
#[derive(Clone)]
pub struct User {
    /// The user id.
    pub name: String,
    /// `Bearer <token>`.
    bearer: String,
    /// The gRPC client.
    pub client: ChatClient<Channel>,
}

impl User {
    /// Connects to `addr` as `name`.
    pub async fn connect(addr: SocketAddr, name: &str) -> Self {
        Self::with_token(addr, name, &token(name)).await
    }

    /// Connects to `addr` presenting `token` (which may be invalid).
    pub async fn with_token(addr: SocketAddr, name: &str, token: &str) -> Self {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        Self {
            name: name.to_string(),
            bearer: format!("Bearer {token}"),
            client: ChatClient::new(channel),
        }
    }

    /// A client acting as `name` over `channel` (e.g. one speaking TLS).
    pub fn over(channel: Channel, name: &str) -> Self {
        Self {
            name: name.to_string(),
            bearer: format!("Bearer {}", token(name)),
            client: ChatClient::new(channel),
        }
    }

    /// Wraps `msg` with this user's authorization metadata.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("authorization", self.bearer.parse().expect("ascii token"));
        r
    }

    /// One unary call: `call` on a clone of the client with `msg` and this
    /// user's authorization; the answer's message.
    async fn unary<Req, Resp, F, Fut>(&self, msg: Req, call: F) -> Result<Resp, Status>
    where
        F: FnOnce(ChatClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        Ok(call(self.client.clone(), self.req(msg)).await?.into_inner())
    }

    /// Creates a GROUP with `others` (and this user).
    pub async fn group(&self, title: &str, others: &[&str]) -> Conversation {
        self.create(ConversationKind::Group, title, others)
            .await
            .expect("create group")
    }

    /// Creates a conversation.
    pub async fn create(
        &self,
        kind: ConversationKind,
        title: &str,
        others: &[&str],
    ) -> Result<Conversation, Status> {
        let req = CreateConversationRequest {
            kind: kind as i32,
            title: title.into(),
            member_ids: others.iter().map(|s| s.to_string()).collect(),
        };
        self.unary(
            req,
            |mut c, r| async move { c.create_conversation(r).await },
        )
        .await
    }

    /// Creates a GROUP with `others` once the server can: retried while it
    /// answers UNAVAILABLE (a distributed stack whose consumer groups are
    /// still forming), for up to three [`DEADLINE`]s.
    pub async fn group_when_ready(&self, title: &str, others: &[&str]) -> Conversation {
        retry_unavailable("create a group", DEADLINE * 3, || {
            self.create(ConversationKind::Group, title, others)
        })
        .await
    }

    /// Sends until the outcome comes back: UNAVAILABLE means "not known
    /// yet", and retrying with the same key is the documented, safe thing
    /// to do (for up to three [`DEADLINE`]s).
    pub async fn send_until_acked(&self, conv: &str, client_msg_id: &str, body: &str) -> Message {
        retry_unavailable(&format!("send {client_msg_id}"), DEADLINE * 3, || {
            self.send(conv, client_msg_id, body)
        })
        .await
    }

    /// Sends a message; returns it with its seq.
    pub async fn send(
        &self,
        conv: &str,
        client_msg_id: &str,
        body: &str,
    ) -> Result<Message, Status> {
        let req = SendMessageRequest {
            conversation_id: conv.into(),
            client_msg_id: client_msg_id.into(),
            body: body.into(),
        };
        let resp = self
            .unary(req, |mut c, r| async move { c.send_message(r).await })
            .await?;
        resp.message
            .ok_or_else(|| Status::internal("response without message"))
    }

    /// Adds `members` to `conv`.
    pub async fn add_members(&self, conv: &str, members: &[&str]) -> Result<Conversation, Status> {
        let req = AddMembersRequest {
            conversation_id: conv.into(),
            member_ids: members.iter().map(|m| m.to_string()).collect(),
        };
        self.unary(req, |mut c, r| async move { c.add_members(r).await })
            .await
    }

    /// Removes `member` from `conv` (the user themself: leaves it).
    pub async fn remove_member(&self, conv: &str, member: &str) -> Result<Conversation, Status> {
        let req = RemoveMemberRequest {
            conversation_id: conv.into(),
            member_id: member.into(),
        };
        self.unary(req, |mut c, r| async move { c.remove_member(r).await })
            .await
    }

    /// The user's conversations.
    pub async fn list(&self) -> Result<ListConversationsResponse, Status> {
        self.unary(ListConversationsRequest {}, |mut c, r| async move {
            c.list_conversations(r).await
        })
        .await
    }

    /// A page of history.
    pub async fn history(
        &self,
        conv: &str,
        before: Option<u64>,
        after: Option<u64>,
        limit: u32,
    ) -> Result<GetHistoryResponse, Status> {
        let req = GetHistoryRequest {
            conversation_id: conv.into(),
            before_seq: before,
            after_seq: after,
            limit,
        };
        self.unary(req, |mut c, r| async move { c.get_history(r).await })
            .await
    }

    /// Every seq of a conversation, read oldest first through the API.
    pub async fn all_seqs(&self, conv: &str) -> Vec<u64> {
        self.try_all_seqs(conv).await.expect("history")
    }

    /// Every seq of a conversation, or the first error of a page.
    pub async fn try_all_seqs(&self, conv: &str) -> Result<Vec<u64>, Status> {
        let mut seqs = Vec::new();
        let mut after = 0;
        loop {
            let page = self.history(conv, None, Some(after), 500).await?;
            seqs.extend(page.messages.iter().map(|m| m.seq));
            after = seqs.last().copied().unwrap_or(0);
            if !page.has_more {
                return Ok(seqs);
            }
        }
    }

    /// Waits until the newest message of `conv` has a seq above `seq` (a
    /// failed read is "not yet"), for at most `within`.
    pub async fn wait_newest_above(&self, conv: &str, seq: u64, within: Duration) -> Result<()> {
        let what = format!("a message above seq {seq} in {conv}");
        poll(&what, within, Duration::from_millis(20), || async move {
            let page = self.history(conv, None, None, 1).await.ok();
            let newest = page.and_then(|p| p.messages.first().map(|m| m.seq));
            Ok((newest.unwrap_or(0) > seq).then_some(()))
        })
        .await
    }

    /// Opens a `Connect` session; `first` is sent as its first frame.
    pub async fn session(&self, first: client_frame::Frame) -> Result<Session, Status> {
        let (tx, rx) = mpsc::channel::<ClientFrame>(64);
        tx.send(ClientFrame { frame: Some(first) })
            .await
            .expect("queue first frame");
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let inbound = self
            .client
            .clone()
            .connect(self.req(stream))
            .await?
            .into_inner();
        Ok(Session { tx, inbound })
    }

    /// A live session that resumes nothing (first frame: ping), returned
    /// once the server has answered, so it is registered for live delivery.
    pub async fn live(&self) -> Session {
        let mut s = self
            .session(client_frame::Frame::Ping(Ping { nonce: 1 }))
            .await
            .expect("connect");
        let pong = s.next_frame().await.expect("pong");
        assert!(
            matches!(pong, server_frame::Frame::Pong(Pong { nonce: 1 })),
            "{pong:?}"
        );
        s
    }
}

/// An open `Connect` stream.
pub struct Session {
    /// Frames to the server.
    pub tx: mpsc::Sender<ClientFrame>,
    /// Frames from the server.
    pub inbound: Streaming<ServerFrame>,
}

impl Session {
    /// Sends a frame.
    pub async fn send(&self, frame: client_frame::Frame) {
        self.tx
            .send(ClientFrame { frame: Some(frame) })
            .await
            .expect("session open");
    }

    /// Sends a `send` frame: `body` to `conv` under `client_msg_id`.
    pub async fn send_text(&self, conv: &str, client_msg_id: &str, body: &str) {
        self.send(client_frame::Frame::Send(SendFrame {
            conversation_id: conv.into(),
            client_msg_id: client_msg_id.into(),
            body: body.into(),
        }))
        .await;
    }

    /// The next `ack` frame (other frames are skipped).
    pub async fn next_ack(&mut self) -> SendAck {
        loop {
            if let server_frame::Frame::Ack(a) = self.next_frame().await.expect("an ack") {
                return a;
            }
        }
    }

    /// The status the stream ends with (frames before it are skipped).
    pub async fn end_status(&mut self) -> Status {
        loop {
            if let Err(status) = self.next_or_status().await {
                return status;
            }
        }
    }

    /// The next frame, failing the test after `DEADLINE`.
    pub async fn next_frame(&mut self) -> Result<server_frame::Frame> {
        let next = tokio::time::timeout(DEADLINE, self.inbound.message())
            .await
            .map_err(|_| anyhow!("no frame within {DEADLINE:?}"))?;
        match next {
            Ok(Some(ServerFrame { frame: Some(f) })) => Ok(f),
            Ok(Some(ServerFrame { frame: None })) => Err(anyhow!("empty frame")),
            Ok(None) => Err(anyhow!("stream ended")),
            Err(status) => Err(anyhow!("stream failed: {status:?}")),
        }
    }

    /// The next frame or the status the stream ended with.
    pub async fn next_or_status(&mut self) -> Result<server_frame::Frame, Status> {
        match tokio::time::timeout(DEADLINE, self.inbound.message()).await {
            Err(_) => Err(Status::deadline_exceeded("test: no frame in time")),
            Ok(Ok(Some(ServerFrame { frame: Some(f) }))) => Ok(f),
            Ok(Ok(_)) => Err(Status::ok("stream ended")),
            Ok(Err(status)) => Err(status),
        }
    }

    /// Messages of `conv` until one with seq `until` arrives (other frames
    /// are returned separately), in arrival order.
    pub async fn messages_until(
        &mut self,
        conv: &str,
        until: u64,
    ) -> Result<(Vec<Message>, Vec<server_frame::Frame>)> {
        let mut messages = Vec::new();
        let mut others = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.next_frame())
                .await
                .map_err(|_| {
                    anyhow!(
                        "seq {until} of {conv} did not arrive; got {:?}",
                        seqs(&messages)
                    )
                })??;
            match frame {
                server_frame::Frame::Message(m) if m.conversation_id == conv => {
                    let done = m.seq >= until;
                    messages.push(m);
                    if done {
                        return Ok((messages, others));
                    }
                }
                other => others.push(other),
            }
        }
    }
}

/// A conversation of a test's (or a tool's) plan, and its members.
#[derive(Debug, Clone)]
pub struct Conv {
    /// Its id.
    pub id: String,
    /// Its members' user ids.
    pub members: Vec<String>,
}

/// Senders to one conversation that go on until a send fails (the server
/// died under them).
pub struct Writers(Vec<tokio::task::JoinHandle<Vec<(String, u64)>>>);

impl Writers {
    /// `n` writers sending `keep me` to `conv` as `user`, with keys
    /// `w<writer>-<i>`.
    pub fn start(user: &User, conv: &str, n: usize) -> Writers {
        Writers(
            (0..n)
                .map(|w| {
                    let (user, conv) = (user.clone(), conv.to_string());
                    tokio::spawn(async move {
                        let mut acked = Vec::new();
                        for i in 0.. {
                            let key = format!("w{w}-{i}");
                            match user.send(&conv, &key, "keep me").await {
                                Ok(m) => acked.push((key, m.seq)),
                                Err(_) => break,
                            }
                        }
                        acked
                    })
                })
                .collect(),
        )
    }

    /// Every `(client_msg_id, seq)` acknowledged, once every writer has
    /// stopped: at least `least` of them.
    pub async fn acked_at_least(self, least: usize) -> Vec<(String, u64)> {
        let mut all = Vec::new();
        for w in self.0 {
            all.extend(w.await.expect("writer"));
        }
        assert!(
            all.len() >= least,
            "only {} sends were acknowledged, not {least}",
            all.len()
        );
        all
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

/// The seqs of `messages`, in order.
pub fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Waits until `cond` holds, polling, or fails after [`DEADLINE`]; how long
/// it took.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, cond: F) -> Duration {
    wait_until_within(what, DEADLINE, cond).await
}

/// Waits until `cond` holds, polling every 20 ms, or fails ("timed out
/// waiting for `what`") once `within` has passed; how long it took.
pub async fn wait_until_within<F: FnMut() -> bool>(
    what: &str,
    within: Duration,
    mut cond: F,
) -> Duration {
    let started = Instant::now();
    poll(what, within, Duration::from_millis(20), || {
        std::future::ready(Ok(cond().then_some(())))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    started.elapsed()
}

/// `call()` again while it fails with UNAVAILABLE (consumer groups still
/// forming, or a write whose outcome did not come in time: retried with the
/// same `client_msg_id`, as clients are told to), for at most `within`; its
/// success. Any other error, or UNAVAILABLE after `within`, fails the test.
pub async fn retry_unavailable<T, F, Fut>(what: &str, within: Duration, call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    retry_unavailable_seeing(what, within, call, |_| {}).await
}

/// [`retry_unavailable`], showing each UNAVAILABLE it retried to `seen`.
pub async fn retry_unavailable_seeing<T, F, Fut>(
    what: &str,
    within: Duration,
    mut call: F,
    mut seen: impl FnMut(&Status),
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + within;
    loop {
        match call().await {
            Ok(v) => return v,
            Err(status)
                if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
            {
                seen(&status);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{what}: {status:?}"),
        }
    }
}

/// The one polling loop of the tests and the tools (bench, chaos): asks `probe` every
/// `every` until it yields a value, and fails ("timed out waiting for
/// `what`") once `within` has passed. An error from `probe` ends the wait
/// at once.
pub async fn poll<T, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(anyhow!("timed out waiting for {what} ({within:?})"));
        }
        tokio::time::sleep(every).await;
    }
}

/// The blocking form of [`poll`], for tests that run no async runtime:
/// checks `cond` every 50 ms until it holds (true) or `within` has passed
/// (false, for the caller to say what did not happen).
pub fn poll_blocking(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `confab` binary built next to the test executable (or `CONFAB_BIN`).
pub fn confab_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CONFAB_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // Tests run from `<profile>/deps/`, tools (confab-bench, confab-chaos)
    // from `<profile>/`.
    let beside = exe.with_file_name("confab");
    let bin = if beside.exists() {
        beside
    } else {
        exe.parent()
            .and_then(Path::parent)
            .expect("target profile dir")
            .join("confab")
    };
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p confab` first (make test does)",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `confab dev` running as a real child process; killed when dropped.
pub struct DevProcess {
    /// The process.
    child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
}

impl DevProcess {
    /// Starts the binary on `port` with its data in `data_dir`, and waits
    /// until it accepts connections.
    pub fn start(data_dir: &Path, port: u16) -> Result<Self> {
        Self::start_with(data_dir, port, &[], None)
    }

    /// [`DevProcess::start`] with `env` on top of the test secret and
    /// [`GENEROUS_LIMITS`] (inherited `CONFAB_*` variables are removed), its
    /// output to the file `log` (else stderr).
    pub fn start_with(
        data_dir: &Path,
        port: u16,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut cmd = Command::new(confab_bin());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CONFAB_")) {
            cmd.env_remove(k);
        }
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::File::create(path).context("log file")?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::inherit()),
        };
        let child = cmd
            .args(["dev", "--listen", &addr.to_string(), "--data-dir"])
            .arg(data_dir)
            .env("CONFAB_JWT_SECRET", SECRET)
            .envs(GENEROUS_LIMITS.iter().copied())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("spawn confab dev")?;
        let mut me = Self { child, addr };
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = me.child.try_wait()? {
                return Err(anyhow!("confab dev exited early: {status}"));
            }
            if Instant::now() > deadline {
                return Err(anyhow!("confab dev did not listen on {addr} in time"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    /// The process id (for its CPU time and memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM: a graceful stop, which [`DevProcess::exited`] then sees.
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM confab dev");
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("the state of confab dev")
    }

    /// `kill -9`: no shutdown handling at all.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
