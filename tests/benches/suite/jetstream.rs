//! Scenario s6: the 2-way fan-out done "the usual way" with NATS JetStream,
//! for a side-by-side with Weir on the same machine.
//!
//! One file-backed stream (`orders.>`), two durable pull consumers with
//! explicit acks, each on its own thread and connection (as Weir's two
//! subscriptions). Each consumer calls the filter plugin's handler natively,
//! republishes what it emits with a publish-ack (and a deterministic
//! `Nats-Msg-Id`, so a redelivery does not store it twice) and only then
//! acks the input, with a double ack (the ack sent as a request, counted once
//! the server confirms it): at-least-once, as Weir commits outputs before the
//! cursor. The publisher has its own connection and publishes with acks and a
//! window, as many producers over HTTP would.
//!
//! No NATS crate: a minimal synchronous client over `TcpStream` speaking the
//! text protocol is enough, and keeps the client's cost visible and small.
//!
//! Durability: nats-server 2.9 fsyncs its file store every 2 minutes, not per
//! ack; 2.10 and later can be told `sync_interval: always`. [`Mode`] picks
//! one, and its `Display` says which, so the numbers state it.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead as _, BufReader, BufWriter, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use serde_json::{Value, json};
use weir_abi::Event;
use weir_runtime::IdGenerator;

/// How durable the server's file store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mode {
    /// `sync_interval: always`: fsync after every write (nats-server 2.10+).
    /// Otherwise the server's default, a sync every 2 minutes.
    pub(crate) sync_always: bool,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sync_always {
            f.write_str("file store, sync_interval: always (fsync per write)")
        } else {
            f.write_str("file store, default sync (fsync every 2 min, not per ack)")
        }
    }
}

const STREAM: &str = "ORDERS";
const INPUT_SUBJECT: &str = "orders.order.created";
/// The two durable consumers, as Weir's `bench/a` and `bench/b`.
const CONSUMERS: [&str; 2] = ["a", "b"];
/// Messages asked for per pull request; another request goes out when fewer
/// than half are still owed, so the consumer never waits on a round trip
/// (the default of nats.go's `Consume`).
const PULL_BATCH: usize = 500;
/// A pull request's lifetime: the server answers `408` when it ends
/// unfilled, which also wakes an idle consumer to check for a stop.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Publishes awaiting their ack at most, on the publisher's connection.
const PUBLISH_WINDOW: usize = 256;
/// Delivered but unacknowledged messages per consumer the server allows.
const MAX_ACK_PENDING: usize = 20_000;
/// No byte from the server for this long is a failure, not a wait.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// No acknowledged input for this long while some are missing: give up.
const STALL_LIMIT: Duration = Duration::from_secs(30);

// Subscription ids. Pull requests each get their own (`SID_PULL + n`): the
// messages they bring carry the stream's subject, not the request's inbox,
// so the sid is the only way to tell which request a message counts against.
const SID_REQUEST: u64 = 1;
const SID_ACK: u64 = 2;
const SID_OUTPUT: u64 = 3;
const SID_PUBLISH: u64 = 4;
const SID_PULL: u64 = 100;

/// Headers on (for `Nats-Msg-Id` and status messages), and `no_responders`
/// so that a request nobody serves fails at once with a 503 status.
const CONNECT: &[u8] = concat!(
    r#"CONNECT {"verbose":false,"pedantic":false,"tls_required":false,"name":"weir-bench","lang":"rust","#,
    r#""version":"0","protocol":1,"headers":true,"no_responders":true,"echo":true}"#,
    "\r\nPING\r\n"
)
.as_bytes();

// ---------------------------------------------------------------------------
// nats-server

/// A server version: (major, minor, patch).
type Version = (u32, u32, u32);

/// The nats-server binary and its version, looked up once.
fn installed() -> Option<&'static (PathBuf, Version)> {
    static FOUND: OnceLock<Option<(PathBuf, Version)>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            // $WEIR_NATS_SERVER picks a binary (e.g. a 2.10 for the
            // fsync-per-write mode: scripts/nats-server-2.10.sh); else Debian's,
            // in /usr/sbin, which is not on every user's PATH.
            let chosen = std::env::var("WEIR_NATS_SERVER").ok().filter(|p| !p.is_empty());
            let defaults = ["nats-server", "/usr/sbin/nats-server", "/usr/local/bin/nats-server"].map(String::from);
            let candidates: Vec<String> = match chosen {
                Some(path) => vec![path],
                None => defaults.to_vec(),
            };
            candidates.into_iter().find_map(|candidate| {
                let out = Command::new(&candidate).arg("--version").output().ok()?;
                let version = parse_version(&String::from_utf8_lossy(&out.stdout))
                    .or_else(|| parse_version(&String::from_utf8_lossy(&out.stderr)))?;
                Some((PathBuf::from(candidate), version))
            })
        })
        .as_ref()
}

/// The nats-server binary the bench runs, if any.
pub(crate) fn server_binary() -> Option<PathBuf> {
    installed().map(|(path, _)| path.clone())
}

/// `nats-server: v2.9.10` → (2, 9, 10).
fn parse_version(text: &str) -> Option<Version> {
    // The first `v` followed by a digit ("nats-server" has a `v` too).
    let (at, _) = text.match_indices('v').find(|(i, _)| text[i + 1..].starts_with(|c: char| c.is_ascii_digit()))?;
    let v = &text[at + 1..];
    let mut parts = v.split('.').map(|p| {
        let digits = p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len());
        p[..digits].parse::<u32>().ok()
    });
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// `nats-server --version` parsed, e.g. (2, 9, 10); None if not installed.
pub(crate) fn server_version() -> Option<(u32, u32, u32)> {
    installed().map(|(_, version)| *version)
}

