//! `zocalo bench URL`: the scenarios of pyftpdlib's ftpbench and more, against any FTP server.
//!
//! | scenario        | what it measures                                                         |
//! |-----------------|--------------------------------------------------------------------------|
//! | `transfer`      | one session's STOR then RETR throughput of a large binary file           |
//! | `logins`        | N sessions logging in one after another (logins/s), then N quitting      |
//! | `idle-transfer` | one RETR of the large file while N other sessions sit idle               |
//! | `multi`         | N clients each RETR, then each STOR, a 10 MB file, all at once           |
//! | `sessions`      | sessions/s at concurrency C (connect, login, RETR 1 MiB, quit), p50, p99 |
//! | `memory`        | server RSS/PSS with K idle sessions (`server_pid`), a fresh client's time |
//! | `listing`       | LIST and MLSD of a directory with 10,000 entries                          |
//!
//! Single-session scenarios use the blocking [`Client`]; the many-session ones use the
//! event-driven [`engine`], one thread over a poller. Each scenario stops at its deadline
//! ([`BenchOptions::timeout`]); sessions unfinished then count as failures. Files the bench
//! needs are uploaded first when missing (`zocalo-bench-*.bin` in the URL's directory).
//!
//! This module does not start or stop servers; `bench/compare.sh` does.

pub mod engine;
mod fairness;
pub mod mem;
pub mod report;
pub mod stats;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::rc::Rc;
use std::str::FromStr;
use std::time::{Duration, Instant};

use zocalo_poller::Backend;

use crate::ftp::{Client, ClientOptions, FtpError};
use crate::ops::OpError;
use crate::url::{FtpUrl, Scheme};
use engine::{Engine, Outcome, Step, Target};
use stats::{percentile, rate, sorted_ms, Metric, ScenarioResult};

const MB: f64 = 1_000_000.0;
/// Logins in flight at once while opening idle sessions.
const RAMP: usize = 64;
/// Fresh sessions timed while the idle ones sit.
const FRESH_SESSIONS: usize = 50;
/// Repetitions of each listing.
const LISTING_RUNS: usize = 5;
/// Error messages kept per scenario.
const NOTES: usize = 3;

/// One benchmark scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Transfer,
    Logins,
    IdleTransfer,
    Multi,
    Sessions,
    Memory,
    Listing,
    Fairness,
}

impl Scenario {
    /// The scenarios run when none is named (`fairness` takes a prepared directory and a slow
    /// account, so it is run by name).
    pub const ALL: [Scenario; 7] = [
        Scenario::Transfer,
        Scenario::Logins,
        Scenario::IdleTransfer,
        Scenario::Multi,
        Scenario::Sessions,
        Scenario::Memory,
        Scenario::Listing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Transfer => "transfer",
            Scenario::Logins => "logins",
            Scenario::IdleTransfer => "idle-transfer",
            Scenario::Multi => "multi",
            Scenario::Sessions => "sessions",
            Scenario::Memory => "memory",
            Scenario::Listing => "listing",
            Scenario::Fairness => "fairness",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .chain([Scenario::Fairness])
            .find(|sc| sc.name() == s)
            .ok_or_else(|| format!("unknown scenario {s:?}; known: {}", names()))
    }
}

fn names() -> String {
    Scenario::ALL.map(Scenario::name).join(", ") + ", fairness"
}

