use super::super::Config;
use super::*;

const BASE: &str = r#"
[[pipelines]]
name = "services"
topics = ["payments.payment.charge", "payments.payment.refund", "stock.item.reserve", "stock.item.release", "ship.parcel.schedule"]
[[pipelines.handlers]]
name = "v"
plugin = "PLUGIN"
"#;

const SAGA: &str = r#"
[[sagas]]
name = "order"
start = "orders.order.placed"
correlation = "/order_id"
timeout = "5m"
[[sagas.steps]]
name = "payment"
command = "payments.payment.charge"
success = ["payments.payment.charged"]
failure = ["payments.payment.declined"]
timeout = "2s"
retry = { max_attempts = 3 }
compensation = "payments.payment.refund"
compensation_success = ["payments.payment.refunded"]
[[sagas.steps]]
name = "inventory"
command = "stock.item.reserve"
success = ["stock.item.reserved"]
failure = ["stock.item.out-of-stock"]
compensation = "stock.item.release"
compensation_success = ["stock.item.released"]
pivot = true
[[sagas.steps]]
name = "shipping"
command = "ship.parcel.schedule"
success = ["ship.parcel.scheduled"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir();
    let plugin = dir.join("weir-config-saga-test.wasm");
    std::fs::write(&plugin, b"\0asm\x01\0\0\0").unwrap();
    Config::parse(&text.replace("PLUGIN", &plugin.display().to_string()), &dir.join("weir.toml"))
}

#[test]
fn a_declaration_parses_with_its_defaults() {
    let c = parse(&format!("{BASE}{SAGA}")).unwrap();
    let s = &c.sagas[0];
    assert_eq!(s.subscription(), "sagas/order");
    assert_eq!(s.correlation, Correlation::Payload("/order_id".into()));
    assert_eq!(s.timeout, Duration::from_secs(300));
    assert_eq!(s.steps.len(), 3);
    assert_eq!(s.steps[0].timeout, Duration::from_secs(2));
    assert_eq!(s.steps[0].retry.max_attempts, 3);
    assert_eq!(s.steps[1].compensation.as_ref().unwrap().timeout, DEFAULT_STEP_TIMEOUT);
    assert!(s.steps[1].pivot && !s.steps[0].pivot);
    assert!(s.topics().contains(&"weir-saga.order.timer".to_owned()));
    assert!(s.topics().contains(&"payments.payment.refunded".to_owned()));
}

#[test]
fn bad_declarations_are_refused_with_the_key_and_the_reason() {
    let cases: Vec<(String, &str, &str)> = vec![
        (SAGA.replacen("name = \"inventory\"", "name = \"payment\"", 1), "sagas[0].steps[1].name", "declared twice"),
        (
            SAGA.replacen("name = \"shipping\"\n", "name = \"shipping\"\ncompensation = \"ship.parcel.schedule\"\ncompensation_success = [\"ship.parcel.cancelled\"]\n", 1),
            "sagas[0].steps[2].compensation",
            "after the pivot",
        ),
        (SAGA.replacen("ship.parcel.schedule\"\nsuccess", "ship.parcel.nobody\"\nsuccess", 1), "sagas[0].steps[2].command", "unknown topic"),
        (SAGA.replacen("[\"stock.item.reserved\"]", "[\"stock.reserved\"]", 1), "sagas[0].steps[1].success[0]", "invalid topic"),
        (SAGA.replacen("start = \"orders.order.placed\"", "start = \"orders\"", 1), "sagas[0].start", "invalid topic"),
        (SAGA.replacen("[\"stock.item.reserved\"]", "[\"payments.payment.charged\"]", 1), "sagas[0].steps[1].success[0]", "read already"),
        (SAGA.replacen("success = [\"ship.parcel.scheduled\"]\n", "success = [\"ship.parcel.scheduled\"]\npivot = true\n", 1), "sagas[0].steps[2].pivot", "at most one"),
        (SAGA.replacen("[\"ship.parcel.scheduled\"]", "[]", 1), "sagas[0].steps[2].success", "at least one"),
        (SAGA.replacen("[\"ship.parcel.scheduled\"]", "[\"weir-saga.order.timer\"]", 1), "sagas[0].steps[2].success[0]", "host's own"),
        (SAGA.replacen("correlation = \"/order_id\"", "correlation = \"order_id\"", 1), "sagas[0].correlation", "JSON pointer"),
        (SAGA.replacen("timeout = \"2s\"", "timeout = \"0s\"", 1), "sagas[0].steps[0].timeout", "more than 0"),
        (SAGA.replacen("[\"payments.payment.declined\"]", "[\"ship.parcel.schedule\"]", 1), "sagas[0].steps[2].command", "also read"),
        (format!("{SAGA}{}", SAGA.replacen("orders.order.placed", "orders.order.other", 1)), "sagas[1].name", "declared twice"),
        (SAGA.replacen("timeout = \"2s\"\n", "timeout = \"2s\"\ncompensation_timeout = \"1s\"\n", 1).replacen("name = \"shipping\"\n", "name = \"shipping\"\ncompensation_timeout = \"1s\"\n", 1), "sagas[0].steps[2].compensation_timeout", "belongs to a compensation"),
    ];
    for (saga, key, reason) in cases {
        let e = parse(&format!("{BASE}{saga}")).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.reason.contains(reason), "{key}: {e}");
    }
    let e = parse(&format!("{BASE}{SAGA}").replacen("name = \"services\"", "name = \"sagas\"", 1)).unwrap_err();
    assert_eq!(e.key, "pipelines[0].name", "{e}");
}
