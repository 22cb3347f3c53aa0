"""Embedded Milvus ingest benchmark: rows/s into a Milvus Lite file, and what each write setting costs.

Rows are the store's schema (``text_vec`` 1024-d + ``image_vec`` 1536-d random unit vectors, short scalars).
What is measured, per run (one setting per run, so runs can be compared in a table):

- ``write``: the write calls alone (``--path store``: ``MultiVectorMilvusStore.upsert_vectors``, which also
  fills the in-process copy; ``--path insert`` / ``upsert``: raw ``MilvusClient.insert`` / ``upsert`` on the
  same schema, no store);
- ``flush``: ``MilvusClient.flush`` after the last write (rows durable in the file's segments);
- ``local index``: the in-process IVF build (``store.build_local_index()``; store path only);
- ``close``: the store's close (saves the in-process copy next to the file; store path only);
- ``verify`` (``--verify``): a fresh process reopens the file and checks that every id is there exactly once
  (``count`` and a full id listing), so "durable after close" is checked, not assumed.

``ingest rows/s incl. index`` = rows / (write + flush + local index + close), the acceptance number of
issue 13. Settings: ``--index`` (the Milvus-side index of both fields), ``--batch``, ``--threads`` (parallel
write calls), ``--flush-every`` (flush after every k batches; 0 = once at the end). The engine is whatever
pymilvus / milvus-lite the interpreter has; run it from another venv to compare engines (``--path insert``
/ ``upsert`` need no ``rag_plugins`` dependencies besides numpy).

    python -m bench.milvus_ingest --n 20000 --index FLAT --batch 2000
    python -m bench.milvus_ingest --n 100000 --verify --out bench/results/milvus_ingest_100k
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.milvus_hybrid import row_id, unit_rows

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COLLECTION = "ingest"


def raw_rows(text: np.ndarray, image: np.ndarray, start: int) -> list[dict[str, Any]]:
    """Rows of the store's schema as the store builds them (float32 arrays, not lists)."""
    return [{"id": row_id(start + j), "text_vec": text[j], "image_vec": image[j], "has_text_vec": True,
             "has_image_vec": True, "doc_id": f"d{(start + j) // 100}", "chunk_id": str(start + j),
             "modality": "text", "uri": "", "page": 0, "caption": "", "text": f"row {start + j}", "meta": {}}
            for j in range(text.shape[0])]


def create_raw_collection(client: Any, text_dim: int, image_dim: int, index: str) -> None:
    """The store's schema, made with plain pymilvus (so ``--path insert`` runs without ``rag_plugins``)."""
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("text_vec", DataType.FLOAT_VECTOR, dim=text_dim)
    schema.add_field("image_vec", DataType.FLOAT_VECTOR, dim=image_dim)
    for name in ("doc_id", "chunk_id", "modality"):
        schema.add_field(name, DataType.VARCHAR, max_length=1024)
    for name in ("uri", "caption", "text"):
        schema.add_field(name, DataType.VARCHAR, max_length=65_535)
    schema.add_field("page", DataType.INT64)
    schema.add_field("meta", DataType.JSON)
    schema.add_field("has_text_vec", DataType.BOOL)
    schema.add_field("has_image_vec", DataType.BOOL)
    params = client.prepare_index_params()
    build = {"HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": 128}}.get(index, {})
    for name in ("text_vec", "image_vec"):
        params.add_index(name, index_type=index, metric_type="COSINE", params=build)
    client.create_collection(COLLECTION, schema=schema, index_params=params, consistency_level="Strong")


def open_store(uri: str, args: argparse.Namespace) -> Any:
    from rag_plugins.milvus.settings import FieldIndexSettings, MilvusStoreSettings
    from rag_plugins.milvus.store import MultiVectorMilvusStore

    kw: dict[str, Any] = {}
    if args.index:
        index = FieldIndexSettings(index_type=args.index)
        kw.update(text_index=index, image_index=index)
    settings = MilvusStoreSettings(uri=uri, collection_name=COLLECTION, text_dim=args.text_dim,
                                   image_dim=args.image_dim, **kw)
    return MultiVectorMilvusStore(settings=settings)


