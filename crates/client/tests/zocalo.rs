//! The client and the load generator against a real `zocalo serve` on loopback.

mod common;

use std::fs;
use std::time::Duration;

use common::{pattern, Server, TempDir};
use zocalo_client::bench::{self, BenchOptions, Scenario};
use zocalo_client::ftp::{Client, ClientOptions, DataMode, FtpError};
use zocalo_client::listing::Kind;
use zocalo_client::ops::{self, exit_code, OpOptions, Progress};
use zocalo_client::FtpUrl;
use zocalo_poller::Backend;

fn opts(mode: DataMode) -> OpOptions {
    OpOptions {
        client: ClientOptions {
            mode,
            timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        },
        resume: false,
        progress: Progress::Never,
        delete: false,
    }
}

fn roundtrip(server: &Server, mode: DataMode) {
    let local = TempDir::new("local");
    let data = pattern(3 * 1024 * 1024 + 17);
    let src = local.path().join("up.bin");
    fs::write(&src, &data).unwrap();
    let sent = ops::put(&src, &server.url("/"), &opts(mode)).unwrap();
    assert_eq!(sent, data.len() as u64);
    assert_eq!(fs::read(server.root.path().join("up.bin")).unwrap(), data);
    let dest = local.path().join("down.bin");
    let got = ops::get(&server.url("/up.bin"), Some(&dest), &opts(mode)).unwrap();
    assert_eq!(got, data.len() as u64);
    assert_eq!(fs::read(&dest).unwrap(), data);
}

#[test]
fn put_then_get_passive() {
    roundtrip(&Server::start("127.0.0.1:0", &[]), DataMode::Passive);
}

#[test]
fn put_then_get_active() {
    roundtrip(&Server::start("127.0.0.1:0", &[]), DataMode::Active);
}

#[test]
fn put_then_get_over_ipv6() {
    let server = Server::start("[::1]:0", &[]);
    assert!(server.authority.starts_with("[::1]:"));
    roundtrip(&server, DataMode::Passive);
    roundtrip(&server, DataMode::Active);
}

#[test]
fn continue_resumes_both_directions() {
    let server = Server::start("127.0.0.1:0", &[]);
    let local = TempDir::new("local");
    let data = pattern(1_000_003);
    fs::write(server.root.path().join("full.bin"), &data).unwrap();
    let dest = local.path().join("full.bin");
    fs::write(&dest, &data[..400_000]).unwrap();
    let resume = OpOptions { resume: true, ..opts(DataMode::Passive) };
    let got = ops::get(&server.url("/full.bin"), Some(local.path()), &resume).unwrap();
    assert_eq!(got, 600_003, "only the missing part is fetched");
    assert_eq!(fs::read(&dest).unwrap(), data);

    fs::write(server.root.path().join("half.bin"), &data[..500_000]).unwrap();
    let src = local.path().join("half.bin");
    fs::write(&src, &data).unwrap();
    let sent = ops::put(&src, &server.url("/half.bin"), &resume).unwrap();
    assert_eq!(sent, 500_003, "only the missing part is sent");
    assert_eq!(fs::read(server.root.path().join("half.bin")).unwrap(), data);
}

#[test]
fn listings_and_size() {
    let server = Server::start("127.0.0.1:0", &[]);
    fs::create_dir(server.root.path().join("sub dir")).unwrap();
    fs::write(server.root.path().join("a.txt"), b"hello").unwrap();
    let mut out = Vec::new();
    ops::ls(&server.url("/"), &opts(DataMode::Passive), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("a.txt") && text.contains("sub dir"), "{text}");

    let url = FtpUrl::parse(&server.url("/")).unwrap();
    let mut client = Client::open(&url, &opts(DataMode::Passive).client).unwrap();
    let mut entries = client.entries("/").unwrap();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(entries.len(), 2);
    assert_eq!((entries[0].name.as_str(), entries[0].size), ("a.txt", Some(5)));
    assert_eq!((entries[1].name.as_str(), entries[1].kind), ("sub dir", Kind::Dir));
    let parsed = zocalo_client::listing::parse_list(&client.list("/").unwrap());
    assert_eq!(parsed.len(), 2, "LIST parses as well as MLSD");
    assert_eq!(client.nlst("/").unwrap().len(), 2);
    assert_eq!(client.size("/a.txt").unwrap(), 5);
    client.mkd("/new").unwrap();
    client.cwd("/new").unwrap();
    client.quit().unwrap();
    assert!(server.root.path().join("new").is_dir());
}

