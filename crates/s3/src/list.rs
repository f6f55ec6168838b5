//! Listings: ListObjectsV2 with `/` as delimiter, a page at a time, so a directory of any size
//! streams to the data connection with one page in memory.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use rusty_s3::{Method, S3Action};
use zocalo_proto::storage::DirStream;
use zocalo_proto::DirEntry;

use crate::client::{Client, SIGN_FOR};
use crate::{client, dir_metadata, file_metadata, time};

/// One page of a directory.
pub(crate) struct Page {
    /// The directory's own `dir/` marker was on this page.
    pub(crate) marker: bool,
    pub(crate) entries: Vec<DirEntry>,
}

/// Walks the pages under one prefix.
pub(crate) struct Lister {
    client: Arc<Client>,
    prefix: String,
    page_size: usize,
    token: Option<String>,
    done: bool,
}

impl Lister {
    pub(crate) fn new(client: Arc<Client>, prefix: String, page_size: usize) -> Lister {
        Lister { client, prefix, page_size, token: None, done: false }
    }

    /// The next page; empty once the listing is exhausted.
    pub(crate) fn page(&mut self) -> io::Result<Page> {
        if self.done {
            return Ok(Page { marker: false, entries: Vec::new() });
        }
        let client = &self.client;
        let mut action = client.bucket.list_objects_v2(Some(&client.credentials));
        action.with_prefix(self.prefix.as_str());
        action.with_delimiter("/");
        action.with_max_keys(self.page_size);
        if let Some(token) = &self.token {
            action.with_continuation_token(token.as_str());
        }
        let response = client.send(Method::Get, &action.sign(SIGN_FOR), &[], &[])?;
        let body = client::read_body(response)?;
        let parsed = rusty_s3::actions::ListObjectsV2::parse_response(&body)
            .map_err(|e| io::Error::other(format!("S3 ListObjectsV2 answer: {e}")))?;
        self.token = parsed.next_continuation_token;
        self.done = self.token.is_none();
        let mut page = Page { marker: false, entries: Vec::new() };
        for dir in parsed.common_prefixes {
            let name = dir.prefix.strip_prefix(&self.prefix).unwrap_or(&dir.prefix);
            let name = name.trim_end_matches('/');
            if !name.is_empty() {
                let (name, meta, link) = (name.to_string(), dir_metadata(), None);
                page.entries.push(DirEntry { name, meta, link });
            }
        }
        for object in parsed.contents {
            match object.key.strip_prefix(&self.prefix) {
                Some("") => page.marker = true,
                Some(name) if !name.contains('/') => {
                    let modified = object.last_modified.as_deref().and_then(time::parse_iso8601);
                    let meta = file_metadata(object.size.unwrap_or(0), modified);
                    page.entries.push(DirEntry { name: name.to_string(), meta, link: None });
                }
                _ => {}
            }
        }
        Ok(page)
    }
}

/// A directory being listed: the entries of the page in hand, then the next pages.
pub(crate) struct Listing {
    lister: Lister,
    pending: VecDeque<DirEntry>,
}

impl Listing {
    pub(crate) fn new(lister: Lister, first: Vec<DirEntry>) -> Listing {
        Listing { lister, pending: first.into() }
    }
}

impl DirStream for Listing {
    fn next_batch(&mut self, max: usize) -> io::Result<Vec<DirEntry>> {
        while self.pending.is_empty() && !self.lister.done {
            self.pending.extend(self.lister.page()?.entries);
        }
        let take = max.min(self.pending.len());
        Ok(self.pending.drain(..take).collect())
    }
}
