//! The `schemas` scenario (issue 16): what a `[[schemas]]` check at ingest
//! and one upcast step at delivery cost on the `s2` fan-out. Four variants
//! of the same run, interleaved round by round so the machine's drift
//! spreads over all of them:
//!
//! - `s2` as is;
//! - `s2` with a JSON Schema on `orders.order.created` v1 that every bench
//!   event satisfies: each event is parsed and validated once, at ingest,
//!   before its commit (the handlers' emits go to `orders.order.large`,
//!   which no schema covers);
//! - the handlers replaced by `bench-filter-v2` (the filter's logic on a v2
//!   payload, accepting v2 only) and an upcaster configured, the events
//!   published as v2: no upcast runs — the control for the handler change;
//! - the same with the events published as v1: each delivery runs one step
//!   of `bench-upcaster` (a Wasm call that parses the payload, moves two
//!   fields, writes it back) before the handler. Upcasting is per
//!   subscription, so on the 2-way fan-out that is two upcaster calls per
//!   event.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use weir_abi::Event;
use weir_runtime::Runtime;
use weir_tests::plugins;

use crate::weir::{Setup, Shape, Throughput, throughput};

/// What the input topic carries besides the plain `s2` setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// Plain `s2`.
    None,
    /// A JSON Schema on the input topic, checked at ingest.
    Validate,
    /// v2 events to v2-only handlers, an upcaster configured but not run.
    V2,
    /// v1 events to v2-only handlers: one upcast step per delivery.
    Upcast,
}

/// The v1 schema of the bench orders (weir::payload): every bench event
/// satisfies it; it checks what a real one would (types, bounds, an enum,
/// the required fields, no others).
const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["order_id", "customer", "currency", "total_cents", "items"],
  "additionalProperties": false,
  "properties": {
    "order_id": {"type": "string", "minLength": 1, "maxLength": 64},
    "customer": {"type": "string", "minLength": 1, "maxLength": 64},
    "currency": {"enum": ["EUR", "USD", "GBP"]},
    "total_cents": {"type": "integer", "minimum": 0},
    "items": {"type": "integer", "minimum": 1, "maximum": 1000},
    "note": {"type": "string", "maxLength": 1000}
  }
}"#;

impl Variant {
    /// The handlers' plugin.
    pub(crate) fn handler_plugin(self) -> &'static str {
        match self {
            Self::None | Self::Validate => plugins::FILTER,
            Self::V2 | Self::Upcast => plugins::BENCH_FILTER_V2,
        }
    }

    /// The `[[schemas]]` or `[[upcasters]]` it adds to the config.
    pub(crate) fn config(self) -> String {
        match self {
            Self::None => String::new(),
            Self::Validate => format!(
                "[[schemas]]\ntopic = \"orders.order.created\"\n[[schemas.versions]]\nversion = 1\nschema = '''{SCHEMA}'''\n"
            ),
            Self::V2 | Self::Upcast => format!(
                "[[upcasters]]\nname = \"bench\"\ntopic = \"orders.order.created\"\nfrom = 1\nto = 2\nplugin = {:?}\n",
                plugins::BENCH_UPCASTER
            ),
        }
    }

    /// Turn the bench's v1 events into what this variant publishes (before
    /// the clock starts).
    pub(crate) fn prepare(self, batches: &mut [Vec<Event>]) {
        if self != Self::V2 {
            return;
        }
        for event in batches.iter_mut().flatten() {
            event.schema_version = 2;
            event.payload = v2(&event.payload);
        }
    }
}

impl Variant {
    /// A batch as the ingest path admits it: with a schema, each event is
    /// checked by the call `POST /v1/events` makes (`Schemas::check`), on
    /// the publishing thread inside the timed run, as an HTTP worker
    /// thread checks a request before its publish. (The bench publishes in
    /// process, and `Runtime::publish` itself checks nothing.)
    pub(crate) fn admit(self, rt: &Runtime, batch: Vec<Event>) -> Vec<Event> {
        if self == Self::Validate {
            let schemas = &rt.config().schemas;
            for e in &batch {
                if let Err(err) = schemas.check(&e.topic, e.schema_version, &e.payload) {
                    panic!("a bench event fails the bench schema: {err}");
                }
            }
        }
        batch
    }

