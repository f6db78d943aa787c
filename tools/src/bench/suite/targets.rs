//! The targets of the performance issue, met or missed by what a run
//! measured.

use super::{LoadReport, SuiteOpts, SuiteReport};
use serde::{Deserialize, Serialize};

/// One target of the issue, as measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Target {
    pub name: String,
    /// The goal, in words.
    pub goal: String,
    /// What was measured, in words.
    pub measured: String,
    pub met: bool,
    /// The figure the target is judged on (a ratio, µs, ms, msg/s, bytes):
    /// with several rounds of load runs, the round whose figure is the
    /// median is the one reported.
    #[serde(default)]
    pub value: f64,
}

/// The targets against what was measured: each judged on the
/// round of load runs whose figure is the median (a target that rests on
/// no load run is the same in every round).
pub(super) fn targets(r: &SuiteReport, opts: &SuiteOpts) -> Vec<Target> {
    median_of(
        (0..r.rounds())
            .filter_map(|n| r.with_round(n))
            .map(|round| of_round(&round, opts))
            .collect(),
    )
}

/// Per target (by name, in the first round's order), the round whose
/// figure is the median (the lower one of an even count), with the spread
/// of the figure added to what it says.
pub(super) fn median_of(rounds: Vec<Vec<Target>>) -> Vec<Target> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|t| {
            let mut all: Vec<&Target> = rounds
                .iter()
                .filter_map(|r| r.iter().find(|x| x.name == t.name))
                .collect();
            all.sort_by(|a, b| a.value.total_cmp(&b.value));
            let mut median = all[(all.len() - 1) / 2].clone();
            let (min, max) = (all[0].value, all[all.len() - 1].value);
            if all.len() > 1 && min != max {
                median.measured = format!(
                    "{} [median of {} rounds; the figure judged: min {}, median {}, max {}]",
                    median.measured,
                    all.len(),
                    figure(min),
                    figure(median.value),
                    figure(max)
                );
            }
            median
        })
        .collect()
}

