//! `weir demo accounts`, the event-sourcing demo, run as a newcomer runs
//! it (the real binary over the plugins the tests build): the facts its
//! output states are the ones the commands imply.

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

#[test]
fn the_accounts_demo_shows_balances_a_rejection_a_replay_and_time_travel() {
    let cache = tempfile::tempdir().unwrap();
    let dir = Path::new(plugins::BANK_ACCOUNT).parent().unwrap().to_str().unwrap();
    let out = weir(&["demo", "accounts", "--plugins", dir], cache.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let lines = lines(&out.stdout);

    // The withdrawal over bob's balance is refused, with the aggregate's reason.
    assert!(
        lines.iter().any(|l| l.starts_with("bob withdraw {\"amount\":7500} REJECTED: ")
            && l.ends_with("insufficient funds: the balance is 5000, the withdrawal 7500")),
        "{stdout}"
    );
    assert_eq!(lines.iter().filter(|l| l.contains("REJECTED")).count(), 1, "{stdout}");
    assert_eq!(lines.iter().filter(|l| l.contains(" accepted: revision ")).count(), 10, "{stdout}");

    // The view `balances`, read once it reflects the last command's event.
    assert!(
        lines.iter().any(|l| l.starts_with("== view `balances`: GET /v1/views/balances?min_position=9&")),
        "{stdout}"
    );
    for row in ["alice 70.00 2", "bob 75.00 2", "carol 30.00 3"] {
        assert!(has(&lines, row), "no `{row}` in\n{stdout}");
    }
    // The view `statements`: each account's movements in order.
    let carol = lines.iter().position(|l| l == "carol").expect("carol's statement");
    assert_eq!(
        lines[carol + 1..carol + 4],
        ["#1 deposit +25.00 balance 25.00", "#2 deposit +10.00 balance 35.00", "#3 withdrawal -5.00 balance 30.00"],
        "{stdout}"
    );

    // The replay rebuilt `balances` from the log, equal.
    assert!(
        has(&lines, "done: 10 events applied, 0 skipped, 0 failed; the view is now state generation 1"),
        "{stdout}"
    );
    assert!(has(&lines, "the rebuilt view equals the one before: yes (3 accounts)"), "{stdout}");

    // Time travel: alice after her deposit, by revision and by time, and now.
    assert!(has(&lines, "at=1 balance 100.00 (after revision 1 of 2)"), "{stdout}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("at=20") && l.ends_with("balance 100.00 (after revision 1: the deposit's time)")),
        "{stdout}"
    );
    assert!(has(&lines, "now balance 70.00 (revision 2)"), "{stdout}");
}

#[test]
fn without_its_plugins_the_accounts_demo_fails_and_says_how_to_build_them() {
    let cache = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = weir(&["demo", "accounts", "--plugins", empty.path().to_str().unwrap()], cache.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bank_account.wasm is missing: build the example plugins first (scripts/demo.sh does)"),
        "{stderr}"
    );
}
