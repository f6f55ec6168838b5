//! Server and client over real UDP sockets on 127.0.0.1, port 0, for every server model: the
//! threaded ones and the event loop on each readiness backend.

use std::io::Cursor;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use zocalo_tftp::packet::{emit_ack, emit_request_header, push_option};
use zocalo_tftp::{
    get, put, serve, Backend, ClientError, ClientOptions, DirStorage, ErrorCode, Mode, Model,
    Packet, ServerConfig, TransferError,
};

/// The event loop on every backend.
const EVENT_MODELS: [Model; 3] =
    [Model::Event(Backend::Select), Model::Event(Backend::Poll), Model::Event(Backend::Epoll)];

/// `models` followed by the event loop on every backend.
fn with_event(models: &[Model]) -> Vec<Model> {
    models.iter().copied().chain(EVENT_MODELS).collect()
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

struct TestServer {
    addr: SocketAddr,
    root: PathBuf,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    fn start(model: Model, config: ServerConfig) -> TestServer {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("zocalo-tftp-lo-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let storage = Arc::new(DirStorage::new(&root).unwrap());
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&shutdown);
        let thread = std::thread::spawn(move || serve(socket, storage, config, model, &flag));
        TestServer { addr, root, shutdown, thread: Some(thread) }
    }

    fn writable(model: Model) -> TestServer {
        TestServer::start(model, ServerConfig { write_allowed: true, ..ServerConfig::default() })
    }

    fn stop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread panicked").expect("serve failed");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
}

fn option_sets() -> Vec<ClientOptions> {
    vec![
        ClientOptions::default(),
        ClientOptions {
            blksize: Some(1428),
            windowsize: Some(8),
            tsize: true,
            timeout: Some(2),
            ..ClientOptions::default()
        },
        ClientOptions { blksize: Some(65464), windowsize: Some(4), ..ClientOptions::default() },
    ]
}

fn put_then_get(server: &TestServer, name: &str, data: &[u8], opts: &ClientOptions) {
    let size = Some(data.len() as u64);
    let sent = put(server.addr, name, &mut Cursor::new(data), size, opts);
    let sent = sent.unwrap_or_else(|err| panic!("put {name} {opts:?}: {err}"));
    assert_eq!(sent, data.len() as u64);
    assert_eq!(std::fs::read(server.root.join(name.trim_start_matches('/'))).unwrap(), data);
    let mut back = Vec::new();
    let got = get(server.addr, name, &mut back, opts);
    let got = got.unwrap_or_else(|err| panic!("get {name} {opts:?}: {err}"));
    assert_eq!(got, data.len() as u64, "{name} {opts:?}");
    assert!(back == data, "{name} {opts:?}: downloaded bytes differ");
}

#[test]
fn every_model_serves_get_and_put() {
    for model in with_event(&[Model::Iterative, Model::Thread, Model::Pool(2)]) {
        let server = TestServer::writable(model);
        for (i, opts) in option_sets().iter().enumerate() {
            let data = pattern(200_000 + i * 513);
            put_then_get(&server, &format!("/file{i}"), &data, opts);
        }
        put_then_get(&server, "empty", b"", &ClientOptions::default());
        put_then_get(&server, "exact", &pattern(1024), &ClientOptions::default());
    }
}

#[test]
fn thread_model_serves_clients_at_once() {
    let server = TestServer::writable(Model::Thread);
    let data = pattern(300_000);
    std::fs::write(server.root.join("shared"), &data).unwrap();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    get(server.addr, "shared", &mut out, &ClientOptions::default()).unwrap();
                    out
                })
            })
            .collect();
        for handle in handles {
            assert!(handle.join().unwrap() == data);
        }
    });
}

/// 50 clients at once, 25 downloading one file and 25 uploading their own, with and
/// without windows: the event loop interleaves them all on one thread.
#[test]
fn event_loop_serves_fifty_clients_at_once() {
    for model in EVENT_MODELS {
        let config = ServerConfig { write_allowed: true, max_per_client: 64, ..Default::default() };
        let server = TestServer::start(model, config);
        let shared = pattern(120_000);
        std::fs::write(server.root.join("shared"), &shared).unwrap();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..50)
                .map(|i| {
                    let (server, shared) = (&server, &shared);
                    scope.spawn(move || one_of_many(server, shared, i))
                })
                .collect();
            for handle in handles {
                handle.join().unwrap();
            }
        });
    }
}

