"""Fault-injecting, request-counting, bandwidth-limiting HTTP/1.1 proxy for tests.

Runs on 127.0.0.1 (free port) in front of a plain-http upstream (moto_server, fake-gcs-server),
one thread per client connection, each paired with its own keep-alive upstream connection.
Headers (including ``Host``) are relayed unchanged, except ``Expect``: the proxy answers
``100 Continue`` itself and drops upstream 1xx responses.

Faults make the real SDK clients raise the errors they raise in production (a reset, a 503, a
body cut short, a stall, an answer lost after the server acted), without patching them.
"""

from __future__ import annotations

import contextlib
import enum
import io
import itertools
import random
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from optuna_cas.testing._http import (
    CHUNK,
    Closed,
    copy_body,
    framing,
    read_head,
    simple_response,
    wants_close,
)

__all__ = ["FAULT_MODES", "FaultProxy", "RequestRecord"]

FAULT_MODES: tuple[str, ...] = ("reset", "503", "truncate", "stall", "drop_response")
# Not in the random mix (a server that ignores Range is no network fault): fail_next only.
_ANSWER_MODES: tuple[str, ...] = ("ignore_range", "copy_source_too_large", "precondition_failed")

_BURST_S = 0.005
_GCS_PREFIXES = ("/storage/", "/upload/storage/", "/download/storage/", "/batch/storage/")
_S3_503 = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>injected</Message><RequestId>fault-proxy</RequestId></Error>"
)
_GCS_503 = b'{"error": {"code": 503, "message": "injected", "errors": []}}'
# S3's answer, word for word, to a CopyObject whose source is over 5 GiB: moto copies any
# size, so the proxy refuses in its place.
_S3_COPY_SOURCE_TOO_LARGE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidRequest</Code>'
    b"<Message>The specified copy source is larger than the maximum allowable size for a copy "
    b"source: 5368709120</Message><RequestId>fault-proxy</RequestId></Error>"
)
# S3's answer to a request whose precondition (If-Match, x-amz-copy-source-if-match) failed:
# moto does not check a part copy's, so the proxy answers in its place.
_S3_PRECONDITION_FAILED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PreconditionFailed</Code>'
    b"<Message>At least one of the pre-conditions you specified did not hold</Message>"
    b"<Condition>x-amz-copy-source-If-Match</Condition><RequestId>fault-proxy</RequestId></Error>"
)


@dataclass
class RequestRecord:
    """One request seen by the proxy; fields are filled in while it is in flight.

    Byte counts are body bytes on the wire (chunk framing included, heads excluded).
    ``status`` is the status sent to the client (for ``drop_response``: the one received from
    upstream); ``forwarded`` is True once the whole request was sent upstream.
    """

    method: str
    path: str
    conn_id: int
    status: int | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    fault: str | None = None
    forwarded: bool = False


