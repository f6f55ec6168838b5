//! The sending side: a server answering an RRQ, or a client doing a WRQ (put).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::time::Instant;

use super::{
    emit_oack, emit_request, error_code_for, fail, illegal, wire, Config, Outbox, Outcome, Start,
    Timer, Transfer, TransferError,
};
use crate::netascii;
use crate::options::{Options, Params};
use crate::packet::{emit_data, ErrorCode, Mode, OptionList, Packet};

/// Sends a file as DATA blocks, a window at a time, and follows the peer's ACKs.
///
/// Block numbers are kept as absolute `u64` counts and only wrapped to 16 bits on the wire, so
/// files of more than 65,535 blocks go through (the block after 65535 is 0).
#[derive(Debug)]
pub struct Sender<R> {
    source: BlockSource<R>,
    config: Config,
    params: Params,
    phase: Phase,
    is_client: bool,
    outbox: Outbox,
    /// Whole DATA packets for blocks `base..base + window.len()`.
    window: VecDeque<Vec<u8>>,
    /// Local (source) bytes each block of the window carries: less than the payload in
    /// netascii.
    source_lens: VecDeque<u64>,
    /// Netascii: whether the last block read ended in the first byte of a CR pair.
    after_cr: bool,
    /// Buffers of acknowledged blocks, reused for new ones.
    spare: Vec<Vec<u8>>,
    base: u64,
    next_send: u64,
    last_block: Option<u64>,
    acked_bytes: u64,
    total: Option<u64>,
    timer: Timer,
    outcome: Option<Outcome>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for ACK 0 (server after an OACK; client after a WRQ), or an OACK (client).
    AwaitStart { client: Option<Options> },
    /// Sending windows of DATA.
    Sending,
    /// Outcome known.
    Done,
}

impl<R: Read> Sender<R> {
    /// A sender reading `source`, netascii-encoding it if `mode` says so.
    pub fn new(source: R, mode: Mode, start: Start, config: Config, now: Instant) -> Self {
        let mut sender = Sender {
            source: BlockSource::new(source, mode),
            config,
            params: Options::default().params(config.timeout),
            phase: Phase::Done,
            is_client: matches!(start, Start::Client { .. }),
            outbox: Outbox::default(),
            window: VecDeque::new(),
            source_lens: VecDeque::new(),
            after_cr: false,
            spare: Vec::new(),
            base: 1,
            next_send: 1,
            last_block: None,
            acked_bytes: 0,
            total: None,
            timer: Timer::new(&config, now),
            outcome: None,
        };
        sender.begin(start, now);
        sender
    }

    fn begin(&mut self, start: Start, now: Instant) {
        match start {
            Start::Server { granted, total } => {
                self.total = total;
                self.params = granted.params(self.config.timeout);
                self.timer.timeout = self.params.timeout;
                if granted.is_empty() {
                    self.start_sending(now);
                } else {
                    self.outbox.set(|buf| emit_oack(buf, &granted));
                    self.phase = Phase::AwaitStart { client: None };
                }
            }
            Start::Client { filename, mode, requested } => {
                self.total = requested.tsize;
                self.outbox.set(|buf| emit_request(buf, true, &filename, mode, &requested));
                self.phase = Phase::AwaitStart { client: Some(requested) };
            }
        }
    }

    fn start_sending(&mut self, now: Instant) {
        self.phase = Phase::Sending;
        self.timer.progress(now);
        self.fill_window();
        self.next_send = self.base;
    }

    /// Reads blocks until the window is full or the last block is in it.
    fn fill_window(&mut self) {
        let blksize = usize::from(self.params.blksize);
        while self.window.len() < usize::from(self.params.windowsize) && self.last_block.is_none() {
            let block = self.base + self.window.len() as u64;
            let mut packet = self.spare.pop().unwrap_or_default();
            packet.clear();
            emit_data(&mut packet, wire(block), &[]);
            if let Err(err) = self.source.read_block(&mut packet, blksize) {
                let code = error_code_for(&err);
                self.fail(TransferError::Io(err), Some(code));
                return;
            }
            let payload = &packet[4..];
            if payload.len() < blksize {
                self.last_block = Some(block);
            }
            let source_len = match self.source.netascii {
                true => netascii::decoded_len(payload, &mut self.after_cr),
                false => payload.len(),
            };
            self.source_lens.push_back(source_len as u64);
            self.window.push_back(packet);
        }
    }

    fn handle_packet(&mut self, packet: Packet<'_>, now: Instant) {
        match (packet, self.phase) {
            (Packet::Ack { block: 0 }, Phase::AwaitStart { client }) => {
                if client.is_some() {
                    self.params = Options::default().params(self.config.timeout);
                }
                self.start_sending(now);
            }
            (Packet::Oack(list), Phase::AwaitStart { client: Some(requested) }) => {
                self.accept_oack(&requested, &list, now);
            }
            (Packet::Ack { block }, Phase::Sending) => self.handle_ack(block, now),
            // A repeated OACK after we started: the client's timer, not ours, answers it.
            (Packet::Oack(_), Phase::Sending) if self.is_client => {}
            (Packet::Error { code, message }, _) => {
                let err = TransferError::Peer { code, message: message.to_string() };
                self.fail(err, None);
            }
            (Packet::Ack { .. }, Phase::AwaitStart { .. }) => {}
            _ => self.fail(illegal("unexpected packet"), Some(ErrorCode::ILLEGAL_OPERATION)),
        }
    }

