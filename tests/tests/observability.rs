//! The monitoring files against a real Prometheus scraping real services.
//!
//! - `promtool_accepts_the_rules_and_configs`: `promtool check rules` on
//!   `deploy/prometheus/alerts.yml`, `promtool test rules` on its unit tests
//!   (`alerts_test.yml`: each alert fires on the series it is meant for and
//!   stays quiet otherwise), and `promtool check config` on the compose
//!   stack's `deploy/prometheus/prometheus.yml`.
//! - `every_dashboard_and_alert_expression_returns_series`: PostgreSQL, a
//!   nisshi broker (memory storage), `confab-history`, `confab-router` and
//!   `confab-gateway` as processes, each serving metrics, and a
//!   `prometheus` scraping them every second under the job names of
//!   `make stack` and the compose file, with alerts.yml loaded. A little
//!   traffic goes through the gateway (a group, messages delivered live,
//!   reads, an unauthenticated call, a refused write, a stream over the
//!   per-user limit); then every PromQL expression of the Grafana dashboard
//!   and of the alert rules is evaluated with Prometheus's `/api/v1/query`.
//!   It fails if one is invalid, or still returns no series once Prometheus
//!   has had time to scrape (polled, up to [`SERIES_WAIT`]): no series
//!   means a metric name (or label) that the services do not export.
//! - `make_stack_prometheus_scrapes_every_service`: `make stack
//!   PROMETHEUS=1` in a temporary `CONFAB_STACK_DIR`; the configuration it
//!   wrote passes `promtool check config`, its Prometheus scrapes all three
//!   services and evaluates every rule, and `make stack-down` leaves no
//!   process behind, Prometheus included.
//!
//! Grafana's interval variables (`$__rate_interval`, `$__interval`,
//! `$__range`) are replaced by [`RATE_INTERVAL`]; any other `$` variable in
//! an expression fails the test. Alert expressions are evaluated as they
//! are (they must be valid; most return nothing while all is well), and
//! each alert's `# test:` lines in alerts.yml (the quantities it compares,
//! without thresholds) must return series; every metric an alert's
//! expression names must be named by one of its `# test:` lines. Prometheus
//! must also report every rule healthy after evaluating it.
//!
//! Needs `prometheus` and `promtool` on PATH (`make deps-test` installs
//! Debian's `prometheus` package), PostgreSQL and the nisshi broker (also
//! installed by the Makefile), and the service binaries (`cargo build -p
//! confab -p confab-gateway -p confab-router -p confab-history`, as `make
//! test` does). Nothing is installed here: a missing tool fails the test,
//! naming `make deps-test`.

use confab_proto::v1::{client_frame, Ping};
use confab_tests::http;
use confab_tests::make_stack::{repo_root, MakeStack};
use confab_tests::procs::{tail, ChildGuard};
use confab_tests::stack::{Backing, ProcStack, Role};
use confab_tests::{free_port, User};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DASHBOARD: &str = "deploy/grafana/dashboards/confab.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yml";
const COMPOSE_CONFIG: &str = "deploy/prometheus/prometheus.yml";
/// The scrape jobs the rules and the dashboard expect, one per service.
const JOBS: [&str; 3] = ["confab-history", "confab-router", "confab-gateway"];
/// What Grafana's `$__rate_interval` (and `$__interval`, `$__range`)
/// become: at least four scrapes of [`SCRAPE_INTERVAL`].
const RATE_INTERVAL: &str = "1m";
/// How often the tests' Prometheus scrapes and evaluates the rules.
const SCRAPE_INTERVAL: &str = "1s";
/// The per-user stream limit the gateway gets, so that one user's third
/// stream is refused (a rate-limit refusal to count).
const MAX_STREAMS: usize = 2;
/// How long expressions may return no series after the traffic: a few
/// scrapes, and rate windows with two samples after the traffic.
const SERIES_WAIT: Duration = Duration::from_secs(90);
/// How long Prometheus may take to start, scrape every target and evaluate
/// every rule once.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);
/// How long a service may take to become ready.
const READY_WAIT: Duration = Duration::from_secs(60);
/// How often a wait checks again.
const POLL: Duration = Duration::from_millis(200);
/// Lines of each log shown when something fails.
const LOG_TAIL: usize = 30;