    /// After a run: every subscription handled every event and dead-lettered
    /// none, and the handlers passed one in ten on (the `large` orders).
    /// Otherwise the run measured failures, not the work.
    pub(crate) fn verify(self, rt: &Runtime, subs: &[&str], n: usize) {
        if self == Self::None {
            return;
        }
        for sub in subs {
            let c = rt.counters(sub).expect("a bench subscription");
            assert!(c.handled == n as u64 && c.dead_lettered == 0, "{self:?}: {sub} handled {c:?} of {n}");
        }
        let large = rt
            .store()
            .read_log(0, usize::MAX)
            .expect("the log")
            .iter()
            .filter(|(_, e)| e.topic == "orders.order.large")
            .count();
        assert_eq!(large, subs.len() * n.div_ceil(10), "{self:?}: emitted");
    }
}

/// The v2 form of a bench payload, as `bench-upcaster` makes it.
fn v2(payload: &[u8]) -> Vec<u8> {
    let mut order: Map<String, Value> = serde_json::from_slice(payload).expect("a bench payload is JSON");
    let cents = order.remove("total_cents").expect("total_cents");
    let currency = order.remove("currency").expect("currency");
    order.insert("total".into(), json!({ "cents": cents, "currency": currency }));
    serde_json::to_vec(&order).expect("JSON")
}

const VARIANTS: [(&str, &str, Variant); 4] = [
    ("s2", "`s2` as is (filter plugin, events v1)", Variant::None),
    ("validate", "+ a JSON Schema on the input topic, every event validated at ingest", Variant::Validate),
    ("v2", "v2-only handlers (`bench-filter-v2`), events published as v2: no upcast (control)", Variant::V2),
    ("upcast", "v2-only handlers, events published as v1: one upcast step per delivery (2 per event)", Variant::Upcast),
];

pub(crate) fn report(r: &mut crate::Report, o: &crate::Options, results: &mut BTreeMap<String, f64>) {
    if !o.scenarios.iter().any(|s| s == "schemas") {
        return;
    }
    let mut runs: Vec<Vec<Throughput>> = vec![Vec::new(); VARIANTS.len()];
    for round in 0..o.repeat {
        for (i, (id, what, variant)) in VARIANTS.iter().enumerate() {
            eprintln!("running schemas/{id} (round {} of {}): {what} …", round + 1, o.repeat);
            runs[i].push(throughput(Setup { schemas: *variant, ..Setup::new(Shape::FanOut) }, o.events));
        }
    }
    r.section(
        &format!(
            "Schemas and upcasters on the `s2` fan-out, {} events (median of {} rounds, range)",
            o.events, o.repeat
        ),
        "| variant | what | events/s end to end | against `s2` | wall time per event against `s2` |",
    );
    let mut medians = Vec::new();
    for (i, (id, what, _)) in VARIANTS.iter().enumerate() {
        let (t, lo, hi) = crate::median_by(&mut runs[i], |t| t.events_per_sec);
        medians.push(t.events_per_sec);
        let base = medians[0];
        let (ratio, cost) = if i == 0 {
            ("–".to_owned(), "–".to_owned())
        } else {
            (
                format!("{:+.1}%", (t.events_per_sec / base - 1.0) * 100.0),
                format!("{:+.2} µs", (1.0 / t.events_per_sec - 1.0 / base) * 1e6),
            )
        };
        r.row(&[format!("`{id}`"), (*what).to_owned(), crate::spread(t.events_per_sec, lo, hi), ratio, cost]);
        results.insert(format!("schemas_{id}"), t.events_per_sec);
        r.json["scenarios"][format!("schemas_{id}")] = json!({ "median": t, "runs": runs[i] });
    }
    let _ = writeln!(
        r.md,
        "\nThe upcast step's own cost is `upcast` against `v2` (same handlers, same emits); `v2` against `s2` is the \
         handler change. Per event is the difference of the wall time per event at these rates, not CPU time."
    );
}
