"""A local HTTP server standing in for Google Drive and lab web servers in the download tests.

Serves byte strings from memory on 127.0.0.1, honours `Range` (with `If-Range` against an ETag) like a
real file host, and can misbehave on purpose: cut a transfer short, ignore ranges, answer 404, or
dribble (a byte every few seconds, which never trips a read timeout).
Every request is logged, so a test can tell whether a download happened.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    cut: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the connection drops
    no_range: set[str] = field(default_factory=set)  # paths whose server ignores Range
    dribble: dict[str, float] = field(default_factory=dict)  # path -> seconds between single bytes
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                server._serve(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def gets(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == "/" + path.lstrip("/"))

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        key = path.lstrip("/")
        self.requests.append((path, h.headers.get("Range")))
        if key not in self.files:
            h.send_error(404, "File not found")
            return
        body = self.files[key]
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        if_range = h.headers.get("If-Range")
        if match and key not in self.no_range and (if_range is None or if_range == etag):
            start = int(match.group(1))
        h.send_response(206 if start else 200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body) - start))
        h.send_header("ETag", etag)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        h.end_headers()
        end = len(body)
        if key in self.cut:
            end = min(end, start + self.cut.pop(key))  # misbehave once, then serve normally
        if key in self.dribble:
            self._dribble(h, body[start:end], self.dribble[key])
            return
        h.wfile.write(body[start:end])
        h.wfile.flush()
        if end < len(body):
            h.close_connection = True

    def _dribble(self, h: BaseHTTPRequestHandler, data: bytes, every_s: float) -> None:
        """Send one byte every `every_s` seconds until the client hangs up (or the server closes)."""
        for i in range(len(data)):
            try:
                h.wfile.write(data[i : i + 1])
                h.wfile.flush()
            except OSError:  # the client gave up: what a dribbling test wants
                return
            time.sleep(every_s)
