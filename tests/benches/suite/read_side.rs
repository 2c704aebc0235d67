//! The read side (issue 13): reading the log over HTTP a page at a time,
//! following it as Server-Sent Events, a durable consumer's fetch+ack round
//! trips, and a webhook sink's deliveries to a local receiver.
//!
//! The log is written first, in process (`Runtime::publish`, as the other
//! scenarios do), by a runtime with no pipelines; then the HTTP API is served
//! in this process as `weir run` serves it (`weir_runtime::router` and
//! `serve` on a 2-thread Tokio runtime), and blocking `ureq` clients on
//! their own threads read it over loopback. Server and clients share the
//! machine's cores, which the figures must be read with.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use weir_runtime::{Config, IdGenerator, Runtime};

use crate::weir::{events, publish_all, stop};

/// A runtime holding a log of `n` events (no pipelines), its HTTP API
/// served on a free loopback port.
pub(crate) struct Served {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) url: String,
    io: tokio::runtime::Runtime,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    ids: IdGenerator,
    published: usize,
    _dir: tempfile::TempDir,
}

/// Publish events `from..from + n` (idempotency keys `order-{i}`), 500 a
/// batch with 16 in flight, and wait for every acknowledgement.
fn publish(rt: &Runtime, ids: &IdGenerator, from: usize, n: usize) {
    publish_all(rt, (from..from + n).step_by(500).map(|i| events(ids, i, 500.min(from + n - i))));
}

impl Served {
    pub(crate) fn start(n: usize, extra_toml: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let text = format!(
            "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{port}\"\n{extra_toml}",
            dir.path().join("data").display().to_string()
        );
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, &text)?;
        let config = Config::load(&path).map_err(|e| anyhow::anyhow!("{e}\n{text}"))?;
        let rt = Arc::new(Runtime::start(&config)?);
        let ids = IdGenerator::new();
        publish(&rt, &ids, 0, n);
        // As `weir run`: two I/O threads.
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-io")
            .enable_all()
            .build()?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _guard = io.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let app = weir_runtime::router(Arc::clone(&rt));
        let http = config.http.clone();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = io.spawn(async move {
            weir_runtime::serve(listener, app, &http, async move {
                let _ = stopped.await;
            })
            .await
        });
        Ok(Self { rt, url: format!("http://127.0.0.1:{port}"), io, server, shutdown, ids, published: n, _dir: dir })
    }

    /// Stop serving, then stop the runtime cleanly.
    pub(crate) fn finish(self) -> anyhow::Result<()> {
        let Self { rt, io, server, shutdown, _dir, .. } = self;
        let _ = shutdown.send(());
        io.block_on(server).context("the HTTP server task")?.context("the HTTP server")?;
        drop(io);
        stop(rt);
        Ok(())
    }
}

pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build(),
    )
}

/// The body of a 200 answer, or an error with the status and the body.
pub(crate) fn ok_body(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut response = result.with_context(|| what.to_owned())?;
    let status = response.status().as_u16();
    let body = response.body_mut().with_config().limit(64 << 20).read_to_vec().with_context(|| what.to_owned())?;
    ensure!(status == 200 || status == 201, "{what}: {status} {}", String::from_utf8_lossy(&body));
    Ok(body)
}

pub(crate) fn post_json(agent: &ureq::Agent, url: &str, body: &[u8]) -> anyhow::Result<Vec<u8>> {
    ok_body(agent.post(url).header("content-type", "application/json").send(body), url)
}

/// A rate with its spread over rounds.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Rate {
    pub(crate) events: usize,
    pub(crate) secs: f64,
    pub(crate) events_per_sec: f64,
    /// CPU seconds of the bench's client (or receiver) threads in the run.
    pub(crate) bench_cpu_secs: f64,
    /// CPU seconds of the whole process in the run.
    pub(crate) process_cpu_secs: f64,
}

impl Rate {
    fn new(events: usize, secs: f64, cpu: Cpu) -> Self {
        Self {
            events,
            secs,
            events_per_sec: events as f64 / secs.max(1e-9),
            bench_cpu_secs: cpu.bench,
            process_cpu_secs: cpu.process,
        }
    }
}

/// CPU time over a run: the bench's own client (or receiver) threads, and
/// the whole process (server, runtime and clients), to tell a figure the
/// client limits from one the server does.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    bench: f64,
    process: f64,
}

/// CPU time of the calling thread, in seconds (the scheduler's own count).
pub(crate) fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// CPU time of this process so far, every thread, in seconds (clock ticks
/// of 10 ms).
pub(crate) fn process_cpu() -> f64 {
    cpu_of("self")
}

/// CPU time so far of process `pid` (or `self`), every thread, in seconds.
pub(crate) fn cpu_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime
    // are the 12th and 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum();
    ticks as f64 / 100.0
}

