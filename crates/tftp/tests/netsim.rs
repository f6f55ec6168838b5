//! The transfer state machines in a simulated network (after smoltcp's `tests/netsim.rs`).
//!
//! A seeded xorshift RNG drops, duplicates and delays (so reorders) datagrams; time is virtual.
//! Every run checks that the receiver got exactly the bytes sent, and that a duplicate ACK never
//! made the sender transmit a DATA block (the Sorcerer's Apprentice bug).

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Cursor, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use zocalo_tftp::options::{negotiate, Direction, Limits};
use zocalo_tftp::transfer::Config;
use zocalo_tftp::{Mode, Options, Outcome, Packet, Receiver, Sender, Start, Transfer};

/// xorshift64*: small, seeded, good enough to schedule losses.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 56) as u8).collect()
    }
}

/// A `Write` whose contents the test can read after the machine that owns it is gone.
#[derive(Clone, Default)]
struct SharedSink(Rc<RefCell<Vec<u8>>>);

impl Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    download: bool,
    size: usize,
    blksize: Option<u16>,
    windowsize: Option<u16>,
    loss: f64,
    duplicate: f64,
    reorder: bool,
    seed: u64,
}

impl Scenario {
    fn new(download: bool, size: usize) -> Self {
        Scenario {
            download,
            size,
            blksize: None,
            windowsize: None,
            loss: 0.0,
            duplicate: 0.0,
            reorder: true,
            seed: 1,
        }
    }
}

#[derive(Debug, Default)]
struct Report {
    data_sent: u64,
    duplicate_acks: u64,
    data_after_duplicate_ack: u64,
    events: u64,
    sender_complete: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Client,
    Server,
}

type Flight = Reverse<(Duration, u64, Side, Vec<u8>)>;

struct Net {
    rng: Rng,
    loss: f64,
    duplicate: f64,
    reorder: bool,
    queue: BinaryHeap<Flight>,
    seq: u64,
}

impl Net {
    /// Sends `bytes` towards `to`: maybe lost, maybe twice, 1 ms late, or with reordering 1 to
    /// 20 ms late.
    fn send(&mut self, now: Duration, to: Side, bytes: &[u8]) {
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let jitter = if self.reorder { self.rng.next() % 19_000 } else { 0 };
            let delay = Duration::from_micros(1000 + jitter);
            self.seq += 1;
            self.queue.push(Reverse((now + delay, self.seq, to, bytes.to_vec())));
        }
    }
}

/// Builds the server's machine from the first request that reaches it.
type MakeServer = Box<dyn FnMut(&[u8], Instant) -> Box<dyn Transfer>>;

struct Sim {
    base: Instant,
    now: Duration,
    net: Net,
    client: Box<dyn Transfer>,
    server: Option<Box<dyn Transfer>>,
    make_server: MakeServer,
    sender_side: Side,
    recent_acks: VecDeque<u16>,
    report: Report,
}

impl Sim {
    fn run(mut self) -> (Report, Box<dyn Transfer>, Option<Box<dyn Transfer>>) {
        self.flush(Side::Client, false);
        while !self.finished() {
            self.report.events += 1;
            assert!(self.report.events < 10_000_000, "simulation does not converge");
            let Some(next) = self.next_event() else { break };
            self.now = self.now.max(next);
            self.deliver_due();
            self.fire_timers();
        }
        (self.report, self.client, self.server)
    }

    fn finished(&self) -> bool {
        self.client.is_finished() && self.server.as_ref().is_none_or(|s| s.is_finished())
    }

    fn next_event(&self) -> Option<Duration> {
        let packet = self.net.queue.peek().map(|Reverse((at, ..))| *at);
        let timers = [Some(&self.client), self.server.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|m| m.poll_timeout())
            .map(|at| at - self.base);
        packet.into_iter().chain(timers).min()
    }

    fn deliver_due(&mut self) {
        while self.net.queue.peek().is_some_and(|Reverse((at, ..))| *at <= self.now) {
            let Some(Reverse((_, _, to, bytes))) = self.net.queue.pop() else {
                return;
            };
            self.deliver(to, &bytes);
        }
    }

    fn deliver(&mut self, to: Side, bytes: &[u8]) {
        let now = self.base + self.now;
        let duplicate_ack = to == self.sender_side && self.note_ack(bytes);
        let request = matches!(Packet::parse(bytes), Ok(Packet::Rrq(_) | Packet::Wrq(_)));
        match (to, &mut self.server) {
            (Side::Client, _) => self.client.handle_datagram(bytes, now),
            // Requests go to the listening port: a repeated one does not reach the transfer.
            (Side::Server, Some(_)) if request => {}
            (Side::Server, Some(server)) => server.handle_datagram(bytes, now),
            (Side::Server, None) if request => self.server = Some((self.make_server)(bytes, now)),
            (Side::Server, None) => {}
        }
        self.flush(to, duplicate_ack);
    }