/// What to run and how big; the defaults are the sizes.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Scenarios to run, in order; empty means all.
    pub scenarios: Vec<Scenario>,
    /// The server's name in tables, JSON and charts (default: the URL's host:port).
    pub label: Option<String>,
    /// N: sessions for `logins`, `idle-transfer` and `multi`.
    pub clients: usize,
    /// C: the concurrency levels of `sessions`.
    pub concurrency: Vec<usize>,
    /// Sessions run at each concurrency level.
    pub sessions: usize,
    /// K: idle sessions for `memory`.
    pub idle: usize,
    /// Size of the large file (`transfer`, `idle-transfer`).
    pub big_size: u64,
    /// Size of the per-client file of `multi`.
    pub multi_size: u64,
    /// Size of the file each session of `sessions` retrieves.
    pub small_size: u64,
    /// Entries in the listing directory.
    pub list_entries: usize,
    /// Create the listing directory's entries with STOR (otherwise they must exist).
    pub create_listing: bool,
    /// K: sessions that send NOOP in a loop in `fairness`.
    pub fairness_sessions: usize,
    /// An account whose login is slow (an Argon2 hash), for `fairness`: USER, PASS.
    pub slow_login: Option<(String, String)>,
    /// The server's process, for `memory` (its children are included).
    pub server_pid: Option<u32>,
    /// Deadline of each scenario.
    pub timeout: Duration,
    /// Poller of the load generator.
    pub backend: Backend,
    pub json: bool,
    /// Append results and redraw charts in this directory.
    pub report: Option<PathBuf>,
    /// Connection options of the blocking client (TLS, active mode, per-I/O timeout).
    pub client: ClientOptions,
}

impl Default for BenchOptions {
    fn default() -> BenchOptions {
        BenchOptions {
            scenarios: Vec::new(),
            label: None,
            clients: 300,
            concurrency: vec![100, 500],
            sessions: 2000,
            idle: 2000,
            big_size: 1 << 30,
            multi_size: 10_000_000,
            small_size: 1 << 20,
            list_entries: 10_000,
            create_listing: false,
            fairness_sessions: 20,
            slow_login: None,
            server_pid: None,
            timeout: Duration::from_secs(120),
            backend: Backend::Epoll,
            json: false,
            report: None,
            client: ClientOptions::default(),
        }
    }
}

/// The shared state of one bench run.
struct Bench<'a> {
    url: FtpUrl,
    target: Target,
    opts: &'a BenchOptions,
    label: String,
}

/// Runs the chosen scenarios against `url`, printing each result to `out` as it completes (a
/// table, or JSON lines), then writes the report if asked. A scenario that fails outright is
/// reported with a note and the run goes on.
pub fn run(
    url: &str,
    opts: &BenchOptions,
    out: &mut dyn Write,
) -> Result<Vec<ScenarioResult>, OpError> {
    let url = FtpUrl::parse(url)?;
    if url.scheme == Scheme::Ftps || opts.client.explicit_tls {
        return Err(OpError::Usage("the load generator speaks plain FTP only".into()));
    }
    raise_fd_limit();
    let bench = Bench::new(url, opts)?;
    let scenarios =
        if opts.scenarios.is_empty() { Scenario::ALL.to_vec() } else { opts.scenarios.clone() };
    let mut results = Vec::new();
    for scenario in scenarios {
        for result in bench.run_scenario(scenario) {
            print_result(out, &result, opts.json).map_err(stdout_error)?;
            results.push(result);
        }
    }
    if let Some(dir) = &opts.report {
        report::write_report(dir, &results, &opts.describe())
            .map_err(|error| OpError::Local { path: dir.clone(), error })?;
    }
    Ok(results)
}

impl BenchOptions {
    /// The run's parameters, one line, for its report.
    pub fn describe(&self) -> String {
        let scenarios: Vec<&str> = self.scenarios.iter().map(|s| s.name()).collect();
        format!(
            "scenarios={} clients={} concurrency={:?} sessions={} idle={} big-size={} \
             multi-size={} small-size={} list-entries={} fairness-sessions={} timeout={}s \
             poller={}",
            if scenarios.is_empty() { "all".to_string() } else { scenarios.join(",") },
            self.clients,
            self.concurrency,
            self.sessions,
            self.idle,
            self.big_size,
            self.multi_size,
            self.small_size,
            self.list_entries,
            self.fairness_sessions,
            self.timeout.as_secs(),
            self.backend,
        )
    }
}

