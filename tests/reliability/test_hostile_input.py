"""Scenario 4: bad and hostile input to every public function, the store methods and the CLI.

Hypothesis throws artifact IDs, file names (unicode, very long, control characters, path
tricks), mimetypes, encodings, destinations and store URLs at the API. Each call must either
work or raise one of our documented errors; the directory tree around the store is
snapshotted before and after, and nothing may change outside the store except the file a
successful download was asked to create (so no partial file, no temp file, nothing written
through a path trick). Symlinks planted inside a local store must not lead out of it.
"""

from __future__ import annotations

import errno
import io
import json
import mimetypes
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optuna_cas import (
    FileSystemArtifactStore,
    delete_artifact,
    download_artifact,
    gc,
    get_all_artifact_meta,
    open_store,
    upload_artifact,
    verify,
)
from optuna_cas._validation import validate_artifact_id
from optuna_cas.exceptions import (
    ArtifactNotFound,
    IntegrityError,
    InvalidKeyError,
    StoreConfigError,
)
from tests.reliability._common import SOAK, record, scale

pytestmark = pytest.mark.reliability

EXAMPLES = scale(150, 1500)
CLI_EXAMPLES = scale(6, 40)
SCRIPT = Path(sys.executable).with_name("optuna-cas")
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not SOAK,  # the short run is reproducible; the soak explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

HOSTILE = [
    "",
    ".",
    "..",
    "../x",
    "../../outside/pwned",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "\x00",
    "a\x00b",
    "\n",
    "\t\r",
    "\x1b[31mred",
    "\x7f",
    " ",
    "-",
    "--help",
    "~",
    ".tmp-x",
    ".hidden",
    "refs",
    "blobs",
    "quarantine",
    "CON",
    "a:b",
    "*?<>|",
    "\u202eevil.exe",
    "\ufeffbom",
    "e\u0301",  # decomposed é
    "é" * 127,  # 254 bytes: a legal file name
    "😀" * 60,  # 240 bytes: a legal file name
    "😀" * 64,  # 256 bytes: too long for any file system
    "x" * 255,
    "x" * 256,
    "a\udc80b",  # a lone surrogate: not encodable as UTF-8
]
names = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=24),  # any unicode (no surrogates), control characters included
    st.text(st.characters(min_codepoint=0x80), min_size=60, max_size=140),  # long, multibyte
    st.text(st.characters(max_codepoint=0x7F), min_size=200, max_size=300),  # long, ascii
    st.builds(lambda a, b: a + b, st.sampled_from(HOSTILE), st.text(max_size=8)),
)
optional_text = st.one_of(st.none(), st.text(max_size=40), st.sampled_from(HOSTILE))
TALLY: Counter[str] = Counter()


# -- helpers ------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path below ``root`` (links not followed) with type, size and mtime."""
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st_.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                found[rel] = ("dir",)
            else:
                found[rel] = ("file", st_.st_size, st_.st_mtime_ns)
    return found