    /// Records an ACK arriving at the sender; true if the same ACK arrived recently.
    fn note_ack(&mut self, bytes: &[u8]) -> bool {
        let Ok(Packet::Ack { block }) = Packet::parse(bytes) else {
            return false;
        };
        let seen = self.recent_acks.contains(&block);
        self.recent_acks.push_back(block);
        if self.recent_acks.len() > 256 {
            self.recent_acks.pop_front();
        }
        self.report.duplicate_acks += u64::from(seen);
        seen
    }

    fn fire_timers(&mut self) {
        let now = self.base + self.now;
        for side in [Side::Client, Side::Server] {
            let due = self.machine(side).and_then(|m| m.poll_timeout()).is_some_and(|t| t <= now);
            if due {
                if let Some(machine) = self.machine(side) {
                    machine.handle_timeout(now);
                }
                self.flush(side, false);
            }
        }
    }

    fn machine(&mut self, side: Side) -> Option<&mut Box<dyn Transfer>> {
        match side {
            Side::Client => Some(&mut self.client),
            Side::Server => self.server.as_mut(),
        }
    }

    /// Sends whatever `side` has to send; counts DATA, and DATA caused by a duplicate ACK.
    fn flush(&mut self, side: Side, after_duplicate_ack: bool) {
        let to = match side {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        };
        let mut out = Vec::new();
        if let Some(machine) = self.machine(side) {
            while let Some(packet) = machine.poll_transmit() {
                out.push(packet.to_vec());
            }
        }
        for packet in out {
            if matches!(Packet::parse(&packet), Ok(Packet::Data { .. })) {
                self.report.data_sent += 1;
                self.report.data_after_duplicate_ack += u64::from(after_duplicate_ack);
            }
            self.net.send(self.now, to, &packet);
        }
    }
}

fn config(loss: f64) -> Config {
    let max_retries = if loss > 0.1 { 40 } else { 10 };
    Config { timeout: Duration::from_secs(1), max_retries, first_answer: None }
}

fn limits() -> Limits {
    Limits { max_blksize: 65464, max_windowsize: 64, max_timeout: 10 }
}

/// What the server does with a request, as the real server does it (minus storage).
fn server_for(
    request: &[u8],
    file: Vec<u8>,
    sink: SharedSink,
    cfg: Config,
    now: Instant,
) -> Box<dyn Transfer> {
    let (req, download) = match Packet::parse(request) {
        Ok(Packet::Rrq(req)) => (req, true),
        Ok(Packet::Wrq(req)) => (req, false),
        other => panic!("not a request: {other:?}"),
    };
    let requested = Options::from_list(&req.options);
    if download {
        let size = Some(file.len() as u64);
        let granted = negotiate(&requested, req.mode, Direction::Read { size }, &limits());
        let start = Start::Server { granted, total: size };
        Box::new(Sender::new(Cursor::new(file), req.mode, start, cfg, now))
    } else {
        let granted = negotiate(&requested, req.mode, Direction::Write, &limits());
        let start = Start::Server { granted, total: requested.tsize };
        Box::new(Receiver::new(sink, req.mode, start, cfg, now))
    }
}

