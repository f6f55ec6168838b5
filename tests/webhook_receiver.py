"""A webhook receiver for the hook tests, run as a process of its own (stopped by PID):
`python3 webhook_receiver.py LOG [FAIL_FIRST]` listens on 127.0.0.1 on a port it picks,
prints `listening PORT`, and appends each POST as one JSON line to LOG (its headers and its
body). It answers 500 to the first FAIL_FIRST requests, 200 after; a body whose path ends in
`.refuse` gets `403` and the line `refused by the receiver`."""
from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log_path = sys.argv[1]
fail_first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
seen = [0]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        seen[0] += 1
        with open(log_path, "a") as log:
            log.write(json.dumps({"headers": dict(self.headers), "body": body.decode()}) + "\n")
        try:
            event = json.loads(body)
        except ValueError:
            event = {}
        if seen[0] <= fail_first:
            return self.answer(500, b"try again")
        if str(event.get("path", "")).endswith(".refuse"):
            return self.answer(403, b"refused by the receiver\n")
        self.answer(200, b"ok\n")

    def answer(self, code: int, body: bytes):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
