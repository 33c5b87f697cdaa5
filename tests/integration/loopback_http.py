"""A folder served over HTTP on loopback, in a thread: the dummy repositories, a head's boot tree."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


def serve_directory(directory: Path) -> http.server.ThreadingHTTPServer:
    """Serving until .shutdown(); its URL is http://127.0.0.1:<server.server_address[1]>/."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFiles, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
