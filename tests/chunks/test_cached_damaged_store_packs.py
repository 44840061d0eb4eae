"""A pack fill that fails its check names the pack, its key and the store it came from."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from optuna_cas.chunks.layout import pack_key
from optuna_cas.digest import Digest
from optuna_cas.exceptions import IntegrityError
from optuna_cas.middleware.blob_cache import DiskBlobCache


def _assert_not_kept(cache: DiskBlobCache, pack: Digest) -> None:
    assert pack not in cache
    temps = cache.directory / "tmp"
    assert not temps.exists() or os.listdir(temps) == []


def test_a_failed_pack_fill_names_the_pack_its_key_and_the_store(tmp_path: Path) -> None:
    cache = DiskBlobCache(tmp_path / "cache")
    pack = Digest.of_bytes(b"pack bytes")
    name = f"pack {pack} ({pack_key(pack)!r} in file:///somewhere)"
    with pytest.raises(IntegrityError) as raised:
        cache.fill(pack, lambda: io.BytesIO(b"pack bytes, and more"), name=name)
    assert str(raised.value).startswith(f"{name} (cache fill): ")
    _assert_not_kept(cache, pack)
