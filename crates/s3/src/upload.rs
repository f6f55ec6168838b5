//! STOR on object storage: a multipart upload that streams.
//!
//! Bytes fill a part buffer; a full part goes to one uploader thread while the next part fills,
//! so an upload holds at most two parts in memory and the data connection keeps flowing while a
//! part is on its way. The buffers of all uploads together stay within the storage's budget
//! (`crate::limits::Budget`): a buffer takes its share as it fills, and the share goes back
//! once its part has been sent. A file smaller than one part is sent in a single PUT. The
//! object appears only when [`FileHandle::finish`] completes the upload: an upload that fails
//! or is abandoned never replaces the old object, and its parts are aborted (on a thread of its
//! own, so dropping a handle never blocks the caller on the network).
//!
//! Parts start at [`FIRST_PART`] and double every thousand parts, so S3's limit of 10,000 parts
//! reaches past its 5 TiB object limit (8 MiB × 1000 × (1 + 2 + … + 512) ≈ 8 TiB) while the
//! largest part stays under S3's 5 GiB part limit.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use rusty_s3::{Method, S3Action};
use zocalo_proto::FileHandle;

use crate::client::{Client, SIGN_FOR};
use crate::limits::{Share, STEP};

/// The size of the first thousand parts.
pub const FIRST_PART: usize = 8 * 1024 * 1024;

/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u16 = 10_000;

/// The size of part `number` (counting from 1) of an upload whose first parts are `first`.
pub fn part_size(first: usize, number: u16) -> usize {
    first << ((number.saturating_sub(1) / 1000).min(9))
}

/// An object being written; see the module docs.
pub(crate) struct Upload {
    client: Arc<Client>,
    key: String,
    /// STOU: the object must not exist when the upload completes (`If-None-Match: *`).
    create_new: bool,
    first_part: usize,
    buf: Vec<u8>,
    /// The budget `buf` may fill (None until it starts to fill).
    share: Option<Share>,
    /// The number the part in `buf` will get.
    next_part: u16,
    multipart: Option<Multipart>,
}

/// A part on its way to the uploader: its number, its bytes, and their share of the budget.
type Part = (u16, Vec<u8>, Option<Share>);

/// A multipart upload under way, and the thread that sends its parts in order.
struct Multipart {
    upload_id: String,
    parts: Option<SyncSender<Part>>,
    /// Returns the ETags of the parts, in order, or the first error.
    uploader: Option<JoinHandle<io::Result<Vec<String>>>>,
}

impl Upload {
    pub(crate) fn new(client: Arc<Client>, key: String, create_new: bool, first: usize) -> Upload {
        Upload {
            client,
            key,
            create_new,
            first_part: first,
            buf: Vec::new(),
            share: None,
            next_part: 1,
            multipart: None,
        }
    }

    fn part_capacity(&self) -> usize {
        part_size(self.first_part, self.next_part)
    }

    /// How many more bytes the buffer may take: its share of the budget, taken [`STEP`] at a
    /// time (waiting for one up to the storage's timeout) when it is used up.
    fn room(&mut self, want: usize) -> io::Result<usize> {
        let held = self.share.as_ref().map_or(0, |s| s.bytes() as usize);
        if held > self.buf.len() {
            return Ok(want.min(held - self.buf.len()));
        }
        let more = STEP.max(want).min(self.part_capacity() - held);
        let share = self.client.budget.take(more as u64, self.client.timeout)?;
        match &mut self.share {
            Some(held) => held.join(share),
            None => self.share = Some(share),
        }
        Ok(want.min(held + more - self.buf.len()))
    }

