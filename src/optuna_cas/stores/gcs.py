"""``GCSArtifactStore``: Optuna's Google Cloud Storage store, content-addressed and streaming."""

from __future__ import annotations

from typing import Any

from optuna_cas.backends.gcs import GCSBackend
from optuna_cas.content import CHUNK_THRESHOLD, INLINE_LIMIT, ContentStore
from optuna_cas.stores.base import ContentAddressedArtifactStore

__all__ = ["GCSArtifactStore"]


class GCSArtifactStore(ContentAddressedArtifactStore):
    """A drop-in for ``optuna.artifacts.GCSArtifactStore``.

    Blobs go to ``<prefix>/blobs/...`` and refs to ``<prefix>/refs/<artifact_id>``. Reads and
    writes stream (Optuna's store holds whole objects in RAM); blobs are created with
    ``if_generation_match=0`` (small ones in one request, large ones by a resumable upload
    carrying the same precondition), so no object is overwritten.

    Args:
        bucket_name: The bucket.
        client: A ``google.cloud.storage.Client`` (positional, as in Optuna); default
            credentials when omitted.
        prefix: Key prefix, so several stores can share a bucket.
        chunk_size: Bytes per ranged read and resumable-upload chunk (multiple of 256 KiB).
        sdk_retries: Keep google-cloud-storage's own retries (off when :class:`Backoff`
            should see every fault itself).
        timeout: Seconds to connect and to wait on each socket read of a request: a number
            or ``(connect, read)``.
        chunk_threshold: Files of at least this many bytes (8 MiB by default) are stored as
            content-defined chunks, deduplicated between versions (docs/concepts.md);
            ``None`` stores every file as one blob.
        inline_limit: Files of at most this many bytes (4 KiB by default) are kept inside
            their ref instead of a blob: one object to write and read; ``None``: never.

    Raises:
        StoreConfigError: google-cloud-storage is missing (``pip install 'optuna-cas[gcs]'``).

    Example:
        .. code-block:: python

            from optuna_cas import Backoff, GCSArtifactStore

            store = Backoff(GCSArtifactStore("my-bucket", prefix="studies/resnet"))
    """

    def __init__(
        self,
        bucket_name: str,
        client: Any | None = None,
        *,
        prefix: str = "",
        chunk_size: int = 8 * 1024 * 1024,
        sdk_retries: bool = True,
        timeout: float | tuple[float, float] = 60.0,
        chunk_threshold: int | None = CHUNK_THRESHOLD,
        inline_limit: int | None = INLINE_LIMIT,
    ) -> None:
        backend = GCSBackend(
            bucket_name,
            client=client,
            prefix=prefix,
            chunk_size=chunk_size,
            sdk_retries=sdk_retries,
            timeout=timeout,
        )
        super().__init__(
            ContentStore(backend, chunk_threshold=chunk_threshold, inline_limit=inline_limit)
        )
        self._backend = backend
        self._bucket_name = bucket_name  # the backend checked it

    # Optuna's store has public ``bucket_name``, ``client`` and ``bucket_obj`` attributes that
    # user code reaches for; read-only here, because assigning one would not redirect the
    # backend underneath.

    @property
    def bucket_name(self) -> str:
        """The bucket's name, as Optuna's ``GCSArtifactStore.bucket_name``.

        Example:
            .. code-block:: python

                GCSArtifactStore("my-bucket").bucket_name  # 'my-bucket'
        """
        return self._bucket_name

    @property
    def client(self) -> Any:
        """The ``google.cloud.storage.Client`` the store uses, as Optuna's ``client``.

        The ``client`` passed in, else the one built from the environment for this process.

        Example:
            .. code-block:: python

                from google.cloud import storage

                client = storage.Client()
                GCSArtifactStore("my-bucket", client).client is client  # True
        """
        return self._backend.client

    @property
    def bucket_obj(self) -> Any:
        """The ``google.cloud.storage.Bucket`` the store uses, as Optuna's ``bucket_obj``.

        Built from :attr:`client`. An artifact's objects are not the blob ``<artifact_id>``
        as with Optuna's store but ``<prefix>/refs/<artifact_id>`` and ``<prefix>/blobs/...``.

        Example:
            .. code-block:: python

                store = GCSArtifactStore("my-bucket")
                [blob.name for blob in store.bucket_obj.list_blobs(prefix="refs/")]
        """
        return self._backend.bucket
