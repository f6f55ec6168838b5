//! Interoperability with TFTP clients nobody here wrote: tftp-hpa's `tftp` and `atftp`
//! (Debian packages `tftp-hpa` and `atftp`), run against the server on 127.0.0.1, port 0.
//!
//! Every test runs against a threaded model and against the event loop ([`Model::Event`]).
//! The server socket is bound before a client starts, so no test waits for readiness.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use zocalo_tftp::{serve, Backend, DirStorage, Model, ServerConfig};

const SELECT: Model = Model::Event(Backend::Select);
const POLL: Model = Model::Event(Backend::Poll);
const EPOLL: Model = Model::Event(Backend::Epoll);

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

struct Fixture {
    addr: SocketAddr,
    root: PathBuf,
    local: PathBuf,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Fixture {
    fn start(model: Model) -> Fixture {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("zocalo-tftp-io-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (root, local) = (base.join("root"), base.join("local"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&local).unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let storage = Arc::new(DirStorage::new(&root).unwrap());
        let config = ServerConfig { write_allowed: true, ..ServerConfig::default() };
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&shutdown);
        let thread = std::thread::spawn(move || serve(socket, storage, config, model, &flag));
        Fixture { addr, root, local, shutdown, thread: Some(thread) }
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Runs a client command in the local directory; returns its combined output.
    fn run(&self, program: &str, args: &[&str]) -> (bool, String) {
        require(program);
        let output = Command::new(program)
            .args(args)
            .current_dir(&self.local)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }

    /// tftp-hpa, one command, in `mode` ("binary" or "ascii").
    fn tftp(&self, mode: &str, command: &str) -> String {
        let port = self.port();
        let args = ["-m", mode, "127.0.0.1", &port, "-c"];
        let args: Vec<&str> = args.into_iter().chain(command.split(' ')).collect();
        let (ok, text) = self.run("tftp", &args);
        assert!(ok, "tftp {command} failed: {text}");
        text
    }

    /// atftp with `options` ("name value" each).
    fn atftp(&self, args: &[&str], options: &[&str]) -> (bool, String) {
        let port = self.port();
        let mut all: Vec<&str> = Vec::new();
        for option in options {
            all.extend(["--option", option]);
        }
        all.extend(args);
        all.extend(["127.0.0.1", &port]);
        self.run("atftp", &all)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !std::thread::panicking() {
                result.expect("server thread panicked").expect("serve failed");
            }
        }
        if let Some(base) = self.root.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    assert!(found, "{program} is not installed: apt-get install -y tftp-hpa atftp");
}

/// FNV-1a, 64 bits: a checksum with no dependency.
fn checksum(path: &Path) -> (u64, u64) {
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let hash = bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (bytes.len() as u64, hash)
}

fn write_pattern(path: &Path, len: usize, seed: u64) {
    let mut state = seed | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn tftp_hpa_get_and_put() {
    for model in [Model::Thread, SELECT, POLL, EPOLL] {
        tftp_hpa_get_and_put_on(model);
    }
}

fn tftp_hpa_get_and_put_on(model: Model) {
    let fx = Fixture::start(model);
    write_pattern(&fx.root.join("down.bin"), 300_000, 1);
    fx.tftp("binary", "get down.bin got.bin");
    assert_eq!(checksum(&fx.local.join("got.bin")), checksum(&fx.root.join("down.bin")));

    write_pattern(&fx.local.join("up.bin"), 123_457, 2);
    fx.tftp("binary", "put up.bin /sub-less-up.bin");
    assert_eq!(checksum(&fx.root.join("sub-less-up.bin")), checksum(&fx.local.join("up.bin")));
}

#[test]
fn tftp_hpa_ascii_mode() {
    for model in [Model::Iterative, SELECT] {
        tftp_hpa_ascii_mode_on(model);
    }
}

fn tftp_hpa_ascii_mode_on(model: Model) {
    let fx = Fixture::start(model);
    let text = "alpha\nbeta gamma\n\ndelta\n".repeat(500);
    std::fs::write(fx.root.join("notes.txt"), &text).unwrap();
    fx.tftp("ascii", "get notes.txt notes.txt");
    assert_eq!(std::fs::read_to_string(fx.local.join("notes.txt")).unwrap(), text);
    fx.tftp("ascii", "put notes.txt back.txt");
    assert_eq!(std::fs::read_to_string(fx.root.join("back.txt")).unwrap(), text);
}

#[test]
fn tftp_hpa_reports_missing_file() {
    for model in [Model::Pool(2), POLL] {
        tftp_hpa_reports_missing_file_on(model);
    }
}

fn tftp_hpa_reports_missing_file_on(model: Model) {
    let fx = Fixture::start(model);
    let port = fx.port();
    let (_, text) = fx.run("tftp", &["127.0.0.1", &port, "-c", "get", "nothing", "x"]);
    assert!(text.contains("Error code 1"), "{text}");
}

/// 40 MiB at blksize 512 is 81,920 blocks: block numbers wrap past 65535 in both directions.
#[test]
fn tftp_hpa_rolls_over_block_numbers() {
    for model in [Model::Thread, EPOLL] {
        tftp_hpa_rolls_over_block_numbers_on(model);
    }
}

fn tftp_hpa_rolls_over_block_numbers_on(model: Model) {
    let fx = Fixture::start(model);
    write_pattern(&fx.root.join("big.bin"), 40 << 20, 3);
    fx.tftp("binary", "get big.bin big.bin");
    assert_eq!(checksum(&fx.local.join("big.bin")), checksum(&fx.root.join("big.bin")));
    fx.tftp("binary", "put big.bin big-up.bin");
    assert_eq!(checksum(&fx.root.join("big-up.bin")), checksum(&fx.local.join("big.bin")));
}

#[test]
fn atftp_get_and_put_with_options() {
    for model in [Model::Pool(2), SELECT, POLL, EPOLL] {
        atftp_get_and_put_with_options_on(model);
    }
}

fn atftp_get_and_put_with_options_on(model: Model) {
    let fx = Fixture::start(model);
    write_pattern(&fx.root.join("a.bin"), 1_000_001, 4);
    write_pattern(&fx.local.join("b.bin"), 777_777, 5);
    let option_sets: [&[&str]; 3] =
        [&[], &["blksize 1428", "tsize 0"], &["blksize 8192", "windowsize 8", "timeout 2"]];
    for (i, options) in option_sets.into_iter().enumerate() {
        let got = format!("got{i}.bin");
        let (ok, text) = fx.atftp(&["-g", "-r", "a.bin", "-l", &got], options);
        assert!(ok, "atftp get {options:?}: {text}");
        assert_eq!(checksum(&fx.local.join(&got)), checksum(&fx.root.join("a.bin")));

        let put = format!("put{i}.bin");
        let (ok, text) = fx.atftp(&["-p", "-l", "b.bin", "-r", &put], options);
        assert!(ok, "atftp put {options:?}: {text}");
        assert_eq!(checksum(&fx.root.join(&put)), checksum(&fx.local.join("b.bin")));
    }
}

#[test]
fn atftp_windowsize_negotiated() {
    for model in [Model::Thread, EPOLL] {
        atftp_windowsize_negotiated_on(model);
    }
}

fn atftp_windowsize_negotiated_on(model: Model) {
    let fx = Fixture::start(model);
    write_pattern(&fx.root.join("w.bin"), 500_000, 6);
    let options = ["windowsize 16", "blksize 1024"];
    let (ok, text) = fx.atftp(&["--trace", "-g", "-r", "w.bin", "-l", "w.bin"], &options);
    assert!(ok, "{text}");
    eprintln!("{}", &text[..text.len().min(1500)]);
    assert!(text.contains("windowsize") && text.contains("16"), "OACK not reported: {text}");
    assert_eq!(checksum(&fx.local.join("w.bin")), checksum(&fx.root.join("w.bin")));
}

/// A windowed transfer past rollover: 40 MiB at blksize 512, window 16.
#[test]
fn atftp_windowed_rollover() {
    for model in [Model::Iterative, EPOLL] {
        atftp_windowed_rollover_on(model);
    }
}

fn atftp_windowed_rollover_on(model: Model) {
    let fx = Fixture::start(model);
    write_pattern(&fx.root.join("big.bin"), 40 << 20, 7);
    let options = ["blksize 512", "windowsize 16"];
    let (ok, text) = fx.atftp(&["-g", "-r", "big.bin", "-l", "big.bin"], &options);
    assert!(ok, "{text}");
    assert_eq!(checksum(&fx.local.join("big.bin")), checksum(&fx.root.join("big.bin")));
}

#[test]
fn atftp_refused_write_and_missing_file() {
    for model in [Model::Thread, SELECT] {
        atftp_refused_write_and_missing_file_on(model);
    }
}

fn atftp_refused_write_and_missing_file_on(model: Model) {
    let fx = Fixture::start(model);
    let (ok, text) = fx.atftp(&["-g", "-r", "missing", "-l", "m"], &[]);
    assert!(!ok && text.contains("error received from server"), "missing file: {text}");
    std::fs::write(fx.local.join("x"), b"x").unwrap();
    let (ok, text) = fx.atftp(&["-p", "-l", "x", "-r", "../escape"], &[]);
    assert!(!ok && text.contains("error received from server"), "escaping name: {text}");
    assert!(!fx.root.parent().unwrap().join("escape").exists());
}
