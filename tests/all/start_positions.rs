//! Where a new subscription starts (`from`): the beginning, the end, a
//! sequence number or a time (by append time, through the log's time
//! index); and that the position is taken once, when the subscription has
//! no cursor yet.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use weir_abi::Event;
use weir_runtime::Runtime;
use weir_tests::{config, event};

const IDLE: Duration = Duration::from_secs(30);

fn order(id: &str) -> Event {
    event(
        &json!({ "topic": "orders.order.created", "key": id,
                 "payload": { "order_id": id, "customer": "c", "currency": "EUR",
                              "items": [{ "sku": "a", "qty": 1, "price_cents": 100 }] } })
        .to_string(),
    )
}

fn orders(prefix: &str, n: usize) -> Vec<Event> {
    (0..n).map(|i| order(&format!("{prefix}-{i}"))).collect()
}

/// Four audit subscriptions of the same topic, one per kind of `from`.
fn four(seq: u64, time: &str) -> String {
    let mut text = String::new();
    for (name, from) in [
        ("begin", "\"beginning\"".to_owned()),
        ("end", "\"end\"".to_owned()),
        ("seq", format!("\"{seq}\"")),
        ("time", format!("{time:?}")),
    ] {
        text.push_str(&format!(
            "[[pipelines]]\nname = \"{name}\"\ntopics = [\"orders.order.created\"]\n[[pipelines.handlers]]\nname = \"audit\"\nplugin = \"{{AUDIT_LOGGER}}\"\nfrom = {from}\n"
        ));
    }
    text
}

/// `secs` since the Unix epoch as an RFC 3339 UTC time (days to civil
/// date: Howard Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

fn handled(rt: &Runtime, name: &str) -> u64 {
    rt.counters(name).unwrap().handled
}

#[test]
fn new_subscriptions_start_at_the_beginning_the_end_a_seq_or_a_time_and_keep_their_cursor() {
    let dir = tempfile::tempdir().unwrap();
    // The log before the subscriptions exist: 5 events, then (in a later
    // second) 5 more.
    let rt = Runtime::start(&config(dir.path(), "")).unwrap();
    rt.publish_blocking(orders("a", 5)).unwrap();
    // The time index has a resolution of one second: the second batch is
    // appended in a later second than the first, and `from` names it.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let next_second = Duration::from_secs(now.as_secs() + 1);
    std::thread::sleep(next_second - now + Duration::from_millis(50));
    let from_time = rfc3339(next_second.as_secs());
    rt.publish_blocking(orders("b", 5)).unwrap();
    assert_eq!(rt.store().seq_at_time(next_second.as_millis() as u64).unwrap(), 5);
    rt.shutdown().unwrap();

    let toml = four(3, &from_time);
    let rt = Runtime::start(&config(dir.path(), &toml)).unwrap();
    rt.publish_blocking(orders("c", 3)).unwrap();
    assert!(rt.wait_idle(IDLE));
    assert_eq!(handled(&rt, "begin/audit"), 13, "beginning: every event");
    assert_eq!(handled(&rt, "end/audit"), 3, "end: only what came after the start");
    assert_eq!(handled(&rt, "seq/audit"), 10, "seq 3: events 3 to 12");
    assert_eq!(handled(&rt, "time/audit"), 8, "time: the second batch and after");
    rt.shutdown().unwrap();

    // A restart does not take the position again: the cursors hold.
    let rt = Runtime::start(&config(dir.path(), &toml)).unwrap();
    rt.publish_blocking(orders("d", 1)).unwrap();
    assert!(rt.wait_idle(IDLE));
    for name in ["begin/audit", "end/audit", "seq/audit", "time/audit"] {
        assert_eq!(handled(&rt, name), 1, "{name} handled only the new event after a restart");
    }
    rt.shutdown().unwrap();
}

#[test]
fn a_bad_from_is_refused_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n[[pipelines]]\nname = \"p\"\ntopics = [\"orders.order.created\"]\n[[pipelines.handlers]]\nname = \"audit\"\nplugin = {:?}\nfrom = \"yesterday\"\n",
        dir.path().join("data").display().to_string(),
        weir_tests::plugins::AUDIT_LOGGER
    );
    let err = weir_runtime::Config::parse(&text, &dir.path().join("weir.toml")).unwrap_err();
    assert_eq!(err.key, "pipelines[0].handlers[0].from");
    assert!(err.reason.contains("RFC 3339"), "{}", err.reason);
}