/// A figure with as many decimals as its size needs.
fn figure(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// The targets as one round of load runs (and everything else) measured
/// them.
fn of_round(r: &SuiteReport, opts: &SuiteOpts) -> Vec<Target> {
    let mut t = Vec::new();
    let find = |list: &[LoadReport], label: &str| list.iter().find(|x| x.label == label).cloned();
    if let (Some(echo), Some(emb)) = (&r.echo, find(&r.embedded, "embedded unary max")) {
        let ratio = emb.acked_per_sec / echo.acked_per_sec.max(1e-9);
        let connect = find(&r.embedded, "embedded connect max")
            .map(|c| c.acked_per_sec / echo.acked_per_sec.max(1e-9))
            .unwrap_or(0.0);
        t.push(Target {
            name: "embedded sends vs the gRPC ceiling".into(),
            goal: ">= 50% of the bare tonic echo server's calls/s".into(),
            measured: format!(
                "unary {:.0}/s = {:.0}% of echo {:.0}/s (Connect: {:.0}%)",
                emb.acked_per_sec,
                ratio * 100.0,
                echo.acked_per_sec,
                connect * 100.0
            ),
            value: ratio,
            met: ratio >= 0.5,
        });
    }
    if let (Some(grpc), Some(ws)) = (
        find(&r.embedded, "embedded connect max"),
        find(&r.embedded, "embedded websocket max"),
    ) {
        let ratio = ws.acked_per_sec / grpc.acked_per_sec.max(1e-9);
        t.push(Target {
            name: "sessions over WebSocket: messages/s".into(),
            goal: "within 10% of Connect's over gRPC (same clients, same run)".into(),
            measured: format!(
                "{:.0}/s over WebSocket, {:.0}/s over Connect: {:.0}%",
                ws.acked_per_sec,
                grpc.acked_per_sec,
                ratio * 100.0
            ),
            value: ratio,
            met: ratio >= 0.9,
        });
    }
    if let (Some(alone), Some(ws)) = (&r.embedded_idle_alone, &r.embedded_idle_websocket) {
        let ratio = ws.bytes_per_stream / alone.bytes_per_stream.max(1.0);
        let multiplexed = r
            .embedded_idle
            .as_ref()
            .map(|m| {
                format!(
                    "; {:.1} KiB per stream with {} streams on each connection",
                    m.bytes_per_stream / 1024.0,
                    m.streams / m.connections.max(1)
                )
            })
            .unwrap_or_default();
        t.push(Target {
            name: "idle sessions over WebSocket: memory".into(),
            goal: "within 10% of an idle Connect stream's RSS, each on its own connection as a client's session is".into(),
            measured: format!(
                "{:.1} KiB per WebSocket session, {:.1} KiB per Connect stream ({} of each, a connection each): {:.0}%{multiplexed}",
                ws.bytes_per_stream / 1024.0,
                alone.bytes_per_stream / 1024.0,
                ws.streams,
                ratio * 100.0
            ),
            value: ratio,
            met: ratio <= 1.1 && ws.errors.is_empty() && alone.errors.is_empty(),
        });
    }
    if let (Some(floor), Some(unloaded)) = (
        &r.broker_floor,
        find(&r.distributed, "distributed connect unloaded"),
    ) {
        // A message crosses the broker twice: gateway -> history, history
        // -> router.
        let twice = |us: u64| 2.0 * us.max(1) as f64;
        let p50 = unloaded.delivery.p50_us as f64 / twice(floor.produce_to_consume.p50_us);
        let p99 = unloaded.delivery.p99_us as f64 / twice(floor.produce_to_consume.p99_us);
        let ms = |us: u64| us as f64 / 1000.0;
        t.push(Target {
            name: "unloaded send->delivery vs the broker's floor".into(),
            goal: format!(
                "p50 <= 1.3x and p99 <= 1.5x of 2 x raw produce->consume (one record at a time, same broker and settings); distributed at {:.0} msg/s",
                opts.unloaded_rate
            ),
            measured: format!(
                "p50 {:.2} ms = {p50:.2}x of 2 x {:.2} ms, p99 {:.2} ms = {p99:.2}x of 2 x {:.2} ms",
                ms(unloaded.delivery.p50_us),
                ms(floor.produce_to_consume.p50_us),
                ms(unloaded.delivery.p99_us),
                ms(floor.produce_to_consume.p99_us),
            ),
            value: (p50 / 1.3).max(p99 / 1.5),
            met: p50 <= 1.3 && p99 <= 1.5 && unloaded.errors.is_empty(),
        });
    }
    if let Some(max) = find(&r.distributed, "distributed connect max") {
        let services = max.cpu_us_per_message(&["gateway", "router", "history"]);
        let others = |label: &str| {
            max.cpu_us_per_message(&[label])
                .map(|us| format!(", {label} {us:.0}"))
                .unwrap_or_default()
        };
        if let Some(us) = services {
            t.push(Target {
                name: "CPU per message, gateway + router + history".into(),
                goal: "<= 60 µs of CPU per message sent and delivered (distributed connect max)"
                    .into(),
                measured: format!(
                    "{us:.0} µs at {:.0} msg/s (beside them: {}{})",
                    max.acked_per_sec,
                    others("broker").trim_start_matches(", "),
                    others("PostgreSQL")
                ),
                value: us,
                met: us <= 60.0 && max.errors.is_empty(),
            });
        }
    }
    if let (Some(plain), Some(reading)) = (
        find(&r.embedded, "embedded connect max"),
        find(&r.embedded, "embedded connect max, 10% reading"),
    ) {
        let ratio = reading.acked_per_sec / plain.acked_per_sec.max(1e-9);
        t.push(Target {
            name: "sends with 10% of sessions reading".into(),
            goal: "10% of sessions send a read for every message they get: throughput within 15% of the run without".into(),
            measured: format!(
                "{:.0}/s with {} reads answered, {:.0}/s without: {:.0}%",
                reading.acked_per_sec,
                reading.reads_answered,
                plain.acked_per_sec,
                ratio * 100.0
            ),
            value: ratio,
            met: ratio >= 0.85 && reading.reads_answered > 0,
        });
    }
    if let (Some(plain), Some(flood)) = (
        find(&r.embedded, "embedded connect fixed rate"),
        find(
            &r.embedded,
            "embedded connect fixed rate, one user flooding typing",
        ),
    ) {
        let p99 = |x: &LoadReport| x.delivery.p99_us as f64 / 1000.0;
        t.push(Target {
            name: "messages during a typing flood".into(),
            goal: "one user sends typing frames as fast as its stream takes them: the others' delivery p99 within 25% (or 2 ms) of the run without".into(),
            measured: format!(
                "delivery p99 {:.2} ms with {} typing frames sent, {:.2} ms without",
                p99(&flood),
                flood.typing_frames,
                p99(&plain)
            ),
            value: p99(&flood),
            met: flood.typing_frames > 0
                && p99(&flood) <= (p99(&plain) * 1.25).max(p99(&plain) + 2.0),
        });
    }
    let best = r
        .distributed
        .iter()
        .filter(|x| x.target_rate.is_none())
        .max_by(|a, b| a.acked_per_sec.total_cmp(&b.acked_per_sec));
    if let Some(d) = best {
        let delivered_msgs = d.delivered_per_sec / d.fanout.max(1.0);
        t.push(Target {
            name: "distributed throughput".into(),
            goal: ">= 20000 messages/s sequenced and delivered".into(),
            measured: format!(
                "{}: {:.0} sequenced/s, {:.0} delivered/s ({:.0} deliveries/s at fanout {:.2})",
                d.label, d.acked_per_sec, delivered_msgs, d.delivered_per_sec, d.fanout
            ),
            value: d.acked_per_sec,
            met: d.acked_per_sec >= 20_000.0 && delivered_msgs >= 20_000.0,
        });
    }
    if let Some(d) = find(&r.distributed, "distributed connect fixed rate") {
        t.push(Target {
            name: "distributed latency".into(),
            goal: format!(
                "p99 send->delivery <= 25 ms at {:.0} messages/s",
                opts.latency_rate
            ),
            measured: format!(
                "p99 {:.2} ms at {:.0} acked/s (p50 {:.2} ms, max {:.2} ms)",
                d.delivery.p99_us as f64 / 1000.0,
                d.acked_per_sec,
                d.delivery.p50_us as f64 / 1000.0,
                d.delivery.max_us as f64 / 1000.0
            ),
            value: d.delivery.p99_us as f64,
            met: d.delivery.p99_us <= 25_000 && d.acked_per_sec >= opts.latency_rate * 0.95,
        });
    }
    for (name, idle) in [("embedded", &r.embedded_idle), ("gateway", &r.gateway_idle)] {
        if let Some(i) = idle {
            t.push(Target {
                name: format!("idle Connect streams ({name})"),
                goal: "<= 16 KiB RSS per idle stream".into(),
                measured: format!(
                    "{:.1} KiB per stream ({} streams over {} connections)",
                    i.bytes_per_stream / 1024.0,
                    i.streams,
                    i.connections
                ),
                value: i.bytes_per_stream,
                met: i.bytes_per_stream <= 16.0 * 1024.0 && i.errors.is_empty(),
            });
        }
    }
    if let (Some(reads), Some(table)) = (&r.history_reads, &r.history_table) {
        t.push(Target {
            name: "GetHistory".into(),
            goal: "p99 <= 2 ms for a 50-message page on a 10M-row table".into(),
            measured: format!(
                "p99 {:.2} ms (p50 {:.2} ms) on {} rows, one client{}",
                reads.latency.p99_us as f64 / 1000.0,
                reads.latency.p50_us as f64 / 1000.0,
                table.rows,
                r.history_reads_loaded
                    .as_ref()
                    .map(|l| format!(
                        "; p99 {:.2} ms with {} clients at once",
                        l.latency.p99_us as f64 / 1000.0,
                        l.concurrency
                    ))
                    .unwrap_or_default()
            ),
            value: reads.latency.p99_us as f64,
            met: reads.latency.p99_us <= 2_000 && table.rows >= 10_000_000,
        });
    }
    if !r.history_reads_changed.is_empty() {
        let p99 = |x: &super::ReadReport| x.latency.p99_us as f64 / 1000.0;
        let mut plain: Vec<f64> = r
            .history_reads_changed
            .iter()
            .map(|(p, _)| p99(p))
            .collect();
        let mut changed: Vec<f64> = r
            .history_reads_changed
            .iter()
            .map(|(_, c)| p99(c))
            .collect();
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
        };
        let (plain, changed) = (median(&mut plain), median(&mut changed));
        let ratio = changed / plain.max(1e-9);
        t.push(Target {
            name: "GetHistory, every message edited and reacted to".into(),
            goal: "p99 within 1.5x of a plain page's, same run".into(),
            measured: format!(
                "p99 {changed:.2} ms against {plain:.2} ms ({ratio:.2}x; medians of {} interleaved pairs)",
                r.history_reads_changed.len()
            ),
            value: ratio,
            met: ratio <= 1.5
                && r.history_reads_changed
                    .iter()
                    .all(|(p, c)| p.errors.is_empty() && c.errors.is_empty()),
        });
    }
    if let (Some(behind), Some(near), Some(table)) =
        (&r.inbox_behind, &r.inbox_near, &r.history_table)
    {
        let p99 = |i: &super::InboxReport| i.latency.p99_us as f64 / 1000.0;
        let ratio = p99(behind).max(p99(near)) / p99(behind).min(p99(near)).max(1e-9);
        t.push(Target {
            name: "ListConversations".into(),
            goal: "first page of 50 for a user in 1,000 conversations on 10M rows: p99 <= 10 ms, within 2x whatever the unread count".into(),
            measured: format!(
                "p99 {:.2} ms at {}+ unread each, {:.2} ms at {} each ({:.2}x), {} conversations",
                p99(behind),
                behind.min_unread,
                p99(near),
                near.min_unread,
                ratio,
                table.conversations
            ),
            value: p99(behind).max(p99(near)),
            met: p99(behind).max(p99(near)) <= 10.0
                && ratio <= 2.0
                && table.rows >= 10_000_000
                && table.conversations >= 1_000
                && behind.errors.is_empty()
                && near.errors.is_empty(),
        });
    }
    if let (Some(sync), Some(table)) = (&r.sync_after_changes, &r.history_table) {
        let p99 = sync.latency.p99_us as f64 / 1000.0;
        t.push(Target {
            name: "Sync".into(),
            goal: "from a cursor 1,000 changes behind, spread over 1,000 conversations: p99 <= 20 ms".into(),
            measured: format!(
                "p99 {p99:.2} ms (p50 {:.2} ms) for {} changed conversations in {} page(s), on {} rows",
                sync.latency.p50_us as f64 / 1000.0,
                sync.changes,
                sync.pages,
                table.rows
            ),
            value: p99,
            met: p99 <= 20.0
                && sync.changes >= 1_000
                && table.rows >= 10_000_000
                && sync.errors.is_empty(),
        });
    }
    if let (Some(search), Some(table)) = (&r.search, &r.history_table) {
        let ms = |us: u64| us as f64 / 1000.0;
        let slowest = search
            .classes
            .iter()
            .max_by_key(|c| c.latency.p99_us)
            .map(|c| {
                format!(
                    "; slowest kind: {} at p99 {:.2} ms",
                    c.class,
                    ms(c.latency.p99_us)
                )
            })
            .unwrap_or_default();
        t.push(Target {
            name: "SearchMessages".into(),
            goal: "p99 <= 30 ms for a user in 100 conversations, 10M rows".into(),
            measured: format!(
                "p99 {:.2} ms (p50 {:.2} ms) over {} searches of {} queries, a user in {} conversations ({} messages) of {} rows{}",
                ms(search.latency.p99_us),
                ms(search.latency.p50_us),
                search.requests,
                search.classes.iter().map(|c| c.queries.len()).sum::<usize>(),
                search.member_of,
                search.messages_in_scope,
                table.rows,
                slowest
            ),
            value: search.latency.p99_us as f64,
            met: search.latency.p99_us <= 30_000
                && search.member_of >= 100
                && table.rows >= 10_000_000
                && search.latency.count == search.requests
                && search.errors.is_empty(),
        });
    }
    if !r.ingest_search.is_empty() {
        let ratios: Vec<f64> = r
            .ingest_search
            .iter()
            .map(|(on, off)| on.sequenced_per_sec / off.sequenced_per_sec.max(1e-9))
            .collect();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let ratio = (sorted[(sorted.len() - 1) / 2] + sorted[sorted.len() / 2]) / 2.0;
        let rates = |pick: fn(&(super::IngestReport, super::IngestReport)) -> f64| {
            r.ingest_search
                .iter()
                .map(|p| format!("{:.0}", pick(p)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        t.push(Target {
            name: "ingest with search indexing".into(),
            goal: ">= 80% of ingest without it (CONFAB_SEARCH_INDEX=off), same run".into(),
            measured: format!(
                "{:.0}% (median of {} interleaved pairs: {}); on {}/s, off {}/s",
                ratio * 100.0,
                ratios.len(),
                ratios
                    .iter()
                    .map(|x| format!("{:.0}%", x * 100.0))
                    .collect::<Vec<_>>()
                    .join(", "),
                rates(|p| p.0.sequenced_per_sec),
                rates(|p| p.1.sequenced_per_sec),
            ),
            value: ratio,
            met: ratio >= 0.8,
        });
    }
    if let Some(u) = &r.user_stack {
        let idle = u.idle_percent();
        t.push(Target {
            name: "idle CPU of the whole make stack".into(),
            goal: "<= 15% of one core".into(),
            measured: u.idle_summary(),
            value: idle,
            met: idle <= 15.0 && !u.idle.is_empty(),
        });
        let ms = |us: u64| us as f64 / 1000.0;
        let steps = u
            .steps
            .iter()
            .map(|s| {
                format!(
                    "{:.0}/s: acked {:.0}/s, p50 {:.1} ms, p99 {:.1} ms{}",
                    s.target_rate.unwrap_or(0.0),
                    s.acked_per_sec,
                    ms(s.delivery.p50_us),
                    ms(s.delivery.p99_us),
                    if s.errors.is_empty() { "" } else { ", errors" }
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let rate = u.sustained_rate.unwrap_or(0.0);
        t.push(Target {
            name: "make stack sustained throughput".into(),
            goal: format!(
                ">= 2,000 msg/s with send->delivery p99 <= {:.0} ms",
                u.p99_limit_ms
            ),
            measured: format!("{rate:.0} msg/s held (steps: {steps})"),
            value: rate,
            met: rate >= 2000.0,
        });
    }
    if let (Some(ingest), Some(inserts)) = (&r.ingest, &r.inserts) {
        let ratio = ingest.sequenced_per_sec / inserts.rows_per_sec.max(1e-9);
        t.push(Target {
            name: "history ingest".into(),
            goal: ">= 70% of raw batched inserts".into(),
            measured: format!(
                "{:.0} sequenced/s = {:.0}% of {:.0} rows/s",
                ingest.sequenced_per_sec,
                ratio * 100.0,
                inserts.rows_per_sec
            ),
            value: ratio,
            met: ratio >= 0.7,
        });
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, value: f64, met: bool) -> Target {
        Target {
            name: name.into(),
            goal: "goal".into(),
            measured: format!("{value}"),
            met,
            value,
        }
    }

    #[test]
    fn each_target_is_judged_on_its_median_round_with_the_spread_shown() {
        let rounds = vec![
            vec![target("a", 0.40, false), target("same", 3.0, true)],
            vec![target("a", 0.55, true), target("same", 3.0, true)],
            vec![target("a", 0.30, false), target("same", 3.0, true)],
            vec![target("a", 0.60, true), target("same", 3.0, true)],
            vec![target("a", 0.52, true), target("same", 3.0, true)],
        ];
        let t = median_of(rounds);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "a");
        assert_eq!(t[0].value, 0.52);
        assert!(t[0].met, "the median round met it");
        assert_eq!(
            t[0].measured,
            "0.52 [median of 5 rounds; the figure judged: min 0.30, median 0.52, max 0.60]"
        );
        assert_eq!(t[1].measured, "3", "no spread, nothing added");
        // One round: as it is; an even count: the lower middle.
        assert_eq!(
            median_of(vec![vec![target("a", 1.0, true)]])[0].measured,
            "1"
        );
        let even = median_of(vec![
            vec![target("a", 2.0, true)],
            vec![target("a", 1.0, false)],
        ]);
        assert_eq!(even[0].value, 1.0);
        assert!(!even[0].met);
    }
}