/// A nats-server with JetStream on 127.0.0.1, its store in a temporary
/// directory; killed, waited on and its store removed on drop.
#[derive(Debug)]
pub(crate) struct NatsServer {
    child: Child,
    port: u16,
    // Removed after the child is reaped (`drop` runs before the fields drop).
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Start a fresh server (empty store) and wait until it accepts clients.
    /// `sync_always` on a server older than 2.10 is an error saying so.
    pub(crate) fn start(mode: &Mode) -> anyhow::Result<Self> {
        let (binary, version) = installed().context("nats-server is not installed")?;
        if mode.sync_always && *version < (2, 10, 0) {
            let (major, minor, patch) = version;
            bail!(
                "sync_interval: always is unavailable: it needs nats-server 2.10 or later, this is {major}.{minor}.{patch}"
            );
        }
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("nats.conf");
        let log = dir.path().join("nats.log");
        let mut failure = None;
        // A free port is found by binding port 0 and letting go of it, so
        // another process may take it first: try again with a new one.
        for _ in 0..3 {
            let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
            let sync = if mode.sync_always { "\n  sync_interval: always" } else { "" };
            std::fs::write(
                &config,
                format!(
                    "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"{sync}\n}}\n",
                    dir.path().join("js").display()
                ),
            )?;
            let out = File::create(&log)?;
            let mut child = Command::new(binary)
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            match wait_ready(&mut child, port) {
                Ok(()) => return Ok(Self { child, port, _dir: dir }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    failure = Some(e.context(format!("nats-server's log:\n{log}")));
                }
            }
        }
        Err(failure.unwrap_or_else(|| anyhow!("nats-server did not start")))
    }

    /// The client port, on 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait for the server to accept connections, or for it to exit (a bad
/// config, a port taken). JetStream itself is waited for by [`create`].
fn wait_ready(child: &mut Child, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("nats-server exited at start: {status}");
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "nats-server did not listen on port {port} within 10 s");
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The protocol

/// A message delivered by the server (`MSG` or `HMSG`).
struct Msg {
    subject: String,
    sid: u64,
    reply: Option<String>,
    /// The header block (empty without one), then the payload.
    data: Vec<u8>,
    header_len: usize,
}

impl Msg {
    fn payload(&self) -> &[u8] {
        &self.data[self.header_len..]
    }

    /// The header block's lines after the `NATS/1.0 ...` status line.
    fn header_lines(&self) -> impl Iterator<Item = &str> {
        std::str::from_utf8(&self.data[..self.header_len]).unwrap_or("").split("\r\n").skip(1)
    }

    /// The status of a status message, e.g. `NATS/1.0 408 Request Timeout`.
    fn status(&self) -> Option<(u16, &str)> {
        if self.header_len == 0 {
            return None;
        }
        let head = std::str::from_utf8(&self.data[..self.header_len]).ok()?;
        let first = head.split("\r\n").next()?.strip_prefix("NATS/1.0")?.trim();
        let (code, text) = first.split_once(' ').unwrap_or((first, ""));
        Some((code.parse().ok()?, text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.header_lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim())
    }

    /// The last token of the subject: the token our replies carry.
    fn token(&self) -> anyhow::Result<u64> {
        let tail = self.subject.rsplit('.').next().unwrap_or("");
        tail.parse().with_context(|| format!("no token in reply subject {:?}", self.subject))
    }
}

/// What the server sent.
enum Op {
    Msg(Msg),
    Ping,
    Pong,
    Ok,
    Info,
    Err(String),
}

/// The reading half of a connection.
struct Reader {
    inp: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Reader {
    /// Whether an op is already buffered: if not, the next read may block,
    /// so whatever the writer holds must go out first.
    fn has_buffered(&self) -> bool {
        !self.inp.buffer().is_empty()
    }

    fn read_op(&mut self) -> anyhow::Result<Op> {
        self.line.clear();
        if self.inp.read_until(b'\n', &mut self.line).context("reading from nats-server")? == 0 {
            bail!("nats-server closed the connection");
        }
        let line = std::str::from_utf8(&self.line).context("a protocol line that is not UTF-8")?.trim_end();
        let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
        let args: Vec<&str> = rest.split_ascii_whitespace().collect();
        let (subject, sid, reply, header_len, total) = match (op, args.as_slice()) {
            ("MSG", [subject, sid, len]) => (subject, sid, None, "0", len),
            ("MSG", [subject, sid, reply, len]) => (subject, sid, Some(reply), "0", len),
            ("HMSG", [subject, sid, hlen, len]) => (subject, sid, None, *hlen, len),
            ("HMSG", [subject, sid, reply, hlen, len]) => (subject, sid, Some(reply), *hlen, len),
            ("PING", _) => return Ok(Op::Ping),
            ("PONG", _) => return Ok(Op::Pong),
            ("+OK", _) => return Ok(Op::Ok),
            ("INFO", _) => return Ok(Op::Info),
            ("-ERR", _) => return Ok(Op::Err(rest.to_owned())),
            _ => bail!("unexpected from nats-server: {line:?}"),
        };
        let header_len: usize = header_len.parse().with_context(|| format!("bad header length in {line:?}"))?;
        let total: usize = total.parse().with_context(|| format!("bad length in {line:?}"))?;
        ensure!(header_len <= total, "header longer than the message in {line:?}");
        let (subject, sid, reply) = ((*subject).to_owned(), sid.parse::<u64>()?, reply.map(|r| (*r).to_owned()));
        let mut data = vec![0; total + 2];
        self.inp.read_exact(&mut data).context("reading a message from nats-server")?;
        ensure!(data.ends_with(b"\r\n"), "a message from nats-server not ending in CRLF");
        data.truncate(total);
        Ok(Op::Msg(Msg { subject, sid, reply, data, header_len }))
    }
}

/// The writing half of a connection: buffered, flushed before blocking.
struct Writer {
    out: BufWriter<TcpStream>,
}

impl Writer {
    /// `PUB`, or `HPUB` with a `Nats-Msg-Id` header (JetStream's de-dup key).
    fn publish(&mut self, subject: &str, reply: Option<&str>, msg_id: Option<&str>, payload: &[u8]) -> io::Result<()> {
        let out = &mut self.out;
        let reply = reply.unwrap_or("");
        let gap = if reply.is_empty() { "" } else { " " };
        match msg_id {
            None => write!(out, "PUB {subject}{gap}{reply} {}\r\n", payload.len())?,
            Some(id) => {
                // "NATS/1.0\r\n" + "Nats-Msg-Id: " + id + "\r\n" + "\r\n"
                let header_len = 10 + 13 + id.len() + 4;
                write!(
                    out,
                    "HPUB {subject}{gap}{reply} {header_len} {}\r\nNATS/1.0\r\nNats-Msg-Id: {id}\r\n\r\n",
                    header_len + payload.len()
                )?;
            }
        }
        out.write_all(payload)?;
        out.write_all(b"\r\n")
    }

