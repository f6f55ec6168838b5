//! Scripted sessions: lines in, replies and actions out, on in-memory storage. A tiny fake
//! driver carries out the actions (passive listeners, transfers) without any socket.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use zocalo_proto::memory::MemoryStorage;
use zocalo_proto::session::{Action, Body, Config, Outcome, Session};
use zocalo_proto::{Account, AuthError, Authenticator, Login};

struct TestAuth {
    storage: MemoryStorage,
}

impl Authenticator for TestAuth {
    fn authenticate(&self, login: &Login<'_>) -> Result<Account, AuthError> {
        let user = login.user;
        // `dropbox` stands for an anonymous account with --write.
        let (writable, anonymous) = match (user, login.password) {
            ("alice", "secret") => (true, false),
            ("dropbox", _) => (true, true),
            (u, _) if self.is_anonymous(u) => (false, true),
            _ => return Err(AuthError::BadCredentials),
        };
        let storage = Arc::new(self.storage.clone());
        Ok(Account::new(user, storage, writable, anonymous))
    }
}

static BASE: OnceLock<Instant> = OnceLock::new();

thread_local! {
    /// How far this test's fake clock has been moved (each test runs on a thread of its own).
    static OFFSET: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// The sessions' monotonic clock in these tests: it moves only when a test says so.
fn fake_now() -> Instant {
    *BASE.get_or_init(Instant::now) + OFFSET.with(Cell::get)
}

/// A session plus the fake driver's state.
struct Script {
    session: Session,
    storage: MemoryStorage,
    /// Bytes the "client" sends on the next data connection (for uploads).
    upload: Vec<u8>,
    /// Bytes received on the last data connection (downloads and listings).
    downloaded: Vec<u8>,
    /// Run transfers at once (true) or leave them pending (false).
    complete_transfers: bool,
    pending: Vec<Action>,
    closed: bool,
    /// Run storage and authentication work as soon as it is asked for.
    complete_work: bool,
}

impl Script {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let storage = MemoryStorage::default();
        storage.put("hello.txt", b"hello\nworld\n");
        let mut config = Config::new(Arc::new(TestAuth { storage: storage.clone() }));
        config.login_fail_delay = Duration::ZERO;
        config.now = fake_now;
        tweak(&mut config);
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:2121".parse().unwrap();
        let session = Session::new(Arc::new(config), peer, local);
        let mut s = Script {
            session,
            storage,
            upload: Vec::new(),
            downloaded: Vec::new(),
            complete_transfers: true,
            pending: Vec::new(),
            closed: false,
            complete_work: true,
        };
        let greeting = s.drain();
        assert!(greeting.starts_with("220 "), "{greeting}");
        s
    }

    fn login(user: &str, pass: &str) -> Self {
        let mut s = Script::new();
        s.send(&format!("USER {user}"));
        let reply = s.send(&format!("PASS {pass}"));
        assert!(reply.starts_with("230"), "{reply}");
        s
    }

    fn drain(&mut self) -> String {
        let mut out = String::from_utf8(self.session.pending_output().to_vec()).unwrap();
        let n = self.session.pending_output().len();
        self.session.advance_output(n);
        while let Some(action) = self.session.poll_action() {
            self.act(action);
            out.push_str(std::str::from_utf8(self.session.pending_output()).unwrap());
            let n = self.session.pending_output().len();
            self.session.advance_output(n);
        }
        out
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::OpenPassive => {
                self.session.handle_passive_opened(Ok("127.0.0.1:50000".parse().unwrap()))
            }
            Action::Transfer(t) if self.complete_transfers => {
                self.downloaded.clear();
                match t.body {
                    Body::Send(mut f) => {
                        f.read_to_end(&mut self.downloaded).unwrap();
                    }
                    Body::Listing(mut l) => {
                        l.read_to_end(&mut self.downloaded).unwrap();
                    }
                    Body::Receive(mut f) => {
                        f.write_all(&self.upload).unwrap();
                        f.finish().unwrap();
                    }
                }
                self.session.handle_transfer_done(Outcome::Done);
            }
            Action::Close => self.closed = true,
            Action::Work(w) if self.complete_work => self.session.handle_work_done(w.run()),
            other => self.pending.push(other),
        }
    }

    /// Moves the fake clock by `d`, fires what is due, and returns what the session answered.
    fn advance(&mut self, d: Duration) -> String {
        OFFSET.with(|o| o.set(o.get() + d));
        if self.session.poll_timeout().is_some_and(|t| t <= fake_now()) {
            self.session.handle_timeout(fake_now());
        }
        self.drain()
    }

    /// Sends one line and returns everything the session answered.
    fn send(&mut self, line: &str) -> String {
        self.session.handle_input(format!("{line}\r\n").as_bytes());
        self.drain()
    }

    fn code(&mut self, line: &str) -> u16 {
        let reply = self.send(line);
        let last = reply.lines().last().unwrap_or_default();
        last.get(..3).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{reply:?}"))
    }
}

