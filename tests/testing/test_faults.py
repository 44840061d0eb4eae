"""Tests for optuna_cas.testing.faults.FaultProxy against a tiny local upstream and real moto."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from optuna_cas.testing.faults import FaultProxy

CLIENT_ERRORS = (ConnectionError, http.client.HTTPException, TimeoutError)


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store: dict[str, bytes] = {}
        self.trailers: list[bytes] = []
        self.hits = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else head + body writes cost a 40 ms delayed ACK
    server: _Upstream

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    break
                out += self.rfile.read(size)
                self.rfile.readline()
            while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                self.server.trailers.append(line.strip())
            return bytes(out)
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _send(self, status: int, body: bytes, *, chunked: bool = False) -> None:
        self.send_response(status)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 10_000):
                part = body[i : i + 10_000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _key(self) -> str:
        return urlsplit(self.path).path

    def do_PUT(self) -> None:
        self.server.hits += 1
        data = self._read_body()
        self.server.store[self._key()] = data
        self._send(200, hashlib.sha256(data).hexdigest().encode())

    do_POST = do_PUT

    def do_GET(self) -> None:
        self.server.hits += 1
        data = self.server.store.get(self._key())
        if data is None:
            self._send(404, b"missing")
        else:
            self._send(200, data, chunked="chunked" in (urlsplit(self.path).query or ""))

    do_HEAD = do_GET

    def do_DELETE(self) -> None:
        self.server.hits += 1
        self.server.store.pop(self._key(), None)
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    srv = _Upstream()
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def proxy(upstream: _Upstream) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", upstream.server_address[1], seed=1) as p:
        yield p


def _conn(p: FaultProxy, timeout: float | None = 10) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", p.port, timeout=timeout)


def _req(
    c: http.client.HTTPConnection, method: str, path: str, body: object = None
) -> tuple[int, bytes]:
    c.request(method, path, body=body)  # type: ignore[arg-type]
    r = c.getresponse()
    return r.status, r.read()


def test_passthrough_keepalive_byte_exact(proxy: FaultProxy, upstream: _Upstream) -> None:
    data = os.urandom(1_000_003)
    c = _conn(proxy)
    assert _req(c, "PUT", "/a?x=1", data) == (200, hashlib.sha256(data).hexdigest().encode())
    assert _req(c, "GET", "/a", None) == (200, data)
    assert _req(c, "GET", "/a?chunked=1", None) == (200, data)
    chunks = [data[i : i + 70_000] for i in range(0, len(data), 70_000)]
    assert _req(c, "PUT", "/b", iter(chunks))[0] == 200  # http.client sends it chunked
    assert upstream.store["/b"] == data
    c.request("HEAD", "/b")
    r = c.getresponse()
    assert (r.status, r.getheader("Content-Length"), r.read()) == (200, str(len(data)), b"")
    assert _req(c, "DELETE", "/b", None) == (204, b"")
    assert _req(c, "GET", "/b", None) == (404, b"missing")
    c.close()

    recs = proxy.requests
    assert [(r.method, r.path, r.status) for r in recs] == [
        ("PUT", "/a?x=1", 200),
        ("GET", "/a", 200),
        ("GET", "/a?chunked=1", 200),
        ("PUT", "/b", 200),
        ("HEAD", "/b", 200),
        ("DELETE", "/b", 204),
        ("GET", "/b", 404),
    ]
    assert len({r.conn_id for r in recs}) == 1  # one keep-alive connection throughout
    assert recs[0].request_bytes == len(data) and recs[0].response_bytes == 64
    assert recs[1].response_bytes == len(data)
    assert recs[2].response_bytes > len(data)  # chunk framing counted
    assert recs[3].request_bytes > len(data)
    assert recs[4].response_bytes == 0
    assert all(r.fault is None and r.forwarded for r in recs)
    proxy.reset_log()
    assert proxy.requests == []


def _raw_response(f: io.BufferedReader) -> tuple[bytes, bytes]:
    status = f.readline()
    length = 0
    while (line := f.readline()) != b"\r\n":
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, f.read(length)


def test_chunked_trailers_and_expect_continue(proxy: FaultProxy, upstream: _Upstream) -> None:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    f = s.makefile("rb")
    s.sendall(
        b"PUT /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32: abc=\r\n\r\n"
    )
    status, body = _raw_response(f)
    assert (
        status.startswith(b"HTTP/1.1 200")
        and body == hashlib.sha256(b"hello world").hexdigest().encode()
    )
    assert upstream.store["/t"] == b"hello world"
    assert upstream.trailers == [b"x-amz-checksum-crc32: abc="]

    s.sendall(b"PUT /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert f.readline() == b"HTTP/1.1 100 Continue\r\n" and f.readline() == b"\r\n"
    s.sendall(b"abc")
    status, _ = _raw_response(f)
    assert status.startswith(b"HTTP/1.1 200") and upstream.store["/e"] == b"abc"
    s.close()
    f.close()
    assert len({r.conn_id for r in proxy.requests}) == 1


def test_fault_reset(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.fail_next("reset")
    c = _conn(proxy)
    with pytest.raises(ConnectionError):
        _req(c, "PUT", "/r", b"x" * 1000)
    assert "/r" not in upstream.store and upstream.hits == 0
    (rec,) = proxy.requests
    assert (rec.fault, rec.status, rec.request_bytes, rec.forwarded) == ("reset", None, 1000, False)
    c.close()
    assert _req(_conn(proxy), "PUT", "/r", b"ok")[0] == 200  # next request is fine


def test_fault_503_s3_and_gcs(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.set_faults(1.0, ["503"])
    c = _conn(proxy)
    c.request("PUT", "/bucket/key", body=b"abc")
    r = c.getresponse()
    assert r.status == 503 and r.will_close
    assert b"<Code>ServiceUnavailable</Code>" in r.read()
    c = _conn(proxy)
    c.request("GET", "/storage/v1/b/bk/o/x?alt=json")
    r = c.getresponse()
    assert r.status == 503 and r.getheader("Content-Type", "").startswith("application/json")
    assert b'"code": 503' in r.read()
    c = _conn(proxy)
    c.request("HEAD", "/bucket/key")
    r = c.getresponse()
    assert r.status == 503 and r.read() == b""
    assert upstream.hits == 0
    assert [r.fault for r in proxy.requests] == ["503"] * 3


def test_copy_source_too_large_answers_as_s3_without_forwarding(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    proxy.fail_next("copy_source_too_large", matching=lambda m, p: "?" not in p)
    c = _conn(proxy)
    assert _req(c, "PUT", "/bucket/part?partNumber=1&uploadId=u", b"a")[0] == 200  # not matched
    c.request("PUT", "/bucket/key", body=b"abc")
    r = c.getresponse()
    assert r.status == 400 and r.getheader("Content-Type") == "application/xml"
    body = r.read()
    assert b"<Code>InvalidRequest</Code>" in body
    assert b"copy source is larger than the maximum allowable size" in body
    assert upstream.hits == 1 and "/bucket/key" not in upstream.store
    assert [(r.fault, r.status, r.forwarded) for r in proxy.requests] == [
        (None, 200, True),
        ("copy_source_too_large", 400, False),
    ]


def test_fault_truncate(proxy: FaultProxy, upstream: _Upstream) -> None:
    upstream.store["/g"] = os.urandom(100_000)
    proxy.fail_next("truncate", 2)
    c = _conn(proxy)
    c.request("GET", "/g")
    r = c.getresponse()
    assert r.status == 200
    with pytest.raises(http.client.IncompleteRead) as ei:
        r.read()
    assert len(ei.value.partial) == 50_000
    c = _conn(proxy)
    with pytest.raises(http.client.IncompleteRead):
        _req(c, "PUT", "/p", b"stored")  # applied upstream, response cut
    assert upstream.store["/p"] == b"stored"
    proxy.fail_next("truncate")
    with pytest.raises(http.client.HTTPException):
        _req(_conn(proxy), "DELETE", "/p")  # 204, no body: the status line is cut
    assert "/p" not in upstream.store
    assert [(r.fault, r.forwarded) for r in proxy.requests] == [("truncate", True)] * 3


def test_fault_stall(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.fail_next("stall", stall_seconds=1.0)
    c = _conn(proxy, timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        _req(c, "PUT", "/s", b"v")
    assert time.monotonic() - t0 < 0.9
    assert upstream.store["/s"] == b"v"
    c.close()
    # without a client timeout the stalled response arrives intact, and keep-alive continues
    proxy.fail_next("stall", stall_seconds=0.3)
    c = _conn(proxy)
    t0 = time.monotonic()
    assert _req(c, "GET", "/s") == (200, b"v")
    assert time.monotonic() - t0 >= 0.25
    assert _req(c, "GET", "/s") == (200, b"v")
    assert [r.fault for r in proxy.requests] == ["stall", "stall", None]


def test_fault_drop_response(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.fail_next("drop_response", methods={"put"})
    c = _conn(proxy)
    assert _req(c, "GET", "/d") == (404, b"missing")  # not a PUT: passes, fault stays queued
    with pytest.raises(ConnectionError):
        _req(c, "PUT", "/d", b"lost response")
    assert upstream.store["/d"] == b"lost response"
    rec = proxy.requests[-1]
    assert (rec.fault, rec.status, rec.forwarded, rec.response_bytes) == (
        "drop_response",
        200,
        True,
        0,
    )


def _fault_pattern(upstream: _Upstream, seed: int) -> list[str | None]:
    with FaultProxy("127.0.0.1", upstream.server_address[1], seed=seed) as p:
        p.set_faults(0.3, ["503", "reset"])
        c = _conn(p)
        for _ in range(200):
            try:
                _req(c, "GET", "/x")
            except CLIENT_ERRORS:
                c.close()  # the next request reconnects
        return [r.fault for r in p.requests]


def test_fault_rate_seeded(upstream: _Upstream) -> None:
    upstream.store["/x"] = b"y"
    a = _fault_pattern(upstream, seed=7)
    assert len(a) == 200
    n = sum(f is not None for f in a)
    assert 40 <= n <= 80, n
    assert {"503", "reset"} == {f for f in a if f}
    assert _fault_pattern(upstream, seed=7) == a


def test_methods_filter_and_clear(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.set_faults(1.0, ["503"], methods={"PUT"})
    c = _conn(proxy)
    assert _req(c, "GET", "/m")[0] == 404
    assert _req(c, "PUT", "/m", b"1")[0] == 503
    proxy.clear_faults()
    assert _req(_conn(proxy), "PUT", "/m", b"1")[0] == 200
    with pytest.raises(ValueError):
        proxy.set_faults(0.5, ["bogus"])


def test_bandwidth_throttle(proxy: FaultProxy, upstream: _Upstream) -> None:
    size, rate = 4_000_000, 10_000_000.0
    data = os.urandom(size)
    proxy.bandwidth_bytes_per_s = rate
    c = _conn(proxy)
    t0 = time.monotonic()
    assert _req(c, "PUT", "/bw", data)[0] == 200
    t_put = time.monotonic() - t0
    t0 = time.monotonic()
    assert _req(c, "GET", "/bw") == (200, data)
    t_get = time.monotonic() - t0
    expected = size / rate
    assert 0.7 * expected <= t_put < 10 * expected
    assert 0.7 * expected <= t_get < 10 * expected
    proxy.bandwidth_bytes_per_s = None
    t0 = time.monotonic()
    assert _req(c, "GET", "/bw") == (200, data)
    assert time.monotonic() - t0 < expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_moto_smoke_10mib() -> None:
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config

    exe = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "moto_server"
    exe_path = str(exe) if exe.exists() else shutil.which("moto_server")
    if exe_path is None:
        pytest.skip("moto_server not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [exe_path, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        with FaultProxy("127.0.0.1", port, keep_client_alive=True) as p:
            s3 = boto3.client(
                "s3",
                endpoint_url=p.endpoint_url,
                region_name="us-east-1",
                aws_access_key_id="test",
                aws_secret_access_key="test",
                config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
            )
            s3.create_bucket(Bucket="bkt")
            data = os.urandom(10 * 1024 * 1024)
            s3.put_object(Bucket="bkt", Key="k", Body=data)
            s3.put_object(Bucket="bkt", Key="k2", Body=io.BytesIO(data))  # file-like: Expect
            assert s3.get_object(Bucket="bkt", Key="k")["Body"].read() == data
            assert s3.get_object(Bucket="bkt", Key="k2")["Body"].read() == data
            recs = p.requests
            puts = [r for r in recs if r.method == "PUT" and r.path.startswith("/bkt/k")]
            gets = [r for r in recs if r.method == "GET"]
            assert len(puts) == 2 and all(r.request_bytes >= len(data) for r in puts)
            assert len(gets) == 2 and all(r.response_bytes == len(data) for r in gets)
            assert all(r.status == 200 and r.fault is None for r in recs)
            # moto answers "Connection: close"; keep_client_alive lets boto3 reuse its connection
            assert len({r.conn_id for r in recs}) < len(recs)
    finally:
        proc.terminate()
        proc.wait(10)


def test_stop_with_open_connections(upstream: _Upstream) -> None:
    p = FaultProxy("127.0.0.1", upstream.server_address[1])
    p.start()
    idle = _conn(p)
    assert _req(idle, "GET", "/none")[0] == 404  # keep-alive connection left open
    p.fail_next("stall", stall_seconds=30)
    stalled = _conn(p)
    stalled.request("GET", "/none")
    time.sleep(0.2)
    t0 = time.monotonic()
    p.stop()
    assert time.monotonic() - t0 < 2
    with pytest.raises(CLIENT_ERRORS):
        stalled.getresponse().read()
    assert not p._threads