#[test]
fn mirror_copies_a_tree() {
    let server = Server::start("127.0.0.1:0", &[]);
    let root = server.root.path();
    fs::create_dir_all(root.join("tree/a/b")).unwrap();
    fs::write(root.join("tree/top.txt"), b"top").unwrap();
    fs::write(root.join("tree/a/b/deep.bin"), pattern(70_000)).unwrap();
    fs::create_dir(root.join("tree/empty")).unwrap();
    let local = TempDir::new("mirror");
    let summary =
        ops::mirror(&server.url("/tree"), local.path(), &opts(DataMode::Passive)).unwrap();
    assert_eq!((summary.files, summary.dirs, summary.bytes), (2, 4, 70_003));
    assert_eq!(fs::read(local.path().join("top.txt")).unwrap(), b"top");
    assert_eq!(fs::read(local.path().join("a/b/deep.bin")).unwrap(), pattern(70_000));
    assert!(local.path().join("empty").is_dir());
    let resume = OpOptions { resume: true, ..opts(DataMode::Passive) };
    let again = ops::mirror(&server.url("/tree"), local.path(), &resume).unwrap();
    assert_eq!((again.files, again.skipped), (0, 2));
}

#[test]
fn failures_map_to_exit_codes_with_the_reply_text() {
    let server = Server::start("127.0.0.1:0", &["--no-anonymous"]);
    let o = opts(DataMode::Passive);
    let local = TempDir::new("errs");
    let dest = local.path().join("x");

    let bad_login = format!("ftp://u:wrong@{}/x", server.authority);
    let err = ops::get(&bad_login, Some(&dest), &o).unwrap_err();
    assert_eq!(exit_code(&err), 4, "{err}");
    assert!(err.to_string().contains("530"), "{err}");

    let err = ops::get(&server.url("/missing.txt"), Some(&dest), &o).unwrap_err();
    assert_eq!(exit_code(&err), 5, "{err}");
    assert!(err.to_string().contains("550"), "{err}");

    let err = ops::get("ftp://127.0.0.1:1/x", Some(&dest), &o).unwrap_err();
    assert_eq!(exit_code(&err), 3, "{err}");

    let err = ops::get("http://host/x", None, &o).unwrap_err();
    assert_eq!(exit_code(&err), 2, "{err}");

    fs::write(server.root.path().join("ok.txt"), b"ok").unwrap();
    let unwritable = local.path().join("no/such/dir/file");
    let err = ops::get(&server.url("/ok.txt"), Some(&unwritable), &o).unwrap_err();
    assert_eq!(exit_code(&err), 7, "{err}");
}

#[test]
fn login_refusal_is_a_typed_error() {
    let server = Server::start("127.0.0.1:0", &["--no-anonymous"]);
    let url = FtpUrl::parse(&format!("ftp://{}/", server.authority)).unwrap();
    match Client::open(&url, &ClientOptions::default()) {
        Err(FtpError::Login(reply)) => assert_eq!(reply.code, 530),
        other => panic!("anonymous login should be refused, got {:?}", other.err()),
    }
}

fn small_bench(server: &Server, scenarios: Vec<Scenario>, backend: Backend) -> BenchOptions {
    BenchOptions {
        scenarios,
        label: Some("zocalo-test".into()),
        clients: 12,
        concurrency: vec![1, 8],
        sessions: 40,
        idle: 30,
        big_size: 2_000_000,
        multi_size: 300_000,
        small_size: 100_000,
        list_entries: 120,
        create_listing: true,
        server_pid: Some(server.pid()),
        timeout: Duration::from_secs(60),
        backend,
        ..BenchOptions::default()
    }
}

fn metric(results: &[bench::stats::ScenarioResult], scenario: &str, name: &str) -> f64 {
    let r = results
        .iter()
        .find(|r| r.scenario == scenario)
        .unwrap_or_else(|| panic!("no {scenario} in {results:?}"));
    r.metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no {name} in {r:?}")).value
}

