"""``Boto3ArtifactStore``: Optuna's S3 store, content-addressed and streaming."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optuna_cas.backends.s3 import S3Backend
from optuna_cas.content import CHUNK_THRESHOLD, INLINE_LIMIT, ContentStore
from optuna_cas.stores.base import ContentAddressedArtifactStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["Boto3ArtifactStore"]


class Boto3ArtifactStore(ContentAddressedArtifactStore):
    """A drop-in for ``optuna.artifacts.Boto3ArtifactStore`` (S3 and S3-compatible services).

    Blobs go to ``<prefix>/blobs/...`` and refs to ``<prefix>/refs/<artifact_id>``. Uploads
    stream with bounded memory (multipart above ``part_size``) and never close the caller's
    file; a blob the bucket already holds is not uploaded again, and no object is overwritten.

    Args:
        bucket_name: The bucket.
        client: A boto3 S3 client (default: ``boto3.client("s3")`` with your usual AWS
            credentials and region, or ``endpoint_url``).
        avoid_buf_copy: Accepted for compatibility and ignored: optuna-cas never copies the
            file into memory and never closes it.
        prefix: Key prefix, so several stores can share a bucket.
        endpoint_url: For S3-compatible services (MinIO, R2, moto, ...); not with ``client``.
        part_size: Multipart part size in bytes (>= 5 MiB).
        max_concurrency: Parts uploaded at once, by all uploads through the store together
            (a whole-file blob's memory use is about this times part_size).
        chunk_threshold: Files of at least this many bytes (8 MiB by default) are stored as
            content-defined chunks, deduplicated between versions (docs/concepts.md);
            ``None`` stores every file as one blob.
        inline_limit: Files of at most this many bytes (4 KiB by default) are kept inside
            their ref instead of a blob: one object to write and read; ``None``: never.
        sdk_retries: Keep botocore's own retries (the default, as Optuna's store has them);
            ``False`` sends each request once, for :class:`~optuna_cas.Backoff` to retry.
        timeout: Seconds to connect and to wait on each socket read, a number or
            ``(connect, read)``; ``None`` keeps botocore's 60 s each. With ``client``,
            neither this nor ``sdk_retries=False``: configure the client instead.

    Raises:
        StoreConfigError: boto3 is missing (``pip install 'optuna-cas[s3]'``) or an option
            is invalid.

    Example:
        .. code-block:: python

            from optuna_cas import Boto3ArtifactStore, Backoff

            store = Backoff(Boto3ArtifactStore("my-bucket", prefix="studies/resnet"))
            # Each request bounded: Backoff alone retries, and a silent server costs 60 s.
            bounded = Backoff(
                Boto3ArtifactStore("my-bucket", sdk_retries=False, timeout=(10, 60))
            )
    """

    def __init__(
        self,
        bucket_name: str,
        client: S3Client | Any | None = None,
        *,
        avoid_buf_copy: bool = False,
        prefix: str = "",
        endpoint_url: str | None = None,
        part_size: int = 8 * 1024 * 1024,
        max_concurrency: int = 4,
        chunk_threshold: int | None = CHUNK_THRESHOLD,
        inline_limit: int | None = INLINE_LIMIT,
        sdk_retries: bool = True,
        timeout: float | tuple[float, float] | None = None,
    ) -> None:
        del avoid_buf_copy  # our uploads never buffer nor close the source
        backend = S3Backend(
            bucket_name,
            client=client,
            prefix=prefix,
            endpoint_url=endpoint_url,
            part_size=part_size,
            max_concurrency=max_concurrency,
            multipart_threshold=part_size,
            sdk_retries=sdk_retries,
            timeout=timeout,
        )
        super().__init__(
            ContentStore(backend, chunk_threshold=chunk_threshold, inline_limit=inline_limit)
        )
        self._backend = backend
        self._bucket_name = bucket_name  # the backend checked it

    # Optuna's store has public ``bucket`` and ``client`` attributes that user code reaches
    # for (``store.client.list_objects_v2(Bucket=store.bucket)``); read-only here, because
    # assigning either would not redirect the backend underneath.

    @property
    def bucket(self) -> str:
        """The bucket's name, as Optuna's ``Boto3ArtifactStore.bucket``.

        Example:
            .. code-block:: python

                Boto3ArtifactStore("my-bucket").bucket  # 'my-bucket'
        """
        return self._bucket_name

    @property
    def client(self) -> S3Client:
        """The boto3 S3 client the store uses, as Optuna's ``Boto3ArtifactStore.client``.

        The ``client`` passed in, else the one built from the environment (or
        ``endpoint_url``) for this process. An artifact's objects are not at the key
        ``<artifact_id>`` as with Optuna's store but at ``<prefix>/refs/<artifact_id>`` and
        ``<prefix>/blobs/...``.

        Example:
            .. code-block:: python

                store = Boto3ArtifactStore("my-bucket")
                store.client.list_objects_v2(Bucket=store.bucket, Prefix="refs/")
        """
        return self._backend.client
