"""Issue 13 on S3 (one ``moto_server``): what moves for version *k+1*, and a cold download.

Bytes and requests are counted by an unthrottled :class:`FaultProxy` between the client and
moto: body bytes on the wire in each direction, every request (HEAD, LIST, PUT, GET, ...).
Throughput is timed on a client that talks to moto directly.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna

import optuna_cas
from benchmarks._moto import delete_prefix, make_client, moto_server
from benchmarks._util import (
    Config,
    Contender,
    MiB,
    Row,
    Section,
    fmt_times,
    make_random_file,
    measure,
    median,
    mib,
    remove,
    seconds,
    warm_page_cache,
)
from benchmarks.checkpoints import WorkloadOptions, generate, series_name
from optuna_cas.content import ContentStore
from optuna_cas.stores.base import ContentAddressedArtifactStore
from optuna_cas.testing.faults import FaultProxy, RequestRecord

BUCKET = "bench-chunks"
FORMAT = "safetensors"
WORKLOADS: tuple[tuple[str, WorkloadOptions], ...] = (
    ("frozen", WorkloadOptions()),
    ("lora", WorkloadOptions()),
    ("embedding", WorkloadOptions(pattern="clustered")),
)
K = 1  # versions v0..vK are stored (and vK is in the worker's cache) before vK+1 moves
SLACK = 2 * MiB  # the "+ 2 MiB"
SEND_FACTOR = 1.3  # "≤ 1.3x the changed bytes"
BYTES_PER_REQUEST = 16 * MiB  # "≤ 1 request per 16 MiB received ..."
REQUEST_CONSTANT = 4  # "... + a constant": the ref, the manifest and 2 spare (chosen up front)
TARGET_COLD = 0.9  # chunked / whole-blob download throughput
NEVER_CHUNK = 2**62


def _amount(n: int) -> str:
    return mib(n) if n >= MiB else f"{n / 1024:,.1f} KiB"


@dataclass
class _Traffic:
    requests: int
    sent: int  # request body bytes
    received: int  # response body bytes
    by_method: dict[str, int]

    @classmethod
    def of(cls, records: list[RequestRecord]) -> _Traffic:
        by_method: dict[str, int] = {}
        for r in records:
            by_method[r.method] = by_method.get(r.method, 0) + 1
        return cls(
            len(records),
            sum(r.request_bytes for r in records),
            sum(r.response_bytes for r in records),
            by_method,
        )

    def methods(self) -> str:
        return ", ".join(f"{n} {m}" for m, n in sorted(self.by_method.items()))


@dataclass
class _Step:
    name: str
    version_size: int
    changed: int  # vK+1's unique bytes (the generator's count)
    upload: _Traffic
    worker_fill: _Traffic  # the worker reading vK into an empty cache
    worker: _Traffic  # the same worker, then reading vK+1


def run_chunks_s3(cfg: Config, data: Path) -> list[Section]:
    data.mkdir(parents=True, exist_ok=True)
    with moto_server() as endpoint:
        url = urlsplit(endpoint)
        assert url.hostname is not None and url.port is not None
        with FaultProxy(url.hostname, url.port, keep_client_alive=True) as proxy:
            direct = make_client(endpoint)
            direct.create_bucket(Bucket=BUCKET)
            counted = make_client(proxy.endpoint_url)
            steps = []
            for workload, options in WORKLOADS:
                print(f"  S3 k -> k+1, {series_name(workload, options)} ...", flush=True)
                steps.append(_step(cfg, data, direct, counted, proxy, workload, options))
        print("  S3 cold download ...", flush=True)
        cold = _cold(cfg, data, direct)
    return [_step_section(cfg, steps), cold]


def _step(
    cfg: Config,
    data: Path,
    direct: Any,
    counted: Any,
    proxy: FaultProxy,
    workload: str,
    options: WorkloadOptions,
) -> _Step:
    name = series_name(workload, options)
    folder = data / f"series-{name}"
    series = generate(
        workload, FORMAT, folder, versions=K + 2, size=cfg.chunk_s3_version, options=options
    )
    prefix = f"step-{name}"
    study = optuna.create_study()
    ids = [
        optuna_cas.upload_artifact(
            artifact_store=optuna_cas.Boto3ArtifactStore(BUCKET, direct, prefix=prefix),
            file_path=str(path),
            study_or_trial=study,
        )
        for path in series.paths[: K + 1]
    ]
    # A new uploader (another trial's process) sends vK+1.
    proxy.reset_log()
    ids.append(
        optuna_cas.upload_artifact(
            artifact_store=optuna_cas.Boto3ArtifactStore(BUCKET, counted, prefix=prefix),
            file_path=str(series.paths[K + 1]),
            study_or_trial=study,
        )
    )
    upload = _Traffic.of(proxy.requests)
    # A worker that read vK (so has it cached) then reads vK+1.
    cache_dir, out = data / f"worker-{name}", data / f"worker-{name}.out"
    worker = optuna_cas.CachedArtifactStore(
        optuna_cas.Boto3ArtifactStore(BUCKET, counted, prefix=prefix), directory=cache_dir
    )
    traffic = []
    for artifact_id in (ids[K], ids[K + 1]):
        proxy.reset_log()
        optuna_cas.download_artifact(
            artifact_store=worker, file_path=str(out), artifact_id=artifact_id
        )
        traffic.append(_Traffic.of(proxy.requests))
        remove(out)
    worker.close()
    shutil.rmtree(cache_dir)
    delete_prefix(direct, BUCKET, prefix + "/")
    remove(folder)
    return _Step(
        name,
        series.file_bytes[K + 1],
        series.new_tensor_bytes[K + 1],
        upload,
        traffic[0],
        traffic[1],
    )


def _step_section(cfg: Config, steps: list[_Step]) -> Section:
    rows = []
    for s in steps:
        limit = SEND_FACTOR * s.changed + SLACK
        requests_limit = s.worker.received / BYTES_PER_REQUEST + REQUEST_CONSTANT
        rows += [
            Row(
                f"{s.name}: upload of v{K + 1} after v{K}, bytes sent",
                f"{mib(s.upload.sent)} in {s.upload.requests} requests",
                f"changed {mib(s.changed)}; whole file {mib(s.version_size)}",
                f"{s.upload.sent / s.changed:.2f}x changed",
                f"≤ {SEND_FACTOR}x changed + 2 MiB (≤ {mib(int(limit))})",
                s.upload.sent <= limit,
            ),
            Row(
                f"{s.name}: worker with v{K} cached downloads v{K + 1}, bytes received",
                mib(s.worker.received),
                f"changed {mib(s.changed)}; v{K} into an empty cache: "
                f"{mib(s.worker_fill.received)}",
                f"{s.worker.received / s.changed:.2f}x changed",
                f"≤ {SEND_FACTOR}x changed + 2 MiB (≤ {mib(int(limit))})",
                s.worker.received <= limit,
            ),
            Row(
                f"{s.name}: … requests of that download",
                f"{s.worker.requests} ({s.worker.methods()})",
                f"received {mib(s.worker.received)}; v{K} into an empty cache: "
                f"{s.worker_fill.requests} requests",
                "—",
                f"≤ 1 per 16 MiB received + {REQUEST_CONSTANT} (≤ {requests_limit:.1f})",
                s.worker.requests <= requests_limit,
            ),
        ]
    return Section(
        f"16. S3 (moto): version k+1 after k, {FORMAT} series of {mib(cfg.chunk_s3_version)} "
        "versions",
        rows,
        [
            f"Per workload: v0..v{K} are uploaded (not counted), then a new "
            f"`Boto3ArtifactStore` uploads v{K + 1} through an unthrottled `FaultProxy` whose "
            "log gives every request and its body bytes on the wire in each direction. "
            f"*Changed* = v{K + 1}'s unique bytes from the generator (tensor bytes v{K} did not "
            "hold; its header is not counted).",
            f"The worker: a `CachedArtifactStore` over a new, empty cache directory reads v{K} "
            f"with `download_artifact` (filling the cache with v{K}'s packs), then reads "
            f"v{K + 1}; the rows count only the second read. Every request counts (the ref, "
            "the manifest, packs; any HEAD or LIST), not only GETs.",
            f"Request constant {REQUEST_CONSTANT}, chosen before measuring: one GET for the "
            "ref, one for the manifest, and 2 spare.",
            "Upload traffic besides the chunk bytes, per workload: "
            + "; ".join(
                f"{s.name} {s.upload.methods()}, received {_amount(s.upload.received)} "
                "(the index objects a new uploader reads)"
                for s in steps
            )
            + ".",
        ],
    )


class _ColdStores:
    """New store instances on one client: chunked (the defaults) or whole (never chunked)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.current: Any = None

    def make(self, name: str) -> Any:
        store: ContentAddressedArtifactStore = optuna_cas.Boto3ArtifactStore(
            BUCKET, self._client, prefix=f"cold-{name}"
        )
        if name == "whole":
            content = ContentStore(store.content.backend, chunk_threshold=NEVER_CHUNK)
            store = ContentAddressedArtifactStore(content)
        self.current = store
        return store


