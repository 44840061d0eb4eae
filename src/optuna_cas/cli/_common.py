"""What every command shares: the store and Optuna target options, output, argument types."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from optuna_cas._terminal import clip
from optuna_cas._terminal import escape_for_terminal as esc

if TYPE_CHECKING:
    from optuna_cas._bars import TerminalProgress
    from optuna_cas.stores.base import ContentAddressedArtifactStore


STORE_ENV = "OPTUNA_CAS_STORE"
ENDPOINT_ENV = "OPTUNA_CAS_ENDPOINT_URL"
# The same as optuna_cas.middleware.cache_config.CACHE_DIR_ENV, which --help must not import.
CACHE_DIR_ENV = "OPTUNA_CAS_CACHE_DIR"
T = TypeVar("T")
# --retries' default: Optuna's Backoff default. Backoff's waits between its 10 attempts add up
# to 25-51 s (0.1 s doubling, jittered), so a service that restarts in that time is ridden
# out; 5 attempts waited 0.8-1.5 s, and a 3 s restart failed a put, a get and a gc midway.
DEFAULT_RETRIES = 10
# Seconds each request to a bucket may take to connect, and to wait on each socket read or
# write. Behind the SDKs' own retries (3 hidden attempts on S3, a 120 s retry deadline on GCS)
# one attempt at a server that accepts and never answers took 2-3 minutes without a word; now
# each attempt ends in a retry warning line. The read timeout stays the SDKs' 60 s: it also
# bounds the sending of one request body (an upload part of up to 8 MiB goes in one write),
# and 30 s failed every attempt of an upload over an uplink below ~280 kB/s (found in review).
REQUEST_TIMEOUT = (10.0, 60.0)
GLOBAL_OPTIONS_NOTE = (
    "global options (--store, --json, -q, --retries, ...) may also follow the command;\n"
    "see 'optuna-cas --help'"
)


class UsageError(Exception):
    """A problem with how the command was called (exit code 2)."""


class CommandError(Exception):
    """A failure explained in the CLI's own words (exit code 1)."""


# -- output ---------------------------------------------------------------------------------


def _print(args: argparse.Namespace, text: str) -> None:
    """A human line on stdout (not with ``-q`` or ``--json``).

    Callers pass every value that comes from a ref, an attribute, a file name or an error
    through esc() (untrusted text: see _terminal); the message itself is ours.
    """
    if not args.quiet and not args.json:
        print(text)


def _note(args: argparse.Namespace, text: str) -> None:
    """A human line on stderr: for when stdout carries data (``get ID -``)."""
    if not args.quiet:
        print(text, file=sys.stderr)


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with the noun in the form the number takes (default plural: ``noun + "s"``).

    Example:
        >>> _count(1, "blob"), _count(0, "blob"), _count(2, "entry", "entries")
        ('1 blob', '0 blobs', '2 entries')
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _emit_json(document: dict[str, Any]) -> None:
    """The one JSON object a command prints with ``--json``, led by ``"ok"``.

    ``"ok"`` is true unless the document says otherwise (a failure; ``verify`` or ``sync``
    finding a problem), so scripts can test every command's output the same way.
    """
    import json

    document = {"ok": True, **document}
    # Flushed: the dashboard prints its document and then serves until stopped.
    print(json.dumps(document, indent=2, default=_jsonable), flush=True)
    PRINTED.append(bool(document["ok"]))


#: The "ok" of each document this process printed: a Ctrl-C after one changes nothing.
PRINTED: list[bool] = []


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)  # Path, Digest, ...


def _report_json(report: Any) -> dict[str, Any]:
    """A report dataclass as JSON: its fields and its computed properties (``ok``, ...)."""
    from dataclasses import asdict

    record = asdict(report)
    for name in dir(type(report)):
        if not name.startswith("_") and isinstance(getattr(type(report), name), property):
            record[name] = getattr(report, name)
    return record


def _bar(args: argparse.Namespace, unit: str = "B") -> TerminalProgress:
    from optuna_cas._bars import TerminalProgress

    return TerminalProgress(enabled=not args.quiet, unit=unit)


