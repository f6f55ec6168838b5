//! Shared helpers of the integration tests: scratch directories, test data, and a real
//! `zocalo serve` process on a port the kernel picks.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("zocalo-client-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Bytes that differ from one position to the next, so an offset error shows.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/release/zocalo`, built once if missing.
pub fn zocalo_binary() -> PathBuf {
    static BUILD: Once = Once::new();
    let root = workspace_root();
    let bin = root.join("target/release/zocalo");
    BUILD.call_once(|| {
        if !bin.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "-p", "zocalo"])
                .current_dir(&root)
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the zocalo server failed");
        }
    });
    bin
}

/// A running `zocalo serve`, killed when dropped.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT` (or `[::1]:PORT`).
    pub authority: String,
    pub root: TempDir,
}

impl Server {
    /// Serves a fresh directory with account `u:p`, listening on `listen` (port 0).
    pub fn start(listen: &str, extra: &[&str]) -> Server {
        let root = TempDir::new("root");
        let mut child = Command::new(zocalo_binary())
            .arg("serve")
            .arg("--root")
            .arg(root.path())
            .args(["--listen", listen, "--user", "u:p", "--login-fail-delay-ms", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("zocalo starts");
        let authority = read_listening_line(&mut child);
        Server { child, authority, root }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ftp://u:p@{}{path}", self.authority)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `listening ftp://ADDR ...` on the child's stdout and returns ADDR.
fn read_listening_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next().expect("the server printed a line").expect("stdout is readable");
    let rest = line
        .strip_prefix("listening ftp://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let authority = rest.split_whitespace().next().unwrap().to_owned();
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    authority
}