#[test]
fn every_user_gets_331_and_bad_password_530() {
    let mut s = Script::new();
    assert_eq!(s.code("USER nobody"), 331);
    assert_eq!(s.code("PASS wrong"), 530);
    assert_eq!(s.code("USER alice"), 331);
    assert_eq!(s.code("PASS secret"), 230);
}

#[test]
fn out_of_sequence_commands_get_503() {
    let mut s = Script::new();
    assert_eq!(s.code("PASS x"), 503);
    let mut s = Script::login("alice", "secret");
    assert_eq!(s.code("RNTO b"), 503);
    assert_eq!(s.code("RNFR hello.txt"), 350);
    assert_eq!(s.code("NOOP"), 200);
    assert_eq!(s.code("RNTO b"), 503, "RNFR must be followed directly by RNTO");
}

#[test]
fn commands_need_login() {
    let mut s = Script::new();
    for cmd in ["PWD", "CWD /", "LIST", "RETR hello.txt", "PASV", "SIZE hello.txt"] {
        assert_eq!(s.code(cmd), 530, "{cmd}");
    }
    assert_eq!(s.code("FEAT"), 211);
    assert_eq!(s.code("SYST"), 215);
}

#[test]
fn failed_logins_are_delayed_and_limited() {
    let mut s = Script::with(|c| c.login_fail_delay = Duration::from_millis(500));
    for _ in 0..2 {
        s.send("USER alice");
        assert_eq!(s.send("PASS nope"), "", "the 530 waits for the delay");
        assert_eq!(s.send("NOOP"), "", "input is held during the delay");
        let due = s.session.poll_timeout().unwrap();
        assert_eq!(due, fake_now() + Duration::from_millis(500));
        assert_eq!(s.advance(Duration::from_millis(499)), "");
        assert_eq!(s.advance(Duration::from_millis(1)), "530 Login incorrect.\r\n200 NOOP ok.\r\n");
    }
    s.send("USER alice");
    s.send("PASS nope");
    let reply = s.advance(Duration::from_millis(500));
    assert!(reply.contains("530") && reply.contains("421"), "{reply}");
    assert!(s.closed);
}

#[test]
fn unknown_and_malformed() {
    let mut s = Script::login("alice", "secret");
    assert_eq!(s.code("FROB"), 500);
    assert_eq!(s.code("RETR"), 501);
    assert_eq!(s.code("TYPE E"), 504);
    assert_eq!(s.code("MODE B"), 504);
    assert_eq!(s.code("PORT 1,2,3"), 501);
}