def changes(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def assert_confined(
    before: dict[str, Any], after: dict[str, Any], *, store: str = "sandbox/store", also: Any = ()
) -> None:
    """Nothing changed outside ``store`` except the paths in ``also``."""
    allowed = {os.path.normpath(p) for p in also}
    stray = {
        c
        for c in changes(before, after)
        if c != store and not c.startswith(store + os.sep) and os.path.normpath(c) not in allowed
    }
    assert not stray, f"changed outside the store: {sorted(stray)}"


@contextmanager
def sandbox() -> Iterator[Path]:
    """``<root>/sandbox/{store,in,out}`` and ``<root>/outside``; the root is snapshotted."""
    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    try:
        for d in ("sandbox/store", "sandbox/in", "sandbox/out", "outside"):
            (root / d).mkdir(parents=True)
        (root / "outside" / "secret").write_bytes(b"do not touch")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def attempt(fn: Callable[[], Any], *allowed: type[BaseException]) -> str:
    """Run ``fn``; return "ok" or the name of an allowed error (anything else propagates)."""
    try:
        fn()
    except allowed as e:
        TALLY[type(e).__name__] += 1
        return type(e).__name__
    TALLY["ok"] += 1
    return "ok"


def too_long(name: str) -> bool:
    # The bytes the OS gets: lone surrogates from undecodable bytes go back to those bytes.
    try:
        return len(os.fsencode(name)) > 255
    except UnicodeEncodeError:
        return False


def destination_errors(dest_name: str) -> tuple[type[BaseException], ...]:
    """What creating ``out/<dest_name>`` may legitimately raise."""
    return (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError)


def create_source(directory: Path, name: str, data: bytes) -> Path | None:
    path = Path(f"{directory}/{name}")
    if os.path.normpath(path).startswith(str(directory) + os.sep) and "/" not in name:
        try:
            path.write_bytes(data)
            return path
        except (OSError, ValueError):
            return None
    return None


# -- the Optuna-level API -------------------------------------------------------------------------


@HYPOTHESIS
@given(
    filename=names,
    mimetype=optional_text,
    encoding=optional_text,
    dest=names,
    bad_id=names,
    data=st.binary(max_size=2048),
)
def test_api_with_hostile_names(
    filename: str, mimetype: str | None, encoding: str | None, dest: str, bad_id: str, data: bytes
) -> None:
    import optuna

    with sandbox() as root:
        store = FileSystemArtifactStore(root / "sandbox" / "store")
        study = optuna.create_study()
        trial = study.ask()
        source = create_source(root / "sandbox" / "in", filename, data)
        file_path = str(source) if source else f"{root}/sandbox/in/{filename}"
        artifact_ids: list[str] = []

        def upload() -> None:
            artifact_ids.append(
                upload_artifact(
                    artifact_store=store,
                    file_path=file_path,
                    study_or_trial=trial,
                    mimetype=mimetype,
                    encoding=encoding,
                )
            )

        before = snapshot(root)
        result = attempt(upload, FileNotFoundError, IsADirectoryError, ValueError)
        assert_confined(before, snapshot(root))
        if source is not None:  # also with non-UTF-8 names, mimetypes, encodings (fixed bug)
            assert result == "ok", "a readable regular file must upload"
        if result != "ok":
            assert get_all_artifact_meta(trial) == []
            return
        (meta,) = get_all_artifact_meta(trial)
        basename = os.path.basename(file_path)
        guessed, guessed_encoding = mimetypes.guess_type(basename)
        assert meta.filename == basename
        assert meta.mimetype == (mimetype or guessed or "application/octet-stream")
        assert meta.encoding == (encoding or guessed_encoding)
        assert store.get_ref(meta.artifact_id).filename == basename

        # Download to a hostile destination: the file appears complete, or nothing appears.
        target = f"{root}/sandbox/out/{dest}"
        if not os.path.normpath(target).startswith(f"{root}/sandbox{os.sep}"):
            target = f"{root}/sandbox/out/x{dest.replace('/', '_')}"
        before = snapshot(root)
        try:
            result = attempt(
                lambda: download_artifact(
                    artifact_store=store, file_path=target, artifact_id=meta.artifact_id
                ),
                *destination_errors(dest),
            )
        except OSError as e:
            if e.errno != errno.ENAMETOOLONG:
                raise
            # The file system refuses the name: legitimate only if it really is too long (temp
            # names once were cut by characters, not bytes: a fixed bug).
            assert too_long(Path(target).name), target
            TALLY["ENAMETOOLONG"] += 1
            result = "ENAMETOOLONG"
        after = snapshot(root)
        rel_target = os.path.relpath(target, root)
        assert_confined(before, after, also=[rel_target] if result == "ok" else [])
        if result == "ok":
            assert Path(target).read_bytes() == data

        # Hostile IDs: not found or invalid, nothing created anywhere.
        before = snapshot(root)
        attempt(
            lambda: download_artifact(
                artifact_store=store, file_path=f"{root}/sandbox/out/by-id", artifact_id=bad_id
            ),
            ArtifactNotFound,
            ValueError,
        )
        attempt(
            lambda: delete_artifact(artifact_store=store, artifact_id=bad_id, study_or_trial=trial),
            ArtifactNotFound,
            ValueError,
        )
        assert_confined(before, snapshot(root))
        assert len(get_all_artifact_meta(trial)) == 1

        # The real one deletes cleanly, once.
        delete_artifact(artifact_store=store, artifact_id=meta.artifact_id, study_or_trial=trial)
        assert get_all_artifact_meta(trial) == []
        with pytest.raises(ArtifactNotFound):
            delete_artifact(
                artifact_store=store, artifact_id=meta.artifact_id, study_or_trial=trial
            )
        assert verify(store).ok


# -- Optuna metadata planted by someone else -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
not_a_string = json_values.filter(lambda v: v is not None and not isinstance(v, str))
not_a_size = st.one_of(
    st.text(max_size=8),
    st.booleans(),
    st.integers(max_value=-1),
    st.floats(),
    st.lists(json_values),
)
META_FIELDS = {"filename": "f.bin", "mimetype": "application/x", "encoding": None}
# What may be planted: (kind, payload); the value is built per key by planted_value().
plantings = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=200)),
    st.tuples(st.just("json"), json_values),
    st.tuples(st.just("raw object"), not_a_string),  # stored as is, not as a JSON string
    st.tuples(
        st.just("deep"), st.tuples(st.sampled_from(["[", '{"a":']), st.integers(33, 200_000))
    ),
    st.tuples(st.just("huge"), st.integers(1, 4096)),
    st.tuples(
        st.just("wrong field"),
        st.one_of(
            st.tuples(
                st.sampled_from(["filename", "mimetype", "encoding", "digest"]), not_a_string
            ),
            st.tuples(st.just("size"), not_a_size),
            st.tuples(st.just("artifact_id"), json_values),
        ),
    ),
    st.tuples(st.just("missing field"), st.sampled_from(["artifact_id", *META_FIELDS])),
)


