//! Scale-out on JetStream (issue 17): real `weir run` processes (the binary
//! next to this bench, `target/<profile>/weir`) and a real `nats-server -js`.
//!
//! - `ingest`: one node, the counter plugin (one `counter.key.counted`
//!   per input, stateful) emitting to a JetStream sink; fed by a JetStream
//!   source (the bench publishes to the input stream with acks), against the
//!   same node fed over HTTP (`POST /v1/events`, batches of 500, 4 clients).
//! - `cluster`: 1, 2 and 3 nodes of a `[cluster]` (8 partitions, R1) on one
//!   nats-server, events posted over HTTP to the nodes in turn, the same
//!   handler and sink.
//!
//! Events/s is end to end: the first input sent → the last output in the
//! output stream (read by the bench from JetStream). CPU is utime + stime
//! from `/proc/<pid>/stat` of every `weir` process and of nats-server over
//! that window, per event. On a 2-core machine shared by everything (the
//! nodes, nats-server, the bench's clients) this is a cost per event, not a
//! scaling figure.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use async_nats::jetstream::{self, stream};
use serde_json::{Value, json};
use weir_tests::Server;

use crate::{Options, Report, jetstream as peer, thousands};

/// Distinct keys of the inputs (the counter keeps a count per key).
const KEYS: usize = 1_000;
/// Events of the warm-up, before the measured window (Wasm compiled and
/// instantiated, connections and consumers up, partitions owned).
const WARM_UP: usize = 200;
/// Events per `POST /v1/events`.
const HTTP_BATCH: usize = 500;
/// Concurrent HTTP clients.
const HTTP_CLIENTS: usize = 4;
/// Publishes awaiting their ack on the JetStream publisher.
const PUBLISH_WINDOW: usize = 256;
/// No new output for this long: the run failed.
const STALL: Duration = Duration::from_secs(60);
/// Partitions of the `[cluster]` runs.
const PARTITIONS: usize = 8;
/// Linux's USER_HZ: the unit of utime and stime in /proc/<pid>/stat (100
/// on every architecture Linux runs on).
const CLOCK_TICKS: f64 = 100.0;

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Run {
    pub(crate) nodes: usize,
    pub(crate) events: usize,
    pub(crate) secs: f64,
    pub(crate) events_per_sec: f64,
    /// CPU seconds of each `weir run` process over the window.
    pub(crate) node_cpu_secs: Vec<f64>,
    pub(crate) nats_cpu_secs: f64,
}

impl Run {
    fn weir_us_per_event(&self) -> f64 {
        self.node_cpu_secs.iter().sum::<f64>() / self.events as f64 * 1e6
    }
    fn nats_us_per_event(&self) -> f64 {
        self.nats_cpu_secs / self.events as f64 * 1e6
    }
}

/// How inputs reach the node(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// A `[[sources]]` of type jetstream on stream `IN`.
    JetStream,
    /// `POST /v1/events` to the nodes in turn.
    Http,
}

/// utime + stime of `pid`, in seconds.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("no ')' in /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the file; `rest` starts at field 3.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| anyhow!("bad stat"));
    Ok((ticks(11)? + ticks(12)?) as f64 / CLOCK_TICKS)
}

/// The `weir` binary of this bench's profile; built beforehand (`cargo
/// bench` does not build other packages' binaries).
fn weir_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).ok_or_else(|| anyhow!("no target/<profile> above {exe:?}"))?;
    let bin = dir.join(format!("weir{}", std::env::consts::EXE_SUFFIX));
    let flag = if cfg!(debug_assertions) { "" } else { " --release" };
    ensure!(bin.is_file(), "{} is missing: run `cargo build{flag} -p weir-runtime --bin weir` first", bin.display());
    Ok(bin)
}

/// A `nats-server -js` on a free port, its store in `dir`; killed on drop.
struct Nats {
    child: Child,
    port: u16,
}

