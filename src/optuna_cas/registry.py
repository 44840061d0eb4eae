"""Open a store from a URL: ``file://``, ``s3://``, ``gs://``, ``memory://`` or a plain path.

Each remote scheme's SDK is imported only when a URL of that scheme is opened; if it is not
installed the error names the extra to install (fsspec's registry habit).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from optuna_cas.exceptions import StoreConfigError
from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = [
    "ENDPOINT_ENV",
    "check_store_url",
    "local_path",
    "open_store",
    "store_scheme",
    "supported_schemes",
]

#: Environment variable naming the S3-compatible endpoint of ``s3://`` URLs when no
#: ``endpoint_url`` is passed (the CLI's ``--endpoint-url`` default too).
ENDPOINT_ENV = "OPTUNA_CAS_ENDPOINT_URL"


@dataclass(frozen=True)
class _Scheme:
    module: str | None  # SDK that must be importable
    extra: str | None  # pip extra that provides it
    build: Callable[[str, str, dict[str, Any]], ContentAddressedArtifactStore]


def _file(netloc: str, path: str, options: dict[str, Any]) -> ContentAddressedArtifactStore:
    from optuna_cas.stores.filesystem import FileSystemArtifactStore

    # ``path`` is the directory itself (local_path): unquoted once for file:// URLs only. A
    # plain "runs%20v2" is that name, as in Optuna (it made "runs v2"; found in review).
    local = path
    if not options.pop("create", True) and not os.path.exists(local):
        # A mistyped path must not silently become a new, empty store.
        raise StoreConfigError(f"no store at {local!r} (nothing was created)")
    return FileSystemArtifactStore(local, fsync=bool(options.pop("fsync", False)))


def _memory(netloc: str, path: str, options: dict[str, Any]) -> ContentAddressedArtifactStore:
    from optuna_cas.stores.memory import MemoryArtifactStore

    return MemoryArtifactStore()


def _s3(bucket: str, prefix: str, options: dict[str, Any]) -> ContentAddressedArtifactStore:
    from optuna_cas.stores.boto3 import Boto3ArtifactStore

    return Boto3ArtifactStore(
        bucket,
        options.pop("client", None),
        prefix=prefix,
        endpoint_url=options.pop("endpoint_url", None),
        **_request_options(options),
    )


def _gs(bucket: str, prefix: str, options: dict[str, Any]) -> ContentAddressedArtifactStore:
    from optuna_cas.stores.gcs import GCSArtifactStore

    return GCSArtifactStore(
        bucket, options.pop("client", None), prefix=prefix, **_request_options(options)
    )


def _request_options(options: dict[str, Any]) -> dict[str, Any]:
    """The retry and timeout keywords given to open_store; those not given keep the SDK's."""
    chosen: dict[str, Any] = {}
    if not options.pop("sdk_retries", True):
        chosen["sdk_retries"] = False
    timeout = options.pop("timeout", None)
    if timeout is not None:
        chosen["timeout"] = timeout
    return chosen


_SCHEMES: dict[str, _Scheme] = {
    "file": _Scheme(None, None, _file),
    "memory": _Scheme(None, None, _memory),
    "s3": _Scheme("boto3", "s3", _s3),
    "gs": _Scheme("google.cloud.storage", "gcs", _gs),
}
_SCHEMES["gcs"] = _SCHEMES["gs"]


def local_path(url: str) -> str | None:
    """The directory a local store URL (a path or ``file://``, in any case) names; else None.

    Raises:
        StoreConfigError: The URL cannot be split, or names an unknown user (``~nobody``).

    Example:
        >>> local_path("FILE:///tmp/my%20runs"), local_path("s3://b/p")
        ('/tmp/my runs', None)
    """
    scheme = store_scheme(url)
    if scheme not in ("", "file"):
        return None
    # "~" expanded in both, as the local backend expands it (review: file:~/proj was checked
    # as ./~/proj, then opened as $HOME/proj).
    path = unquote(urlsplit(url).path) if scheme == "file" else url
    try:
        return str(Path(path).expanduser())
    except RuntimeError as e:  # "~nosuchuser/..."
        raise StoreConfigError(f"Invalid store path {url!r}: {e}") from e