fn one_of_many(server: &TestServer, shared: &[u8], i: usize) {
    let opts = match i % 3 {
        0 => ClientOptions::default(),
        1 => ClientOptions { blksize: Some(1428), windowsize: Some(16), ..Default::default() },
        _ => ClientOptions { blksize: Some(8192), windowsize: Some(4), ..Default::default() },
    };
    if i < 25 {
        let mut out = Vec::new();
        let got = get(server.addr, "shared", &mut out, &opts);
        assert_eq!(got.unwrap_or_else(|err| panic!("client {i}: {err}")), shared.len() as u64);
        assert!(out == shared, "client {i}: downloaded bytes differ");
    } else {
        let data = pattern(30_000 + i * 1001);
        let name = format!("up{i}");
        put(server.addr, &name, &mut Cursor::new(&data), None, &opts)
            .unwrap_or_else(|err| panic!("client {i}: {err}"));
        assert!(std::fs::read(server.root.join(&name)).unwrap() == data, "client {i}");
    }
}

/// RFC 7440 windows on the event loop: a few MiB with a window of 16 large blocks, both ways.
#[test]
fn event_loop_windowsize() {
    for model in EVENT_MODELS {
        let server = TestServer::writable(model);
        let opts = ClientOptions {
            blksize: Some(1428),
            windowsize: Some(16),
            tsize: true,
            ..ClientOptions::default()
        };
        put_then_get(&server, "window.bin", &pattern(3 << 20), &opts);
    }
}

#[test]
fn netascii_converts_line_ends() {
    for model in [Model::Thread, Model::Event(Backend::Epoll)] {
        netascii_round_trip(model);
    }
}

fn netascii_round_trip(model: Model) {
    let server = TestServer::writable(model);
    let opts = ClientOptions { mode: Mode::Netascii, ..ClientOptions::default() };
    let text = b"first\nsecond\r\nthird\rend\n".repeat(100);
    put_then_get(&server, "text.txt", &text, &opts);
    // The server decoded the upload: the stored file is local text again.
    let mut raw = Vec::new();
    let octet = ClientOptions::default();
    get(server.addr, "text.txt", &mut raw, &octet).unwrap();
    assert!(raw == text);
}

fn peer_error(result: Result<u64, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Transfer(TransferError::Peer { code, message })) => (code, message),
        other => panic!("expected an error from the server, got {other:?}"),
    }
}

#[test]
fn refusals_carry_the_right_codes() {
    for model in with_event(&[Model::Iterative]) {
        refusals(model);
    }
}

fn refusals(model: Model) {
    let server = TestServer::start(model, ServerConfig::default());
    let opts = ClientOptions::default();
    let mut data = Cursor::new(b"x".to_vec());
    let denied = put(server.addr, "new", &mut data, None, &opts);
    assert_eq!(peer_error(denied).0, ErrorCode::ACCESS_VIOLATION);
    assert!(!server.root.join("new").exists());
    let missing = get(server.addr, "missing", &mut Vec::new(), &opts);
    assert_eq!(peer_error(missing).0, ErrorCode::FILE_NOT_FOUND);
    let escape = get(server.addr, "../etc/passwd", &mut Vec::new(), &opts);
    assert_eq!(peer_error(escape).0, ErrorCode::ACCESS_VIOLATION);
    let mail = ClientOptions { mode: Mode::Mail, ..ClientOptions::default() };
    let refused = get(server.addr, "x", &mut Vec::new(), &mail);
    assert_eq!(peer_error(refused).0, ErrorCode::ILLEGAL_OPERATION);
}

#[test]
fn progress_reaches_the_total() {
    let server = TestServer::writable(Model::Iterative);
    let data = pattern(50_000);
    std::fs::write(server.root.join("p"), &data).unwrap();
    let last = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let (l, t) = (Arc::clone(&last), Arc::clone(&total));
    let opts = ClientOptions {
        tsize: true,
        progress: Some(Arc::new(move |done, all| {
            l.store(done, Ordering::Relaxed);
            t.store(all.unwrap_or(0), Ordering::Relaxed);
        })),
        ..ClientOptions::default()
    };
    get(server.addr, "p", &mut Vec::new(), &opts).unwrap();
    assert_eq!(last.load(Ordering::Relaxed), 50_000);
    assert_eq!(total.load(Ordering::Relaxed), 50_000, "tsize reported by the server");
}

