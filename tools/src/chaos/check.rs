//! The chaos run's checker: what the clients were acknowledged and
//! received, against what PostgreSQL holds.

use super::client::Log;
use super::report::Report;
use confab_tests::Conv;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Every stored message: conversation → seq → (sender, client_msg_id), and
/// each conversation's last_seq.
pub(super) type Stored = BTreeMap<String, BTreeMap<u64, (String, String)>>;

pub(super) async fn read_store(database_url: &str) -> (Stored, BTreeMap<String, u64>, u64) {
    use sqlx::Row as _;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .expect("connect to history's database");
    let rows = sqlx::query("SELECT conversation_id, seq, sender_id, client_msg_id FROM messages")
        .fetch_all(&pool)
        .await
        .expect("read messages");
    let mut stored: Stored = BTreeMap::new();
    let mut twice = 0u64;
    let mut keys: HashMap<(String, String, String), u64> = HashMap::new();
    for row in rows {
        let conv: String = row.get(0);
        let seq: i64 = row.get(1);
        let sender: String = row.get(2);
        let key: String = row.get(3);
        if !key.is_empty() {
            let n = keys
                .entry((conv.clone(), sender.clone(), key.clone()))
                .or_insert(0);
            *n += 1;
            if *n > 1 {
                twice += 1;
            }
        }
        if stored
            .entry(conv)
            .or_default()
            .insert(seq as u64, (sender, key))
            .is_some()
        {
            twice += 1;
        }
    }
    let last: BTreeMap<String, u64> = sqlx::query("SELECT id, last_seq FROM conversations")
        .fetch_all(&pool)
        .await
        .expect("read conversations")
        .into_iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
        .collect();
    pool.close().await;
    (stored, last, twice)
}

