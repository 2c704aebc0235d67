//! Per-invocation cost of a ~300-byte event: reused instance with the
//! sandbox limits on, and a fresh instance per event with the pooling
//! allocator. Prints a markdown table for docs/benchmarks.md.
//!
//! Run: `cargo bench -p weir-tests --bench invoke` (add `-- --quick` for a
//! smoke run).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use weir_abi::encoding::{decode, encode, encode_into};
use weir_abi::{Delivery, DeliveryRef, Outcome};
use weir_runtime::{Engine, EngineConfig, Handler, InstanceMode, Limits};
use weir_tests::{event, plugins};

struct Row {
    name: &'static str,
    per_op: Duration,
    note: String,
}

/// Median of `rounds` timings of `iters` calls each.
fn measure(iters: u32, rounds: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..iters.min(1_000) {
        f();
    }
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed() / iters
        })
        .collect();
    samples.sort();
    samples[rounds / 2]
}

fn handler(engine: &Engine, path: &str, mode: InstanceMode) -> Handler {
    let plugin = engine.load_file(path.as_ref()).unwrap();
    plugin.handler(Limits::default(), Vec::new(), mode).unwrap()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (iters, rounds) = if quick { (200, 3) } else { (20_000, 11) };
    let order = event(
        r#"{"topic":"orders.order.created","key":"o-1001","source":"shop-frontend","payload":{"order_id":"o-1001","customer":"c-7","currency":"EUR","items":[{"sku":"kettle","qty":1,"price_cents":3499},{"sku":"filter","qty":4,"price_cents":299},{"sku":"descaler","qty":1,"price_cents":799}]}}"#,
    );
    let delivery = DeliveryRef { event: &order, subscription: "orders/validator", attempt: 1 };
    let order_event = event(
        r#"{"topic":"orders.order.created","key":"o-1","idempotency_key":"order-1","payload":{"order_id":"o-00000001","customer":"c-00001","currency":"EUR","total_cents":1500,"items":3,"note":"ordered through the web shop, deliver to the back door please"}}"#,
    );
    let filter_delivery = DeliveryRef { event: &order_event, subscription: "bench/a", attempt: 1 };
    if std::env::args().any(|a| a == "--fresh-only") {
        let mut rows = Vec::new();
        fresh_rows(&mut rows, iters, rounds, delivery, filter_delivery);
        print_rows(rows);
        return;
    }
    let encoded_len = encode(&delivery).unwrap().len();
    let mut rows = Vec::new();

    // Host-side encoding alone: what every invocation pays before the call.
    let mut buf = Vec::new();
    rows.push(Row {
        name: "host encode delivery",
        per_op: measure(iters * 5, rounds, || {
            buf.clear();
            encode_into(black_box(&delivery), &mut buf).unwrap();
        }),
        note: format!("{encoded_len} bytes"),
    });
    let owned = Delivery { event: order.clone(), subscription: "orders/validator".into(), attempt: 1 };
    let bytes = encode(&owned).unwrap();
    rows.push(Row {
        name: "decode delivery (what the guest does)",
        per_op: measure(iters * 5, rounds, || {
            black_box(decode::<Delivery>(black_box(&bytes)).unwrap());
        }),
        note: "native, for comparison".into(),
    });
    rows.push(Row {
        name: "decode delivery, hand-written (what the SDK's guest does since issue 18)",
        per_op: measure(iters * 5, rounds, || {
            black_box(weir_abi::encoding::decode_delivery(black_box(&bytes)).unwrap());
        }),
        note: "native, same bytes and value".into(),
    });
    let ok = encode(&Outcome::Ok(Vec::new())).unwrap();
    rows.push(Row {
        name: "host decode empty outcome",
        per_op: measure(iters * 5, rounds, || {
            black_box(decode::<Outcome>(black_box(&ok)).unwrap());
        }),
        note: String::new(),
    });

    let engine = Engine::new(EngineConfig::default()).unwrap();
    for (name, path, note) in [
        ("invoke, reused instance: SDK no-op handler", plugins::LOOPER, "decodes the delivery, returns Ok([])"),
        ("invoke, reused instance: raw-ABI echo", plugins::RAW_ABI, "hand-written codec, emits one event"),
        ("invoke, reused instance: order validator", plugins::ORDER_VALIDATOR, "serde_json parse + one JSON emit"),
    ] {
        let mut h = handler(&engine, path, InstanceMode::Reuse);
        let per_op = measure(iters, rounds, || {
            let inv = h.invoke(delivery);
            assert!(inv.result.is_ok());
        });
        rows.push(Row { name, per_op, note: format!("{note}; limits on (deadline 1 s, 64 MiB cap)") });
    }

    // The benchmark suite's handler on the suite's event, in Wasm and called
    // natively: the per-invocation part of the suite's s2/s5 ratio.
    let mut h = handler(&engine, plugins::FILTER, InstanceMode::Reuse);
    rows.push(Row {
        name: "invoke, reused instance: filter (the suite's handler)",
        per_op: measure(iters, rounds, || assert!(h.invoke(filter_delivery).result.is_ok())),
        note: "serde_json parse, drops the order".into(),
    });
    rows.push(Row {
        name: "filter called natively (the suite's s5)",
        per_op: measure(iters, rounds, || {
            let mut ctx = weir_sdk::Context::new("bench/a", 1);
            assert!(filter::handle(black_box(&order_event), &mut ctx).is_ok());
        }),
        note: "same code, no Wasm, no encoding".into(),
    });

    let fuel_engine = Engine::new(EngineConfig { consume_fuel: true, ..EngineConfig::default() }).unwrap();
    let plugin = fuel_engine.load_file(plugins::ORDER_VALIDATOR.as_ref()).unwrap();
    let mut h =
        plugin.handler(Limits::builder().fuel(Some(10_000_000)).build(), Vec::new(), InstanceMode::Reuse).unwrap();
    rows.push(Row {
        name: "invoke, reused instance: order validator, fuel metered",
        per_op: measure(iters, rounds, || assert!(h.invoke(delivery).result.is_ok())),
        note: "fuel budget 10M per event".into(),
    });

    fresh_rows(&mut rows, iters, rounds, delivery, filter_delivery);
    print_rows(rows);
}

