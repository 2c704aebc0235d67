//! `weir demo sagas`: the seed's orchestrated saga (docs/sagas.md) on the
//! embedded store. `orders.order.placed` starts a saga over four services —
//! order (open), payment (charge), inventory (reserve), shipping
//! (schedule) — each the plugins/saga-service Wasm module configured as a
//! handler. Four orders: one completes, one finds no courier and is
//! compensated in reverse order (release the stock, refund the payment,
//! cancel the order), one whose courier never replies times out and is
//! compensated the same way, and one whose card is declined.
//!
//! It prints each instance's timeline (the data `weir saga show` prints)
//! and checks what it shows against the instances and against the effects
//! the services counted in their state: it exits non-zero when they differ.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use weir_runtime::saga::{Instance, SagaStatus};
use weir_runtime::{Config, IdGenerator, JsonEvent, Runtime};

/// The services, in the saga's order: (name, command, done, failed,
/// compensation, undone, what the compensation does).
const SERVICES: [(&str, &str, &str, &str, &str, &str); 4] = [
    (
        "order",
        "orders.order.open",
        "orders.order.opened",
        "orders.order.refused",
        "orders.order.cancel",
        "orders.order.cancelled",
    ),
    (
        "payment",
        "payments.payment.charge",
        "payments.payment.charged",
        "payments.payment.declined",
        "payments.payment.refund",
        "payments.payment.refunded",
    ),
    (
        "inventory",
        "stock.item.reserve",
        "stock.item.reserved",
        "stock.item.out-of-stock",
        "stock.item.release",
        "stock.item.released",
    ),
    (
        "shipping",
        "ship.parcel.schedule",
        "ship.parcel.scheduled",
        "ship.parcel.no-courier",
        "ship.parcel.cancel",
        "ship.parcel.cancelled",
    ),
];

/// One order: its id, its payload, and what must come of it: the status,
/// the steps completed, the compensations in the order they ran.
struct Case {
    id: &'static str,
    payload: Value,
    what: &'static str,
    status: SagaStatus,
    completed: &'static [&'static str],
    compensated: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "o-1001",
            payload: json!({"order_id": "o-1001", "item": "teapot", "card": "ok", "address": "1 Main St"}),
            what: "every step succeeds",
            status: SagaStatus::Completed,
            completed: &["order", "payment", "inventory", "shipping"],
            compensated: &[],
        },
        Case {
            id: "o-1002",
            payload: json!({"order_id": "o-1002", "item": "teapot", "card": "ok", "address": "nowhere"}),
            what: "no courier: shipping fails",
            status: SagaStatus::Compensated,
            completed: &["order", "payment", "inventory"],
            compensated: &["inventory", "payment", "order"],
        },
        Case {
            id: "o-1003",
            payload: json!({"order_id": "o-1003", "item": "teapot", "card": "ok", "address": "2 Side St", "silent": ["shipping"]}),
            what: "the courier never replies: shipping times out",
            status: SagaStatus::Compensated,
            completed: &["order", "payment", "inventory"],
            compensated: &["inventory", "payment", "order"],
        },
        Case {
            id: "o-1004",
            payload: json!({"order_id": "o-1004", "item": "teapot", "card": "declined", "address": "1 Main St"}),
            what: "card declined: payment fails",
            status: SagaStatus::Compensated,
            completed: &["order"],
            compensated: &["order"],
        },
    ]
}

/// A step attempt waits this long for its reply; two attempts.
const STEP_TIMEOUT: &str = "400ms";