fn simulate(sc: Scenario, file: &[u8], mode: Mode) -> (Report, Vec<u8>) {
    let base = Instant::now();
    let cfg = config(sc.loss);
    let requested = Options {
        blksize: sc.blksize,
        windowsize: sc.windowsize,
        tsize: Some(if sc.download { 0 } else { file.len() as u64 }),
        timeout: None,
    };
    let start = Start::Client { filename: "file".into(), mode, requested };
    let sink = SharedSink::default();
    let client: Box<dyn Transfer> = if sc.download {
        Box::new(Receiver::new(sink.clone(), mode, start, cfg, base))
    } else {
        Box::new(Sender::new(Cursor::new(file.to_vec()), mode, start, cfg, base))
    };
    let (server_file, server_sink) = (file.to_vec(), sink.clone());
    let sim = Sim {
        base,
        now: Duration::ZERO,
        net: Net {
            rng: Rng(sc.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            loss: sc.loss,
            duplicate: sc.duplicate,
            reorder: sc.reorder,
            queue: BinaryHeap::new(),
            seq: 0,
        },
        client,
        server: None,
        make_server: Box::new(move |req, now| {
            server_for(req, server_file.clone(), server_sink.clone(), cfg, now)
        }),
        sender_side: if sc.download { Side::Server } else { Side::Client },
        recent_acks: VecDeque::new(),
        report: Report::default(),
    };
    let (mut report, mut client, server) = sim.run();
    let received = sink.0.borrow().clone();
    let receiver_done = received.len() == file.len() || mode == Mode::Netascii;
    report.sender_complete = check_outcomes(&mut *client, server, receiver_done, sc);
    (report, received)
}

/// The receiver must complete. The sender may time out only if its last ACK was lost after the
/// receiver finished dallying (TFTP's unacknowledged last ACK), which we accept.
fn check_outcomes(
    client: &mut dyn Transfer,
    server: Option<Box<dyn Transfer>>,
    receiver_done: bool,
    sc: Scenario,
) -> bool {
    let mut server = server.expect("the request reached the server");
    let (sender, receiver) = match sc.download {
        true => (server.take_outcome(), client.take_outcome()),
        false => (client.take_outcome(), server.take_outcome()),
    };
    assert!(matches!(receiver, Some(Outcome::Complete { .. })), "{sc:?}: receiver {receiver:?}");
    match sender {
        Some(Outcome::Complete { .. }) => true,
        other => {
            assert!(receiver_done && sc.loss > 0.0, "{sc:?}: sender {other:?}");
            false
        }
    }
}

fn run_checked(sc: Scenario) -> Report {
    let file = Rng(sc.seed + 7).bytes(sc.size);
    let (report, received) = simulate(sc, &file, Mode::Octet);
    assert!(
        received == file,
        "{sc:?}: received bytes differ ({} vs {})",
        received.len(),
        file.len()
    );
    assert_eq!(report.data_after_duplicate_ack, 0, "{sc:?}: Sorcerer's Apprentice");
    report
}

#[test]
fn lossless_transfers_send_each_block_once() {
    for download in [true, false] {
        for (size, blksize, windowsize) in [
            (0, None, None),
            (512, None, None),
            (100_000, Some(1024), Some(8)),
            (4096, Some(8), Some(3)),
        ] {
            let sc =
                Scenario { blksize, windowsize, reorder: false, ..Scenario::new(download, size) };
            let report = run_checked(sc);
            let blocks = size as u64 / u64::from(blksize.unwrap_or(512)) + 1;
            assert_eq!(report.data_sent, blocks, "{sc:?}");
        }
    }
}

#[test]
fn loss_duplication_and_reordering_sweep() {
    let (mut duplicates_seen, mut runs, mut senders_complete) = (0, 0, 0);
    for (i, loss) in [0.01, 0.05, 0.15, 0.3].into_iter().enumerate() {
        for windowsize in [None, Some(4), Some(16)] {
            for download in [true, false] {
                for seed in 1..=3 {
                    let sc = Scenario {
                        loss,
                        duplicate: 0.1,
                        windowsize,
                        seed: seed + 10 * i as u64,
                        ..Scenario::new(download, 60_000 + seed as usize * 333)
                    };
                    let report = run_checked(sc);
                    duplicates_seen += report.duplicate_acks;
                    runs += 1;
                    senders_complete += u32::from(report.sender_complete);
                }
            }
        }
    }
    assert!(duplicates_seen > 100, "too few duplicate ACKs: {duplicates_seen}");
    // A sender may miss the final ACK (TFTP cannot fix that), but rarely.
    assert!(senders_complete * 10 >= runs * 9, "{senders_complete} of {runs} senders complete");
}

#[test]
fn duplicated_acks_alone_never_resend() {
    let sc = Scenario { duplicate: 0.5, windowsize: Some(1), ..Scenario::new(true, 51_200) };
    let report = run_checked(sc);
    assert!(report.duplicate_acks > 20, "{report:?}");
    assert_eq!(report.data_sent, 101, "one DATA per block despite duplicate ACKs: {report:?}");
}

#[test]
fn block_numbers_roll_over() {
    // 65,536 full blocks and a short one: block numbers wrap from 65535 to 0.
    let size = 65_536 * 512 + 100;
    for (download, windowsize, loss) in [(true, None, 0.001), (false, Some(16), 0.002)] {
        let sc = Scenario {
            windowsize,
            loss,
            duplicate: 0.001,
            seed: 5,
            ..Scenario::new(download, size)
        };
        let report = run_checked(sc);
        assert!(report.data_sent >= 65_537, "{report:?}");
    }
}

#[test]
fn netascii_round_trips_through_the_machines() {
    let text = b"line one\nline two\r\nbare\rcr\n".repeat(200);
    for download in [true, false] {
        for loss in [0.0, 0.1] {
            let sc =
                Scenario { loss, duplicate: 0.05, blksize: Some(8), ..Scenario::new(download, 0) };
            let (report, received) = simulate(sc, &text, Mode::Netascii);
            assert_eq!(received, text, "{sc:?}");
            assert_eq!(report.data_after_duplicate_ack, 0);
        }
    }
}