def planted_value(kind: str, payload: Any, artifact_id: str) -> Any:
    """A value for ``artifacts:<artifact_id>`` that get_all_artifact_meta must skip."""
    from optuna_cas._json import MAX_RECORD_SIZE

    good = {"artifact_id": artifact_id, **META_FIELDS}
    if kind == "text":
        return payload
    if kind == "json":
        return json.dumps(payload)
    if kind == "raw object":
        return payload
    if kind == "deep":
        opener, depth = payload
        return opener * depth + ("]" * depth if opener == "[" else "1" + "}" * depth)
    if kind == "huge":  # a valid record, but just over the size limit
        text = json.dumps(good | {"pad": ""})
        return text[:-2] + "x" * (MAX_RECORD_SIZE - len(text) + payload) + '"}'
    if kind == "wrong field":
        field, value = payload
        if field == "artifact_id" and value == artifact_id:
            value = [value]
        return json.dumps(good | {field: value})
    return json.dumps({k: v for k, v in good.items() if k != payload})


def _is_tombstone(value: Any) -> bool:
    # JSON null is optuna-dashboard's delete marker: skipped silently, not a malformed entry.
    return isinstance(value, str) and value.strip(" \t\n\r") == "null"


@settings(HYPOTHESIS, max_examples=scale(80, 800))
@given(
    planted=st.lists(st.tuples(plantings, st.text(max_size=12)), max_size=8),
    split=st.integers(0, 8),
    on_study=st.booleans(),
)
def test_planted_metadata_never_hides_good_artifacts(
    planted: list[tuple[tuple[str, Any], str]], split: int, on_study: bool
) -> None:
    import optuna

    from optuna_cas import MemoryArtifactStore
    from optuna_cas.exceptions import MalformedRecordWarning

    store = MemoryArtifactStore()
    study = optuna.create_study()
    owner = study if on_study else study.ask()
    storage, trial_id = study._storage, getattr(owner, "_trial_id", None)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "good.bin"
        source.write_bytes(b"good")

        def upload() -> str:
            return upload_artifact(
                artifact_store=store, file_path=str(source), study_or_trial=owner
            )

        good, bad_keys = [upload()], []
        for i, ((kind, payload), suffix) in enumerate(planted):
            if i == split:
                good.append(upload())
            artifact_id = f"bad-{i}{suffix}"
            value = planted_value(kind, payload, artifact_id)
            if _is_tombstone(value):
                continue
            key = "artifacts:" + artifact_id
            if trial_id is None:
                storage.set_study_system_attr(study._study_id, key, value)
            else:
                storage.set_trial_system_attr(trial_id, key, value)
            bad_keys.append(key)
            TALLY[f"planted {kind}"] += 1
        good.append(upload())

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metas = get_all_artifact_meta(owner)
    assert [m.artifact_id for m in metas] == good
    messages = [str(w.message) for w in caught if w.category is MalformedRecordWarning]
    assert len(messages) == len(bad_keys), messages
    for key in bad_keys:
        assert sum(m.startswith(f"artifact metadata {key!r}: ") for m in messages) == 1, key


# -- the store methods ----------------------------------------------------------------------