#[test]
fn promtool_accepts_the_rules_and_configs() {
    let root = repo_root();
    let promtool = tool("promtool");
    run_ok(&root, &promtool, &["check", "rules", ALERTS]);
    run_ok(&root, &promtool, &["test", "rules", ALERTS_TEST]);
    run_ok(&root, &promtool, &["check", "config", COMPOSE_CONFIG]);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_and_alert_expression_returns_series() {
    let root = repo_root();
    let promtool = tool("promtool");
    let prometheus_bin = tool("prometheus");
    // Files that cannot be used fail here, before anything starts.
    let panels = dashboard_expressions(&root);
    let alerts = alert_tests(&root);

    let backing = Backing::start().await;
    let services = start_services(&backing).await;
    let prometheus = PrometheusProc::start(&root, &prometheus_bin, &services);
    run_ok(
        &root,
        &promtool,
        &["check", "config", &prometheus.config.to_string_lossy()],
    );
    let diagnostics = || format!("{}{}", services.tails(LOG_TAIL), prometheus.diagnostics());
    let prom = Prometheus {
        addr: prometheus.addr,
    };
    prom.wait_for_targets(&diagnostics).await;
    // Kept open while the expressions are evaluated: sessions online.
    let _sessions = traffic(services.gateway_addr(0)).await;
    check_rules(&prom, &alerts, &diagnostics).await;
    check_expressions(&prom, &panels, &alerts, &diagnostics).await;
}

#[test]
fn make_stack_prometheus_scrapes_every_service() {
    let root = repo_root();
    let promtool = tool("promtool");
    tool("prometheus");
    let alerts = alert_tests(&root);
    let prometheus = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let stack = MakeStack::up(
        &root,
        &["PROMETHEUS=1"],
        &[
            (
                "CONFAB_STACK_PROMETHEUS_PORT",
                prometheus.port().to_string(),
            ),
            ("CONFAB_STACK_SCRAPE_INTERVAL", SCRAPE_INTERVAL.to_string()),
        ],
    );
    let started = stack.started().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        started
            .processes
            .iter()
            .any(|(name, _)| name == "prometheus"),
        "`make stack PROMETHEUS=1` recorded no prometheus process in {}: {started:?}",
        stack.path.join("pids").display()
    );
    run_ok(
        &root,
        &promtool,
        &[
            "check",
            "config",
            &stack
                .path
                .join("prometheus/prometheus.yml")
                .to_string_lossy(),
        ],
    );
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let prom = Prometheus { addr: prometheus };
        let diagnostics = || stack.diagnostics();
        prom.wait_for_targets(&diagnostics).await;
        check_rules(&prom, &alerts, &diagnostics).await;
    });
    drop(runtime);
    stack.down();
}

// --- the files ------------------------------------------------------------

/// One expression to evaluate, and where it comes from.
#[derive(Debug, Clone)]
struct Expr {
    /// E.g. `panel "Consumer lag per partition", target B`.
    source: String,
    /// As written in the file.
    written: String,
    /// With Grafana's variables replaced.
    query: String,
}

/// Every target expression of the dashboard's panels (rows included), with
/// Grafana's interval variables replaced.
fn dashboard_expressions(root: &Path) -> Vec<Expr> {
    let path = root.join(DASHBOARD);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut out = Vec::new();
    collect_targets(&dashboard["panels"], &mut out);
    assert!(
        !out.is_empty(),
        "{DASHBOARD} has no panel target with an expr"
    );
    out
}

fn collect_targets(panels: &Value, out: &mut Vec<Expr>) {
    for panel in panels.as_array().map(Vec::as_slice).unwrap_or_default() {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let ref_id = target["refId"].as_str().unwrap_or("?");
            let source = format!("dashboard panel {title:?}, target {ref_id}");
            let written = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{source}: no expr"))
                .to_string();
            let query = grafana_variables(&written);
            assert!(
                !query.contains('$'),
                "{source}: {written:?} uses a variable other than $__rate_interval, $__interval \
                 or $__range, which this test cannot evaluate"
            );
            out.push(Expr {
                source,
                written,
                query,
            });
        }
        collect_targets(&panel["panels"], out);
    }
}