    fn accept_oack(&mut self, requested: &Options, list: &OptionList<'_>, now: Instant) {
        let granted = Options::from_list(list);
        if let Err(why) = requested.accept_oack(&granted, list) {
            let err = TransferError::Protocol {
                code: ErrorCode::OPTION_NEGOTIATION,
                message: why.into(),
            };
            return self.fail(err, Some(ErrorCode::OPTION_NEGOTIATION));
        }
        self.params = granted.params(self.config.timeout);
        self.timer.timeout = self.params.timeout;
        self.start_sending(now);
    }

    /// An ACK for a sent block of the window slides the window past it and (re)sends from
    /// there. Anything else, in particular a duplicate of an earlier ACK, is ignored.
    fn handle_ack(&mut self, block: u16, now: Instant) {
        let offset = u64::from(block.wrapping_sub(wire(self.base)));
        if offset >= self.next_send - self.base {
            return;
        }
        let acked = self.base + offset;
        for _ in 0..=offset {
            if let Some(packet) = self.window.pop_front() {
                self.spare.push(packet);
            }
            self.acked_bytes += self.source_lens.pop_front().unwrap_or(0);
        }
        self.base = acked + 1;
        if self.last_block == Some(acked) {
            self.finish();
            return;
        }
        self.timer.progress(now);
        self.fill_window();
        self.next_send = self.base;
    }

    fn finish(&mut self) {
        self.phase = Phase::Done;
        self.timer.stop();
        self.outcome = Some(Outcome::Complete { bytes: self.acked_bytes });
    }

    fn fail(&mut self, err: TransferError, code: Option<ErrorCode>) {
        self.phase = Phase::Done;
        fail(&mut self.outcome, &mut self.outbox, &mut self.timer, err, code);
    }
}

impl<R: Read> Transfer for Sender<R> {
    fn handle_datagram(&mut self, bytes: &[u8], now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        match Packet::parse(bytes) {
            Ok(packet) => self.handle_packet(packet, now),
            Err(err) => self.fail(illegal(&err.to_string()), Some(err.error_code())),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Done || !self.timer.expired(now) {
            return;
        }
        if !self.timer.retry(now) {
            return self.fail(TransferError::TimedOut, Some(ErrorCode::NOT_DEFINED));
        }
        match self.phase {
            Phase::AwaitStart { .. } => self.outbox.resend(),
            _ => self.next_send = self.base,
        }
    }

    fn poll_transmit(&mut self) -> Option<&[u8]> {
        if self.outbox.pending {
            return self.outbox.take();
        }
        if self.phase != Phase::Sending {
            return None;
        }
        let index = usize::try_from(self.next_send - self.base).ok()?;
        if index >= self.window.len() {
            return None;
        }
        self.next_send += 1;
        self.window.get(index).map(Vec::as_slice)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timer.deadline
    }

    fn abort(&mut self, message: &str) {
        self.fail(TransferError::Aborted(message.to_string()), Some(ErrorCode::NOT_DEFINED));
    }

    fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }

    fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }

    fn progress(&self) -> (u64, Option<u64>) {
        (self.acked_bytes, self.total)
    }
}

/// Reads a source into blocks, netascii-encoding it on the way if asked.
#[derive(Debug)]
struct BlockSource<R> {
    reader: R,
    netascii: bool,
    /// Encoded bytes not yet placed in a block (a CR LF pair may straddle two blocks).
    encoded: Vec<u8>,
    position: usize,
    raw: Vec<u8>,
    eof: bool,
}

impl<R: Read> BlockSource<R> {
    fn new(reader: R, mode: Mode) -> Self {
        BlockSource {
            reader,
            netascii: mode == Mode::Netascii,
            encoded: Vec::new(),
            position: 0,
            raw: Vec::new(),
            eof: false,
        }
    }

    /// Appends up to `blksize` bytes to `out`; fewer only at the end of the source.
    fn read_block(&mut self, out: &mut Vec<u8>, blksize: usize) -> io::Result<()> {
        let end = out.len() + blksize;
        if self.netascii {
            return self.read_encoded(out, end);
        }
        let start = out.len();
        out.resize(end, 0);
        let filled = read_full(&mut self.reader, &mut out[start..])?;
        out.truncate(start + filled);
        Ok(())
    }

    fn read_encoded(&mut self, out: &mut Vec<u8>, end: usize) -> io::Result<()> {
        while out.len() < end {
            if self.position < self.encoded.len() {
                let take = (end - out.len()).min(self.encoded.len() - self.position);
                out.extend_from_slice(&self.encoded[self.position..self.position + take]);
                self.position += take;
            } else if self.eof || !self.refill(end - out.len())? {
                break;
            }
        }
        Ok(())
    }

    /// Reads and encodes the next chunk; false at the end of the source.
    fn refill(&mut self, want: usize) -> io::Result<bool> {
        self.raw.resize(want.max(512), 0);
        let n = read_full(&mut self.reader, &mut self.raw)?;
        self.eof = n == 0;
        self.encoded.clear();
        self.position = 0;
        netascii::encode(&self.raw[..n], &mut self.encoded);
        Ok(n > 0)
    }
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}