fn config_text(data: &Path, plugin: &Path) -> String {
    let plugin = plugin.display().to_string();
    let mut text = format!("data_dir = {:?}\n", data.display().to_string());
    text += "\n# Four services: one Wasm module (plugins/saga-service), four configurations.\n";
    for (name, command, done, failed, compensation, undone) in SERVICES {
        text += &format!(
            "[[pipelines]]\nname = \"{name}\"\ntopics = [\"{command}\", \"{compensation}\"]\n\
             [[pipelines.handlers]]\nname = \"service\"\nplugin = {plugin:?}\n\
             config = {{ service = \"{name}\", done = \"{done}\", failed = \"{failed}\", undone = \"{undone}\" }}\n\n"
        );
    }
    text += "# The saga: each placed order runs the four steps in order; a failure or a\n\
         # timeout compensates the completed ones, last first.\n\
         [[sagas]]\nname = \"order\"\nstart = \"orders.order.placed\"\ncorrelation = \"/order_id\"\ntimeout = \"1m\"\n";
    for (name, command, done, failed, compensation, undone) in SERVICES {
        text += &format!(
            "[[sagas.steps]]\nname = \"{name}\"\ncommand = \"{command}\"\nsuccess = [\"{done}\"]\nfailure = [\"{failed}\"]\n\
             timeout = \"{STEP_TIMEOUT}\"\nretry = {{ max_attempts = 2, initial_backoff = \"50ms\", jitter = 0.0 }}\n\
             compensation = \"{compensation}\"\ncompensation_success = [\"{undone}\"]\n"
        );
    }
    text
}

pub(crate) fn run(plugins: &Path, data_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let plugin = plugins.join("saga_service.wasm");
    if !plugin.is_file() {
        bail!(
            "{} is missing: build the example plugins first (scripts/demo.sh does), or point --plugins at them",
            plugin.display()
        );
    }
    let temp;
    let data_dir = match data_dir {
        Some(dir) => dir.to_owned(),
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp.path().to_owned()
        }
    };
    let plugin = std::fs::canonicalize(plugin)?;
    let toml = config_text(&data_dir.join("data"), &plugin);
    let config_path = data_dir.join("weir.toml");
    std::fs::create_dir_all(&data_dir)?;
    std::fs::write(&config_path, &toml)?;
    println!("== configuration ({})", config_path.display());
    println!("{}", toml.trim());
    let config = Config::load(&config_path)?;
    let runtime = Runtime::start(&config)?;
    let result = tour(&runtime);
    let shutdown = runtime.shutdown();
    result?;
    shutdown?;
    Ok(ExitCode::SUCCESS)
}