class _BarPerUnit:
    """Progress for a command whose tasks count different things, each bar in its own unit.

    gc deletes blobs, manifests and packs (counted) and repacks chunks (bytes): a task's last
    word names what it counts if it is one of ``items``; other tasks count bytes.
    """

    def __init__(self, args: argparse.Namespace, items: tuple[str, ...]) -> None:
        self._args = args
        self._items = items
        self._bars: dict[str, TerminalProgress] = {}
        self.enabled = _bar(args).enabled

    def __call__(self, task: str, done: int, total: int | None) -> None:
        last = task.rsplit(" ", 1)[-1]
        unit = last if last in self._items else "B"
        if unit not in self._bars:
            self._bars[unit] = _bar(self._args, unit=unit)
        for other, bar in self._bars.items():
            if other != unit:
                bar.close()  # one bar on the screen at a time
        self._bars[unit](task, done, total)

    def __enter__(self) -> _BarPerUnit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for bar in self._bars.values():
            bar.close()


# -- stores and Optuna targets ----------------------------------------------------------------


def _open(
    args: argparse.Namespace,
    url: str | None = None,
    *,
    cached: bool = False,
    create: bool = False,
    option: str = "--store",
) -> ContentAddressedArtifactStore:
    """The store of ``--store`` (or ``url``); only ``create=True`` may create a local one.

    ``option`` names where ``url`` came from (``SRC``, ``DST``) in a usage error. A URL from
    ``$OPTUNA_CAS_STORE`` that is malformed is an error (exit code 1) naming the variable.
    """
    from optuna_cas import Backoff, open_store

    from_environment = url is None and args.store is None
    if url is None:
        url = _store_url(args)
    if from_environment:
        option = f"${STORE_ENV}"
    try:
        scheme = _check_store_url(url, option)
        _check_store_directory(url, option)
    except UsageError as e:
        if from_environment:
            # The command line is right; the environment is not (as for the endpoint).
            raise CommandError(str(e)) from e
        raise
    _check_endpoint_applies(args, url)
    endpoint = args.endpoint_url or os.environ.get(ENDPOINT_ENV)
    if scheme == "s3" and endpoint:
        _check_endpoint(args, endpoint)
    store: ContentAddressedArtifactStore = open_store(
        url,
        endpoint_url=endpoint if scheme == "s3" else None,
        create=create,
        # --retries is the number of attempts: none hidden inside the SDK, each one bounded.
        sdk_retries=False,
        timeout=REQUEST_TIMEOUT,
    )
    if args.retries > 1:
        store = Backoff(store, max_retries=args.retries)
    if cached and not args.no_cache and scheme in ("s3", "gs", "gcs"):
        store = _through_cache(args, store)
    return store


def _check_store_directory(url: str, option: str) -> None:
    """Refuse an existing directory that is not a store (a mistyped path; see _store_dir)."""
    from optuna_cas.cli._store_dir import not_a_store_reason
    from optuna_cas.registry import local_path

    # The path open_store will open: FILE:// and %-escapes too (review: an upper-case scheme
    # skipped the check, and rm deleted a project's file).
    path = local_path(url)
    reason = None if path is None else not_a_store_reason(path)
    if reason is not None:
        raise UsageError(
            f"{option} {url!r} is not an artifact store: {reason}. Give the directory that "
            "FileSystemArtifactStore was given"
        )


def _store_url(args: argparse.Namespace) -> str:
    """``--store``, else ``$OPTUNA_CAS_STORE``; an explicitly empty ``--store`` is an error.

    ``--store "$DEST"`` with DEST unset must not quietly use the default store instead.
    """
    if args.store is not None:
        if not args.store:
            raise UsageError(
                f"--store is empty: give a store URL (or leave out --store to use ${STORE_ENV})"
            )
        return str(args.store)
    url = os.environ.get(STORE_ENV)
    if not url:
        raise UsageError(f"no store given: pass --store URL or set {STORE_ENV}")
    return url


# The schemes a command line takes; memory:// is refused (see _check_store_url).
_CLI_SCHEMES = "a directory, file://, s3:// or gs:// (also spelt gcs://)"


