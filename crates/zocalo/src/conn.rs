//! The per-connection driver shared by the blocking models (iterative, process, thread, pool).
//!
//! One thread serves one client with a poll(2) over at most three descriptors: the control
//! connection, the data connection of a running transfer, and the server's stop signal. So both
//! of FTP's channels stay live (ABOR, STAT and NOOP are answered mid-transfer) without a second
//! thread per transfer.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zocalo_proto::session::{Action, Config, Outcome, Session};

use crate::data::{DataTask, Step};
use crate::net;
use crate::shutdown::Shutdown;

/// Everything a connection needs from the server.
pub struct Ctx {
    pub config: Arc<Config>,
    pub passive_ports: Option<RangeInclusive<u16>>,
    pub idle_timeout: Duration,
    pub data_timeout: Duration,
    /// How long running transfers may go on after a stop is asked for.
    pub grace: Duration,
    pub shutdown: Shutdown,
}

/// Serves one client until it leaves; never panics on what the client sends.
pub fn serve(stream: TcpStream, ctx: &Ctx) {
    let Ok(mut conn) = Conn::new(stream, ctx) else {
        return;
    };
    while conn.turn() {}
    tracing::debug!(peer = %conn.peer, "session ended");
}

struct Conn<'a> {
    ctx: &'a Ctx,
    control: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    session: Session,
    passive: Option<TcpListener>,
    task: Option<DataTask>,
    wait: Option<Step>,
    last_activity: Instant,
    data_activity: Instant,
    wake_at: Option<Instant>,
    stop_by: Option<Instant>,
    closed: bool,
}

impl<'a> Conn<'a> {
    fn new(control: TcpStream, ctx: &'a Ctx) -> io::Result<Self> {
        let (peer, local) = (control.peer_addr()?, control.local_addr()?);
        control.set_nonblocking(true)?;
        let _ = control.set_nodelay(true);
        let session = Session::new(ctx.config.clone(), peer, local);
        let now = Instant::now();
        Ok(Conn {
            ctx,
            control,
            peer,
            local,
            session,
            passive: None,
            task: None,
            wait: None,
            last_activity: now,
            data_activity: now,
            wake_at: None,
            stop_by: None,
            closed: false,
        })
    }

    /// One round: flush replies, carry out actions, wait for the next event. False when done.
    fn turn(&mut self) -> bool {
        if !self.flush_and_act() {
            return false;
        }
        self.wait_for_events();
        self.flush_and_act()
    }