#[test]
fn navigation() {
    let mut s = Script::login("alice", "secret");
    assert_eq!(s.send("PWD"), "257 \"/\" is the current directory.\r\n");
    assert_eq!(s.code("MKD d"), 257);
    assert_eq!(s.code("CWD d"), 250);
    assert!(s.send("XPWD").contains("\"/d\""));
    assert_eq!(s.code("CDUP"), 250);
    assert_eq!(s.code("CWD ../../.."), 250);
    assert!(s.send("PWD").contains("\"/\""));
    assert_eq!(s.code("CWD hello.txt"), 550);
    assert_eq!(s.code("CWD missing"), 550);
    assert_eq!(s.code("RMD d"), 250);
}

#[test]
fn download_upload_and_resume() {
    let mut s = Script::login("alice", "secret");
    assert_eq!(s.code("TYPE I"), 200);
    assert_eq!(s.code("RETR hello.txt"), 425, "no data connection set up");
    assert!(s.send("PASV").starts_with("227 Entering Passive Mode (127,0,0,1,195,80)."));
    let reply = s.send("RETR hello.txt");
    assert!(reply.starts_with("150 ") && reply.contains("226 "), "{reply}");
    assert_eq!(s.downloaded, b"hello\nworld\n");

    s.upload = b"abc".to_vec();
    s.send("EPSV");
    assert!(s.send("STOR up.bin").contains("226"));
    assert_eq!(s.storage.contents("up.bin").unwrap(), b"abc");
    s.send("EPSV");
    assert_eq!(s.code("REST 6"), 350);
    s.send("RETR hello.txt");
    assert_eq!(s.downloaded, b"world\n");
    s.upload = b"XY".to_vec();
    s.send("EPSV");
    s.send("REST 1");
    s.send("STOR up.bin");
    assert_eq!(s.storage.contents("up.bin").unwrap(), b"aXY");
    s.send("EPSV");
    s.send("APPE up.bin");
    assert_eq!(s.storage.contents("up.bin").unwrap(), b"aXYXY");
}

#[test]
fn stou_reports_the_name() {
    let mut s = Script::login("alice", "secret");
    s.upload = b"u".to_vec();
    s.send("PASV");
    let reply = s.send("STOU");
    let name = reply.lines().next().unwrap().strip_prefix("150 FILE: ").unwrap().to_string();
    assert_eq!(s.storage.contents(&name).unwrap(), b"u");
}

#[test]
fn anonymous_is_read_only() {
    let mut s = Script::login("anonymous", "me@example.com");
    for cmd in ["STOR x", "APPE x", "STOU", "MKD d", "RMD d", "DELE hello.txt", "RNFR hello.txt"] {
        assert_eq!(s.code(cmd), 550, "{cmd}");
    }
    assert!(s.storage.contents("hello.txt").is_some());
}

#[test]
fn an_anonymous_writer_cannot_chmod_and_nobody_chmods_the_root() {
    let mut s = Script::login("dropbox", "me@example.com");
    assert_eq!(s.code("MKD up"), 257, "an anonymous writer writes");
    let reply = s.send("SITE CHMOD 755 up");
    assert!(reply.starts_with("550 Anonymous"), "{reply}");
    assert!(s.send("SITE CHMOD 0 /").starts_with("550 Anonymous"));
    let mut s = Script::login("alice", "secret");
    for root in ["/", ".", "..", "/sub/..", "//"] {
        let reply = s.send(&format!("SITE CHMOD 0 {root}"));
        assert!(reply.starts_with("550 The root"), "{root}: {reply}");
    }
}

#[test]
fn listings() {
    let mut s = Script::login("alice", "secret");
    s.send("PASV");
    s.send("NLST");
    assert_eq!(s.downloaded, b"hello.txt\r\n");
    s.send("PASV");
    s.send("LIST -la");
    let text = String::from_utf8(s.downloaded.clone()).unwrap();
    assert!(text.starts_with("-rw-r--r--") && text.ends_with(" hello.txt\r\n"), "{text}");
    s.send("PASV");
    s.send("MLSD");
    let text = String::from_utf8(s.downloaded.clone()).unwrap();
    assert!(text.starts_with("type=file;size=12;modify="), "{text}");
    let reply = s.send("MLST hello.txt");
    assert!(reply.starts_with("250-") && reply.contains("\r\n type=file;size=12;"), "{reply}");
    assert_eq!(s.send("SIZE hello.txt"), "213 12\r\n");
    assert!(s.send("MDTM hello.txt").starts_with("213 2023"));
    let reply = s.send("STAT /");
    assert!(reply.starts_with("213-") && reply.contains("hello.txt"), "{reply}");
}