fn tour(runtime: &Runtime) -> anyhow::Result<()> {
    let cases = cases();
    let ids = IdGenerator::new();
    let mut events = Vec::new();
    for case in &cases {
        let line = json!({"topic": "orders.order.placed", "key": case.id, "payload": case.payload}).to_string();
        events.push(JsonEvent::from_json_line(&line).and_then(|e| e.into_event(&ids, "weir:demo"))?);
    }
    println!("\n== placing {} orders on orders.order.placed", events.len());
    let started = Instant::now();
    for (case, published) in cases.iter().zip(runtime.publish_blocking(events)?) {
        println!("  seq {:>3}  {}  {}", published.seq, case.id, case.what);
    }

    // Each saga ends in a final status; the timeout case takes two attempts
    // of STEP_TIMEOUT, so this takes about a second.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut done = Vec::new();
    for case in &cases {
        let inst = loop {
            match runtime.saga_get(Some("order"), case.id) {
                Ok(inst) if inst.status.is_final() => break inst,
                Ok(_) | Err(weir_runtime::SagaError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            if Instant::now() > deadline {
                bail!("saga {} did not finish within 30 s", case.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        done.push(inst);
    }
    println!("  all {} sagas finished in {:.0} ms", done.len(), started.elapsed().as_secs_f64() * 1e3);

    println!("\n== sagas (weir saga list)");
    println!("  {:<8} {:<12} {:<37} {:<28} CAUSE", "ID", "STATUS", "COMPLETED", "COMPENSATED");
    for inst in &done {
        println!(
            "  {:<8} {:<12} {:<37} {:<28} {}",
            inst.id,
            inst.status.as_str(),
            inst.completed.join(","),
            if inst.compensated.is_empty() { "-".to_owned() } else { inst.compensated.join(",") },
            inst.cause.as_deref().unwrap_or("-")
        );
    }
    for inst in &done {
        if inst.id != "o-1004" {
            print_timeline(inst);
        }
    }

    println!("\n== checks: each instance, and the effects each service counted in its state");
    for (case, inst) in cases.iter().zip(&done) {
        check(runtime, case, inst)?;
        let undone = if case.compensated.is_empty() {
            "nothing undone".to_owned()
        } else {
            format!("undone once each, last first: {}", case.compensated.join(", "))
        };
        println!("  {}: {}; applied once each: {}; {undone}", case.id, inst.status.as_str(), case.completed.join(", "));
    }
    println!(
        "\nThe coordinator committed each transition with the commands it sent, so a crash at\n\
         any moment loses nothing and sends nothing twice. On a server: `weir saga list`,\n\
         `weir saga show <id>`, GET /v1/sagas. See docs/sagas.md."
    );
    Ok(())
}

/// The timeline, with times from the saga's start.
fn print_timeline(inst: &Instance) {
    let cause = inst.cause.as_deref().map(|c| format!(": {c}")).unwrap_or_default();
    println!("\n== timeline of {} (weir saga show {}): {}{cause}", inst.id, inst.id, inst.status.as_str());
    for e in &inst.timeline {
        let mut line = format!("  +{:>5} ms  {:<13}", e.at_ms.saturating_sub(inst.started_ms), e.kind);
        if let Some(step) = &e.step {
            line.push_str(&format!(" {step:<9}"));
        }
        if let Some(a) = e.attempt {
            line.push_str(&format!(" #{a}"));
        }
        if let Some(t) = &e.topic {
            line.push_str(&format!(" {t}"));
        }
        if let Some(n) = &e.note {
            line.push_str(&format!(" ({n})"));
        }
        println!("{}", line.trim_end());
    }
}

/// What the instance says and what the services did are what the case
/// implies.
fn check(runtime: &Runtime, case: &Case, inst: &Instance) -> anyhow::Result<()> {
    let id = case.id;
    if inst.status != case.status {
        bail!("saga {id} is {}, not {}", inst.status.as_str(), case.status.as_str());
    }
    if inst.completed != case.completed {
        bail!("saga {id} completed {:?}, not {:?}", inst.completed, case.completed);
    }
    if inst.compensated != case.compensated {
        bail!("saga {id} compensated {:?}, not {:?}", inst.compensated, case.compensated);
    }
    // Strictly in reverse order, one at a time: each compensation is sent
    // only after the one before it replied.
    let mut sent = Vec::new();
    let mut waiting = false;
    for e in &inst.timeline {
        match e.kind.as_str() {
            "compensate" => {
                if waiting {
                    bail!("saga {id}: compensation {:?} sent before the previous one replied", e.step);
                }
                sent.push(e.step.clone().unwrap_or_default());
                waiting = true;
            }
            "reply" if waiting => waiting = false,
            _ => {}
        }
    }
    if sent != case.compensated {
        bail!("saga {id}: the timeline sent compensations {sent:?}, not {:?}", case.compensated);
    }
    if id == "o-1003" {
        let timeouts = inst.timeline.iter().filter(|e| e.kind == "timeout").count();
        if timeouts != 2 || inst.cause.as_deref() != Some("step shipping timed out after 2 attempts") {
            bail!("saga {id}: {timeouts} timeouts, cause {:?}", inst.cause);
        }
    }
    for (service, ..) in SERVICES {
        let counted = |phase: &str| -> anyhow::Result<u64> {
            let key = format!("effects:{phase}");
            let page = runtime.subscription_state(&format!("{service}/service"), Some(id), key.as_bytes(), None, 2)?;
            match page.entries.iter().find(|(k, _)| k == key.as_bytes()) {
                Some((_, value)) => serde_json::from_slice(value).with_context(|| format!("{service}: {key}")),
                None => Ok(0),
            }
        };
        let (forward, undone) = (counted("forward")?, counted("compensate")?);
        let want = (u64::from(case.completed.contains(&service)), u64::from(case.compensated.contains(&service)));
        if (forward, undone) != want {
            bail!("saga {id}: {service} applied its step {forward} and its compensation {undone} times, not {want:?}");
        }
    }
    Ok(())
}
