//! `--xferlog FILE`: one line per transfer in the wu-ftpd xferlog format that log analysers
//! read:
//!
//! `Wed Nov 25 10:05:49 2026 2 127.0.0.1 5000000 /big.bin b _ o r alice ftp 0 * c`
//!
//! (date, seconds taken, remote host, bytes, file, `a`scii or `b`inary, special action `_`,
//! direction `o`utgoing or `i`ncoming, access mode `a`nonymous or `r`eal, user, service,
//! authentication method `0`, user id `*`, and `c`omplete or `i`ncomplete). Each line is one
//! write(2) on a file opened with O_APPEND, so the processes of the `process` model can share it.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use zocalo_proto::listing::civil;
use zocalo_proto::session::TransferKind;

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// The open transfer log (reopened by path after a reload: see `logs::Reopening`).
pub struct Xferlog {
    file: crate::ops::logs::Reopening,
}

/// One finished transfer.
pub struct Record<'a> {
    pub kind: TransferKind,
    pub path: &'a str,
    pub bytes: u64,
    pub took: Duration,
    pub peer: IpAddr,
    pub user: &'a str,
    pub anonymous: bool,
    pub ascii: bool,
    pub complete: bool,
}

impl Xferlog {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Xferlog { file: crate::ops::logs::Reopening::open(path)? })
    }

    /// Appends one line; listings (LIST, NLST, MLSD) are not file transfers and are skipped.
    pub fn record(&self, r: &Record<'_>) {
        let direction = match r.kind {
            _ if r.kind.is_listing() => return,
            kind if kind.is_upload() => 'i',
            _ => 'o',
        };
        let line = format!(
            "{} {} {} {} {} {} _ {direction} {} {} ftp 0 * {}\n",
            date(SystemTime::now()),
            r.took.as_secs().max(1),
            r.peer,
            r.bytes,
            r.path.replace(' ', "_"),
            if r.ascii { 'a' } else { 'b' },
            if r.anonymous { 'a' } else { 'r' },
            if r.user.is_empty() { "-" } else { r.user },
            if r.complete { 'c' } else { 'i' },
        );
        let _ = self.file.write_all(line.as_bytes());
    }
}

/// `Wed Nov 25 10:05:49 2026`, in UTC.
fn date(t: SystemTime) -> String {
    let c = civil(t);
    let days = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400);
    let (day, month) =
        (DAYS[(days % 7) as usize], MONTHS[(c.month as usize).saturating_sub(1) % 12]);
    format!("{day} {month} {:>2} {:02}:{:02}:{:02} {}", c.day, c.hour, c.minute, c.second, c.year)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_064_800);
        assert_eq!(date(t), "Tue Nov 25 10:00:00 2025");
    }

    #[test]
    fn lines() {
        let path = std::env::temp_dir().join(format!("zocalo-xferlog-{}", std::process::id()));
        let log = Xferlog::open(&path).unwrap();
        let peer = "127.0.0.1".parse().unwrap();
        let mut r = Record {
            kind: TransferKind::Retr,
            path: "/a b",
            bytes: 5,
            took: Duration::from_millis(10),
            peer,
            user: "alice",
            anonymous: false,
            ascii: false,
            complete: true,
        };
        log.record(&r);
        r.kind = TransferKind::List;
        log.record(&r);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.ends_with(" 1 127.0.0.1 5 /a_b b _ o r alice ftp 0 * c\n"), "{text}");
    }
}
