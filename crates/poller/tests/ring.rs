//! The completion side of the io_uring backend: multishot accept, receives into the kernel's
//! buffer ring, sends, and cancellation. Each test makes the operation's cause happen, then
//! waits; `BOUND` only keeps a broken ring from hanging the test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use zocalo_poller::uring::{Completion, Done, Op};
use zocalo_poller::{Poller, Token, UringPoller};

const BOUND: Option<Duration> = Some(Duration::from_secs(20));

/// Waits until `n` completions came (or the bound passed), with the bytes they received.
fn completions(p: &mut UringPoller, n: usize) -> (Vec<Completion>, Vec<u8>) {
    let (mut all, mut bytes) = (Vec::new(), Vec::new());
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + BOUND.unwrap();
    while all.len() < n && std::time::Instant::now() < deadline {
        p.wait(&mut events, BOUND).unwrap();
        let ring = p.ring().unwrap();
        let (mut some, mut arena) = (Vec::new(), Vec::new());
        ring.take_completions(&mut some, &mut arena);
        for mut c in some {
            if let Done::Received(Ok(r)) = &mut c.done {
                let start = bytes.len();
                bytes.extend_from_slice(&arena[r.clone()]);
                *r = start..bytes.len();
            }
            all.push(c);
        }
    }
    (all, bytes)
}

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

#[test]
fn multishot_accept_completes_once_per_connection_until_cancelled() {
    let mut p = UringPoller::new().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    p.ring().unwrap().accept_multishot(l.as_raw_fd(), Token(7)).unwrap();
    let clients: Vec<_> = (0..3).map(|_| TcpStream::connect(l.local_addr().unwrap())).collect();
    let (done, _) = completions(&mut p, 3);
    assert_eq!(done.len(), 3);
    for c in &done {
        assert_eq!(c.token, Token(7));
        assert!(c.more, "a multishot accept goes on");
        assert!(matches!(c.done, Done::Accepted(Ok(_))), "{c:?}");
    }
    p.ring().unwrap().cancel(Token(7), Op::Accept);
    let (done, _) = completions(&mut p, 1);
    assert!(!done[0].more);
    assert!(
        matches!(&done[0].done, Done::Accepted(Err(e)) if e.raw_os_error() == Some(libc::ECANCELED))
    );
    drop(clients);
}

#[test]
fn receive_waits_for_data_on_a_nonblocking_socket_then_sees_end_of_file() {
    let mut p = UringPoller::new().unwrap();
    let (mut client, server) = pair();
    server.set_nonblocking(true).unwrap();
    p.ring().unwrap().recv(server.as_raw_fd(), Token(1), 4096).unwrap();
    // Nothing sent yet: the receive waits (a non-blocking socket does not make it EAGAIN).
    let mut events = Vec::new();
    p.wait(&mut events, Some(Duration::from_millis(30))).unwrap();
    let (mut early, mut arena) = (Vec::new(), Vec::new());
    p.ring().unwrap().take_completions(&mut early, &mut arena);
    assert!(early.is_empty(), "{early:?}");
    client.write_all(b"USER anonymous\r\n").unwrap();
    let (done, bytes) = completions(&mut p, 1);
    match &done[0].done {
        Done::Received(Ok(r)) => assert_eq!(&bytes[r.clone()], b"USER anonymous\r\n"),
        other => panic!("{other:?}"),
    }
    p.ring().unwrap().recv(server.as_raw_fd(), Token(1), 4096).unwrap();
    drop(client);
    let (done, _) = completions(&mut p, 1);
    assert!(matches!(&done[0].done, Done::Received(Ok(r)) if r.is_empty()), "{done:?}");
}

#[test]
fn receive_takes_at_most_max_and_leaves_the_rest_in_the_socket() {
    let mut p = UringPoller::new().unwrap();
    let (mut client, server) = pair();
    client.write_all(b"abcdefgh").unwrap();
    p.ring().unwrap().recv(server.as_raw_fd(), Token(2), 3).unwrap();
    let (done, bytes) = completions(&mut p, 1);
    assert!(matches!(&done[0].done, Done::Received(Ok(r)) if &bytes[r.clone()] == b"abc"));
    p.ring().unwrap().recv(server.as_raw_fd(), Token(2), 100).unwrap();
    let (done, bytes) = completions(&mut p, 1);
    assert!(matches!(&done[0].done, Done::Received(Ok(r)) if &bytes[r.clone()] == b"defgh"));
}

#[test]
fn many_receives_in_one_turn_outnumber_the_buffers_and_all_arrive() {
    let mut p = UringPoller::new().unwrap();
    let pairs: Vec<_> = (0..700).map(|_| pair()).collect();
    for (i, (_, server)) in pairs.iter().enumerate() {
        p.ring().unwrap().recv(server.as_raw_fd(), Token(i), 64).unwrap();
    }
    for (i, (client, _)) in pairs.iter().enumerate() {
        (&*client).write_all(format!("{i:05}").as_bytes()).unwrap();
    }
    let (done, bytes) = completions(&mut p, pairs.len());
    assert_eq!(done.len(), pairs.len());
    for c in done {
        let Done::Received(Ok(r)) = c.done else { panic!("{c:?}") };
        assert_eq!(std::str::from_utf8(&bytes[r]).unwrap(), format!("{:05}", c.token.0));
    }
}

#[test]
fn send_hands_its_buffer_back_and_cancel_ends_a_receive() {
    let mut p = UringPoller::new().unwrap();
    let (mut client, server) = pair();
    let reply = b"220 zocalo ready\r\n".to_vec();
    p.ring().unwrap().send(server.as_raw_fd(), Token(3), reply.clone()).unwrap();
    p.ring().unwrap().recv(server.as_raw_fd(), Token(3), 512).unwrap();
    let (done, _) = completions(&mut p, 1);
    match &done[0].done {
        Done::Sent(Ok(n), buf) => assert_eq!((*n, buf), (reply.len(), &reply)),
        other => panic!("{other:?}"),
    }
    let mut got = vec![0; reply.len()];
    client.read_exact(&mut got).unwrap();
    assert_eq!(got, reply);
    p.ring().unwrap().cancel(Token(3), Op::Recv);
    let (done, _) = completions(&mut p, 1);
    assert!(
        matches!(&done[0].done, Done::Received(Err(e)) if e.raw_os_error() == Some(libc::ECANCELED)),
        "{done:?}"
    );
    // One in flight per token and operation.
    p.ring().unwrap().recv(server.as_raw_fd(), Token(3), 512).unwrap();
    assert!(p.ring().unwrap().recv(server.as_raw_fd(), Token(3), 512).is_err());
}
