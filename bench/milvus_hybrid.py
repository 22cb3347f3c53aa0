"""Milvus Lite multi-vector benchmark: ingest rows/s, hybrid (RRF) query latency, HNSW recall@10 vs exact FLAT.

N random unit vectors per field (``text_vec`` 1024-d, ``image_vec`` 1536-d by default) are written with
``MultiVectorMilvusStore.upsert_vectors`` into two collections holding the same rows: one with HNSW on both
fields, one with FLAT (exact) on both. The same fused query (RRF over both fields, ``--candidates`` per field,
top ``--top-k``) is run against both; recall@k = |HNSW top-k ∩ FLAT top-k| / k, averaged over the queries.
Queries are stored rows plus Gaussian noise (``--query-noise``, relative to the vector norm), so each query has
real near neighbours; ``--query-noise 0`` is not allowed (the row itself would always win).

Targets (``--targets``):
- ``file``: ``uri=<tmp>/bench.db`` (milvus-lite 3.x opens a file URI by running its gRPC server in a thread of
  the client process);
- ``memory``: the store's in-process copy alone (``LocalMirror``: exact / IVF per field, fused like the
  store), no Milvus: how the search path scales past what Milvus Lite ingests in reasonable time;
- ``grpc``: a separate ``python -m milvus_lite server --data-dir <tmp> --host 127.0.0.1 --port P`` process
  (the Milvus Lite gRPC server shipped by milvus-lite >= 3; ``uri=http://127.0.0.1:P``).

Writes ``bench/results/milvus_hybrid.json`` and ``.md`` (``--out`` to change) and prints the markdown table.

    python -m bench.milvus_hybrid                 # 100,000 rows per field, both targets
    python -m bench.milvus_hybrid --n 20000
    python -m bench.milvus_hybrid --smoke         # 2,000 rows, a few seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag_plugins.milvus.fusion import Fusion
from rag_plugins.milvus.items import StoreItem
from rag_plugins.milvus.settings import FieldIndexSettings, MilvusStoreSettings
from rag_plugins.milvus.store import MultiVectorMilvusStore

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGETS = ("file", "grpc", "memory")


# ------------------------------------------------------------------------------------------------ data
def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` random unit vectors of size ``dim`` (float32)."""
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


@dataclass
class Dataset:
    """The rows written to both collections and the query pairs."""

    text: np.ndarray
    image: np.ndarray
    query_text: np.ndarray
    query_image: np.ndarray

    @property
    def n(self) -> int:
        return int(self.text.shape[0])


