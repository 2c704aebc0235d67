//! Memory and restart: a runtime with N loaded plugins in a child process
//! (this same binary, started with `--child-runtime <config>`), so its RSS is
//! the runtime's alone and its start is a real process start.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir_tests::plugins;

/// The child side: start the runtime of `config`, say `ready`, and stop
/// cleanly when stdin closes.
pub(crate) fn child(config: &Path) -> anyhow::Result<()> {
    let config = weir_runtime::Config::load(config)?;
    let rt = weir_runtime::Runtime::start(&config)?;
    println!("ready");
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink)? > 0 {}
    rt.shutdown()?;
    Ok(())
}

/// `module` with a custom section appended: the same code under a different
/// sha256, so each handler is its own plugin version with its own compiled
/// artifact, as distinct plugins would be.
fn variant(module: &[u8], n: usize) -> Vec<u8> {
    fn leb(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"weir-bench-variant";
    let body = n.to_le_bytes();
    let mut section = Vec::new();
    leb(name.len(), &mut section);
    section.extend_from_slice(name);
    section.extend_from_slice(&body);
    let mut out = module.to_vec();
    out.push(0); // custom section id
    leb(section.len(), &mut out);
    out.extend_from_slice(&section);
    out
}

/// A data directory with a config of `plugins` handlers, each running a
/// distinct copy of the filter plugin, in one pipeline each.
fn setup(dir: &Path, plugins_n: usize) -> anyhow::Result<PathBuf> {
    let module = std::fs::read(plugins::FILTER)?;
    let mut text = format!("data_dir = {:?}\n", dir.join("data").display().to_string());
    for i in 0..plugins_n {
        let path = dir.join(format!("filter-{i}.wasm"));
        std::fs::write(&path, variant(&module, i))?;
        text += &format!(
            "[[pipelines]]\nname = \"p{i}\"\ntopics = [\"orders.order.created\"]\n\
             [[pipelines.handlers]]\nname = \"h\"\nplugin = {:?}\n",
            path.display().to_string()
        );
    }
    let config = dir.join("weir.toml");
    std::fs::write(&config, text)?;
    Ok(config)
}

/// One start of the child: wall time until ready, and its RSS then.
fn start_once(config: &Path) -> anyhow::Result<(Duration, u64)> {
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg("--child-runtime")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let elapsed = started.elapsed();
    anyhow::ensure!(line.trim() == "ready", "child runtime did not start: {line:?}");
    // Let the threads settle (first samples, first idle waits).
    std::thread::sleep(Duration::from_millis(300));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/<pid>/status"))?;
    drop(child.stdin.take());
    let exit = child.wait()?;
    anyhow::ensure!(exit.success(), "child runtime exited with {exit}");
    Ok((elapsed, rss_kib * 1024))
}

/// Memory and restart figures.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Memory {
    pub(crate) plugins: usize,
    pub(crate) rss_one_mib: f64,
    pub(crate) rss_many_mib: f64,
    pub(crate) per_plugin_mib: f64,
    /// First start with `plugins` plugins: every module compiled.
    pub(crate) cold_start_secs: f64,
    /// Restart with `plugins` plugins, artifact cache warm: median of 3.
    pub(crate) restart_secs: f64,
}

pub(crate) fn memory(plugins_n: usize) -> anyhow::Result<Memory> {
    let one_dir = tempfile::tempdir()?;
    let many_dir = tempfile::tempdir()?;
    let one = setup(one_dir.path(), 1)?;
    let many = setup(many_dir.path(), plugins_n)?;
    // First starts compile and fill the artifact caches; the RSS figures
    // are from restarts, the steady state of a deployed runtime.
    start_once(&one)?;
    let (cold, _) = start_once(&many)?;
    let (_, rss_one) = start_once(&one)?;
    let mut restarts = Vec::new();
    let mut rss_many = 0;
    for _ in 0..3 {
        let (t, rss) = start_once(&many)?;
        restarts.push(t);
        rss_many = rss;
    }
    restarts.sort();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    Ok(Memory {
        plugins: plugins_n,
        rss_one_mib: mib(rss_one),
        rss_many_mib: mib(rss_many),
        per_plugin_mib: mib(rss_many.saturating_sub(rss_one)) / (plugins_n.saturating_sub(1).max(1)) as f64,
        cold_start_secs: cold.as_secs_f64(),
        restart_secs: restarts[restarts.len() / 2].as_secs_f64(),
    })
}
