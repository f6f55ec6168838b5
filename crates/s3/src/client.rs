//! One HTTP exchange with the S3 service: sign, send, retry what may be retried, and turn every
//! answer that is not a success into an [`io::Error`] whose kind the session's one error mapping
//! (`zocalo_proto::storage::error_reply`) understands.
//!
//! Signing is `rusty-s3`'s (a presigned URL: no I/O, no clock but the one we pass); the bytes go
//! through `ureq`, a blocking client, so a request runs on whatever thread calls it: inline in the
//! blocking models, on the worker pool in the event-loop models. Nothing here ever runs on an event
//! loop thread.

use std::io::{self, Read};
use std::time::Duration;

use rusty_s3::{Bucket, Credentials, Method, S3Action};
use ureq::http::{self, Response};
use ureq::Body;

/// How long a presigned URL stays valid: longer than any retry loop.
pub(crate) const SIGN_FOR: Duration = Duration::from_secs(15 * 60);

/// Attempts of one request when the service is throttling, failing (5xx) or refusing
/// connections, and the pauses between them (about 1.5 s in all before the error is reported).
const BACKOFF: [Duration; 3] =
    [Duration::from_millis(100), Duration::from_millis(400), Duration::from_millis(1000)];

/// The largest error body read to find the S3 error code.
const ERROR_BODY_MAX: u64 = 16 * 1024;

/// What every request of one storage shares: the connection pool, the bucket, the credentials.
pub(crate) struct Client {
    pub(crate) agent: ureq::Agent,
    pub(crate) bucket: Bucket,
    pub(crate) credentials: Credentials,
    /// `host:port`, named in error messages.
    pub(crate) endpoint: String,
    /// The storage's timeout: also the window of a body's minimum rate, and how long an upload
    /// waits for a share of the budget.
    pub(crate) timeout: Duration,
    /// The memory all uploads' part buffers share.
    pub(crate) budget: std::sync::Arc<crate::limits::Budget>,
}

/// A request body that can be sent again on a retry.
pub(crate) type Payload<'a> = &'a [u8];

impl Client {
    /// Sends one signed request and returns the response if its status is a success. Retries
    /// throttling, 5xx answers and failed connections with backoff; everything else is final.
    pub(crate) fn send(
        &self,
        method: Method,
        url: &url::Url,
        headers: &[(&str, &str)],
        body: Payload<'_>,
    ) -> io::Result<Response<Body>> {
        let mut attempt = 0;
        loop {
            let outcome = self.send_once(method, url, headers, body);
            let retry = match &outcome {
                Ok(response) => retryable_status(response.status().as_u16()),
                Err(err) => retryable_transport(err),
            };
            if !retry || attempt == BACKOFF.len() {
                return match outcome {
                    Ok(response) if response.status().is_success() => Ok(response),
                    Ok(response) => Err(self.status_error(response)),
                    Err(err) => Err(self.transport_error(err)),
                };
            }
            std::thread::sleep(BACKOFF[attempt]);
            attempt += 1;
        }
    }

    fn send_once(
        &self,
        method: Method,
        url: &url::Url,
        headers: &[(&str, &str)],
        body: Payload<'_>,
    ) -> Result<Response<Body>, ureq::Error> {
        let mut request = http::Request::builder().method(method.to_str()).uri(url.as_str());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body).map_err(ureq::Error::Http)?;
        self.agent.run(request)
    }

    /// The error for an answer that is not a success, with the S3 error code when the body has
    /// one.
    fn status_error(&self, response: Response<Body>) -> io::Error {
        let status = response.status().as_u16();
        let mut text = String::new();
        let _ = response.into_body().into_reader().take(ERROR_BODY_MAX).read_to_string(&mut text);
        status_to_error(status, error_code(&text).as_deref(), &self.endpoint)
    }

    /// CreateMultipartUpload: the new upload's id.
    pub(crate) fn create_multipart(&self, key: &str) -> io::Result<String> {
        let action = self.bucket.create_multipart_upload(Some(&self.credentials), key);
        let body = read_body(self.send(Method::Post, &action.sign(SIGN_FOR), &[], &[])?)?;
        let created = rusty_s3::actions::CreateMultipartUpload::parse_response(&body)
            .map_err(|e| io::Error::other(format!("S3 CreateMultipartUpload answer: {e}")))?;
        Ok(created.upload_id().to_string())
    }

    /// CompleteMultipartUpload of the parts with these ETags (in order); with `create_new`,
    /// only if the key does not exist yet (`If-None-Match: *`).
    pub(crate) fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
        create_new: bool,
    ) -> io::Result<()> {
        let etags = etags.iter().map(String::as_str);
        let mut action =
            self.bucket.complete_multipart_upload(Some(&self.credentials), key, upload_id, etags);
        let headers: &[(&str, &str)] = match create_new {
            true => &[("if-none-match", "*")],
            false => &[],
        };
        for (name, value) in headers {
            action.headers_mut().insert(*name, *value);
        }
        let url = action.sign(SIGN_FOR);
        let body = action.body();
        let answer = self.send(Method::Post, &url, headers, body.as_bytes())?;
        self.body_error(&read_body(answer)?, "complete the upload")
    }

    /// AbortMultipartUpload, best effort: the parts of a failed upload must not linger.
    pub(crate) fn abort_multipart(&self, key: &str, upload_id: &str) {
        let action = self.bucket.abort_multipart_upload(Some(&self.credentials), key, upload_id);
        let _ = self.send(Method::Delete, &action.sign(SIGN_FOR), &[], &[]);
    }

    /// CopyObject and CompleteMultipartUpload may answer 200 and report a failure in the body.
    pub(crate) fn body_error(&self, body: &str, what: &str) -> io::Result<()> {
        match body.contains("<Error>") {
            true => Err(io::Error::other(format!(
                "S3 storage at {} could not {what} ({})",
                self.endpoint,
                error_code(body).unwrap_or_default()
            ))),
            false => Ok(()),
        }
    }

    fn transport_error(&self, err: ureq::Error) -> io::Error {
        let kind = match &err {
            ureq::Error::Io(e) => return annotate(e, &self.endpoint),
            ureq::Error::Timeout(_) => io::ErrorKind::TimedOut,
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                io::ErrorKind::ConnectionRefused
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, format!("S3 storage at {} unreachable: {err}", self.endpoint))
    }
}

