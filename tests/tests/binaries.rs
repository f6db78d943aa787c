//! The service binaries as an operator runs them: a bad configuration is
//! refused with exit code 64 and a message naming the variable, flags
//! stand in for variables, and `confab-history migrate` prepares a database.

use confab_tests::postgres::PgCluster;
use std::path::PathBuf;
use std::process::{Command, Output};

fn bin(name: &str) -> PathBuf {
    let confab = confab_tests::confab_bin();
    let path = confab.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p {name}` (make test does)",
        path.display()
    );
    path
}

/// Runs `name` with only the given CONFAB_* variables set.
fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin(name));
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CONFAB_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run binary")
}

fn refused(out: &Output, names: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(64),
        "exit code 64 (EX_USAGE); stderr: {stderr}"
    );
    assert!(stderr.contains(names), "stderr names {names}: {stderr}");
}

#[test]
fn bad_configuration_exits_64_naming_the_variable() {
    refused(&run("confab-gateway", &[], &[]), "CONFAB_JWT_SECRET");
    refused(
        &run("confab-gateway", &[], &[("CONFAB_JWT_SECRET", "short")]),
        "at least 16 bytes",
    );
    refused(&run("confab-router", &[], &[]), "CONFAB_HISTORY_ADDRS");
    refused(
        &run(
            "confab-router",
            &[],
            &[
                ("CONFAB_HISTORY_ADDRS", "127.0.0.1:1"),
                ("CONFAB_KAFKA_PARTITIONS", "many"),
            ],
        ),
        "CONFAB_KAFKA_PARTITIONS",
    );
    refused(&run("confab-history", &[], &[]), "CONFAB_DATABASE_URL");
    // A secret never appears in the message.
    let out = run(
        "confab-gateway",
        &[],
        &[("CONFAB_JWT_SECRET", "tiny-secret")],
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("tiny-secret"));
}

#[test]
fn the_service_token_is_required_and_long_enough() {
    // Everything else settled, each service names the missing token last.
    let kafka = ("CONFAB_KAFKA_BROKERS", "127.0.0.1:1");
    let history = [("CONFAB_DATABASE_URL", "postgres://127.0.0.1:1/x"), kafka];
    let router = [("CONFAB_HISTORY_ADDRS", "127.0.0.1:1"), kafka];
    let gateway = [
        ("CONFAB_JWT_SECRET", "a-gateway-secret-of-enough-bytes"),
        ("CONFAB_HISTORY_ADDRS", "127.0.0.1:1"),
        ("CONFAB_ROUTER_ADDRS", "127.0.0.1:2"),
        ("CONFAB_GATEWAY_ID", "gw-1"),
        kafka,
    ];
    for (name, env) in [
        ("confab-history", &history[..]),
        ("confab-router", &router[..]),
        ("confab-gateway", &gateway[..]),
    ] {
        refused(&run(name, &[], env), "CONFAB_SERVICE_TOKEN");
        let short = "short-service-token-31-bytes-xx";
        let mut with_short = env.to_vec();
        with_short.push(("CONFAB_SERVICE_TOKEN", short));
        let out = run(name, &[], &with_short);
        refused(&out, "CONFAB_SERVICE_TOKEN");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("at least 32 bytes"), "{name}: {stderr}");
        // The token never appears in the message.
        assert!(!stderr.contains(short), "{name}: {stderr}");
    }
}

#[test]
fn a_flag_stands_in_for_its_variable() {
    // Without the variable the router refuses CONFAB_HISTORY_ADDRS; with the
    // flag, that is settled and the next bad value is the one reported.
    refused(
        &run("confab-router", &[], &[("CONFAB_KAFKA_PARTITIONS", "x")]),
        "CONFAB_HISTORY_ADDRS",
    );
    let out = run(
        "confab-router",
        &["--history-addrs", "127.0.0.1:1"],
        &[("CONFAB_KAFKA_PARTITIONS", "x")],
    );
    refused(&out, "CONFAB_KAFKA_PARTITIONS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_prepares_an_empty_database() {
    let pg = PgCluster::start().expect("postgres");
    let url = pg.fresh_database().await.expect("database");
    let out = run(
        "confab-history",
        &["migrate"],
        &[("CONFAB_DATABASE_URL", &url)],
    );
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Running it again is a no-op.
    let again = run("confab-history", &["--database-url", &url, "migrate"], &[]);
    assert!(
        again.status.success(),
        "migrate again: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("tables");
    for t in ["conversations", "members", "messages"] {
        assert!(tables.iter().any(|x| x == t), "{t} in {tables:?}");
    }
}

#[test]
fn a_bad_span_export_setting_exits_64_naming_it() {
    let router = [
        ("CONFAB_HISTORY_ADDRS", "127.0.0.1:1"),
        ("CONFAB_KAFKA_BROKERS", "127.0.0.1:1"),
        (
            "CONFAB_SERVICE_TOKEN",
            "confab-test-service-token-0123456789abcdef",
        ),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut env = router.to_vec();
        env.push(extra);
        env
    };
    for endpoint in [
        "https://collector:4317",
        "collector:4317",
        "http://collector",
    ] {
        refused(
            &run(
                "confab-router",
                &[],
                &with(("CONFAB_OTLP_ENDPOINT", endpoint)),
            ),
            "CONFAB_OTLP_ENDPOINT",
        );
    }
    let mut env = with(("CONFAB_OTLP_ENDPOINT", "http://127.0.0.1:4317"));
    env.push(("CONFAB_OTLP_FILTER", "confab=loudest"));
    refused(&run("confab-router", &[], &env), "CONFAB_OTLP_FILTER");
}