#[test]
fn stat_of_a_huge_directory_is_bounded_and_a_huge_pattern_refused() {
    let mut s = Script::login("alice", "secret");
    assert_eq!(s.code("MKD big"), 257);
    for i in 0..5_000 {
        s.storage.put(&format!("big/file-{i:05}.txt"), b"x");
    }
    let reply = s.send("STAT big");
    let cap = zocalo_proto::session::STAT_LISTING_CAP;
    assert!(reply.len() < cap + 1024, "a {} byte STAT reply", reply.len());
    assert!(reply.contains(" ... (cut here: LIST gives the whole directory)\r\n"), "{reply}");
    assert!(reply.ends_with("213 End of status.\r\n"));
    s.send("PASV");
    let reply = s.send(&format!("NLST big/*[{}]", "x".repeat(300)));
    assert!(reply.starts_with("501 Pattern too long"), "{reply}");
    s.send("PASV");
    s.send("NLST big/file-0000?.txt");
    assert_eq!(s.downloaded.split(|&b| b == b'\n').count() - 1, 10);
}

#[test]
fn bounce_attempts_are_refused_before_any_connection() {
    let mut s = Script::login("alice", "secret");
    assert_eq!(s.code("PORT 10,0,0,1,4,1"), 501);
    assert_eq!(s.code("PORT 127,0,0,1,0,21"), 501);
    assert_eq!(s.code("EPRT |1|10.0.0.1|2000|"), 501);
    assert_eq!(s.code("EPRT |2|::1|2000|"), 522);
    assert!(s.pending.iter().all(|a| !matches!(a, Action::Transfer(_))));
    assert_eq!(s.code("PORT 127,0,0,1,4,1"), 200);
    assert_eq!(s.code("EPRT |1|127.0.0.1|2000|"), 200);
}

#[test]
fn epsv_all_locks_out_other_setups() {
    let mut s = Script::login("alice", "secret");
    assert_eq!(s.code("EPSV ALL"), 200);
    assert_eq!(s.code("PASV"), 503);
    assert_eq!(s.code("PORT 127,0,0,1,4,1"), 503);
    assert_eq!(s.code("EPSV"), 229);
}

#[test]
fn control_channel_stays_live_during_a_transfer() {
    let mut s = Script::login("alice", "secret");
    s.complete_transfers = false;
    s.send("PASV");
    assert!(s.send("RETR hello.txt").starts_with("150"));
    assert_eq!(s.code("NOOP"), 200);
    let progress = match s.pending.last() {
        Some(Action::Transfer(t)) => t.progress.clone(),
        other => panic!("{other:?}"),
    };
    progress.store(5, std::sync::atomic::Ordering::Relaxed);
    let stat = s.send("STAT");
    assert!(stat.contains("RETR /hello.txt: 5 of 12 bytes"), "{stat}");
    assert_eq!(s.send("PWD"), "", "other commands wait for the transfer");
    s.send("ABOR");
    assert!(matches!(s.pending.last(), Some(Action::Abort)));
    s.session.handle_transfer_done(Outcome::Aborted);
    let replies = s.drain();
    assert!(replies.starts_with("426 ") && replies.contains("\r\n226 ABOR"), "{replies}");
    assert!(replies.ends_with("257 \"/\" is the current directory.\r\n"), "{replies}");
}

#[test]
fn abor_without_transfer() {
    let mut s = Script::login("alice", "secret");
    assert_eq!(s.code("ABOR"), 225);
}