/// A hand-driven client socket, for what the real client would never do.
struct Raw(UdpSocket);

impl Raw {
    fn new() -> Raw {
        Raw::from("127.0.0.1")
    }

    fn from(ip: &str) -> Raw {
        let socket = UdpSocket::bind((ip, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw(socket)
    }

    fn send(&self, to: SocketAddr, bytes: &[u8]) {
        self.0.send_to(bytes, to).unwrap();
    }

    fn recv(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0; 70_000];
        let (len, from) = self.0.recv_from(&mut buf).expect("an answer");
        buf.truncate(len);
        (buf, from)
    }

    fn rrq(&self, to: SocketAddr, name: &str, options: &[(&str, &str)]) {
        let mut packet = Vec::new();
        emit_request_header(&mut packet, false, name, Mode::Octet);
        for (name, value) in options {
            push_option(&mut packet, name, value);
        }
        self.send(to, &packet);
    }
}

fn ack(block: u16) -> Vec<u8> {
    let mut packet = Vec::new();
    emit_ack(&mut packet, block);
    packet
}

#[test]
fn stranger_gets_error_5_and_transfer_goes_on() {
    for model in with_event(&[Model::Thread]) {
        stranger(model);
    }
}

fn stranger(model: Model) {
    let server = TestServer::start(model, ServerConfig::default());
    let data = pattern(700);
    std::fs::write(server.root.join("f"), &data).unwrap();
    let client = Raw::new();
    client.rrq(server.addr, "f", &[]);
    let (first, tid) = client.recv();
    assert_ne!(tid, server.addr, "the transfer uses a new port");
    assert_eq!(Packet::parse(&first), Ok(Packet::Data { block: 1, data: &data[..512] }));

    let stranger = Raw::new();
    stranger.send(tid, &ack(1));
    let (reply, from) = stranger.recv();
    assert_eq!(from, tid);
    assert!(matches!(
        Packet::parse(&reply),
        Ok(Packet::Error { code: ErrorCode::UNKNOWN_TID, .. })
    ));

    client.send(tid, &ack(1));
    let (second, _) = client.recv();
    assert_eq!(Packet::parse(&second), Ok(Packet::Data { block: 2, data: &data[512..] }));
    client.send(tid, &ack(2));
}

#[test]
fn repeated_request_starts_one_transfer() {
    // Each case waits 1.5 s for nothing: run them side by side.
    std::thread::scope(|scope| {
        for model in with_event(&[Model::Thread]) {
            scope.spawn(move || repeated_request(model));
        }
    });
}

fn repeated_request(model: Model) {
    let server = TestServer::start(model, ServerConfig::default());
    std::fs::write(server.root.join("f"), pattern(100)).unwrap();
    let client = Raw::new();
    client.rrq(server.addr, "f", &[]);
    client.rrq(server.addr, "f", &[]);
    let (first, tid) = client.recv();
    assert!(matches!(Packet::parse(&first), Ok(Packet::Data { block: 1, .. })));
    client.send(tid, &ack(1));
    // A second transfer would have sent its own DATA 1 from another port by now; the only
    // thing left to arrive is nothing at all.
    client.0.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut buf = [0; 600];
    let extra = client.0.recv_from(&mut buf);
    assert!(extra.is_err(), "{model:?}: unexpected datagram: {extra:?}");
}

#[test]
fn malformed_requests_get_errors() {
    for model in with_event(&[Model::Iterative]) {
        malformed_requests(model);
    }
}

fn malformed_requests(model: Model) {
    let server = TestServer::start(model, ServerConfig::default());
    let client = Raw::new();
    let cases: [(&[u8], ErrorCode); 4] = [
        (b"\x00\x01f\x00octet\x00blksize\x00512\x00blksize\x00512\x00", ErrorCode(8)),
        (b"\x00\x01no-nul", ErrorCode(4)),
        (b"\x00\x09", ErrorCode(4)),
        (b"\x00\x04\x00\x01", ErrorCode(4)),
    ];
    for (bytes, expected) in cases {
        client.send(server.addr, bytes);
        let (reply, _) = client.recv();
        match Packet::parse(&reply) {
            Ok(Packet::Error { code, .. }) => assert_eq!(code, expected, "{model:?} {bytes:?}"),
            other => panic!("{model:?} {bytes:?}: expected an error, got {other:?}"),
        }
    }
}

#[test]
fn server_grants_options_within_limits() {
    for model in [Model::Iterative, Model::Event(Backend::Poll)] {
        grants_options(model);
    }
}

fn grants_options(model: Model) {
    let config = ServerConfig { max_blksize: 1024, max_windowsize: 2, ..ServerConfig::default() };
    let server = TestServer::start(model, config);
    std::fs::write(server.root.join("f"), pattern(5000)).unwrap();
    let client = Raw::new();
    let asked = [("blksize", "9000"), ("windowsize", "50"), ("tsize", "0"), ("color", "red")];
    client.rrq(server.addr, "/f", &asked);
    let (reply, tid) = client.recv();
    let Ok(Packet::Oack(list)) = Packet::parse(&reply) else { panic!("expected an OACK") };
    let granted: Vec<_> = list.iter().collect();
    assert_eq!(granted, [("blksize", "1024"), ("tsize", "5000"), ("windowsize", "2")]);
    client.send(tid, &ack(0));
    let (one, _) = client.recv();
    let (two, _) = client.recv();
    assert!(
        matches!(Packet::parse(&one), Ok(Packet::Data { block: 1, data }) if data.len() == 1024)
    );
    assert!(matches!(Packet::parse(&two), Ok(Packet::Data { block: 2, .. })));
}

#[test]
fn full_pool_answers_server_busy() {
    let config = ServerConfig {
        queue_len: 1,
        timeout: Duration::from_secs(1),
        max_retries: 2,
        ..ServerConfig::default()
    };
    let mut server = TestServer::start(Model::Pool(1), config);
    std::fs::write(server.root.join("f"), pattern(2000)).unwrap();
    // Clients that never acknowledge: one keeps the worker busy, one may wait in the queue,
    // the third cannot be taken.
    let clients: Vec<Raw> = (0..3).map(|_| Raw::new()).collect();
    for client in &clients {
        client.rrq(server.addr, "f", &[]);
    }
    let busy = clients.iter().filter(|client| {
        let (reply, from) = client.recv();
        let busy = Packet::Error { code: ErrorCode::NOT_DEFINED, message: "server busy" };
        from == server.addr && Packet::parse(&reply) == Ok(busy)
    });
    assert!(busy.count() >= 1, "one request must be refused with 'server busy'");
    server.stop();
}

#[test]
fn event_loop_past_max_transfers_answers_server_busy() {
    for model in EVENT_MODELS {
        let config = ServerConfig { max_transfers: 1, ..ServerConfig::default() };
        let server = TestServer::start(model, config);
        std::fs::write(server.root.join("f"), pattern(2000)).unwrap();
        let (first, second) = (Raw::new(), Raw::new());
        first.rrq(server.addr, "f", &[]);
        let (data, tid) = first.recv();
        assert!(matches!(Packet::parse(&data), Ok(Packet::Data { block: 1, .. })), "{model:?}");
        second.rrq(server.addr, "f", &[]);
        let (reply, from) = second.recv();
        assert_eq!(from, server.addr, "{model:?}: refused by the listener");
        let busy = Packet::Error { code: ErrorCode::NOT_DEFINED, message: "server busy" };
        assert_eq!(Packet::parse(&reply), Ok(busy), "{model:?}");
        // The running transfer was not disturbed, and once it ends there is room again.
        for block in 1..4 {
            first.send(tid, &ack(block));
            let (next, _) = first.recv();
            let expected = block + 1;
            let parsed = Packet::parse(&next);
            assert!(matches!(parsed, Ok(Packet::Data { block, .. }) if block == expected));
        }
        first.send(tid, &ack(4));
        let mut out = Vec::new();
        get(server.addr, "f", &mut out, &ClientOptions::default()).expect("room again");
        assert!(out == pattern(2000));
    }
}

#[test]
fn shutdown_aborts_running_transfers_with_error_0() {
    for model in with_event(&[Model::Iterative, Model::Thread, Model::Pool(2)]) {
        // A long retransmission timeout: after DATA 1 the next thing to arrive is the abort.
        let config = ServerConfig { timeout: Duration::from_secs(4), ..ServerConfig::default() };
        let mut server = TestServer::start(model, config);
        std::fs::write(server.root.join("f"), pattern(5000)).unwrap();
        let client = Raw::new();
        client.rrq(server.addr, "f", &[]);
        let (data, tid) = client.recv();
        assert!(matches!(Packet::parse(&data), Ok(Packet::Data { block: 1, .. })), "{model:?}");
        server.stop();
        let (reply, from) = client.recv();
        assert_eq!(from, tid, "{model:?}");
        let expected =
            Packet::Error { code: ErrorCode::NOT_DEFINED, message: "server shutting down" };
        assert_eq!(Packet::parse(&reply), Ok(expected), "{model:?}");
    }
}

/// One address that floods requests (each asking for the longest timeout) gets "busy" past
/// its share, while a client from another address is served; the timeout it asked for is not
/// granted, so its abandoned transfers end within the server's own bound.
#[test]
fn a_flooding_address_cannot_keep_others_out() {
    // Not the iterative model: it serves one transfer at a time by design.
    for model in [Model::Thread, Model::Pool(16), EVENT_MODELS[0]] {
        let config = ServerConfig { max_per_client: 4, ..ServerConfig::default() };
        let server = TestServer::start(model, config);
        std::fs::write(server.root.join("f"), pattern(5000)).unwrap();
        let mut busy = 0;
        // Every socket stays open to the end: a closed one's port could come back for the next
        // request, which the server would rightly take for a retransmission and not answer.
        let mut flood = Vec::new();
        for _ in 0..20 {
            // Requests from 20 ports, all left unacknowledged.
            let loose = Raw::new();
            loose.rrq(server.addr, "f", &[("timeout", "255")]);
            let (packet, _) = loose.recv();
            if packet.starts_with(&[0, 5]) {
                busy += 1;
            } else {
                let oack_or_data = String::from_utf8_lossy(&packet).to_string();
                assert!(!oack_or_data.contains("timeout"), "timeout 255 was granted: {packet:?}");
            }
            flood.push(loose);
        }
        assert!(busy >= 20 - 4 - 1, "{model:?}: only {busy} of 20 refused");
        let other = Raw::from("127.0.0.2");
        other.rrq(server.addr, "f", &[]);
        let (packet, from) = other.recv();
        assert_eq!(&packet[..4], &[0, 3, 0, 1], "{model:?}: another address was not served");
        other.send(from, &ack(1));
    }
}

#[test]
fn a_new_request_from_the_same_port_replaces_its_dead_transfer() {
    // Not the iterative model: it serves one transfer at a time by design.
    for model in [Model::Thread, Model::Pool(4), EVENT_MODELS[0], EVENT_MODELS[2]] {
        let config = ServerConfig { max_per_client: 1, ..ServerConfig::default() };
        let server = TestServer::start(model, config);
        std::fs::write(server.root.join("a"), pattern(5000)).unwrap();
        let b = pattern(700);
        std::fs::write(server.root.join("b"), &b).unwrap();
        let client = Raw::new();
        client.rrq(server.addr, "a", &[]);
        let (first, old_tid) = client.recv();
        assert_eq!(&first[..4], &[0, 3, 0, 1], "{model:?}: DATA 1 of a");
        // The client moves on to another file from the same port without acknowledging:
        // with one transfer allowed per address, the new request is served all the same.
        client.rrq(server.addr, "b", &[]);
        let (packet, tid) = loop {
            let (packet, from) = client.recv();
            if from != old_tid {
                break (packet, from);
            }
            assert_eq!(&packet[..4], &[0, 3, 0, 1], "{model:?}: only a retransmission of a");
        };
        assert_eq!(Packet::parse(&packet), Ok(Packet::Data { block: 1, data: &b[..512] }));
        // The replaced transfer handed its place over, it did not add one: another port of
        // the same address is still over the limit while b runs.
        let other = Raw::new();
        other.rrq(server.addr, "b", &[]);
        let (refusal, _) = other.recv();
        assert!(
            matches!(Packet::parse(&refusal), Ok(Packet::Error { message, .. })
                if message.contains("too many transfers")),
            "{model:?}: {refusal:?}"
        );
        client.send(tid, &ack(1));
        let (second, _) = loop {
            let (packet, from) = client.recv();
            if from == tid {
                break (packet, from);
            }
        };
        assert_eq!(Packet::parse(&second), Ok(Packet::Data { block: 2, data: &b[512..] }));
        client.send(tid, &ack(2));
    }
}
