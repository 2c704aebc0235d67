//! The sandbox against adversarial plugins, shaped like wasmtime's
//! `tests/all/limits.rs` and `fuel.rs`: each misbehaviour yields its
//! classified code, and the same handler then serves the next event normally
//! on a fresh instance.

use std::time::{Duration, Instant};

use weir_runtime::{Engine, EngineConfig, InstanceMode, Limits};
use weir_tests::{code, engine, handler, invoke, keyed, load, plugins};

#[test]
fn a_looping_plugin_times_out_within_twice_its_deadline_then_serves_again() {
    let engine = engine();
    let deadline = Duration::from_millis(200);
    let mut h = handler(&engine, plugins::LOOPER, Limits::builder().deadline(deadline).build());
    let started = Instant::now();
    let inv = invoke(&mut h, &keyed("test.loop.start", "evil"));
    let elapsed = started.elapsed();
    assert_eq!(code(&inv), "timeout");
    assert!(elapsed >= deadline, "stopped early: {elapsed:?}");
    assert!(elapsed < deadline * 2, "stopped late: {elapsed:?}");
    assert_eq!(code(&invoke(&mut h, &keyed("test.loop.start", "fine"))), "ok");
    assert_eq!(h.instances_started(), 2, "the timed-out instance was replaced");
}

#[test]
fn fuel_bounds_cpu_deterministically() {
    let engine = Engine::new(EngineConfig { consume_fuel: true, ..EngineConfig::default() }).unwrap();
    let limits = Limits::builder().fuel(Some(2_000_000)).deadline(Duration::from_secs(30)).build();
    let mut h = handler(&engine, plugins::LOOPER, limits);
    let inv = invoke(&mut h, &keyed("test.loop.start", "evil"));
    assert_eq!(code(&inv), "out_of_fuel");
    let fine = invoke(&mut h, &keyed("test.loop.start", "fine"));
    assert_eq!(code(&fine), "ok");
    let used = fine.fuel_used.expect("fuel is metered");
    assert!(used > 0 && used < 2_000_000, "fuel used: {used}");
}

#[test]
fn a_fuel_budget_without_metering_is_refused_at_load() {
    let engine = engine();
    let err = load(&engine, plugins::LOOPER)
        .handler(Limits::builder().fuel(Some(10)).build(), Vec::new(), InstanceMode::Reuse)
        .unwrap_err();
    assert!(err.to_string().contains("fuel"), "{err}");
}

#[test]
fn a_memory_hog_hits_the_cap() {
    let engine = engine();
    let mut h = handler(&engine, plugins::MEMORY_HOG, Limits::builder().memory_bytes(16 << 20).build());
    let inv = invoke(&mut h, &keyed("test.memory.grab", "evil"));
    assert_eq!(code(&inv), "memory_limit");
    assert!(inv.result.unwrap_err().to_string().contains(&(16u64 << 20).to_string()));
    assert_eq!(code(&invoke(&mut h, &keyed("test.memory.grab", "fine"))), "ok");
}

#[test]
fn a_panic_is_a_trap_with_its_message() {
    let engine = engine();
    let mut h = handler(&engine, plugins::PANICKER, Limits::default());
    let inv = invoke(&mut h, &keyed("test.panic.now", "evil"));
    assert_eq!(code(&inv), "trap");
    let message = inv.result.unwrap_err().to_string();
    assert!(message.contains("unreachable") && message.contains("evil event"), "{message}");
    let next = invoke(&mut h, &keyed("test.panic.now", "fine"));
    assert_eq!(next.result.unwrap()[0].topic, "adversarial.panicker.survived");
}

#[test]
fn unbounded_recursion_overflows_the_bounded_stack_as_a_trap() {
    let engine = engine();
    let mut h = handler(&engine, plugins::PANICKER, Limits::default());
    let inv = invoke(&mut h, &keyed("test.panic.now", "deep"));
    assert_eq!(code(&inv), "trap");
    assert!(inv.result.unwrap_err().to_string().contains("call stack exhausted"));
    assert_eq!(code(&invoke(&mut h, &keyed("test.panic.now", "fine"))), "ok");
}

#[test]
fn lying_pointers_and_garbage_are_bad_output() {
    let engine = engine();
    let mut h = handler(&engine, plugins::BAD_OUTPUT, Limits::default());
    for (key, needle) in [
        ("oob", "outside the plugin's"),
        ("huge", "over the cap"),
        ("garbage", "not a valid encoding"),
        ("bad-log", "weir::log"),
    ] {
        let inv = invoke(&mut h, &keyed("test.bad.output", key));
        assert_eq!(code(&inv), "bad_output", "key {key}");
        let message = inv.result.unwrap_err().to_string();
        assert!(message.contains(needle), "key {key}: {message}");
        assert_eq!(code(&invoke(&mut h, &keyed("test.bad.output", "fine"))), "ok", "after {key}");
    }
}

