"""The artifact-store face of a content store: Optuna's three-method protocol and a bit more."""

from __future__ import annotations

import os
from typing import BinaryIO, Protocol

from optuna_cas.content import ContentStore
from optuna_cas.refs import ArtifactRef

__all__ = ["ArtifactStore", "ContentAddressedArtifactStore", "content_store_of"]


class ArtifactStore(Protocol):
    """What the artifact functions need of a store: Optuna's ``ArtifactStore`` protocol.

    Ours and Optuna's own stores both have these methods.

    Example:
        >>> import tempfile
        >>> from optuna_cas import FileSystemArtifactStore
        >>> store: ArtifactStore = FileSystemArtifactStore(tempfile.mkdtemp())
    """

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """A reader of the artifact's bytes."""
        ...

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        """Store ``content_body`` under ``artifact_id``."""
        ...

    def remove(self, artifact_id: str) -> None:
        """Remove the artifact."""
        ...


class ContentAddressedArtifactStore:
    """An artifact store over a :class:`~optuna_cas.content.ContentStore`.

    It satisfies Optuna's ``ArtifactStore`` protocol (``open_reader``, ``write``, ``remove``),
    so Optuna's own ``upload_artifact``/``download_artifact`` and optuna-dashboard can use it;
    optuna-cas's functions additionally use :meth:`put` and :meth:`get_ref` to record file
    metadata and digests.

    Args:
        content: The content store (backend plus optional cache).

    Example:
        >>> import io
        >>> from optuna_cas.backends.memory import MemoryBackend
        >>> store = ContentAddressedArtifactStore(ContentStore(MemoryBackend()))
        >>> store.write("a1", io.BytesIO(b"data"))
        >>> with store.open_reader("a1") as reader:
        ...     reader.read()
        b'data'
    """

    def __init__(self, content: ContentStore | None) -> None:
        self._content = content

    @property
    def content(self) -> ContentStore:
        """The content store underneath.

        Raises:
            TypeError: This wrapper wraps a store that is not content-addressed.

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ContentAddressedArtifactStore(ContentStore(MemoryBackend())).content.describe()
            'memory://'
        """
        if self._content is None:
            raise TypeError(f"{self!r} does not wrap a content-addressed store")
        return self._content

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """Open an artifact for reading; the reader verifies the digest as it goes.

        Raises:
            ArtifactNotFound: No such artifact.
            ValueError: ``artifact_id`` is invalid (message starts ``Invalid artifact_id``).

        Example:
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> ContentAddressedArtifactStore(ContentStore(MemoryBackend())).open_reader("../x")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.InvalidKeyError: Invalid artifact_id: '../x' (it contains a path separator)
        """
        return self.content.open_artifact(artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        """Store ``content_body`` (from its current position) as ``artifact_id``.

        Deduplicated: if the bytes are already stored, only a ref is written.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ContentAddressedArtifactStore(ContentStore(MemoryBackend()))
            >>> store.write("a", io.BytesIO(b"x")); store.get_ref("a").size
            1
        """
        self.content.put_artifact(artifact_id, content_body)

    def put(
        self,
        artifact_id: str,
        source: BinaryIO | str | os.PathLike[str],
        *,
        filename: str | None = None,
        mimetype: str | None = None,
        encoding: str | None = None,
    ) -> ArtifactRef:
        """Like :meth:`write`, but also records file metadata and returns the ref.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ContentAddressedArtifactStore(ContentStore(MemoryBackend()))
            >>> store.put("a", io.BytesIO(b"x"), filename="x.txt").filename
            'x.txt'
        """
        return self.content.put_artifact(
            artifact_id, source, filename=filename, mimetype=mimetype, encoding=encoding
        )

    def get_ref(self, artifact_id: str) -> ArtifactRef:
        """The ref (digest, size, filename, ...) of an artifact.

        Raises:
            ArtifactNotFound: No such artifact.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ContentAddressedArtifactStore(ContentStore(MemoryBackend()))
            >>> store.write("a", io.BytesIO(b"abc")); store.get_ref("a").size
            3
        """
        return self.content.get_ref(artifact_id)

    def remove(self, artifact_id: str) -> None:
        """Remove an artifact's ref; its blob is reclaimed by :func:`optuna_cas.gc`.

        The blob may be shared with other artifacts, so it is not deleted here. A file
        Optuna's own store wrote under the ID (before the switch) is deleted, as Optuna would.

        Raises:
            ArtifactNotFound: No such artifact.

        Example:
            >>> import io
            >>> from optuna_cas.backends.memory import MemoryBackend
            >>> store = ContentAddressedArtifactStore(ContentStore(MemoryBackend()))
            >>> store.write("a", io.BytesIO(b"x")); store.remove("a")
            >>> store.remove("a")
            Traceback (most recent call last):
            ...
            optuna_cas.exceptions.ArtifactNotFound: Artifact 'a' not found in memory://
        """
        self.content.remove_artifact(artifact_id)

    def __repr__(self) -> str:
        where = self._content.describe() if self._content is not None else "?"
        return f"{type(self).__name__}({where!r})"


def content_store_of(store: object) -> ContentStore | None:
    """The content store behind ``store``, or None for a foreign (e.g. Optuna's own) store.

    Example:
        >>> content_store_of(object()) is None
        True
    """
    if isinstance(store, ContentAddressedArtifactStore):
        return store._content
    return None


def require_content_store(store: object, operation: str) -> ContentStore:
    """The content store behind ``store``; a TypeError naming ``operation`` if there is none.

    Example:
        >>> require_content_store("./artifacts", "verify")
        Traceback (most recent call last):
        ...
        TypeError: verify needs an optuna-cas store (FileSystemArtifactStore(path), optuna_cas.open_store(url), ...), got str './artifacts'
    """
    content = content_store_of(store)
    if content is None:
        raise TypeError(
            f"{operation} needs an optuna-cas store (FileSystemArtifactStore(path), "
            f"optuna_cas.open_store(url), ...), got {type(store).__name__} {store!r:.80}"
        )
    return content
