//! The suite's report as the table `make bench` prints.

use super::SuiteReport;
use crate::bench::user_stack::UserStackReport;

/// `f` of each round's figure, joined with " / ".
fn per_round<T>(rounds: &[&T], f: impl Fn(&T) -> String) -> String {
    rounds.iter().map(|x| f(x)).collect::<Vec<_>>().join(" / ")
}

/// The report as a table.
pub fn table(r: &SuiteReport) -> String {
    let m = &r.machine;
    let mut s = format!(
        "Confab benchmark: {} ({} cores, {} GiB), Linux {}, {} build, {:.0} s\n\n",
        m.cpu_model,
        m.cores,
        m.memory_gib,
        m.kernel,
        if m.release_build { "release" } else { "DEBUG" },
        r.seconds
    );
    s.push_str(&format!(
        "{:<32} {:>10} {:>10} {:>12} {:>30} {:>30}\n",
        "run",
        "sent/s",
        "acked/s",
        "delivered/s",
        "ack p50/p90/p99/p99.9/max",
        "delivery p50/p90/p99/p99.9/max"
    ));
    let stack_steps = r.user_stack.iter().flat_map(|u| &u.steps);
    for l in r
        .echo
        .iter()
        .chain(&r.embedded)
        .chain(&r.distributed)
        .chain(stack_steps)
    {
        s.push_str(&format!(
            "{:<32} {:>10.0} {:>10.0} {:>12.0} {:>30} {:>30}\n",
            l.label,
            l.sent_per_sec,
            l.acked_per_sec,
            l.delivered_per_sec,
            l.ack.brief(),
            l.delivery.brief()
        ));
        if l.target_rate.is_none() && l.clients > 0 {
            // A closed loop: its latency is queueing behind its own sends;
            // the fixed-rate rows' latency is the latency.
            s.push_str(&format!(
                "{:<32}   closed loop: {} sends outstanding at most ({} per client); read latency from the fixed-rate rows\n",
                "",
                l.in_flight * l.senders,
                l.in_flight
            ));
        }
        let errors: u64 = l.errors.values().sum();
        if errors > 0 {
            s.push_str(&format!("{:<32} errors: {:?}\n", "", l.errors));
        }
        for (p, c) in l.processes.iter().zip(&l.cpu_per_message) {
            s.push_str(&format!(
                "{:<32}   {}: {:.2} cores, {:.1} µs CPU per message ({:.1} per delivery), RSS {} MiB\n",
                "",
                p.label,
                p.cores,
                c.per_message_us,
                c.per_delivery_us,
                p.rss_kib / 1024
            ));
        }
    }
    if !r.later_rounds.is_empty() {
        s.push_str(
            "\nEvery round of the load runs (above: the first), acked/s and send->delivery p99 in ms, round by round:\n",
        );
        let rounds: Vec<super::LoadRound> = (0..r.rounds()).filter_map(|n| r.round(n)).collect();
        for l in r.echo.iter().chain(&r.embedded).chain(&r.distributed) {
            let same: Vec<&super::LoadReport> = rounds
                .iter()
                .filter_map(|round| {
                    round
                        .echo
                        .iter()
                        .chain(&round.embedded)
                        .chain(&round.distributed)
                        .find(|x| x.label == l.label)
                })
                .collect();
            s.push_str(&format!(
                "{:<32} acked/s {}; p99 {}\n",
                l.label,
                per_round(&same, |x| format!("{:.0}", x.acked_per_sec)),
                per_round(&same, |x| format!(
                    "{:.2}",
                    x.delivery.p99_us as f64 / 1000.0
                )),
            ));
        }
        let stacks: Vec<&UserStackReport> = rounds
            .iter()
            .filter_map(|r| r.user_stack.as_ref())
            .collect();
        if !stacks.is_empty() {
            s.push_str(&format!(
                "{:<32} idle % of a core {}; held msg/s {}\n",
                "make stack",
                per_round(&stacks, |u| format!("{:.1}", u.idle_percent())),
                per_round(&stacks, |u| format!(
                    "{:.0}",
                    u.sustained_rate.unwrap_or(0.0)
                )),
            ));
        }
    }
    if let Some(u) = &r.user_stack {
        s.push_str(&format!("\nmake stack idle: {}\n", u.idle_summary()));
    }
    if let Some(k) = &r.kafka {
        s.push_str(&format!(
            "\nKafka ceiling: {} x {} B: produced {:.0}/s, consumed {:.0}/s; produce->ack {}; produce->consume {}\n",
            k.messages, k.payload_bytes, k.produced_per_sec, k.consumed_per_sec, k.produce_ack.brief(), k.produce_to_consume.brief()
        ));
    }
    if let Some(k) = &r.broker_floor {
        s.push_str(&format!(
            "Broker floor: {} x {} B one at a time: produce->ack {}; produce->consume {}\n",
            k.messages,
            k.payload_bytes,
            k.produce_ack.brief(),
            k.produce_to_consume.brief()
        ));
    }
    if let Some(i) = &r.inserts {
        s.push_str(&format!(
            "Database ceiling: {} rows in batches of {} by {} writers: {:.0} rows/s; batch {}\n",
            i.rows,
            i.batch,
            i.writers,
            i.rows_per_sec,
            i.batch_latency.brief()
        ));
    }
    if let Some(i) = &r.ingest {
        s.push_str(&format!(
            "History ingest: {} messages over {} conversations: {:.0}/s (history {:.2} cores)\n",
            i.messages, i.conversations, i.sequenced_per_sec, i.history.cores
        ));
    }
    for (n, (on, off)) in r.ingest_search.iter().enumerate() {
        let cpu = |i: &super::IngestReport| {
            format!(
                "history {:.1}{}",
                i.history_us_per_message(),
                i.postgres_us_per_message()
                    .map(|us| format!(", PostgreSQL {us:.1}"))
                    .unwrap_or_default()
            )
        };
        s.push_str(&format!(
            "History ingest, pair {}: search indexing on {:.0}/s, off {:.0}/s ({:.0}%); CPU us per message on: {}; off: {}\n",
            n + 1,
            on.sequenced_per_sec,
            off.sequenced_per_sec,
            on.sequenced_per_sec / off.sequenced_per_sec.max(1e-9) * 100.0,
            cpu(on),
            cpu(off)
        ));
    }
    if let Some(g) = &r.history_table {
        s.push_str(&format!(
            "GetHistory: {} rows ({} MiB, search index {} MiB, bodies {:.0} bytes on average) over {} conversations, generated in {:.0} s\n",
            g.rows,
            g.table_bytes >> 20,
            g.search_index_bytes >> 20,
            g.mean_body_bytes,
            g.conversations,
            g.seconds,
        ));
    }
    for h in r.history_reads.iter().chain(&r.history_reads_loaded) {
        s.push_str(&format!(
            "GetHistory, {} client(s): {} pages of {}: {:.0}/s, {}\n",
            h.concurrency,
            h.requests,
            h.page,
            h.per_sec,
            h.latency.brief()
        ));
    }
    for (plain, changed) in &r.history_reads_changed {
        s.push_str(&format!(
            "GetHistory, plain pages: {}; every message edited and reacted to: {}\n",
            plain.latency.brief(),
            changed.latency.brief()
        ));
    }
    for i in r.inbox_behind.iter().chain(&r.inbox_near) {
        s.push_str(&format!(
            "ListConversations, first page of {}, {}+ unread each: {} calls: {:.0}/s, {}\n",
            i.page,
            i.min_unread,
            i.requests,
            i.per_sec,
            i.latency.brief()
        ));
    }
    if let Some(sync) = &r.sync_after_changes {
        s.push_str(&format!(
            "Sync from a cursor {} changes behind ({} page(s)): {} syncs: {:.0}/s, {}\n",
            sync.changes,
            sync.pages,
            sync.requests,
            sync.per_sec,
            sync.latency.brief()
        ));
        if !sync.cpu_ms_per_sync.is_empty() {
            let cpu: Vec<String> = sync
                .cpu_ms_per_sync
                .iter()
                .map(|(label, ms)| format!("{label} {ms:.1}"))
                .collect();
            s.push_str(&format!(
                "  CPU ms per sync: {}
",
                cpu.join(", ")
            ));
        }
    }
    if let Some(c) = &r.compression {
        s.push_str(&format!(
            "GetHistory pages of {}, answered plain and compressed (bytes received per call; CPU ms per call):\n",
            c.page
        ));
        for run in &c.runs {
            let cpu: Vec<String> = run
                .cpu_ms_per_call
                .iter()
                .map(|(label, ms)| format!("{label} {ms:.3}"))
                .collect();
            s.push_str(&format!(
                "  {}: {:.0} bytes, {:.0}/s, {}; {}\n",
                run.encoding,
                run.bytes_per_call,
                run.per_sec,
                run.latency.brief(),
                cpu.join(", ")
            ));
        }
    }
    if let Some(q) = &r.search {
        s.push_str(&format!(
            "SearchMessages, a user in {} conversations ({} messages), pages of {}: {} searches: {:.0}/s, {}\n",
            q.member_of,
            q.messages_in_scope,
            q.limit,
            q.requests,
            q.per_sec,
            q.latency.brief()
        ));
        for c in &q.classes {
            s.push_str(&format!(
                "  {:<20} {:>6.0} matches on average, {}: {}\n",
                c.class,
                c.mean_matches,
                c.queries.join(" | "),
                c.latency.brief()
            ));
        }
        if !q.errors.is_empty() {
            s.push_str(&format!("  errors: {:?}\n", q.errors));
        }
        if !q.cpu_ms_per_search.is_empty() {
            let cpu: Vec<String> = q
                .cpu_ms_per_search
                .iter()
                .map(|(label, ms)| format!("{label} {ms:.1}"))
                .collect();
            s.push_str(&format!("  CPU ms per search: {}\n", cpu.join(", ")));
        }
    }
    for (name, idle) in [
        ("embedded", &r.embedded_idle),
        ("embedded, a connection each", &r.embedded_idle_alone),
        ("embedded, WebSocket", &r.embedded_idle_websocket),
        ("gateway", &r.gateway_idle),
    ] {
        if let Some(i) = idle {
            s.push_str(&format!(
                "Idle streams ({name}): {} streams over {} connections: RSS {} -> {} MiB, {:.1} KiB per stream\n",
                i.streams,
                i.connections,
                i.rss_before_kib / 1024,
                i.rss_after_kib / 1024,
                i.bytes_per_stream / 1024.0
            ));
        }
    }
    s.push_str("\nTargets:\n");
    for t in &r.targets {
        s.push_str(&format!(
            "  [{}] {}: {} — {}\n",
            if t.met { "met " } else { "MISS" },
            t.name,
            t.goal,
            t.measured
        ));
    }
    s
}