/// The checker: compares what clients were acknowledged (`log.acked`) and
/// received (`log.received`) with what PostgreSQL holds (`stored`, `last`:
/// each conversation's last_seq, `twice`: rows that repeat a key), and
/// fills in `report`'s counts.
pub(super) fn check(
    convs: &[Conv],
    stored: &Stored,
    last: &BTreeMap<String, u64>,
    twice: u64,
    l: &Log,
    report: &mut Report,
) {
    report.stored_twice = twice;
    report.reconnects = l.reconnects;
    report.unacknowledged = l.unacknowledged;
    report.longest_outage = l.longest_outage;
    report.slowest_call = l.slowest_call;
    report.reads = l.reads;
    report.unexpected_errors = l.unexpected.len() as u64;
    report.error_examples = l.unexpected.iter().take(3).cloned().collect();
    report.stored = stored.values().map(|m| m.len() as u64).sum();
    for ((conv, key), seqs) in &l.acked {
        report.acknowledged += 1;
        if seqs.len() > 1 {
            report.stored_twice += 1;
        }
        for seq in seqs {
            let found = stored
                .get(conv)
                .and_then(|m| m.get(seq))
                .is_some_and(|(_, k)| k == key);
            if !found {
                report.acked_missing += 1;
            }
        }
    }
    for (conv, messages) in stored {
        let n = messages.len() as u64;
        let head = last.get(conv).copied().unwrap_or(0);
        // Seqs 1..=head, each once.
        let expected_last = messages.keys().next_back().copied().unwrap_or(0);
        if n != head || expected_last != head {
            report.store_gaps += head.abs_diff(n).max(1);
        }
    }
    for c in convs {
        let messages = stored.get(&c.id).cloned().unwrap_or_default();
        for m in &c.members {
            report.due += messages.len() as u64;
            let got = l
                .received
                .get(&(m.clone(), c.id.clone()))
                .cloned()
                .unwrap_or_default();
            report.delivered += got.len() as u64;
            let mut seen = BTreeSet::new();
            let mut high = 0u64;
            for (seq, sender, key) in &got {
                if !seen.insert(*seq) {
                    report.delivered_twice += 1;
                } else if *seq < high {
                    report.out_of_order += 1;
                } else if *seq > high + 1 {
                    report.delivery_gaps += 1;
                }
                high = high.max(*seq);
                match messages.get(seq) {
                    Some((s, k)) if s == sender && k == key => {}
                    _ => report.mismatched += 1,
                }
            }
            report.undelivered += messages.keys().filter(|s| !seen.contains(s)).count() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The checker must be able to fail: each invariant is broken on purpose.

    use super::*;
    use std::time::Duration;

    /// One conversation `c` of `a` and `b` with seqs 1..=3 stored (1 is the
    /// creation event), `a` acknowledged for 2 and 3, both members having
    /// received everything in order.
    fn healthy() -> (Vec<Conv>, Stored, BTreeMap<String, u64>, Log) {
        let convs = vec![Conv {
            id: "c".into(),
            members: vec!["a".into(), "b".into()],
        }];
        let msgs: BTreeMap<u64, (String, String)> = [
            (1, ("a".to_string(), String::new())),
            (2, ("a".to_string(), "a-0".to_string())),
            (3, ("a".to_string(), "a-1".to_string())),
        ]
        .into_iter()
        .collect();
        let stored: Stored = [("c".to_string(), msgs.clone())].into_iter().collect();
        let last = [("c".to_string(), 3)].into_iter().collect();
        let mut log = Log::default();
        log.acked
            .insert(("c".into(), "a-0".into()), [2].into_iter().collect());
        log.acked
            .insert(("c".into(), "a-1".into()), [3].into_iter().collect());
        for m in ["a", "b"] {
            log.received.insert(
                (m.into(), "c".into()),
                msgs.iter()
                    .map(|(seq, (s, k))| (*seq, s.clone(), k.clone()))
                    .collect(),
            );
        }
        (convs, stored, last, log)
    }

    fn checked(
        convs: &[Conv],
        stored: &Stored,
        last: &BTreeMap<String, u64>,
        twice: u64,
        log: &Log,
    ) -> Report {
        let mut report = Report {
            max_outage: Duration::from_secs(30),
            max_call: Duration::from_secs(6),
            ..Report::default()
        };
        check(convs, stored, last, twice, log, &mut report);
        report
    }

    #[test]
    fn a_healthy_run_has_no_violation() {
        let (convs, stored, last, log) = healthy();
        let r = checked(&convs, &stored, &last, 0, &log);
        assert_eq!(r.violations(), 0, "{r}");
        assert_eq!((r.acknowledged, r.stored, r.due, r.delivered), (2, 3, 6, 6));
    }

    #[test]
    fn each_broken_invariant_is_counted() {
        // An acknowledged message that is not stored.
        let (convs, mut stored, mut last, log) = healthy();
        stored.get_mut("c").map(|m| m.remove(&3));
        last.insert("c".into(), 2);
        let r = checked(&convs, &stored, &last, 0, &log);
        assert_eq!(r.acked_missing, 1, "{r}");

        // A hole in storage.
        let (convs, mut stored, last, log) = healthy();
        stored.get_mut("c").map(|m| m.remove(&2));
        let r = checked(&convs, &stored, &last, 0, &log);
        assert!(r.store_gaps >= 1 && r.acked_missing == 1, "{r}");

        // A key stored twice, or acknowledged with two seqs.
        let (convs, stored, last, mut log) = healthy();
        assert_eq!(checked(&convs, &stored, &last, 1, &log).stored_twice, 1);
        log.acked
            .get_mut(&("c".into(), "a-0".into()))
            .map(|s| s.insert(3));
        let r = checked(&convs, &stored, &last, 0, &log);
        assert_eq!(r.stored_twice, 1, "{r}");
        assert_eq!(r.acked_missing, 1, "seq 3 holds another key: {r}");

        // A stream that repeats, skips, reorders or never gets a message.
        let with = |seqs: &[u64]| {
            let (convs, stored, last, mut log) = healthy();
            let all = log.received[&("b".to_string(), "c".to_string())].clone();
            log.received.insert(
                ("b".into(), "c".into()),
                seqs.iter().map(|s| all[*s as usize - 1].clone()).collect(),
            );
            checked(&convs, &stored, &last, 0, &log)
        };
        assert_eq!(with(&[1, 2, 2, 3]).delivered_twice, 1);
        let skipped = with(&[1, 3, 2]);
        assert_eq!(
            (skipped.delivery_gaps, skipped.out_of_order),
            (1, 1),
            "{skipped}"
        );
        assert_eq!(with(&[1, 2]).undelivered, 1);

        // Content that differs from storage.
        let (convs, stored, last, mut log) = healthy();
        if let Some(v) = log.received.get_mut(&("a".to_string(), "c".to_string())) {
            v[1].2 = "forged".into();
        }
        assert_eq!(checked(&convs, &stored, &last, 0, &log).mismatched, 1);

        // Errors, unclean stops and a long outage.
        let (convs, stored, last, mut log) = healthy();
        log.unexpected.push("send: PermissionDenied".into());
        log.longest_outage = Duration::from_secs(31);
        log.slowest_call = Duration::from_secs(7);
        let mut r = checked(&convs, &stored, &last, 0, &log);
        r.bad_stops = 1;
        assert_eq!(r.violations(), 4, "{r}");
        let text = r.to_string();
        assert!(text.contains("FAIL unexpected errors: 1"), "{text}");
        assert!(
            text.contains("FAIL longest time a client could not send"),
            "{text}"
        );
        assert!(text.contains("FAIL slowest answer to a call"), "{text}");
        assert!(text.ends_with("violations: 4"), "{text}");
    }
}