#[test]
fn long_line_is_refused_and_closes() {
    let mut s = Script::new();
    let chunk = vec![b'A'; 1024];
    for _ in 0..8 {
        let room = s.session.input_room();
        if room == 0 {
            break;
        }
        s.session.handle_input(&chunk[..room.min(chunk.len())]);
    }
    let reply = s.drain();
    assert!(reply.starts_with("500 "), "{reply}");
    assert!(s.closed);
}

#[test]
fn pipelined_lines_in_one_read() {
    let mut s = Script::new();
    s.session.handle_input(b"USER alice\r\nPASS secret\r\nPWD\r\nQUIT\r\n");
    let replies = s.drain();
    let codes: Vec<&str> = replies.lines().map(|l| &l[..3]).collect();
    assert_eq!(codes, ["331", "230", "257", "221"]);
    assert!(s.closed);
}

#[test]
fn rein_and_host() {
    let mut s = Script::new();
    assert_eq!(s.code("HOST example.com"), 220);
    s.send("USER alice");
    s.send("PASS secret");
    assert_eq!(s.code("HOST example.com"), 503);
    assert_eq!(s.code("REIN"), 220);
    assert_eq!(s.code("PWD"), 530);
}

#[test]
fn feat_opts_help_site() {
    let mut s = Script::new();
    let feat = s.send("FEAT");
    for f in ["EPSV", "MLST type*", "REST STREAM", "SIZE", "MDTM", "UTF8", "HOST"] {
        assert!(feat.contains(f), "{f} missing from {feat}");
    }
    assert!(!feat.contains("AUTH TLS"), "no TLS configured");
    assert_eq!(s.code("OPTS UTF8 ON"), 200);
    assert_eq!(s.code("OPTS MLST type;size;"), 200);
    assert_eq!(s.code("HELP"), 214);
    assert_eq!(s.code("HELP RETR"), 214);
    s.send("USER alice");
    s.send("PASS secret");
    assert_eq!(s.code("SITE HELP"), 214);
    assert_eq!(s.code("SITE FROB"), 502);
    assert_eq!(s.code("ALLO 100"), 202);
    assert_eq!(s.code("ACCT x"), 202);
    assert_eq!(s.code("STRU F"), 200);
}

#[test]
fn utf8_names() {
    let mut s = Script::login("alice", "secret");
    s.upload = b"x".to_vec();
    assert_eq!(s.code("MKD dí"), 257);
    s.send("PASV");
    s.send("STOR dí/ñandú.txt");
    assert_eq!(s.storage.contents("dí/ñandú.txt").unwrap(), b"x");
}

#[test]
fn idle_timeout_and_shutdown_close_with_421() {
    let mut s = Script::login("alice", "secret");
    assert_eq!(s.session.poll_timeout(), Some(fake_now() + Duration::from_secs(300)));
    assert_eq!(s.advance(Duration::from_secs(200)), "");
    assert_eq!(s.code("NOOP"), 200, "input restarts the idle timer");
    assert_eq!(s.advance(Duration::from_secs(299)), "");
    assert!(s.advance(Duration::from_secs(1)).starts_with("421 Idle timeout"));
    assert!(s.closed && s.session.expired());
    assert_eq!(s.session.poll_timeout(), None);
}

#[test]
fn the_login_timeout_runs_from_the_connection_until_a_login() {
    let mut s = Script::new();
    assert_eq!(s.session.poll_timeout(), Some(fake_now() + Duration::from_secs(60)));
    s.advance(Duration::from_secs(59));
    assert_eq!(s.code("NOOP"), 200, "commands do not restart the login timeout");
    assert!(s.advance(Duration::from_secs(1)).starts_with("421 Login timeout"));
    assert!(s.closed && s.session.expired());

    let mut s = Script::login("alice", "secret");
    assert_eq!(s.advance(Duration::from_secs(60)), "", "no login timeout once logged in");
}

