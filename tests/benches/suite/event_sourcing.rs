//! Event sourcing (issue 14): commands decided by a Wasm aggregate through
//! `POST /v1/commands`, appends with an expected revision through
//! `POST /v1/streams` beside the same workload on NATS JetStream with
//! `Nats-Expected-Last-Subject-Sequence`, view queries, and a replay that
//! rebuilds a projection.
//!
//! The HTTP API is served in this process as `weir run` serves it (see
//! `read_side::Served`); the clients are blocking, one thread each, one
//! request at a time, sharing the machine's two cores with the server:
//! `ureq` agents, except for the commands' deposits and withdrawals, which
//! a minimal kept-alive HTTP/1.1 client ([`Raw`]) sends so that the
//! harness's own CPU does not set the rate. Each request is durable before
//! its answer (fsync'd group commit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use serde_json::{Value, json};
use weir_abi::Event;
use weir_tests::plugins;

use crate::read_side::{Served, agent, ok_body, post_json, process_cpu};

/// The entity type of every scenario here.
const TYPE: &str = "accounts.account";

/// Requests per second and latency percentiles of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Requests {
    pub(crate) requests: usize,
    pub(crate) clients: usize,
    pub(crate) secs: f64,
    pub(crate) per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    /// CPU seconds of the whole process (server and clients) in the run.
    pub(crate) process_cpu_secs: f64,
}

/// `clients` threads, each sending `per_client` requests one at a time:
/// `request(client, i, agent)` sends one. Answers the latencies' summary.
fn run_clients<F>(clients: usize, per_client: usize, request: F) -> anyhow::Result<Requests>
where
    F: Fn(usize, usize, &mut ureq::Agent) -> anyhow::Result<()> + Send + Sync + 'static,
{
    let connections: Vec<ureq::Agent> = (0..clients).map(|_| agent(Duration::from_secs(60))).collect();
    let request = Arc::new(request);
    let cpu0 = process_cpu();
    let started = Instant::now();
    let threads: Vec<std::thread::JoinHandle<anyhow::Result<Vec<u64>>>> = connections
        .into_iter()
        .enumerate()
        .map(|(c, mut connection)| {
            let request = Arc::clone(&request);
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let sent = Instant::now();
                    request(c, i, &mut connection)?;
                    latencies.push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(clients * per_client);
    for t in threads {
        all.extend(t.join().map_err(|_| anyhow!("a client thread panicked"))??);
    }
    summarize(clients, all, started.elapsed().as_secs_f64(), process_cpu() - cpu0)
}

/// The summary of a run's latencies (ns).
fn summarize(clients: usize, mut all: Vec<u64>, secs: f64, process_cpu_secs: f64) -> anyhow::Result<Requests> {
    ensure!(!all.is_empty(), "no requests were sent");
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1e6;
    Ok(Requests {
        requests: all.len(),
        clients,
        secs,
        per_sec: all.len() as f64 / secs.max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        process_cpu_secs,
    })
}

/// `clients` connections to `url`'s host, all driven by one thread (a
/// current-thread tokio runtime, as wrk drives its connections), each
/// sending `per_client` POSTs one at a time: `request(client, i)` gives the
/// path and the JSON body of one, and every answer's status must be one of
/// `accept`. A thread per client, blocked in `read` between requests, cost
/// the server's two cores ~14 µs of CPU per request in scheduler work and
/// context switches (benchmarks.md, "The bench's own clients"); here one
/// thread answers whichever connections are ready.
fn run_clients_multiplexed<F>(
    url: &str,
    clients: usize,
    per_client: usize,
    accept: &'static [u16],
    request: F,
) -> anyhow::Result<Requests>
where
    F: Fn(usize, usize) -> (String, String) + Send + Sync + 'static,
{
    let host = url.strip_prefix("http://").context("an http:// URL")?.trim_end_matches('/').to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let request = Arc::new(request);
    runtime.block_on(async move {
        let mut connections = Vec::with_capacity(clients);
        for _ in 0..clients {
            let stream =
                tokio::net::TcpStream::connect(&host).await.with_context(|| format!("connecting to {host}"))?;
            stream.set_nodelay(true)?;
            connections.push(stream);
        }
        let cpu0 = process_cpu();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (c, stream) in connections.into_iter().enumerate() {
            let (request, host) = (Arc::clone(&request), host.clone());
            tasks.spawn(async move { one_client(stream, &host, per_client, accept, |i| request(c, i)).await });
        }
        let mut all = Vec::with_capacity(clients * per_client);
        while let Some(done) = tasks.join_next().await {
            all.extend(done.map_err(|_| anyhow!("a client task panicked"))??);
        }
        summarize(clients, all, started.elapsed().as_secs_f64(), process_cpu() - cpu0)
    })
}

/// One connection of [`run_clients_multiplexed`]: its requests' latencies.
async fn one_client(
    mut stream: tokio::net::TcpStream,
    host: &str,
    per_client: usize,
    accept: &[u16],
    request: impl Fn(usize) -> (String, String),
) -> anyhow::Result<Vec<u64>> {
    use std::io::Write as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut out, mut buf) = (Vec::with_capacity(512), Vec::with_capacity(4096));
    let mut latencies = Vec::with_capacity(per_client);
    for i in 0..per_client {
        let (path, body) = request(i);
        out.clear();
        write!(
            out,
            "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let sent = Instant::now();
        stream.write_all(&out).await?;
        buf.clear();
        let status = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            ensure!(n > 0, "the server closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(answer) = complete_answer(&buf)? {
                break answer;
            }
        };
        latencies.push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
        ensure!(accept.contains(&status), "a request answered {status}");
    }
    Ok(latencies)
}

/// The status of the HTTP/1.1 answer in `buf` once all of it (head and
/// `content-length` bytes of body) is there; `None` while it is not.
fn complete_answer(buf: &[u8]) -> anyhow::Result<Option<u16>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&buf[..end]).context("a UTF-8 response head")?;
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).context("a status line")?;
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .context("a content-length")?;
    if buf.len() < end + 4 + length {
        return Ok(None);
    }
    ensure!(buf.len() == end + 4 + length, "more than one answer");
    Ok(Some(status))
}