// ---------------------------------------------------------------------------
// read: GET /v1/log, a page of 1,000 at a time

#[derive(Deserialize)]
struct Page {
    events: Vec<IgnoredAny>,
    next: Option<u64>,
    caught_up: bool,
}

/// One client reads the whole log of `n` events in pages of 1,000, each
/// request sent when the previous answer is parsed.
pub(crate) fn read(n: usize) -> anyhow::Result<Rate> {
    let served = Served::start(n, "")?;
    let agent = agent(Duration::from_secs(120));
    let (cpu0, process0) = (thread_cpu(), process_cpu());
    let started = Instant::now();
    let (mut got, mut after, mut bytes) = (0usize, None::<u64>, 0usize);
    while got < served.published {
        let url = match after {
            None => format!("{}/v1/log?limit=1000", served.url),
            Some(a) => format!("{}/v1/log?after={a}&limit=1000", served.url),
        };
        let body = ok_body(agent.get(&url).call(), &url)?;
        bytes += body.len();
        let page: Page = serde_json::from_slice(&body).context("a page of the log")?;
        ensure!(!page.events.is_empty() || !page.caught_up, "the log ended after {got} of {} events", served.published);
        got += page.events.len();
        after = page.next.or(after);
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = Cpu { bench: thread_cpu() - cpu0, process: process_cpu() - process0 };
    ensure!(got == served.published, "read {got} events, published {}", served.published);
    eprintln!("read: {} bytes of JSON, {:.0} bytes an event", bytes, bytes as f64 / got as f64);
    served.finish()?;
    Ok(Rate::new(n, secs, cpu))
}

// ---------------------------------------------------------------------------
// sse: GET /v1/log/stream

/// Server-Sent Events to `clients` concurrent clients.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Sse {
    pub(crate) clients: usize,
    /// Catching up: each client reads the `events` already in the log.
    pub(crate) backlog_events: usize,
    /// Events/s per client: the median client's, and the slowest's.
    pub(crate) backlog_per_client_median: f64,
    pub(crate) backlog_per_client_slowest: f64,
    /// Every client's events over the time until the last client had all.
    pub(crate) backlog_total: f64,
    /// Live: events published while every client is at the head.
    pub(crate) live_events: usize,
    /// How long publishing them took (acknowledged, fsync'd): the live
    /// rate cannot pass `live_events / live_publish_secs`.
    pub(crate) live_publish_secs: f64,
    pub(crate) live_per_client_slowest: f64,
    pub(crate) live_total: f64,
    /// CPU seconds of the clients' threads while catching up, and of the
    /// whole process until the last client had the backlog.
    pub(crate) backlog_clients_cpu_secs: f64,
    pub(crate) backlog_process_cpu_secs: f64,
    pub(crate) backlog_secs: f64,
}

/// A client's reading of the stream: when it started, when it held the
/// backlog, when it held the live events too.
struct ClientTimes {
    opened: Instant,
    caught_up: Instant,
    live_done: Instant,
    /// The thread's CPU seconds while it caught up.
    backlog_cpu: f64,
}

fn sse_client(
    url: &str,
    backlog: usize,
    live: usize,
    start: &Barrier,
    at_head: &mpsc::Sender<()>,
) -> anyhow::Result<ClientTimes> {
    let agent = agent(Duration::from_secs(900));
    start.wait();
    let cpu0 = thread_cpu();
    let opened = Instant::now();
    let response = agent.get(url).call().context("opening the stream")?;
    ensure!(response.status().as_u16() == 200, "the stream answered {}", response.status());
    let mut lines = BufReader::with_capacity(256 * 1024, response.into_body().into_reader());
    let mut line = Vec::with_capacity(1024);
    let mut count = 0usize;
    let mut next_line = |count: &mut usize| -> anyhow::Result<()> {
        line.clear();
        if lines.read_until(b'\n', &mut line)? == 0 {
            bail!("the stream ended after {count} events");
        }
        // Only the event messages' data: the `caught-up` message's data
        // is `{"next":…}`; no JSON is parsed, to keep the client cheap.
        if line.starts_with(b"data: {\"seq\":") {
            *count += 1;
        } else if line.starts_with(b"event: dropped") || line.starts_with(b"event: closing") {
            bail!("the server ended the stream after {count} events: {}", String::from_utf8_lossy(&line).trim());
        }
        Ok(())
    };
    while count < backlog {
        next_line(&mut count)?;
    }
    let caught_up = Instant::now();
    let backlog_cpu = thread_cpu() - cpu0;
    let _ = at_head.send(());
    while count < backlog + live {
        next_line(&mut count)?;
    }
    Ok(ClientTimes { opened, caught_up, live_done: Instant::now(), backlog_cpu })
}

