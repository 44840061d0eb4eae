"""GCS's documented resumable-upload protocol, in front of fake-gcs-server.

fake-gcs-server (the bundled v1.54) does not implement session recovery: a status query
(``Content-Range: bytes */*``) publishes whatever it holds, and a re-sent chunk is appended a
second time. Real GCS does neither. Tests that retry individual chunks (our Backoff does)
put this small server between the client and fake-gcs-server: it keeps upload sessions
itself, answers status queries with 308 + ``Range``, places chunks at their Content-Range
offset and publishes the finished object with one ``uploadType=multipart`` request upstream,
the one kind of upload on which fake-gcs-server checks ``ifGenerationMatch`` (it ignores it on
media and resumable uploads, where GCS checks it).
Every other request is relayed unchanged.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.support.gcs import GCSServer


@dataclass
class _Session:
    bucket: str
    name: str
    query: dict[str, str]
    content_type: str
    data: bytearray = field(default_factory=bytearray)
    result: tuple[int, bytes] | None = None  # the final answer, once the object is published
    lock: threading.Lock = field(default_factory=threading.Lock)


_CONTENT_RANGE = re.compile(r"bytes (?:\*|(\d+)-(\d+))/(\*|\d+)$")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class ResumableSessions:
    """GCS's resumable-upload protocol in front of fake-gcs-server; other requests are relayed.

    Chunks land at their Content-Range offset, status queries get 308 + ``Range`` (or the
    final answer again once the upload finished), a DELETE cancels (499), and the last chunk
    publishes the object with one ``uploadType=multipart`` request (the kind on which
    fake-gcs-server honours preconditions such as ``ifGenerationMatch=0``).

    Two hooks play a server that misbehaves: :meth:`expire_at_last_chunk`, and
    :attr:`rewrite`, which may change the body of every relayed answer.
    """

    def __init__(self, upstream: GCSServer) -> None:
        parts = urlsplit(upstream.endpoint_url)
        assert parts.hostname and parts.port
        self.upstream = (parts.hostname, parts.port)
        self.sessions: dict[str, _Session] = {}
        self.status_queries = 0
        # Called as rewrite(method, path, body) on each relayed answer: returns the body sent.
        self.rewrite: Callable[[str, str, bytes], bytes] | None = None
        self._expiring = 0  # last chunks still to meet a forgotten session
        shim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body go in two writes

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                shim._handle(self)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda *args: None  # type: ignore[method-assign]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> ResumableSessions:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def expire_at_last_chunk(self, count: int = 1) -> None:
        """The next ``count`` last chunks (those naming the total) find their session gone.

        Their answer is 404 and nothing is published: a session that expired before its last
        chunk arrived.
        """
        self._expiring += count

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        url = urlsplit(req.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path.startswith("/upload/") and query.get("uploadType") == "resumable":
            if req.command == "POST" and "upload_id" not in query:
                return self._start(req, url.path, query, body)
            if req.command == "PUT":
                return self._put(req, query.get("upload_id", ""), body)
            if req.command == "DELETE":  # cancel: GCS answers 499 and forgets the session
                self.sessions.pop(query.get("upload_id", ""), None)
                return self._reply(req, 499, b"")
        status, headers, payload = self._upstream(req.command, req.path, body, dict(req.headers))
        if self.rewrite is not None:
            payload = self.rewrite(req.command, req.path, payload)
        self._reply(req, status, payload, headers)

    def _start(
        self, req: BaseHTTPRequestHandler, path: str, query: dict[str, str], body: bytes
    ) -> None:
        bucket = path.split("/")[5]  # /upload/storage/v1/b/<bucket>/o
        name = query.get("name") or json.loads(body or b"{}")["name"]
        upload_id = uuid.uuid4().hex
        self.sessions[upload_id] = _Session(
            bucket=bucket,
            name=name,
            query={k: v for k, v in query.items() if k.startswith("if")},
            content_type=req.headers.get("x-upload-content-type", "application/octet-stream"),
        )
        location = (
            f"http://{req.headers['Host']}/upload/storage/v1/b/{bucket}/o?"
            f"uploadType=resumable&upload_id={upload_id}"
        )
        self._reply(req, 200, b"", {"Location": location})

    def _put(self, req: BaseHTTPRequestHandler, upload_id: str, body: bytes) -> None:
        session = self.sessions.get(upload_id)
        match = _CONTENT_RANGE.match(req.headers.get("Content-Range", ""))
        if session is None or match is None:
            return self._reply(req, 404 if session is None else 400, b"")
        first, last, total = match.groups()
        if total != "*" and self._expiring:
            self._expiring -= 1
            self.sessions.pop(upload_id, None)
            return self._reply(req, 404, b"")
        with session.lock:
            self.status_queries += first is None and total == "*" and not body
            if session.result is not None:
                return self._reply(req, *session.result, {"Content-Type": "application/json"})
            if first is not None:
                start, end = int(first), int(last)
                if start > len(session.data) or end - start + 1 != len(body):
                    return self._reply(req, 400, b"bad chunk")
                session.data[start:] = body
            if total != "*" and int(total) == len(session.data):
                status, payload = self._publish(session)
                if status in (200, 201, 412):
                    session.result = (status, payload)
                return self._reply(req, status, payload, {"Content-Type": "application/json"})
            headers = {"Range": f"bytes=0-{len(session.data) - 1}"} if session.data else {}
            self._reply(req, 308, b"", headers)

    def _publish(self, session: _Session) -> tuple[int, bytes]:
        """One multipart upload of the whole object: fake-gcs-server checks preconditions
        (``ifGenerationMatch``) on those, not on media or resumable uploads."""
        boundary = uuid.uuid4().hex
        metadata = json.dumps({"name": session.name, "contentType": session.content_type})
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
                f"{metadata}\r\n--{boundary}\r\nContent-Type: {session.content_type}\r\n\r\n".encode(),
                bytes(session.data),
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        status, _, payload = self._upstream(
            "POST",
            f"/upload/storage/v1/b/{session.bucket}/o?"
            + urlencode({"uploadType": "multipart", **session.query}),
            body,
            {"Content-Type": f"multipart/related; boundary={boundary}"},
        )
        return status, payload

    def _upstream(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            conn.request(method, path, body=body if body or method != "GET" else None, headers=sent)
            response = conn.getresponse()
            payload = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
            return response.status, kept, payload
        finally:
            conn.close()

    @staticmethod
    def _reply(
        req: BaseHTTPRequestHandler,
        status: int,
        payload: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        req.send_response(status)
        for name, value in (headers or {}).items():
            req.send_header(name, value)
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(payload)