def _check_store_url(url: str, option: str) -> str:
    """A store URL's form, checked before anything is opened; a bad one is a usage error.

    Returns the scheme (``""`` for a plain path).
    """
    from optuna_cas.exceptions import StoreConfigError
    from optuna_cas.registry import check_store_url, store_scheme

    if not url:
        raise UsageError(f"{option} is empty: give {_CLI_SCHEMES} URL")
    try:
        scheme = store_scheme(url)
        if scheme == "memory":
            # open_store accepts it (for tests and notebooks), but each command is its own
            # process.
            raise UsageError(
                f"{option} {url!r}: a memory:// store lasts only as long as one command, so "
                f"nothing stored in it would survive; give {_CLI_SCHEMES} URL"
            )
        if scheme not in ("", "file", "s3", "gs", "gcs"):
            raise UsageError(
                f"{option} {url!r}: unsupported scheme {scheme!r}; give {_CLI_SCHEMES} URL"
            )
        return check_store_url(url)
    except StoreConfigError as e:
        raise UsageError(f"{option}: {e}") from e


def _through_cache(
    args: argparse.Namespace, store: ContentAddressedArtifactStore
) -> ContentAddressedArtifactStore:
    """``store`` read through the local cache; without it if the default cache is unusable.

    The cache only saves repeated downloads, it is never needed for a correct result: a default
    directory that cannot be created (no writable home) or a damaged cache database costs a
    warning, not the command. A directory that was asked for (``--cache-dir``, or
    ``$OPTUNA_CAS_CACHE_DIR``) is an error naming the option or the variable.
    """
    from optuna_cas.exceptions import StoreConfigError
    from optuna_cas.middleware.cache import CachedArtifactStore

    try:
        return CachedArtifactStore(store, directory=args.cache_dir)
    except StoreConfigError as e:
        source = _cache_dir_source(args)
        if source is not None:
            raise CommandError(f"{source}: {e}") from e  # e names the directory
        print(
            f"optuna-cas: warning: reading without the local cache: {esc(str(e))} "
            "(pass --cache-dir DIR to use another directory, or --no-cache)",
            file=sys.stderr,
        )
        return store


def _cache_dir_source(args: argparse.Namespace) -> str | None:
    """Who asked for the cache directory: ``--cache-dir``, ``$OPTUNA_CAS_CACHE_DIR``, or None.

    None is the default directory, which nobody chose: only that one may be skipped with a
    warning when it cannot be used.
    """
    if args.cache_dir:
        return "--cache-dir"
    if os.environ.get(CACHE_DIR_ENV):
        return f"${CACHE_DIR_ENV}"
    return None


def _check_endpoint_applies(args: argparse.Namespace, url: str) -> None:
    """An explicit ``--endpoint-url`` must reach an s3:// store, not be dropped in silence.

    GCS stores take no endpoint here (open_store refuses one; the google client reads
    ``STORAGE_EMULATOR_HOST``). ``$OPTUNA_CAS_ENDPOINT_URL`` is not checked: it may be set for
    the s3:// stores of a session that also uses others.
    """
    from optuna_cas.registry import store_scheme

    if not args.endpoint_url:
        return
    # sync reads one store and writes another: the endpoint is fine if either is on S3.
    urls = [args.src, args.dst] if getattr(args, "command", None) == "sync" else [url]
    if not any(store_scheme(u) == "s3" for u in urls):
        named = " or ".join(repr(u) for u in urls)
        raise UsageError(
            f"--endpoint-url {args.endpoint_url!r} applies to s3:// stores only, not to {named}"
            " (a GCS emulator is set with STORAGE_EMULATOR_HOST)"
        )