#[test]
fn output_caps_are_enforced() {
    let engine = engine();
    let mut h = handler(&engine, plugins::OVERSIZED_OUTPUT, Limits::default());
    let big = invoke(&mut h, &keyed("test.big.output", "big"));
    assert_eq!(code(&big), "bad_output");
    assert!(big.result.unwrap_err().to_string().contains("over the cap"));
    let many = invoke(&mut h, &keyed("test.big.output", "many"));
    assert_eq!(code(&many), "bad_output");
    assert!(many.result.unwrap_err().to_string().contains("2000 emitted events"));
    assert_eq!(code(&invoke(&mut h, &keyed("test.big.output", "small"))), "ok");

    // Raised caps let the same output through.
    let roomy = Limits::builder().max_output_bytes(8 << 20).max_emits(5_000).build();
    let mut h = handler(&engine, plugins::OVERSIZED_OUTPUT, roomy);
    assert_eq!(invoke(&mut h, &keyed("test.big.output", "big")).result.unwrap()[0].payload.len(), 5 << 20);
    assert_eq!(invoke(&mut h, &keyed("test.big.output", "many")).result.unwrap().len(), 2_000);
}

#[test]
fn handler_decisions_keep_the_instance() {
    let engine = engine();
    let plugin = load(&engine, plugins::FLAKY);
    let mut h =
        plugin.handler(Limits::default(), br#"{"succeed_on_attempt": 2}"#.to_vec(), InstanceMode::Reuse).unwrap();
    let event = keyed("test.flaky.call", "k");
    let first = h.invoke(weir_abi::DeliveryRef { event: &event, subscription: "t/s", attempt: 1 });
    assert_eq!(code(&first), "handler_retry");
    let second = h.invoke(weir_abi::DeliveryRef { event: &event, subscription: "t/s", attempt: 2 });
    assert_eq!(code(&second), "ok");
    assert_eq!(h.instances_started(), 1, "a retry is the handler's decision, not a sandbox failure");
}

#[test]
fn every_failure_code_in_one_engine_and_the_host_carries_on() {
    // One engine, one process: all the failure classes, then normal service.
    let engine = Engine::new(EngineConfig { consume_fuel: true, ..EngineConfig::default() }).unwrap();
    let short = Limits::builder().deadline(Duration::from_millis(100)).build();
    let mut seen = std::collections::BTreeSet::new();

    let mut looper = handler(&engine, plugins::LOOPER, short.clone());
    seen.insert(code(&invoke(&mut looper, &keyed("a.b.c", "evil"))));
    let mut fuel = handler(&engine, plugins::LOOPER, Limits::builder().fuel(Some(100_000)).build());
    seen.insert(code(&invoke(&mut fuel, &keyed("a.b.c", "evil"))));
    let mut hog = handler(&engine, plugins::MEMORY_HOG, Limits::builder().memory_bytes(8 << 20).build());
    seen.insert(code(&invoke(&mut hog, &keyed("a.b.c", "evil"))));
    let mut panicker = handler(&engine, plugins::PANICKER, Limits::default());
    seen.insert(code(&invoke(&mut panicker, &keyed("a.b.c", "evil"))));
    let mut liar = handler(&engine, plugins::BAD_OUTPUT, Limits::default());
    seen.insert(code(&invoke(&mut liar, &keyed("a.b.c", "oob"))));
    let mut flaky = handler(&engine, plugins::FLAKY, Limits::default());
    seen.insert(code(&invoke(&mut flaky, &keyed("a.b.c", "always-retry"))));
    let mut validator = handler(&engine, plugins::ORDER_VALIDATOR, Limits::default());
    seen.insert(code(&invoke(&mut validator, &keyed("orders.order.created", "o-1"))));
    seen.insert(engine.load_file(plugins::WRONG_ABI.as_ref()).unwrap_err().code());
    let init = load(&engine, plugins::ORDER_VALIDATOR)
        .handler(Limits::default(), br#"{"currencies": []}"#.to_vec(), InstanceMode::Reuse)
        .unwrap_err();
    seen.insert(init.code());

    let expected = [
        "abi_mismatch",
        "bad_output",
        "handler_reject",
        "handler_retry",
        "init_failed",
        "memory_limit",
        "out_of_fuel",
        "timeout",
        "trap",
    ];
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), expected);

    // Every handler serves a benign event afterwards.
    for h in [&mut looper, &mut fuel, &mut hog, &mut panicker, &mut liar] {
        assert_eq!(code(&invoke(h, &keyed("a.b.c", "fine"))), "ok");
    }
}

#[test]
fn fresh_instance_mode_starts_one_instance_per_event() {
    let engine = Engine::new(EngineConfig { pooling: true, pool_instances: 8, ..EngineConfig::default() }).unwrap();
    let plugin = load(&engine, plugins::PANICKER);
    let mut h = plugin.handler(Limits::default(), Vec::new(), InstanceMode::FreshPerEvent).unwrap();
    for _ in 0..20 {
        assert_eq!(code(&invoke(&mut h, &keyed("a.b.c", "fine"))), "ok");
    }
    assert_eq!(code(&invoke(&mut h, &keyed("a.b.c", "evil"))), "trap");
    assert_eq!(code(&invoke(&mut h, &keyed("a.b.c", "fine"))), "ok");
    // One at creation (to check the configuration) plus one per event.
    assert_eq!(h.instances_started(), 1 + 22);
}

#[test]
fn reuse_mode_keeps_one_instance_across_events() {
    let engine = engine();
    let mut h = handler(&engine, plugins::PANICKER, Limits::default());
    for _ in 0..50 {
        assert_eq!(code(&invoke(&mut h, &keyed("a.b.c", "fine"))), "ok");
    }
    assert_eq!(h.instances_started(), 1);
}
