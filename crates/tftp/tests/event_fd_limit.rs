//! select(2) cannot watch descriptors at or above FD_SETSIZE: the event loop on select must
//! answer "server busy" rather than start a transfer it could never hear, while poll and epoll
//! have no such limit.
//!
//! A file of its own (a process of its own): the test fills the descriptor table, which would
//! disturb any test running beside it.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use zocalo_tftp::packet::{emit_request_header, Packet};
use zocalo_tftp::{serve, Backend, DirStorage, ErrorCode, Mode, Model, ServerConfig};

const FD_SETSIZE: i32 = 1024;

struct Server {
    addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<()>>,
}

fn start(backend: Backend, root: &std::path::Path) -> Server {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let storage = Arc::new(DirStorage::new(root).unwrap());
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutdown);
    let config = ServerConfig::default();
    let model = Model::Event(backend);
    let thread = std::thread::spawn(move || serve(socket, storage, config, model, &flag));
    Server { addr, shutdown, thread }
}

impl Server {
    fn stop(self) {
        self.shutdown.store(true, Ordering::Relaxed);
        self.thread.join().expect("server panicked").expect("serve failed");
    }
}

fn client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket
}

/// Sends an RRQ for `f` and returns the first answer and where it came from.
fn request(client: &UdpSocket, server: SocketAddr) -> (Vec<u8>, SocketAddr) {
    let mut packet = Vec::new();
    emit_request_header(&mut packet, false, "f", Mode::Octet);
    client.send_to(&packet, server).unwrap();
    let mut buf = vec![0; 1024];
    let (len, from) = client.recv_from(&mut buf).expect("an answer");
    buf.truncate(len);
    (buf, from)
}

/// Opens files until the next descriptor would be FD_SETSIZE or more.
fn fill_descriptor_table() -> Vec<File> {
    let mut files = Vec::new();
    loop {
        let file = File::open("/dev/null").expect("RLIMIT_NOFILE above FD_SETSIZE");
        let fd = file.as_raw_fd();
        files.push(file);
        if fd >= FD_SETSIZE - 1 {
            return files;
        }
    }
}

#[test]
fn select_refuses_transfer_sockets_past_fd_setsize() {
    let root = std::env::temp_dir().join(format!("zocalo-tftp-fd-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("f"), b"hello").unwrap();
    let servers = [start(Backend::Select, &root), start(Backend::Poll, &root)];
    let clients = [client(), client(), client()];

    let filler = fill_descriptor_table();
    let (reply, from) = request(&clients[0], servers[0].addr);
    assert_eq!(from, servers[0].addr, "refused by the listener");
    let busy = Packet::Error { code: ErrorCode::NOT_DEFINED, message: "server busy" };
    assert_eq!(Packet::parse(&reply), Ok(busy));
    let (reply, _) = request(&clients[1], servers[1].addr);
    let data = Packet::Data { block: 1, data: b"hello" };
    assert_eq!(Packet::parse(&reply), Ok(data), "poll watches a high descriptor");
    drop(filler);

    let (reply, from) = request(&clients[2], servers[0].addr);
    assert_ne!(from, servers[0].addr, "a transfer socket of its own");
    assert_eq!(Packet::parse(&reply), Ok(data), "select serves once descriptors are low");
    for server in servers {
        server.stop();
    }
    let _ = std::fs::remove_dir_all(&root);
}