#[test]
fn no_idle_timeout_while_work_is_out() {
    let mut s = Script::login("alice", "secret");
    s.complete_work = false;
    assert_eq!(s.send("SIZE hello.txt"), "");
    assert_eq!(s.session.poll_timeout(), None, "work out: nothing to time");
    let Some(Action::Work(work)) = s.pending.pop() else { panic!("no work for SIZE") };
    s.advance(Duration::from_secs(1000));
    s.session.handle_work_done(work.run());
    assert_eq!(s.drain(), "213 12\r\n");
    assert_eq!(s.session.poll_timeout(), Some(fake_now() + Duration::from_secs(300)));
}

#[test]
fn a_timeout_on_a_closed_session_queues_nothing_more() {
    let mut s = Script::new();
    s.advance(Duration::from_secs(60));
    for _ in 0..3 {
        s.session.handle_timeout(fake_now() + Duration::from_secs(1000));
    }
    assert!(s.session.pending_output().is_empty(), "a second 421 was queued");
    assert!(s.session.poll_action().is_none(), "a second Close was queued");
}

#[test]
fn rest_past_the_end_is_refused_before_anything_is_opened() {
    let mut s = Script::login("alice", "secret");
    s.send("EPSV");
    assert_eq!(s.code("REST 13"), 350);
    assert_eq!(s.code("RETR hello.txt"), 554, "hello.txt has 12 bytes");
    s.send("EPSV");
    s.send("REST 12");
    assert!(s.send("RETR hello.txt").contains("226"), "REST at the very end is allowed");
    assert!(s.downloaded.is_empty());
    s.send("EPSV");
    s.send("REST 9223372036854775808");
    assert_eq!(s.code("STOR new.bin"), 554);
    assert_eq!(s.storage.contents("new.bin"), None, "a refused STOR created a file");
    s.send("EPSV");
    s.send("REST 100");
    assert_eq!(s.code("STOR hello.txt"), 554);
    assert_eq!(s.storage.contents("hello.txt").unwrap(), b"hello\nworld\n");
}

#[test]
fn a_name_ending_in_a_slash_is_not_a_file_to_store() {
    let mut s = Script::login("alice", "secret");
    for verb in ["STOR", "APPE"] {
        s.send("EPSV");
        assert_eq!(s.code(&format!("{verb} newf/")), 553);
        assert_eq!(s.storage.contents("newf"), None, "{verb} created a file");
    }
}

#[test]
fn replies_after_abor_come_in_command_order() {
    let mut s = Script::login("alice", "secret");
    s.complete_transfers = false;
    s.send("PASV");
    assert!(s.send("RETR hello.txt").starts_with("150"));
    let early = s.send("ABOR\r\nNOOP\r\nNOOP\r\nABOR\r\nPWD");
    assert_eq!(early, "", "nothing may be answered before the ABOR's own replies");
    assert!(matches!(s.pending.last(), Some(Action::Abort)));
    s.session.handle_transfer_done(Outcome::Aborted);
    let codes: Vec<&str> = s.drain().leak().lines().map(|l| &l[..3]).collect();
    assert_eq!(codes, ["426", "226", "200", "200", "225", "257"]);
}

#[test]
fn unread_replies_stop_the_session_taking_input() {
    use zocalo_proto::session::OUTPUT_CAP;
    let mut s = Script::login("alice", "secret");
    let mut fed = 0;
    for _ in 0..10_000 {
        let room = s.session.input_room();
        if room == 0 {
            break;
        }
        let line = b"HELP\r\n";
        let n = room.min(line.len());
        s.session.handle_input(&line[..n]);
        fed += n;
    }
    assert_eq!(s.session.input_room(), 0, "input still taken with replies unread");
    let pending = s.session.pending_output().len();
    assert!((OUTPUT_CAP..OUTPUT_CAP + 1024).contains(&pending), "{pending} bytes queued");
    assert!(fed < 60_000, "{fed} bytes taken");
    // Reading the replies lets the held commands run, in order.
    let mut replies = 0;
    while !s.session.pending_output().is_empty() {
        let out = s.session.pending_output();
        replies += out.windows(6).filter(|w| w == b"214 He").count();
        let n = out.len();
        s.session.advance_output(n);
    }
    assert!(replies * 6 >= fed - 6, "{replies} replies for {fed} bytes of HELP lines");
    assert!(s.session.input_room() > 0);
}

