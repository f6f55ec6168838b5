//! Arbitrary command sequences against a session on in-memory storage; actions are carried out
//! by a fake driver so transfers, passive setups and delays all complete, and a line that
//! starts with BEL fires the session's next timer.
#![no_main]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use zocalo_proto::memory::MemoryStorage;
use zocalo_proto::session::{Action, Body, Config, Outcome, Session};
use zocalo_proto::{Account, AuthError, Authenticator, Login};

struct Auth(MemoryStorage);

impl Authenticator for Auth {
    fn authenticate(&self, login: &Login<'_>) -> Result<Account, AuthError> {
        let storage = Arc::new(self.0.clone());
        Ok(Account::new(login.user, storage, login.user != "ro", false))
    }
}

fuzz_target!(|data: &[u8]| {
    let storage = MemoryStorage::default();
    storage.put("f", b"data\n");
    let config = Arc::new(Config::new(Arc::new(Auth(storage))));
    let peer = "127.0.0.1:40000".parse().unwrap();
    let mut s = Session::new(config, peer, "127.0.0.1:21".parse().unwrap());
    for chunk in data.split_inclusive(|&b| b == b'\n') {
        let room = s.input_room();
        if room == 0 {
            break;
        }
        s.handle_input(&chunk[..chunk.len().min(room)]);
        drive(&mut s);
        // A line starting with BEL lets the session's next timer fire (login, idle or delay).
        if chunk.first() == Some(&0x07) {
            if let Some(t) = s.poll_timeout() {
                s.handle_timeout(t);
                drive(&mut s);
            }
        }
    }
});

fn drive(s: &mut Session) {
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
            Action::Transfer(t) => {
                match t.body {
                    Body::Send(mut f) => drop(f.read_to_end(&mut Vec::new())),
                    Body::Listing(mut l) => drop(l.read_to_end(&mut Vec::new())),
                    Body::Receive(mut f) => {
                        let _ = f.write_all(b"x\r\n");
                        let _ = f.finish();
                    }
                }
                s.handle_transfer_done(Outcome::Done);
            }
            Action::StartTls => s.handle_tls_established(),
            Action::Work(w) => s.handle_work_done(w.run()),
            Action::Abort => s.handle_transfer_done(Outcome::Aborted),
            Action::ClosePassive | Action::Close => {}
        }
    }
}
