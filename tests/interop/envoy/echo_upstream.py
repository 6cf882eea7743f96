"""The upstream behind Envoy in the interop suite: answers every request with 200 and
a JSON body listing the request headers it received, in order, repeats included.

Usage: python echo_upstream.py READY_FILE [PORT]
Writes {"port": N} to READY_FILE once it listens on 127.0.0.1 (PORT, else a free one).
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({
            "method": self.command,
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *_):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0), Echo)
server.daemon_threads = True
ready = sys.argv[1]
with open(ready + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"port": server.server_address[1]}, f)
os.replace(ready + ".tmp", ready)
server.serve_forever()
