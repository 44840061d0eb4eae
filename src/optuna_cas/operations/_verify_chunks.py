"""verify over chunked content: manifests, packs and index objects.

Shallow: every manifest parses and describes the file its key names, and every pack it names
is stored with the right size; every index object hashes to its name and parses (a bad one
is reported, not counted as a failure: index objects are hints). Deep, in addition: every
pack hashes to its name, and every chunked file reads back through its manifest, each chunk
and the whole file checked against their digests.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import BinaryIO

import blake3

from optuna_cas._fileio import read_up_to
from optuna_cas.blob_maintenance import QUARANTINE_PREFIX
from optuna_cas.chunks.layout import PACK_MAX, PACK_PREFIX, pack_key
from optuna_cas.chunks.store import ChunkStore, StoredObject
from optuna_cas.chunks.table import ChunkTable
from optuna_cas.digest import ALGORITHM, CHUNK_SIZE, Digest, readinto
from optuna_cas.exceptions import (
    ArtifactNotFound,
    IntegrityError,
    InvalidKeyError,
    NewerFormatError,
    OptunaCasError,
)
from optuna_cas.operations._chunk_listing import ChunkListing
from optuna_cas.operations._gc_chunks import move_out
from optuna_cas.operations._rehash import rehash_problem
from optuna_cas.operations._verify_report import MissingPack, VerifyReport
from optuna_cas.progress import Progress

__all__ = [
    "Manifests",
    "check_indexes",
    "check_manifests",
    "chunk_orphans",
    "deep_bytes",
    "deep_checks",
    "quarantine_chunked",
    "quarantine_one",
]

# Parsed manifests by the file's hex digest, with the object listed.
Manifests = dict[str, tuple[StoredObject, ChunkTable]]
# A deep check: (key, what kind of finding a problem is, the check).
Check = tuple[str, str, Callable[[Progress], str | None]]

# Manifests (each with its parsed table) that use one pack.
Users = list[tuple[StoredObject, ChunkTable]]


def check_manifests(chunks: ChunkStore, listing: ChunkListing, report: VerifyReport) -> Manifests:
    """Parse every manifest and look up every pack it names; return the parsed ones.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> chunks = ChunkStore(MemoryBackend())
        >>> check_manifests(chunks, ChunkListing.of(chunks), VerifyReport(deep=False))
        {}
    """
    report.manifests_checked = len(listing.manifests)
    report.packs_checked = len(listing.packs)
    parsed: Manifests = {}
    set_aside: dict[str, str | None] = {}  # a missing pack's copy under quarantine/, if any
    for obj in listing.manifests:
        try:
            table = chunks.read_manifest(obj)
        except ArtifactNotFound:
            continue  # deleted (by gc) while we looked
        except NewerFormatError as e:
            report.newer_format.append(obj.key)
            report.reasons[obj.key] = str(e)
            continue
        except IntegrityError as e:
            report.corrupt.append(obj.key)
            report.reasons[obj.key] = str(e)
            continue
        parsed[obj.hexdigest] = (obj, table)
        for pack in table.packs:
            listed = listing.packs.get(pack.hexdigest)
            if listed is None and _there_now(chunks, pack):
                continue  # written since the listing: a gc repacked it (found by a probe)
            if listed is None:
                if pack.hexdigest not in set_aside:  # one look per pack, not per manifest
                    aside = QUARANTINE_PREFIX + pack_key(pack)
                    set_aside[pack.hexdigest] = aside if chunks.backend.exists(aside) else None
                found = set_aside[pack.hexdigest]
                report.missing_packs.append(MissingPack(obj.key, str(pack), "missing", found))
            elif listed.size != pack.size:
                report.missing_packs.append(MissingPack(obj.key, str(pack), f"size {listed.size}"))
    return parsed


def _there_now(chunks: ChunkStore, pack: Digest) -> bool:
    """Whether ``pack`` is stored with its size now: a second look before "missing".

    The manifests are read after the packs are listed; a gc running meanwhile repacks into a
    new pack and rewrites the manifests to name it, which the listing never saw.
    """
    try:
        return chunks.backend.stat(pack_key(pack)).size == pack.size
    except ArtifactNotFound:
        return False


def check_indexes(chunks: ChunkStore, listing: ChunkListing, report: VerifyReport) -> None:
    """Report index objects that do not hash to their name or do not parse.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> chunks, report = ChunkStore(MemoryBackend()), VerifyReport(deep=False)
        >>> check_indexes(chunks, ChunkListing.of(chunks), report); report.bad_index_objects
        []
    """
    report.index_objects_checked = len(listing.indexes)
    for obj in listing.indexes:
        try:
            chunks.read_index(obj)
        except ArtifactNotFound:
            continue  # replaced by gc while we looked
        except NewerFormatError as e:
            report.newer_format.append(obj.key)
            report.reasons[obj.key] = str(e)
        except IntegrityError as e:
            report.bad_index_objects.append(obj.key)
            report.reasons[obj.key] = str(e)
    report.bad_index_objects.sort()
    report.newer_format.sort()


def find_lying_indexes(
    chunks: ChunkStore, listing: ChunkListing, parsed: Manifests, report: VerifyReport
) -> None:
    """After the deep checks: report index objects that name a chunk where other bytes are.

    A chunked file that does not read back although every pack it names is present and sound
    has wrong entries. An upload writes only entries it made itself or took from an index
    object, so each wrong entry is looked up in the index objects, and those naming the same
    place are reported (and quarantined with the manifest): otherwise the next upload of the
    file would build the same manifest again from them.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> chunks, report = ChunkStore(MemoryBackend()), VerifyReport(deep=True)
        >>> find_lying_indexes(chunks, ChunkListing.of(chunks), {}, report)
        >>> report.bad_index_objects
        []
    """
    wrong: set[tuple[bytes, str, int]] = set()  # chunk, pack, offset
    for _obj, table in _wrong_manifests(listing, parsed, report):
        for pack, entries in _by_pack(table).items():
            wrong.update(
                (chunk, pack.hexdigest, at)
                for chunk, at in _wrong_entries(chunks, listing, pack, entries)
            )
    for obj, reason in _indexes_naming(chunks, listing, wrong, set(report.bad_index_objects)):
        report.bad_index_objects.append(obj.key)
        report.reasons[obj.key] = reason
    report.bad_index_objects.sort()


def _indexes_naming(
    chunks: ChunkStore, listing: ChunkListing, wrong: set[tuple[bytes, str, int]], skip: set[str]
) -> Iterator[tuple[StoredObject, str]]:
    """Index objects (not in ``skip``) naming a (chunk, pack, offset) of ``wrong``; why."""
    if not wrong:
        return
    for obj in listing.indexes:
        if obj.key in skip:
            continue
        try:
            index = chunks.read_index(obj)
        except (ArtifactNotFound, IntegrityError):
            continue
        for entry in index:
            pack = index.packs[entry.pack]
            if (entry.chunk, pack.hexdigest, entry.offset) in wrong:
                yield (
                    obj,
                    (
                        f"names chunk {entry.chunk.hex()} at offset {entry.offset} of pack {pack}, "
                        "which holds other bytes there"
                    ),
                )
                break


def _wrong_manifests(
    listing: ChunkListing, parsed: Manifests, report: VerifyReport
) -> list[tuple[StoredObject, ChunkTable]]:
    """Bad files whose every pack is present and sound: their manifests' entries are wrong.

    A file that fails because a pack is missing or corrupt is explained by that pack.
    """
    corrupt = set(report.corrupt)
    missing = {m.manifest for m in report.missing_packs}
    tables = {obj.key: (obj, table) for obj, table in parsed.values()}
    return [
        tables[key]
        for key in report.bad_files
        if key not in missing
        and all(pack_key_of(listing, p) not in corrupt for p in tables[key][1].packs)
    ]


def _by_pack(table: ChunkTable) -> dict[Digest, list[tuple[int, int, bytes]]]:
    """A table's distinct entries by pack: (offset, length, chunk), in offset order."""
    found: dict[Digest, set[tuple[int, int, bytes]]] = {}
    for entry in table:
        found.setdefault(table.packs[entry.pack], set()).add(
            (entry.offset, entry.length, entry.chunk)
        )
    return {pack: sorted(entries) for pack, entries in found.items()}