impl ScenarioResult {
    /// True when nothing of the scenario succeeded: it failed outright, or every one of its
    /// sessions failed (a `failures` count and a rate of zero).
    pub fn failed_entirely(&self) -> bool {
        let failed = self.notes.iter().any(|n| n.starts_with("failed"));
        let value = |name: &str| self.metrics.iter().find(|m| m.name == name).map(|m| m.value);
        let none_done = ["logins", "sessions"].iter().any(|n| value(n) == Some(0.0));
        failed || (none_done && value("failures").is_some_and(|f| f > 0.0))
    }
}

fn stdout_error(error: io::Error) -> OpError {
    OpError::Local { path: PathBuf::from("<stdout>"), error }
}

fn print_result(out: &mut dyn Write, result: &ScenarioResult, json: bool) -> io::Result<()> {
    if json {
        writeln!(out, "{}", report::json_line(result))
    } else {
        let table = report::table(std::slice::from_ref(result));
        out.write_all(
            table.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>().as_bytes(),
        )
    }
}

/// Lets the load generator hold thousands of sockets (soft limit raised to the hard one).
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid rlimit pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

impl<'a> Bench<'a> {
    fn new(url: FtpUrl, opts: &'a BenchOptions) -> Result<Bench<'a>, OpError> {
        let addr: SocketAddr =
            url.authority().to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(|| {
                OpError::Ftp(FtpError::Connect(format!("cannot resolve {}", url.authority())))
            })?;
        let target = Target {
            addr,
            user: url.user.clone().unwrap_or_else(|| "anonymous".into()),
            pass: url.password.clone().unwrap_or_else(|| "zocalo@".into()),
        };
        let label = opts.label.clone().unwrap_or_else(|| url.authority());
        Ok(Bench { url, target, opts, label })
    }

    /// The results of one scenario (`sessions` gives one per concurrency level).
    fn run_scenario(&self, scenario: Scenario) -> Vec<ScenarioResult> {
        let outcome = match scenario {
            Scenario::Transfer => self.transfer().map(|r| vec![r]),
            Scenario::Logins => self.logins().map(|r| vec![r]),
            Scenario::IdleTransfer => self.idle_transfer().map(|r| vec![r]),
            Scenario::Multi => self.multi().map(|r| vec![r]),
            Scenario::Sessions => self.sessions(),
            Scenario::Memory => self.memory().map(|r| vec![r]),
            Scenario::Listing => self.listing().map(|r| vec![r]),
            Scenario::Fairness => self.fairness().map(|r| vec![r]),
        };
        outcome.unwrap_or_else(|e| {
            vec![self.result(scenario.name(), Vec::new(), vec![format!("failed: {e}")])]
        })
    }

    fn result(&self, scenario: &str, metrics: Vec<Metric>, notes: Vec<String>) -> ScenarioResult {
        ScenarioResult { label: self.label.clone(), scenario: scenario.to_owned(), metrics, notes }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.opts.timeout
    }

    /// A remote path in the URL's directory.
    fn remote(&self, name: &str) -> String {
        let dir = self.url.path.trim_end_matches('/');
        format!("{dir}/{name}")
    }

    fn client(&self) -> Result<Client, FtpError> {
        Client::open(&self.url, &self.opts.client)
    }

    fn engine(&self) -> Result<Engine, String> {
        Engine::new(self.target.clone(), self.opts.backend).map_err(|e| format!("poller: {e}"))
    }

    /// Uploads `size` zero bytes to `path` unless a file of that size is already there.
    fn ensure_file(&self, client: &mut Client, path: &str, size: u64) -> Result<(), FtpError> {
        if client.size(path).ok() == Some(size) {
            return Ok(());
        }
        client.stor(path, 0, &mut io::repeat(0).take(size), &mut |_| {}).map(drop)
    }

    fn transfer(&self) -> Result<ScenarioResult, String> {
        let mut client = self.client().map_err(|e| e.to_string())?;
        let path = self.remote("zocalo-bench-big.bin");
        let size = self.opts.big_size;
        let t = Instant::now();
        let sent = client.stor(&path, 0, &mut io::repeat(0).take(size), &mut |_| {});
        let stor = sent.map(|n| rate(n as f64 / MB, t.elapsed()));
        let t = Instant::now();
        let got = client.retr(&path, 0, &mut io::sink(), &mut |_| {});
        let retr = got.map(|n| rate(n as f64 / MB, t.elapsed()));
        let _ = client.quit();
        let mut metrics = Vec::new();
        let mut notes = Vec::new();
        match stor {
            Ok(v) => metrics.push(Metric::higher("stor", v, "MB/s")),
            Err(e) => notes.push(format!("STOR: {e}")),
        }
        match retr {
            Ok(v) => metrics.push(Metric::higher("retr", v, "MB/s")),
            Err(e) => notes.push(format!("RETR: {e}")),
        }
        Ok(self.result("transfer", metrics, notes))
    }

    /// N sessions log in one after another and stay; then all quit at once.
    fn logins(&self) -> Result<ScenarioResult, String> {
        let mut engine = self.engine()?;
        let deadline = self.deadline();
        let script: Rc<[Step]> = Rc::from([Step::Login, Step::Idle, Step::Quit]);
        let t = Instant::now();
        let mut latencies = Vec::new();
        for _ in 0..self.opts.clients {
            let one = Instant::now();
            engine.start(script.clone());
            if !drive(&mut engine, deadline, |e| e.active() == e.idle())
                .map_err(|e| e.to_string())?
            {
                break;
            }
            latencies.push(one.elapsed());
        }
        let login_time = t.elapsed();
        let logged_in = engine.idle();
        let t = Instant::now();
        engine.release_idle();
        let quit_in_time =
            drive(&mut engine, self.deadline(), |e| e.active() == 0).map_err(|e| e.to_string())?;
        let quit_time = t.elapsed();
        engine.abort_all("timeout");
        let outcomes = engine.take_outcomes();
        let ms = sorted_ms(latencies);
        let mut metrics = vec![
            Metric::higher("logins", rate(logged_in as f64, login_time), "logins/s"),
            Metric::lower("login p50", percentile(&ms, 50.0).unwrap_or(0.0), "ms"),
        ];
        if quit_in_time {
            metrics.push(Metric::higher("quits", rate(logged_in as f64, quit_time), "quits/s"));
        }
        metrics.push(Metric::lower(
            "failures",
            failures(&outcomes, self.opts.clients) as f64,
            "sessions",
        ));
        Ok(self.result("logins", metrics, error_notes(&outcomes)))
    }

    /// One RETR of the large file while N sessions sit idle.
    fn idle_transfer(&self) -> Result<ScenarioResult, String> {
        let path = self.remote("zocalo-bench-big.bin");
        let mut client = self.client().map_err(|e| e.to_string())?;
        self.ensure_file(&mut client, &path, self.opts.big_size).map_err(|e| e.to_string())?;
        let mut engine = self.engine()?;
        let idle = open_idle(&mut engine, self.opts.clients, self.deadline())?;
        let t = Instant::now();
        let got = client.retr(&path, 0, &mut io::sink(), &mut |_| {});
        let elapsed = t.elapsed();
        let _ = client.quit();
        engine.release_idle();
        drive(&mut engine, self.deadline(), |e| e.active() == 0).map_err(|e| e.to_string())?;
        engine.abort_all("timeout");
        let outcomes = engine.take_outcomes();
        let mut metrics = vec![Metric::higher("idle sessions", idle as f64, "sessions")];
        let mut notes = error_notes(&outcomes);
        match got {
            Ok(n) => metrics.push(Metric::higher("retr", rate(n as f64 / MB, elapsed), "MB/s")),
            Err(e) => notes.push(format!("RETR: {e}")),
        }
        Ok(self.result("idle-transfer", metrics, notes))
    }

    /// N clients each RETR a 10 MB file at once, then each STOR one.
    fn multi(&self) -> Result<ScenarioResult, String> {
        let path = self.remote("zocalo-bench-10m.bin");
        let mut client = self.client().map_err(|e| e.to_string())?;
        self.ensure_file(&mut client, &path, self.opts.multi_size).map_err(|e| e.to_string())?;
        let n = self.opts.clients;
        let mut engine = self.engine()?;
        let retr_script: Rc<[Step]> = Rc::from([Step::Login, Step::Retr(path), Step::Quit]);
        let retr = closed_loop(&mut engine, n, n, |_| retr_script.clone(), self.deadline())?;
        let size = self.opts.multi_size;
        let upload = |i: usize| self.remote(&format!("zocalo-bench-up-{i}.bin"));
        let stor = closed_loop(
            &mut engine,
            n,
            n,
            |i| Rc::from([Step::Login, Step::Stor(upload(i), size), Step::Quit]),
            self.deadline(),
        )?;
        for i in 0..n {
            let _ = client.dele(&upload(i));
        }
        let _ = client.quit();
        let mut metrics = retr.metrics("retr");
        metrics.extend(stor.metrics("stor"));
        let mut notes = error_notes(&retr.outcomes);
        notes.extend(error_notes(&stor.outcomes));
        Ok(self.result("multi", metrics, notes))
    }

    /// Sessions per second at each concurrency level: connect, login, RETR 1 MiB, quit.
    fn sessions(&self) -> Result<Vec<ScenarioResult>, String> {
        let path = self.remote("zocalo-bench-1m.bin");
        let mut client = self.client().map_err(|e| e.to_string())?;
        self.ensure_file(&mut client, &path, self.opts.small_size).map_err(|e| e.to_string())?;
        let _ = client.quit();
        let script: Rc<[Step]> = Rc::from([Step::Login, Step::Retr(path), Step::Quit]);
        let mut results = Vec::new();
        for &c in &self.opts.concurrency {
            let mut engine = self.engine()?;
            let run = closed_loop(
                &mut engine,
                self.opts.sessions,
                c.max(1),
                |_| script.clone(),
                self.deadline(),
            )?;
            let ms = sorted_ms(run.outcomes.iter().filter(|o| o.ok).map(|o| o.latency));
            let metrics = vec![
                Metric::higher("sessions", rate(run.ok as f64, run.elapsed), "sessions/s"),
                Metric::lower("p50", percentile(&ms, 50.0).unwrap_or(0.0), "ms"),
                Metric::lower("p99", percentile(&ms, 99.0).unwrap_or(0.0), "ms"),
                Metric::lower("failures", (self.opts.sessions - run.ok) as f64, "sessions"),
            ];
            results.push(self.result(
                &format!("sessions-c{c}"),
                metrics,
                error_notes(&run.outcomes),
            ));
        }
        Ok(results)
    }

    /// K idle logged-in sessions: the server's memory, and how fast a fresh client is served.
    fn memory(&self) -> Result<ScenarioResult, String> {
        let pid = self.opts.server_pid;
        let before = pid.map(mem::tree_memory).transpose().map_err(|e| format!("memory: {e}"))?;
        let mut engine = self.engine()?;
        let deadline = self.deadline();
        let idle = open_idle(&mut engine, self.opts.idle, deadline)?;
        let after = pid.map(mem::tree_memory).transpose().map_err(|e| format!("memory: {e}"))?;
        let fresh: Rc<[Step]> = Rc::from([Step::Login, Step::Quit]);
        // Each phase gets its own deadline: opening K sessions may take most of the first.
        let run = closed_loop(&mut engine, FRESH_SESSIONS, 1, |_| fresh.clone(), self.deadline())?;
        engine.release_idle();
        drive(&mut engine, self.deadline(), |e| e.active() == 0).map_err(|e| e.to_string())?;
        engine.abort_all("timeout");
        let ms = sorted_ms(run.outcomes.iter().filter(|o| o.ok).map(|o| o.latency));
        let mut metrics = vec![Metric::higher("idle sessions", idle as f64, "sessions")];
        let mut notes = error_notes(&run.outcomes);
        match (before, after) {
            (Some(b), Some(a)) => metrics.extend(memory_metrics(b, a, idle)),
            _ => notes.push("no --server-pid: memory not measured".into()),
        }
        metrics.push(Metric::lower("fresh login p50", percentile(&ms, 50.0).unwrap_or(0.0), "ms"));
        metrics.push(Metric::lower("fresh login p99", percentile(&ms, 99.0).unwrap_or(0.0), "ms"));
        Ok(self.result("memory", metrics, notes))
    }

    /// LIST and MLSD of the listing directory, the median of a few runs each.
    fn listing(&self) -> Result<ScenarioResult, String> {
        let dir = self.remote("zocalo-bench-list");
        let mut client = self.client().map_err(|e| e.to_string())?;
        if self.opts.create_listing {
            self.create_listing(&mut client, &dir).map_err(|e| e.to_string())?;
        }
        let mut metrics = Vec::new();
        let mut notes = Vec::new();
        let list = time_median(|| client.list(&dir).map(|b| b.lines().count()));
        let mlsd = time_median(|| client.mlsd(&dir).map(|e| e.len()));
        for (name, result) in [("LIST", list), ("MLSD", mlsd)] {
            match result {
                Ok((ms, entries)) => {
                    metrics.push(Metric::lower(name, ms, "ms"));
                    if entries < self.opts.list_entries {
                        notes.push(format!("{name} returned {entries} entries"));
                    }
                }
                Err(e) => notes.push(format!("{name}: {e}")),
            }
        }
        let _ = client.quit();
        Ok(self.result("listing", metrics, notes))
    }

    /// Makes the listing directory and fills it with empty files, skipping existing ones.
    fn create_listing(&self, client: &mut Client, dir: &str) -> Result<(), FtpError> {
        let _ = client.mkd(dir);
        let have = client.nlst(dir).map(|v| v.len()).unwrap_or(0);
        for i in have..self.opts.list_entries {
            client.stor(&format!("{dir}/f{i:05}"), 0, &mut io::empty(), &mut |_| {})?;
        }
        Ok(())
    }
}

/// The timings of a closed loop of sessions.
struct LoopRun {
    outcomes: Vec<Outcome>,
    elapsed: Duration,
    ok: usize,
    bytes: u64,
}

impl LoopRun {
    /// Aggregate throughput, elapsed time and failures, named after `what`.
    fn metrics(&self, what: &str) -> Vec<Metric> {
        vec![
            Metric::higher(
                &format!("{what} total"),
                rate(self.bytes as f64 / MB, self.elapsed),
                "MB/s",
            ),
            Metric::lower(&format!("{what} time"), self.elapsed.as_secs_f64(), "s"),
            Metric::lower(
                &format!("{what} failures"),
                (self.outcomes.len() - self.ok) as f64,
                "sessions",
            ),
        ]
    }
}

/// Turns the engine until `done` holds (true) or the deadline passes (false).
fn drive(
    engine: &mut Engine,
    deadline: Instant,
    mut done: impl FnMut(&Engine) -> bool,
) -> io::Result<bool> {
    while !done(engine) {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        engine.turn((deadline - now).min(Duration::from_millis(100)))?;
    }
    Ok(true)
}

/// Runs `total` sessions, `concurrency` at a time (idle sessions of the engine not counted).
fn closed_loop(
    engine: &mut Engine,
    total: usize,
    concurrency: usize,
    mut script: impl FnMut(usize) -> Rc<[Step]>,
    deadline: Instant,
) -> Result<LoopRun, String> {
    let t = Instant::now();
    let mut first_id = None;
    let mut started = 0;
    let mut outcomes = Vec::new();
    while started < total || engine.active() > engine.idle() {
        while started < total && engine.active() - engine.idle() < concurrency {
            first_id.get_or_insert(engine.start(script(started)));
            started += 1;
        }
        let now = Instant::now();
        if now >= deadline {
            engine.abort_all("timeout");
            outcomes.extend(engine.take_outcomes());
            break;
        }
        engine.turn((deadline - now).min(Duration::from_millis(100))).map_err(|e| e.to_string())?;
        outcomes.extend(engine.take_outcomes());
    }
    let elapsed = t.elapsed();
    let first = first_id.unwrap_or(0);
    outcomes.retain(|o| o.id >= first);
    outcomes.extend((outcomes.len()..total).map(|_| not_started()));
    let ok = outcomes.iter().filter(|o| o.ok).count();
    let bytes = outcomes.iter().map(|o| o.bytes).sum();
    Ok(LoopRun { outcomes, elapsed, ok, bytes })
}

fn not_started() -> Outcome {
    Outcome {
        id: usize::MAX,
        ok: false,
        latency: Duration::ZERO,
        bytes: 0,
        error: Some("not started before the deadline".into()),
    }
}

/// Opens `count` sessions that log in and wait; returns how many are idle.
fn open_idle(engine: &mut Engine, count: usize, deadline: Instant) -> Result<usize, String> {
    let script: Rc<[Step]> = Rc::from([Step::Login, Step::Idle, Step::Quit]);
    let mut started = 0;
    while started < count || engine.active() > engine.idle() {
        while started < count && engine.active() - engine.idle() < RAMP {
            engine.start(script.clone());
            started += 1;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        engine.turn((deadline - now).min(Duration::from_millis(100))).map_err(|e| e.to_string())?;
    }
    Ok(engine.idle())
}

fn memory_metrics(before: mem::TreeMemory, after: mem::TreeMemory, idle: usize) -> Vec<Metric> {
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / idle.max(1) as f64;
    vec![
        Metric::lower("rss per session", per(after.rss_kib, before.rss_kib), "KiB"),
        Metric::lower("pss per session", per(after.pss_kib, before.pss_kib), "KiB"),
        Metric::lower("rss total", after.rss_kib as f64 / 1024.0, "MiB"),
        Metric::lower("pss total", after.pss_kib as f64 / 1024.0, "MiB"),
        Metric::lower("processes", after.processes as f64, "processes"),
    ]
}

/// Failed sessions among `expected` (a session never started counts as failed).
fn failures(outcomes: &[Outcome], expected: usize) -> usize {
    expected.saturating_sub(outcomes.iter().filter(|o| o.ok).count())
}

/// The first few distinct error messages, with their counts.
fn error_notes(outcomes: &[Outcome]) -> Vec<String> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for e in outcomes.iter().filter_map(|o| o.error.as_ref()) {
        match counts.iter_mut().find(|(m, _)| m == e) {
            Some((_, n)) => *n += 1,
            None => counts.push((e.clone(), 1)),
        }
    }
    counts.into_iter().take(NOTES).map(|(m, n)| format!("{n} x {m}")).collect()
}

/// Runs `f` a few times; the median time in ms and the last count.
fn time_median(mut f: impl FnMut() -> Result<usize, FtpError>) -> Result<(f64, usize), FtpError> {
    let mut times = Vec::with_capacity(LISTING_RUNS);
    let mut count = 0;
    for _ in 0..LISTING_RUNS {
        let t = Instant::now();
        count = f()?;
        times.push(t.elapsed());
    }
    let ms = sorted_ms(times);
    Ok((percentile(&ms, 50.0).unwrap_or(0.0), count))
}