/// The commands scenario: opening every account, then deposits and
/// withdrawals (one in ten) spread over them at random.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Commands {
    pub(crate) accounts: usize,
    pub(crate) open: Requests,
    pub(crate) moves: Requests,
    /// Group commits during the moves, and store commands per commit.
    pub(crate) group_commits: u64,
    pub(crate) commands_per_commit: f64,
}

/// `n` commands from `clients` clients over `accounts` accounts, decided by
/// the `bank-account` aggregate (after one `open` per account).
pub(crate) fn commands(accounts: usize, n: usize, clients: usize) -> anyhow::Result<Commands> {
    let toml = format!("[[entities]]\ntype = \"{TYPE}\"\naggregate = {:?}\n", plugins::BANK_ACCOUNT);
    let served = Served::start(0, &toml)?;
    let url = Arc::new(served.url.clone());
    let per_client = accounts.div_ceil(clients);
    let base = Arc::clone(&url);
    let open = run_clients(clients, per_client, move |c, i, agent| {
        let account = c * per_client + i;
        if account >= accounts {
            return Ok(());
        }
        let body = json!({"command": "open", "payload": {"owner": format!("owner {account}")},
                          "idempotency_key": format!("open-{account}")});
        post_json(agent, &format!("{base}/v1/commands/{TYPE}/acct-{account}"), body.to_string().as_bytes())?;
        Ok(())
    })?;
    let per_client = n / clients;
    let base = Arc::clone(&url);
    let (commits0, commands0) = served.rt.store().commit_stats();
    let moves = run_clients_multiplexed(&base, clients, per_client, &[200, 201, 422], move |c, i| {
        let k = c * per_client + i;
        let account = rand::random_range(0..accounts);
        // Withdrawals of 1 after at least one deposit of 100 never overdraw
        // unless the account is new: a refusal (422) counts as answered.
        let (command, amount) = if k % 10 == 9 { ("withdraw", 1) } else { ("deposit", 100) };
        let body = format!(r#"{{"command":"{command}","payload":{{"amount":{amount}}},"idempotency_key":"move-{k}"}}"#);
        (format!("/v1/commands/{TYPE}/acct-{account}"), body)
    })?;
    let (commits1, commands1) = served.rt.store().commit_stats();
    served.finish()?;
    let group_commits = commits1 - commits0;
    let commands_per_commit = (commands1 - commands0) as f64 / group_commits.max(1) as f64;
    Ok(Commands { accounts, open, moves, group_commits, commands_per_commit })
}

/// `n` appends through `POST /v1/streams/{type}/{key}`, one event each, from
/// `clients` clients each owning `keys / clients` streams and expecting the
/// revision it last saw: the workload `jetstream::expected_appends` runs.
pub(crate) fn appends(keys: usize, n: usize, clients: usize) -> anyhow::Result<(Requests, usize)> {
    let toml = format!("[[entities]]\ntype = \"{TYPE}\"\n");
    let served = Served::start(0, &toml)?;
    let base = Arc::new(served.url.clone());
    let owned = (keys / clients).max(1);
    let per_client = n / clients;
    let conflicts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&conflicts);
    // Each client's streams' revisions, kept by the client: a stream's
    // first append expects `no_stream`.
    let revisions: Arc<Vec<std::sync::Mutex<Vec<Option<u64>>>>> =
        Arc::new((0..clients).map(|_| std::sync::Mutex::new(vec![None; owned])).collect());
    let run = run_clients(clients, per_client, move |c, i, agent| {
        let slot = i % owned;
        let key = c + clients * slot;
        let mut mine = revisions[c].lock().map_err(|_| anyhow!("poisoned"))?;
        let expected = mine[slot].map_or_else(|| json!("no_stream"), |r| json!(r));
        let body = json!({"expected_revision": expected, "events": [{
            "topic": "accounts.account.deposited",
            "payload": {"amount": 100, "balance": 100 * (i / owned + 1)},
        }]});
        let url = format!("{base}/v1/streams/{TYPE}/acct-{key}");
        let answer = agent.post(&url).header("content-type", "application/json").send(body.to_string().as_bytes());
        if answer.as_ref().is_ok_and(|r| r.status().as_u16() == 409) {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        let body = ok_body(answer, &url)?;
        let answer: Value = serde_json::from_slice(&body).context("an append's answer")?;
        mine[slot] = Some(answer["revision"].as_u64().context("an append's answer has its revision")?);
        Ok(())
    })?;
    served.finish()?;
    Ok((run, conflicts.load(std::sync::atomic::Ordering::Relaxed)))
}

/// The views and replay scenarios, over one log.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ViewsAndReplay {
    pub(crate) accounts: usize,
    pub(crate) events: usize,
    pub(crate) queries: Requests,
    /// Events the replay applied (the account events: all of the log).
    pub(crate) replay_applied: u64,
    pub(crate) replay_secs: f64,
    pub(crate) replay_per_sec: f64,
}