def _wrong_entries(
    chunks: ChunkStore, listing: ChunkListing, pack: Digest, entries: list[tuple[int, int, bytes]]
) -> Iterator[tuple[bytes, int]]:
    """The (chunk, offset) of entries whose bytes in ``pack`` are not their chunk.

    One pass over the pack for entries in order; an entry overlapping the one before (a
    delta's range inside the chunk it replaced: see chunks.delta) gets a read of its own.
    """
    key = pack_key_of(listing, pack)
    if key is None:
        return
    with contextlib.ExitStack() as stack:
        reader, at = stack.enter_context(chunks.backend.open_reader(key)), 0
        for offset, length, chunk in entries:
            if offset < at:
                with chunks.backend.open_reader(key, offset=offset, length=length) as again:
                    data = read_up_to(again, length)
            else:
                _skip(reader, offset - at)
                data, at = read_up_to(reader, length), offset + length
            if blake3.blake3(data).digest() != chunk or len(data) != length:
                yield chunk, offset


def _skip(reader: BinaryIO, count: int) -> None:
    while count > 0 and (got := len(reader.read(min(count, CHUNK_SIZE)))):
        count -= got


def chunk_orphans(
    listing: ChunkListing, parsed: Manifests, referenced: set[str], *, newer: bool = False
) -> list[str]:
    """Keys of manifests no ref names and of packs no readable manifest names.

    No packs if ``newer``: a manifest in a newer format than this release reads may name any
    of them (gc then leaves every pack alone).

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> chunk_orphans(ChunkListing.of(ChunkStore(MemoryBackend())), {}, set())
        []
    """
    used = {pack.hexdigest for _, table in parsed.values() for pack in table.packs}
    orphans = [m.key for m in listing.manifests if m.hexdigest not in referenced]
    if newer:
        return orphans
    return orphans + [p.key for h, p in listing.packs.items() if h not in used]


