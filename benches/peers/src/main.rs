//! The plugin layer against its peers (issue 18): the same filter and order
//! validator logic run through Weir's engine, Extism and Fluvio's
//! SmartEngine, in one process, on one thread, interleaved in rounds. Prints
//! a markdown table (median ns per invocation and events/s on one core).
//!
//! Run: `benches/peers/run.sh` (builds the guests, then this in release;
//! `benches/peers/run.sh --quick` for a smoke run, `--rounds N` for more
//! rounds). See docs/benchmarks.md, "The plugin layer against its peers".
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use extism::{Manifest, Plugin, Wasm};
use fluvio_smartengine::{
    DEFAULT_SMARTENGINE_VERSION, SmartEngine, SmartModuleChainBuilder, SmartModuleChainInstance, SmartModuleConfig,
};
use fluvio_smartmodule::Record;
use fluvio_smartmodule::dataplane::smartmodule::{SmartModuleInput, SmartModuleOutput};
use weir_abi::{DeliveryRef, Event};
use weir_runtime::{Engine, EngineConfig, Handler, IdGenerator, InstanceMode, JsonEvent, Limits};

/// The order validator's event: the one tests/benches/invoke.rs uses.
const ORDER: &str = r#"{"topic":"orders.order.created","key":"o-1001","source":"shop-frontend","payload":{"order_id":"o-1001","customer":"c-7","currency":"EUR","items":[{"sku":"kettle","qty":1,"price_cents":3499},{"sku":"filter","qty":4,"price_cents":299},{"sku":"descaler","qty":1,"price_cents":799}]}}"#;
/// The filter's event: the benchmark suite's (and invoke.rs's) order, which
/// the filter drops (total 1500 < 10000).
const SUITE_ORDER: &str = r#"{"topic":"orders.order.created","key":"o-1","idempotency_key":"order-1","payload":{"order_id":"o-00000001","customer":"c-00001","currency":"EUR","total_cents":1500,"items":3,"note":"ordered through the web shop, deliver to the back door please"}}"#;
/// Checked, not timed: an order the filter passes, one the validator rejects.
const LARGE_ORDER: &str =
    r#"{"topic":"orders.order.created","key":"o-2","payload":{"order_id":"o-2","total_cents":25000}}"#;
const BAD_ORDER: &str = r#"{"topic":"orders.order.created","key":"o-3","payload":{"order_id":"o-3","customer":"c-1","currency":"XXX","items":[{"sku":"a","qty":1,"price_cents":1}]}}"#;

/// What a handler decided, the same shape for every engine.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Dropped: handled, nothing emitted.
    Drop,
    /// Passed on / emitted this payload.
    Emit(Vec<u8>),
    /// Rejected (dead-lettered in Weir, an error in the others).
    Reject,
}

fn event(json: &str) -> Event {
    JsonEvent::from_json_line(json).unwrap().into_event(&IdGenerator::new(), "weir:peers").unwrap()
}

struct Weir {
    handler: Handler,
}

impl Weir {
    fn new(engine: &Engine, path: &Path) -> Self {
        let plugin = engine.load_file(path).unwrap();
        Self { handler: plugin.handler(Limits::default(), Vec::new(), InstanceMode::Reuse).unwrap() }
    }

    fn call(&mut self, event: &Event) -> Decision {
        let inv = self.handler.invoke(DeliveryRef { event, subscription: "orders/peers", attempt: 1 });
        match inv.result {
            Ok(emits) if emits.is_empty() => Decision::Drop,
            Ok(mut emits) => Decision::Emit(emits.swap_remove(0).payload),
            Err(_) => Decision::Reject,
        }
    }
}

struct Extism {
    plugin: Plugin,
    function: &'static str,
}

impl Extism {
    fn new(wasm: &[u8], function: &'static str) -> Self {
        let manifest = Manifest::new([Wasm::data(wasm.to_vec())]);
        Self { plugin: Plugin::new(&manifest, [], false).unwrap(), function }
    }

    fn call(&mut self, payload: &[u8]) -> Decision {
        match self.plugin.call::<&[u8], &[u8]>(self.function, payload) {
            Ok([]) => Decision::Drop,
            Ok(out) => Decision::Emit(out.to_vec()),
            Err(_) => Decision::Reject,
        }
    }
}

struct Fluvio {
    chain: SmartModuleChainInstance,
}

impl Fluvio {
    fn new(engine: &SmartEngine, wasm: Vec<u8>, name: &str) -> Self {
        let mut builder = SmartModuleChainBuilder::default();
        builder.add_smart_module(
            SmartModuleConfig::builder().smartmodule_names(vec![name.to_owned()]).build().unwrap(),
            wasm,
        );
        Self { chain: builder.initialize(engine).unwrap() }
    }

    fn call(&mut self, record: &Record) -> Decision {
        // A batch of one record, as Weir and Extism get one event a call.
        let input = SmartModuleInput::try_from_records(vec![record.clone()], DEFAULT_SMARTENGINE_VERSION).unwrap();
        match self.chain.process(input) {
            Ok(SmartModuleOutput { error: Some(_), .. }) | Err(_) => Decision::Reject,
            // The filter keeps the record (its value is the payload passed
            // on) or drops it; the validator's `map` replaces the value.
            Ok(SmartModuleOutput { mut successes, .. }) => match successes.pop() {
                None => Decision::Drop,
                Some(r) => Decision::Emit(r.value.as_ref().to_vec()),
            },
        }
    }
}

