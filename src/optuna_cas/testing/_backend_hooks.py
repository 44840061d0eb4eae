"""The hooks and settings a backend's conformance test class supplies (see ``backend.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest

from optuna_cas.backends.base import Backend
from optuna_cas.testing.faults import FaultProxy
from optuna_cas.testing.raw import RawView

MiB = 1024 * 1024
#: A size parameter meaning "the class's ``multipart_size``".
MULTIPART = "multipart"


def read_all(
    backend: Backend, key: str, *, offset: int = 0, length: int | None = None, piece: int = -1
) -> bytes:
    """``length`` bytes (None: all) from ``offset``, read in pieces of ``piece`` (-1: at once)."""
    out = bytearray()
    with backend.open_reader(key, offset=offset, length=length) as reader:
        if piece < 0:
            return reader.read()
        while data := reader.read(piece):
            out += data
    return bytes(out)


class BackendHooks:
    """Fixtures, hooks and settings; every default means "this backend has no such thing".

    A subclass must provide the ``backend`` fixture and set :attr:`raw` in it (or override the
    ``raw_*`` hooks). The other hooks are optional: a test that needs one the subclass did
    not supply is skipped, saying which.
    """

    #: Out-of-band access to the storage below the ``backend`` fixture's root.
    raw: RawView

    #: Readers returned by ``open_reader`` support ``seek`` (the protocol does not promise it).
    readers_seek: ClassVar[bool] = True
    #: A body size that takes the backend's multi-request path (multipart, resumable) as the
    #: fixture configures it; the default suits 5 MiB S3 parts and 1 MiB GCS chunks.
    multipart_size: ClassVar[int] = 6 * MiB + 12345
    #: Peak bytes (tracemalloc) a 64 MiB streamed write, and then read, may take; ``None``:
    #: not measured (a backend that holds everything in memory).
    memory_bound: ClassVar[int | None] = None
    #: Names foreign tools can leave in the storage that are not valid keys; ``list`` must
    #: skip them (e.g. a console's ``refs/`` folder marker).
    invalid_raw_names: ClassVar[tuple[str, ...]] = ()

    @pytest.fixture
    def backend(self) -> Backend:
        """A fresh, empty backend; it must also set :attr:`raw`."""
        raise NotImplementedError(f"{type(self).__name__} must provide a 'backend' fixture")

    def sized(self, size: int | str) -> int:
        """``size``, with :data:`MULTIPART` replaced by :attr:`multipart_size`."""
        return self.multipart_size if size == MULTIPART else int(size)

    # ---- out of band ----------------------------------------------------------------------

    def raw_read(self, key: str) -> bytes | None:
        """The bytes really stored under ``key`` (``None``: nothing), read around the backend."""
        return self.raw.read(key)

    def raw_write(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` around the backend (another writer, a foreign tool)."""
        self.raw.write(key, data)

    def raw_keys(self, prefix: str = "") -> list[str]:
        """Sorted names really stored below the root that start with ``prefix``."""
        return self.raw.keys(prefix)

    def raw_version(self, key: str) -> object:
        """A token that changes when ``key`` is written anew (see :class:`RawView`)."""
        return self.raw.version(key)

    def raw_unfinished(self) -> list[str]:
        """Writes started and neither published nor cleaned up."""
        return self.raw.unfinished()

    def raw_backdate(self, key: str, seconds: float) -> bool:
        """Make ``key`` look older; False if the storage cannot."""
        return self.raw.backdate(key, seconds)

    def requests_sent(self) -> int | None:
        """How many requests the ``backend`` fixture's client has sent so far (``None``: n/a)."""
        return None

    def is_download(self, method: str, path: str) -> bool:
        """Whether a request the fault proxy saw fetches an object's bytes (not metadata)."""
        return method == "GET"

    # ---- other backends on the same storage -----------------------------------------------

    def backend_at(self, sub: str) -> Backend | None:
        """A backend whose root is ``<the fixture's root>/<sub>`` (``None``: no prefixes)."""
        return None

    def missing_container(self) -> tuple[Backend, str] | None:
        """A backend on a bucket that does not exist, and that bucket's name."""
        return None

    def upstream(self) -> tuple[str, int] | None:
        """Host and port of the server the backend talks to (``None``: not over a network)."""
        return None

    def backend_via(self, endpoint_url: str) -> Backend:
        """The fixture's storage reached through ``endpoint_url``, with the SDK's retries off."""
        raise NotImplementedError(f"{type(self).__name__} has an upstream but no backend_via")

    def backend_for_memory_test(self, backend: Backend) -> Backend:
        """The backend to measure memory on (e.g. one without an in-process test shim)."""
        return backend

    # ---- shared fixtures ------------------------------------------------------------------

    @pytest.fixture
    def proxied(self, backend: Backend) -> Iterator[tuple[Backend, FaultProxy]]:
        """The fixture's storage seen through a :class:`FaultProxy`, SDK retries off."""
        where = self.upstream()
        if where is None:
            pytest.skip(f"{type(self).__name__}: not a networked backend (no upstream hook)")
        with FaultProxy(*where) as proxy:
            yield self.backend_via(proxy.endpoint_url), proxy