def deep_checks(chunks: ChunkStore, listing: ChunkListing, parsed: Manifests) -> list[Check]:
    """The deep checks and their byte counts: re-hash every pack, read every chunked file.

    Example:
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> chunks = ChunkStore(MemoryBackend())
        >>> deep_checks(chunks, ChunkListing.of(chunks), {})
        []
    """
    checks: list[Check] = []
    for pack in listing.packs.values():
        if pack.size > PACK_MAX:
            # Not read: it cannot be a pack (a planted sparse file may be 100 GiB). A size a
            # manifest names is no reason on its own: the manifest may be the wrong one.
            problem = f"{pack.size} B stored, more than any pack written ({PACK_MAX} B)"
            checks.append((pack.key, "corrupt", _known_problem(problem)))
        else:
            checks.append((pack.key, "corrupt", _pack_check(chunks, pack)))
    for obj, table in parsed.values():
        checks.append((obj.key, "bad_file", _file_check(chunks, obj, table)))
    return checks


def deep_bytes(listing: ChunkListing, parsed: Manifests) -> int:
    """Bytes :func:`deep_checks` reads: every pack it re-hashes, then every chunked file whole."""
    files = sum(table.file.size for _, table in parsed.values() if table.file is not None)
    return sum(p.size for p in listing.packs.values() if p.size <= PACK_MAX) + files


