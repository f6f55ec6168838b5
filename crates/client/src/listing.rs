//! Directory listings as the client reads them: MLSD facts (RFC 3659 section 7) and LIST lines
//! in the Unix `ls -l` and DOS/IIS styles.
//!
//! LIST has no standard format, so its parser is a best effort used only when MLSD is refused;
//! lines it cannot read (`total 12`, banners) are skipped. Nothing here touches the network.

/// What a listed name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Link,
    Other,
}

/// One listed name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    pub size: Option<u64>,
    /// MLSD's `modify` fact (UTC, to the second); LIST gives none that can be trusted.
    pub modified: Option<std::time::SystemTime>,
}

/// Parses an MLSD body; `cdir`/`pdir` entries (the directory itself, its parent) are dropped.
pub fn parse_mlsd(body: &str) -> Vec<Entry> {
    body.lines().filter_map(parse_mlsd_line).collect()
}

/// Parses one `fact=value;fact=value; name` line.
pub fn parse_mlsd_line(line: &str) -> Option<Entry> {
    let line = line.trim_end_matches('\r');
    let (facts, name) = line.split_once(' ')?;
    let mut kind = Kind::Other;
    let mut size = None;
    let mut modified = None;
    for fact in facts.split(';').filter(|f| !f.is_empty()) {
        let (key, value) = fact.split_once('=')?;
        match key.to_ascii_lowercase().as_str() {
            "type" => kind = mlsd_kind(value)?,
            "size" => size = value.parse().ok(),
            "modify" => modified = zocalo_proto::listing::parse_time_val(value),
            _ => {}
        }
    }
    Some(Entry { name: name.to_owned(), kind, size, modified })
}

/// `None` for `cdir` and `pdir`, which name no child.
fn mlsd_kind(value: &str) -> Option<Kind> {
    let value = value.to_ascii_lowercase();
    match value.as_str() {
        "file" => Some(Kind::File),
        "dir" => Some(Kind::Dir),
        "cdir" | "pdir" => None,
        v if v.starts_with("os.unix=symlink") || v.starts_with("os.unix=slink") => Some(Kind::Link),
        _ => Some(Kind::Other),
    }
}

/// Parses a LIST body, skipping lines in no known format and the `.` and `..` entries.
pub fn parse_list(body: &str) -> Vec<Entry> {
    body.lines()
        .filter_map(|l| parse_unix_line(l).or_else(|| parse_dos_line(l)))
        .filter(|e| e.name != "." && e.name != "..")
        .collect()
}

/// `drwxr-xr-x 2 user group 4096 Jan  1 12:00 name` (owner or group may be missing). A
/// symlink's ` -> target` is cut off.
pub fn parse_unix_line(line: &str) -> Option<Entry> {
    let line = line.trim_end_matches('\r');
    let kind = match line.chars().next()? {
        '-' => Kind::File,
        'd' => Kind::Dir,
        'l' => Kind::Link,
        'b' | 'c' | 'p' | 's' => Kind::Other,
        _ => return None,
    };
    let tokens = tokens(line, 9);
    // perms, links, [owner], [group], size, month, day, time-or-year, name...
    let month = (3..tokens.len()).find(|&i| is_month(tokens[i].1))?;
    let size = tokens[month - 1].1.parse().ok();
    let name_start = tokens.get(month + 3)?.0;
    let mut name = &line[name_start..];
    if kind == Kind::Link {
        name = name.split(" -> ").next().unwrap_or(name);
    }
    Some(Entry { name: name.to_owned(), kind, size, modified: None })
}

/// `01-31-24  10:15AM       <DIR>          name` or `... 1234 name`.
pub fn parse_dos_line(line: &str) -> Option<Entry> {
    let line = line.trim_end_matches('\r');
    let tokens = tokens(line, 4);
    let [(_, date), (_, time), (_, what), (name_at, _)] = tokens[..] else {
        return None;
    };
    let dateish = |s: &str| s.len() >= 8 && s.bytes().all(|b| b.is_ascii_digit() || b == b'-');
    if !dateish(date) || !time.contains(':') {
        return None;
    }
    let (kind, size) = if what.eq_ignore_ascii_case("<DIR>") {
        (Kind::Dir, None)
    } else {
        (Kind::File, Some(what.parse().ok()?))
    };
    Some(Entry { name: line[name_at..].to_owned(), kind, size, modified: None })
}

/// The first `n` whitespace-separated tokens with their byte offsets.
fn tokens(line: &str, n: usize) -> Vec<(usize, &str)> {
    let mut out = Vec::with_capacity(n);
    let mut rest = 0;
    while out.len() < n {
        let Some(start) = line[rest..].find(|c: char| !c.is_whitespace()) else {
            break;
        };
        let start = rest + start;
        let end = line[start..].find(char::is_whitespace).map_or(line.len(), |e| start + e);
        out.push((start, &line[start..end]));
        rest = end;
    }
    out
}

fn is_month(token: &str) -> bool {
    const MONTHS: [&str; 12] =
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    token.len() == 3 && MONTHS.iter().any(|m| m.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlsd_facts_and_names_with_spaces() {
        let body = "type=cdir;modify=20240101000000; .\r\n\
                    type=pdir; ..\r\n\
                    type=file;size=1234;modify=20240101000000; a file.txt\r\n\
                    Type=DIR;Modify=20240101000000; sub\r\n\
                    type=OS.unix=symlink;size=3; ln\r\n";
        let entries = parse_mlsd(body);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].name, "a file.txt");
        assert_eq!(entries[0].size, Some(1234));
        assert_eq!(entries[1].kind, Kind::Dir);
        assert_eq!(entries[2].kind, Kind::Link);
    }

    #[test]
    fn mlsd_line_without_space_is_refused() {
        assert_eq!(parse_mlsd_line("type=file;size=1;"), None);
    }

    #[test]
    fn unix_list_variants() {
        let body = "total 8\r\n\
            drwxr-xr-x    2 ftp      ftp          4096 Jan 01 12:00 pub\r\n\
            -rw-r--r--    1 ftp      ftp      10485760 Mar  3  2023 big file.bin\r\n\
            -rw-r--r--    1 ftp          12 Dec 31 23:59 nogroup\r\n\
            lrwxrwxrwx    1 0        0               7 Feb  2 10:00 link -> target\r\n\
            drwxr-xr-x    2 ftp      ftp          4096 Jan 01 12:00 .\r\n";
        let entries = parse_list(body);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["pub", "big file.bin", "nogroup", "link"]);
        assert_eq!(entries[0].kind, Kind::Dir);
        assert_eq!(entries[1].size, Some(10_485_760));
        assert_eq!(entries[2].size, Some(12));
        assert_eq!(entries[3].kind, Kind::Link);
    }

    #[test]
    fn dos_list() {
        let entries = parse_list(
            "01-31-24  10:15AM       <DIR>          My Dir\r\n\
                                  01-31-24  10:16AM                 1234 f.txt\r\n",
        );
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].name.as_str(), entries[0].kind), ("My Dir", Kind::Dir));
        assert_eq!(entries[1].size, Some(1234));
    }

    #[test]
    fn junk_lines_are_skipped() {
        assert!(parse_list("hello world\r\n-rw short\r\n").is_empty());
    }
}
