//! Where log lines go: standard error, or `--log-file FILE`, opened with O_APPEND and reopened
//! after a reload (SIGHUP or `zocalo ctl reload`, what logrotate's postrotate sends).
//!
//! A reload bumps a generation counter in the shared metrics table; a log file (and the
//! xferlog, through [`Reopening`]) compares it before each write and reopens its path when it
//! moved on. So the `process` model's children, forked before the reload, move to the new file
//! too, with no signal of their own.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// A file appended to, reopened by path when the reload generation changes.
pub struct Reopening {
    path: PathBuf,
    state: Mutex<(File, u64)>,
}

impl Reopening {
    pub fn open(path: &Path) -> io::Result<Reopening> {
        let file = append(path)?;
        let generation = crate::ops::metrics::reload_generation();
        Ok(Reopening { path: path.to_path_buf(), state: Mutex::new((file, generation)) })
    }

    /// Appends `bytes` in one write(2), after reopening the file if a reload happened.
    pub fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::ops::metrics::reload_generation();
        if state.1 != now {
            state.1 = now;
            // A file that cannot be reopened keeps the old one: a line is never lost.
            if let Ok(file) = append(&self.path) {
                state.0 = file;
            }
        }
        (&state.0).write_all(bytes)
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// A warning that a flood would repeat once per event (a refused connection, a dropped hook
/// event, a failed accept): said at most once per `every`, and then with how many were held
/// back since the last one said.
pub struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Throttle {
        Throttle { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(held back)` when this one may be said; `None` when it is held back.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(said) if now.duration_since(said) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                state.0 = Some(now);
                Some(std::mem::take(&mut state.1))
            }
        }
    }
}

static LOG_FILE: OnceLock<Reopening> = OnceLock::new();

/// Sets up logging for `serve`: text or JSON lines, to `file` or standard error. The level
/// comes from ZOCALO_LOG (default `info`).
pub fn init(json: bool, file: Option<&Path>) -> io::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ZOCALO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    let target = match file {
        Some(path) => {
            let _ = LOG_FILE.set(Reopening::open(path)?);
            Target::File
        }
        None => Target::Stderr,
    };
    let ansi = file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    let builder = builder.with_writer(target);
    match json {
        true => builder.json().init(),
        false => builder.init(),
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Target {
    Stderr,
    File,
}

/// One log line's writer.
pub enum LineWriter {
    Stderr(io::Stderr),
    File(&'static Reopening),
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            LineWriter::Stderr(e) => e.write(buf),
            LineWriter::File(f) => f.write_all(buf).map(|()| buf.len()),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            LineWriter::Stderr(e) => e.write_all(buf),
            LineWriter::File(f) => f.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Target {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        match (self, LOG_FILE.get()) {
            (Target::File, Some(file)) => LineWriter::File(file),
            _ => LineWriter::Stderr(io::stderr()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_says_one_line_a_second_with_the_count() {
        let every = Duration::from_secs(1);
        let throttle = Throttle::new(every);
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!((0..5).filter_map(|_| throttle.allow()).count(), 0);
        throttle.state.lock().unwrap().0 = Some(Instant::now() - every);
        assert_eq!(throttle.allow(), Some(5));
    }
}