def _exercise_store(store: Any, artifact_id: Any, data: bytes) -> None:
    """Every store method with one (possibly hostile) ID; valid IDs must round-trip."""
    try:
        validate_artifact_id(artifact_id)
        valid = True
    except InvalidKeyError:
        valid = False
    errors = (InvalidKeyError, ArtifactNotFound)
    # Lone surrogates pass our validator but no file system or HTTP API can encode them:
    # the OS layer raises UnicodeEncodeError, a ValueError (documented as such).
    encodable = isinstance(artifact_id, str) and _encodable(artifact_id)
    if not valid or not encodable:
        for call in (
            lambda: store.open_reader(artifact_id),
            lambda: store.get_ref(artifact_id),
            lambda: store.remove(artifact_id),
            lambda: store.write(artifact_id, io.BytesIO(data)),
            lambda: store.put(artifact_id, io.BytesIO(data), filename=artifact_id),
        ):
            outcome = attempt(call, *errors, ValueError)
            assert outcome != "ok" or (valid and outcome == "ok"), artifact_id
        return
    attempt(lambda: store.open_reader(artifact_id), ArtifactNotFound)
    store.write(artifact_id, io.BytesIO(data))  # every valid ID (temp names cut by bytes)
    with store.open_reader(artifact_id) as reader:
        assert reader.read() == data
    ref = store.put(artifact_id, io.BytesIO(data[::-1]), filename=artifact_id, mimetype=artifact_id)
    assert store.get_ref(artifact_id) == ref
    store.remove(artifact_id)
    with pytest.raises(ArtifactNotFound):
        store.remove(artifact_id)
    TALLY["round-trip"] += 1