    fn flush_and_act(&mut self) -> bool {
        loop {
            if self.flush().is_err() {
                self.abort_task();
                return false;
            }
            let Some(action) = self.session.poll_action() else {
                break;
            };
            self.act(action);
        }
        if self.stop_by.is_some() && self.session.is_idle() {
            self.session.handle_shutdown();
            let _ = self.flush();
            return false;
        }
        !self.closed
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::OpenPassive => {
                let opened = net::open_passive(self.local.ip(), self.ctx.passive_ports.as_ref());
                let addr = opened
                    .as_ref()
                    .map_err(|e| io::Error::new(e.kind(), e.to_string()));
                let result = addr.and_then(|l| l.local_addr());
                self.passive = opened.ok();
                self.session.handle_passive_opened(result);
            }
            Action::ClosePassive => self.passive = None,
            Action::Transfer(t) => {
                self.data_activity = Instant::now();
                match DataTask::new(t, self.passive.take(), self.local, self.peer.ip()) {
                    Ok(task) => {
                        self.task = Some(task);
                        self.step_task();
                    }
                    Err(outcome) => self.session.handle_transfer_done(outcome),
                }
            }
            Action::Abort => {
                if self.task.take().is_some() {
                    self.wait = None;
                    self.session.handle_transfer_done(Outcome::Aborted);
                }
            }
            Action::Sleep(d) => self.wake_at = Some(Instant::now() + d),
            Action::StartTls => self.session.handle_shutdown(),
            Action::Close => self.closed = true,
        }
    }

    fn step_task(&mut self) {
        let Some(task) = self.task.as_mut() else {
            return;
        };
        match task.step() {
            Step::Finished(outcome) => {
                self.last_activity = Instant::now();
                self.task = None;
                self.wait = None;
                self.session.handle_transfer_done(outcome);
            }
            wait => self.wait = Some(wait),
        }
    }

    fn abort_task(&mut self) {
        self.task = None;
        self.wait = None;
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.session.pending_output().is_empty() {
            match self.control.write(self.session.pending_output()) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.session.advance_output(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let fd = self.control.as_raw_fd();
                    if !poll_one(fd, libc::POLLOUT, self.ctx.idle_timeout)? {
                        return Err(ErrorKind::TimedOut.into());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn wait_for_events(&mut self) {
        let mut fds = [pollfd(-1, 0); 3];
        let control_events = if self.session.input_room() > 0 {
            libc::POLLIN
        } else {
            0
        };
        fds[0] = pollfd(self.control.as_raw_fd(), control_events);
        if let Some(Step::Wait { fd, writable }) = self.wait {
            fds[1] = pollfd(
                fd,
                if writable {
                    libc::POLLOUT
                } else {
                    libc::POLLIN
                },
            );
        }
        if self.stop_by.is_none() {
            fds[2] = pollfd(self.ctx.shutdown.fd(), libc::POLLIN);
        }
        let deadline = self.deadline();
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // SAFETY: `fds` is a valid array of three pollfd; negative fds are ignored by poll(2).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout_ms(timeout)) };
        if n < 0 {
            return;
        }
        if fds[2].revents != 0 {
            self.stop_by = Some(Instant::now() + self.ctx.grace);
        }
        if fds[1].revents != 0 {
            self.data_activity = Instant::now();
            self.step_task();
        }
        if fds[0].revents != 0 {
            self.read_control();
        }
        self.fire_timers();
    }

    fn read_control(&mut self) {
        let mut buf = [0u8; 4096];
        let room = self.session.input_room().min(buf.len());
        match self.control.read(&mut buf[..room]) {
            Ok(0) => {
                self.abort_task();
                self.closed = true;
            }
            Ok(n) => {
                self.last_activity = Instant::now();
                self.session.handle_input(&buf[..n]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => {
                self.abort_task();
                self.closed = true;
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let idle = self
            .session
            .is_idle()
            .then(|| self.last_activity + self.ctx.idle_timeout);
        let data = self
            .task
            .as_ref()
            .map(|_| self.data_activity + self.ctx.data_timeout);
        [idle, data, self.wake_at, self.stop_by]
            .into_iter()
            .flatten()
            .min()
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        if self.wake_at.is_some_and(|t| t <= now) {
            self.wake_at = None;
            self.session.handle_wakeup();
        }
        if let Some(task) = &self.task {
            if self.data_activity + self.ctx.data_timeout <= now {
                let outcome = if task.is_connecting() {
                    Outcome::NoConnection
                } else {
                    Outcome::ConnectionLost
                };
                self.abort_task();
                self.session.handle_transfer_done(outcome);
            }
        }
        if self.stop_by.is_some_and(|t| t <= now) && self.task.is_some() {
            self.abort_task();
            self.session.handle_transfer_done(Outcome::ShuttingDown);
        }
        if self.session.is_idle() && self.last_activity + self.ctx.idle_timeout <= now {
            self.session.handle_idle_timeout();
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        Some(d) => {
            d.as_millis().min(i32::MAX as u128) as libc::c_int
                + i32::from(d.subsec_nanos() % 1_000_000 != 0)
        }
        None => -1,
    }
}

/// Waits for one event on one descriptor; false on timeout.
pub fn poll_one(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = pollfd(fd, events);
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms(Some(timeout))) };
        if n >= 0 {
            return Ok(n == 1);
        }
        let err = io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
