//! Directory listing formats, all in the core: LIST (`ls -l` style, the de-facto format every
//! client parses), NLST (names only, RFC 959), and MLSD/MLST facts (RFC 3659 section 7).

use std::io::{self, Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::storage::{DirEntry, DirStream, FileHandle, FileKind, Metadata};

const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const SIX_MONTHS: i64 = 182 * 24 * 3600;

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Converts seconds since the epoch to a UTC civil time (Howard Hinnant's days-to-civil).
pub fn civil(t: SystemTime) -> Civil {
    let secs = unix_seconds(t);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hour, minute, second) = ((rem / 3600) as u32, (rem % 3600 / 60) as u32, (rem % 60) as u32);
    Civil { year, month, day, hour, minute, second }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's days-from-civil), the inverse of
/// [`civil`].
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A UTC civil time as a [`SystemTime`]: `None` when a field is out of range or the time is
/// before 1970 (the inverse of [`civil`]).
pub fn from_civil(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
) -> Option<SystemTime> {
    let valid = (1..=12).contains(&month) && (1..=31).contains(&day) && hour < 24;
    if !valid || minute > 59 || second > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let secs = days * 86_400 + u64::from(hour * 3600 + minute * 60 + second);
    UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

/// Parses a time-val, `YYYYMMDDHHMMSS` with an optional `.sss` that is ignored (MDTM's answer,
/// MLSx `modify`, MFMT's argument).
pub fn parse_time_val(text: &str) -> Option<SystemTime> {
    let digits = text.get(..14)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |a: usize, b: usize| digits[a..b].parse::<u32>().ok();
    from_civil(i64::from(n(0, 4)?), n(4, 6)?, n(6, 8)?, n(8, 10)?, n(10, 12)?, n(12, 14)?)
}

/// `YYYYMMDDHHMMSS`, the time-val of MDTM and MLSx `modify` (RFC 3659 section 2.3).
pub fn time_val(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(14);
    push_time_val(&mut out, t);
    String::from_utf8(out).expect("digits are ASCII")
}

fn push_time_val(out: &mut Vec<u8>, t: SystemTime) {
    let c = civil(t);
    push_num(out, c.year.clamp(0, 9999) as u64, 4, b'0');
    for part in [c.month, c.day, c.hour, c.minute, c.second] {
        push_num(out, u64::from(part), 2, b'0');
    }
}

/// Appends `n` in decimal, right-aligned in `width` with `pad` (the listing's hot path: no
/// `core::fmt`).
fn push_num(out: &mut Vec<u8>, mut n: u64, width: usize, pad: u8) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    out.extend(std::iter::repeat_n(pad, width.saturating_sub(len)));
    out.extend_from_slice(&digits[i..]);
}

fn type_char(kind: FileKind) -> char {
    match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::File => '-',
        FileKind::Other => '?',
    }
}

fn perms(mode: u32) -> [u8; 9] {
    let mut out = *b"rwxrwxrwx";
    for (i, c) in out.iter_mut().enumerate() {
        if mode & (0o400 >> i) == 0 {
            *c = b'-';
        }
    }
    out
}

/// One `ls -l` line: `drwxr-xr-x 1 ftp ftp 4096 Nov 25 10:05 name`, with the year instead of the
/// time for entries more than six months from `now`.
pub fn list_line(out: &mut Vec<u8>, name: &str, meta: &Metadata, now: SystemTime) {
    let c = civil(meta.modified);
    let month = MONTHS[(c.month as usize).saturating_sub(1) % 12];
    let age = unix_seconds(now) - unix_seconds(meta.modified);
    out.push(type_char(meta.kind) as u8);
    out.extend_from_slice(&perms(meta.mode));
    out.push(b' ');
    push_num(out, meta.nlink, 3, b' ');
    out.extend_from_slice(b" ftp      ftp      ");
    push_num(out, meta.size, 12, b' ');
    out.push(b' ');
    out.extend_from_slice(month.as_bytes());
    out.push(b' ');
    push_num(out, u64::from(c.day), 2, b' ');
    out.push(b' ');
    if (0..SIX_MONTHS).contains(&age) || (age < 0 && age > -3600) {
        push_num(out, u64::from(c.hour), 2, b'0');
        out.push(b':');
        push_num(out, u64::from(c.minute), 2, b'0');
    } else {
        out.push(b' ');
        push_num(out, c.year.clamp(0, 9999) as u64, 4, b'0');
    }
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The facts of one MLSD/MLST entry, then a space and the name (RFC 3659 section 7.2).
/// A symbolic link with a known target is `type=OS.unix=slink:TARGET` (RFC 3659 section 7.5.2).
pub fn facts_line(
    out: &mut Vec<u8>,
    name: &str,
    meta: &Metadata,
    link: Option<&str>,
    writable: bool,
    cdir: bool,
) {
    out.extend_from_slice(b"type=");
    match (cdir, meta.kind, link) {
        (true, _, _) => out.extend_from_slice(b"cdir"),
        (false, FileKind::Dir, _) => out.extend_from_slice(b"dir"),
        (false, FileKind::File, _) => out.extend_from_slice(b"file"),
        (false, FileKind::Symlink, Some(target)) => {
            // A `;` in the target would end the fact early: it is left out.
            out.extend_from_slice(b"OS.unix=slink:");
            out.extend(target.bytes().filter(|b| *b != b';' && *b != b'\r' && *b != b'\n'));
        }
        (false, _, _) => out.extend_from_slice(b"OS.unix=other"),
    }
    out.push(b';');
    if meta.kind == FileKind::File {
        out.extend_from_slice(b"size=");
        push_num(out, meta.size, 0, b'0');
        out.push(b';');
    }
    out.extend_from_slice(b"modify=");
    push_time_val(out, meta.modified);
    out.extend_from_slice(b";perm=");
    out.extend_from_slice(perm_fact(meta.kind, writable).as_bytes());
    let _ = write!(out, ";UNIX.mode=0{:o}; ", meta.mode & 0o7777);
    out.extend_from_slice(name.as_bytes());
}

fn perm_fact(kind: FileKind, writable: bool) -> &'static str {
    match (kind, writable) {
        (FileKind::Dir, true) => "elcmfpd",
        (FileKind::Dir, false) => "el",
        (_, true) => "rwadf",
        (_, false) => "r",
    }
}

/// Sorts entries by name, as `ls` does, so that listings are stable.
pub fn sort(entries: &mut [DirEntry]) {
    entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
}

/// Which listing a [`Listing`] produces.
#[derive(Debug, Clone)]
pub enum Format {
    /// LIST: `ls -l` lines, with dates relative to `now`.
    Long { now: SystemTime },
    /// NLST: names, each after `prefix` (the argument's directory, as the client gave it).
    Names { prefix: String },
    /// MLSD: facts lines.
    Facts { writable: bool },
}

/// Entries of a directory that are listed sorted by name: up to this many are read before the
/// first line goes out. A larger directory is listed in the storage's own order (the order of
/// readdir(3) on a disk, key order on S3), so a listing of any size holds at most this many
/// entries and one chunk of lines in memory.
pub const SORTED_MAX: usize = 2048;

/// Entries read from the storage per refill.
const BATCH: usize = 256;

/// Names a wildcard listing gives at most (`NLST *.bin` in a huge directory).
pub const MAX_MATCHES: usize = 10_000;

/// A directory listing produced as it is read: a batch of entries at a time is formatted into
/// lines when the data connection wants more bytes. It is a read-only [`FileHandle`], so a
/// driver pumps it like a file without a descriptor, and each read may call the storage.
pub struct Listing {
    dir: Box<dyn DirStream>,
    format: Format,
    lines: Vec<u8>,
    pos: usize,
    /// Entries read ahead to be sorted, before the first line.
    started: bool,
    exhausted: bool,
    /// A wildcard pattern the names must match (`NLST *.bin`), and how many more may.
    pattern: Option<(crate::path::Glob, usize)>,
    /// Leave out names that start with `.` (LIST without `-a`, as `ls` does).
    hide_dot_files: bool,
}

impl Listing {
    pub fn new(dir: Box<dyn DirStream>, format: Format) -> Listing {
        let (lines, pos) = (Vec::new(), 0);
        let (started, exhausted) = (false, false);
        let (pattern, hide_dot_files) = (None, false);
        Listing { dir, format, lines, pos, started, exhausted, pattern, hide_dot_files }
    }

    /// Leaves out names that start with `.`.
    pub fn without_dot_files(mut self) -> Listing {
        self.hide_dot_files = true;
        self
    }

    /// Lists only the names that match `pattern`, at most [`MAX_MATCHES`] of them.
    pub fn matching(mut self, pattern: crate::path::Glob) -> Listing {
        self.pattern = Some((pattern, MAX_MATCHES));
        self
    }

    /// The next batch, filtered by the pattern (possibly empty while the directory is not).
    fn next_batch(&mut self) -> io::Result<Option<Vec<DirEntry>>> {
        let mut batch = self.dir.next_batch(BATCH)?;
        if batch.is_empty() {
            return Ok(None);
        }
        if self.hide_dot_files {
            batch.retain(|e| !e.name.starts_with('.'));
        }
        if let Some((pattern, left)) = &mut self.pattern {
            batch.retain(|e| pattern.matches(&e.name));
            batch.truncate(*left);
            *left -= batch.len();
            if *left == 0 {
                self.exhausted = true;
            }
        }
        Ok(Some(batch))
    }

    /// Formats the next lines into `self.lines`; false at the end of the directory.
    fn refill(&mut self) -> io::Result<bool> {
        self.lines.clear();
        self.pos = 0;
        if self.exhausted {
            return Ok(false);
        }
        let mut entries = Vec::new();
        if !self.started {
            self.started = true;
            while entries.len() < SORTED_MAX && !self.exhausted {
                match self.next_batch()? {
                    Some(batch) => entries.extend(batch),
                    None => self.exhausted = true,
                }
            }
            if self.exhausted {
                sort(&mut entries);
            }
        } else {
            // Batches that match nothing are skipped; the end of the directory ends it.
            while entries.is_empty() && !self.exhausted {
                match self.next_batch()? {
                    Some(batch) => entries = batch,
                    None => self.exhausted = true,
                }
            }
        }
        for e in &entries {
            self.push_line(e);
        }
        Ok(!entries.is_empty())
    }

    fn push_line(&mut self, e: &DirEntry) {
        match &self.format {
            Format::Long { now } => match &e.link {
                Some(target) if e.meta.kind == FileKind::Symlink => {
                    let shown = format!("{} -> {target}", e.name);
                    list_line(&mut self.lines, &shown, &e.meta, *now)
                }
                _ => list_line(&mut self.lines, &e.name, &e.meta, *now),
            },
            Format::Names { prefix } => {
                self.lines.extend_from_slice(prefix.as_bytes());
                self.lines.extend_from_slice(e.name.as_bytes());
                self.lines.extend_from_slice(b"\r\n");
            }
            Format::Facts { writable } => {
                let link = e.link.as_deref();
                facts_line(&mut self.lines, &e.name, &e.meta, link, *writable, false);
                self.lines.extend_from_slice(b"\r\n");
            }
        }
    }
}

impl Read for Listing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.lines.len() {
            if !self.refill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.lines.len() - self.pos);
        buf[..n].copy_from_slice(&self.lines[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Listing {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FileHandle for Listing {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn civil_dates() {
        let c = civil(at(0));
        assert_eq!((c.year, c.month, c.day, c.hour), (1970, 1, 1, 0));
        let c = civil(at(951_782_400)); // 2000-02-29
        assert_eq!((c.year, c.month, c.day), (2000, 2, 29));
        assert_eq!(time_val(at(1_764_064_800)), "20251125100000");
    }

    fn meta(kind: FileKind, size: u64, t: u64) -> Metadata {
        Metadata { kind, size, modified: at(t), mode: 0o755, nlink: 2 }
    }

    #[test]
    fn list_line_recent_and_old() {
        let mut out = Vec::new();
        list_line(&mut out, "d", &meta(FileKind::Dir, 0, 1_764_064_800), at(1_764_064_900));
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("drwxr-xr-x   2 ftp"), "{line}");
        assert!(line.ends_with("Nov 25 10:00 d\r\n"), "{line}");
        let mut out = Vec::new();
        list_line(&mut out, "f", &meta(FileKind::File, 5, 0), at(1_764_064_900));
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with("Jan  1  1970 f\r\n"), "{line}");
    }

    #[test]
    fn wide_numbers_and_years() {
        let mut out = Vec::new();
        let big = Metadata { nlink: 12_345, ..meta(FileKind::File, 123_456_789_012_345, 0) };
        list_line(&mut out, "big", &big, at(1_764_064_900));
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line, "-rwxr-xr-x 12345 ftp      ftp      123456789012345 Jan  1  1970 big\r\n");
        let mut out = Vec::new();
        list_line(&mut out, "x", &meta(FileKind::Other, 0, 1_764_064_800), at(1_764_064_800));
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line, "?rwxr-xr-x   2 ftp      ftp                 0 Nov 25 10:00 x\r\n");
        assert_eq!(time_val(at(253_402_300_799)), "99991231235959");
    }

    #[test]
    fn facts() {
        let mut out = Vec::new();
        facts_line(&mut out, "f", &meta(FileKind::File, 5, 0), None, false, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "type=file;size=5;modify=19700101000000;perm=r;UNIX.mode=0755; f"
        );
        let mut out = Vec::new();
        let link = meta(FileKind::Symlink, 9, 0);
        facts_line(&mut out, "l", &link, Some("../a;b/c"), true, false);
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("type=OS.unix=slink:../ab/c;modify="), "{line}");
    }

    #[test]
    fn days_from_civil_inverts_civil() {
        for secs in [0u64, 951_782_400, 1_577_836_800, 4_102_444_800] {
            let c = civil(at(secs));
            let days = days_from_civil(c.year, c.month, c.day);
            assert_eq!(days * 86_400, secs as i64 - (secs as i64).rem_euclid(86_400));
        }
    }

    /// A directory of `n` entries, counting how many were read.
    struct Counted {
        next: usize,
        n: usize,
        read: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl DirStream for Counted {
        fn next_batch(&mut self, max: usize) -> io::Result<Vec<DirEntry>> {
            let end = (self.next + max).min(self.n);
            // Names in descending order, so sorting shows.
            let batch: Vec<DirEntry> = (self.next..end)
                .map(|i| DirEntry {
                    name: format!("f{:07}", self.n - i),
                    meta: Metadata::unknown(),
                    link: None,
                })
                .collect();
            self.read.fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed);
            self.next = end;
            Ok(batch)
        }
    }

    fn counted(n: usize) -> (Listing, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let dir = Counted { next: 0, n, read: read.clone() };
        (Listing::new(Box::new(dir), Format::Names { prefix: String::new() }), read)
    }

    #[test]
    fn a_small_directory_is_listed_sorted() {
        let (mut listing, _) = counted(1000);
        let mut text = String::new();
        listing.read_to_string(&mut text).unwrap();
        let names: Vec<&str> = text.lines().collect();
        assert_eq!(names.len(), 1000);
        assert!(names.windows(2).all(|w| w[0] < w[1]), "not sorted");
    }

    #[test]
    fn a_large_directory_streams_a_batch_at_a_time() {
        let (mut listing, read) = counted(1_000_000);
        let mut buf = [0u8; 4096];
        assert!(listing.read(&mut buf).unwrap() > 0);
        let pulled = read.load(std::sync::atomic::Ordering::Relaxed);
        assert!(pulled <= SORTED_MAX + BATCH, "{pulled} entries read for the first 4 KiB");
        let mut total = buf.len() as u64;
        let mut lines = 0;
        loop {
            let n = listing.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
            assert!(listing.lines.capacity() < 64 * 1024, "lines buffer grew");
        }
        assert!(total > 0 && lines > 990_000, "{lines} lines");
    }
}
