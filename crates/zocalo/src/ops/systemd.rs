//! The two things systemd asks of a service, done by hand (each is a few system calls):
//! readiness notification (`Type=notify`: a datagram to `$NOTIFY_SOCKET`) and socket
//! activation (listeners handed over as descriptors 3, 4, ... with `$LISTEN_FDS`), as
//! sd_notify(3) and sd_listen_fds(3) describe them. Without those variables both do nothing.

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;

/// Tells the service manager something (`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=...`);
/// nothing when not started by one. Failures are ignored: the manager may be gone.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            UnixAddr::from_abstract_name(name.as_bytes())
        }
        None => UnixAddr::from_pathname(&path),
    };
    if let (Ok(addr), Ok(sock)) = (addr, UnixDatagram::unbound()) {
        let _ = sock.send_to_addr(state.as_bytes(), &addr);
    }
}

/// `READY=1` once serving, naming the main process.
pub fn ready() {
    notify(&format!("READY=1\nMAINPID={}", std::process::id()));
}

/// A listener handed over by socket activation, and whether it is for implicit FTPS (its
/// `FileDescriptorName=` is `ftps`).
pub struct Inherited {
    pub sock: TcpListener,
    pub implicit_tls: bool,
}

/// The listening sockets systemd (or `systemd-socket-activate`) passed, if any. The variables
/// are removed so that nothing started later takes them for its own.
pub fn listeners() -> io::Result<Vec<Inherited>> {
    let pid = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<RawFd>().ok());
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called at start-up, before any thread is spawned.
        unsafe { std::env::remove_var(var) };
    }
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(Vec::new());
    };
    if pid != std::process::id() || count <= 0 {
        return Ok(Vec::new());
    }
    let names: Vec<&str> = names.split(':').collect();
    let mut out = Vec::new();
    for i in 0..count {
        let fd = LISTEN_FDS_START + i;
        if !is_listening_stream(fd) {
            return Err(io::Error::other(format!(
                "socket activation: descriptor {fd} is not a listening TCP socket"
            )));
        }
        // SAFETY: systemd handed this descriptor to this process, which owns it from here on.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: as above; checked to be a listening stream socket.
        let sock = unsafe { TcpListener::from_raw_fd(fd) };
        let implicit_tls = names.get(i as usize).is_some_and(|n| *n == "ftps");
        out.push(Inherited { sock, implicit_tls });
    }
    Ok(out)
}

fn is_listening_stream(fd: RawFd) -> bool {
    let get = |option| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid pointers to an int and its length.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    get(libc::SO_TYPE) == Some(libc::SOCK_STREAM) && get(libc::SO_ACCEPTCONN) == Some(1)
}