    /// Hands the full buffer to the uploader, starting the multipart upload on the first part.
    fn send_part(&mut self) -> io::Result<()> {
        if self.next_part > MAX_PARTS {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "object too large for S3"));
        }
        if self.multipart.is_none() {
            self.multipart = Some(self.start()?);
        }
        let (part, share) = (std::mem::take(&mut self.buf), self.share.take());
        let number = self.next_part;
        self.next_part += 1;
        let multipart = self.multipart.as_mut().expect("started above");
        let sent = multipart.parts.as_ref().map(|tx| tx.send((number, part, share)));
        match sent {
            Some(Ok(())) => Ok(()),
            // The uploader stopped: it failed, and says why when joined.
            _ => Err(multipart.join().err().unwrap_or_else(|| io::Error::other("upload stopped"))),
        }
    }

    fn start(&self) -> io::Result<Multipart> {
        let upload_id = self.client.create_multipart(&self.key)?;
        let (tx, rx) = sync_channel::<Part>(0);
        let (client, key, id) = (self.client.clone(), self.key.clone(), upload_id.clone());
        let uploader =
            std::thread::Builder::new().name("zocalo-s3-upload".into()).spawn(move || {
                let mut etags = Vec::new();
                // The part's share of the budget goes back once it is sent (or failed).
                for (number, part, _share) in rx {
                    etags.push(upload_part(&client, &key, &id, number, &part)?);
                }
                Ok(etags)
            })?;
        Ok(Multipart { upload_id, parts: Some(tx), uploader: Some(uploader) })
    }

    /// A small object in one request.
    fn put_whole(&self) -> io::Result<()> {
        let client = &self.client;
        let mut action = client.bucket.put_object(Some(&client.credentials), &self.key);
        if self.create_new {
            action.headers_mut().insert("if-none-match", "*");
        }
        let url = action.sign(SIGN_FOR);
        let headers: &[(&str, &str)] = match self.create_new {
            true => &[("if-none-match", "*")],
            false => &[],
        };
        client.send(Method::Put, &url, headers, &self.buf).map(drop)
    }

    fn complete(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        let mut multipart = self.multipart.take().expect("complete needs a multipart upload");
        let etags = match multipart.join() {
            Ok(etags) => etags,
            Err(err) => {
                multipart.abort_in_background(self.client.clone(), self.key.clone());
                return Err(err);
            }
        };
        let client = &self.client;
        let result =
            client.complete_multipart(&self.key, &multipart.upload_id, &etags, self.create_new);
        if result.is_err() {
            multipart.abort_in_background(self.client.clone(), self.key.clone());
        }
        result
    }
}

impl Multipart {
    /// Stops the uploader after the parts already handed over and returns their ETags.
    fn join(&mut self) -> io::Result<Vec<String>> {
        self.parts = None;
        match self.uploader.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("S3 upload thread panicked")),
            None => Err(io::Error::other("S3 upload already stopped")),
        }
    }

    /// Aborts the upload so its parts do not linger, without making the caller wait.
    fn abort_in_background(mut self, client: Arc<Client>, key: String) {
        let spawned = std::thread::Builder::new().name("zocalo-s3-abort".into()).spawn(move || {
            let _ = self.join();
            client.abort_multipart(&key, &self.upload_id);
        });
        drop(spawned);
    }
}

fn upload_part(
    client: &Client,
    key: &str,
    id: &str,
    number: u16,
    part: &[u8],
) -> io::Result<String> {
    let action = client.bucket.upload_part(Some(&client.credentials), key, number, id);
    let response = client.send(Method::Put, &action.sign(SIGN_FOR), &[], part)?;
    let etag = response.headers().get("etag").and_then(|v| v.to_str().ok());
    etag.map(str::to_string)
        .ok_or_else(|| io::Error::other(format!("S3 storage at {} gave no ETag", client.endpoint)))
}

impl Write for Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let room = self.part_capacity() - self.buf.len();
        let take = self.room(data.len().min(room))?;
        if self.buf.capacity() == 0 {
            // Pages of a large allocation are only backed once written to.
            self.buf.reserve_exact(self.part_capacity());
        }
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == self.part_capacity() {
            self.send_part()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Upload {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl FileHandle for Upload {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        match self.multipart.is_some() {
            true => self.complete(),
            false => self.put_whole(),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(multipart) = self.multipart.take() {
            multipart.abort_in_background(self.client.clone(), self.key.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_past_the_largest_object() {
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size(FIRST_PART, n) as u64).sum();
        assert!(total > 5 << 40, "10,000 parts reach {total} bytes");
        assert!(part_size(FIRST_PART, MAX_PARTS) <= 5 << 30);
        assert_eq!(part_size(FIRST_PART, 1), FIRST_PART);
        assert_eq!(part_size(FIRST_PART, 1000), FIRST_PART);
        assert_eq!(part_size(FIRST_PART, 1001), 2 * FIRST_PART);
    }
}