fn account_event(ids: &weir_runtime::IdGenerator, i: usize, accounts: usize) -> Event {
    let account = i % accounts;
    let (topic, payload) = if i < accounts {
        ("accounts.account.opened", json!({"owner": format!("owner {account}")}))
    } else {
        ("accounts.account.deposited", json!({"amount": 100, "balance": 100 * (i / accounts)}))
    };
    Event {
        id: ids.next_id(),
        topic: topic.into(),
        source: "weir:bench".into(),
        key: Some(format!("acct-{account}")),
        schema_version: 1,
        time: weir_runtime::now_nanos(),
        content_type: "application/json".into(),
        headers: Vec::new(),
        idempotency_key: format!("acct-event-{i}"),
        correlation_id: None,
        causation_id: None,
        payload: serde_json::to_vec(&payload).unwrap_or_default(),
    }
}

/// A `balances` projection over `events` account events (`accounts`
/// accounts): `queries` view reads by key from `clients` clients once it has
/// caught up, then a replay that rebuilds it from the start of the log.
pub(crate) fn views_and_replay(
    accounts: usize,
    events: usize,
    clients: usize,
    queries: usize,
) -> anyhow::Result<ViewsAndReplay> {
    let toml = format!(
        "[[entities]]\ntype = \"{TYPE}\"\n[[pipelines]]\nname = \"accounts\"\ntopics = [\"accounts.account.*\"]\n\
         [[pipelines.handlers]]\nname = \"balances\"\nplugin = {:?}\nview = \"balances\"\n",
        plugins::BALANCES
    );
    let served = Served::start(0, &toml)?;
    let ids = served.rt.ids();
    let batches =
        (0..events).step_by(500).map(|i| (i..(i + 500).min(events)).map(|j| account_event(ids, j, accounts)).collect());
    crate::weir::publish_all(&served.rt, batches);
    ensure!(served.rt.wait_idle(Duration::from_secs(600)), "the projection did not catch up in 10 minutes");
    let base = Arc::new(served.url.clone());
    let per_client = queries / clients;
    let url = Arc::clone(&base);
    let queries = run_clients(clients, per_client, move |_, _, agent| {
        let account = rand::random_range(0..accounts);
        let url = format!("{url}/v1/views/balances/acct-{account}");
        ok_body(agent.get(&url).call(), &url)?;
        Ok(())
    })?;
    let agent = agent(Duration::from_secs(60));
    let replay = format!("{base}/v1/subscriptions/accounts/balances/replay");
    let started = Instant::now();
    let started_replay = agent.post(&replay).header("content-type", "application/json").send(&b"{}"[..]);
    let status = started_replay.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
    ensure!(status == 202, "POST {replay}: {status}");
    let info = loop {
        let info: Value = serde_json::from_slice(&ok_body(agent.get(&replay).call(), &replay)?)?;
        match info["state"].as_str() {
            Some("done") => break info,
            Some("failed") => anyhow::bail!("the replay failed: {info}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let secs = match (info["started_at_ms"].as_u64(), info["finished_at_ms"].as_u64()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e3,
        _ => started.elapsed().as_secs_f64(),
    };
    let applied = info["applied"].as_u64().unwrap_or(0);
    ensure!(applied as usize == events, "the replay applied {applied} events of {events}: {info}");
    served.finish()?;
    Ok(ViewsAndReplay {
        accounts,
        events,
        queries,
        replay_applied: applied,
        replay_secs: secs,
        replay_per_sec: applied as f64 / secs.max(1e-9),
    })
}

/// Run the event-sourcing scenarios `o` asks for, once per round, and write
/// their section; the headline figures go into `results` for the targets.
pub(crate) fn report(r: &mut crate::Report, o: &crate::Options, results: &mut std::collections::BTreeMap<String, f64>) {
    use std::fmt::Write as _;
    let wanted = |s: &str| o.scenarios.iter().any(|x| x == s);
    if !["commands", "appends", "views"].iter().any(|s| wanted(s)) {
        return;
    }
    let (accounts, clients) = if o.quick { (200, 8) } else { (10_000, 64) };
    let half = (o.events / 2).max(clients);
    let nats = wanted("appends") && crate::jetstream::server_version().is_some();
    if wanted("appends") && !nats {
        r.skip("appends (JetStream side)", "nats-server is not installed (Debian package `nats-server`)");
    }
    let (mut cmds, mut apps, mut js, mut views) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut failed = std::collections::BTreeSet::new();
    for round in 0..o.repeat {
        let of = format!("round {} of {}", round + 1, o.repeat);
        if wanted("commands") && !failed.contains("commands") {
            eprintln!("running commands ({of}): {accounts} opens, then {half} commands from {clients} clients …");
            match commands(accounts, half, clients) {
                Ok(t) => cmds.push(t),
                Err(e) => {
                    r.fail("commands", &e);
                    failed.insert("commands");
                }
            }
        }
        if wanted("appends") && !failed.contains("appends") {
            eprintln!("running appends ({of}): Weir, {half} appends with an expected revision …");
            match appends(accounts, half, clients) {
                Ok(t) => apps.push(t),
                Err(e) => {
                    r.fail("appends", &e);
                    failed.insert("appends");
                }
            }
            if nats {
                eprintln!("running appends ({of}): JetStream, {half} publishes with an expected subject sequence …");
                match crate::jetstream::expected_appends(clients, accounts, half) {
                    Ok(t) => js.push(t),
                    Err(e) => {
                        r.fail("appends (JetStream)", &e);
                        failed.insert("appends");
                    }
                }
            }
        }
        if wanted("views") && !failed.contains("views") {
            let queries = if o.quick { 400 } else { 20_000 };
            eprintln!("running views ({of}): a projection over {} events, {queries} queries, a replay …", o.events);
            match views_and_replay(accounts, o.events.max(accounts), 4, queries) {
                Ok(t) => views.push(t),
                Err(e) => {
                    r.fail("views", &e);
                    failed.insert("views");
                }
            }
        }
    }
    r.section(
        &format!("Event sourcing (median of {} rounds, range)", o.repeat),
        "| scenario | what | per second | p50 | p99 | p99.9 | CPU: whole process / wall |",
    );
    let row = |r: &mut crate::Report, id: &str, what: String, t: &Requests, lo: f64, hi: f64| {
        r.row(&[
            id.into(),
            what,
            crate::spread(t.per_sec, lo, hi),
            format!("{:.2} ms", t.p50_ms),
            format!("{:.2} ms", t.p99_ms),
            format!("{:.2} ms", t.p999_ms),
            format!("{:.1} s / {:.1} s", t.process_cpu_secs, t.secs),
        ]);
    };
    if !cmds.is_empty() {
        let (t, lo, hi) = crate::median_by(&mut cmds, |c| c.moves.per_sec);
        row(
            r,
            "`commands`",
            format!(
                "`POST /v1/commands`: {} deposits/withdrawals over {} accounts, {} clients",
                t.moves.requests, t.accounts, t.moves.clients
            ),
            &t.moves,
            lo,
            hi,
        );
        row(
            r,
            "`commands` (open)",
            format!("the {} `open` commands before them", t.open.requests),
            &t.open,
            t.open.per_sec,
            t.open.per_sec,
        );
        let _ = writeln!(
            r.md,
            "| | (the commands above: {} group commits, {:.1} store commands per commit) | | | | | |",
            t.group_commits, t.commands_per_commit
        );
        results.insert("commands_per_sec".into(), t.moves.per_sec);
        r.json["scenarios"]["commands"] = json!({ "median": t, "runs": cmds });
    }
    if !apps.is_empty() {
        let (t, lo, hi) = crate::median_by(&mut apps, |a| a.0.per_sec);
        row(
            r,
            "`appends`",
            format!(
                "Weir `POST /v1/streams` with an expected revision: {} appends, {} streams, {} clients ({} conflicts)",
                t.0.requests, accounts, t.0.clients, t.1
            ),
            &t.0,
            lo,
            hi,
        );
        r.json["scenarios"]["appends"] = json!({ "median": t.0, "conflicts": t.1 });
    }
    if !js.is_empty() {
        let (m, lo, hi) = crate::median_by(&mut js, |a| a.per_sec);
        r.row(&[
            "`appends` (JetStream)".into(),
            format!(
                "`Nats-Expected-Last-Subject-Sequence`: {} publishes, {accounts} subjects, {clients} clients ({} conflicts; not fsync'd)",
                m.appends, m.conflicts
            ),
            crate::spread(m.per_sec, lo, hi),
            format!("{:.2} ms", m.p50_ms),
            format!("{:.2} ms", m.p99_ms),
            "–".into(),
            format!("nats-server {:.1} s / {:.1} s", m.server_cpu_secs, m.secs),
        ]);
        r.json["scenarios"]["appends_jetstream"] = json!({ "median": m, "runs": js });
    }
    if !views.is_empty() {
        let (t, lo, hi) = crate::median_by(&mut views, |v| v.queries.per_sec);
        row(
            r,
            "`views`",
            format!(
                "`GET /v1/views/balances/{{key}}`, {} queries, 4 clients, {} accounts",
                t.queries.requests, t.accounts
            ),
            &t.queries,
            lo,
            hi,
        );
        let (v, lo, hi) = crate::median_by(&mut views, |v| v.replay_per_sec);
        r.row(&[
            "`views` (replay)".into(),
            format!("rebuild the projection from the start of a log of {} events", v.events),
            crate::spread(v.replay_per_sec, lo, hi),
            "–".into(),
            "–".into(),
            "–".into(),
            format!("{:.2} s", v.replay_secs),
        ]);
        results.insert("view_p99_ms".into(), t.queries.p99_ms);
        results.insert("replay_per_sec".into(), v.replay_per_sec);
        r.json["scenarios"]["views"] = json!({ "median": t, "runs": views });
    }
    let _ = writeln!(r.md);
}