impl Nats {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let binary = peer::server_binary().ok_or_else(|| anyhow!("nats-server is not installed"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let store = dir.join("nats");
        std::fs::create_dir_all(&store)?;
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let nats = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(Instant::now() < deadline, "nats-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sink_toml(url: &str) -> String {
    format!(
        r#"
[[pipelines]]
name = "count"
topics = ["orders.order.created"]
[[pipelines.handlers]]
name = "counter"
plugin = "{{COUNTER}}"

[[jetstream_sinks]]
name = "out"
topics = ["counter.key.counted"]
url = "{url}"
subject = "out.{{topic}}"
timeout = "5s"
retry = {{ max_attempts = 100000, initial_backoff = "50ms", max_backoff = "500ms" }}
"#
    )
}

fn source_toml(url: &str) -> String {
    format!(
        "[[sources]]\nname = \"in\"\ntype = \"jetstream\"\nurl = \"{url}\"\nstream = \"IN\"\nsubjects = [\"in.>\"]\n\
         topic = \"orders.order.created\"\n"
    )
}

fn cluster_toml(url: &str, node: &str) -> String {
    format!("[cluster]\nurl = \"{url}\"\nnode = \"{node}\"\npartitions = {PARTITIONS}\nreplicas = 1\n")
}

async fn create_stream(js: &jetstream::Context, name: &str, subject: &str) -> anyhow::Result<stream::Stream> {
    let config = stream::Config { name: name.into(), subjects: vec![subject.into()], ..Default::default() };
    js.get_or_create_stream(config).await.map_err(|e| anyhow!("creating stream {name}: {e}"))
}

/// Publish inputs `from..to` to `IN`, at most [`PUBLISH_WINDOW`] awaiting
/// their ack.
async fn publish(js: &jetstream::Context, from: usize, to: usize) -> anyhow::Result<()> {
    let mut pending = VecDeque::new();
    for i in from..to {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("weir-key", format!("k{}", i % KEYS).as_str());
        headers.insert("Nats-Msg-Id", format!("e{i}").as_str());
        let ack = js
            .publish_with_headers("in.orders.order.created", headers, crate::weir::payload(i).into())
            .await
            .map_err(|e| anyhow!("publish: {e}"))?;
        pending.push_back(ack);
        if pending.len() >= PUBLISH_WINDOW
            && let Some(ack) = pending.pop_front()
        {
            ack.await.map_err(|e| anyhow!("publish ack: {e}"))?;
        }
    }
    for ack in pending {
        ack.await.map_err(|e| anyhow!("publish ack: {e}"))?;
    }
    Ok(())
}

/// POST inputs `from..to` in batches of [`HTTP_BATCH`] from
/// [`HTTP_CLIENTS`] threads, batch `b` to node `b % nodes`.
fn post(nodes: &[Server], from: usize, to: usize) -> anyhow::Result<()> {
    let batches: Vec<(usize, usize)> =
        (from..to).step_by(HTTP_BATCH).map(|start| (start, (start + HTTP_BATCH).min(to))).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..HTTP_CLIENTS)
            .map(|client| {
                let batches = &batches;
                s.spawn(move || -> anyhow::Result<()> {
                    for (b, (start, end)) in batches.iter().enumerate().skip(client).step_by(HTTP_CLIENTS) {
                        let events: Vec<Value> = (*start..*end)
                            .map(|i| {
                                let payload: Value = serde_json::from_slice(&crate::weir::payload(i))?;
                                Ok(json!({"topic": "orders.order.created", "key": format!("k{}", i % KEYS),
                                    "idempotency_key": format!("e{i}"), "payload": payload}))
                            })
                            .collect::<anyhow::Result<_>>()?;
                        let node = &nodes[b % nodes.len()];
                        let body = Value::Array(events).to_string();
                        let (code, answer) =
                            node.try_post("/v1/events", "application/json", body.as_bytes()).map_err(|e| anyhow!(e))?;
                        ensure!(code == 200, "POST /v1/events to {}: {code} {answer}", node.url);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow!("an HTTP client panicked"))??;
        }
        Ok(())
    })
}

/// Wait until `OUT` holds `total` messages; fails when none comes for
/// [`STALL`].
async fn wait_outputs(out: &mut stream::Stream, total: usize) -> anyhow::Result<()> {
    let (mut seen, mut since) = (0, Instant::now());
    loop {
        let n = out.info().await.map_err(|e| anyhow!("stream info: {e}"))?.state.messages as usize;
        if n >= total {
            ensure!(n == total, "{n} outputs for {total} inputs");
            return Ok(());
        }
        if n > seen {
            (seen, since) = (n, Instant::now());
        }
        ensure!(since.elapsed() < STALL, "{n} of {total} outputs, none for {STALL:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every partition owned, by `nodes` live nodes, as `server` sees it.
fn wait_owned(server: &Server, nodes: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (code, c) = server.get("/v1/cluster");
        let owned = c["owners"].as_array().map_or(0, |o| o.iter().filter(|p| !p["owner"].is_null()).count());
        let live = c["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["partitions"].as_array().is_some_and(|p| !p.is_empty())).count());
        if code == 200 && owned == PARTITIONS && live == nodes {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "partitions not all owned by {nodes} nodes: {code} {c}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One run: `nodes` nodes (`[cluster]` when `clustered`), fed by `feed`,
/// `n` events measured after the warm-up.
fn run(feed: Feed, nodes_n: usize, clustered: bool, n: usize) -> anyhow::Result<Run> {
    weir_binary()?;
    let dir = tempfile::tempdir()?;
    let nats = Nats::start(dir.path())?;
    let url = nats.url();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let js = rt.block_on(async {
        let client = async_nats::connect(url.as_str()).await.map_err(|e| anyhow!("connect: {e}"))?;
        anyhow::Ok(jetstream::new(client))
    })?;
    let mut out = rt.block_on(create_stream(&js, "OUT", "out.>"))?;
    if feed == Feed::JetStream {
        rt.block_on(create_stream(&js, "IN", "in.>"))?;
    }
    let nodes: Vec<Server> = (0..nodes_n)
        .map(|i| {
            let d = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&d)?;
            let mut toml = if clustered { cluster_toml(&url, &format!("n{i}")) } else { String::new() };
            if feed == Feed::JetStream {
                toml += &source_toml(&url);
            }
            toml += &sink_toml(&url);
            // Server::start panics when the node does not come up.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Server::start(&d, &toml)))
                .map_err(|_| anyhow!("weir run n{i} did not start (see {}/weir-run.stderr)", d.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    if clustered {
        wait_owned(&nodes[0], nodes_n)?;
    }
    let send = |from: usize, to: usize| match feed {
        Feed::JetStream => rt.block_on(publish(&js, from, to)),
        Feed::Http => post(&nodes, from, to),
    };
    send(0, WARM_UP)?;
    rt.block_on(wait_outputs(&mut out, WARM_UP))?;
    let pids: Vec<u32> = nodes.iter().map(Server::pid).collect();
    let cpu = |pid: u32| cpu_secs(pid);
    let before: Vec<f64> = pids.iter().map(|p| cpu(*p)).collect::<anyhow::Result<_>>()?;
    let nats_before = cpu(nats.child.id())?;
    let started = Instant::now();
    send(WARM_UP, WARM_UP + n)?;
    rt.block_on(wait_outputs(&mut out, WARM_UP + n))?;
    let secs = started.elapsed().as_secs_f64();
    let after: Vec<f64> = pids.iter().map(|p| cpu(*p)).collect::<anyhow::Result<_>>()?;
    let nats_cpu_secs = cpu(nats.child.id())? - nats_before;
    if clustered {
        // Ownership did not move during the run (a moved partition is read
        // again: its events would cost twice).
        wait_owned(&nodes[0], nodes_n)?;
    }
    drop(nodes);
    Ok(Run {
        nodes: nodes_n,
        events: n,
        secs,
        events_per_sec: n as f64 / secs,
        node_cpu_secs: after.iter().zip(&before).map(|(a, b)| a - b).collect(),
        nats_cpu_secs,
    })
}

/// Events per run: a quarter of `--events` (these runs carry two JetStream
/// hops and HTTP; the full 200,000 takes minutes per run on 2 cores).
fn events(o: &Options) -> usize {
    (o.events / 4).max(100)
}

fn cpu_cells(t: &Run) -> Vec<String> {
    let per_node: Vec<String> = t.node_cpu_secs.iter().map(|c| format!("{:.1}", c / t.events as f64 * 1e6)).collect();
    vec![
        format!("**{:.1}**", t.weir_us_per_event()),
        per_node.join(" / "),
        format!("{:.1}", t.nats_us_per_event()),
        format!("{:.1}", t.weir_us_per_event() + t.nats_us_per_event()),
    ]
}

pub(crate) fn report(r: &mut Report, o: &Options, results: &mut BTreeMap<String, f64>) {
    let wanted = |s: &str| o.scenarios.iter().any(|x| x == s);
    let (ingest, cluster) = (wanted("ingest"), wanted("cluster"));
    if !ingest && !cluster {
        return;
    }
    if peer::server_version().is_none() {
        for s in ["ingest", "cluster"].into_iter().filter(|s| wanted(s)) {
            r.skip(s, "nats-server is not installed (Debian package `nats-server`)");
        }
        return;
    }
    let n = events(o);
    let mut variants: Vec<(&str, String, Feed, usize, bool)> = Vec::new();
    if ingest {
        variants.push((
            "ingest",
            "JetStream source → counter → JetStream sink, one node".into(),
            Feed::JetStream,
            1,
            false,
        ));
        variants.push(("ingest", "HTTP → counter → JetStream sink, one node".into(), Feed::Http, 1, false));
    }
    if cluster {
        for nodes in 1..=3 {
            variants.push((
                "cluster",
                format!("`[cluster]`, {nodes} node(s): HTTP → WEIR_IN → counter → JetStream sink"),
                Feed::Http,
                nodes,
                true,
            ));
        }
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); variants.len()];
    let mut failed = std::collections::BTreeSet::new();
    for round in 0..o.repeat {
        for (i, (id, what, feed, nodes, clustered)) in variants.iter().enumerate() {
            if failed.contains(&i) {
                continue;
            }
            eprintln!("running {id} (round {} of {}): {what}, {n} events …", round + 1, o.repeat);
            match run(*feed, *nodes, *clustered, n) {
                Ok(t) => runs[i].push(t),
                Err(e) => {
                    r.fail(&format!("{id} ({what})"), &e);
                    failed.insert(i);
                }
            }
        }
    }
    r.section(
        &format!(
            "Scale-out on JetStream (issue 17), {n} events, counter plugin, 1,000 keys (median of {} rounds, range)",
            o.repeat
        ),
        "| scenario | what | events/s end to end | weir CPU µs/event (all nodes) | per node | nats-server CPU µs/event | total CPU µs/event |",
    );
    for (i, (id, what, ..)) in variants.iter().enumerate() {
        if runs[i].is_empty() {
            continue;
        }
        let (t, lo, hi) = crate::median_by(&mut runs[i], |t| t.events_per_sec);
        let mut cells = vec![format!("`{id}`"), what.clone(), crate::spread(t.events_per_sec, lo, hi)];
        cells.extend(cpu_cells(&t));
        r.row(&cells);
        let key = match (variants[i].2, variants[i].4) {
            (Feed::JetStream, _) => "ingest_jetstream".to_owned(),
            (Feed::Http, false) => "ingest_http".to_owned(),
            (Feed::Http, true) => format!("cluster_{}", t.nodes),
        };
        results.insert(key.clone(), t.events_per_sec);
        r.json["scenarios"][key] = json!({ "median": t, "runs": runs[i] });
    }
    let _ = std::fmt::Write::write_fmt(
        &mut r.md,
        format_args!(
            "\nCPU is utime + stime from /proc/<pid>/stat over the measured window, divided by its events; the bench's \
             own clients (publisher or HTTP posters, and the output reader) are not counted. {} events of warm-up \
             come first. All processes share this machine's {} cores.\n",
            thousands(WARM_UP as f64),
            std::thread::available_parallelism().map_or(0, |c| c.get())
        ),
    );
}