/// Reads an answer's (small) body as text.
pub(crate) fn read_body(response: Response<Body>) -> io::Result<String> {
    let mut text = String::new();
    response.into_body().into_reader().take(1 << 20).read_to_string(&mut text)?;
    Ok(text)
}

/// Throttled (429, 503 SlowDown) or failing (5xx): worth another try.
fn retryable_status(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

/// A connection that could not be made or broke before an answer; a timeout is not retried, so
/// that a dead storage costs one timeout and not four.
fn retryable_transport(err: &ureq::Error) -> bool {
    match err {
        ureq::Error::ConnectionFailed => true,
        ureq::Error::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// A transport error keeps its kind (so a read timeout stays a timeout) and names the storage.
pub(crate) fn annotate(err: &io::Error, endpoint: &str) -> io::Error {
    let kind = match err.kind() {
        // Never let a transport problem read as "no such file".
        io::ErrorKind::NotFound => io::ErrorKind::Other,
        kind => kind,
    };
    io::Error::new(kind, format!("S3 storage at {endpoint}: {err}"))
}

/// The `<Code>` of an S3 error body.
pub(crate) fn error_code(body: &str) -> Option<String> {
    let start = body.find("<Code>")? + "<Code>".len();
    let end = body[start..].find("</Code>")? + start;
    Some(body[start..end].to_string())
}

/// Maps an S3 answer to the error kinds the session turns into replies: 404 missing (550), 403
/// denied (550), 412 exists (550, STOU's conditional put), 416 a REST past the end (554),
/// everything else a local error with the status and code (451).
pub(crate) fn status_to_error(status: u16, code: Option<&str>, endpoint: &str) -> io::Error {
    use io::ErrorKind::*;
    let code_text = code.map(|c| format!(" ({c})")).unwrap_or_default();
    let kind = match (status, code) {
        (404, Some("NoSuchBucket")) => Other,
        (404, _) => NotFound,
        (403, _) => PermissionDenied,
        (412, _) => AlreadyExists,
        (416, _) => return zocalo_proto::storage::rest_past_end(),
        (400, Some("EntityTooLarge")) => StorageFull,
        (400, Some("InvalidObjectName" | "KeyTooLongError")) => InvalidFilename,
        (507, _) => StorageFull,
        _ => Other,
    };
    io::Error::new(kind, format!("S3 storage at {endpoint} answered {status}{code_text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_kinds() {
        let body =
            "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>x</Message></Error>";
        assert_eq!(error_code(body).as_deref(), Some("NoSuchKey"));
        assert_eq!(error_code("garbage"), None);
        let kind = |status, code| status_to_error(status, code, "h:1").kind();
        assert_eq!(kind(404, Some("NoSuchKey")), io::ErrorKind::NotFound);
        assert_eq!(kind(404, Some("NoSuchBucket")), io::ErrorKind::Other);
        assert_eq!(kind(403, None), io::ErrorKind::PermissionDenied);
        assert_eq!(kind(412, None), io::ErrorKind::AlreadyExists);
        assert_eq!(kind(503, Some("SlowDown")), io::ErrorKind::Other);
        let err = status_to_error(416, None, "h:1");
        assert_eq!(zocalo_proto::storage::error_reply(&err).0, 554);
        let err = status_to_error(500, Some("InternalError"), "h:1");
        let (code, text) = zocalo_proto::storage::error_reply(&err);
        assert_eq!(code, 451);
        assert!(text.contains("500 (InternalError)"), "{text}");
    }

    #[test]
    fn transport_problems_never_read_as_missing_files() {
        let err = annotate(&io::Error::from(io::ErrorKind::NotFound), "h:1");
        assert_ne!(err.kind(), io::ErrorKind::NotFound);
        assert!(retryable_status(503) && retryable_status(429) && !retryable_status(404));
    }
}