def verify(uri: str, n: int) -> dict[str, Any]:
    """Reopen ``uri`` in a fresh process: row count and distinct ids (every id once)."""
    code = (
        "import json, sys\n"
        "from pymilvus import MilvusClient\n"
        f"c = MilvusClient(uri={uri!r})\n"
        f"c.load_collection({COLLECTION!r})\n"
        f"count = int(c.query({COLLECTION!r}, filter='', output_fields=['count(*)'])[0]['count(*)'])\n"
        f"ids = [r['id'] for r in c.query({COLLECTION!r}, filter='id != \"\"', output_fields=['id'])]\n"
        "print(json.dumps({'count': count, 'ids': len(ids), 'distinct': len(set(ids))}))\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"reopening {uri} failed:\n{proc.stderr[-3000:]}")
    out = proc.stdout
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    res["reopen_s"] = time.perf_counter() - t0
    res["ok"] = res["count"] == res["ids"] == res["distinct"] == n
    return res


def run(args: argparse.Namespace, uri: str) -> dict[str, Any]:
    """Ingest ``args.n`` rows into a fresh Milvus Lite file ``uri``; seconds and rows/s per phase."""
    rng = np.random.default_rng(args.seed)
    text = unit_rows(rng, args.n, args.text_dim)
    image = unit_rows(rng, args.n, args.image_dim)
    res: dict[str, Any] = {"n": args.n, "path": args.path, "index": args.index or "store default",
                           "batch": args.batch, "threads": args.threads, "flush_every": args.flush_every}
    store: Any = None
    if args.path == "store":
        store = open_store(uri, args)
        client = store.client
        if not args.index:
            res["index"] = f"{store.index_settings('text_vec').index_type} (store default)"
    else:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=uri)
        create_raw_collection(client, args.text_dim, args.image_dim, args.index or "HNSW")
    starts = list(range(0, args.n, args.batch))
    done = [0]
    lock = threading.Lock()

    def write(start: int) -> None:
        stop = min(start + args.batch, args.n)
        if args.path == "store":
            from rag_plugins.milvus.items import StoreItem

            items = [StoreItem(text=f"row {i}", id=row_id(i), doc_id=f"d{i // 100}", chunk_id=str(i))
                     for i in range(start, stop)]
            store.upsert_vectors(items, list(text[start:stop]), list(image[start:stop]))
        else:
            rows = raw_rows(text[start:stop], image[start:stop], start)
            getattr(client, args.path)(COLLECTION, rows)
        with lock:
            done[0] += 1
            if args.flush_every and done[0] % args.flush_every == 0:
                client.flush(COLLECTION)

    import resource

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.threads > 1:
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(write, starts))
    else:
        for start in starts:
            write(start)
    t1 = time.perf_counter()
    client.flush(COLLECTION)
    t2 = time.perf_counter()
    res["write_s"], res["flush_s"] = t1 - t0, t2 - t1
    res["local_index_s"] = res["close_s"] = 0.0
    if store is not None:
        res["local_index_s"] = sum(store.build_local_index().values())
        t3 = time.perf_counter()
        store.close()
        res["close_s"] = time.perf_counter() - t3
    else:
        client.close()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds of this process (all threads, Milvus Lite's included): less sensitive than wall time to
    # other jobs on a shared box.
    res["cpu_s"] = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    res["write_rows_s"] = args.n / res["write_s"]
    res["total_s"] = res["write_s"] + res["flush_s"] + res["local_index_s"] + res["close_s"]
    res["incl_index_rows_s"] = args.n / res["total_s"]
    return res


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="rows")
    p.add_argument("--text-dim", type=int, default=1024)
    p.add_argument("--image-dim", type=int, default=1536)
    p.add_argument("--path", choices=("store", "insert", "upsert"), default="store",
                   help="store = MultiVectorMilvusStore.upsert_vectors; insert / upsert = raw MilvusClient calls")
    p.add_argument("--index", default="",
                   help="Milvus-side index of both fields (HNSW, FLAT, ...); '' = the store's default")
    p.add_argument("--batch", type=int, default=1000, help="rows per write call")
    p.add_argument("--threads", type=int, default=1, help="parallel write calls")
    p.add_argument("--flush-every", type=int, default=0, help="flush after every k batches (0: at the end)")
    p.add_argument("--verify", action="store_true", help="reopen in a fresh process; every id exactly once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the Milvus Lite file goes (default: $TMPDIR)")
    p.add_argument("--db", default="", help=argparse.SUPPRESS)  # the child's file (set by main)
    p.add_argument("--out", default="", help="results path without extension ('' = print only)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    if args.db:  # the child: ingest, print the phases as JSON, exit (which releases the file's lock)
        print(json.dumps(run(args, args.db)))
        return {}
    workdir = Path(tempfile.mkdtemp(prefix="milvus_ingest_", dir=args.workdir))
    uri = str(workdir / "ingest.db")
    try:
        # Milvus Lite keeps its file locked until the process that opened it exits, so the ingest runs in
        # a child and the reopen check in another: what a restarted application sees.
        child = subprocess.run([sys.executable, "-m", "bench.milvus_ingest", *raw_argv, "--db", uri],
                               capture_output=True, text=True)
        if child.returncode != 0:
            raise RuntimeError(f"ingest failed:\n{child.stderr[-3000:]}")
        res: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
        res["db_mib"] = sum(f.stat().st_size for f in workdir.rglob("*") if f.is_file()) / 2**20
        if args.verify:
            res["verify"] = verify(uri, args.n)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    import milvus_lite
    import pymilvus

    report = {
        "command": "python -m bench.milvus_ingest " + " ".join(raw_argv),
        "env": {"python": platform.python_version(), "cpus": os.cpu_count(), "pymilvus": pymilvus.__version__,
                "milvus_lite": getattr(milvus_lite, "__version__", "?"), "load_avg_1m_end": os.getloadavg()[0]},
        "result": res,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        Path(args.out).with_suffix(".md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The run as a markdown page: command, environment, one table of phases."""
    r, env = report["result"], report["env"]
    check = r.get("verify")
    rows = [
        ("write calls", f"{r['write_s']:.1f}", f"{r['write_rows_s']:,.0f}"),
        ("Milvus flush", f"{r['flush_s']:.1f}", ""),
        ("in-process IVF build", f"{r['local_index_s']:.1f}", ""),
        ("store close (saves the in-process copy)", f"{r['close_s']:.1f}", ""),
        ("**ingest incl. flush + index + close**", f"**{r['total_s']:.1f}**", f"**{r['incl_index_rows_s']:,.0f}**"),
    ]
    lines = [
        "# Embedded Milvus ingest", "", f"`{report['command']}`", "",
        f"{r['n']:,} rows (text_vec + image_vec random unit vectors), path `{r['path']}`, Milvus-side index "
        f"`{r['index']}`, batches of {r['batch']:,}, {r['threads']} writer thread(s). pymilvus {env['pymilvus']}, "
        f"milvus-lite {env['milvus_lite']}, Python {env['python']}, {env['cpus']} CPUs (load average at the end "
        f"{env['load_avg_1m_end']:.1f}: the box is shared). CPU seconds of the ingesting process over all phases: "
        f"{r['cpu_s']:.1f}. Milvus Lite files: {r['db_mib']:,.0f} MiB.", "",
        "| phase | s | rows/s |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
    ]
    if check:
        lines.append(f"Reopened in a fresh process ({check['reopen_s']:.1f} s incl. interpreter start): count "
                     f"{check['count']:,}, ids listed {check['ids']:,}, distinct {check['distinct']:,}: "
                     f"{'every row exactly once' if check['ok'] else 'MISMATCH'}.")
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    main()
