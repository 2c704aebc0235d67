//! Bounded growth: under sustained load, garbage collection keeps the
//! idempotency records and the ingest de-duplication keys to about one
//! retention window's worth, however fast events come.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use weir_abi::Event;
use weir_runtime::Runtime;
use weir_tests::{config, event};

/// Four subscriptions of one pipeline: every commit of theirs writes one
/// idempotency expiry batch each, every publish group one ingest batch.
/// The filter plugin handles each event without emitting anything.
const FOUR_WAY: &str = r#"
[idempotency]
retention = "1s"
[[pipelines]]
name = "load"
topics = ["load.item.created"]
[[pipelines.handlers]]
name = "a"
plugin = "{FILTER}"
[[pipelines.handlers]]
name = "b"
plugin = "{FILTER}"
[[pipelines.handlers]]
name = "c"
plugin = "{FILTER}"
[[pipelines.handlers]]
name = "d"
plugin = "{FILTER}"
"#;

fn item(i: u64) -> Event {
    let mut e = event(&json!({ "topic": "load.item.created", "key": format!("k{}", i % 31), "payload": { "n": i, "total_cents": 1 } }).to_string());
    e.idempotency_key = format!("item-{i}");
    e
}

/// One reading: when, how many events were published and handled (summed
/// over the subscriptions) by then, and the two tables' sizes.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    published: u64,
    handled: u64,
    idempotency: u64,
    ingest: u64,
}

#[test]
fn idempotency_and_ingest_tables_stop_growing_once_the_retention_window_passes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(Runtime::start(&config(dir.path(), FOUR_WAY)).unwrap());
    let subs = rt.subscriptions();
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Two producers publishing one event per commit: as many groups (ingest
    // expiry batches) as the disk's fsyncs allow, and one idempotency batch
    // per subscription per commit.
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let (rt, published, stop) = (Arc::clone(&rt), Arc::clone(&published), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut i = p;
                while !stop.load(Ordering::Relaxed) {
                    rt.publish_blocking(vec![item(i)]).unwrap();
                    published.fetch_add(1, Ordering::Relaxed);
                    i += 2;
                }
            })
        })
        .collect();
    let read = || {
        let sizes: HashMap<&str, u64> = rt.store().table_sizes().unwrap().into_iter().collect();
        Reading {
            at: Instant::now(),
            published: published.load(Ordering::Relaxed),
            handled: subs.iter().map(|s| rt.counters(s).unwrap().handled).sum(),
            idempotency: sizes["idempotency"],
            ingest: sizes["ingest_dedup"],
        }
    };
    let started = Instant::now();
    let mut readings = Vec::new();
    while started.elapsed() < Duration::from_secs(9) {
        std::thread::sleep(Duration::from_millis(250));
        readings.push(read());
    }
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().unwrap();
    }
    let last = *readings.last().unwrap();
    // What may still be kept at the end: what came within the window (1 s),
    // plus a collection interval (0.5 s), plus generous slack for a loaded
    // machine: everything of the last 4 s. Older records must be gone.
    let back = |ago: Duration| *readings.iter().rev().find(|r| last.at.duration_since(r.at) >= ago).unwrap();
    let four_ago = back(Duration::from_secs(4));
    let recent_published = last.published - four_ago.published;
    let recent_handled = last.handled - four_ago.handled;
    println!(
        "after {:?}: {} published, {} handled; kept {} ingest keys and {} idempotency records; \
         {recent_published} published and {recent_handled} handled in the last 4 s",
        last.at.duration_since(started),
        last.published,
        last.handled,
        last.ingest,
        last.idempotency
    );
    assert!(last.published > 0 && last.handled > 0, "the load ran: {last:?}");
    assert!(
        last.ingest <= recent_published,
        "ingest keys kept beyond the window: {} kept, {recent_published} published in the last 4 s of {}",
        last.ingest,
        last.published
    );
    assert!(
        last.idempotency <= recent_handled,
        "idempotency records kept beyond the window: {} kept, {recent_handled} handled in the last 4 s of {}",
        last.idempotency,
        last.handled
    );
    Arc::try_unwrap(rt).unwrap().shutdown().unwrap();
}
