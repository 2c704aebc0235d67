//! `weir demo sagas`, the orchestrated-saga demo, run as a newcomer runs it
//! (the real binary over the plugins the tests build): the outcomes and
//! timelines it prints are the ones the orders imply, and it exits 0 only
//! once its own checks (instances and the services' counted effects) pass.

use std::path::Path;

use weir_tests::{plugins, weir};

/// The output with each line's runs of spaces made one, so the asserts
/// do not depend on column widths.
fn lines(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout).lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

fn has(lines: &[String], line: &str) -> bool {
    lines.iter().any(|l| l == line)
}

/// The timeline printed under `== timeline of <id>`, without the times:
/// each entry's kind, step, attempt and topic.
fn timeline(lines: &[String], id: &str) -> Vec<String> {
    let start = lines.iter().position(|l| l.starts_with(&format!("== timeline of {id} "))).expect("its timeline");
    lines[start + 1..]
        .iter()
        .take_while(|l| l.starts_with('+'))
        .map(|l| l.split_once(" ms ").map_or(l.clone(), |(_, rest)| rest.to_owned()))
        .collect()
}

#[test]
fn the_sagas_demo_completes_one_saga_and_compensates_others_in_reverse_order() {
    let cache = tempfile::tempdir().unwrap();
    let dir = Path::new(plugins::SAGA_SERVICE).parent().unwrap().to_str().unwrap();
    let out = weir(&["demo", "sagas", "--plugins", dir], cache.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let lines = lines(&out.stdout);

    for row in [
        "o-1001 completed order,payment,inventory,shipping - -",
        "o-1002 compensated order,payment,inventory inventory,payment,order step shipping failed",
        "o-1003 compensated order,payment,inventory inventory,payment,order step shipping timed out after 2 attempts",
        "o-1004 compensated order order step payment failed",
    ] {
        assert!(has(&lines, row), "no `{row}` in\n{stdout}");
    }

    let forward = [
        "command order #1 orders.order.open",
        "reply order #1 orders.order.opened",
        "command payment #1 payments.payment.charge",
        "reply payment #1 payments.payment.charged",
        "command inventory #1 stock.item.reserve",
        "reply inventory #1 stock.item.reserved",
        "command shipping #1 ship.parcel.schedule",
    ];
    let undo = [
        "compensate inventory #1 stock.item.release",
        "reply inventory #1 stock.item.released",
        "compensate payment #1 payments.payment.refund",
        "reply payment #1 payments.payment.refunded",
        "compensate order #1 orders.order.cancel",
        "reply order #1 orders.order.cancelled",
        "compensated",
    ];
    let ok: Vec<&str> = ["started"]
        .into_iter()
        .chain(forward)
        .chain(["reply shipping #1 ship.parcel.scheduled", "completed"])
        .collect();
    assert_eq!(timeline(&lines, "o-1001"), ok, "{stdout}");
    // No courier: the stock is released, then the payment refunded, then
    // the order cancelled, each once the one before replied.
    let no_courier: Vec<&str> = ["started"]
        .into_iter()
        .chain(forward)
        .chain(["reply shipping #1 ship.parcel.no-courier"])
        .chain(undo)
        .collect();
    assert_eq!(timeline(&lines, "o-1002"), no_courier, "{stdout}");
    // The courier never replies: two attempts time out, then the same.
    let silent: Vec<&str> = ["started"]
        .into_iter()
        .chain(forward)
        .chain(["timeout shipping #1", "command shipping #2 ship.parcel.schedule", "timeout shipping #2"])
        .chain(undo)
        .collect();
    assert_eq!(timeline(&lines, "o-1003"), silent, "{stdout}");

    // Its own checks passed, against the services' counted effects too.
    for line in [
        "o-1001: completed; applied once each: order, payment, inventory, shipping; nothing undone",
        "o-1002: compensated; applied once each: order, payment, inventory; undone once each, last first: inventory, payment, order",
        "o-1003: compensated; applied once each: order, payment, inventory; undone once each, last first: inventory, payment, order",
        "o-1004: compensated; applied once each: order; undone once each, last first: order",
    ] {
        assert!(has(&lines, line), "no `{line}` in\n{stdout}");
    }
}

#[test]
fn without_its_plugin_the_sagas_demo_fails_and_says_how_to_build_it() {
    let cache = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = weir(&["demo", "sagas", "--plugins", empty.path().to_str().unwrap()], cache.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("saga_service.wasm is missing: build the example plugins first (scripts/demo.sh does)"),
        "{stderr}"
    );
}