/// The fresh-instance rows: one handler on one thread, then the suite's `s4`
/// shape (two handlers of the filter, each on its own thread, at once), where
/// what the kernel does for one thread (page faults, `madvise`, `mprotect`)
/// also stops the other (TLB shootdowns, the address-space lock).
fn fresh_rows(
    rows: &mut Vec<Row>,
    iters: u32,
    rounds: usize,
    delivery: DeliveryRef<'_>,
    filter_delivery: DeliveryRef<'_>,
) {
    let pooled = Engine::new(EngineConfig { pooling: true, ..EngineConfig::default() }).unwrap();
    for (name, path, d) in [
        ("invoke, fresh instance per event (pooling): SDK no-op", plugins::LOOPER, delivery),
        ("invoke, fresh instance per event (pooling): order validator", plugins::ORDER_VALIDATOR, delivery),
        ("invoke, fresh instance per event (pooling): filter", plugins::FILTER, filter_delivery),
    ] {
        let mut h = handler(&pooled, path, InstanceMode::FreshPerEvent);
        let per_op = measure(iters / 4, rounds, || assert!(h.invoke(d).result.is_ok()));
        rows.push(Row { name, per_op, note: "instantiate + init + invoke + drop".into() });
    }
    let mut h = handler(&pooled, plugins::FILTER, InstanceMode::Reuse);
    rows.push(Row {
        name: "invoke, reused instance on the pooling engine: filter",
        per_op: measure(iters, rounds, || assert!(h.invoke(filter_delivery).result.is_ok())),
        note: "what fresh-instance settings cost a reused handler".into(),
    });
    // Two threads, each with its own filter handler, as the s4 fan-out runs:
    // the figure is wall time per invocation of one thread.
    let per_op = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let pooled = &pooled;
                scope.spawn(move || {
                    let mut h = handler(pooled, plugins::FILTER, InstanceMode::FreshPerEvent);
                    measure(iters / 4, rounds, || assert!(h.invoke(filter_delivery).result.is_ok()))
                })
            })
            .collect();
        let mut each: Vec<Duration> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        each.sort();
        each[1]
    });
    rows.push(Row {
        name: "invoke, fresh instance per event (pooling): filter, 2 threads at once",
        per_op,
        note: "per thread: the s4 fan-out's two handlers side by side".into(),
    });
}

fn print_rows(rows: Vec<Row>) {
    println!("| measurement | per event | events/s (one core) | note |");
    println!("|---|---:|---:|---|");
    for row in rows {
        let ns = row.per_op.as_nanos().max(1);
        println!("| {} | {:.2} µs | {:.0} | {} |", row.name, row.per_op.as_secs_f64() * 1e6, 1e9 / ns as f64, row.note);
    }
}
