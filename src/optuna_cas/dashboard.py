"""optuna-dashboard over an optuna-cas store, with its artifact deletes made safe.

optuna-dashboard accepts any object with ``open_reader``/``write``/``remove`` as its artifact
store, so previews, downloads and uploads work with ours unchanged. Its delete does not: it
removes the artifact first and records the deletion afterwards. On a finished trial Optuna
refuses that record (``UpdateFinishedTrialError``, HTTP 500), leaving metadata that points at
nothing, and the route removes whatever ID it is given, recorded on that trial or not.

:func:`dashboard_app` puts a small WSGI layer in front of the dashboard that checks each
artifact delete first. It answers 404 for an artifact the trial or study does not record,
409 for a finished trial's (nothing is removed; ``optuna-cas rm`` records such a deletion on
the study instead), and otherwise writes the deletion record *before* letting the dashboard
remove the ref, the same order as :func:`optuna_cas.delete_artifact`. The blob itself stays
until :func:`optuna_cas.gc` finds nothing using it.

A study deletion removes every artifact the study's metadata lists; those already gone (a ref
removed by ``optuna-cas rm`` without ``--trial``, say) are skipped, where the dashboard alone
would stop at the first with HTTP 500 and keep the study (docs/dashboard.md).

The check fails closed: the dashboard gets the store behind a wrapper whose ``remove`` removes
only what the layer approved for the request being served. A request that reaches one of the
dashboard's delete routes without matching the layer's own reading of the path (bottle
normalises paths its own way) removes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from socketserver import ThreadingMixIn
from typing import Any, BinaryIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from optuna_cas._delete import is_live
from optuna_cas._meta import ARTIFACTS_ATTR_PREFIX, is_tombstone
from optuna_cas._optuna import (
    MetadataTarget,
    import_optuna,
    study_id_of_trial,
)
from optuna_cas._terminal import escape_for_terminal
from optuna_cas.exceptions import ArtifactNotFound, StoreConfigError, not_found_as_ours

__all__ = ["dashboard_app", "open_optuna_storage", "serve_dashboard"]

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# The dashboard's routes that remove artifacts. Bottle's ``int`` is ``-?\d+``; longer numbers
# than any ID here simply do not match, and then nothing may be removed (see _approved).
_ID = r"(-?\d{1,19})"
_TRIAL_ARTIFACT_DELETE = re.compile(rf"/api/artifacts/{_ID}/{_ID}/([0-9a-fA-F-]+)")
_STUDY_ARTIFACT_DELETE = re.compile(rf"/api/artifacts/{_ID}/([0-9a-fA-F-]+)")
_STUDY_DELETE = re.compile(rf"/api/studies/{_ID}")  # removes all the study's artifacts
# The artifact IDs the request being served may remove; _ANY for a study deletion.
_ANY = "*"
_approved: ContextVar[frozenset[str]] = ContextVar("optuna_cas_dashboard_removals")
# Where dashboards before optuna.artifacts recorded a trial's artifacts: on the study.
_LEGACY_TRIAL_PREFIX = "dashboard:artifacts:{trial_id}:"


def _import_dashboard() -> Any:
    try:
        import optuna_dashboard
    except ImportError as e:
        raise StoreConfigError(
            "The dashboard needs optuna-dashboard: pip install 'optuna-cas[dashboard]'"
        ) from e
    return optuna_dashboard


# What --storage and dashboard STORAGE accept, for error messages.
_STORAGE_FORMS = (
    "give the path of an Optuna journal file (JournalStorage) or a database URL such as "
    "sqlite:///path.db"
)
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def open_optuna_storage(url: str) -> Any:
    """Open an Optuna storage by URL, refusing to invent one from a typo.

    A database URL (``sqlite:///db.sqlite3``, ``postgresql://...``) gives an ``RDBStorage``;
    the path of an existing journal file gives a ``JournalStorage``. A SQLite file that does
    not exist is an error naming it (SQLAlchemy would silently create an empty database).
    Every error names ``url`` (without its password) and says what is accepted; a SQLite
    database given as a bare path is refused with the URL to use instead.

    Raises:
        StoreConfigError: No storage at ``url``, or it cannot be opened (not a journal file,
            not a database, no driver for the URL's database).

    Example:
        >>> import os, tempfile
        >>> url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "db.sqlite3")
        >>> import optuna; optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> _ = optuna.create_study(storage=url, study_name="s")
        >>> open_optuna_storage(url).get_all_studies()[0].study_name
        's'
        >>> open_optuna_storage("sqlite:///no/such.db")
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.StoreConfigError: no SQLite database at 'no/such.db'
        >>> open_optuna_storage(url[len("sqlite:///") :])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        optuna_cas.exceptions.StoreConfigError: '...db.sqlite3' is a SQLite database, not a journal file: give it as sqlite:///...db.sqlite3
    """
    optuna = import_optuna()
    if "://" not in url:
        return _open_journal(optuna, url)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :].split("?", 1)[0]
        if path and path != ":memory:" and not os.path.isfile(path):
            raise StoreConfigError(f"no SQLite database at {path!r}")
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.storages.RDBStorage(url)
    except (SQLAlchemyError, ImportError, ValueError) as e:
        # SQLAlchemy's messages name neither the URL nor the file ("file is not a database"),
        # and Optuna's ImportError does not say which driver: name the value the user gave.
        reason = str(getattr(e, "orig", None) or e).splitlines()[0]
        # SQLAlchemy quotes an unparsable URL whole, password and all.
        reason = reason.replace(url, _without_password(url))
        if isinstance(e.__cause__, ImportError) and e.__cause__.name:
            reason += f" (no module named {e.__cause__.name!r})"
        raise StoreConfigError(
            f"cannot open the Optuna storage {_without_password(url)!r}: {reason} "
            f"({_STORAGE_FORMS})"
        ) from e


def _open_journal(optuna: Any, path: str) -> Any:
    """The JournalStorage of the file at ``path``, or an error naming it."""
    # A bare path to a SQLite file is the likeliest slip: "sqlite:///" forgotten.
    sqlite_hint = (
        f" (for a SQLite database: sqlite:///{path})"
        if path.lower().endswith(_SQLITE_SUFFIXES)
        else ""
    )
    if not os.path.isfile(path):
        raise StoreConfigError(f"no Optuna storage at {path!r}: {_STORAGE_FORMS}{sqlite_hint}")
    with open(path, "rb") as file:
        if file.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC:
            raise StoreConfigError(
                f"{path!r} is a SQLite database, not a journal file: give it as sqlite:///{path}"
            )
    from optuna.storages.journal import JournalFileBackend

    try:
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        # Whatever the file holds that is not a journal: bytes that are not UTF-8 (ValueError),
        # lines that are not JSON, or JSON that is not a journal entry.
        raise StoreConfigError(
            f"{path!r} is not an Optuna journal file ({e}): {_STORAGE_FORMS}{sqlite_hint}"
        ) from e


def _without_password(url: str) -> str:
    """``url`` fit for an error message: a password in it is masked.

    Everything between the user name and the last ``@`` goes: a password may hold ``/`` or
    ``@`` unescaped, and masking too much is the safe side.

    Example:
        >>> _without_password("postgresql://me:secret@db:5432/optuna")
        'postgresql://me:***@db:5432/optuna'
        >>> _without_password("postgresql://me:p/s@s@db/optuna")
        'postgresql://me:***@db/optuna'
        >>> _without_password("sqlite:///study.db")
        'sqlite:///study.db'
    """
    scheme, separator, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not (separator and at and ":" in userinfo):
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def dashboard_app(storage: Any, artifact_store: Any) -> WsgiApp:
    """optuna-dashboard's WSGI application over ``artifact_store``, with safe artifact deletes.

    Serve it with any WSGI server (gunicorn, uWSGI, wsgiref); :func:`serve_dashboard` does
    that for you.

    Args:
        storage: An Optuna storage object or URL (see :func:`open_optuna_storage`).
        artifact_store: Any optuna-cas store (or anything with Optuna's three methods).

    Raises:
        StoreConfigError: optuna-dashboard is not installed, or no storage at the URL.

    Example:
        >>> import optuna
        >>> from optuna_cas import MemoryArtifactStore
        >>> storage = optuna.storages.InMemoryStorage()
        >>> app = dashboard_app(storage, MemoryArtifactStore())
        >>> callable(app)
        True
    """
    dashboard = _import_dashboard()
    if isinstance(storage, str):
        storage = open_optuna_storage(storage)
    inner = dashboard.wsgi(storage, artifact_store=_RemoveOnlyApproved(artifact_store))
    return _SafeDeletes(inner, storage)


def serve_dashboard(
    storage: Any,
    artifact_store: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    ready: Callable[[str], None] | None = None,
    log_requests: bool = True,
) -> None:
    """Serve optuna-dashboard over ``artifact_store`` until interrupted (Ctrl-C).

    Args:
        storage: An Optuna storage object or URL (see :func:`open_optuna_storage`).
        artifact_store: The optuna-cas store holding the study's artifacts.
        host: Address to listen on; the default accepts local connections only.
        port: Port to listen on; 0 picks a free one (``ready`` is told which).
        ready: Called with the server's URL once it accepts connections.
        log_requests: Log one line per request on stderr.

    Raises:
        StoreConfigError: optuna-dashboard is not installed, or no storage at the URL.
        OSError: The address cannot be bound (the message names ``host:port``).

    Example:
        >>> from optuna_cas import FileSystemArtifactStore
        >>> serve_dashboard("sqlite:///db.sqlite3", FileSystemArtifactStore("./artifacts"),
        ...                 port=8080)  # doctest: +SKIP
    """
    app = dashboard_app(storage, artifact_store)
    handler = _RequestLog if log_requests else _Quiet
    try:
        server = make_server(host, port, app, server_class=_ThreadedServer, handler_class=handler)
    except OSError as e:
        # The socket's own words ("Address already in use", "Name or service not known") do
        # not say which address; several dashboards on one machine make that the question.
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # The same class as e (PermissionError, ...), its errno kept, its message naming where.
        error = type(e)(f"cannot listen on {address}: {e.strerror or e}")
        error.errno = e.errno
        raise error from e
    with server:
        if ready is not None:
            ready(f"http://{host}:{server.server_port}/")
        server.serve_forever()


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    # The dashboard's pages fetch many API routes at once; one slow request must not stall
    # the rest, and request threads must not keep the process alive after Ctrl-C.
    daemon_threads = True


class _RequestLog(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # Request lines are whatever a client sent: escape them for the terminal.
        line = format % args
        print(f"{self.address_string()} {escape_for_terminal(line)}", file=sys.stderr)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _SafeDeletes:
    """WSGI layer: check an artifact delete and record it before the dashboard removes it."""

    def __init__(self, app: WsgiApp, storage: Any) -> None:
        self._app = app
        self._storage = storage

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        approved: frozenset[str] = frozenset()
        refusal: tuple[str, str] | None = None
        if str(environ.get("REQUEST_METHOD", "")).upper() == "DELETE":
            path = str(environ.get("PATH_INFO", ""))
            if match := _TRIAL_ARTIFACT_DELETE.fullmatch(path):
                study_id, trial_id, artifact_id = int(match[1]), int(match[2]), match[3]
                refusal = self._prepare_trial_delete(study_id, trial_id, artifact_id)
                approved = frozenset([artifact_id])
            elif match := _STUDY_ARTIFACT_DELETE.fullmatch(path):
                refusal = self._prepare_study_delete(int(match[1]), match[2])
                approved = frozenset([match[2]])
            elif _STUDY_DELETE.fullmatch(path):
                approved = frozenset([_ANY])  # the study goes, and all its artifacts with it
        if refusal is not None:
            status, reason = refusal
            body = json.dumps({"reason": reason}).encode()
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            start_response(status, headers)
            return [body]
        # Bottle runs the route inside this call, in this thread: the approval is seen by
        # _RemoveOnlyApproved.remove and by nothing else.
        token = _approved.set(approved)
        try:
            return self._app(environ, start_response)
        finally:
            _approved.reset(token)

    def _prepare_trial_delete(
        self, study_id: int, trial_id: int, artifact_id: str
    ) -> tuple[str, str] | None:
        """None to let the dashboard go on (the deletion is already recorded), else a refusal."""
        optuna = import_optuna()
        try:
            trial = self._storage.get_trial(trial_id)
            owner = study_id_of_trial(self._storage, trial_id)
        except (KeyError, ValueError):
            return "404 Not Found", f"artifact {artifact_id}: there is no trial with ID {trial_id}"
        if owner != study_id:
            return (
                "404 Not Found",
                f"artifact {artifact_id}: the trial with ID {trial_id} is not in study {study_id}",
            )
        legacy_key = _LEGACY_TRIAL_PREFIX.format(trial_id=trial_id) + artifact_id
        legacy = self._storage.get_study_system_attrs(study_id).get(legacy_key)
        target = MetadataTarget(storage=self._storage, trial_id=trial_id, study_id=study_id)
        recorded_legacy = not is_tombstone(legacy)
        if not (recorded_legacy or is_live(target, artifact_id)):
            # The trial's number, as the dashboard shows it and the 409 below says (not its ID).
            return (
                "404 Not Found",
                f"artifact {artifact_id}: trial {trial.number} does not record it",
            )
        # The dashboard shows the reason after "Failed to delete " (and adds the full stop).
        finished = (
            f"an artifact of trial {trial.number}: the trial has finished, and Optuna lets no "
            "one change a finished trial, so the deletion could not be recorded; nothing was "
            f"deleted. 'optuna-cas rm {artifact_id} --storage URL --study NAME --trial "
            f"{trial.number}' records it on the study instead"
        )
        if trial.state.is_finished():
            return "409 Conflict", finished
        # Record the deletion first: should the trial finish between the check above and the
        # dashboard's own record, the entry already says "deleted" and nothing dangles.
        key = ARTIFACTS_ATTR_PREFIX + artifact_id
        if key in self._storage.get_trial_system_attrs(trial_id):
            try:
                self._storage.set_trial_system_attr(trial_id, key, json.dumps(None))
            except optuna.exceptions.UpdateFinishedTrialError:
                return "409 Conflict", finished  # it finished a moment ago
        if recorded_legacy:
            self._storage.set_study_system_attr(study_id, legacy_key, json.dumps(None))
        return None

    def _prepare_study_delete(self, study_id: int, artifact_id: str) -> tuple[str, str] | None:
        target = MetadataTarget(storage=self._storage, trial_id=None, study_id=study_id)
        try:
            live = is_live(target, artifact_id)
        except KeyError:
            return "404 Not Found", f"artifact {artifact_id}: there is no study with ID {study_id}"
        if not live:
            return "404 Not Found", f"artifact {artifact_id}: study {study_id} does not record it"
        target.set_system_attr(ARTIFACTS_ATTR_PREFIX + artifact_id, json.dumps(None))
        return None


class _RemoveOnlyApproved:
    """The store as the dashboard sees it: ``remove`` only what _SafeDeletes approved."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def open_reader(self, artifact_id: str) -> BinaryIO:
        reader: BinaryIO = self._store.open_reader(artifact_id)
        return reader

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._store.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        approved = _approved.get(frozenset())
        if artifact_id not in approved and _ANY not in approved:
            # ArtifactNotFound is what the dashboard's delete routes answer 404 to, before
            # they record anything.
            raise ArtifactNotFound(
                f"Artifact {artifact_id!r} was not removed: the request was not checked"
            )
        if _ANY not in approved:
            self._store.remove(artifact_id)  # a missing one is the route's 404
            return
        # A study deletion: the dashboard removes every artifact the metadata lists, then
        # deletes the study, and an ArtifactNotFound midway would fail it (HTTP 500) with
        # part of the artifacts gone and the study kept. One already removed (optuna-cas rm
        # without --trial, a deletion recorded on the study for a finished trial) is what
        # this request wants anyway: skip it. A foreign store says so with Optuna's class.
        with contextlib.suppress(ArtifactNotFound), not_found_as_ours(artifact_id):
            self._store.remove(artifact_id)