fn grafana_variables(expr: &str) -> String {
    let mut out = expr.to_string();
    for var in ["__rate_interval", "__interval", "__range"] {
        out = out
            .replace(&format!("${{{var}}}"), RATE_INTERVAL)
            .replace(&format!("${var}"), RATE_INTERVAL);
    }
    out
}

/// The `# test:` lines of each alert of alerts.yml, by alert name.
fn alert_tests(root: &Path) -> BTreeMap<String, Vec<String>> {
    let path = root.join(ALERTS);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut alerts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line
            .strip_prefix("- alert:")
            .or_else(|| line.strip_prefix("- record:"))
        {
            let name = name.trim().trim_matches('"').to_string();
            assert!(
                alerts.insert(name.clone(), Vec::new()).is_none(),
                "{ALERTS}:{}: rule {name} is there twice",
                n + 1
            );
            current = Some(name);
        } else if let Some(expr) = line.strip_prefix("# test:") {
            let name = current
                .as_ref()
                .unwrap_or_else(|| panic!("{ALERTS}:{}: a `# test:` line before any rule", n + 1));
            alerts
                .get_mut(name)
                .expect("registered")
                .push(expr.trim().to_string());
        }
    }
    assert!(!alerts.is_empty(), "{ALERTS} has no rule");
    for (name, tests) in &alerts {
        assert!(
            !tests.is_empty(),
            "{ALERTS}: alert {name} has no `# test:` line (see the comment at the top of the file)"
        );
    }
    alerts
}

