//! TFTP beside FTP: the same confined storage, the connectionless half of the notes.
//!
//! `zocalo serve --tftp ADDR` runs the TFTP server in a thread of its own; `zocalo tftp` runs it
//! alone. The transfer state machines and the server live in `zocalo-tftp`; this module adapts
//! the FTP storage to them ([`crate::models::Model::tftp`] maps the `--model` switch).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;

use zocalo_proto::{FileHandle, Storage, WriteMode};
use zocalo_tftp::{Model as TftpModel, ServerConfig, TftpStorage};

use super::Listener;
use crate::sys::shutdown::Shutdown;

/// The FTP storage (kernel-confined) seen through the TFTP storage trait.
pub struct StorageAdapter {
    storage: Arc<dyn Storage>,
}

impl StorageAdapter {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        StorageAdapter { storage }
    }
}

fn relative(path: &str) -> String {
    zocalo_proto::path::relative(&zocalo_proto::path::resolve("/", path)).to_string()
}

impl TftpStorage for StorageAdapter {
    fn open_read(&self, path: &str) -> io::Result<(Box<dyn Read + Send>, Option<u64>)> {
        let path = relative(path);
        let meta = self.storage.metadata(&path)?;
        if meta.kind != zocalo_proto::FileKind::File {
            return Err(io::ErrorKind::IsADirectory.into());
        }
        let file = self.storage.open_read(&path, 0)?;
        Ok((Box::new(TftpFile::new(file, false)), Some(meta.size)))
    }

    fn open_write(&self, path: &str) -> io::Result<Box<dyn Write + Send>> {
        let mut file = self.storage.open_write(&relative(path), WriteMode::Truncate)?;
        // The write request is accepted now: TFTP has no later moment for the upload to begin.
        file.begin()?;
        Ok(Box::new(TftpFile::new(file, true)))
    }
}

/// A file handle seen as a TFTP reader or writer. A write is committed (renamed into place,
/// or an S3 upload completed) by the one `flush` the TFTP receiver makes after the last block;
/// a transfer that fails or times out is dropped unflushed and replaces nothing. Counted in the
/// metrics when dropped: a read that reached the end, or a committed write, is a success.
struct TftpFile {
    file: Option<Box<dyn FileHandle>>,
    write: bool,
    complete: bool,
}

impl TftpFile {
    fn new(file: Box<dyn FileHandle>, write: bool) -> TftpFile {
        TftpFile { file: Some(file), write, complete: false }
    }
}

impl Read for TftpFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.as_mut().map_or(Ok(0), |f| f.read(buf))?;
        self.complete |= n == 0 && !buf.is_empty();
        Ok(n)
    }
}

impl Write for TftpFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.as_mut() {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("write after the upload was committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.take() {
            Some(mut f) => {
                f.flush()?;
                f.finish()?;
                self.complete = true;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Drop for TftpFile {
    fn drop(&mut self) {
        use crate::ops::metrics::Counter::*;
        crate::ops::metrics::inc(match (self.write, self.complete) {
            (false, true) => TftpReadOk,
            (false, false) => TftpReadFailed,
            (true, true) => TftpWriteOk,
            (true, false) => TftpWriteFailed,
        });
    }
}

/// Binds a TFTP socket.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind TFTP {addr}: {e}")))
}

/// Runs the TFTP server in a thread until `shutdown` fires.
pub fn spawn(
    socket: UdpSocket,
    storage: Arc<dyn Storage>,
    config: ServerConfig,
    model: TftpModel,
    shutdown: &Shutdown,
) -> io::Result<JoinHandle<()>> {
    let stop = shutdown.flag()?;
    let adapter: Arc<dyn TftpStorage> = Arc::new(StorageAdapter::new(storage));
    std::thread::Builder::new().name("zocalo-tftp".into()).spawn(move || {
        if let Err(e) = zocalo_tftp::serve(socket, adapter, config, model, &stop) {
            tracing::error!("TFTP server stopped: {e}");
        }
    })
}

/// In the `process` model the accept loop must stay single-threaded (it forks), so TFTP runs in
/// a process of its own, forked now while there is still only one thread.
pub fn fork(
    socket: UdpSocket,
    storage: Arc<dyn Storage>,
    config: ServerConfig,
    model: TftpModel,
    shutdown: &Shutdown,
    listeners: &[Listener],
) -> io::Result<()> {
    super::fork(listeners, || {
        spawn(socket, storage, config, model, shutdown)?
            .join()
            .map_err(|_| io::Error::other("tftp"))
    })
}