/// One engine running one handler on one event.
struct Case {
    handler: &'static str,
    engine: &'static str,
    run: Box<dyn FnMut() -> Decision>,
    /// Process CPU time per call, one per round.
    cpu: Vec<f64>,
    /// Wall-clock time per call, one per round.
    wall: Vec<f64>,
}

/// CPU time of the whole process (all its threads: Extism's timer thread
/// included), in ns. The reference machine is shared with other builds; CPU
/// time does not count the time the benchmark waits for a core, wall time
/// does.
fn process_cpu_ns() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

fn args() -> (bool, usize) {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("--rounds takes a number"))
        .unwrap_or(if quick { 1 } else { 5 });
    (quick, rounds.max(1))
}

fn main() {
    let (quick, rounds) = args();
    let iters: u32 = if quick { 200 } else { 20_000 };
    let dir = std::env::var_os("PEERS_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/wasm"));
    let read =
        |name: &str| std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()));

    let weir = Engine::new(EngineConfig::default()).unwrap();
    let fluvio = SmartEngine::new();
    let extism_wasm = read("peers_extism_guest.wasm");

    // Each case owns its instance and its input; the closure is the whole
    // per-event call as the host sees it, input preparation included.
    let make = |handler: &'static str, json: &str| -> Vec<Case> {
        let ev = event(json);
        let payload = ev.payload.clone();
        let record = Record::new_key_value(ev.key.clone().unwrap_or_default(), payload.clone());
        let (weir_file, extism_fn, fluvio_file) = match handler {
            "filter" => ("filter.wasm", "filter", "peers_fluvio_filter.wasm"),
            _ => ("order_validator.wasm", "validate", "peers_fluvio_validator.wasm"),
        };
        let mut w = Weir::new(&weir, &dir.join(weir_file));
        let mut x = Extism::new(&extism_wasm, extism_fn);
        let mut f = Fluvio::new(&fluvio, read(fluvio_file), fluvio_file);
        vec![
            Case {
                handler,
                engine: "Weir",
                run: Box::new(move || w.call(black_box(&ev))),
                cpu: Vec::new(),
                wall: Vec::new(),
            },
            Case {
                handler,
                engine: "Extism",
                run: Box::new(move || x.call(black_box(&payload))),
                cpu: Vec::new(),
                wall: Vec::new(),
            },
            Case {
                handler,
                engine: "Fluvio",
                run: Box::new(move || f.call(black_box(&record))),
                cpu: Vec::new(),
                wall: Vec::new(),
            },
        ]
    };

    // Same decision on the same payloads, before anything is timed: the
    // benchmark's event and one that takes the other branch.
    for (handler, json) in
        [("filter", SUITE_ORDER), ("filter", LARGE_ORDER), ("validator", ORDER), ("validator", BAD_ORDER)]
    {
        let decisions: Vec<(&str, Decision)> =
            make(handler, json).into_iter().map(|mut c| (c.engine, (c.run)())).collect();
        for (engine, d) in &decisions[1..] {
            assert_eq!(d, &decisions[0].1, "{handler}: {engine} decided otherwise than Weir on {json}");
        }
        let shown = match &decisions[0].1 {
            Decision::Emit(p) => format!("emit {}", String::from_utf8_lossy(p)),
            other => format!("{other:?}"),
        };
        eprintln!("check {handler:9} all three: {shown}");
    }

    let mut cases = make("filter", SUITE_ORDER);
    cases.extend(make("validator", ORDER));
    let expected: Vec<Decision> = cases.iter_mut().map(|c| (c.run)()).collect();
    for case in &mut cases {
        for _ in 0..iters.min(2_000) {
            black_box((case.run)());
        }
    }
    for round in 0..rounds {
        // Rotate the order each round so that no engine always runs first.
        let n = cases.len();
        for i in 0..n {
            let idx = (i + round) % n;
            let case = &mut cases[idx];
            let (start, cpu_start) = (Instant::now(), process_cpu_ns());
            for _ in 0..iters {
                let d = (case.run)();
                debug_assert_eq!(d, expected[idx]);
                black_box(d);
            }
            case.cpu.push((process_cpu_ns() - cpu_start) / f64::from(iters));
            case.wall.push(start.elapsed().as_nanos() as f64 / f64::from(iters));
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }

    println!(
        "| handler | engine | CPU ns / invocation (median) | events/s, one core | CPU ns, rounds min–max | wall ns (median) |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for case in &mut cases {
        case.cpu.sort_by(f64::total_cmp);
        case.wall.sort_by(f64::total_cmp);
        let median = case.cpu[case.cpu.len() / 2];
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0}–{:.0} | {:.0} |",
            case.handler,
            case.engine,
            median,
            1e9 / median,
            case.cpu[0],
            case.cpu[case.cpu.len() - 1],
            case.wall[case.wall.len() / 2]
        );
    }
    println!("\n{rounds} interleaved rounds of {iters} calls per engine and handler.");
}
