"""Test helpers shipped with optuna-cas, for its own tests, its benchmarks and other backends.

* :mod:`optuna_cas.testing.backend`: ``BackendConformance``, the backend contract as a pytest
  class to subclass (needs pytest).
* :mod:`optuna_cas.testing.store`: ``StoreConformance``, the same for artifact stores.
* :mod:`optuna_cas.testing.raw`: out-of-band views of memory, a directory, an S3 or GCS bucket.
* :mod:`optuna_cas.testing.streams`: awkward sources (pipes, streams failing mid-way or at EOF).
* :mod:`optuna_cas.testing.servers`: moto_server and fake-gcs-server on free ports.
* :mod:`optuna_cas.testing.faults`: ``FaultProxy``, an HTTP proxy that injects faults.

Importing this package imports none of them (and so neither pytest nor any SDK); the library
itself never imports it.

Example:
    >>> from optuna_cas.testing.streams import NonSeekable
    >>> NonSeekable(b"pipe").read()
    b'pipe'
"""