/// The metric names an expression selects: identifiers outside strings,
/// label matchers, ranges and label lists that are neither functions,
/// aggregations nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Aggregations may have `by (...)` between their name and `(`.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let c: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Index after the string starting at `i`.
    let skip_string = |mut i: usize| {
        let quote = c[i];
        i += 1;
        while i < c.len() && c[i] != quote {
            if c[i] == '\\' && quote != '`' {
                i += 1;
            }
            i += 1;
        }
        i + 1
    };
    // Index after the bracket closing the one at `i` (strings skipped).
    let skip_group = |mut i: usize, close: char| {
        let open = c[i];
        let mut depth = 0;
        while i < c.len() {
            if c[i] == '"' || c[i] == '\'' || c[i] == '`' {
                i = skip_string(i);
                continue;
            }
            if c[i] == open {
                depth += 1;
            } else if c[i] == close {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            i += 1;
        }
        i
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(i);
        } else if ch == '{' {
            i = skip_group(i, '}');
        } else if ch == '[' {
            i = skip_group(i, ']');
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch.is_ascii_digit() || ch == '.' {
            // Numbers and durations (`0.99`, `1e3`, `10m`).
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let mut j = i;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            let call = j < c.len() && c[j] == '(';
            let lower = word.to_ascii_lowercase();
            if call && LABEL_LISTS.contains(&lower.as_str()) {
                i = skip_group(j, ')');
            } else if !call && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

// --- traffic ----------------------------------------------------------------

/// Sends messages through the gateway at `gateway` and makes a few calls
/// fail; returns the sessions it opened (live until dropped).
async fn traffic(gateway: SocketAddr) -> Vec<confab_tests::Session> {
    let alice = User::connect(gateway, "alice").await;
    let bob = User::connect(gateway, "bob").await;
    let carol = User::connect(gateway, "carol").await;
    let mut bob_live = bob.live().await;
    // The first write waits for the consumers to be assigned their
    // partitions: retried while it answers UNAVAILABLE.
    let conv = alice.group_when_ready("observability", &["bob"]).await;
    let mut last = 0;
    for i in 0..5 {
        let id = format!("obs-{i}");
        last = alice
            .send_until_acked(&conv.id, &id, "is chat healthy?")
            .await
            .seq;
    }
    // Delivered live to bob: end-to-end latency, deliveries, fan-out.
    bob_live
        .messages_until(&conv.id, last)
        .await
        .expect("bob receives the messages live");
    // Bob types: an indicator relayed to the other members.
    bob_live.typing(&conv.id, true).await;
    // Bob reads up to the last: a receipt, routed to every member.
    bob.mark_read(&conv.id, last, false)
        .await
        .expect("mark read");
    // Bob syncs: a first sync, then one from its cursor (unary), and one
    // on his stream.
    let first = bob.sync("", 0).await.expect("sync");
    bob.sync(&first.cursor, 0)
        .await
        .expect("sync from the cursor");
    let (_, caught_up) = bob_live.sync(&first.cursor).await;
    assert_eq!(caught_up.error, None);
    // Reads: through the gateway to history.
    alice.list().await.expect("list conversations");
    alice
        .history(&conv.id, None, None, 50)
        .await
        .expect("read history");
    // A bad token: UNAUTHENTICATED.
    let mallory = User::with_token(gateway, "mallory", "not-a-token").await;
    let refused = mallory.list().await.expect_err("a bad token is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // A write history refuses: carol is not a member.
    let refused = carol
        .send(&conv.id, "obs-intruder", "let me in")
        .await
        .expect_err("a non-member's send is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // One stream more than the per-user limit: refused at open.
    let mut sessions = vec![bob_live];
    for _ in 0..MAX_STREAMS {
        sessions.push(carol.live().await);
    }
    let over = match carol
        .session(client_frame::Frame::Ping(Ping { nonce: 7 }))
        .await
    {
        Err(status) => status,
        Ok(mut s) => s
            .next_or_status()
            .await
            .expect_err("a stream over the limit is refused"),
    };
    assert_eq!(
        over.code(),
        tonic::Code::ResourceExhausted,
        "stream {} of carol (CONFAB_MAX_STREAMS_PER_USER={MAX_STREAMS}): {over:?}",
        MAX_STREAMS + 1
    );
    sessions
}

// --- Prometheus -------------------------------------------------------------

/// Prometheus's HTTP API.
struct Prometheus {
    addr: SocketAddr,
}

/// What a query returned.
#[derive(Debug)]
enum Answer {
    /// This many series (or 1 for a scalar or string).
    Series(usize),
    /// Prometheus refused the query.
    Invalid(String),
}

impl Prometheus {
    async fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http::get(self.addr, path).await
    }

    /// `GET path`, its body as JSON (API errors included).
    async fn api(&self, path: &str) -> Value {
        let (status, body) = self
            .get(path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} on Prometheus at {}: {e}", self.addr));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: HTTP {status}, not JSON ({e}): {body}"))
    }

    /// Evaluates `query` now.
    async fn query(&self, query: &str) -> Answer {
        let answer = self
            .api(&format!("/api/v1/query?query={}", percent_encode(query)))
            .await;
        if answer["status"] != "success" {
            return Answer::Invalid(format!(
                "{}: {}",
                answer["errorType"].as_str().unwrap_or("error"),
                answer["error"].as_str().unwrap_or("(no message)")
            ));
        }
        let data = &answer["data"];
        match data["resultType"].as_str() {
            Some("vector" | "matrix") => {
                Answer::Series(data["result"].as_array().map_or(0, Vec::len))
            }
            Some("scalar" | "string") => Answer::Series(1),
            other => Answer::Invalid(format!("unexpected result type {other:?}: {data}")),
        }
    }

    /// The jobs of the scrape targets that are up.
    async fn jobs_up(&self) -> BTreeSet<String> {
        let answer = self.api("/api/v1/query?query=up%20%3D%3D%201").await;
        answer["data"]["result"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["metric"]["job"].as_str().map(String::from))
            .collect()
    }

    /// Waits until Prometheus scrapes all three services successfully.
    async fn wait_for_targets(&self, diagnostics: &dyn Fn() -> String) {
        let want: BTreeSet<String> = JOBS.into_iter().map(String::from).collect();
        let deadline = Instant::now() + PROMETHEUS_WAIT;
        loop {
            let up = match self.get("/-/ready").await {
                Ok((200, _)) => self.jobs_up().await,
                _ => BTreeSet::new(),
            };
            if want.is_subset(&up) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus at {} does not scrape every service within {PROMETHEUS_WAIT:?}: jobs up {up:?}, \
                 want {want:?}; its targets: {}\n{}",
                self.addr,
                self.api("/api/v1/targets").await["data"]["activeTargets"],
                diagnostics()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every metric name Prometheus has series of.
    async fn names(&self) -> BTreeSet<String> {
        self.api("/api/v1/label/__name__/values").await["data"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every rule of every group of an `/api/v1/rules` answer.
fn rules_of(answer: &Value) -> impl Iterator<Item = &Value> {
    list(&answer["data"]["groups"])
        .iter()
        .flat_map(|group| list(&group["rules"]))
}

/// The elements of a JSON array (none for anything else).
fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The rules Prometheus loaded are exactly the ones of alerts.yml, and each
/// is healthy once evaluated.
async fn check_rules(
    prom: &Prometheus,
    alerts: &BTreeMap<String, Vec<String>>,
    diagnostics: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    loop {
        let answer = prom.api("/api/v1/rules").await;
        let mut loaded = BTreeMap::new();
        for rule in rules_of(&answer) {
            let name = rule["name"].as_str().unwrap_or("?").to_string();
            let health = rule["health"].as_str().unwrap_or("?").to_string();
            let error = rule["lastError"].as_str().unwrap_or("").to_string();
            loaded.insert(name, (health, error));
        }
        let names: BTreeSet<&String> = loaded.keys().collect();
        let want: BTreeSet<&String> = alerts.keys().collect();
        assert_eq!(
            names,
            want,
            "the rules Prometheus loaded are not those of {ALERTS}\n{}",
            diagnostics()
        );
        let bad: Vec<String> = loaded
            .iter()
            .filter(|(_, (health, _))| health == "err")
            .map(|(name, (_, error))| format!("{name}: {error}"))
            .collect();
        assert!(
            bad.is_empty(),
            "Prometheus fails to evaluate these rules of {ALERTS}:\n{}",
            bad.join("\n")
        );
        if loaded.values().all(|(health, _)| health == "ok") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not evaluate every rule within {PROMETHEUS_WAIT:?}: {loaded:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Every dashboard expression and every alert's `# test:` expression
/// returns series (polled until [`SERIES_WAIT`]); every alert expression is
/// valid; every metric an alert names is named by one of its `# test:`
/// lines.
async fn check_expressions(
    prom: &Prometheus,
    panels: &[Expr],
    alerts: &BTreeMap<String, Vec<String>>,
    diagnostics: &dyn Fn() -> String,
) {
    // The alerts' own expressions, as Prometheus parsed them.
    let rules = prom.api("/api/v1/rules").await;
    let mut alert_exprs = BTreeMap::new();
    for rule in rules_of(&rules) {
        let name = rule["name"].as_str().unwrap_or("?").to_string();
        let query = rule["query"].as_str().unwrap_or("").to_string();
        alert_exprs.insert(name, query);
    }
    let mut must_have_series: Vec<Expr> = panels.to_vec();
    let mut invalid = Vec::new();
    for (name, tests) in alerts {
        let query = alert_exprs.get(name).cloned().unwrap_or_default();
        // Recording rules must return series themselves.
        let recording =
            rules_of(&rules).any(|r| r["name"] == name.as_str() && r["type"] == "recording");
        if recording {
            must_have_series.push(Expr {
                source: format!("recording rule {name}"),
                written: query.clone(),
                query: query.clone(),
            });
        } else if let Answer::Invalid(e) = prom.query(&query).await {
            invalid.push(format!("alert {name}: {query}\n    {e}"));
        }
        let tested: BTreeSet<String> = tests.iter().flat_map(|t| metric_names(t)).collect();
        let untested: Vec<String> = metric_names(&query)
            .into_iter()
            .filter(|m| !tested.contains(m))
            .collect();
        assert!(
            untested.is_empty(),
            "{ALERTS}: alert {name} uses {untested:?}, which none of its `# test:` lines names"
        );
        for (i, t) in tests.iter().enumerate() {
            must_have_series.push(Expr {
                source: format!("alert {name}, `# test:` line {}", i + 1),
                written: t.clone(),
                query: t.clone(),
            });
        }
    }

    let deadline = Instant::now() + SERIES_WAIT;
    loop {
        let mut empty = Vec::new();
        for e in &must_have_series {
            match prom.query(&e.query).await {
                Answer::Series(0) => empty.push(e),
                Answer::Series(_) => {}
                Answer::Invalid(err) => {
                    invalid.push(format!("{}: {}\n    {err}", e.source, e.written))
                }
            }
        }
        assert!(
            invalid.is_empty(),
            "Prometheus refuses these expressions:\n{}",
            invalid.join("\n")
        );
        if empty.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let known = prom.names().await;
            let report: Vec<String> = empty
                .iter()
                .map(|e| {
                    let missing: Vec<String> = metric_names(&e.query)
                        .into_iter()
                        .filter(|m| !known.contains(m))
                        .collect();
                    let why = if missing.is_empty() {
                        "every metric it names has series: check its labels and matchers"
                            .to_string()
                    } else {
                        format!("no series at all of {missing:?}")
                    };
                    format!("{}: {}\n    {why}", e.source, e.written)
                })
                .collect();
            panic!(
                "{} of {} expressions still return no series {SERIES_WAIT:?} after the traffic \
                 (a metric the services do not export, or a wrong label):\n{}\n\
                 metric names Prometheus has: {known:?}\n{}",
                empty.len(),
                must_have_series.len(),
                report.join("\n"),
                diagnostics()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

// --- services and Prometheus as processes ---------------------------------

/// History, router and gateway as processes on one broker and database,
/// each serving metrics (in the order of [`JOBS`]), the gateway with
/// [`MAX_STREAMS`]; returned once each is ready.
async fn start_services(backing: &Backing) -> ProcStack {
    let services = ProcStack::builder("observability")
        .partitions(2)
        .metrics()
        .env_for(
            Role::Gateway,
            "CONFAB_MAX_STREAMS_PER_USER",
            MAX_STREAMS.to_string(),
        )
        .start(&backing.broker, &backing.database_url);
    services.wait_ready(READY_WAIT).await;
    services
}

/// A `prometheus` process scraping the services every [`SCRAPE_INTERVAL`]
/// with the alert rules loaded, its configuration and data in a temporary
/// directory; killed on drop.
struct PrometheusProc {
    addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    _process: ChildGuard,
    _dir: tempfile::TempDir,
}

impl PrometheusProc {
    fn start(root: &Path, bin: &Path, services: &ProcStack) -> PrometheusProc {
        let dir = tempfile::Builder::new()
            .prefix("confab-prometheus-")
            .tempdir()
            .expect("prometheus directory");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n\
             rule_files:\n  - \"{}\"\nscrape_configs:\n",
            root.join(ALERTS).display()
        );
        for (job, p) in JOBS.iter().zip(services.all()) {
            let target = p.metrics_addr();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        fs::write(&config_path, config).expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let out = File::create(&log).expect("prometheus log");
        let err = out.try_clone().expect("prometheus log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        PrometheusProc {
            addr,
            config: config_path,
            log,
            _process: ChildGuard::group_leader(child),
            _dir: dir,
        }
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- last lines of prometheus's log ---\n{}\n",
            tail(&self.log, LOG_TAIL)
        )
    }
}

// --- tools and processes ----------------------------------------------------

/// `name` on PATH; fails the test, naming `make deps-test`, when missing.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH: run `make deps-test` (it installs Debian's prometheus \
                 package, with prometheus and promtool), or `make test`, which does"
            )
        })
}

/// Runs `program args` in `dir`; fails the test with its output unless it
/// succeeds.
fn run_ok(dir: &Path, program: &Path, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "`{} {}` failed ({}):\n{}{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn metric_names_skips_functions_labels_and_keywords() {
        let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
        assert_eq!(
            names(
                r#"histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{code=~"X|Y"}[5m])))"#
            ),
            ["a_bucket"]
        );
        assert_eq!(
            names("sum(x == bool 2) and on (group) y offset 10m unless up"),
            ["up", "x", "y"]
        );
        assert_eq!(
            names("max by (job, instance) (state) == 2 or sum without (a) (b)"),
            ["b", "state"]
        );
        assert_eq!(
            names("min_over_time((max by (group, partition) (lag))[10m:30s]) > 0"),
            ["lag"]
        );
        assert_eq!(names(r#"vector(0) or z{a="}{"}"#), ["z"]);
    }

    #[test]
    fn grafana_intervals_are_replaced() {
        assert_eq!(
            grafana_variables("rate(x[$__rate_interval]) + rate(y[${__interval}])"),
            format!("rate(x[{RATE_INTERVAL}]) + rate(y[{RATE_INTERVAL}])")
        );
    }
}
