//! No input panics the core: seeded random bytes and random command sequences, run in every
//! `cargo test` (the cargo-fuzz targets in `fuzz/` explore the same surface much longer).

use std::sync::Arc;
use std::time::{Duration, Instant};

use zocalo_proto::command;
use zocalo_proto::memory::MemoryStorage;
use zocalo_proto::session::{Action, Config, Outcome, Session};
use zocalo_proto::{Account, AuthError, Authenticator, Login};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

struct Auth(MemoryStorage);

impl Authenticator for Auth {
    fn authenticate(&self, login: &Login<'_>) -> Result<Account, AuthError> {
        let storage = Arc::new(self.0.clone());
        Ok(Account::new(login.user, storage, true, false))
    }
}

#[test]
fn random_bytes_never_panic_the_parser() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let len = (rng.next() % 64) as usize;
        let line: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = command::parse(&line);
    }
}

#[test]
fn random_command_sequences_never_panic_the_session() {
    const VERBS: &[&str] = &[
        "USER a",
        "PASS b",
        "PASV",
        "EPSV",
        "EPSV ALL",
        "PORT 127,0,0,1,4,1",
        "EPRT |2|::1|5|",
        "RETR f",
        "STOR g",
        "APPE g",
        "STOU",
        "LIST",
        "NLST",
        "MLSD",
        "MLST f",
        "STAT",
        "STAT /",
        "REST 3",
        "REST 99999999999",
        "RNFR f",
        "RNTO h",
        "DELE h",
        "MKD d",
        "RMD d",
        "CWD d",
        "CDUP",
        "PWD",
        "ABOR",
        "NOOP",
        "REIN",
        "QUIT",
        "TYPE A",
        "TYPE I",
        "SIZE f",
        "MDTM f",
        "AUTH TLS",
        "PBSZ 0",
        "PROT P",
        "FEAT",
        "OPTS UTF8 ON",
        "HOST x",
        "SITE HELP",
        "HELP",
        "CWD ../../..",
        "RETR ../../etc/passwd",
        "\u{ff}\u{fe}",
        "",
    ];
    let mut rng = Rng(42);
    for _ in 0..300 {
        let storage = MemoryStorage::default();
        storage.put("f", b"data\n");
        let config = Arc::new(Config::new(Arc::new(Auth(storage))));
        let peer = "127.0.0.1:40000".parse().unwrap();
        let mut s = Session::new(config, peer, "127.0.0.1:21".parse().unwrap());
        for _ in 0..60 {
            let line = format!("{}\r\n", rng.pick(VERBS));
            s.handle_input(line.as_bytes());
            drive(&mut s, &mut rng);
        }
    }
}

fn drive(s: &mut Session, rng: &mut Rng) {
    for _ in 0..64 {
        let n = s.pending_output().len();
        s.advance_output(n);
        let Some(action) = s.poll_action() else {
            // A failed login's delay: let it pass (the login and idle timeouts are minutes off).
            match s.poll_timeout() {
                Some(t) if t < Instant::now() + Duration::from_secs(5) => {
                    s.handle_timeout(t);
                    continue;
                }
                _ => return,
            }
        };
        match action {
            Action::OpenPassive => s.handle_passive_opened(Ok("127.0.0.1:5000".parse().unwrap())),
            Action::Transfer(_) => {
                let outcome = match rng.next() % 4 {
                    0 => Outcome::Done,
                    1 => Outcome::ConnectionLost,
                    2 => Outcome::NoConnection,
                    _ => Outcome::Aborted,
                };
                s.handle_transfer_done(outcome);
            }
            Action::StartTls => s.handle_tls_established(),
            Action::Work(w) => s.handle_work_done(w.run()),
            Action::Abort => s.handle_transfer_done(Outcome::Aborted),
            Action::ClosePassive | Action::Close => {}
        }
    }
}
