//! Memory of a server process tree, from /proc: RSS and PSS summed over a process and all its
//! descendants (vsftpd and ProFTPD fork per session; threads share their process's memory).
//!
//! Linux only. Reads `/proc/PID/smaps_rollup` and walks `/proc/*/stat` for parent links; it
//! never signals or changes the processes it reads.

use std::collections::HashMap;
use std::fs;
use std::io;

/// Memory of a process tree, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeMemory {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub processes: usize,
}

/// Sums RSS and PSS over `pid` and its descendants. Processes that exit meanwhile are skipped.
pub fn tree_memory(pid: u32) -> io::Result<TreeMemory> {
    let mut total = TreeMemory::default();
    for p in descendants_and_self(pid)? {
        let Ok(text) = fs::read_to_string(format!("/proc/{p}/smaps_rollup")) else {
            continue;
        };
        let (rss, pss) = parse_rollup(&text);
        total.rss_kib += rss;
        total.pss_kib += pss;
        total.processes += 1;
    }
    if total.processes == 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no process {pid}")));
    }
    Ok(total)
}

/// `pid` followed by every process whose chain of parents reaches it.
pub fn descendants_and_self(pid: u32) -> io::Result<Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in fs::read_dir("/proc")? {
        let Some(p) = entry?.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        if let Some(ppid) = parse_stat_ppid(&stat) {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        out.extend(children.get(&out[i]).into_iter().flatten().copied());
        i += 1;
    }
    Ok(out)
}

/// The parent pid from `/proc/PID/stat`: the second field after the `)` closing the command
/// name (which may itself contain spaces and parentheses).
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `(Rss, Pss)` in KiB from a smaps_rollup text.
pub fn parse_rollup(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let stat = "1234 (my (odd) name) S 42 1234 1234 0 -1 4194560 100 0";
        assert_eq!(parse_stat_ppid(stat), Some(42));
    }

    #[test]
    fn rollup_fields() {
        let text = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:   1024 kB\nPss:    512 kB\n\
                    Pss_Anon: 100 kB\n";
        assert_eq!(parse_rollup(text), (1024, 512));
    }

    #[test]
    fn own_tree_has_memory() {
        let mem = tree_memory(std::process::id()).unwrap();
        assert!(mem.rss_kib > 0 && mem.pss_kib > 0 && mem.processes >= 1);
    }
}