class _Run:
    """One timed download: a new output file, and the requests its client sent."""

    def __init__(self, data: Path) -> None:
        self._data = data
        self._counter = itertools.count()
        self.out = data / "cold-out.bin"
        self.requests = 0

    def setup(self) -> None:
        self.out = self._data / f"cold-out-{next(self._counter)}.bin"
        self.requests = 0

    def count(self, **_: Any) -> None:
        """botocore ``before-send`` handler: every attempt of every request."""
        self.requests += 1


def _cold(cfg: Config, data: Path, client: Any) -> Section:
    size = cfg.chunk_cold
    label = mib(size)
    src = make_random_file(data / "cold.bin", size, seed=17)
    warm_page_cache(src)
    stores = _ColdStores(client)
    study = optuna.create_study()
    ids = {
        name: optuna_cas.upload_artifact(
            artifact_store=stores.make(name), file_path=str(src), study_or_trial=study
        )
        for name in ("chunked", "whole")
    }
    remove(src)
    counts: dict[str, list[int]] = {name: [] for name in ids}
    run = _Run(data)
    client.meta.events.register("before-send.s3", run.count)

    def contender(name: str) -> Contender:
        def setup() -> None:
            stores.make(name)  # a new store per rep: nothing remembered (refs, manifests)
            run.setup()

        def teardown() -> None:
            counts[name].append(run.requests)
            remove(run.out)

        return Contender(
            name,
            lambda: optuna_cas.download_artifact(
                artifact_store=stores.current, file_path=str(run.out), artifact_id=ids[name]
            ),
            setup=setup,
            teardown=teardown,
        )

    times = measure([contender("chunked"), contender("whole")], cfg.chunk_cold_reps)
    client.meta.events.unregister("before-send.s3", run.count)
    delete_prefix(client, BUCKET, "cold-")
    t_chunked, t_whole = median(times["chunked"]), median(times["whole"])
    ratio = t_whole / t_chunked
    return Section(
        f"17. S3 (moto): cold download of a chunked {label} artifact vs one blob",
        [
            Row(
                f"`download_artifact` of {label} stored as chunks (default threshold)",
                seconds(t_chunked, size),
                f"one blob (`chunk_threshold=2**62`): {seconds(t_whole, size)}",
                f"{ratio:.2f}x whole-blob throughput",
                f"≥ {TARGET_COLD}x whole-blob",
                ratio >= TARGET_COLD,
            ),
            Row(
                "… requests per download (botocore `before-send`, every attempt)",
                f"chunked: {max(counts['chunked'])}",
                f"one blob: {max(counts['whole'])}",
                "—",
                "—",
                None,
            ),
        ],
        [
            f"Per-rep seconds (median of {cfg.chunk_cold_reps}, after 1 warm-up round, order "
            f"rotated): chunked {fmt_times(times['chunked'])}; one blob "
            f"{fmt_times(times['whole'])}.",
            "Random bytes, uploaded once to each prefix; each rep downloads into a new file "
            "through a new store instance (nothing remembered) with no cache, on a client "
            "straight to moto (no proxy). Chunked: the ref, the manifest, then one ranged GET "
            "per run of chunks in a pack (packs of about 32 MiB), one after another, every "
            "chunk and the whole file verified. One blob: the ref, then one streamed GET, "
            "verified while written.",
            *([cold_note(max(counts["chunked"]))] if ratio < TARGET_COLD else []),
        ],
    )


def cold_note(requests: int) -> str:
    """Why the cold-download target is missed (from the request count and the reader's code)."""
    return (
        f"Why the target is missed: the chunked download makes {requests} requests one after "
        "another, and nothing overlaps them: while a pack's range is verified (a BLAKE3 per "
        "chunk) and written, no next range is in flight, and every byte is hashed twice (its "
        "chunk and the whole file) where the blob download hashes once. Fetching the next "
        "range while the current one is consumed is the likely fix; not tried here."
    )
