//! Directory listing formats, all in the core: LIST (`ls -l` style, the de-facto format every
//! client parses), NLST (names only, RFC 959), and MLSD/MLST facts (RFC 3659 section 7).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::storage::{DirEntry, FileKind, Metadata};

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
pub fn facts_line(out: &mut Vec<u8>, name: &str, meta: &Metadata, writable: bool, cdir: bool) {
    let kind: &[u8] = match (cdir, meta.kind) {
        (true, _) => b"cdir",
        (false, FileKind::Dir) => b"dir",
        (false, FileKind::File) => b"file",
        (false, _) => b"OS.unix=other",
    };
    out.extend_from_slice(b"type=");
    out.extend_from_slice(kind);
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
        facts_line(&mut out, "f", &meta(FileKind::File, 5, 0), false, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "type=file;size=5;modify=19700101000000;perm=r;UNIX.mode=0755; f"
        );
    }
}
