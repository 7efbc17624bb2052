"""Test stand-ins for the network: HTTP servers on 127.0.0.1 (static or scripted) and GitHub-style zips."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def serve_directory(directory: Path):
    """Serve ``directory`` at http://127.0.0.1:<port>/ for the duration of the block."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def github_style_zip(src: Path, archive: Path, top: str) -> Path:
    """Zip the files of ``src`` under one top-level folder ``top/``, as GitHub's archives are."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            zf.write(path, f"{top}/{path.relative_to(src).as_posix()}")
    return archive


MiB = 1 << 20


class ScriptedServer:
    """HTTP server on 127.0.0.1 answering from a script.

    ``script`` is a list of responses used in turn (the last one repeats), each one of
    ``("file", path)``, ``("bytes", data)``, ``(status_code,)``, ``("sleep", seconds, data)``
    or ``("truncate", data)`` (announces more bytes than it sends).
    """

    def __init__(self) -> None:
        self.script: list[tuple] = [(404,)]
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                i = len(server.requests)
                server.requests.append(self.path)
                action = server.script[min(i, len(server.script) - 1)]
                kind = action[0]
                if isinstance(kind, int):
                    self.send_error(kind)
                    return
                if kind == "file":
                    data = Path(action[1]).read_bytes()
                elif kind == "sleep":
                    time.sleep(action[1])
                    data = action[2]
                else:
                    data = action[1]
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                length = len(data) + (100 if kind == "truncate" else 0)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                try:
                    for start in range(0, len(data), MiB):
                        self.wfile.write(data[start : start + MiB])
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if kind == "truncate":
                    self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/archive.zip") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
