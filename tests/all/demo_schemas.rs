//! `weir demo schemas`, the versioned-events demo, run as a newcomer runs
//! it (the real binary over the plugins the tests build): a v2-only handler
//! given only v2, a broken upcaster's dead letters holding the v1 originals,
//! the fix deployed live, the redrive handling each once, the log untouched.

use std::path::Path;

use weir_tests::{plugins, weir};

/// The output with each line's runs of spaces made one, so the asserts
/// do not depend on column widths.
fn lines(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout).lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

/// The lines after the one starting with `heading`, up to the next blank.
fn section<'a>(lines: &'a [String], heading: &str) -> &'a [String] {
    let start = lines.iter().position(|l| l.starts_with(heading)).unwrap_or_else(|| panic!("no {heading:?}")) + 1;
    let len = lines[start..].iter().position(String::is_empty).unwrap_or(lines.len() - start);
    &lines[start..start + len]
}

#[test]
fn the_schemas_demo_upcasts_dead_letters_the_original_and_redrives_after_a_live_fix() {
    let cache = tempfile::tempdir().unwrap();
    let dir = Path::new(plugins::ORDERS_V2).parent().unwrap().to_str().unwrap();
    let out = weir(&["demo", "schemas", "--plugins", dir], cache.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let lines = lines(&out.stdout);

    // Both producers' orders stored; a v1 order in v2's shape refused.
    let published = section(&lines, "== two producers publish side by side");
    assert_eq!(published.iter().filter(|l| l.contains(" stored at seq ")).count(), 6, "{stdout}");
    assert!(
        published.iter().any(|l| l.starts_with("shop-v1 v1 o-7")
            && l.contains("REFUSED (422 schema_violation)")
            && l.contains("\"/amount\"")),
        "{stdout}"
    );

    // Before the fix: the handler was given v2 only; o-1 upcast with EUR.
    let first = section(&lines, "== what the v2-only handler was given");
    assert_eq!(
        first[1..5],
        ["o-1 v1 v2 20.00 EUR", "o-2 v2 v2 35.00 USD", "o-4 v2 v2 18.20 EUR", "o-6 v2 v2 5.00 GBP"],
        "{stdout}"
    );

    // The dead letters hold the v1 events as stored, and say why.
    let dlq = section(&lines, "== dead-letter queue");
    assert_eq!(dlq.len(), 4, "{stdout}");
    for (line, amount) in [(&dlq[0], "12.5"), (&dlq[2], "7.99")] {
        assert!(line.starts_with("orders/v2 seq "), "{stdout}");
        assert!(
            line.ends_with(&format!(
                "[upcast_failed] delivered as version 2: upcaster orders-v2 (1 → 2) failed: handler_reject: \
                 amount {amount} is not a whole number of euros"
            )),
            "{stdout}"
        );
    }
    assert_eq!(dlq[1], r#"kept as stored: v1 {"id":"o-3","amount":12.5}"#, "{stdout}");
    assert_eq!(dlq[3], r#"kept as stored: v1 {"id":"o-5","amount":7.99}"#, "{stdout}");

    // The fix, then the redrive: both handled, once, as v2.
    assert!(lines.iter().any(|l| l.starts_with("upcasters/orders-v2: version 2 (sha256 ")), "{stdout}");
    assert!(lines.iter().any(|l| l == "redriven: 2; a second redrive found 0 to redrive"), "{stdout}");
    let all = section(&lines, "== what the handler was given, in all");
    assert_eq!(
        all[1..],
        [
            "o-1 v1 v2 20.00 EUR",
            "o-2 v2 v2 35.00 USD",
            "o-3 v1 v2 12.50 EUR",
            "o-4 v2 v2 18.20 EUR",
            "o-5 v1 v2 7.99 EUR",
            "o-6 v2 v2 5.00 GBP",
            "each order once, each as v2",
        ],
        "{stdout}"
    );

    // The log holds the orders as published.
    let log = section(&lines, "== the log");
    assert_eq!(log.len(), 6, "{stdout}");
    assert!(log.iter().any(|l| l.ends_with(r#"o-3 v1 {"id":"o-3","amount":12.5}"#)), "{stdout}");
}

#[test]
fn without_its_plugins_the_schemas_demo_fails_and_says_how_to_build_them() {
    let cache = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = weir(&["demo", "schemas", "--plugins", empty.path().to_str().unwrap()], cache.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("orders_v2.wasm is missing: build the example plugins first"), "{stderr}");
}