def store_scheme(url: str) -> str:
    """The scheme of a store URL as :func:`open_store` reads it: lower case, ``""`` for a path.

    Raises:
        StoreConfigError: The URL cannot be split (e.g. ``s3://[``, an invalid IPv6 host).

    Example:
        >>> store_scheme("S3://bucket/x"), store_scheme("gs://b"), store_scheme("./artifacts")
        ('s3', 'gs', '')
    """
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as e:
        raise StoreConfigError(f"Invalid store URL {url!r}: {e}") from e
    return "" if len(scheme) == 1 and os.name == "nt" else scheme  # a drive letter: a path


def supported_schemes() -> list[str]:
    """URL schemes :func:`open_store` understands.

    Example:
        >>> supported_schemes()
        ['file', 'gcs', 'gs', 'memory', 's3']
    """
    return sorted(_SCHEMES)


def check_store_url(url: str) -> str:
    """Check a store URL's form without opening anything; returns its scheme (as store_scheme).

    Only the text is checked: whether the SDK is installed, the bucket exists or a local
    store is there is for :func:`open_store` to find out.

    Raises:
        StoreConfigError: Empty, unsplittable, unknown scheme, ``s3://``/``gs://`` without
            a bucket or with a query string or fragment, ``file://`` naming a host or no path.

    Example:
        >>> check_store_url("s3://bucket/runs"), check_store_url("./artifacts")
        ('s3', '')
        >>> check_store_url("s3:///runs")
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.StoreConfigError: Store URL 's3:///runs' names no bucket (s3://BUCKET/prefix)
    """
    if not isinstance(url, str) or not url:
        raise StoreConfigError(f"Invalid store URL: {url!r}")
    scheme = store_scheme(url)
    if scheme == "":
        return scheme
    if scheme not in _SCHEMES:
        raise StoreConfigError(
            f"Unsupported store URL {url!r}: scheme {scheme!r} is not one of "
            f"{', '.join(supported_schemes())}"
        )
    parts = urlsplit(url)
    # urlsplit drops an empty query or fragment ('runs?', 'runs#'): look for the characters.
    if "?" in url:
        raise StoreConfigError(
            f"Store URL {url!r}: query strings are not supported"
            + (" (a directory named with '?' is given as a plain path)" if scheme == "file" else "")
        )
    if "#" in url:
        raise StoreConfigError(
            f"Store URL {url!r}: fragments (#...) are not supported"
            + (" (a directory named with '#' is given as a plain path)" if scheme == "file" else "")
        )
    if scheme in ("s3", "gs", "gcs"):
        if not parts.netloc:
            raise StoreConfigError(f"Store URL {url!r} names no bucket ({scheme}://BUCKET/prefix)")
    elif scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreConfigError(
                f"file:// URLs must not name a host, got {parts.netloc!r} "
                "(an absolute path has three slashes: file:///path)"
            )
        if not parts.path:
            raise StoreConfigError(f"Store URL {url!r} names no directory (file:///path)")
    return scheme


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def open_store(
    url: str | os.PathLike[str],
    *,
    endpoint_url: str | None = None,
    client: Any = None,
    fsync: bool = False,
    create: bool = True,
    sdk_retries: bool = True,
    timeout: float | tuple[float, float] | None = None,
) -> ContentAddressedArtifactStore:
    """Build a store from a URL.

    Args:
        url: ``file:///abs/path`` or a plain path, ``s3://bucket/prefix``,
            ``gs://bucket/prefix``, or ``memory://``.
        endpoint_url: S3-compatible endpoint (MinIO, R2, a local test server). For
            ``s3://`` URLs without ``endpoint_url`` or ``client``, ``$OPTUNA_CAS_ENDPOINT_URL``
            is used if set; else boto3 applies its own configuration (``AWS_ENDPOINT_URL``,
            ``~/.aws/config``) and, failing that, AWS itself.
        client: A ready SDK client for ``s3://`` or ``gs://`` (then no endpoint is read
            from the environment: the client has its own).
        fsync: For local stores, make writes durable against power loss.
        create: For local stores, create the directory if it does not exist. With
            ``False`` a missing directory is an error (for readers: a mistyped path must not
            become a new, empty store). Remote buckets are never created.
        sdk_retries: For ``s3://`` and ``gs://``, keep the SDK's own retries (the default,
            as Optuna's stores have them). ``False`` sends each request once, so that
            :class:`~optuna_cas.Backoff` alone decides how often to try. With ``client`` on
            ``s3://``, configure the client instead (botocore's ``Config``).
        timeout: For ``s3://`` and ``gs://``, seconds to connect and to wait on each socket
            read of a request: a number, or ``(connect, read)``. ``None`` keeps the SDK's (60 s
            each). The read timeout also bounds sending one request body (an upload part), not
            only a silence. Local stores make no
            requests: both are ignored there, like ``fsync`` on a bucket.

    Returns:
        A :class:`~optuna_cas.stores.base.ContentAddressedArtifactStore`; wrap it in
        :class:`~optuna_cas.Backoff` for retries.

    Raises:
        StoreConfigError: Unknown scheme, malformed URL, option that does not apply to the
            scheme, the scheme's SDK is not installed (the message names the extra), or
            ``create=False`` and there is no local store at the path (``no store at ...``).

    Example:
        >>> import tempfile
        >>> store = open_store(tempfile.mkdtemp())
        >>> type(store).__name__
        'FileSystemArtifactStore'
        >>> open_store("ftp://host/x")
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.StoreConfigError: Unsupported store URL 'ftp://host/x': scheme 'ftp' is not one of file, gcs, gs, memory, s3
        >>> open_store("/no/such/dir", create=False)
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.StoreConfigError: no store at '/no/such/dir' (nothing was created)

        Each request to a bucket tried once and bounded, for ``Backoff`` to retry (what the
        command line does):

        .. code-block:: python

            from optuna_cas import Backoff

            store = Backoff(open_store("s3://my-bucket/runs", sdk_retries=False, timeout=(10, 60)))
    """
    text = os.fspath(url)
    scheme = check_store_url(text)
    parts = urlsplit(text)  # check_store_url raised if it cannot be split
    if scheme == "":
        return _file("", str(local_path(text)), {"fsync": fsync, "create": create})
    entry = _SCHEMES[scheme]
    if entry.module is not None and not _module_available(entry.module):
        raise StoreConfigError(
            f"Store URL {text!r} needs the {entry.module} package: "
            f"pip install 'optuna-cas[{entry.extra}]'"
        )
    options: dict[str, Any] = {}
    if scheme in ("s3", "gs", "gcs"):
        options["client"] = client
        options["sdk_retries"] = sdk_retries
        options["timeout"] = timeout
        if scheme == "s3" and endpoint_url is None and client is None:
            # The variable names a service for s3:// URLs only; empty means unset.
            endpoint_url = os.environ.get(ENDPOINT_ENV) or None
        if endpoint_url is not None:
            if scheme != "s3":
                raise StoreConfigError(f"endpoint_url applies to s3:// URLs, not {text!r}")
            options["endpoint_url"] = endpoint_url
        return entry.build(parts.netloc, unquote(parts.path).strip("/"), options)
    if endpoint_url is not None or client is not None:
        raise StoreConfigError(
            f"endpoint_url and client apply to s3:// and gs:// URLs, not {text!r}"
        )
    options["fsync"] = fsync
    options["create"] = create
    if scheme == "file":
        return _file(parts.netloc, str(local_path(text)), options)
    return entry.build(parts.netloc, parts.path, options)