def pack_key_of(listing: ChunkListing, pack: Digest) -> str | None:
    """The key ``pack`` was listed under, if it was."""
    listed = listing.packs.get(pack.hexdigest)
    return None if listed is None else listed.key


def _known_problem(problem: str) -> Callable[[Progress], str | None]:
    return lambda _bar: problem


def _pack_check(chunks: ChunkStore, pack: StoredObject) -> Callable[[Progress], str | None]:
    return lambda bar: rehash_problem(
        lambda: chunks.open_stored(pack), pack.hexdigest, ALGORITHM, bar
    )


def _file_check(
    chunks: ChunkStore, obj: StoredObject, table: ChunkTable
) -> Callable[[Progress], str | None]:
    def check(bar: Progress) -> str | None:
        view = memoryview(bytearray(CHUNK_SIZE))
        try:
            with chunks.open_file(table, f"chunked file {table.file} ({obj.key})") as reader:
                while n := readinto(reader, view):
                    bar.advance(n)
        except ArtifactNotFound:
            return None  # a pack is gone: reported as a missing pack (or gc took it meanwhile)
        except IntegrityError as e:
            return str(e)
        return None

    return check


def quarantine_chunked(
    chunks: ChunkStore,
    listing: ChunkListing,
    parsed: Manifests,
    report: VerifyReport,
    prefix: str,
) -> None:
    """Move corrupt packs, manifests and bad index objects under ``prefix``.

    The next upload of the same bytes then writes good ones.

    A manifest is moved if it is malformed, or if its file does not read back although every
    pack it names is present and sound (then its entries are wrong). A file that fails only
    because a pack is corrupt keeps its manifest, and the pack is moved, unless another file
    that uses the pack reads back (its ranges of the pack are sound: a delta's base pack
    serves every later version). Then the pack stays, and what would lean on its damaged
    bytes moves instead: the manifests of the files that fail on it, and the index objects
    naming those bytes. The ranges the sound files use are also copied to a new pack,
    verified, and their manifests pointed there (as gc's repack does); the pack is touched
    and left for gc, which deletes it once no manifest uses it. It is not moved here: an
    upload that leaned on its sound ranges while verify ran names it too.
    """
    by_key = {obj.key: obj for obj in [*listing.manifests, *listing.packs.values()]}
    kept = _corrupt_packs_still_serving(listing, parsed, report)
    for key, (_pack, _failing, sound) in kept.items():
        # Readers of the old manifests: gc waits a grace period. Touched first too, so that a
        # role that may not touch stops before any manifest moves (see gc's repack).
        chunks.touch(by_key[key])
        if move_out(chunks, by_key[key], sound):
            chunks.touch(by_key[key])
            report.reasons[key] += (
                "; kept: the ranges other files use were copied to a new pack, and gc deletes "
                "this one once nothing uses it"
            )
        else:
            report.reasons[key] += "; kept: other files that use it read back"
    doomed = [by_key[key] for key in report.corrupt if key in by_key and key not in kept]
    if report.newer_manifests():
        # A manifest this release cannot read may use the sound ranges of a damaged pack, as
        # a delta's base pack serves later versions: moving it could cost those files.
        for obj in [obj for obj in doomed if obj.key.startswith(PACK_PREFIX)]:
            doomed.remove(obj)
            report.reasons[obj.key] += (
                "; kept: a manifest in a newer format than this release reads may use it"
            )
    doomed += [obj for obj, _table in _wrong_manifests(listing, parsed, report)]
    doomed += [obj for _pack, failing, _sound in kept.values() for obj, _table in failing]
    damaged: set[tuple[bytes, str, int]] = set()  # chunk, pack, offset
    for pack, failing, _sound in kept.values():
        for _obj, table in failing:
            entries = _by_pack(table).get(pack, [])
            damaged.update(
                (chunk, pack.hexdigest, at)
                for chunk, at in _wrong_entries(chunks, listing, pack, entries)
            )
    # Index objects that are malformed or name chunks where other bytes are: the next upload
    # would otherwise lean on them again (they are hints; nothing is lost with them). For a
    # kept pack, only those naming its damaged ranges: its sound ranges keep their hints.
    doomed += [obj for obj in listing.indexes if obj.key in report.bad_index_objects]
    skip = set(report.bad_index_objects)
    doomed += [obj for obj, _why in _indexes_naming(chunks, listing, damaged, skip)]
    for obj in {obj.key: obj for obj in doomed}.values():
        quarantine_one(obj.key, functools.partial(chunks.quarantine, obj, prefix), report, prefix)