def _encodable(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:
        return False


ids = st.one_of(names, st.integers(), st.none(), st.binary(max_size=8), st.uuids().map(str))


@HYPOTHESIS
@given(artifact_id=ids, data=st.binary(max_size=1024))
def test_local_store_methods_with_hostile_ids(artifact_id: Any, data: bytes) -> None:
    with sandbox() as root:
        store = FileSystemArtifactStore(root / "sandbox" / "store")
        before = snapshot(root)
        _exercise_store(store, artifact_id, data)
        assert_confined(before, snapshot(root))
        assert verify(store).ok


@pytest.mark.s3
@settings(HYPOTHESIS, max_examples=scale(20, 200))
@given(artifact_id=ids, data=st.binary(max_size=1024))
def test_s3_store_methods_with_hostile_ids(
    artifact_id: Any, data: bytes, s3_server: Any, s3_bucket: str
) -> None:
    from tests.reliability._common import boto3_store

    store = boto3_store(s3_bucket, s3_server.endpoint_url, prefix="hostile", sdk_retries=True)
    _exercise_store(store, artifact_id, data)
    assert verify(store).ok


urls = st.one_of(
    st.builds(
        lambda scheme, rest: f"{scheme}://{rest}",
        st.sampled_from(["s3", "S3", "gs", "gcs", "ftp", "http", "memory", "", "s3:", "x-y"]),
        names,
    ),
    names,
    st.sampled_from(["s3://", "gs://", "s3://b?x=1", "s3://b#f", "file://host/x", "://", ":"]),
)


def _escapes(url: str, base: Path) -> bool:
    """Whether a plain-path URL names a directory outside ``base`` (the caller's right, but
    not something this test should create)."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        return False  # open_store will refuse it too
    if scheme not in ("", "file"):
        return False
    try:
        path = os.path.expanduser(url if scheme == "" else unquote(urlsplit(url).path))
    except ValueError:
        return False  # a NUL byte: refused before anything is created
    if os.path.isabs(path):
        return True
    return not os.path.normpath(base / path).startswith(str(base) + os.sep)


@HYPOTHESIS
@given(url=urls)
def test_open_store_with_hostile_urls(url: str) -> None:
    with sandbox() as root:
        if _encodable_path(url) and _escapes(url, root / "sandbox"):
            return
        cwd = os.getcwd()
        os.chdir(root / "sandbox")  # plain paths are relative to here
        try:
            before = snapshot(root)
            # Impossible paths and ~unknownuser are StoreConfigErrors too (fixed bugs).
            outcome = attempt(lambda: open_store(url), StoreConfigError, ValueError)
            after = snapshot(root)
        finally:
            os.chdir(cwd)
        created = changes(before, after)
        if created:
            # Only a plain path or file:// URL creates anything: the store directory it names
            # (and its parents, mkdir -p), inside the sandbox this test ran in.
            assert all(c.startswith("sandbox" + os.sep) for c in created), created
            if outcome != "ok":
                # mkdir -p made the parents before the OS refused the last name: empty
                # directories only, never a file.
                assert all(after[c] == ("dir",) for c in created), created
                TALLY["open_store failed after creating parent directories"] += 1


# -- the command line -----------------------------------------------------------------------


def _encodable_path(text: str) -> bool:
    try:
        os.fsencode(text)
        return True
    except UnicodeEncodeError:
        return False


def _argv_ok(args: list[str]) -> bool:
    try:
        return all("\x00" not in a and os.fsencode(a) is not None for a in args)
    except UnicodeEncodeError:
        return False


@settings(HYPOTHESIS, max_examples=CLI_EXAMPLES)
@given(
    command=st.sampled_from(["put", "get", "rm", "stats-url", "put-mimetype"]),
    name=names,
    other=names,
)
def test_cli_with_hostile_arguments(command: str, name: str, other: str) -> None:
    with sandbox() as root:
        work = root / "sandbox"
        store = FileSystemArtifactStore(work / "store")
        store.write("known", io.BytesIO(b"known bytes"))
        source = work / "in" / "model.bin"
        source.write_bytes(b"weights")
        base = ["--store", str(work / "store"), "-q"]
        expect_file: list[str] = []
        if command == "put":
            create_source(work / "in", name, b"hostile")
            args = [*base, "put", f"in/{name}"]
        elif command == "put-mimetype":
            args = [*base, "put", "in/model.bin", "--mimetype", name, "--encoding", other]
        elif command == "get":
            artifact_id = "known" if len(other) % 2 else other
            args = [*base, "get", "--", artifact_id, f"out/{name}"]
            expect_file = [os.path.join("sandbox", "out", name)]
            if os.path.isdir(work / "out" / name):
                # A directory as DEST gets DEST/<recorded name> (docs/cli.md); "known" was
                # written without a file name, so the artifact ID names it.
                expect_file.append(os.path.join("sandbox", "out", name, artifact_id))
        elif command == "rm":
            args = [*base, "rm", "--", name]
        else:
            args = ["--store", f"s3://{name}", "--endpoint-url", "http://127.0.0.1:9"]
            args += ["--retries", "1", "stats"]
        if not _argv_ok(args):
            return
        before = snapshot(root)
        result = subprocess.run(
            [str(SCRIPT), *args],
            cwd=work,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=120,
            env={
                **os.environ,
                "OPTUNA_CAS_CACHE_DIR": str(work / "store" / ".cache"),
                # Fail fast on the unreachable endpoint: no SDK retries, no metadata probes.
                "AWS_MAX_ATTEMPTS": "1",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
            },
        )
        TALLY[f"cli exit {result.returncode}"] += 1
        assert result.returncode in (0, 1, 2), result
        assert "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        if result.returncode == 1:
            assert len(lines) == 1 and lines[0].startswith("optuna-cas: error: "), lines
        elif result.returncode == 2:
            assert ": error: " in lines[-1], lines
        assert_confined(before, snapshot(root), also=expect_file if result.returncode == 0 else [])


# -- symlinks planted inside a local store --------------------------------------------------


def test_symlinks_in_a_local_store_do_not_lead_out_of_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    root = tmp_path / "store"
    store = FileSystemArtifactStore(root)
    content_of_a = b"content of a" * 400  # > INLINE_LIMIT: a blob the links can point at
    store.write("a", io.BytesIO(content_of_a))
    digest = store.get_ref("a").digest
    head, tail = digest.hexdigest[:2], digest.hexdigest[2:]
    blob_dir = root / "blobs" / "blake3" / head
    outcomes: dict[str, str] = {}

    def check(case: str, *calls: tuple[str, Callable[[], Any]]) -> None:
        before = snapshot(tmp_path)
        for label, call in calls:
            outcomes[f"{case}: {label}"] = attempt(
                call, InvalidKeyError, ArtifactNotFound, IntegrityError
            )
        stray = [c for c in changes(before, snapshot(tmp_path)) if c.startswith("outside")]
        assert not stray, f"{case}: changed outside the store: {stray}"

    def read(artifact_id: str) -> Callable[[], bytes]:
        def go() -> bytes:
            with store.open_reader(artifact_id) as reader:
                data: bytes = reader.read()
            return data

        return go

    # 1. The refs directory is a link to a directory outside, holding a copy of the ref.
    shutil.copytree(root / "refs", outside / "refs")
    os.rename(root / "refs", tmp_path / "refs.orig")
    os.symlink(outside / "refs", root / "refs")
    check(
        "refs -> outside dir",
        ("read", read("a")),
        ("write", lambda: store.write("b", io.BytesIO(b"b"))),
        ("remove", lambda: store.remove("a")),
    )
    assert outcomes["refs -> outside dir: read"] != "ok"
    assert sorted(os.listdir(outside / "refs")) == ["a"]
    os.unlink(root / "refs")
    os.rename(tmp_path / "refs.orig", root / "refs")

    # 2. A blob fan-out directory is a link to a directory outside, holding the blob.
    shutil.copytree(blob_dir, outside / "fanout")
    shutil.rmtree(blob_dir)
    os.symlink(outside / "fanout", blob_dir)
    check(
        "blobs/blake3/<xx> -> outside dir",
        ("read", read("a")),
        ("write same bytes", lambda: store.write("c", io.BytesIO(content_of_a))),
        ("download", lambda: store.content.materialize_blob(digest, tmp_path / "dl-2")),
    )
    assert outcomes["blobs/blake3/<xx> -> outside dir: read"] != "ok"
    assert outcomes["blobs/blake3/<xx> -> outside dir: write same bytes"] != "ok"
    assert not (tmp_path / "dl-2").exists()
    os.unlink(blob_dir)
    shutil.copytree(outside / "fanout", blob_dir)

    # 3. The whole blobs tree is a link to an (empty) directory outside.
    os.rename(root / "blobs", tmp_path / "blobs.orig")
    (outside / "blobs").mkdir()
    os.symlink(outside / "blobs", root / "blobs")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # takes the staged-copy path
    check(
        "blobs -> outside dir",
        ("write new bytes", lambda: store.write("d", io.BytesIO(b"new bytes" * 600))),
        ("put large file", lambda: store.put("e", big)),
        ("gc", lambda: gc(store, grace_period=0, allow_short_grace=True)),
    )
    assert os.listdir(outside / "blobs") == []
    os.unlink(root / "blobs")
    os.rename(tmp_path / "blobs.orig", root / "blobs")

    # 4. A ref file is a link to a file outside (a valid ref's copy).
    shutil.copy(root / "refs" / "a", outside / "ref-copy")
    store.write("f", io.BytesIO(b"f"))
    os.unlink(root / "refs" / "f")
    os.symlink(outside / "ref-copy", root / "refs" / "f")
    copy_before = (outside / "ref-copy").read_bytes()
    check("refs/<id> -> outside file", ("read", read("f")))
    assert outcomes["refs/<id> -> outside file: read"] == "ArtifactNotFound"
    check(
        "refs/<id> -> outside file",
        ("overwrite", lambda: store.write("f", io.BytesIO(b"f again"))),
        ("remove", lambda: store.remove("f")),
    )
    assert (outside / "ref-copy").read_bytes() == copy_before

    # 5. A blob file is a link to a file outside with the very same bytes.
    blob = blob_dir / tail
    shutil.copy(blob, outside / "blob-copy")
    os.unlink(blob)
    os.symlink(outside / "blob-copy", blob)
    check("blob file -> outside file", ("read", read("a")))
    assert outcomes["blob file -> outside file: read"] != "ok"
    assert (outside / "blob-copy").read_bytes() == content_of_a

    # 6. A legacy (Optuna-written) artifact at the store's top is a link to a file outside.
    os.symlink(outside / "secret", root / "legacy-id")
    check("legacy <id> -> outside file", ("read", read("legacy-id")))
    assert outcomes["legacy <id> -> outside file: read"] == "ArtifactNotFound"

    assert (outside / "secret").read_bytes() == b"secret"
    record_symlinks(outcomes)


def record_symlinks(outcomes: dict[str, str]) -> None:
    TALLY.update({"symlink cases": len(outcomes)})
    record(
        "hostile_input_symlinks",
        {
            "command": "pytest -m reliability tests/reliability/test_hostile_input.py",
            "outcomes": outcomes,
        },
    )


@pytest.fixture(scope="module", autouse=True)
def _record_tally() -> Iterator[None]:
    TALLY.clear()
    yield
    record(
        "hostile_input",
        {
            "command": "pytest -m reliability tests/reliability/test_hostile_input.py",
            "examples_per_property": EXAMPLES,
            "cli_examples": CLI_EXAMPLES,
            "outcomes": dict(sorted(TALLY.items())),
        },
    )
