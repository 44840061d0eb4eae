"""GCS's resumable-upload protocol, driven one request at a time over the session URI.

The session is opened with google-cloud-storage's public
``Blob.create_resumable_upload_session``. GCS documents the session URI as a capability:
requests that use it need no authorization, so the chunks go over a plain ``requests``
session, one PUT each, following the documented protocol:

* a chunk is ``PUT`` with ``Content-Range: bytes first-last/*``; every chunk but the last is a
  multiple of 256 KiB; GCS answers ``308`` with ``Range: bytes=0-N`` (what it holds);
* the last chunk names the total (``bytes first-last/total``, or ``bytes */total`` when empty)
  and GCS publishes the object with that answer (``200``/``201``), so it is sent only after
  the caller's stream reached EOF;
* after a failed request GCS may or may not hold the chunk (the answer may be what was lost),
  so the next attempt first asks (``Content-Range: bytes */*``) and resends from there.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, BinaryIO

from optuna_cas.backends.remote import UploadGoneError
from optuna_cas.backends.remote_io import Part
from optuna_cas.exceptions import BackendError, TransientBackendError

__all__ = ["ResumableUpload"]

_FINISHED = frozenset({200, 201})
# A session the service no longer knows: finished a while ago, cancelled or expired.
_GONE = frozenset({404, 410})
_INCOMPLETE = 308
_RANGE = re.compile(r"bytes=0-(\d+)$")


class ResumableUpload:
    """One resumable upload session; each ``send_*`` call is safe to repeat after a failure.

    Args:
        url: The session URI.
        http: A ``requests.Session`` (no credentials needed).
        where: The object, for messages.
        timeout: Seconds per request (to connect, and per read): a number or ``(connect, read)``.
        retry: A ``google.api_core.retry.Retry`` to wrap each chunk in (the SDK's retries),
            or ``None`` to fail at once (the request runner retries instead).

    Example:
        .. code-block:: python

            upload = ResumableUpload(url, requests.Session(), where="gs://b/k", timeout=60)
            upload.send_part(1, 0, first_chunk)
            upload.send_last(2, len(first_chunk), rest, total)
    """

    completes_separately = False  # the last chunk publishes the object

    def __init__(
        self,
        url: str,
        http: Any,
        *,
        where: str,
        timeout: float | tuple[float, float],
        retry: Any = None,
    ) -> None:
        self._url = url
        self._http = http
        self._where = where
        self._timeout = timeout
        self._retry = retry
        self._persisted = 0  # bytes GCS has confirmed holding
        self._in_doubt = False  # the last request failed: GCS may hold more than confirmed

    def send_part(self, number: int, offset: int, data: Part) -> None:
        """Send one chunk that is not the last (its length a multiple of 256 KiB)."""
        self._send(offset, data, None)

    def send_last(self, number: int, offset: int, data: Part, total: int) -> None:
        """Send the last chunk, possibly empty; GCS publishes the object with its answer.

        Raises:
            UploadGoneError: The session is over (after a lost answer, maybe because this
                very chunk finished it: the caller checks the object).
        """
        self._send(offset, data, total)

    def complete(self) -> None:
        """Nothing to do: the last chunk published the object."""

    def abort(self) -> None:
        """Cancel the session (best effort: an abandoned one expires on its own)."""
        with contextlib.suppress(Exception):
            self._http.delete(self._url, timeout=self._timeout)

    def _send(self, offset: int, data: Part, total: int | None) -> None:
        if self._retry is None:
            self._send_once(offset, data, total)
        else:
            self._retry(self._send_once)(offset, data, total)

    def _send_once(self, offset: int, data: Part, total: int | None) -> None:
        end = offset + len(data)
        if self._in_doubt:
            self._ask()
        self._in_doubt = True
        while total is not None or self._persisted < end:
            if not offset <= self._persisted <= end:
                raise self._out_of_chunk(offset, end)
            # A view, not a slice: slicing a bytearray would copy the chunk. A sealed
            # file's range is read again from the file, from where GCS stopped.
            skip = self._persisted - offset
            piece = memoryview(data)[skip:] if isinstance(data, bytearray) else data.body(skip)
            response = self._put(piece, len(data) - skip, self._persisted, total)
            if response.status_code in _FINISHED:
                if total is None:
                    raise BackendError(
                        f"{self._where}: the upload was published before its last chunk"
                    )
                break
            confirmed = self._confirmed(response)
            if confirmed <= self._persisted:
                raise TransientBackendError(
                    f"{self._where}: the service took none of the chunk sent from byte "
                    f"{self._persisted}"
                )
            self._persisted = confirmed
        self._in_doubt = False

    def _ask(self) -> None:
        """The protocol's status query: how much does GCS hold?"""
        response = self._request("bytes */*", b"")
        self._persisted = self._confirmed(response)

    def _put(self, piece: memoryview | BinaryIO, length: int, start: int, total: int | None) -> Any:
        size = "*" if total is None else str(total)
        if length:
            return self._request(f"bytes {start}-{start + length - 1}/{size}", piece)
        return self._request(f"bytes */{size}", b"")

    def _request(self, content_range: str, body: bytes | memoryview | BinaryIO) -> Any:
        response = self._http.put(
            self._url,
            data=body,
            headers={"Content-Range": content_range},
            timeout=self._timeout,
            allow_redirects=False,  # 308 here means "resume incomplete", not a redirect
        )
        status = response.status_code
        if status == _INCOMPLETE or (status in _FINISHED and content_range != "bytes */*"):
            return response
        if status in _FINISHED or status in _GONE:
            # Finished (a status query) or forgotten: the session took no more chunks.
            raise UploadGoneError(
                f"{self._where}: the upload session ended before the upload was complete "
                f"(HTTP {status})"
            )
        from google.api_core import exceptions as api

        message = f"{self._where}: resumable upload request ({content_range}): {response.text}"
        raise api.from_http_status(status, message[:1000], response=response)  # type: ignore[no-untyped-call]

    def _confirmed(self, response: Any) -> int:
        if response.status_code != _INCOMPLETE:
            raise BackendError(
                f"{self._where}: unexpected answer HTTP {response.status_code} to an upload"
            )
        header = response.headers.get("Range")
        if header is None:
            return 0
        match = _RANGE.match(header)
        if match is None:
            raise TransientBackendError(f"{self._where}: garbled Range header {header!r}")
        return int(match.group(1)) + 1

    def _out_of_chunk(self, offset: int, end: int) -> BackendError:
        if self._persisted > end:
            # GCS never holds bytes it was not sent: a garbled answer. Ask again.
            return TransientBackendError(
                f"{self._where}: implausible upload status ({self._persisted} bytes stored, "
                f"{end} sent)"
            )
        return BackendError(
            f"{self._where}: resumable upload cannot resume: the service holds "
            f"{self._persisted} bytes but the chunk in hand starts at byte {offset}"
        )