#[test]
fn storage_and_login_are_work_for_the_driver_and_hold_input() {
    let mut s = Script::new();
    s.complete_work = false;
    s.send("USER alice");
    assert_eq!(s.send("PASS secret\r\nNOOP\r\nPWD"), "", "nothing answered while PASS is out");
    let Some(Action::Work(work)) = s.pending.pop() else { panic!("no work for PASS") };
    assert!(s.session.poll_action().is_none());
    s.session.handle_work_done(work.run());
    let replies = s.drain();
    let codes: Vec<&str> = replies.lines().map(|l| &l[..3]).collect();
    assert_eq!(codes, ["230", "200", "257"], "{replies}");
    assert_eq!(s.send("SIZE hello.txt"), "");
    let Some(Action::Work(work)) = s.pending.pop() else { panic!("no work for SIZE") };
    // The session is told of an unrelated event meanwhile: still no answer, no second work.
    s.session.handle_timeout(fake_now());
    assert!(s.drain().is_empty());
    s.session.handle_work_done(work.run());
    assert_eq!(s.drain(), "213 12\r\n");
}

#[test]
fn work_that_returns_after_the_session_closed_changes_nothing() {
    let mut s = Script::login("alice", "secret");
    s.complete_work = false;
    s.send("MKD late");
    let Some(Action::Work(work)) = s.pending.pop() else { panic!("no work for MKD") };
    s.session.handle_admin_close();
    s.drain();
    s.session.handle_work_done(work.run());
    assert!(s.session.pending_output().is_empty(), "a reply after the close");
}

#[test]
fn help_offers_only_what_works() {
    let mut s = Script::new();
    assert_eq!(s.code("HELP CCC"), 502, "CCC is always refused");
    assert_eq!(s.code("HELP RETR"), 214);
    assert!(!s.send("HELP").contains("CCC"));
}

#[test]
fn nlst_and_list_take_a_wildcard_in_the_last_element() {
    let mut s = Script::login("alice", "secret");
    assert_eq!(s.code("MKD tn"), 257);
    for name in ["tn/a.bin", "tn/b.bin", "tn/c.txt", "tn/.h.bin"] {
        s.storage.put(name, b"x");
    }
    s.send("EPSV");
    assert!(s.send("NLST /tn/*.bin").contains("226"));
    assert_eq!(String::from_utf8(s.downloaded.clone()).unwrap(), "/tn/a.bin\r\n/tn/b.bin\r\n");
    s.send("CWD tn");
    s.send("EPSV");
    s.send("NLST [bc].*");
    assert_eq!(String::from_utf8(s.downloaded.clone()).unwrap(), "b.bin\r\nc.txt\r\n");
    s.send("EPSV");
    s.send("LIST -l ?.txt");
    let long = String::from_utf8(s.downloaded.clone()).unwrap();
    assert!(long.ends_with(" c.txt\r\n") && long.lines().count() == 1, "{long}");
    s.send("EPSV");
    assert!(s.send("NLST *.none").contains("226"), "no match: an empty listing");
    assert!(s.downloaded.is_empty());
}

#[test]
fn clnt_is_noted_before_login() {
    let mut s = Script::new();
    assert_eq!(s.code("CLNT NcFTP 3.2.6 linux-x86_64-glibc2.36"), 200);
    assert_eq!(s.session.client_name(), Some("NcFTP 3.2.6 linux-x86_64-glibc2.36"));
    assert!(s.send("FEAT").contains(" CLNT\r\n"));
}
