"""Fusion on real data: BEIR SciFact with all-MiniLM-L6-v2, a title vector and a full-text vector per document.

Two fields of one collection, the shape of the multi-vector store (here both come from the same text model;
in production the second field is the image space):

* ``full``  = ``(title + " " + text).strip()`` (BEIR / MTEB's document text; nDCG@10 0.6451 is MTEB's number);
* ``title`` = the title (the text when a document has none).

Reported (test split, nDCG@10 and Recall@100, BEIR/MTEB rules: identical query/document ids dropped):

1. each field alone (exact cosine, numpy);
2. RRF of the two fields' top ``--candidates`` for several ``k``;
3. weighted fusion (Milvus' ``norm_score``: ``(1+cos)/2`` per field, then α·full + (1−α)·title) for several α;
4. through :class:`MultiVectorMilvusStore` (``text_vec`` = full, ``image_vec`` = title) on a Milvus Lite file:
   the in-process copy exact, the in-process IVF path (``AnnSettings(threshold=1000)`` so the 5,183 rows use
   it), and Milvus Lite's own HNSW search (``local_search=False``), single field and hybrid RRF.

A rerank stage is not run: no real reranker weights are reachable offline (the reranker servers are tested for
exactness with random weights, which cannot rank).

    python -m bench.fusion_scifact --data ../shared/data/scifact            # starts rag-serve (MiniLM, CPU)
    python -m bench.fusion_scifact --data ../shared/data/scifact --base-url http://127.0.0.1:8001

The data is read in place (``--data`` inside the repository is refused) and nothing derived from it is kept
on disk: the corpus is embedded on every run. Writes metrics only to ``bench/results/fusion_scifact.json``
and ``.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.beir_eval import _server, embed_all, evaluate, exact_search, load_beir, read_jsonl
from rag_plugins.milvus.fusion import Fusion

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = RESULTS_DIR.parents[1]


def load_titles(folder: Path) -> dict[str, str]:
    """``{doc_id: title}`` (the text when the title is empty)."""
    out = {}
    for doc in read_jsonl(folder / "corpus.jsonl"):
        title = str(doc.get("title") or "").strip()
        out[str(doc["_id"])] = title or str(doc.get("text") or "")
    return out


def embeddings(args: argparse.Namespace, full: list[str], titles: list[str], queries: list[str]) -> dict[str, np.ndarray]:
    """``{"full", "title", "query"}`` → (n, dim) float32 from the embedding server."""
    server_args = SimpleNamespace(base_url=args.base_url, model=args.model, model_name=None, dtype=None,
                                  device=args.device)
    with _server(server_args) as base:  # type: ignore[arg-type]
        out = {
            "full": asyncio.run(embed_all(base, full, "document", 64, 4, "full text")),
            "title": asyncio.run(embed_all(base, titles, "document", 64, 4, "titles")),
            "query": asyncio.run(embed_all(base, queries, "query", 64, 4, "queries")),
        }
    return out


def best_first(run_q: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(run_q.items(), key=lambda h: (-h[1], h[0]))


def fused_run(per_field: dict[str, dict[str, dict[str, float]]], fusion: Fusion,
              qids: Sequence[str], top_k: int) -> dict[str, dict[str, float]]:
    """``{qid: {doc: fused score}}`` from per-field runs (each field's top list, best first)."""
    run = {}
    for qid in qids:
        lists = {field: best_first(r[qid]) for field, r in per_field.items()}
        run[qid] = dict(fusion.fuse(lists, top_k, {f: "COSINE" for f in lists}))
    return run


def metrics(qrels: Any, run: dict[str, dict[str, float]]) -> dict[str, float]:
    m = evaluate(qrels, run)
    return {"ndcg@10": round(m["ndcg@10"], 4), "recall@100": round(m["recall@100"], 4)}


def store_runs(vecs: dict[str, np.ndarray], doc_ids: list[str], qids: list[str], workdir: Path,
               candidates: int) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Runs through MultiVectorMilvusStore: ``{variant: {"full"|"title"|"rrf": run}}``."""
    from rag_plugins.milvus.items import StoreItem
    from rag_plugins.milvus.settings import AnnSettings, FieldIndexSettings, MilvusStoreSettings
    from rag_plugins.milvus.store import MultiVectorMilvusStore

    dim = vecs["full"].shape[1]
    hnsw = FieldIndexSettings("HNSW", "COSINE", build_params={"M": 16, "efConstruction": 200},
                              search_params={"ef": 256})
    base = {"uri": str(workdir / "scifact.db"), "collection_name": "scifact", "text_dim": dim, "image_dim": dim,
            "text_index": hnsw, "image_index": hnsw}
    writer = MultiVectorMilvusStore(settings=MilvusStoreSettings(**base))  # type: ignore[arg-type]
    items = [StoreItem(text=d, id=d, doc_id=d) for d in doc_ids]  # text: the id (vectors are given)
    for start in range(0, len(items), 1000):
        writer.upsert_vectors(items[start : start + 1000], list(vecs["full"][start : start + 1000]),
                              list(vecs["title"][start : start + 1000]))
    writer.client.flush("scifact")
    variants = {
        "store: in-process exact": writer,
        "store: in-process IVF": MultiVectorMilvusStore(settings=MilvusStoreSettings(  # type: ignore[arg-type]
            **base, local_search=True, local_ann=AnnSettings(threshold=1000)), client=writer.client),
        "store: Milvus Lite HNSW": MultiVectorMilvusStore(settings=MilvusStoreSettings(  # type: ignore[arg-type]
            **base, local_search=False), client=writer.client),
    }
    from rag_plugins.milvus.local_index import forget_mirror

    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for name, store in variants.items():
        if name == "store: in-process IVF":  # its own copy (the writer's is exact), from the side files or Milvus
            forget_mirror(store._local_key())
            store._open_local()
        runs: dict[str, dict[str, dict[str, float]]] = {"full": {}, "title": {}, "rrf k=60": {}}
        t = time.perf_counter()
        for qid, q in zip(qids, vecs["query"], strict=True):
            for field, label in (("text_vec", "full"), ("image_vec", "title")):
                hits = store.search_field(field, q, top_k=101)
                runs[label][qid] = {h.id: h.score for h in hits if h.id != qid}
            fused = store.search(q, q, fusion=Fusion("rrf", rrf_k=60), top_k=101, text_limit=candidates + 1,
                                 image_limit=candidates + 1)
            runs["rrf k=60"][qid] = {h.id: h.score for h in fused if h.id != qid}
        print(f"{name}: {len(qids)} queries x 3 searches in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        out[name] = runs
    writer.close()
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="BEIR SciFact folder (read in place)")
    p.add_argument("--base-url", default="", help="a running embed server (else rag-serve is started)")
    p.add_argument("--model", default="minilm", help="model for the started server (minilm = all-MiniLM-L6-v2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--candidates", type=int, default=100, help="per-field candidates before fusion")
    p.add_argument("--rrf-ks", default="1,5,10,20,40,60,100")
    p.add_argument("--alphas", default="0,0.2,0.4,0.5,0.6,0.7,0.8,0.9,1")
    p.add_argument("--no-store", action="store_true", help="skip the MultiVectorMilvusStore runs")
    p.add_argument("--out", default=str(RESULTS_DIR / "fusion_scifact"))
    args = p.parse_args(argv)
    if args.data.resolve().is_relative_to(REPO_ROOT):
        p.error("read the BEIR folder where it lives; never copy it into the repository")
    corpus, queries, qrels = load_beir(args.data, "test")
    titles = load_titles(args.data)
    doc_ids, qids = list(corpus), list(queries)
    vecs = embeddings(args, [corpus[d] for d in doc_ids], [titles[d] for d in doc_ids], [queries[q] for q in qids])
    per_field = {name: exact_search(vecs["query"], vecs[name], qids, doc_ids, top_k=max(args.candidates, 100))
                 for name in ("full", "title")}
    rows: list[dict[str, Any]] = [{"method": f"{name} alone (exact)", **metrics(qrels, run)}
                                  for name, run in per_field.items()]
    cands = {f: {q: dict(best_first(r[q])[: args.candidates]) for q in qids} for f, r in per_field.items()}
    for k in (int(x) for x in args.rrf_ks.split(",")):
        rows.append({"method": f"RRF k={k}", **metrics(qrels, fused_run(cands, Fusion("rrf", rrf_k=k), qids, 100))})
    for a in (float(x) for x in args.alphas.split(",")):
        fusion = Fusion("weighted", weights=(a, 1 - a))
        rows.append({"method": f"weighted α={a:g} (full) / {1 - a:g} (title)",
                     **metrics(qrels, fused_run({"text_vec": cands["full"], "image_vec": cands["title"]}, fusion,
                                                qids, 100))})
    if not args.no_store:
        with tempfile.TemporaryDirectory(prefix="fusion-scifact-") as tmp:
            for variant, runs in store_runs(vecs, doc_ids, qids, Path(tmp), args.candidates).items():
                for label, run in runs.items():
                    rows.append({"method": f"{variant}, {label}", **metrics(qrels, run)})
    table = ["| method | nDCG@10 | Recall@100 |", "|---|---|---|"]
    table += [f"| {r['method']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} |" for r in rows]
    print("\n".join(table))
    report = {"config": {k: str(v) for k, v in vars(args).items() if k not in ("out",)},
              "documents": len(doc_ids), "queries": len(qids), "dim": int(vecs["full"].shape[1]),
              "env": {"python": platform.python_version()}, "results": rows}
    if args.out:
        out = Path(args.out)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        cmd = "python -m bench.fusion_scifact " + " ".join(sys.argv[1:] if argv is None else argv)
        out.with_suffix(".md").write_text("\n".join([
            "# SciFact: title and full-text vectors as two fields, fused", "",
            f"`{cmd}` — all-MiniLM-L6-v2 (rag-serve, CPU), {len(doc_ids):,} documents, {len(qids)} test queries, "
            f"{args.candidates} candidates per field before fusion; BEIR/MTEB metrics (identical ids dropped). "
            "No rerank stage (no real reranker weights offline).", "", *table, ""]))
    return report


if __name__ == "__main__":
    main()
