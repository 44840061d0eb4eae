"""Servers on 127.0.0.1 that never help: one that accepts and stays silent, one that says 503.

What an endpoint does while it hangs or restarts, for tests of how long a request is allowed
to take and how often it is tried; both count what reached them.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from types import TracebackType
from typing import ClassVar

__all__ = ["Answering503", "SilentServer"]


class SilentServer:
    """Accepts every TCP connection and never answers (a hung server, a black hole).

    With ``start``, each request gets those bytes first (say, a response's head and part of
    its body) and then silence: a server that stalls mid-answer.

    Example:
        >>> with SilentServer() as server:
        ...     socket.create_connection(("127.0.0.1", server.port)).close()
        ...     server.wait_for(1)
        >>> server.connections
        1
    """

    def __init__(self, start: bytes = b"") -> None:
        self._start = start
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._held: list[socket.socket] = []
        self._accepted = threading.Condition()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # shutdown() wakes the blocked accept() on Linux; close() alone does not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        for held in self._held:
            held.close()

    def wait_for(self, count: int, timeout: float = 5) -> None:
        """Block until ``count`` connections were accepted (the accept runs on a thread)."""
        with self._accepted:
            self._accepted.wait_for(lambda: self.connections >= count, timeout)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self._start:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(1 << 16)  # the request (small: these tests send no bodies)
                    conn.sendall(self._start)
            with self._accepted:
                self._held.append(conn)  # kept open: the client waits for the rest
                self.connections += 1
                self._accepted.notify_all()


class Answering503:
    """Answers every HTTP request with 503 in the dialect of ``service`` (``s3`` or ``gcs``).

    ``requests`` counts them: with SDK retries off, one per attempt the caller made.

    Example:
        >>> import urllib.request, urllib.error
        >>> with Answering503("gcs") as server:
        ...     try:
        ...         urllib.request.urlopen(server.endpoint_url + "/storage/v1/b/x")
        ...     except urllib.error.HTTPError as e:
        ...         print(e.code, server.requests)
        503 1
    """

    _BODIES: ClassVar[dict[str, tuple[str, bytes]]] = {
        "s3": (
            "application/xml",
            b"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>ServiceUnavailable</Code>"
            b"<Message>restarting</Message></Error>",
        ),
        "gcs": ("application/json", b'{"error": {"code": 503, "message": "restarting"}}'),
    }

    def __init__(self, service: str) -> None:
        content_type, body = self._BODIES[service]
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with owner._lock:
                    owner.requests += 1
                    owner.paths.append(f"{self.command} {self.path}")
                self.send_response(503)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass  # no line per request on the test's stderr

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.requests = 0
        self.paths: list[str] = []  # "GET /path?query", in the order they came
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Answering503:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
