//! Listings: ListObjectsV2 with `/` as delimiter, a page at a time, so a directory of any size
//! streams to the data connection with one page in memory. A store that pages for ever (a
//! continuation token it gave before, or more than [`MAX_PAGES`] pages) ends the listing with
//! an error rather than keeping a session (and a worker) busy for good.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use rusty_s3::{Method, S3Action};
use zocalo_proto::storage::DirStream;
use zocalo_proto::DirEntry;

use crate::client::{Client, SIGN_FOR};
use crate::{client, dir_metadata, file_metadata, time};

/// The most pages one listing reads: ten million entries at S3's 1,000 a page.
pub(crate) const MAX_PAGES: u32 = 10_000;

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
    /// A token the store gave before, kept at page 1, 2, 4, 8...: seeing it again means the
    /// listing goes round in a loop (Brent's cycle finding: any loop shows within twice its
    /// length, with one token kept).
    saved_token: Option<String>,
    pages: u32,
    done: bool,
}

impl Lister {
    pub(crate) fn new(client: Arc<Client>, prefix: String, page_size: usize) -> Lister {
        Lister { client, prefix, page_size, token: None, saved_token: None, pages: 0, done: false }
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
        self.pages += 1;
        self.token = parsed.next_continuation_token;
        self.done = self.token.is_none();
        if let Some(token) = &self.token {
            check_paging(self.pages, token, &mut self.saved_token, &self.prefix, &client.endpoint)?;
        }
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

/// An error when a listing that has read `pages` pages and is handed `token` for the next one
/// goes round in a loop or past [`MAX_PAGES`].
fn check_paging(
    pages: u32,
    token: &str,
    saved: &mut Option<String>,
    prefix: &str,
    endpoint: &str,
) -> io::Result<()> {
    let trouble = match saved {
        Some(saved) if saved == token => "gave a continuation token again",
        _ if pages >= MAX_PAGES => "gave more pages than allowed (10,000)",
        _ => {
            if pages.is_power_of_two() {
                *saved = Some(token.to_string());
            }
            return Ok(());
        }
    };
    Err(io::Error::other(format!(
        "S3 storage at {endpoint}: the listing of '{prefix}' {trouble}; stopped"
    )))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_paging_stops() {
        // A loop of any length is found: a, b, c, d, b, c, d, b...
        let mut first = None;
        let tokens = ["a", "b", "c", "d"].into_iter().chain(["b", "c", "d"].into_iter().cycle());
        let stopped = tokens.take(50).enumerate().find_map(|(i, token)| {
            check_paging(i as u32 + 1, token, &mut first, "p/", "h:1").err()
        });
        let err = stopped.expect("the loop was not found");
        assert!(err.to_string().contains("continuation token again"), "{err}");
        let mut first = None;
        for page in 1..MAX_PAGES {
            check_paging(page, &format!("t{page}"), &mut first, "p/", "h:1").unwrap();
        }
        let err = check_paging(MAX_PAGES, "last", &mut first, "p/", "h:1").unwrap_err();
        assert!(err.to_string().contains("more pages than allowed"), "{err}");
    }
}