def clustered_rows(rng: np.random.Generator, n: int, dim: int, clusters: int, spread: float) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` random centres (``spread`` = noise / centre scale), float32."""
    if clusters <= 0:
        return unit_rows(rng, n, dim)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_dataset(n: int, text_dim: int, image_dim: int, n_queries: int, noise: float, seed: int,
                 clusters: int = 0, spread: float = 1.0) -> Dataset:
    """Unit rows (clustered when ``clusters`` > 0); queries = stored rows + ``noise`` x a random unit vector."""
    if noise <= 0:
        raise ValueError("--query-noise must be > 0")
    rng = np.random.default_rng(seed)
    text = clustered_rows(rng, n, text_dim, clusters, spread)
    image = clustered_rows(rng, n, image_dim, clusters, spread)
    picks = rng.choice(n, size=n_queries, replace=n_queries > n)
    qt = text[picks] + noise * unit_rows(rng, n_queries, text_dim)
    qi = image[picks] + noise * unit_rows(rng, n_queries, image_dim)
    qt /= np.linalg.norm(qt, axis=1, keepdims=True)
    qi /= np.linalg.norm(qi, axis=1, keepdims=True)
    return Dataset(text, image, qt.astype(np.float32), qi.astype(np.float32))


def row_id(i: int) -> str:
    return f"r{i:07d}"


# --------------------------------------------------------------------------------------- milvus server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def grpc_server_available() -> bool:
    """Whether the installed milvus-lite ships the gRPC server (``python -m milvus_lite server``)."""
    try:
        from milvus_lite.adapter.grpc.server import run_server  # noqa: F401
    except ImportError:
        return False
    return True


class MilvusLiteServer:
    """``python -m milvus_lite server`` as a child process on 127.0.0.1 (a restartable handle).

    Args:
        data_dir: The server's data directory (survives restarts).
        port: Port to bind (a free one when None; kept across restarts).
        log_path: Where the server's output goes (``<data_dir>.log`` when None).
    """

    def __init__(self, data_dir: Path, port: int | None = None, log_path: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or _free_port()
        self.log_path = log_path or self.data_dir.with_suffix(".log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> str:
        """Start the server; return its URI once the port accepts connections."""
        cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
               "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {self._proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self.uri
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"milvus-lite server not listening after {timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGINT (the server's graceful path: drain, close the DB), then SIGKILL after ``grace_s``."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        import signal

        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        """SIGKILL (no chance to flush): what a crash looks like."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    def __enter__(self) -> MilvusLiteServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def milvus_target(target: str, workdir: Path) -> Iterator[str]:
    """Yield the URI of a fresh Milvus Lite for ``target`` (``file`` or ``grpc``) under ``workdir``."""
    if target == "file":
        yield str(workdir / "bench.db")
    elif target == "grpc":
        with MilvusLiteServer(workdir / "grpc-data") as server:
            yield server.uri
    else:
        raise ValueError(f"unknown target {target!r}; use one of {TARGETS}")


# ------------------------------------------------------------------------------------------- measuring
def open_store(uri: str, name: str, index: FieldIndexSettings, text_dim: int, image_dim: int,
               client: Any = None, local: bool | None = None) -> MultiVectorMilvusStore:
    settings = MilvusStoreSettings(uri=uri, collection_name=name, text_dim=text_dim, image_dim=image_dim,
                                   text_index=index, image_index=index, local_search=local)
    return MultiVectorMilvusStore(settings=settings, client=client)


def ingest(store: MultiVectorMilvusStore, data: Dataset, batch: int) -> dict[str, float]:
    """Upsert all rows in batches; flush. Returns seconds for the upserts and for the flush."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    with tqdm(total=data.n, desc=f"ingest {store.collection_name}", unit="row", mininterval=5.0) as bar:
        for start in range(0, data.n, batch):
            stop = min(start + batch, data.n)
            items = [StoreItem(text=f"row {i}", id=row_id(i), doc_id=f"d{i // 100}", chunk_id=str(i))
                     for i in range(start, stop)]
            store.upsert_vectors(items, list(data.text[start:stop]), list(data.image[start:stop]))
            bar.update(stop - start)
    t1 = time.perf_counter()
    store.client.flush(store.collection_name)
    t2 = time.perf_counter()
    return {"upsert_s": t1 - t0, "flush_s": t2 - t1}


def run_queries(store: MultiVectorMilvusStore, data: Dataset, fusion: Fusion, top_k: int,
                candidates: int) -> tuple[list[list[str]], list[float]]:
    """Fused top-k ids and seconds per query."""
    ids, secs = [], []
    for qt, qi in zip(data.query_text, data.query_image, strict=True):
        t = time.perf_counter()
        hits = store.search(qt, qi, fusion=fusion, top_k=top_k, text_limit=candidates, image_limit=candidates)
        secs.append(time.perf_counter() - t)
        ids.append([h.id for h in hits])
    return ids, secs


def concurrent_qps(store: MultiVectorMilvusStore, data: Dataset, fusion: Fusion, top_k: int, candidates: int,
                   clients: int, seconds: float) -> float:
    """Fused queries per second with ``clients`` threads searching for ``seconds``."""
    import threading

    stop = time.perf_counter() + seconds
    counts = [0] * clients

    def worker(c: int) -> None:
        i = c
        while time.perf_counter() < stop:
            j = i % len(data.query_text)
            store.search(data.query_text[j], data.query_image[j], fusion=fusion, top_k=top_k,
                         text_limit=candidates, image_limit=candidates)
            counts[c] += 1
            i += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def exact_rrf(data: Dataset, top_k: int, candidates: int, rrf_k: int) -> list[list[str]]:
    """RRF of the exact per-field top-``candidates`` (numpy, cosine = dot on unit vectors), ties by id."""
    out = []
    for qt, qi in zip(data.query_text, data.query_image, strict=True):
        scores: dict[int, float] = {}
        for mat, q in ((data.text, qt), (data.image, qi)):
            sims = mat @ q
            top = np.argsort(-sims, kind="stable")[:candidates]
            for rank, i in enumerate(top, start=1):
                scores[int(i)] = scores.get(int(i), 0.0) + 1.0 / (rrf_k + rank)
        best = sorted(scores, key=lambda i: (-scores[i], row_id(i)))[:top_k]
        out.append([row_id(i) for i in best])
    return out


def recall_at_k(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]], k: int) -> float:
    """Mean |found[:k] ∩ truth[:k]| / k."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


@dataclass
class TargetResult:
    target: str
    n: int
    hnsw_ingest_rows_s: float
    hnsw_flush_s: float
    flat_ingest_rows_s: float
    flat_flush_s: float
    hnsw_p50_ms: float
    hnsw_p95_ms: float
    flat_p50_ms: float
    flat_p95_ms: float
    recall_at_k_hnsw_vs_flat: float
    flat_equals_numpy_rrf: float
    rows_counted: int
    local_index_build_s: float = float("nan")
    ingest_incl_index_rows_s: float = float("nan")
    local_save_s: float = float("nan")
    local_p50_ms: float = float("nan")
    local_p95_ms: float = float("nan")
    local_qps: float = float("nan")
    milvus_qps: float = float("nan")
    local_recall_vs_exact: float = float("nan")
    local_load_s: float = float("nan")
    local_mem_mb: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


def bench_memory(data: Dataset, args: argparse.Namespace) -> TargetResult:
    """The in-process copy alone: append rows, build the IVF indexes, time fused queries, recall vs exact."""
    import threading

    from tqdm.auto import tqdm

    from rag_plugins.milvus.local_index import LocalMirror

    fusion = Fusion("rrf", rrf_k=args.rrf_k)
    dims = {"text_vec": data.text.shape[1], "image_vec": data.image.shape[1]}
    mirror = LocalMirror(dims, {f: "COSINE" for f in dims})
    flags = {"text_vec": "has_text_vec", "image_vec": "has_image_vec"}
    t0 = time.perf_counter()
    with tqdm(total=data.n, desc="memory copy", unit="row", mininterval=5.0) as bar:
        for start in range(0, data.n, args.batch):
            stop = min(start + args.batch, data.n)
            rows = [{"id": row_id(i), "text_vec": data.text[i], "image_vec": data.image[i], "has_text_vec": True,
                     "has_image_vec": True, "doc_id": f"d{i // 100}"} for i in range(start, stop)]
            mirror.upsert(rows, flags, ["doc_id"])
            bar.update(stop - start)
    append_s = time.perf_counter() - t0
    build = mirror.build_indexes()

    def query(j: int) -> list[str]:
        per_field = {f: mirror.fields[f].search(q, args.candidates)[: args.candidates]
                     for f, q in (("text_vec", data.query_text[j]), ("image_vec", data.query_image[j]))}
        return [k for k, _ in fusion.fuse(per_field, args.top_k)]

    query(0)
    found, secs = [], []
    for j in range(len(data.query_text)):
        t = time.perf_counter()
        found.append(query(j))
        secs.append(time.perf_counter() - t)
    stop_at = time.perf_counter() + args.qps_seconds
    counts = [0] * max(args.clients, 1)

    def worker(c: int) -> None:
        i = c
        while time.perf_counter() < stop_at:
            query(i % len(data.query_text))
            counts[c] += 1
            i += len(counts)

    t1 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(len(counts))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    qps = sum(counts) / (time.perf_counter() - t1)
    truth = exact_rrf(data, args.top_k, args.candidates, args.rrf_k)
    nan = float("nan")
    result = TargetResult(
        target="memory", n=data.n, hnsw_ingest_rows_s=nan, hnsw_flush_s=nan, flat_ingest_rows_s=nan, flat_flush_s=nan,
        hnsw_p50_ms=nan, hnsw_p95_ms=nan, flat_p50_ms=nan, flat_p95_ms=nan, recall_at_k_hnsw_vs_flat=nan,
        flat_equals_numpy_rrf=nan, rows_counted=len(mirror.rows), local_index_build_s=sum(build.values()),
        ingest_incl_index_rows_s=data.n / (append_s + sum(build.values())), local_p50_ms=pct(secs, 50),
        local_p95_ms=pct(secs, 95), local_qps=qps, local_recall_vs_exact=recall_at_k(found, truth, args.top_k),
        local_mem_mb=mirror.memory_bytes() / 2**20, extra={"append_rows_s": data.n / append_s, "build_s": build},
    )
    log(f"[memory] append {data.n / append_s:.0f} rows/s, build {build}, p50 {result.local_p50_ms:.1f} ms, "
        f"p95 {result.local_p95_ms:.1f} ms, {len(counts)} clients {qps:.1f} q/s, "
        f"recall {result.local_recall_vs_exact:.3f}")
    return result


def bench_target(target: str, data: Dataset, args: argparse.Namespace) -> TargetResult:
    """Ingest into the ``--collections`` (HNSW and/or FLAT); query Milvus (optional) and the local path."""
    fusion = Fusion("rrf", rrf_k=args.rrf_k)
    hnsw = FieldIndexSettings("HNSW", "COSINE", build_params={"M": args.hnsw_m, "efConstruction": args.ef_construction},
                              search_params={"ef": args.ef})
    flat = FieldIndexSettings("FLAT", "COSINE")
    text_dim, image_dim = data.text.shape[1], data.image.shape[1]
    labels = [c.strip() for c in args.collections.split(",") if c.strip()]
    indexes = {"hnsw": hnsw, "flat": flat}
    nan = float("nan")
    workdir = Path(tempfile.mkdtemp(prefix=f"milvus-bench-{target}-", dir=args.workdir))
    try:
        with milvus_target(target, workdir) as uri:
            res: dict[str, Any] = {f"{lb}_{k}": nan for lb in ("hnsw", "flat")
                                   for k in ("ingest_rows_s", "flush_s", "p50_ms", "p95_ms")}
            res.update(recall_at_k_hnsw_vs_flat=nan, flat_equals_numpy_rrf=nan)
            extra: dict[str, Any] = {}
            stores: dict[str, MultiVectorMilvusStore] = {}
            writers: dict[str, MultiVectorMilvusStore] = {}
            for label in labels:
                client = next(iter(stores.values())).client if stores else None  # one connection
                # Ingest through the default store (for a file URI its in-process copy is filled as it goes);
                # queries to Milvus itself go through a twin opened with local_search=False.
                writer = open_store(uri, f"bench_{label}", indexes[label], text_dim, image_dim, client=client)
                t = ingest(writer, data, args.batch)
                writers[label] = writer
                stores[label] = open_store(uri, f"bench_{label}", indexes[label], text_dim, image_dim,
                                           client=writer.client, local=False)
                res[f"{label}_ingest_rows_s"] = data.n / t["upsert_s"]
                res[f"{label}_flush_s"] = t["flush_s"]
                log(f"[{target}] {label}: {data.n} rows in {t['upsert_s']:.1f}s "
                    f"({res[f'{label}_ingest_rows_s']:.0f} rows/s), flush {t['flush_s']:.1f}s")
                if writer.local is not None and label == labels[0]:
                    build = writer.build_local_index()
                    res["local_index_build_s"] = sum(build.values())
                    res["ingest_incl_index_rows_s"] = data.n / (t["upsert_s"] + t["flush_s"] + sum(build.values()))
                    log(f"[{target}] {label}: local IVF build {build}")
            truth = exact_rrf(data, args.top_k, args.candidates, args.rrf_k)
            found: dict[str, list[list[str]]] = {}
            if args.milvus_queries:
                for store in stores.values():  # warm-up (index load / first-search costs are not latency)
                    run_queries(store, Dataset(data.text, data.image, data.query_text[:2], data.query_image[:2]),
                                fusion, args.top_k, args.candidates)
                for label, store in stores.items():
                    found[label], secs = run_queries(store, data, fusion, args.top_k, args.candidates)
                    res[f"{label}_p50_ms"], res[f"{label}_p95_ms"] = pct(secs, 50), pct(secs, 95)
                    log(f"[{target}] {label}: query p50 {res[f'{label}_p50_ms']:.1f} ms, "
                        f"p95 {res[f'{label}_p95_ms']:.1f} ms")
                if args.clients and "hnsw" in stores:
                    res["milvus_qps"] = concurrent_qps(stores["hnsw"], data, fusion, args.top_k, args.candidates,
                                                       args.clients, args.qps_seconds)
                    log(f"[{target}] milvus hnsw: {args.clients} clients {res['milvus_qps']:.1f} q/s")
            label = labels[0]
            if target == "file" and writers[label].local is not None:
                # The default for file URIs: the in-process copy, saved next to the DB file and reopened
                # from there (what a restarted process pays).
                from rag_plugins.milvus.local_index import forget_mirror

                t0 = time.perf_counter()
                writers[label].save_local_index()
                res["local_save_s"] = time.perf_counter() - t0
                for w in writers.values():
                    forget_mirror(w._local_key())
                t0 = time.perf_counter()
                local = open_store(uri, f"bench_{label}", indexes[label], text_dim, image_dim,
                                   client=stores[label].client, local=True)
                res["local_load_s"] = time.perf_counter() - t0
                assert local.local is not None
                extra["local_loaded_from_side_files"] = local.local.persisted
                extra["local_uses_ivf"] = {f: v.uses_ann for f, v in local.local.fields.items()}
                res["local_mem_mb"] = local.local.memory_bytes() / 2**20
                run_queries(local, Dataset(data.text, data.image, data.query_text[:2], data.query_image[:2]),
                            fusion, args.top_k, args.candidates)
                found["local"], secs = run_queries(local, data, fusion, args.top_k, args.candidates)
                res["local_p50_ms"], res["local_p95_ms"] = pct(secs, 50), pct(secs, 95)
                res["local_recall_vs_exact"] = recall_at_k(found["local"], truth, args.top_k)
                if args.clients:
                    res["local_qps"] = concurrent_qps(local, data, fusion, args.top_k, args.candidates,
                                                      args.clients, args.qps_seconds)
                log(f"[{target}] local: load {res['local_load_s']:.1f}s, p50 {res['local_p50_ms']:.1f} ms, "
                    f"p95 {res['local_p95_ms']:.1f} ms, {args.clients} clients {res['local_qps']:.1f} q/s, "
                    f"recall {res['local_recall_vs_exact']:.3f}")
            if "hnsw" in found and "flat" in found:
                res["recall_at_k_hnsw_vs_flat"] = recall_at_k(found["hnsw"], found["flat"], args.top_k)
            if "flat" in found:
                res["flat_equals_numpy_rrf"] = float(np.mean([f == t for f, t in zip(found["flat"], truth,
                                                                                      strict=True)]))
            first = next(iter(stores.values()))
            res["rows_counted"] = first.count()
            first.client.close()
        return TargetResult(target=target, n=data.n, extra=extra, **res)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------- reporting
COLUMNS = (
    ("target", "target", "{}"),
    ("rows/field", "n", "{:,}"),
    ("ingest rows/s (HNSW coll.)", "hnsw_ingest_rows_s", "{:,.0f}"),
    ("ingest rows/s (FLAT coll.)", "flat_ingest_rows_s", "{:,.0f}"),
    ("flush+index s (HNSW)", "hnsw_flush_s", "{:.1f}"),
    ("hybrid p50 ms (HNSW)", "hnsw_p50_ms", "{:.1f}"),
    ("hybrid p95 ms (HNSW)", "hnsw_p95_ms", "{:.1f}"),
    ("hybrid p50 ms (FLAT)", "flat_p50_ms", "{:.1f}"),
    ("hybrid p95 ms (FLAT)", "flat_p95_ms", "{:.1f}"),
    ("recall@k HNSW vs FLAT", "recall_at_k_hnsw_vs_flat", "{:.3f}"),
    ("FLAT == numpy RRF", "flat_equals_numpy_rrf", "{:.2f}"),
    ("8-client q/s (HNSW)", "milvus_qps", "{:.1f}"),
    ("local IVF build s", "local_index_build_s", "{:.1f}"),
    ("ingest rows/s incl. flush + local index", "ingest_incl_index_rows_s", "{:,.0f}"),
    ("local save s", "local_save_s", "{:.1f}"),
    ("local: reopen s", "local_load_s", "{:.1f}"),
    ("local p50 ms", "local_p50_ms", "{:.1f}"),
    ("local p95 ms", "local_p95_ms", "{:.1f}"),
    ("local 8-client q/s", "local_qps", "{:.1f}"),
    ("local recall@k vs exact", "local_recall_vs_exact", "{:.3f}"),
    ("local MiB", "local_mem_mb", "{:.0f}"),
)


def markdown_table(results: Sequence[TargetResult]) -> str:
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = ["| " + " | ".join(fmt.format(getattr(r, key)) for _, key, fmt in COLUMNS) + " |" for r in results]
    return "\n".join([head, sep, *rows])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="rows (random unit vectors per field)")
    p.add_argument("--text-dim", type=int, default=1024)
    p.add_argument("--image-dim", type=int, default=1536)
    p.add_argument("--queries", type=int, default=100, help="fused queries timed and scored")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--candidates", type=int, default=100, help="per-field candidate limit before RRF")
    p.add_argument("--rrf-k", type=int, default=60)
    p.add_argument("--query-noise", type=float, default=1.0,
                   help="query = stored row + noise x random unit vector (1.0: cosine to the row ~0.7)")
    p.add_argument("--clusters", type=int, default=1000, help="cluster centres per field (0: uniform noise)")
    p.add_argument("--spread", type=float, default=1.0, help="within-cluster noise relative to the centres")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients for the q/s columns (0: skip)")
    p.add_argument("--qps-seconds", type=float, default=10.0)
    p.add_argument("--hnsw-m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef", type=int, default=128, help="HNSW search ef (>= --candidates is advisable)")
    p.add_argument("--batch", type=int, default=1000, help="rows per upsert_vectors call")
    p.add_argument("--targets", default="file,grpc", help="comma list of: file, grpc, memory")
    p.add_argument("--collections", default="hnsw,flat",
                   help="comma list of hnsw, flat: the collections ingested (the first one is searched locally)")
    p.add_argument("--milvus-queries", action=argparse.BooleanOptionalAction, default=True,
                   help="also time searches answered by Milvus Lite itself (slow: O(rows) Python per query)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the temporary Milvus data goes (default: $TMPDIR)")
    p.add_argument("--out", default=str(RESULTS_DIR / "milvus_hybrid"),
                   help="results path without extension ('' = do not write)")
    p.add_argument("--smoke", action="store_true", help="2,000 rows, 20 queries, small dims; for tests")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.queries, args.text_dim, args.image_dim, args.batch = 2000, 20, 64, 96, 500
        args.clusters, args.qps_seconds = 50, 1.0
    return args


def _max_rss_mib() -> float:
    """Peak resident memory of this process (data + Milvus Lite + the local copy), MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise SystemExit(f"unknown --targets {unknown}; use {TARGETS}")
    notes = []
    if "grpc" in targets and not grpc_server_available():
        targets.remove("grpc")
        notes.append("grpc skipped: the installed milvus-lite ships no gRPC server")
    data = make_dataset(args.n, args.text_dim, args.image_dim, args.queries, args.query_noise, args.seed,
                        args.clusters, args.spread)
    results = [bench_memory(data, args) if t == "memory" else bench_target(t, data, args) for t in targets]
    import milvus_lite
    import pymilvus

    report: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
        "env": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                "pymilvus": pymilvus.__version__, "milvus_lite": getattr(milvus_lite, "__version__", "?")},
        "notes": notes,
        "max_rss_mib": _max_rss_mib(),
        "results": [asdict(r) for r in results],
    }
    table = markdown_table(results)
    print(table)
    for note in notes:
        print(f"\n{note}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        cfg = report["config"]
        md = [
            "# Milvus Lite hybrid retrieval benchmark", "",
            "local = the store's default for file URIs (in-process copy, rag_plugins/milvus/local_index.py: exact "
            "below 20,000 rows per field, IVF fp16 + exact re-scoring above; saved next to the DB file, reopened "
            "from there); "
            "HNSW / FLAT = the same store with local_search=False (Milvus Lite answers).", "",
            f"`python -m bench.milvus_hybrid {' '.join(sys.argv[1:] if argv is None else argv)}` — "
            f"{cfg['n']:,} unit vectors per field in {cfg['clusters']} clusters (spread {cfg['spread']}) (text_vec {cfg['text_dim']}-d, image_vec "
            f"{cfg['image_dim']}-d), COSINE; HNSW M={cfg['hnsw_m']} efConstruction={cfg['ef_construction']} "
            f"ef={cfg['ef']} vs FLAT (exact). Fused query: RRF k={cfg['rrf_k']} over both fields, "
            f"{cfg['candidates']} candidates per field, top {cfg['top_k']}; {cfg['queries']} queries "
            f"(stored rows + noise {cfg['query_noise']}). Ingest = `upsert_vectors` in batches of "
            f"{cfg['batch']} (flush timed separately). Peak RSS of the benchmark process "
            f"{report['max_rss_mib']:,.0f} MiB. {report['env']['cpus']} CPUs, "
            f"pymilvus {report['env']['pymilvus']}, milvus-lite {report['env']['milvus_lite']}.", "",
            table, "", *notes,
        ]
        out.with_suffix(".md").write_text("\n".join(md).rstrip() + "\n")
    return report


if __name__ == "__main__":
    main()