def quarantine_one(
    key: str, move: Callable[[], int | None], report: VerifyReport, prefix: str
) -> None:
    """Move ``key`` aside with ``move`` and record the outcome in ``report``.

    One object that cannot be moved (``quarantine/`` symlinked out of the store, a full disk,
    a denied write) is listed in ``report.quarantine_failed`` with the reason, and the others
    are still moved: a raise here lost the whole report. ``move`` returns how many bytes past
    the most its kind holds were dropped (a copy kept only the first ones), if any.

    Example:
        >>> report = VerifyReport(deep=True)
        >>> def refused() -> int:
        ...     raise InvalidKeyError("Invalid key: 'quarantine/k' (resolves outside '/s')")
        >>> quarantine_one("k", refused, report, "quarantine/"); report.quarantine_failed
        ['k']
        >>> report.reasons["k"]
        "could not quarantine: quarantine/ is refused (Invalid key: ...)"
    """
    try:
        dropped = move()
    except (InvalidKeyError, OptunaCasError, OSError) as e:
        # InvalidKeyError: keys come from a listing, so only the destination can be refused.
        notes = getattr(e, "__notes__", [])  # a copy left behind, say (see move_aside)
        why = (
            f"{prefix} is refused ({e})"
            if isinstance(e, InvalidKeyError)
            else " ".join([str(e), *notes])
        )
        report.reasons[key] = _and(report.reasons.get(key), f"could not quarantine: {why}")
        report.quarantine_failed.append(key)
        return
    if dropped:
        report.reasons[key] = _and(
            report.reasons.get(key),
            f"the {dropped} B past the most any such object holds were dropped, not kept "
            f"under {prefix}",
        )
    report.quarantined.append(key)


def _and(reason: str | None, more: str) -> str:
    return more if reason is None else f"{reason}; {more}"


def _corrupt_packs_still_serving(
    listing: ChunkListing, parsed: Manifests, report: VerifyReport
) -> dict[str, tuple[Digest, Users, Users]]:
    """Corrupt packs a file that reads back uses.

    Each with the manifests of the files failing on it, and of those reading back.
    """
    corrupt, bad = set(report.corrupt), set(report.bad_files)
    # A file that is not a bad file read back, unless a pack it names is absent (its read
    # then stops, reported as a missing pack). A pack of the wrong size is no such reason:
    # bytes appended to it, or holes past its end, leave the ranges manifests name as they
    # were, and readers use nothing else. Excluding its users quarantined the only copy of
    # files that read back byte-exact. Erring the other way is safe: move_out verifies each
    # range it copies and rewrites no manifest unless every range moved.
    absent = {
        obj.key
        for obj, table in parsed.values()
        if any(pack_key_of(listing, pack) is None for pack in table.packs)
    }
    users: dict[str, tuple[Digest, Users]] = {}
    for obj, table in parsed.values():
        for pack in table.packs:
            key = pack_key_of(listing, pack)
            if key is not None and key in corrupt:
                users.setdefault(key, (pack, []))[1].append((obj, table))
    serving = {}
    for key, (pack, objs) in users.items():
        sound = [(o, t) for o, t in objs if o.key not in bad and o.key not in absent]
        if sound:
            serving[key] = (pack, [(o, t) for o, t in objs if o.key in bad], sound)
    return serving