    fn subscribe(&mut self, subject: &str, sid: u64) -> io::Result<()> {
        write!(self.out, "SUB {subject} {sid}\r\n")
    }

    fn unsubscribe(&mut self, sid: u64) -> io::Result<()> {
        write!(self.out, "UNSUB {sid}\r\n")
    }

    fn pong(&mut self) -> io::Result<()> {
        self.out.write_all(b"PONG\r\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A client connection, used from one thread.
struct Conn {
    r: Reader,
    w: Writer,
    /// This connection's unique reply-subject prefix.
    inbox: String,
    requests: u64,
}

impl Conn {
    /// Connect, say CONNECT (headers on, so statuses such as "no responders"
    /// come back as messages) and wait for the PONG that confirms it.
    fn connect(port: u16) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to port {port}"))?;
        // Small writes (acks, pull requests) must not wait for Nagle.
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut conn = Conn {
            r: Reader { inp: BufReader::with_capacity(64 * 1024, stream.try_clone()?), line: Vec::new() },
            w: Writer { out: BufWriter::with_capacity(64 * 1024, stream) },
            inbox: format!("_INBOX.{:016x}", rand::random::<u64>()),
            requests: 0,
        };
        ensure!(matches!(conn.r.read_op()?, Op::Info), "nats-server did not start with INFO");
        conn.w.out.write_all(CONNECT)?;
        conn.w.flush()?;
        loop {
            match conn.r.read_op()? {
                Op::Pong => break,
                Op::Err(e) => bail!("nats-server refused the connection: {e}"),
                _ => {}
            }
        }
        let replies = format!("{}.r.*", conn.inbox);
        conn.w.subscribe(&replies, SID_REQUEST)?;
        Ok(conn)
    }

    /// The next message, answering pings on the way. Flushes the writer
    /// before a read that may block: requests must be out before we wait for
    /// their answers, and until then small writes coalesce.
    fn next_msg(&mut self) -> anyhow::Result<Msg> {
        loop {
            if !self.r.has_buffered() {
                self.w.flush()?;
            }
            match self.r.read_op()? {
                Op::Msg(msg) => return Ok(msg),
                Op::Ping => self.w.pong()?,
                Op::Err(e) => bail!("nats-server: {e}"),
                Op::Pong | Op::Ok | Op::Info => {}
            }
        }
    }

    /// A JetStream API call: request, wait for the JSON answer.
    fn request(&mut self, subject: &str, body: &Value) -> anyhow::Result<Value> {
        self.requests += 1;
        let reply = format!("{}.r.{}", self.inbox, self.requests);
        let body = if body.is_null() { Vec::new() } else { serde_json::to_vec(body)? };
        self.w.publish(subject, Some(&reply), None, &body)?;
        loop {
            let msg = self.next_msg()?;
            if msg.sid != SID_REQUEST || msg.subject != reply {
                continue;
            }
            if let Some((code, text)) = msg.status() {
                bail!("{subject}: {code} {text}");
            }
            let answer: Value = serde_json::from_slice(msg.payload())
                .with_context(|| format!("{subject}: {}", String::from_utf8_lossy(msg.payload())))?;
            if let Some(error) = answer.get("error") {
                bail!("{subject}: {error}");
            }
            return Ok(answer);
        }
    }
}

/// An error unless a publish-ack says the message is stored; `true` if it
/// was a duplicate (stored before under its `Nats-Msg-Id`, not again).
fn publish_ack(msg: &Msg) -> anyhow::Result<bool> {
    if let Some((code, text)) = msg.status() {
        // 503: no stream listens on the subject.
        bail!("publish not stored: {code} {text}");
    }
    let payload = msg.payload();
    // A success is `{"stream":..,"seq":..}`: scanning for the error key spares
    // parsing every ack.
    if payload.windows(7).any(|w| w == b"\"error\"") {
        bail!("publish not stored: {}", String::from_utf8_lossy(payload));
    }
    Ok(payload.windows(16).any(|w| w == b"\"duplicate\":true"))
}

// ---------------------------------------------------------------------------
// JetStream setup and checks

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The stream and its two durable pull consumers.
fn create(conn: &mut Conn) -> anyhow::Result<()> {
    create_stream(conn)?;
    for name in CONSUMERS {
        conn.request(
            &format!("$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.{name}"),
            &json!({
                "stream_name": STREAM,
                "config": {
                    "durable_name": name, "deliver_policy": "all", "ack_policy": "explicit",
                    "ack_wait": nanos(Duration::from_secs(30)), "filter_subject": INPUT_SUBJECT,
                    "max_ack_pending": MAX_ACK_PENDING, "replay_policy": "instant",
                },
            }),
        )?;
    }
    Ok(())
}

/// The stream, once JetStream answers.
fn create_stream(conn: &mut Conn) -> anyhow::Result<()> {
    // JetStream may still be starting its account when the port opens.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = conn.request("$JS.API.INFO", &Value::Null) {
        ensure!(Instant::now() < deadline, "JetStream is not answering: {e:#}");
        thread::sleep(Duration::from_millis(50));
    }
    conn.request(
        &format!("$JS.API.STREAM.CREATE.{STREAM}"),
        &json!({
            "name": STREAM, "subjects": ["orders.>"], "storage": "file", "retention": "limits",
            "discard": "old", "num_replicas": 1, "duplicate_window": nanos(Duration::from_secs(120)),
        }),
    )?;
    Ok(())
}

/// Ask the server, not our own counters, whether the run did what it should:
/// each consumer delivered every input and has nothing left unacknowledged,
/// and the stream holds the inputs plus every output once.
fn verify(port: u16, inputs: usize, reports: &[Report]) -> anyhow::Result<()> {
    let mut conn = Conn::connect(port)?;
    let count = |v: &Value| v.as_u64().unwrap_or(u64::MAX) as usize;
    for (name, report) in CONSUMERS.iter().zip(reports) {
        let info = conn.request(&format!("$JS.API.CONSUMER.INFO.{STREAM}.{name}"), &Value::Null)?;
        let delivered = count(&info["delivered"]["consumer_seq"]);
        let ack_floor = count(&info["ack_floor"]["consumer_seq"]);
        let (ack_pending, pending) = (count(&info["num_ack_pending"]), count(&info["num_pending"]));
        // Redeliveries take consumer sequence numbers of their own.
        ensure!(
            delivered == inputs + report.redelivered && ack_floor == delivered && ack_pending == 0 && pending == 0,
            "consumer {name} after {inputs} inputs: delivered {delivered}, ack floor {ack_floor}, \
             ack pending {ack_pending}, pending {pending} (redelivered {})",
            report.redelivered
        );
    }
    let info = conn.request(&format!("$JS.API.STREAM.INFO.{STREAM}"), &Value::Null)?;
    let stored = count(&info["state"]["messages"]);
    let outputs: usize = reports.iter().map(|r| r.outputs).sum();
    ensure!(
        stored == inputs + outputs,
        "the stream holds {stored} messages, expected {inputs} inputs + {outputs} outputs"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Consumers

/// What a consumer thread hands back.
struct Report {
    /// When the server confirmed the ack of input `i` (by its msg id).
    acked_at: Vec<Option<Instant>>,
    finished: Instant,
    /// Outputs stored (duplicates not counted).
    outputs: usize,
    redelivered: usize,
}

/// An input whose outputs await their publish-acks; acked once they all came.
struct Waiting {
    ack: String,
    index: usize,
    outputs_left: usize,
}

/// One durable pull consumer's event loop: a single thread, a single
/// connection, nothing blocking but the read of the next message, so pulls,
/// handling, output publishes and acks all overlap.
struct Consumer {
    conn: Conn,
    name: &'static str,
    subscription: String,
    ids: IdGenerator,
    stop: Arc<AtomicBool>,
    /// Outstanding pull requests (by number) and the messages each still owes.
    pulls: HashMap<u64, usize>,
    owed: usize,
    next_pull: u64,
    /// Inputs waiting for their outputs to be stored, by token.
    waiting: HashMap<u64, Waiting>,
    next_token: u64,
    report: Report,
    /// Inputs whose ack is confirmed.
    done: usize,
    last_progress: Instant,
}

impl Consumer {
    fn new(conn: Conn, name: &'static str, total: usize, stop: Arc<AtomicBool>) -> Self {
        Self {
            conn,
            name,
            subscription: format!("bench/{name}"),
            ids: IdGenerator::new(),
            stop,
            pulls: HashMap::new(),
            owed: 0,
            next_pull: 0,
            waiting: HashMap::new(),
            next_token: 0,
            report: Report { acked_at: vec![None; total], finished: Instant::now(), outputs: 0, redelivered: 0 },
            done: 0,
            last_progress: Instant::now(),
        }
    }

    fn run(mut self) -> anyhow::Result<Report> {
        let inbox = self.conn.inbox.clone();
        self.conn.w.subscribe(&format!("{inbox}.a.*"), SID_ACK)?;
        self.conn.w.subscribe(&format!("{inbox}.o.*"), SID_OUTPUT)?;
        let total = self.report.acked_at.len();
        self.last_progress = Instant::now();
        while self.done < total {
            ensure!(!self.stop.load(Ordering::Relaxed), "consumer {} stopped", self.name);
            ensure!(
                self.last_progress.elapsed() < STALL_LIMIT,
                "consumer {}: no input acknowledged for {STALL_LIMIT:?} ({} of {total} done, {} pulls owing {})",
                self.name,
                self.done,
                self.pulls.len(),
                self.owed
            );
            self.pull()?;
            let msg = self.conn.next_msg()?;
            match msg.sid {
                SID_ACK => self.ack_confirmed(&msg)?,
                SID_OUTPUT => self.output_stored(&msg)?,
                sid if sid >= SID_PULL => self.pulled(sid, msg)?,
                _ => {}
            }
        }
        self.report.finished = Instant::now();
        Ok(self.report)
    }

    /// Keep a pull request open ahead of need: ask for another batch once
    /// less than half of one is owed.
    fn pull(&mut self) -> anyhow::Result<()> {
        if self.owed > PULL_BATCH / 2 {
            return Ok(());
        }
        let n = self.next_pull;
        self.next_pull += 1;
        let inbox = format!("{}.p.{n}", self.conn.inbox);
        self.conn.w.subscribe(&inbox, SID_PULL + n)?;
        let body = format!(r#"{{"batch":{PULL_BATCH},"expires":{}}}"#, nanos(PULL_EXPIRES));
        let next = format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{}", self.name);
        self.conn.w.publish(&next, Some(&inbox), None, body.as_bytes())?;
        self.pulls.insert(n, PULL_BATCH);
        self.owed += PULL_BATCH;
        Ok(())
    }

    /// Count a message against its pull request; the request is over when
    /// it has all it asked for or the server ends it.
    fn settle(&mut self, n: u64, ended: bool) -> anyhow::Result<()> {
        let Some(owed) = self.pulls.get_mut(&n) else { return Ok(()) };
        let settled = if ended { *owed } else { 1 };
        *owed -= settled;
        self.owed -= settled;
        if *owed == 0 {
            self.pulls.remove(&n);
            self.conn.w.unsubscribe(SID_PULL + n)?;
        }
        Ok(())
    }

    fn pulled(&mut self, sid: u64, msg: Msg) -> anyhow::Result<()> {
        let n = sid - SID_PULL;
        match msg.status() {
            None => {}
            // Heartbeat (we ask for none, harmless).
            Some((100, _)) => return Ok(()),
            // Expired, or nothing there: this request is over.
            Some((404 | 408, _)) => return self.settle(n, true),
            Some((code, text)) => bail!("consumer {}: pull request answered {code} {text}", self.name),
        }
        self.settle(n, false)?;
        self.handle(msg)
    }

    /// Call the handler on one input, store its outputs (then ack the input
    /// once they are stored), or ack it straight away if there are none.
    fn handle(&mut self, msg: Msg) -> anyhow::Result<()> {
        let id = msg.header("Nats-Msg-Id").context("an input without Nats-Msg-Id")?.to_owned();
        let index: usize = id
            .strip_prefix("order-")
            .and_then(|i| i.parse().ok())
            .filter(|&i| i < self.report.acked_at.len())
            .with_context(|| format!("an input with an unexpected msg id {id:?}"))?;
        let payload = msg.payload().to_vec();
        let Msg { subject, reply, .. } = msg;
        let ack = reply.context("a JetStream message without an ack subject")?;
        let attempt = delivery_count(&ack);
        if attempt > 1 {
            self.report.redelivered += 1;
        }
        let event = Event {
            id: self.ids.next_id(),
            topic: subject,
            source: "nats:bench".into(),
            key: None,
            schema_version: 1,
            time: weir_runtime::now_nanos(),
            content_type: "application/json".into(),
            headers: Vec::new(),
            idempotency_key: id,
            correlation_id: None,
            causation_id: None,
            payload,
        };
        let mut ctx = weir_sdk::Context::new(self.subscription.as_str(), attempt);
        let emits = filter::handle(&event, &mut ctx)
            .with_context(|| format!("consumer {}: the filter failed on {}", self.name, event.idempotency_key))?;
        if emits.is_empty() {
            return self.ack(&ack, index);
        }
        let token = self.next_token;
        self.next_token += 1;
        let reply = format!("{}.o.{token}", self.conn.inbox);
        for (k, emit) in emits.iter().enumerate() {
            // Deterministic: a redelivered input's outputs de-dup in the stream.
            let msg_id = format!("{}/{}#{k}", event.idempotency_key, self.name);
            self.conn.w.publish(emit.topic(), Some(&reply), Some(&msg_id), emit.payload())?;
        }
        self.waiting.insert(token, Waiting { ack, index, outputs_left: emits.len() });
        Ok(())
    }

    /// Double ack: `+ACK` with a reply subject, confirmed by an empty answer.
    fn ack(&mut self, ack: &str, index: usize) -> anyhow::Result<()> {
        let reply = format!("{}.a.{index}", self.conn.inbox);
        Ok(self.conn.w.publish(ack, Some(&reply), None, b"+ACK")?)
    }

    fn ack_confirmed(&mut self, msg: &Msg) -> anyhow::Result<()> {
        if let Some((code, text)) = msg.status() {
            bail!("consumer {}: ack answered {code} {text}", self.name);
        }
        let index = usize::try_from(msg.token()?)?;
        let slot = self.report.acked_at.get_mut(index).context("an ack confirmation for an unknown input")?;
        // A redelivered input is acked again: the first confirmation counts.
        if slot.is_none() {
            let now = Instant::now();
            *slot = Some(now);
            self.done += 1;
            self.last_progress = now;
        }
        Ok(())
    }

    fn output_stored(&mut self, msg: &Msg) -> anyhow::Result<()> {
        let duplicate = publish_ack(msg).with_context(|| format!("consumer {}", self.name))?;
        if !duplicate {
            self.report.outputs += 1;
        }
        let token = msg.token()?;
        let waiting = self.waiting.get_mut(&token).context("a publish-ack for an unknown output")?;
        waiting.outputs_left -= 1;
        if waiting.outputs_left == 0
            && let Some(Waiting { ack, index, .. }) = self.waiting.remove(&token)
        {
            self.ack(&ack, index)?;
        }
        Ok(())
    }
}

/// The delivery count from an ack subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
/// or the newer form with a domain and an account hash in front of the stream.
fn delivery_count(ack: &str) -> u32 {
    let tokens: Vec<&str> = ack.split('.').collect();
    let at = if tokens.len() == 9 { 4 } else { 6 };
    tokens.get(at).and_then(|t| t.parse().ok()).unwrap_or(1)
}

/// Sets the stop flag when dropped, so that on any early return the
/// consumer threads give up (within [`PULL_EXPIRES`]) instead of waiting on.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn spawn_consumers(
    port: u16,
    total: usize,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<Report>>>> {
    CONSUMERS
        .into_iter()
        .map(|name| {
            let conn = Conn::connect(port)?;
            let stop = Arc::clone(stop);
            let thread = thread::Builder::new()
                .name(format!("js-consumer-{name}"))
                .spawn(move || Consumer::new(conn, name, total, stop).run())?;
            Ok(thread)
        })
        .collect()
}

fn join(consumers: Vec<JoinHandle<anyhow::Result<Report>>>) -> anyhow::Result<Vec<Report>> {
    consumers.into_iter().map(|c| c.join().map_err(|_| anyhow!("a consumer thread panicked"))?).collect()
}

// ---------------------------------------------------------------------------
// Publisher

/// Publishes with acks, at most [`PUBLISH_WINDOW`] unacknowledged. A thread reads the
/// acks, so the publishing thread never blocks on the socket unless the
/// window is full, and can keep a schedule.
struct Publisher {
    writer: Arc<Mutex<Writer>>,
    acks: mpsc::Receiver<anyhow::Result<()>>,
    socket: TcpStream,
    reader: Option<JoinHandle<()>>,
    inbox: String,
    sent: usize,
    confirmed: usize,
}

impl Publisher {
    fn connect(port: u16) -> anyhow::Result<Self> {
        let Conn { r, mut w, inbox, .. } = Conn::connect(port)?;
        w.subscribe(&format!("{inbox}.p.*"), SID_PUBLISH)?;
        w.flush()?;
        let socket = w.out.get_ref().try_clone()?;
        let writer = Arc::new(Mutex::new(w));
        let (tx, acks) = mpsc::channel();
        let reader = {
            let writer = Arc::clone(&writer);
            thread::Builder::new().name("js-publish-acks".into()).spawn(move || read_publish_acks(r, &writer, &tx))?
        };
        Ok(Self { writer, acks, socket, reader: Some(reader), inbox, sent: 0, confirmed: 0 })
    }

    fn writer(&self) -> anyhow::Result<MutexGuard<'_, Writer>> {
        self.writer.lock().map_err(|_| anyhow!("the publisher's ack reader panicked"))
    }

    /// Publish one message (buffered: see [`Self::flush`]), first waiting for
    /// room in the window.
    fn publish(&mut self, subject: &str, msg_id: &str, payload: &[u8]) -> anyhow::Result<()> {
        if self.sent - self.confirmed >= PUBLISH_WINDOW {
            self.wait()?;
        }
        let reply = format!("{}.p.{}", self.inbox, self.sent);
        self.writer()?.publish(subject, Some(&reply), Some(msg_id), payload)?;
        self.sent += 1;
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(self.writer()?.flush()?)
    }

    /// Block for one ack, then take whatever others arrived: the window then
    /// refills by a burst, not one message (and one write) at a time.
    fn wait(&mut self) -> anyhow::Result<()> {
        self.flush()?;
        let ack = self.acks.recv().map_err(|_| anyhow!("the publisher's connection closed"))?;
        ack?;
        self.confirmed += 1;
        self.poll()
    }

    /// Take the acks that arrived, without blocking.
    fn poll(&mut self) -> anyhow::Result<()> {
        loop {
            match self.acks.try_recv() {
                Ok(ack) => {
                    ack?;
                    self.confirmed += 1;
                }
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => bail!("the publisher's connection closed"),
            }
        }
    }

    /// Wait until every publish is acknowledged.
    fn finish(&mut self) -> anyhow::Result<()> {
        while self.confirmed < self.sent {
            self.wait()?;
        }
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Wakes the reader thread out of its read.
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The publisher's reading half: each publish-ack (or the failure) to the
/// channel, pings answered; ends with the connection or the receiver.
fn read_publish_acks(mut r: Reader, writer: &Mutex<Writer>, tx: &mpsc::Sender<anyhow::Result<()>>) {
    loop {
        let ack = match r.read_op() {
            Ok(Op::Msg(msg)) if msg.sid == SID_PUBLISH => publish_ack(&msg).map(|_duplicate| ()),
            Ok(Op::Ping) => match writer.lock() {
                Ok(mut w) => match w.pong().and_then(|()| w.flush()) {
                    Ok(()) => continue,
                    Err(e) => Err(e.into()),
                },
                Err(_) => return,
            },
            Ok(Op::Err(e)) => Err(anyhow!("nats-server: {e}")),
            Ok(_) => continue,
            Err(e) => Err(e),
        };
        let failed = ack.is_err();
        if tx.send(ack).is_err() || failed {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// The measurements

/// Throughput of one run.
#[derive(Debug, Clone)]
pub(crate) struct Throughput {
    pub(crate) events: usize,
    /// Until every publish was acknowledged.
    pub(crate) publish_secs: f64,
    /// Until both consumers' acks of every input were confirmed.
    pub(crate) total_secs: f64,
}

/// Publish all `payloads` (msg ids `order-{i}`) with publish-ack while the
/// two consumers handle them; done when both have double-acked every input.
/// The server's own counts are checked afterwards (outside the timing).
pub(crate) fn throughput(payloads: &[Vec<u8>], mode: &Mode) -> anyhow::Result<Throughput> {
    let server = NatsServer::start(mode)?;
    create(&mut Conn::connect(server.port())?)?;
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(Arc::clone(&stop));
    let consumers = spawn_consumers(server.port(), payloads.len(), &stop)?;
    let mut publisher = Publisher::connect(server.port())?;
    let started = Instant::now();
    for (i, payload) in payloads.iter().enumerate() {
        publisher.publish(INPUT_SUBJECT, &format!("order-{i}"), payload)?;
    }
    publisher.finish()?;
    let publish_secs = started.elapsed().as_secs_f64();
    let reports = join(consumers)?;
    let finished = reports.iter().map(|r| r.finished).max().unwrap_or(started);
    let total_secs = (finished - started).as_secs_f64();
    let redelivered: usize = reports.iter().map(|r| r.redelivered).sum();
    if redelivered > 0 {
        eprintln!("jetstream: {redelivered} redeliveries (an ack wait expired)");
    }
    verify(server.port(), payloads.len(), &reports)?;
    Ok(Throughput { events: payloads.len(), publish_secs, total_secs })
}

/// Publish at `rate` events/s for `seconds` (after 1 s of warm-up, not
/// measured), in 1 ms ticks. An event's latency runs from its publish call
/// to both consumers holding the server's confirmation of their ack.
pub(crate) fn latency(
    payload: &dyn Fn(usize) -> Vec<u8>,
    rate: usize,
    seconds: u64,
    mode: &Mode,
) -> anyhow::Result<crate::weir::Latency> {
    ensure!(rate > 0 && seconds > 0, "latency needs a rate and a duration");
    let warmup = rate;
    let total = rate * usize::try_from(seconds)? + warmup;
    // Built ahead, so JSON encoding is not part of the measured path.
    let payloads: Vec<Vec<u8>> = (0..total).map(payload).collect();
    let server = NatsServer::start(mode)?;
    create(&mut Conn::connect(server.port())?)?;
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(Arc::clone(&stop));
    let consumers = spawn_consumers(server.port(), total, &stop)?;
    let mut publisher = Publisher::connect(server.port())?;
    let mut starts = Vec::with_capacity(total);
    let began = Instant::now();
    let mut tick = 0usize;
    while starts.len() < total {
        let due = began + Duration::from_millis(tick as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        // Exactly `rate` per second, also when it is not a multiple of 1000.
        let until = ((tick + 1) * rate / 1_000).min(total);
        while starts.len() < until {
            let i = starts.len();
            starts.push(Instant::now());
            publisher.publish(INPUT_SUBJECT, &format!("order-{i}"), &payloads[i])?;
        }
        publisher.flush()?;
        publisher.poll()?;
        tick += 1;
    }
    publisher.finish()?;
    let reports = join(consumers)?;
    let samples = (warmup..total)
        .map(|i| {
            let a = reports[0].acked_at[i].context("an input consumer a never acked")?;
            let b = reports[1].acked_at[i].context("an input consumer b never acked")?;
            Ok(a.max(b) - starts[i])
        })
        .collect::<anyhow::Result<Vec<Duration>>>()?;
    Ok(crate::weir::Latency::from_samples(rate, seconds, samples))
}

// ---------------------------------------------------------------------------
// The read side: a pull consumer's fetch + ack round trips (`consumer`)

/// How a pull consumer's batch is acknowledged, as Weir's one ack request
/// for a fetched batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PullAck {
    /// `ack_policy: explicit`: every message gets its own double-ack, sent
    /// together, and the batch's confirmations are awaited (as Weir answers
    /// each token's outcome).
    Each,
    /// `ack_policy: all`: one double-ack on the batch's last message acks
    /// the batch.
    All,
}

impl fmt::Display for PullAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Each => "explicit ack of each message (double-acks, pipelined, all confirmed)",
            Self::All => "AckAll (one double-ack on the batch's last message)",
        })
    }
}

/// Subscription of the pull requests' answers in [`pull_round_trips`].
const SID_FETCH: u64 = 5;
const PULL_CONSUMER: &str = "pull";

/// Publish `payloads` to a fresh stream (not timed), then drain it with one
/// durable pull consumer from one connection: ask for `batch` messages,
/// take them all, ack them per `ack`, wait for the server's confirmation,
/// ask again. Returns the seconds the drain took; the server's own counts
/// are checked afterwards.
/// One drain of [`pull_round_trips`].
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PullRun {
    pub(crate) events_per_sec: f64,
    pub(crate) secs: f64,
    /// CPU seconds of the client's thread, and of nats-server, in the drain.
    pub(crate) client_cpu_secs: f64,
    pub(crate) server_cpu_secs: f64,
}

pub(crate) fn pull_round_trips(payloads: &[Vec<u8>], batch: usize, ack: PullAck) -> anyhow::Result<PullRun> {
    let server = NatsServer::start(&Mode { sync_always: false })?;
    let mut conn = Conn::connect(server.port())?;
    create_stream(&mut conn)?;
    let policy = match ack {
        PullAck::Each => "explicit",
        PullAck::All => "all",
    };
    conn.request(
        &format!("$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.{PULL_CONSUMER}"),
        &json!({
            "stream_name": STREAM,
            "config": {
                "durable_name": PULL_CONSUMER, "deliver_policy": "all", "ack_policy": policy,
                "ack_wait": nanos(Duration::from_secs(30)), "filter_subject": INPUT_SUBJECT,
                "max_ack_pending": MAX_ACK_PENDING.max(batch), "replay_policy": "instant",
            },
        }),
    )?;
    let mut publisher = Publisher::connect(server.port())?;
    for (i, payload) in payloads.iter().enumerate() {
        publisher.publish(INPUT_SUBJECT, &format!("order-{i}"), payload)?;
    }
    publisher.finish()?;
    drop(publisher);
    let fetch_inbox = format!("{}.f", conn.inbox);
    let ack_inbox = format!("{}.k", conn.inbox);
    conn.w.subscribe(&fetch_inbox, SID_FETCH)?;
    conn.w.subscribe(&ack_inbox, SID_ACK)?;
    let next = format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{PULL_CONSUMER}");
    let total = payloads.len();
    let mut replies: Vec<String> = Vec::with_capacity(batch);
    let server_pid = server.child.id().to_string();
    let (client0, server0) = (crate::read_side::thread_cpu(), crate::read_side::cpu_of(&server_pid));
    let started = Instant::now();
    let mut done = 0;
    while done < total {
        // Exactly what is left, so the last request does not wait to expire.
        let want = batch.min(total - done);
        let body = format!(r#"{{"batch":{want},"expires":{}}}"#, nanos(PULL_EXPIRES));
        conn.w.publish(&next, Some(&fetch_inbox), None, body.as_bytes())?;
        replies.clear();
        while replies.len() < want {
            let msg = conn.next_msg()?;
            if msg.sid != SID_FETCH {
                continue;
            }
            match msg.status() {
                None => {}
                Some((100, _)) => continue,
                Some((code, text)) => bail!("pull request answered {code} {text} after {} of {want}", replies.len()),
            }
            replies.push(msg.reply.context("a JetStream message without an ack subject")?);
        }
        let confirmations = match ack {
            PullAck::Each => {
                for reply in &replies {
                    conn.w.publish(reply, Some(&ack_inbox), None, b"+ACK")?;
                }
                want
            }
            PullAck::All => {
                let last = replies.last().context("an empty batch")?;
                conn.w.publish(last, Some(&ack_inbox), None, b"+ACK")?;
                1
            }
        };
        let mut confirmed = 0;
        while confirmed < confirmations {
            let msg = conn.next_msg()?;
            if msg.sid != SID_ACK {
                continue;
            }
            if let Some((code, text)) = msg.status() {
                bail!("an ack answered {code} {text}");
            }
            confirmed += 1;
        }
        done += want;
    }
    let secs = started.elapsed().as_secs_f64();
    let client_cpu_secs = crate::read_side::thread_cpu() - client0;
    let server_cpu_secs = crate::read_side::cpu_of(&server_pid) - server0;
    let info = conn.request(&format!("$JS.API.CONSUMER.INFO.{STREAM}.{PULL_CONSUMER}"), &Value::Null)?;
    let count = |v: &Value| v.as_u64().unwrap_or(u64::MAX) as usize;
    let (ack_floor, ack_pending, pending) =
        (count(&info["ack_floor"]["stream_seq"]), count(&info["num_ack_pending"]), count(&info["num_pending"]));
    ensure!(
        ack_floor == total && ack_pending == 0 && pending == 0,
        "pull consumer after {total} messages: ack floor {ack_floor}, ack pending {ack_pending}, pending {pending}"
    );
    Ok(PullRun { events_per_sec: total as f64 / secs.max(1e-9), secs, client_cpu_secs, server_cpu_secs })
}

// ---------------------------------------------------------------------------
// appends with an expected last sequence per subject (issue 14's comparison)

/// One append per request, with `Nats-Expected-Last-Subject-Sequence`, as
/// Weir's `POST /v1/streams/…` with an expected revision.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct AppendRun {
    pub(crate) appends: usize,
    pub(crate) secs: f64,
    pub(crate) per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Appends the server refused for a wrong expected sequence (must be 0:
    /// every client owns its subjects).
    pub(crate) conflicts: usize,
    pub(crate) server_cpu_secs: f64,
}

impl Writer {
    /// `HPUB` with the expected last sequence of the subject.
    fn publish_expecting(&mut self, subject: &str, reply: &str, last: u64, payload: &[u8]) -> io::Result<()> {
        let header = format!("NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: {last}\r\n\r\n");
        write!(self.out, "HPUB {subject} {reply} {} {}\r\n", header.len(), header.len() + payload.len())?;
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(payload)?;
        self.out.write_all(b"\r\n")
    }
}

/// `clients` connections, each appending `n / clients` events one request at
/// a time to its own `keys / clients` subjects `accounts.account.<key>`,
/// each append expecting the subject's last sequence it saw.
pub(crate) fn expected_appends(clients: usize, keys: usize, n: usize) -> anyhow::Result<AppendRun> {
    let server = NatsServer::start(&Mode { sync_always: false })?;
    let port = server.port();
    let mut setup = Conn::connect(port)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = setup.request("$JS.API.INFO", &Value::Null) {
        ensure!(Instant::now() < deadline, "JetStream is not answering: {e:#}");
        thread::sleep(Duration::from_millis(50));
    }
    setup.request(
        "$JS.API.STREAM.CREATE.ACCOUNTS",
        &json!({ "name": "ACCOUNTS", "subjects": ["accounts.>"], "storage": "file", "retention": "limits",
                 "discard": "old", "num_replicas": 1 }),
    )?;
    let per_client = n / clients;
    let owned = (keys / clients).max(1);
    let cpu0 = crate::read_side::cpu_of(&server.child.id().to_string());
    let started = Instant::now();
    type Client = JoinHandle<anyhow::Result<(Vec<u64>, usize)>>;
    let workers: Vec<Client> = (0..clients)
        .map(|c| {
            thread::spawn(move || {
                let mut conn = Conn::connect(port)?;
                let mut last = vec![0u64; owned];
                let (mut latencies, mut conflicts) = (Vec::with_capacity(per_client), 0usize);
                for i in 0..per_client {
                    let slot = i % owned;
                    let key = c + clients * slot;
                    let subject = format!("accounts.account.{key}");
                    let payload = format!(r#"{{"amount":{},"balance":{}}}"#, 100, 100 * (i / owned + 1));
                    conn.requests += 1;
                    let reply = format!("{}.r.{}", conn.inbox, conn.requests);
                    let sent = Instant::now();
                    conn.w.publish_expecting(&subject, &reply, last[slot], payload.as_bytes())?;
                    let msg = loop {
                        let msg = conn.next_msg()?;
                        if msg.sid == SID_REQUEST && msg.subject == reply {
                            break msg;
                        }
                    };
                    latencies.push(nanos(sent.elapsed()));
                    let ack: Value = serde_json::from_slice(msg.payload())
                        .with_context(|| format!("ack: {}", String::from_utf8_lossy(msg.payload())))?;
                    match ack["seq"].as_u64() {
                        Some(seq) if ack.get("error").is_none() => last[slot] = seq,
                        _ => conflicts += 1,
                    }
                }
                Ok((latencies, conflicts))
            })
        })
        .collect();
    let (mut latencies, mut conflicts) = (Vec::with_capacity(n), 0);
    for w in workers {
        let (l, c) = w.join().map_err(|_| anyhow!("an append client panicked"))??;
        latencies.extend(l);
        conflicts += c;
    }
    let secs = started.elapsed().as_secs_f64();
    let server_cpu_secs = crate::read_side::cpu_of(&server.child.id().to_string()) - cpu0;
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64 / 1e6;
    Ok(AppendRun {
        appends: latencies.len(),
        secs,
        per_sec: latencies.len() as f64 / secs.max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        conflicts,
        server_cpu_secs,
    })
}
