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
    let c = civil(t);
    format!("{:04}{:02}{:02}{:02}{:02}{:02}", c.year, c.month, c.day, c.hour, c.minute, c.second)
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
    let _ = write!(out, "{}", type_char(meta.kind));
    out.extend_from_slice(&perms(meta.mode));
    let _ =
        write!(out, " {:>3} ftp      ftp      {:>12} {month} {:>2} ", meta.nlink, meta.size, c.day);
    let _ = if (0..SIX_MONTHS).contains(&age) || (age < 0 && age > -3600) {
        write!(out, "{:02}:{:02} ", c.hour, c.minute)
    } else {
        write!(out, " {:04} ", c.year)
    };
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The facts of one MLSD/MLST entry, then a space and the name (RFC 3659 section 7.2).
pub fn facts_line(out: &mut Vec<u8>, name: &str, meta: &Metadata, writable: bool, cdir: bool) {
    let kind = match (cdir, meta.kind) {
        (true, _) => "cdir",
        (false, FileKind::Dir) => "dir",
        (false, FileKind::File) => "file",
        (false, _) => "OS.unix=other",
    };
    let _ = write!(out, "type={kind};");
    if meta.kind == FileKind::File {
        let _ = write!(out, "size={};", meta.size);
    }
    let _ =
        write!(out, "modify={};perm={};", time_val(meta.modified), perm_fact(meta.kind, writable));
    let _ = write!(out, "UNIX.mode=0{:o}; {name}", meta.mode & 0o7777);
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
    fn facts() {
        let mut out = Vec::new();
        facts_line(&mut out, "f", &meta(FileKind::File, 5, 0), false, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "type=file;size=5;modify=19700101000000;perm=r;UNIX.mode=0755; f"
        );
    }
}
