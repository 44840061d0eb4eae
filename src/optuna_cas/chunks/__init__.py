"""Chunk-level dedup: large files stored as content-defined chunks in packs.

Modules, bottom-up: :mod:`~optuna_cas.chunks.layout` (keys, parameters),
:mod:`~optuna_cas.chunks.table` (manifest and index format), :mod:`~optuna_cas.chunks.chunker`
(FastCDC), :mod:`~optuna_cas.chunks.index` (what a store holds), :mod:`~optuna_cas.chunks.packer`
(writing packs), :mod:`~optuna_cas.chunks.cached_packs` (packs made local in a cache),
:mod:`~optuna_cas.chunks.reader` (reading files back) and
:mod:`~optuna_cas.chunks.store` (:class:`~optuna_cas.chunks.store.ChunkStore`, used by
:class:`~optuna_cas.blobstore.BlobStore`). See docs/concepts.md, "Chunked artifacts".
"""
