#!/usr/bin/env python3
"""throttle-proxy.py PORT RATE: an HTTP proxy for apt on 127.0.0.1:PORT whose
responses, all connections together, flow at no more than RATE bytes per
second (a slow mirror). Plain HTTP only (apt's `http://` sources); prints
'listening' once it accepts connections."""
import http.server
import sys
import threading
import time
import urllib.error
import urllib.request

PORT = int(sys.argv[1])
RATE = float(sys.argv[2])
CHUNK = 16 * 1024


class Bucket:
    """A token bucket shared by every response: RATE bytes per second."""

    def __init__(self, rate):
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = time.monotonic()

    def take(self, n):
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
            wait = self.next_free - now
        if wait > 0:
            time.sleep(wait)


BUCKET = Bucket(RATE)


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self, head_only):
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("proxy-connection", "connection", "host")
        }
        request = urllib.request.Request(self.path, headers=headers, method=self.command)
        try:
            upstream = urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as e:
            upstream = e
        except OSError as e:
            self.send_error(502, str(e))
            return
        with upstream:
            self.send_response(upstream.status)
            for k, v in upstream.headers.items():
                if k.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                    self.send_header(k, v)
            length = upstream.headers.get("Content-Length")
            if length is None and not head_only:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if head_only:
                return
            while True:
                chunk = upstream.read(CHUNK)
                if not chunk:
                    break
                BUCKET.take(len(chunk))
                self.wfile.write(chunk)

    def do_GET(self):
        self.forward(False)

    def do_HEAD(self):
        self.forward(True)


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Proxy)
server.daemon_threads = True
print("listening", flush=True)
server.serve_forever()
