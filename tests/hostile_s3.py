"""A hostile S3 service on loopback, for the tests of what a slow or broken store may cost the
server (issue 26, item 7). It is the adversary, not a stand-in for a store: the storage tests
themselves run against SeaweedFS (tests/seaweed.py). Requests are not checked for signatures.

What it does is chosen per run:

- listings: the start-up check (`max-keys=1`) and a directory probe (`max-keys=2`) get an
  empty answer; any other listing is `endless` (every page a new continuation token), `loop`
  (the same token every time) or `empty`;
- `GET trickle`: a 1 MiB body of which one byte comes every `trickle_every` seconds;
- uploads (`PUT`, `POST`): answered at once (`deaf_uploads` False) or never.

Every connection it has accepted is shut when it stops, so a handler waiting for ever ends.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUCKET = "hostile"
ENTRIES_PER_PAGE = 200


class HostileS3:
    def __init__(self, *, listing: str = "empty", trickle_every: float = 0.5,
                 deaf_uploads: bool = False):
        self.listing = listing
        self.trickle_every = trickle_every
        self.deaf_uploads = deaf_uploads
        self.lock = threading.Lock()
        self.pages = 0  # listing pages answered, the start-up check and probes not counted
        self.last_page = time.monotonic()
        self.bodies_open = 0  # trickling bodies still being written
        self.uploads_held = 0  # uploads waiting for an answer that never comes
        self.stopping = threading.Event()
        self.connections: list[socket.socket] = []
        store = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with store.lock:
                    store.connections.append(self.connection)

            def do_HEAD(self):
                key = self.key()
                if key == "trickle":
                    self.answer(200, b"", length=1 << 20, head=True)
                else:
                    self.answer(404, b"", head=True)

            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                if "list-type" in query:
                    return self.list_page(query)
                if self.key() == "trickle":
                    return self.trickle()
                self.answer(404, b"<Error><Code>NoSuchKey</Code></Error>")

            def do_PUT(self):
                self.upload()

            def do_POST(self):
                self.upload()

            def do_DELETE(self):
                self.answer(204, b"")

            def key(self) -> str:
                path = urllib.parse.urlsplit(self.path).path
                return urllib.parse.unquote(path.removeprefix(f"/{BUCKET}").lstrip("/"))

            def answer(self, status: int, body: bytes, *, length=None, head=False):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.send_header("Last-Modified", "Mon, 07 Dec 2026 10:00:00 GMT")
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def list_page(self, query):
                max_keys = int(query.get("max-keys", ["1000"])[0])
                token = query.get("continuation-token", [""])[0]
                prefix = query.get("prefix", [""])[0]
                if max_keys <= 2 or store.listing == "empty":
                    return self.answer(200, page_xml(prefix, [], None))
                with store.lock:
                    store.pages += 1
                    store.last_page = time.monotonic()
                    n = store.pages
                if store.listing == "loop":
                    next_token = "round-and-round"
                else:
                    next_token = f"page-{n}"
                names = [f"{prefix}{token or 'first'}-{i:04d}" for i in range(ENTRIES_PER_PAGE)]
                self.answer(200, page_xml(prefix, names, next_token))

            def trickle(self):
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 20))
                self.end_headers()
                with store.lock:
                    store.bodies_open += 1
                try:
                    for _ in range(1 << 20):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        if store.stopping.wait(store.trickle_every):
                            break
                except OSError:
                    pass  # the server hung up on the body: what the test waits for
                finally:
                    with store.lock:
                        store.bodies_open -= 1
                    self.close_connection = True

            def upload(self):
                if not store.deaf_uploads:
                    length = int(self.headers.get("Content-Length", "0"))
                    self.rfile.read(length)
                    self.send_response(200)
                    self.send_header("ETag", '"e"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with store.lock:
                    store.uploads_held += 1
                try:
                    store.stopping.wait(120)
                finally:
                    with store.lock:
                        store.uploads_held -= 1
                self.close_connection = True

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def location(self) -> str:
        return f"s3://127.0.0.1:{self.port}/{BUCKET}"

    def count(self, name: str) -> int:
        with self.lock:
            return getattr(self, name)

    def idle_for(self) -> float:
        with self.lock:
            return time.monotonic() - self.last_page

    def stop(self):
        self.stopping.set()
        self.httpd.shutdown()
        with self.lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.httpd.server_close()
        self.thread.join(10)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client (the server under test) hanging up is what these tests do


def page_xml(prefix: str, keys: list[str], token: str | None) -> bytes:
    contents = "".join(
        f"<Contents><Key>{k}</Key><LastModified>2026-12-07T10:00:00.000Z</LastModified>"
        f"<ETag>\"e\"</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass></Contents>"
        for k in keys)
    next_token = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
    truncated = "true" if token else "false"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{BUCKET}</Name><Prefix>{prefix}</Prefix><KeyCount>{len(keys)}</KeyCount>"
        f"<MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>{truncated}</IsTruncated>"
        f"{contents}{next_token}</ListBucketResult>").encode()
