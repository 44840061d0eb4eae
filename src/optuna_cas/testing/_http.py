"""HTTP/1.1 framing for the fault proxy: read heads, tell body lengths, relay bodies.

Just enough of RFC 9112 to relay what boto3 and google-cloud-storage send and what moto_server
and fake-gcs-server answer; every read is bounded (line, head) so a bad peer cannot make the
proxy buffer without end.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection
from dataclasses import dataclass

CHUNK = 64 * 1024
MAX_LINE = 64 * 1024
MAX_HEAD = 256 * 1024


class Closed(Exception):
    """Peer closed the connection mid-message, or sent something unparseable."""


@dataclass
class Head:
    start: bytes
    lines: list[bytes]

    def values(self, name: str) -> list[str]:
        out = []
        for line in self.lines:
            key, _, value = line.partition(b":")
            if key.strip().lower().decode("latin-1") == name:
                out.append(value.strip().decode("latin-1"))
        return out

    def tokens(self, name: str) -> list[str]:
        return [t.strip().lower() for v in self.values(name) for t in v.split(",") if t.strip()]

    def encode(self, drop: Collection[str] = ()) -> bytes:
        kept = [
            line
            for line in self.lines
            if line.partition(b":")[0].strip().lower().decode("latin-1") not in drop
        ]
        return b"\r\n".join([self.start, *kept]) + b"\r\n\r\n"


def read_line(rf: io.BufferedReader) -> bytes:
    line = rf.readline(MAX_LINE)
    if not line.endswith(b"\n"):
        raise Closed("EOF or overlong line")
    return line


def read_head(rf: io.BufferedReader, *, allow_eof: bool = False) -> Head | None:
    line = rf.readline(MAX_LINE)
    while line in (b"\r\n", b"\n"):
        line = rf.readline(MAX_LINE)
    if not line:
        if allow_eof:
            return None
        raise Closed("EOF before head")
    if not line.endswith(b"\n"):
        raise Closed("EOF or overlong start line")
    start, total = line.rstrip(b"\r\n"), len(line)
    lines: list[bytes] = []
    while True:
        line = read_line(rf)
        total += len(line)
        if total > MAX_HEAD:
            raise Closed("head too large")
        if line in (b"\r\n", b"\n"):
            return Head(start, lines)
        lines.append(line.rstrip(b"\r\n"))


def framing(head: Head, *, method: str, status: int | None) -> tuple[str, int]:
    """Return ("none"|"length"|"chunked"|"close", length); status None means a request."""
    if status is not None and (method == "HEAD" or status < 200 or status in (204, 304)):
        return "none", 0
    te = head.tokens("transfer-encoding")
    if te:
        if te[-1] == "chunked":
            return "chunked", 0
        if status is None:
            raise Closed("request body without length")
        return "close", 0
    lengths = {t for v in head.values("content-length") for t in v.replace(" ", "").split(",")}
    if len(lengths) > 1:
        raise Closed("conflicting Content-Length")
    if lengths:
        return "length", int(lengths.pop())
    return ("none", 0) if status is None else ("close", 0)


def copy_body(rf: io.BufferedReader, kind: str, length: int, sink: Callable[[bytes], None]) -> None:
    read1 = rf.read1

    def copy_exact(n: int) -> None:
        while n:
            data = read1(min(n, CHUNK))
            if not data:
                raise Closed("EOF in body")
            n -= len(data)
            sink(data)

    if kind == "length":
        copy_exact(length)
    elif kind == "chunked":
        while True:
            line = read_line(rf)
            sink(line)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as e:
                raise Closed("bad chunk size") from e
            if size == 0:
                while True:  # trailers, then the final empty line
                    line = read_line(rf)
                    sink(line)
                    if line in (b"\r\n", b"\n"):
                        return
            copy_exact(size + 2)
    elif kind == "close":
        while data := read1(CHUNK):
            sink(data)


def wants_close(head: Head, version: bytes) -> bool:
    conn = head.tokens("connection")
    return "close" in conn or (version == b"HTTP/1.0" and "keep-alive" not in conn)


def simple_response(status: str, body: bytes, content_type: str, *, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body
