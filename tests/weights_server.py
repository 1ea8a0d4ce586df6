"""Test helpers for the weights registry: a temporary registry and a local HTTP server.

The server listens on 127.0.0.1 only, serves one payload, honours `Range: bytes=N-`
(unless told not to), can drop the connection mid-file, and records each Range header.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PAYLOAD = bytes(range(256)) * 2048  # 512 KiB: several reads, still instant


class PayloadServer(http.server.ThreadingHTTPServer):
    payload = PAYLOAD
    honour_range = True
    cut_after: int | None = None  # bytes sent before the connection drops, as on a flaky line

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.ranges: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/tiny.pth"


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    server: PayloadServer

    def do_GET(self) -> None:
        data = self.server.payload
        requested = self.headers.get("Range")
        self.server.ranges.append(requested)
        start = int(requested.removeprefix("bytes=").rstrip("-")) if requested and self.server.honour_range else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        end = len(data) if self.server.cut_after is None else start + self.server.cut_after
        self.wfile.write(data[start:end])

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


@contextmanager
def serving() -> Iterator[PayloadServer]:
    server = PayloadServer()
    # A short poll keeps shutdown() from waiting the default half second.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused, as when offline."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/tiny.pth"


def entry_for(name: str, data: bytes, **fields: Any) -> dict[str, Any]:
    """A registry entry describing `data`; `fields` override the defaults."""
    return {
        "name": name,
        "variant": "gopro",
        "description": f"test checkpoint {name}",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "filename": f"{name}.pth",
        **fields,
    }


def write_registry(folder: Path, *entries: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "registry.json"
    path.write_text(json.dumps({"models": list(entries)}))
    return path