#[test]
fn bench_runs_every_scenario_without_failures() {
    let server = Server::start("127.0.0.1:0", &[]);
    let report = TempDir::new("report");
    let mut options = small_bench(&server, Vec::new(), Backend::Epoll);
    options.report = Some(report.path().to_owned());
    options.json = true;
    let mut out = Vec::new();
    let results = bench::run(&server.url("/"), &options, &mut out).unwrap();
    let all_notes: Vec<&String> = results.iter().flat_map(|r| &r.notes).collect();
    assert!(all_notes.is_empty(), "{all_notes:?}");
    assert!(metric(&results, "transfer", "retr") > 0.0);
    assert!(metric(&results, "transfer", "stor") > 0.0);
    assert_eq!(metric(&results, "logins", "failures"), 0.0);
    assert!(metric(&results, "logins", "quits") > 0.0);
    assert_eq!(metric(&results, "idle-transfer", "idle sessions"), 12.0);
    assert_eq!(metric(&results, "multi", "retr failures"), 0.0);
    assert_eq!(metric(&results, "multi", "stor failures"), 0.0);
    assert_eq!(metric(&results, "sessions-c8", "failures"), 0.0);
    assert!(metric(&results, "sessions-c8", "p99") >= metric(&results, "sessions-c8", "p50"));
    assert_eq!(metric(&results, "memory", "idle sessions"), 30.0);
    assert!(metric(&results, "memory", "rss total") > 0.0);
    assert!(metric(&results, "listing", "MLSD") > 0.0);
    assert_eq!(fs::read_dir(server.root.path().join("zocalo-bench-list")).unwrap().count(), 120);
    // Uploaded copies of `multi` are cleaned up; the fixtures stay.
    assert!(!server.root.path().join("zocalo-bench-up-0.bin").exists());
    assert_eq!(
        fs::metadata(server.root.path().join("zocalo-bench-1m.bin")).unwrap().len(),
        100_000
    );
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), results.len(), "one JSON line per result");
    for scenario in ["transfer", "logins", "sessions-c8", "memory", "listing"] {
        let svg = fs::read_to_string(report.path().join(format!("{scenario}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
    assert!(fs::read_to_string(report.path().join("results.md")).unwrap().contains("zocalo-test"));
}

#[test]
fn load_generator_works_on_select_and_poll() {
    let server = Server::start("127.0.0.1:0", &[]);
    for backend in [Backend::Select, Backend::Poll] {
        let options = small_bench(&server, vec![Scenario::Sessions, Scenario::Logins], backend);
        let results = bench::run(&server.url("/"), &options, &mut Vec::new()).unwrap();
        assert_eq!(metric(&results, "sessions-c8", "failures"), 0.0, "{backend}");
        assert_eq!(metric(&results, "logins", "failures"), 0.0, "{backend}");
    }
}

#[test]
fn bench_reports_failures_instead_of_hanging() {
    // The iterative model serves one session at a time: 8 concurrent sessions that each hold
    // their connection while others wait must still finish (in turn), never deadlock the bench.
    let server = Server::start("127.0.0.1:0", &["--model", "iterative"]);
    let mut options = small_bench(&server, vec![Scenario::Sessions], Backend::Epoll);
    options.concurrency = vec![4];
    options.sessions = 12;
    let results = bench::run(&server.url("/"), &options, &mut Vec::new()).unwrap();
    assert_eq!(metric(&results, "sessions-c4", "failures"), 0.0);
}

#[test]
fn bench_reports_a_refusal_with_the_servers_reason() {
    // Past --max-connections the server answers 421 and closes at once; the generator must
    // read the 421 before it notices the close, and report the server's words.
    let server = Server::start("127.0.0.1:0", &["--max-connections", "2"]);
    let mut options = small_bench(&server, vec![Scenario::Memory], Backend::Epoll);
    options.idle = 6;
    let results = bench::run(&server.url("/"), &options, &mut Vec::new()).unwrap();
    let notes: Vec<&String> = results.iter().flat_map(|r| &r.notes).collect();
    assert!(!notes.is_empty(), "4 of 6 idle sessions are over the limit: {results:?}");
    for note in &notes {
        assert!(note.contains("421"), "{note}");
        assert!(!note.contains("server closed"), "{note}");
    }
}

#[test]
fn fairness_reports_noop_latencies_for_each_phase() {
    let server = Server::start("127.0.0.1:0", &[]);
    let mut options = small_bench(&server, vec![Scenario::Fairness], Backend::Epoll);
    options.fairness_sessions = 3;
    options.slow_login = Some(("u".into(), "p".into()));
    let results = bench::run(&server.url("/"), &options, &mut Vec::new()).unwrap();
    let notes: Vec<&String> = results.iter().flat_map(|r| &r.notes).collect();
    assert!(notes.is_empty(), "{notes:?}");
    for phase in ["idle", "logins", "LIST", "MLSD", "STOR"] {
        let (p50, max) = (format!("{phase} NOOP p50"), format!("{phase} NOOP max"));
        assert!(metric(&results, "fairness", &max) >= metric(&results, "fairness", &p50));
    }
    assert!(!server.root.path().join("zocalo-bench-fair.bin").exists(), "STOR file left behind");
}