/// `clients` streams from the start of a log of `n` events; once every one
/// has them all, `n / 4` more are published and timed to every client.
pub(crate) fn sse(n: usize, clients: usize) -> anyhow::Result<Sse> {
    let mut served = Served::start(n, "")?;
    let live = (n / 4).max(1);
    let url = format!("{}/v1/log/stream", served.url);
    let process0 = process_cpu();
    let start = Arc::new(Barrier::new(clients));
    let (at_head_tx, at_head) = mpsc::channel();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (url, start, at_head) = (url.clone(), Arc::clone(&start), at_head_tx.clone());
            std::thread::Builder::new()
                .name(format!("sse-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || sse_client(&url, n, live, &start, &at_head))
        })
        .collect::<Result<_, _>>()?;
    drop(at_head_tx);
    // Every client at the head, or one has failed (its sender dropped).
    let mut at = 0;
    while at < clients && at_head.recv().is_ok() {
        at += 1;
    }
    let backlog_process_cpu_secs = process_cpu() - process0;
    let live_started = Instant::now();
    let mut live_publish_secs = 0.0;
    if at == clients {
        publish(&served.rt, &served.ids, n, live);
        served.published += live;
        live_publish_secs = live_started.elapsed().as_secs_f64();
    }
    let times = threads
        .into_iter()
        .map(|t| t.join().map_err(|_| anyhow::anyhow!("an SSE client panicked"))?)
        .collect::<anyhow::Result<Vec<ClientTimes>>>();
    served.finish()?;
    let times = times?;
    let first_open = times.iter().map(|t| t.opened).min().context("no clients")?;
    let last_caught_up = times.iter().map(|t| t.caught_up).max().context("no clients")?;
    let last_live = times.iter().map(|t| t.live_done).max().context("no clients")?;
    let mut per_client: Vec<f64> =
        times.iter().map(|t| n as f64 / (t.caught_up - t.opened).as_secs_f64().max(1e-9)).collect();
    per_client.sort_by(f64::total_cmp);
    let live_slowest = times
        .iter()
        .map(|t| live as f64 / (t.live_done - live_started).as_secs_f64().max(1e-9))
        .fold(f64::INFINITY, f64::min);
    Ok(Sse {
        clients,
        backlog_events: n,
        backlog_per_client_median: per_client[per_client.len() / 2],
        backlog_per_client_slowest: per_client[0],
        backlog_total: (n * clients) as f64 / (last_caught_up - first_open).as_secs_f64().max(1e-9),
        live_events: live,
        live_publish_secs,
        live_per_client_slowest: live_slowest,
        live_total: (live * clients) as f64 / (last_live - live_started).as_secs_f64().max(1e-9),
        backlog_clients_cpu_secs: times.iter().map(|t| t.backlog_cpu).sum(),
        backlog_process_cpu_secs,
        backlog_secs: (last_caught_up - first_open).as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------
// consumer: PUT /v1/consumers/{name}, then fetch + ack until the log is done

#[derive(Deserialize)]
struct Fetched {
    deliveries: Vec<Delivery>,
}

#[derive(Deserialize)]
struct Delivery {
    token: String,
}

#[derive(Deserialize)]
struct Acked {
    results: Vec<Outcome>,
}

#[derive(Deserialize)]
struct Outcome {
    outcome: String,
}

/// A consumer's drain: its rate, and how much of the time went to fetch
/// requests (the rest is the ack requests and the client's own work).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Consumed {
    #[serde(flatten)]
    pub(crate) rate: Rate,
    pub(crate) fetch_secs: f64,
    pub(crate) round_trips: usize,
}

/// One client drains a durable consumer of a log of `n` events: fetch up
/// to `batch`, ack them all in one request, fetch again.
pub(crate) fn consumer(n: usize, batch: usize) -> anyhow::Result<Consumed> {
    let served = Served::start(n, "")?;
    let agent = agent(Duration::from_secs(120));
    let base = format!("{}/v1/consumers/bench", served.url);
    let settings = json!({ "topics": ["orders.>"], "from": "beginning" });
    ok_body(
        agent.put(&base).header("content-type", "application/json").send(settings.to_string().as_bytes()),
        "creating the consumer",
    )?;
    let (fetch_url, ack_url) = (format!("{base}/fetch"), format!("{base}/ack"));
    let fetch_body = json!({ "max": batch }).to_string();
    let (cpu0, process0) = (thread_cpu(), process_cpu());
    let started = Instant::now();
    let mut done = 0usize;
    let mut fetching = Duration::ZERO;
    let mut round_trips = 0usize;
    while done < n {
        let asked = Instant::now();
        let body = post_json(&agent, &fetch_url, fetch_body.as_bytes())?;
        fetching += asked.elapsed();
        let fetched: Fetched = serde_json::from_slice(&body).context("a fetch answer")?;
        ensure!(!fetched.deliveries.is_empty(), "the consumer delivered nothing after {done} of {n}");
        let mut acks = String::with_capacity(fetched.deliveries.len() * 64);
        acks.push_str(r#"{"acks":["#);
        for (i, d) in fetched.deliveries.iter().enumerate() {
            if i > 0 {
                acks.push(',');
            }
            acks.push_str(r#"{"token":""#);
            acks.push_str(&d.token);
            acks.push_str(r#""}"#);
        }
        acks.push_str("]}");
        let answer: Acked = serde_json::from_slice(&post_json(&agent, &ack_url, acks.as_bytes())?)?;
        let acked = answer.results.iter().filter(|r| r.outcome == "acked").count();
        ensure!(acked == fetched.deliveries.len(), "{acked} of {} acks taken", fetched.deliveries.len());
        done += acked;
        round_trips += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = Cpu { bench: thread_cpu() - cpu0, process: process_cpu() - process0 };
    let info: Value = serde_json::from_slice(&ok_body(agent.get(&base).call(), "the consumer's info")?)?;
    ensure!(info["lag"] == 0 && info["in_flight"] == 0, "the consumer is not done: {info}");
    served.finish()?;
    Ok(Consumed { rate: Rate::new(n, secs, cpu), fetch_secs: fetching.as_secs_f64(), round_trips })
}

// ---------------------------------------------------------------------------
// webhook: a sink to a local receiver answering 204

/// A minimal HTTP receiver on loopback: reads each request (head and
/// `content-length` body) and answers `204 No Content`, closing the
/// connection as the sink expects. One thread, one request at a time: a
/// sink sends one at a time.
struct Receiver {
    port: u16,
    answered: Arc<AtomicUsize>,
    /// The receiver thread's CPU time, as of its latest accept.
    cpu_ns: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (Arc::clone(&answered), Arc::clone(&stop));
        let cpu_ns = Arc::new(AtomicU64::new(0));
        let cpu = Arc::clone(&cpu_ns);
        let thread = std::thread::Builder::new().name("webhook-receiver".into()).spawn(move || {
            for stream in listener.incoming() {
                cpu.store((thread_cpu() * 1e9) as u64, Ordering::Relaxed);
                if halt.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if answer(stream).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        })?;
        Ok(Self { port, answered, cpu_ns, stop, thread: Some(thread) })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read one request and answer 204.
fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..read]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += read;
    }
    stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
}

/// A sink on every event: publish `n` events and time until the sink's
/// cursor is past all of them (each answered 204 by the receiver).
pub(crate) fn webhook(n: usize) -> anyhow::Result<Rate> {
    let receiver = Receiver::start()?;
    let dir = tempfile::tempdir()?;
    // `secret_env` must name a set variable; PATH is, and the secret is
    // replaced below, so the bench writes nothing to the environment.
    let text = format!(
        "data_dir = {:?}\n[[sinks]]\nname = \"bench\"\ntopics = [\"orders.>\"]\nurl = \"http://127.0.0.1:{}/hook\"\nsecret_env = \"PATH\"\n",
        dir.path().join("data").display().to_string(),
        receiver.port
    );
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &text)?;
    let mut config = Config::load(&path).map_err(|e| anyhow::anyhow!("{e}\n{text}"))?;
    for sink in &mut config.sinks {
        sink.secret = weir_runtime::config::SinkSecret::parse("whsec_dGhlIGJlbmNoJ3Mgc2lnbmluZyBzZWNyZXQsIDMyIGJ5dGVz")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let rt = Arc::new(Runtime::start(&config)?);
    let ids = IdGenerator::new();
    let (receiver0, process0) = (receiver.cpu_ns.load(Ordering::Relaxed), process_cpu());
    let started = Instant::now();
    publish(&rt, &ids, 0, n);
    let sub = "sinks/bench";
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let c = rt.counters(sub).context("no sinks/bench subscription")?;
        if c.cursor >= rt.store().head() && rt.is_idle() {
            break;
        }
        ensure!(Instant::now() < deadline, "the sink did not finish: {c:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = Cpu {
        bench: receiver.cpu_ns.load(Ordering::Relaxed).saturating_sub(receiver0) as f64 / 1e9,
        process: process_cpu() - process0,
    };
    let answered = receiver.answered.load(Ordering::Relaxed);
    let c = rt.counters(sub).context("no sinks/bench subscription")?;
    stop(rt);
    ensure!(answered >= n, "the receiver answered {answered} requests for {n} events ({c:?})");
    Ok(Rate::new(n, secs, cpu))
}
