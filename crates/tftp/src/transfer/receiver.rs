//! The receiving side: a server answering a WRQ, or a client doing an RRQ (get).

use std::io::Write;
use std::time::Instant;

use super::{
    emit_oack, emit_request, error_code_for, fail, illegal, wire, Config, Outbox, Outcome, Start,
    Timer, Transfer, TransferError,
};
use crate::netascii::Decoder;
use crate::options::{Options, Params};
use crate::packet::{emit_ack, ErrorCode, Mode, OptionList, Packet};

/// Writes DATA blocks to a sink in order and acknowledges them, one ACK per window.
///
/// After the final (short) block it acknowledges and then dallies for one timeout, answering a
/// repeated final block with the same ACK in case the first was lost (RFC 1350 section 6).
#[derive(Debug)]
pub struct Receiver<W> {
    sink: W,
    decoder: Option<Decoder>,
    scratch: Vec<u8>,
    config: Config,
    params: Params,
    phase: Phase,
    outbox: Outbox,
    /// Absolute number of the next block wanted.
    expected: u64,
    /// Blocks taken since the last ACK went out.
    since_ack: u16,
    /// Whether the current gap was already reported with an ACK.
    gap_reported: bool,
    bytes: u64,
    total: Option<u64>,
    timer: Timer,
    outcome: Option<Outcome>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Client: the request is out; an OACK or DATA 1 answers it.
    AwaitStart { requested: Options },
    /// Taking DATA blocks. `client` says whether a repeated OACK is to be re-acknowledged.
    Receiving { client: bool },
    /// Final ACK sent; answering repeats of the last block until the deadline.
    Dally { until: Instant },
    /// Nothing more to do.
    Done,
}

impl<W: Write> Receiver<W> {
    /// A receiver writing into `sink`, converting from netascii if `mode` says so.
    pub fn new(sink: W, mode: Mode, start: Start, config: Config, now: Instant) -> Self {
        let mut receiver = Receiver {
            sink,
            decoder: (mode == Mode::Netascii).then(Decoder::new),
            scratch: Vec::new(),
            config,
            params: Options::default().params(config.timeout),
            phase: Phase::Done,
            outbox: Outbox::default(),
            expected: 1,
            since_ack: 0,
            gap_reported: false,
            bytes: 0,
            total: None,
            timer: Timer::new(&config, now),
            outcome: None,
        };
        receiver.begin(start);
        receiver
    }

    fn begin(&mut self, start: Start) {
        match start {
            Start::Server { granted, total } => {
                self.total = total;
                self.set_params(granted.params(self.config.timeout));
                if granted.is_empty() {
                    self.outbox.set(|buf| emit_ack(buf, 0));
                } else {
                    self.outbox.set(|buf| emit_oack(buf, &granted));
                }
                self.phase = Phase::Receiving { client: false };
            }
            Start::Client { filename, mode, requested } => {
                self.outbox.set(|buf| emit_request(buf, false, &filename, mode, &requested));
                self.phase = Phase::AwaitStart { requested };
            }
        }
    }

    fn set_params(&mut self, params: Params) {
        self.params = params;
        self.timer.timeout = params.timeout;
    }

