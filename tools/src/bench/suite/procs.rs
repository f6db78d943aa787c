//! The processes the suite measures beside the load generator: the echo
//! server, and the distributed stack (with the probe that says it is
//! ready).

use crate::bench::sibling_bin;
use anyhow::{anyhow, Context, Result};
use confab_tests::broker::Broker;
use confab_tests::stack::{ProcStack, Role};
use confab_tests::{free_port, DEADLINE};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Every binary the suite starts, each built beside `confab-bench` by
/// `make bench-build` (a test asks cargo what that target builds and
/// compares it with this list).
pub fn binaries() -> Vec<&'static str> {
    ["confab", "confab-bench"]
        .into_iter()
        .chain(Role::ALL.iter().map(|r| r.binary()))
        .collect()
}

/// Fails, before anything runs, when a binary the suite needs is not
/// beside this one.
pub(super) fn check_binaries() -> Result<()> {
    let missing: Vec<String> = binaries()
        .into_iter()
        .map(confab_tests::procs::built_bin)
        .filter(|path| !path.exists())
        .map(|path| path.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "missing: {}; `make bench` builds them (its build step alone: `make bench-build`)",
            missing.join(", ")
        ))
    }
}

/// Waits until a message sent through `gateway` is delivered: the
/// consumers have joined their groups and the router has attached.
pub(crate) async fn ready(gateway: SocketAddr) -> Result<()> {
    use confab_proto::v1::{server_frame, ConversationKind};
    let alice = confab_tests::User::connect(gateway, "bench-probe-a").await;
    let alice = &alice;
    let last_error = std::sync::Mutex::new(None::<anyhow::Error>);
    let last_error = &last_error;
    let mut attempt = 0;
    let delivered = confab_tests::poll(
        "a probe message delivered through the stack",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            attempt += 1;
            let attempt = attempt;
            async move {
                let tried: Result<()> = async {
                    let conv = alice
                        .create(ConversationKind::Direct, "probe", &["bench-probe-b"])
                        .await?;
                    let mut live = alice
                        .session(server_ping())
                        .await
                        .map_err(|s| anyhow!("open a stream: {s:?}"))?;
                    live.next_frame().await?;
                    let sent = alice
                        .send(&conv.id, &format!("probe-{attempt}"), "ready?")
                        .await?;
                    loop {
                        if let server_frame::Frame::Message(m) = live.next_frame().await? {
                            if m.seq == sent.seq {
                                return Ok(());
                            }
                        }
                    }
                }
                .await;
                Ok(match tried {
                    Ok(()) => Some(()),
                    Err(e) => {
                        if let Ok(mut last) = last_error.lock() {
                            *last = Some(e);
                        }
                        None
                    }
                })
            }
        },
    )
    .await;
    delivered.map_err(
        |timeout| match last_error.lock().ok().and_then(|mut l| l.take()) {
            Some(e) => e.context(timeout),
            None => timeout,
        },
    )
}

pub(super) fn server_ping() -> confab_proto::v1::client_frame::Frame {
    confab_proto::v1::client_frame::Frame::Ping(confab_proto::v1::Ping { nonce: 1 })
}

/// The echo server (`confab-bench echo-server`) as a child process.
pub(super) struct EchoProcess {
    child: Child,
    pub(super) addr: SocketAddr,
}

impl EchoProcess {
    pub(super) async fn start(log: &Path) -> Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let log = std::fs::File::create(log).context("echo log")?;
        let child = Command::new(sibling_bin("confab-bench"))
            .args(["echo-server", "--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start confab-bench echo-server")?;
        let mut me = Self { child, addr };
        let what = format!("the echo server to listen on {addr}");
        confab_tests::poll(&what, DEADLINE, Duration::from_millis(20), || {
            std::future::ready(match me.child.try_wait() {
                Ok(Some(status)) => Err(anyhow!("the echo server exited: {status}")),
                Err(e) => Err(e.into()),
                Ok(None) => Ok(std::net::TcpStream::connect(addr).ok().map(|_| ())),
            })
        })
        .await?;
        Ok(me)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One history, one router and one gateway as real processes, logging
/// warnings to `logs`.
pub(super) fn start_stack(broker: &Broker, database_url: &str, logs: &Path) -> ProcStack {
    start_stack_on(broker, database_url, logs, "")
}

/// [`start_stack`] on topics of its own (`run` in their prefix), its logs
/// in `logs/run` when `run` is not empty.
pub(super) fn start_stack_on(
    broker: &Broker,
    database_url: &str,
    logs: &Path,
    run: &str,
) -> ProcStack {
    let logs = if run.is_empty() {
        logs.to_path_buf()
    } else {
        logs.join(run)
    };
    let mut builder = ProcStack::builder("bench")
        .kafka_prefix(format!("bench{}{run}", std::process::id()))
        .log("warn")
        .log_dir(logs);
    for (key, value) in tuning() {
        builder = builder.env(&key, value);
    }
    builder.start(broker, database_url)
}

/// The latency settings set for the bench (`CONFAB_KAFKA_LINGER_MS=0.5
/// make bench`): its stack's services get them, and the broker's own runs
/// read the Kafka ones, so one setting is measured on both sides.
pub(super) fn tuning() -> Vec<(String, String)> {
    use confab_core::vars;
    [
        vars::KAFKA_LINGER_MS,
        vars::KAFKA_FETCH_WAIT_MS,
        vars::BATCH_LINGER_MS,
    ]
    .into_iter()
    .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
    .collect()
}

/// The services' processes to report on, gateway first.
pub(super) fn watch(stack: &ProcStack) -> Vec<(String, u32)> {
    [Role::Gateway, Role::Router, Role::History]
        .iter()
        .map(|role| stack.first(*role))
        .filter_map(|s| s.pid().map(|p| (s.label.clone(), p)))
        .collect()
}
