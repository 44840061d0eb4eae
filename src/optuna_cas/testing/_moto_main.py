"""``python -m moto.server``, with moto's ETag computed under the object's own lock.

moto 5 keeps each object's bytes in one shared file and reads them under a per-object lock,
except where it first computes the ETag: that seeks and reads the same file without the lock.
A HEAD or GET of an object racing a CopyObject of it onto itself (how a store *touches* an
object on S3) then makes the copy read from wherever the ETag pass left the file, and the
object silently loses bytes. Reproduced here with 4 threads copying a 12 MiB object onto
itself while 4 others HEAD it: the object reads back empty. Real S3 copies atomically, so
this server takes the lock for the ETag too; nothing else changes.

Run as ``python -m optuna_cas.testing._moto_main -H 127.0.0.1 -p0`` (moto.server's arguments).
"""

from __future__ import annotations

from typing import Any

import moto.s3.models
import moto.server

_unlocked_etag: Any = moto.s3.models.FakeKey.etag


def _etag(key: Any) -> str:
    if key._etag is not None:  # computed once; later reads touch no shared state
        return str(_unlocked_etag.fget(key))
    with key.lock:
        return str(_unlocked_etag.fget(key))


if __name__ == "__main__":
    moto.s3.models.FakeKey.etag = property(_etag)  # type: ignore[assignment,method-assign]
    moto.server.main()
