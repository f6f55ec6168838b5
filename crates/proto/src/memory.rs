//! An in-memory [`Storage`] for the core's script tests and fuzzing. Not for serving files.

use std::collections::BTreeMap;
use std::io::{self, Cursor, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::storage::{DirEntry, FileHandle, FileKind, Metadata, Storage, WriteMode};

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>),
    Dir,
}

/// A tree of files in a map from path to contents; `""` is the root directory.
#[derive(Debug, Clone)]
pub struct MemoryStorage {
    nodes: Arc<Mutex<BTreeMap<String, Node>>>,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(String::new(), Node::Dir);
        MemoryStorage { nodes: Arc::new(Mutex::new(nodes)) }
    }
}

fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

fn meta(node: &Node) -> Metadata {
    let (kind, size) = match node {
        Node::File(data) => (FileKind::File, data.len() as u64),
        Node::Dir => (FileKind::Dir, 0),
    };
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    Metadata { kind, size, modified, mode: 0o644, nlink: 1 }
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

impl MemoryStorage {
    /// Adds a file (and nothing else: its directory must exist).
    pub fn put(&self, path: &str, data: &[u8]) {
        self.lock().insert(path.to_string(), Node::File(data.to_vec()));
    }

    /// The contents of a file, if it exists.
    pub fn contents(&self, path: &str) -> Option<Vec<u8>> {
        match self.lock().get(path) {
            Some(Node::File(d)) => Some(d.clone()),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn require_dir(&self, path: &str) -> io::Result<()> {
        match self.lock().get(path) {
            Some(Node::Dir) => Ok(()),
            Some(_) => Err(io::ErrorKind::NotADirectory.into()),
            None => Err(not_found()),
        }
    }
}

impl Storage for MemoryStorage {
    fn metadata(&self, path: &str) -> io::Result<Metadata> {
        self.lock().get(path).map(meta).ok_or_else(not_found)
    }

    fn list(&self, path: &str) -> io::Result<Vec<DirEntry>> {
        self.require_dir(path)?;
        let nodes = self.lock();
        let entries = nodes
            .iter()
            .filter(|(p, _)| !p.is_empty() && parent(p) == path)
            .map(|(p, n)| DirEntry {
                name: p.rsplit('/').next().unwrap_or(p).into(),
                meta: meta(n),
                link: None,
            })
            .collect();
        Ok(entries)
    }

    fn open_read(&self, path: &str, offset: u64) -> io::Result<Box<dyn FileHandle>> {
        match self.lock().get(path) {
            Some(Node::File(d)) => {
                let mut cursor = Cursor::new(d.clone());
                cursor.set_position(offset);
                Ok(Box::new(MemoryFile { cursor, target: None }))
            }
            Some(Node::Dir) => Err(io::ErrorKind::IsADirectory.into()),
            None => Err(not_found()),
        }
    }

    fn open_write(&self, path: &str, mode: WriteMode) -> io::Result<Box<dyn FileHandle>> {
        self.require_dir(parent(path))?;
        let existing = match self.lock().get(path) {
            Some(Node::Dir) => return Err(io::ErrorKind::IsADirectory.into()),
            Some(Node::File(d)) => Some(d.clone()),
            None => None,
        };
        let (data, pos) = match (mode, existing) {
            (WriteMode::CreateNew, Some(_)) => return Err(io::ErrorKind::AlreadyExists.into()),
            (WriteMode::Append, Some(d)) => {
                let len = d.len() as u64;
                (d, len)
            }
            (WriteMode::At(off), Some(mut d)) => {
                d.truncate(off as usize);
                (d, off)
            }
            _ => (Vec::new(), 0),
        };
        let mut cursor = Cursor::new(data);
        cursor.set_position(pos);
        let target = Some((self.clone(), path.to_string()));
        Ok(Box::new(MemoryFile { cursor, target }))
    }

    fn mkdir(&self, path: &str) -> io::Result<()> {
        self.require_dir(parent(path))?;
        let mut nodes = self.lock();
        if nodes.contains_key(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        nodes.insert(path.to_string(), Node::Dir);
        Ok(())
    }

    fn rmdir(&self, path: &str) -> io::Result<()> {
        self.require_dir(path)?;
        let mut nodes = self.lock();
        if nodes.keys().any(|p| !p.is_empty() && parent(p) == path) {
            return Err(io::ErrorKind::DirectoryNotEmpty.into());
        }
        nodes.remove(path);
        Ok(())
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let mut nodes = self.lock();
        match nodes.get(path) {
            Some(Node::File(_)) => nodes.remove(path).map(drop).ok_or_else(not_found),
            Some(Node::Dir) => Err(io::ErrorKind::IsADirectory.into()),
            None => Err(not_found()),
        }
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.require_dir(parent(to))?;
        let mut nodes = self.lock();
        let node = nodes.remove(from).ok_or_else(not_found)?;
        nodes.insert(to.to_string(), node);
        Ok(())
    }
}

struct MemoryFile {
    cursor: Cursor<Vec<u8>>,
    target: Option<(MemoryStorage, String)>,
}

impl Read for MemoryFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.cursor.read(buf)
    }
}

impl Write for MemoryFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.cursor.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FileHandle for MemoryFile {
    fn finish(self: Box<Self>) -> io::Result<()> {
        if let Some((storage, path)) = self.target {
            storage.put(&path, &self.cursor.into_inner());
        }
        Ok(())
    }
}