@dataclass(frozen=True)
class _Forced:
    """A fault queued by ``fail_next``, and which requests it may hit."""

    mode: str
    methods: frozenset[str] | None
    stall_seconds: float
    matching: Callable[[str, str], bool] | None

    def applies_to(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.matching is None or self.matching(method, path)


class _Outcome(enum.Enum):
    KEEP = 1
    CLOSE = 2
    RESET = 3


class _Pacer:
    """Shared token bucket: ``consume(n)`` sleeps so the long-run rate stays at ``rate``."""

    def __init__(self, rate: float, stopping: threading.Event) -> None:
        if rate <= 0:
            raise ValueError("bandwidth must be positive")
        self.rate = rate
        self.piece = int(min(CHUNK, max(512, rate * 0.002)))
        self._stopping = stopping
        self._lock = threading.Lock()
        self._next = 0.0

    def consume(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now - _BURST_S) + n / self.rate
            delay = self._next - now
        if delay > 0:
            self._stopping.wait(delay)


class _Upstream:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rf = sock.makefile("rb")

    def stale(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)  # EOF (or stray bytes) on an idle keep-alive connection

    def close(self) -> None:
        self.rf.close()
        self.sock.close()


class FaultProxy:
    """HTTP/1.1 relay with per-request fault injection, a request log and a bandwidth cap.

    Usage: ``with FaultProxy(host, port) as p: client(endpoint_url=p.endpoint_url)``.
    ``bandwidth_bytes_per_s`` caps body bytes per direction, shared by all connections.
    ``keep_client_alive``: when the upstream closes after a length-delimited response (moto
    sends ``Connection: close`` every time), strip that header and keep the client connection
    open, so clients pool connections as they would against the real service.

    Fault modes (:data:`FAULT_MODES`): ``reset`` (connection reset before any answer), ``503``
    (an S3- or GCS-shaped "service unavailable", the request never forwarded), ``truncate``
    (the answer cut in half), ``stall`` (the answer held back for ``stall_seconds``) and
    ``drop_response`` (the request forwarded and handled, its answer lost). Also, for
    :meth:`fail_next` only: ``ignore_range`` (the request forwarded without its ``Range``
    header, so the server sends the whole object, as a proxy or server that ignores ranges)
    and ``copy_source_too_large`` (S3's 400 ``InvalidRequest`` refusing a copy source over
    5 GiB, the request never forwarded: match it to the copy with ``matching``) and
    ``precondition_failed`` (S3's 412, likewise).

    Example:
        >>> import urllib.error, urllib.request
        >>> from optuna_cas.testing.servers import free_port
        >>> with FaultProxy("127.0.0.1", free_port()) as proxy:  # nothing needs to listen
        ...     proxy.fail_next("503")
        ...     try:
        ...         urllib.request.urlopen(f"{proxy.endpoint_url}/bucket/key")
        ...     except urllib.error.HTTPError as e:
        ...         print(e.code, [(r.method, r.fault) for r in proxy.requests])
        503 [('GET', '503')]
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        seed: int = 0,
        bandwidth_bytes_per_s: float | None = None,
        keep_client_alive: bool = False,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.keep_client_alive = keep_client_alive
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rate = 0.0
        self._modes: tuple[str, ...] = ()
        self._stall_seconds = 2.0
        self._methods: frozenset[str] | None = None
        self._forced: deque[_Forced] = deque()
        self._records: list[RequestRecord] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._socks: set[socket.socket] = set()
        self._conn_ids = itertools.count(1)
        self._up_pacer: _Pacer | None = None
        self._down_pacer: _Pacer | None = None
        self._bandwidth: float | None = None
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Bind 127.0.0.1:0 and start accepting in a background thread."""
        if self._listener is not None:
            raise RuntimeError("already started")
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", 0))
        lst.listen(128)
        lst.settimeout(0.05)
        self._listener = lst
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="fault-proxy-accept", daemon=True
        )
        self._accept_thread.start()

    def stop(self) -> None:
        """Stop accepting, abort all connections and join the threads."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(5)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The listening port (after ``start``)."""
        if self._listener is None:
            raise RuntimeError("not started")
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    # ---- configuration ---------------------------------------------------------------------

    @property
    def bandwidth_bytes_per_s(self) -> float | None:
        """Cap on body bytes/s per direction (None: unlimited)."""
        return self._bandwidth

    @bandwidth_bytes_per_s.setter
    def bandwidth_bytes_per_s(self, value: float | None) -> None:
        self._bandwidth = value
        self._up_pacer = None if value is None else _Pacer(value, self._stopping)
        self._down_pacer = None if value is None else _Pacer(value, self._stopping)

    def set_faults(
        self,
        rate: float,
        modes: Sequence[str] = FAULT_MODES,
        *,
        stall_seconds: float = 2.0,
        methods: Collection[str] | None = None,
    ) -> None:
        """Each request (of ``methods``, default all) fails with probability ``rate``."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        _check_modes(modes)
        if rate > 0 and not modes:
            raise ValueError("modes must not be empty")
        with self._lock:
            self._rate = rate
            self._modes = tuple(modes)
            self._stall_seconds = stall_seconds
            self._methods = None if methods is None else frozenset(m.upper() for m in methods)

    def fail_next(
        self,
        mode: str,
        count: int = 1,
        *,
        stall_seconds: float = 2.0,
        methods: Collection[str] | None = None,
        matching: Callable[[str, str], bool] | None = None,
    ) -> None:
        """Force ``mode`` on the next ``count`` requests (of ``methods``), before random faults.

        ``matching(method, path)``, if given, must also be true of the request: e.g. to cut an
        object download but not the metadata request that precedes it.
        """
        _check_modes([mode], FAULT_MODES + _ANSWER_MODES)
        ms = None if methods is None else frozenset(m.upper() for m in methods)
        with self._lock:
            self._forced.extend([_Forced(mode, ms, stall_seconds, matching)] * count)

    def clear_faults(self) -> None:
        """Disable random faults and drop pending ``fail_next`` faults."""
        with self._lock:
            self._rate = 0.0
            self._forced.clear()

    # ---- log -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of the log, oldest first (records of in-flight requests still change)."""
        with self._lock:
            return list(self._records)

    def reset_log(self) -> None:
        """Forget all logged requests."""
        with self._lock:
            self._records.clear()

    # ---- internals -------------------------------------------------------------------------

    def _pick_fault(self, method: str, path: str) -> tuple[str | None, float]:
        with self._lock:
            if self._forced:
                forced = self._forced[0]
                if forced.applies_to(method, path):
                    self._forced.popleft()
                    return forced.mode, forced.stall_seconds
            eligible = self._methods is None or method in self._methods
            if self._rate > 0 and eligible and self._rng.random() < self._rate:
                return self._rng.choice(self._modes), self._stall_seconds
            return None, 0.0

    def _track(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._socks.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.discard(sock)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            client.setblocking(True)
            self._track(client)
            t = threading.Thread(
                target=self._serve, args=(client, next(self._conn_ids)), daemon=True
            )
            with self._lock:
                self._threads.add(t)
            t.start()

    def _serve(self, client: socket.socket, conn_id: int) -> None:
        rf = client.makefile("rb")
        ups: list[_Upstream] = []  # at most one; a list so _one_request can replace it
        outcome = _Outcome.CLOSE
        try:
            while not self._stopping.is_set():
                outcome = self._one_request(client, rf, conn_id, ups)
                if outcome is not _Outcome.KEEP:
                    break
        except (OSError, Closed, ValueError):
            outcome = _Outcome.CLOSE
        finally:
            self._drop_upstream(ups)
            if outcome is _Outcome.RESET:
                with contextlib.suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif outcome is _Outcome.CLOSE:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_WR)
            self._untrack(client)
            rf.close()
            client.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _upstream(self, ups: list[_Upstream]) -> _Upstream:
        if ups and ups[0].stale():
            self._drop_upstream(ups)
        if not ups:
            sock = socket.create_connection((self.upstream_host, self.upstream_port), timeout=10)
            sock.settimeout(None)
            self._track(sock)
            ups.append(_Upstream(sock))
        return ups[0]

    def _drop_upstream(self, ups: list[_Upstream]) -> None:
        for up in ups:
            self._untrack(up.sock)
            up.close()
        ups.clear()

    def _sender(
        self, sock: socket.socket, pacer: _Pacer | None, count: Callable[[int], None]
    ) -> Callable[[bytes], None]:
        def send(data: bytes) -> None:
            if pacer is None:
                count(len(data))  # count first so the log is complete when the peer has it all
                sock.sendall(data)
                return
            view = memoryview(data)
            for i in range(0, len(view), pacer.piece):
                piece = view[i : i + pacer.piece]
                pacer.consume(len(piece))
                count(len(piece))
                sock.sendall(piece)

        return send

    def _one_request(
        self, client: socket.socket, rf: io.BufferedReader, conn_id: int, ups: list[_Upstream]
    ) -> _Outcome:
        head = read_head(rf, allow_eof=True)
        if head is None:
            return _Outcome.CLOSE
        parts = head.start.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            client.sendall(simple_response("400 Bad Request", b"", "text/plain", head_only=True))
            return _Outcome.CLOSE
        method, path, version = parts[0].decode("latin-1"), parts[1].decode("latin-1"), parts[2]
        rec = RequestRecord(method=method, path=path, conn_id=conn_id)
        with self._lock:
            self._records.append(rec)
        client_close = wants_close(head, version)
        req_kind, req_len = framing(head, method=method, status=None)
        fault, stall_seconds = self._pick_fault(method, path)
        rec.fault = fault

        def count_req(n: int) -> None:
            rec.request_bytes += n

        def count_resp(n: int) -> None:
            rec.response_bytes += n

        if "100-continue" in head.tokens("expect"):
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

        if fault in ("reset", "503", "copy_source_too_large", "precondition_failed"):
            copy_body(rf, req_kind, req_len, lambda d: count_req(len(d)))
            if fault == "reset":
                return _Outcome.RESET
            status_line, body, ctype = _own_answer(fault, path)
            rec.status = int(status_line.split(" ", 1)[0])
            rec.response_bytes = 0 if method == "HEAD" else len(body)
            client.sendall(simple_response(status_line, body, ctype, head_only=method == "HEAD"))
            return _Outcome.CLOSE

        # Forward the request. Upstream send errors are remembered, not raised: the upstream may
        # already have answered (e.g. rejected the body); the response read below decides.
        try:
            up = self._upstream(ups)
        except OSError:
            return self._bad_gateway(client, rec)
        up_send = self._sender(up.sock, self._up_pacer, count_req)
        up_broken = False

        def to_upstream(data: bytes) -> None:
            nonlocal up_broken
            if up_broken:
                count_req(len(data))
                return
            try:
                up_send(data)
            except OSError:
                up_broken = True

        try:
            dropped = {"expect", "range"} if fault == "ignore_range" else {"expect"}
            up.sock.sendall(head.encode(drop=dropped))
        except OSError:
            up_broken = True
        copy_body(rf, req_kind, req_len, to_upstream)
        rec.forwarded = not up_broken

        try:
            resp = read_head(up.rf)
            assert resp is not None
            while True:
                rparts = resp.start.split(b" ", 2)
                status = int(rparts[1])
                if status >= 200:
                    break
                resp = read_head(up.rf)  # drop interim 1xx (we sent our own 100 Continue)
                assert resp is not None
        except (OSError, Closed, ValueError, IndexError):
            self._drop_upstream(ups)
            return self._bad_gateway(client, rec)
        rec.status = status
        resp_kind, resp_len = framing(resp, method=method, status=status)
        up_close = resp_kind == "close" or wants_close(resp, rparts[0])
        # keep_client_alive: the upstream connection closes, but the client's may stay open
        keep_anyway = (
            up_close
            and self.keep_client_alive
            and resp_kind != "close"
            and not client_close
            and rparts[0] == b"HTTP/1.1"
        )
        resp_head = resp.encode(drop={"connection"} if keep_anyway else ())
        to_client = self._sender(client, self._down_pacer, count_resp)

        if fault in ("truncate", "stall", "drop_response"):
            buf = bytearray()
            copy_body(up.rf, resp_kind, resp_len, buf.extend)
            if up_close:
                self._drop_upstream(ups)
            if fault == "drop_response":
                return _Outcome.RESET
            if fault == "truncate":
                if buf:
                    rec.response_bytes = len(buf) // 2
                    client.sendall(resp_head + buf[: len(buf) // 2])
                else:  # no body: cut the status line (a cut among headers goes unnoticed)
                    client.sendall(resp.start[: len(resp.start) // 2])
                return _Outcome.CLOSE
            if self._stopping.wait(stall_seconds):
                return _Outcome.CLOSE
            client.sendall(resp_head)
            to_client(bytes(buf))
        else:
            client.sendall(resp_head)
            copy_body(up.rf, resp_kind, resp_len, to_client)
            if up_close:
                self._drop_upstream(ups)
        if keep_anyway or not (client_close or up_close):
            return _Outcome.KEEP
        return _Outcome.CLOSE

    def _bad_gateway(self, client: socket.socket, rec: RequestRecord) -> _Outcome:
        body = b"fault_proxy: upstream connection failed"
        rec.status = 502
        rec.response_bytes = len(body)
        client.sendall(
            simple_response("502 Bad Gateway", body, "text/plain", head_only=rec.method == "HEAD")
        )
        return _Outcome.CLOSE


def _own_answer(fault: str, path: str) -> tuple[str, bytes, str]:
    """The status, body and content type of an answer the proxy gives in the server's place."""
    if fault == "copy_source_too_large":
        return "400 Bad Request", _S3_COPY_SOURCE_TOO_LARGE, "application/xml"
    if fault == "precondition_failed":
        return "412 Precondition Failed", _S3_PRECONDITION_FAILED, "application/xml"
    if path.startswith(_GCS_PREFIXES):
        return "503 Service Unavailable", _GCS_503, "application/json; charset=UTF-8"
    return "503 Service Unavailable", _S3_503, "application/xml"


def _check_modes(modes: Sequence[str], known: Sequence[str] = FAULT_MODES) -> None:
    bad = [m for m in modes if m not in known]
    if bad:
        raise ValueError(f"unknown fault modes {bad}; known: {tuple(known)}")
