//! Promise 1 in distributed mode, like `durability.rs` for `confab dev`:
//! the real `confab-gateway`, `confab-router` and `confab-history` binaries
//! run as processes on a real broker and PostgreSQL; while senders run, all
//! three are killed with SIGKILL, then started again on the same storage.
//! Every acknowledged message must be in history under its seq, without
//! gaps, and retrying an acknowledged send must return its original seq.

use confab_tests::broker::Broker;
use confab_tests::postgres::PgCluster;
use confab_tests::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code;

/// One service binary running as a child process.
struct Service {
    /// Binary name.
    name: &'static str,
    /// Its environment.
    env: Vec<(String, String)>,
    /// Where it listens.
    addr: String,
    /// Its log file.
    log: PathBuf,
    /// The process, while running.
    child: Option<Child>,
}

impl Service {
    fn start(&mut self) {
        let bin = confab_bin().with_file_name(self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(&bin);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CONFAB_")) {
            cmd.env_remove(k);
        }
        let child = cmd
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("CONFAB_LISTEN", &self.addr)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE * 2;
        while std::net::TcpStream::connect(&self.addr).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "{} exited early ({status}); log:\n{}",
                    self.name,
                    self.tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen; log:\n{}",
                self.name,
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends until the outcome comes back: UNAVAILABLE means "not known yet",
/// and retrying with the same key is the documented, safe thing to do.
async fn send_until_acked(
    user: &User,
    conv: &str,
    key: &str,
    body: &str,
) -> confab_proto::v1::Message {
    let deadline = Instant::now() + DEADLINE * 3;
    loop {
        match user.send(conv, key, body).await {
            Ok(m) => return m,
            Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("send {key}: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_of_every_service() {
    let pg = PgCluster::start().expect("postgres");
    let database_url = pg.fresh_database().await.expect("database");
    let broker = Broker::start_postgres(&pg).await;
    let logs = tempfile::tempdir().expect("logs");
    let addr = |_: ()| format!("127.0.0.1:{}", free_port());
    let (history_addr, router_addr, gateway_addr) = (addr(()), addr(()), addr(()));
    let common = vec![
        ("CONFAB_KAFKA_BROKERS".to_string(), broker.bootstrap()),
        (
            "CONFAB_KAFKA_PREFIX".to_string(),
            format!("durable{}", std::process::id()),
        ),
        ("CONFAB_KAFKA_PARTITIONS".to_string(), "4".to_string()),
        ("CONFAB_HISTORY_ADDRS".to_string(), history_addr.clone()),
        ("CONFAB_LOG".to_string(), "info".to_string()),
        (
            "CONFAB_SERVICE_TOKEN".to_string(),
            confab_tests::topology::SERVICE_TOKEN.to_string(),
        ),
    ];
    let common: Vec<(String, String)> = common
        .into_iter()
        .chain(
            GENEROUS_LIMITS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .collect();
    let with = |extra: &[(&str, &str)]| {
        let mut env = common.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    };
    let mut services = [
        Service {
            name: "confab-history",
            env: with(&[("CONFAB_DATABASE_URL", &database_url)]),
            addr: history_addr,
            log: logs.path().join("history.log"),
            child: None,
        },
        Service {
            name: "confab-router",
            env: with(&[]),
            addr: router_addr.clone(),
            log: logs.path().join("router.log"),
            child: None,
        },
        Service {
            name: "confab-gateway",
            env: with(&[
                ("CONFAB_ROUTER_ADDRS", &router_addr),
                ("CONFAB_GATEWAY_ID", "gw-durable"),
                ("CONFAB_JWT_SECRET", SECRET),
                ("CONFAB_SEND_TIMEOUT_MS", "3000"),
            ]),
            addr: gateway_addr.clone(),
            log: logs.path().join("gateway.log"),
            child: None,
        },
    ];
    for s in services.iter_mut() {
        s.start();
    }
    let gateway: std::net::SocketAddr = gateway_addr.parse().expect("addr");
    let alice = User::connect(gateway, "alice").await;
    let conv = {
        let deadline = Instant::now() + DEADLINE * 3;
        loop {
            match alice
                .create(
                    confab_proto::v1::ConversationKind::Group,
                    "durable",
                    &["bob"],
                )
                .await
            {
                Ok(c) => break c,
                // Consumer groups may still be forming.
                Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {}
                Err(e) => panic!("create: {e:?}"),
            }
        }
    };
    // Writers send until the processes die under them; whatever was
    // acknowledged counts.
    let mut writers = Vec::new();
    for w in 0..4 {
        let (alice, id) = (alice.clone(), conv.id.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                let key = format!("w{w}-{i}");
                match alice.send(&id, &key, "keep me").await {
                    Ok(m) => acked.push((key, m.seq)),
                    Err(_) => return acked,
                }
            }
            acked
        }));
    }
    let deadline = Instant::now() + DEADLINE * 3;
    loop {
        let newest = alice
            .history(&conv.id, None, None, 1)
            .await
            .ok()
            .and_then(|p| p.messages.first().map(|m| m.seq));
        if newest.unwrap_or(0) > 60 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "messages were not committed in time; gateway log:\n{}",
            services[2].tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in services.iter_mut() {
        s.kill9();
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(
        acked.len() >= 40,
        "only {} sends were acknowledged",
        acked.len()
    );

    for s in services.iter_mut() {
        s.start();
    }
    let alice = User::connect(gateway, "alice").await;
    // Reads come back first; the acknowledged messages are all there.
    let stored = {
        let deadline = Instant::now() + DEADLINE * 2;
        loop {
            let mut seqs = Vec::new();
            let mut after = 0;
            let complete = loop {
                match alice.history(&conv.id, None, Some(after), 500).await {
                    Ok(page) => {
                        seqs.extend(page.messages.iter().map(|m| m.seq));
                        after = seqs.last().copied().unwrap_or(after);
                        if !page.has_more {
                            break true;
                        }
                    }
                    Err(_) => break false,
                }
            };
            if complete {
                break seqs;
            }
            assert!(
                Instant::now() < deadline,
                "history did not come back; log:\n{}",
                services[0].tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let set: std::collections::HashSet<u64> = stored.iter().copied().collect();
    for (key, seq) in &acked {
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
    // Retrying acknowledged sends returns their original seqs, and nothing new is stored.
    for (key, seq) in acked.iter().step_by(acked.len() / 3 + 1) {
        let again = send_until_acked(&alice, &conv.id, key, "keep me").await;
        assert_eq!(again.seq, *seq, "retry of {key}");
    }
    let next = send_until_acked(&alice, &conv.id, "after-restart", "hello again").await;
    assert!(
        next.seq > *stored.last().unwrap_or(&0),
        "the sequence continues after the crash"
    );
    // Records the broker accepted before the crash but history had not
    // sequenced yet (never acknowledged) may be sequenced after the restart:
    // that is allowed; a gap or a second copy is not.
    let all = alice.all_seqs(&conv.id).await;
    assert_eq!(
        all,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "gap-free after the restart"
    );
    assert!(all.contains(&next.seq));
    let page = alice
        .history(&conv.id, None, Some(0), 500)
        .await
        .expect("history");
    let mut keys: Vec<&str> = page
        .messages
        .iter()
        .map(|m| m.client_msg_id.as_str())
        .filter(|k| !k.is_empty())
        .collect();
    let before = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), before, "no client_msg_id is stored twice");
    drop(services);
}
