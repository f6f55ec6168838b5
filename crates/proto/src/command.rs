//! Parsing one command line into a typed [`Command`]: parse, don't validate.
//!
//! Verbs are case-insensitive (RFC 959 section 5.3.1). Arguments are UTF-8 (RFC 2640); a line
//! that is not UTF-8 is a syntax error. Each command is parsed once here; the session matches on
//! the typed value and never re-parses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::SystemTime;

/// RFC 959 TYPE, of which zocalo implements ASCII non-print and Image (and L 8, which is Image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferType {
    Ascii,
    Image,
}

/// The argument of EPSV (RFC 2428 section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpsvArg {
    /// No argument, or a network protocol number (1 for IPv4, 2 for IPv6).
    Protocol(Option<u8>),
    /// `EPSV ALL`: from now on the client uses EPSV only.
    All,
}

/// The argument of LIST and NLST: a path, and whether `ls`-style options asked for every
/// entry (`-a`, `-la`, `-al`), dot files included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListArg<'a> {
    pub path: Option<&'a str>,
    pub all: bool,
}

/// A parsed command line. Path arguments are as the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    User(&'a str),
    Pass(&'a str),
    Acct,
    Quit,
    Rein,
    Cwd(&'a str),
    Cdup,
    Pwd,
    Mkd(&'a str),
    Rmd(&'a str),
    Dele(&'a str),
    Rnfr(&'a str),
    Rnto(&'a str),
    Retr(&'a str),
    Stor(&'a str),
    Stou,
    Appe(&'a str),
    List(ListArg<'a>),
    Nlst(ListArg<'a>),
    Mlsd(Option<&'a str>),
    Mlst(Option<&'a str>),
    Stat(Option<&'a str>),
    Help(Option<&'a str>),
    Noop,
    Syst,
    Type(TransferType),
    Mode,
    Stru,
    Pasv,
    Epsv(EpsvArg),
    Port(SocketAddr),
    Eprt(SocketAddr),
    Abor,
    Allo,
    Rest(u64),
    Site(&'a str),
    Feat,
    Opts(&'a str),
    Size(&'a str),
    Mdtm(&'a str),
    /// Set a file's modification time: MFMT (draft-somers-ftp-mfxx), or MDTM with a time
    /// before the path (`mdtm`: the form vsftpd and ncftp use), which is answered differently.
    Mfmt {
        time: SystemTime,
        path: &'a str,
        mdtm: bool,
    },
    Host(&'a str),
    Auth(&'a str),
    Pbsz(&'a str),
    Prot(&'a str),
    Ccc,
    /// The client's name (ncftp sends it on every connection).
    Clnt(&'a str),
    /// Free space where a path lives (draft-peterson-streamlined-ftp-command-extensions).
    Avbl(Option<&'a str>),
    /// A file's hash with the algorithm chosen by OPTS HASH (draft-bryan-ftpext-hash).
    Hash(&'a str),
    /// The byte range of the next HASH: `RANG START END` (END exclusive); `RANG 1 0` resets.
    Rang(Option<(u64, u64)>),
    /// XSHA256, XSHA512, XSHA1, XMD5 and XCRC `PATH [START END]` (as ProFTPD's mod_digest).
    XHash {
        algorithm: crate::hash::Algorithm,
        path: &'a str,
        range: Option<(u64, u64)>,
    },
}

/// Why a line is not a command the session can run; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// 500: the verb is not known at all.
    Unknown(String),
    /// 501: the verb is known but its argument is malformed.
    Syntax(&'static str),
    /// 504: a well-formed parameter that zocalo does not implement.
    Unsupported(&'static str),
    /// 522: an EPRT/EPSV network protocol other than 1 (IPv4) or 2 (IPv6) (RFC 2428).
    NetworkProtocol,
}

/// When a command may run before the login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeLogin {
    Never,
    Always,
    /// Only without an argument (STAT: the server's status; with a path, a listing).
    WithoutArgument,
}

/// A verb's entry in [`VERBS`]: everything about a command that is not its handler. Adding a
/// command means an entry here, a variant of [`Command`], its handler in the session, and tests.
pub struct Verb {
    pub name: &'static str,
    /// Other names for the same command (RFC 775's X commands).
    pub aliases: &'static [&'static str],
    pub before_login: BeforeLogin,
    /// Changes files: refused with 550 for a read-only account, before the handler runs.
    pub writes: bool,
    /// Reads files or lists directories: refused with 550 for an upload-only account.
    pub reads: bool,
    /// Its FEAT lines; `tls`: offered only when the server has a certificate.
    pub feat: &'static [&'static str],
    pub tls: bool,
    /// Listed by HELP (CCC is parsed, to be refused, but never offered).
    pub help: bool,
    /// The argument (the rest of the line after one space) to a typed command.
    pub parse: for<'a> fn(&'a str) -> Result<Command<'a>, ParseError>,
}

impl std::fmt::Debug for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

const fn verb(
    name: &'static str,
    before_login: BeforeLogin,
    writes: bool,
    parse: for<'a> fn(&'a str) -> Result<Command<'a>, ParseError>,
) -> Verb {
    Verb {
        name,
        aliases: &[],
        before_login,
        writes,
        reads: false,
        feat: &[],
        tls: false,
        help: true,
        parse,
    }
}

/// The command reads files or lists directories: refused to an upload-only account.
const fn reads(mut v: Verb) -> Verb {
    v.reads = true;
    v
}

const fn aka(mut v: Verb, aliases: &'static [&'static str]) -> Verb {
    v.aliases = aliases;
    v
}

const fn feat(mut v: Verb, lines: &'static [&'static str]) -> Verb {
    v.feat = lines;
    v
}

use BeforeLogin::{Always, Never, WithoutArgument};

/// Every command zocalo knows, in HELP's order. The session's guard reads `before_login`,
/// `writes` and `reads` from here, FEAT and HELP are built from here, and the parser finds verbs here.
pub static VERBS: &[Verb] = &[
    verb("ABOR", Always, false, |_| Ok(Command::Abor)),
    verb("ACCT", Always, false, |_| Ok(Command::Acct)),
    verb("ALLO", Never, false, |_| Ok(Command::Allo)),
    verb("APPE", Never, true, |a| Ok(Command::Appe(required(a)?))),
    Verb {
        feat: &["AUTH TLS"],
        tls: true,
        ..verb("AUTH", Always, false, |a| Ok(Command::Auth(required(a)?)))
    },
    feat(verb("AVBL", Never, false, |a| Ok(Command::Avbl(optional(a)))), &["AVBL"]),
    Verb { help: false, ..verb("CCC", Always, false, |_| Ok(Command::Ccc)) },
    aka(verb("CDUP", Never, false, |_| Ok(Command::Cdup)), &["XCUP"]),
    feat(verb("CLNT", Always, false, |a| Ok(Command::Clnt(a))), &["CLNT"]),
    // TVFS: paths are Unix-style, `/` separated, from the session's root.
    feat(aka(verb("CWD", Never, false, |a| Ok(Command::Cwd(required(a)?))), &["XCWD"]), &["TVFS"]),
    verb("DELE", Never, true, |a| Ok(Command::Dele(required(a)?))),
    feat(verb("EPRT", Never, false, |a| Ok(Command::Eprt(eprt(a)?))), &["EPRT"]),
    feat(verb("EPSV", Never, false, |a| Ok(Command::Epsv(epsv(a)?))), &["EPSV"]),
    verb("FEAT", Always, false, |_| Ok(Command::Feat)),
    verb("HELP", Always, false, |a| Ok(Command::Help(optional(a)))),
    feat(verb("HOST", Always, false, |a| Ok(Command::Host(required(a)?))), &["HOST"]),
    reads(verb("LIST", Never, false, |a| Ok(Command::List(list_arg(a))))),
    // MDTM with a time before the path sets it (the form vsftpd and ncftp use): that parses to
    // MFMT's command, and so to MFMT's entry.
    feat(
        reads(verb("MDTM", Never, false, |a| match time_then_path(a) {
            Some((time, path)) => Ok(Command::Mfmt { time, path, mdtm: true }),
            None => Ok(Command::Mdtm(required(a)?)),
        })),
        &["MDTM"],
    ),
    feat(
        verb("MFMT", Never, true, |a| {
            let (time, path) = time_then_path(a)
                .ok_or(ParseError::Syntax("MFMT needs YYYYMMDDHHMMSS and a path."))?;
            Ok(Command::Mfmt { time, path, mdtm: false })
        }),
        &["MFMT"],
    ),
    aka(verb("MKD", Never, true, |a| Ok(Command::Mkd(required(a)?))), &["XMKD"]),
    reads(verb("MLSD", Never, false, |a| Ok(Command::Mlsd(optional(a))))),
    feat(
        reads(verb("MLST", Never, false, |a| Ok(Command::Mlst(optional(a))))),
        &["MLST type*;size*;modify*;perm*;UNIX.mode*;"],
    ),
    verb("MODE", Never, false, |a| {
        one_of(a, "S", "Only MODE S (stream) is supported.").map(|_| Command::Mode)
    }),
    reads(verb("NLST", Never, false, |a| Ok(Command::Nlst(list_arg(a))))),
    verb("NOOP", Always, false, |_| Ok(Command::Noop)),
    feat(verb("OPTS", Always, false, |a| Ok(Command::Opts(required(a)?))), &["UTF8"]),
    verb("PASS", Always, false, |a| Ok(Command::Pass(a))),
    verb("PASV", Never, false, |_| Ok(Command::Pasv)),
    Verb {
        feat: &["PBSZ"],
        tls: true,
        ..verb("PBSZ", Always, false, |a| Ok(Command::Pbsz(required(a)?)))
    },
    verb("PORT", Never, false, |a| Ok(Command::Port(port(a)?))),
    Verb {
        feat: &["PROT"],
        tls: true,
        ..verb("PROT", Always, false, |a| Ok(Command::Prot(required(a)?)))
    },
    aka(verb("PWD", Never, false, |_| Ok(Command::Pwd)), &["XPWD"]),
    verb("QUIT", Always, false, |_| Ok(Command::Quit)),
    verb("REIN", Always, false, |_| Ok(Command::Rein)),
    feat(
        verb("REST", Never, false, |a| {
            let offset = a.trim().parse();
            Ok(Command::Rest(offset.map_err(|_| ParseError::Syntax("REST needs a byte offset."))?))
        }),
        &["REST STREAM"],
    ),
    reads(verb("RETR", Never, false, |a| Ok(Command::Retr(required(a)?)))),
    aka(verb("RMD", Never, true, |a| Ok(Command::Rmd(required(a)?))), &["XRMD"]),
    verb("RNFR", Never, true, |a| Ok(Command::Rnfr(required(a)?))),
    verb("RNTO", Never, true, |a| Ok(Command::Rnto(required(a)?))),
    // SITE's subcommands check their own permission (SITE CHMOD writes, SITE HELP does not).
    verb("SITE", Never, false, |a| Ok(Command::Site(required(a)?))),
    feat(reads(verb("SIZE", Never, false, |a| Ok(Command::Size(required(a)?)))), &["SIZE"]),
    verb("STAT", WithoutArgument, false, |a| Ok(Command::Stat(list_arg(a).path))),
    verb("STOR", Never, true, |a| Ok(Command::Stor(required(a)?))),
    verb("STOU", Never, true, |_| Ok(Command::Stou)),
    verb("STRU", Never, false, |a| {
        one_of(a, "F", "Only STRU F (file) is supported.").map(|_| Command::Stru)
    }),
    verb("SYST", Always, false, |_| Ok(Command::Syst)),
    verb("TYPE", Never, false, |a| Ok(Command::Type(transfer_type(a)?))),
    verb("USER", Always, false, |a| Ok(Command::User(required(a)?))),
    // The HASH FEAT line lists the algorithms with the session's choice marked: the session
    // writes it.
    reads(verb("HASH", Never, false, |a| Ok(Command::Hash(required(a)?)))),
    feat(verb("RANG", Never, false, |a| Ok(Command::Rang(rang(a)?))), &["RANG STREAM"]),
    reads(verb("XCRC", Never, false, |a| x_hash(crate::hash::Algorithm::Crc32, a))),
    reads(verb("XMD5", Never, false, |a| x_hash(crate::hash::Algorithm::Md5, a))),
    reads(verb("XSHA1", Never, false, |a| x_hash(crate::hash::Algorithm::Sha1, a))),
    reads(verb("XSHA256", Never, false, |a| x_hash(crate::hash::Algorithm::Sha256, a))),
    reads(verb("XSHA512", Never, false, |a| x_hash(crate::hash::Algorithm::Sha512, a))),
];

/// The entry for `name` (any case), by name or alias.
pub fn find(name: &str) -> Option<&'static Verb> {
    VERBS.iter().find(|v| {
        v.name.eq_ignore_ascii_case(name) || v.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    })
}

/// A parsed line: the command, and the entry whose rules apply to it.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub verb: &'static Verb,
    pub command: Command<'a>,
    /// The line had an argument (for [`BeforeLogin::WithoutArgument`]).
    pub has_argument: bool,
}

/// Parses one line (terminator already removed).
pub fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
    parse_line(line).map(|p| p.command)
}

/// Parses one line into its command and its [`VERBS`] entry. A command is governed by the entry
/// of what it parsed to: `MDTM TIME PATH` sets a time, so MFMT's rules apply.
pub fn parse_line(line: &[u8]) -> Result<Parsed<'_>, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::Syntax("Line is not UTF-8."))?;
    let (name, arg) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    if name.len() > 8 || name.is_empty() {
        return Err(ParseError::Unknown(truncate(name)));
    }
    let verb = find(name).ok_or_else(|| ParseError::Unknown(truncate(name)))?;
    let command = (verb.parse)(arg)?;
    let verb = match command {
        Command::Mfmt { .. } => find("MFMT").unwrap_or(verb),
        _ => verb,
    };
    Ok(Parsed { verb, command, has_argument: !arg.trim().is_empty() })
}

/// `RANG START END`: `None` for `RANG 1 0`, the reset.
fn rang(arg: &str) -> Result<Option<(u64, u64)>, ParseError> {
    let bad = ParseError::Syntax("RANG needs a start and an end byte.");
    let mut words = arg.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(start)), Some(Ok(end)), None) = (words.next(), words.next(), words.next()) else {
        return Err(bad);
    };
    match (start, end) {
        (1, 0) => Ok(None),
        (s, e) if s < e => Ok(Some((s, e))),
        _ => Err(bad),
    }
}

/// `PATH [START END]` of the X hash commands: a path may hold spaces, so only two trailing
/// numbers make a range.
fn x_hash(algorithm: crate::hash::Algorithm, arg: &str) -> Result<Command<'_>, ParseError> {
    let arg = required(arg)?;
    let mut parts = arg.rsplitn(3, ' ');
    let (end, start, path) = (parts.next(), parts.next(), parts.next());
    if let (Some(Ok(end)), Some(Ok(start)), Some(path)) =
        (end.map(str::parse::<u64>), start.map(str::parse::<u64>), path)
    {
        if start >= end {
            return Err(ParseError::Syntax("The range must have START before END."));
        }
        let path = path.trim_matches('"');
        return Ok(Command::XHash { algorithm, path, range: Some((start, end)) });
    }
    Ok(Command::XHash { algorithm, path: arg.trim_matches('"'), range: None })
}

/// `YYYYMMDDHHMMSS path` (UTC, RFC 3659 time-val without fraction): the time and the path.
fn time_then_path(arg: &str) -> Option<(SystemTime, &str)> {
    let (stamp, path) = arg.split_once(' ')?;
    if stamp.len() != 14 || path.is_empty() {
        return None;
    }
    Some((crate::listing::parse_time_val(stamp)?, path))
}

fn truncate(verb: &str) -> String {
    verb.chars().take(16).collect()
}

fn required(arg: &str) -> Result<&str, ParseError> {
    if arg.is_empty() {
        Err(ParseError::Syntax("This command needs an argument."))
    } else {
        Ok(arg)
    }
}

fn optional(arg: &str) -> Option<&str> {
    (!arg.is_empty()).then_some(arg)
}

/// LIST, NLST and STAT take `ls`-style options (`-la`) that clients send: `a` is kept (show
/// dot files), the others are skipped.
fn list_arg(arg: &str) -> ListArg<'_> {
    let mut rest = arg.trim_start();
    let mut all = false;
    while let Some(opts) = rest.strip_prefix('-') {
        if opts.starts_with(' ') || opts.is_empty() {
            break;
        }
        let end = opts.find(' ').unwrap_or(opts.len());
        all |= opts[..end].contains('a');
        rest = opts[end..].trim_start();
    }
    ListArg { path: optional(rest), all }
}

fn one_of<'a>(arg: &'a str, want: &str, msg: &'static str) -> Result<&'a str, ParseError> {
    match arg.trim() {
        "" => Err(ParseError::Syntax("This command needs an argument.")),
        a if a.eq_ignore_ascii_case(want) => Ok(a),
        _ => Err(ParseError::Unsupported(msg)),
    }
}

fn transfer_type(arg: &str) -> Result<TransferType, ParseError> {
    let mut words = arg.split_whitespace().map(str::to_ascii_uppercase);
    let kind = words.next().ok_or(ParseError::Syntax("TYPE needs an argument."))?;
    let param = words.next();
    match (kind.as_str(), param.as_deref(), words.next()) {
        ("A", None | Some("N"), None) => Ok(TransferType::Ascii),
        ("I", None, None) => Ok(TransferType::Image),
        ("L", Some("8"), None) => Ok(TransferType::Image),
        ("A" | "E", Some("T" | "C"), None) | ("E", _, None) | ("L", Some(_), None) => {
            Err(ParseError::Unsupported("Only TYPE A, A N, I and L 8 are supported."))
        }
        _ => Err(ParseError::Syntax("Unknown TYPE.")),
    }
}

fn epsv(arg: &str) -> Result<EpsvArg, ParseError> {
    match arg.trim() {
        "" => Ok(EpsvArg::Protocol(None)),
        a if a.eq_ignore_ascii_case("ALL") => Ok(EpsvArg::All),
        "1" => Ok(EpsvArg::Protocol(Some(1))),
        "2" => Ok(EpsvArg::Protocol(Some(2))),
        _ => Err(ParseError::NetworkProtocol),
    }
}

/// `PORT h1,h2,h3,h4,p1,p2` (RFC 959 section 4.1.2).
pub fn port(arg: &str) -> Result<SocketAddr, ParseError> {
    const BAD: ParseError = ParseError::Syntax("PORT needs h1,h2,h3,h4,p1,p2.");
    let mut nums = [0u8; 6];
    let mut parts = arg.trim().split(',');
    for n in nums.iter_mut() {
        *n = parts.next().and_then(|p| p.trim().parse().ok()).ok_or(BAD)?;
    }
    if parts.next().is_some() {
        return Err(BAD);
    }
    let ip = Ipv4Addr::new(nums[0], nums[1], nums[2], nums[3]);
    let port = u16::from(nums[4]) << 8 | u16::from(nums[5]);
    Ok(SocketAddr::new(IpAddr::V4(ip), port))
}

/// `EPRT |proto|addr|port|` with any printable delimiter (RFC 2428 section 2).
pub fn eprt(arg: &str) -> Result<SocketAddr, ParseError> {
    const BAD: ParseError = ParseError::Syntax("EPRT needs |proto|address|port|.");
    let delim = arg.chars().next().filter(|c| (33..=126).contains(&(*c as u32))).ok_or(BAD)?;
    let fields: Vec<&str> = arg.split(delim).collect();
    let [empty, proto, addr, port, end] = fields.as_slice() else {
        return Err(BAD);
    };
    if !empty.is_empty() || !end.is_empty() {
        return Err(BAD);
    }
    let port: u16 = port.parse().map_err(|_| BAD)?;
    let ip: IpAddr = match *proto {
        "1" => IpAddr::V4(addr.parse().map_err(|_| BAD)?),
        "2" => IpAddr::V6(addr.parse().map_err(|_| BAD)?),
        _ => return Err(ParseError::NetworkProtocol),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses the port out of an EPSV reply `229 ... (|||port|)`; used by clients.
pub fn epsv_reply_port(text: &str) -> Option<u16> {
    let start = text.find('(')?;
    let end = text[start..].find(')')? + start;
    let inner = &text[start + 1..end];
    let delim = inner.chars().next()?;
    inner.split(delim).nth(3)?.parse().ok()
}

/// Parses the address out of a PASV reply `227 ... (h1,h2,h3,h4,p1,p2)`; used by clients.
pub fn pasv_reply_addr(text: &str) -> Option<SocketAddr> {
    let body = text.get(4..)?;
    let start =
        body.find('(').map(|i| i + 1).or_else(|| body.find(|c: char| c.is_ascii_digit()))?;
    let inner: String =
        body[start..].chars().take_while(|c| c.is_ascii_digit() || *c == ',').collect();
    port(&inner).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verb_and_alias_is_found_once() {
        for v in VERBS {
            for name in std::iter::once(&v.name).chain(v.aliases) {
                assert!(std::ptr::eq(find(name).unwrap(), v), "{name}");
                assert!(std::ptr::eq(find(&name.to_ascii_lowercase()).unwrap(), v), "{name}");
                assert!(name.len() <= 8, "{name}: verbs are at most 8 bytes");
            }
        }
    }

    #[test]
    fn a_line_is_governed_by_what_it_parses_to() {
        let p = parse_line(b"MDTM 20240102030405 file").unwrap();
        assert_eq!((p.verb.name, p.verb.writes), ("MFMT", true));
        let p = parse_line(b"MDTM file").unwrap();
        assert_eq!((p.verb.name, p.verb.writes), ("MDTM", false));
        let p = parse_line(b"xmkd dir").unwrap();
        assert_eq!((p.verb.name, p.verb.writes, p.has_argument), ("MKD", true, true));
        let p = parse_line(b"STAT").unwrap();
        assert_eq!((p.verb.before_login, p.has_argument), (BeforeLogin::WithoutArgument, false));
    }

    fn ok(line: &str) -> Command<'_> {
        parse(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e:?}"))
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(ok("noop"), Command::Noop);
        assert_eq!(ok("NoOp"), Command::Noop);
        assert_eq!(ok("retr a b"), Command::Retr("a b"));
    }

    #[test]
    fn x_forms_are_aliases() {
        assert_eq!(ok("XPWD"), Command::Pwd);
        assert_eq!(ok("XCUP"), Command::Cdup);
        assert_eq!(ok("XMKD d"), Command::Mkd("d"));
        assert_eq!(ok("XRMD d"), Command::Rmd("d"));
        assert_eq!(ok("XCWD d"), Command::Cwd("d"));
    }

    #[test]
    fn unknown_and_overlong_verbs() {
        assert_eq!(parse(b"FOO"), Err(ParseError::Unknown("FOO".into())));
        assert!(matches!(parse(b"NOOPNOOP"), Err(ParseError::Unknown(_))));
        assert!(matches!(parse(b""), Err(ParseError::Unknown(_))));
        assert!(matches!(parse(b" NOOP"), Err(ParseError::Unknown(_))));
    }

    #[test]
    fn missing_arguments_are_syntax_errors() {
        for line in ["RETR", "STOR", "CWD", "USER", "DELE", "MKD", "RNFR", "SIZE"] {
            assert!(matches!(parse(line.as_bytes()), Err(ParseError::Syntax(_))), "{line}");
        }
    }

    #[test]
    fn non_utf8_is_a_syntax_error() {
        assert!(matches!(parse(b"RETR \xff\xfe"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn list_options_are_skipped() {
        let list = |path, all| Command::List(ListArg { path, all });
        assert_eq!(ok("LIST"), list(None, false));
        assert_eq!(ok("LIST -la"), list(None, true));
        assert_eq!(ok("LIST -l dir"), list(Some("dir"), false));
        assert_eq!(ok("LIST -al dir"), list(Some("dir"), true));
        assert_eq!(ok("LIST -a -l dir x"), list(Some("dir x"), true));
        assert_eq!(ok("NLST dir"), Command::Nlst(ListArg { path: Some("dir"), all: false }));
        assert_eq!(ok("STAT"), Command::Stat(None));
    }

    #[test]
    fn types() {
        assert_eq!(ok("TYPE A"), Command::Type(TransferType::Ascii));
        assert_eq!(ok("TYPE a n"), Command::Type(TransferType::Ascii));
        assert_eq!(ok("TYPE I"), Command::Type(TransferType::Image));
        assert_eq!(ok("TYPE L 8"), Command::Type(TransferType::Image));
        assert!(matches!(parse(b"TYPE E"), Err(ParseError::Unsupported(_))));
        assert!(matches!(parse(b"TYPE L 7"), Err(ParseError::Unsupported(_))));
        assert!(matches!(parse(b"TYPE Q"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse(b"TYPE"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn mode_and_stru() {
        assert_eq!(ok("MODE S"), Command::Mode);
        assert_eq!(ok("STRU f"), Command::Stru);
        assert!(matches!(parse(b"MODE B"), Err(ParseError::Unsupported(_))));
        assert!(matches!(parse(b"STRU R"), Err(ParseError::Unsupported(_))));
    }

    #[test]
    fn port_forms() {
        assert_eq!(ok("PORT 127,0,0,1,4,1"), Command::Port("127.0.0.1:1025".parse().unwrap()));
        for bad in ["PORT 1,2,3", "PORT 1,2,3,4,5,6,7", "PORT 256,0,0,1,1,1", "PORT a,b,c,d,e,f"] {
            assert!(matches!(parse(bad.as_bytes()), Err(ParseError::Syntax(_))), "{bad}");
        }
    }

    #[test]
    fn eprt_forms() {
        assert_eq!(ok("EPRT |1|127.0.0.1|6446|"), Command::Eprt("127.0.0.1:6446".parse().unwrap()));
        assert_eq!(ok("EPRT !2!::1!6446!"), Command::Eprt("[::1]:6446".parse().unwrap()));
        assert!(matches!(parse(b"EPRT |3|x|1|"), Err(ParseError::NetworkProtocol)));
        for bad in ["EPRT |1|::1|1|", "EPRT |1|1.2.3.4|99999|", "EPRT |1|1.2.3.4|1", "EPRT x"] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn epsv_forms() {
        assert_eq!(ok("EPSV"), Command::Epsv(EpsvArg::Protocol(None)));
        assert_eq!(ok("EPSV all"), Command::Epsv(EpsvArg::All));
        assert_eq!(ok("EPSV 2"), Command::Epsv(EpsvArg::Protocol(Some(2))));
        assert!(matches!(parse(b"EPSV 7"), Err(ParseError::NetworkProtocol)));
    }

    #[test]
    fn rest_needs_a_number() {
        assert_eq!(ok("REST 100"), Command::Rest(100));
        assert!(matches!(parse(b"REST -1"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn reply_address_parsers() {
        let addr = pasv_reply_addr("227 Entering Passive Mode (127,0,0,1,4,1).").unwrap();
        assert_eq!(addr, "127.0.0.1:1025".parse().unwrap());
        assert_eq!(epsv_reply_port("229 Entering Extended Passive Mode (|||6446|)"), Some(6446));
    }

    #[test]
    fn mfmt_and_mdtm_with_a_time_set_the_modification_time() {
        let jan_2020 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_577_836_800);
        let set = |time, path, mdtm| Command::Mfmt { time, path, mdtm };
        assert_eq!(ok("MFMT 20200101000000 a b.txt"), set(jan_2020, "a b.txt", false));
        assert_eq!(ok("MDTM 20200101000000 f"), set(jan_2020, "f", true));
        assert_eq!(ok("MDTM 20200101000000"), Command::Mdtm("20200101000000"));
        assert_eq!(ok("MDTM f"), Command::Mdtm("f"));
        for bad in ["MFMT 20201301000000 f", "MFMT 2020010100000 f", "MFMT 20200101000000"] {
            assert!(matches!(parse(bad.as_bytes()), Err(ParseError::Syntax(_))), "{bad}");
        }
    }
}