def _check_endpoint(args: argparse.Namespace, endpoint: str) -> None:
    """An endpoint must be an http(s) URL with a host; the error names where it came from.

    boto3's own complaint (``Invalid endpoint: notaurl``) says neither.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(endpoint)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # an invalid port or IPv6 address
        ok = False
    if ok:
        return
    expected = "an http:// or https:// URL with a host, e.g. http://127.0.0.1:9000"
    if args.endpoint_url:
        raise UsageError(f"--endpoint-url {endpoint!r} is not {expected}")
    raise CommandError(f"${ENDPOINT_ENV} {endpoint!r} is not {expected}")


def _load_study(args: argparse.Namespace) -> Any:
    """The study of ``--storage``/``--study``, or None if neither was given."""
    if not (args.study or args.storage or args.trial is not None):
        return None
    if not (args.study and args.storage):
        raise UsageError("--study and --storage go together (and --trial needs both)")
    from optuna_cas._optuna import import_optuna

    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _open_storage(args.storage)
    try:
        return optuna.load_study(study_name=args.study, storage=storage)
    except KeyError as e:
        raise CommandError(f"no study named {args.study!r} in {args.storage}") from e


def _open_storage(url: str) -> Any:
    """``--storage`` as the dashboard opens it: a database URL or a journal file's path.

    A mistyped SQLite path is an error, not a new empty database; every error names the value.
    """
    from optuna_cas.dashboard import open_optuna_storage
    from optuna_cas.exceptions import StoreConfigError

    try:
        return open_optuna_storage(url)
    except StoreConfigError as e:
        raise CommandError(f"--storage: {e}") from e


def _trial(args: argparse.Namespace, study: Any) -> Any:
    """The FrozenTrial ``--trial NUMBER`` names (the number the user typed, never the ID)."""
    storage = study._storage
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, args.trial)
    except KeyError as e:
        raise CommandError(f"study {args.study!r} has no trial number {args.trial}") from e
    return storage.get_trial(trial_id)


def _optuna_target(args: argparse.Namespace, *, uploading: bool = False) -> tuple[Any, Any] | None:
    """(study_or_trial, storage) from --storage/--study/--trial, or None if not given."""
    study = _load_study(args)
    if study is None:
        return None
    if args.trial is None:
        return study, study._storage
    trial = _trial(args, study)
    if uploading and trial.state.is_finished():
        raise CommandError(
            f"trial {args.trial} of study {args.study!r} has finished "
            f"({trial.state.name}) and Optuna allows no new artifacts on it; "
            "leave out --trial to attach the file to the study"
        )
    return trial, study._storage


# -- argument types: a bad value is a usage error naming the option and the value -------------


def _checked(
    parse: Callable[[str], T], ok: Callable[[T], bool], expected: str
) -> Callable[[str], T]:
    def convert(text: str) -> T:
        with contextlib.suppress(ValueError):
            value = parse(text)
            if ok(value):
                return value
        raise argparse.ArgumentTypeError(f"{clip(text, 40)} is not {expected}")

    return convert


# --retries: attempts per request, 1 (no retry) to 100.
_retries = _checked(int, lambda n: 1 <= n <= 100, "a whole number from 1 to 100")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _parse_duration(text: str) -> float:
    """Seconds, as a number (``7200``, ``0.5``) or with a unit: ``90s``, ``30m``, ``2h``, ``1d``.

    Example:
        >>> _parse_duration("2h"), _parse_duration("1.5m"), _parse_duration("7200")
        (7200.0, 90.0, 7200.0)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", text, re.IGNORECASE)
    if match is None:
        return float(text)  # also 1e3; nan, inf and a negative are refused by the caller
    return float(match[1]) * _DURATION_UNITS[match[2].lower()]


def _parse_size(text: str) -> int:
    """Bytes, as a whole number or with a binary unit: ``512K``, ``5G``, ``5GiB``, ``1.5T``.

    K, M, G and T are powers of 1024 (as ``cache info`` and every summary count them), with
    or without ``iB``; ``GB`` and the like are refused, since some read them as powers of
    1000. A fraction is allowed with a unit and rounded down to whole bytes.

    Example:
        >>> _parse_size("5G") == _parse_size("5GiB") == 5 * 1024**3, _parse_size("1.5k")
        (True, 1536)
    """
    match = re.fullmatch(
        r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:ib)?|b)?\s*", text, re.IGNORECASE
    )
    if match is None:
        raise ValueError(text)
    number, unit = match[1], (match[2] or "").lower()
    if not unit:
        return int(number)  # bytes: a fraction ("1.5") is refused here
    return int(float(number) * _SIZE_UNITS[unit])


# --grace: a finite duration >= 0.
_seconds = _checked(
    _parse_duration,
    lambda s: math.isfinite(s) and s >= 0,
    "a duration >= 0: seconds, or a number with s, m, h or d (e.g. 2h)",
)
# --port: 0 (a free one) to 65535.
_port = _checked(int, lambda n: 0 <= n <= 65535, "a port number from 0 to 65535")
# --max-bytes: a whole number of bytes >= 0, or a size with a binary unit.
_byte_count = _checked(
    _parse_size,
    lambda n: n >= 0,
    "a size >= 0: whole bytes, or a number with K, M, G or T (powers of 1024; e.g. 5G or 5GiB)",
)