    fn handle_packet(&mut self, packet: Packet<'_>, now: Instant) {
        match (packet, self.phase) {
            (Packet::Oack(list), Phase::AwaitStart { requested }) => {
                self.accept_oack(&requested, &list, now);
            }
            (Packet::Data { block, data }, Phase::AwaitStart { .. }) => {
                self.phase = Phase::Receiving { client: true };
                self.handle_data(block, data, now);
            }
            (Packet::Data { block, data }, Phase::Receiving { .. }) => {
                self.handle_data(block, data, now);
            }
            (Packet::Data { block, .. }, Phase::Dally { .. }) => {
                if block == wire(self.expected - 1) {
                    self.outbox.resend();
                }
            }
            (Packet::Oack(_), Phase::Receiving { client: true }) if self.expected == 1 => {
                self.outbox.resend();
            }
            (Packet::Error { code, message }, _) => {
                let err = TransferError::Peer { code, message: message.to_string() };
                self.fail(err, None);
            }
            (Packet::Oack(_), Phase::Receiving { client: true } | Phase::Dally { .. }) => {}
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
        self.total = granted.tsize;
        self.set_params(granted.params(self.config.timeout));
        self.phase = Phase::Receiving { client: true };
        self.send_ack(0, now);
    }

    fn handle_data(&mut self, block: u16, data: &[u8], now: Instant) {
        if data.len() > usize::from(self.params.blksize) {
            let err = illegal("DATA block larger than the block size");
            return self.fail(err, Some(ErrorCode::ILLEGAL_OPERATION));
        }
        let ahead = block.wrapping_sub(wire(self.expected));
        if ahead == 0 {
            self.take_block(data, now);
        } else if ahead < self.params.windowsize {
            self.report_gap(now);
        } else if ahead == u16::MAX {
            // The previous block again: our ACK was lost, the sender timed out and resent.
            self.send_ack(self.expected - 1, now);
        }
    }

    fn take_block(&mut self, data: &[u8], now: Instant) {
        match self.write(data) {
            Ok(written) => self.bytes += written as u64,
            Err(err) => {
                let code = error_code_for(&err);
                return self.fail(TransferError::Io(err), Some(code));
            }
        }
        self.expected += 1;
        self.since_ack += 1;
        self.gap_reported = false;
        if data.len() < usize::from(self.params.blksize) {
            self.finish(now);
        } else if self.since_ack >= self.params.windowsize {
            self.send_ack(self.expected - 1, now);
        } else {
            self.timer.progress(now);
        }
    }

    /// RFC 7440: on a block past a gap, acknowledge the last block received in order, once, so
    /// that the sender restarts the window from the missing block.
    fn report_gap(&mut self, now: Instant) {
        if !self.gap_reported {
            self.gap_reported = true;
            self.send_ack(self.expected - 1, now);
        }
    }

    fn send_ack(&mut self, block: u64, now: Instant) {
        self.outbox.set(|buf| emit_ack(buf, wire(block)));
        self.since_ack = 0;
        self.timer.progress(now);
    }

    /// Writes a block to the sink; returns the local bytes written.
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let local = match &mut self.decoder {
            None => data,
            Some(decoder) => {
                self.scratch.clear();
                decoder.decode(data, &mut self.scratch);
                &self.scratch
            }
        };
        self.sink.write_all(local)?;
        Ok(local.len())
    }

    fn finish(&mut self, now: Instant) {
        if let Err(err) = self.flush_sink() {
            let code = error_code_for(&err);
            return self.fail(TransferError::Io(err), Some(code));
        }
        self.send_ack(self.expected - 1, now);
        self.outcome = Some(Outcome::Complete { bytes: self.bytes });
        self.phase = Phase::Dally { until: now + self.params.timeout };
        self.timer.stop();
    }

    fn flush_sink(&mut self) -> std::io::Result<()> {
        if let Some(decoder) = &mut self.decoder {
            self.scratch.clear();
            decoder.finish(&mut self.scratch);
            self.sink.write_all(&self.scratch)?;
            self.bytes += self.scratch.len() as u64;
        }
        self.sink.flush()
    }

    fn fail(&mut self, err: TransferError, code: Option<ErrorCode>) {
        self.phase = Phase::Done;
        fail(&mut self.outcome, &mut self.outbox, &mut self.timer, err, code);
    }
}

impl<W: Write> Transfer for Receiver<W> {
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
        if let Phase::Dally { until } = self.phase {
            if now >= until {
                self.phase = Phase::Done;
            }
            return;
        }
        if self.phase == Phase::Done || !self.timer.expired(now) {
            return;
        }
        if !self.timer.retry(now) {
            self.fail(TransferError::TimedOut, Some(ErrorCode::NOT_DEFINED));
        } else if self.expected > 1 && matches!(self.phase, Phase::Receiving { .. }) {
            // RFC 7440: on timeout, acknowledge the last block received in order, so that a
            // sender whose window was partly lost restarts right after it.
            let retries = self.timer.retries;
            self.send_ack(self.expected - 1, now);
            self.timer.retries = retries;
        } else {
            self.outbox.resend();
        }
    }

    fn poll_transmit(&mut self) -> Option<&[u8]> {
        self.outbox.take()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Dally { until } => Some(until),
            _ => self.timer.deadline,
        }
    }

    fn abort(&mut self, message: &str) {
        if self.outcome.is_some() {
            self.phase = Phase::Done;
            return;
        }
        self.fail(TransferError::Aborted(message.to_string()), Some(ErrorCode::NOT_DEFINED));
    }

    fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }

    fn is_finished(&self) -> bool {
        self.phase == Phase::Done && self.outcome.is_some()
    }

    fn progress(&self) -> (u64, Option<u64>) {
        (self.bytes, self.total)
    }
}
