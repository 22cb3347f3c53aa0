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

Rows 1-3 also get a rerank stage (``--rerank-depth``, 0 to skip): each list's top ``D`` reordered by a
``rag-serve rerank`` server, the rest kept below. No cross-encoder weights are bundled, so the reranker is
all-MiniLM-L6-v2 served as a cosine bi-encoder over the full text: it shows the stage running on real data,
and its order within the top ``D`` is the full-text field's own order. A rerank of the top ``D <= 100`` only
reorders, so Recall@100 cannot change.

    python -m bench.fusion_scifact --data ../shared/data/scifact            # starts rag-serve (MiniLM, CPU)
    python -m bench.fusion_scifact --data ../shared/data/scifact --base-url http://127.0.0.1:8001 \
        --rerank-url http://127.0.0.1:8002

The functions (:func:`load_subset`, :func:`fusion_rows`, :func:`markdown_table`, :func:`plot_rows`) also
drive ``notebooks/02_fusion_ablation.ipynb`` on a small subset read the same way.

The data is read in place (``--data`` inside the repository is refused) and nothing derived from it is kept
on disk: the corpus is embedded on every run. Writes metrics only, to ``~/.cache/rag-plugins/scifact-results/fusion_scifact.json`` (``--out``; outside the checkout)
and ``.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.beir_eval import _server, embed_all, evaluate, exact_search, load_beir, read_jsonl
from rag_plugins.milvus.fusion import Fusion

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where SciFact runs write their metrics by default: outside the checkout, like the data they come from
#: (the repository holds nothing derived from SciFact).
SCIFACT_RESULTS_DIR = Path.home() / ".cache" / "rag-plugins" / "scifact-results"
#: Where the data lives: beside the checkout, never inside it.
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "scifact"
FULL_COMMAND = "python -m bench.fusion_scifact --data ../shared/data/scifact --rerank-depth 10"
DEFAULT_RRF_KS = (1, 5, 10, 20, 40, 60, 100)
DEFAULT_ALPHAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_RERANK_DEPTH = 30
#: Length of every fused / reranked list (Recall@100 is the metric's cutoff).
RECALL_K = 100


def load_titles(folder: Path) -> dict[str, str]:
    """``{doc_id: title}`` (the text when the title is empty)."""
    out = {}
    for doc in read_jsonl(folder / "corpus.jsonl"):
        title = str(doc.get("title") or "").strip()
        out[str(doc["_id"])] = title or str(doc.get("text") or "")
    return out


@dataclass
class SciFactData:
    """A BEIR split in memory (never written anywhere).

    Attributes:
        corpus: ``{doc_id: (title + " " + text).strip()}``.
        titles: ``{doc_id: title}`` (the text when a document has none).
        queries: ``{qid: text}`` of the judged queries.
        qrels: ``{qid: {doc_id: relevance}}``.
    """

    corpus: dict[str, str]
    titles: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def data_folder() -> Path:
    """SciFact's folder: ``$RAG_SCIFACT_DIR`` when set, else ``../shared/data/scifact`` beside the checkout."""
    return Path(os.environ.get("RAG_SCIFACT_DIR") or DEFAULT_DATA)


def check_outside_repo(folder: Path) -> Path:
    """``folder`` resolved; refused when it lies inside the repository (the data is read in place only)."""
    resolved = folder.resolve()
    if resolved.is_relative_to(REPO_ROOT):
        raise ValueError("read the BEIR folder where it lives; never copy it into the repository")
    return resolved


def load_scifact(folder: Path, split: str = "test") -> SciFactData:
    """The whole split of a BEIR folder (read in place)."""
    corpus, queries, qrels = load_beir(check_outside_repo(folder), split)
    return SciFactData(corpus, load_titles(folder), queries, qrels)


def load_subset(folder: Path, queries: int = 50, documents: int = 300, seed: int = 0) -> SciFactData:
    """A small, fixed slice for quick runs: the first ``queries`` judged queries, every document they judge,
    and seeded random other documents up to ``documents`` (so the numbers are easier than the full run's and
    only comparable between subset runs)."""
    data = load_scifact(folder)
    qids = list(data.queries)[:queries]
    relevant = sorted({d for q in qids for d in data.qrels[q] if d in data.corpus})
    others = sorted(set(data.corpus) - set(relevant))
    rng = np.random.default_rng(seed)
    extra = max(0, documents - len(relevant))
    picked = [others[i] for i in sorted(rng.choice(len(others), size=min(extra, len(others)), replace=False))]
    doc_ids = [d for d in data.corpus if d in set(relevant) | set(picked)]
    return SciFactData({d: data.corpus[d] for d in doc_ids}, {d: data.titles[d] for d in doc_ids},
                       {q: data.queries[q] for q in qids}, {q: data.qrels[q] for q in qids})


def embed_fields(base_url: str, data: SciFactData, batch_size: int = 64) -> dict[str, np.ndarray]:
    """``{"full", "title", "query"}`` → (n, dim) float32, in ``data``'s order, through a running embed server.

    Synchronous (no event loop of its own), so it also runs inside a notebook kernel.
    """
    from rag_plugins.embedding_client import EmbeddingClient

    client = EmbeddingClient(base_url=base_url, batch_size=batch_size)
    return {
        "full": client.embed(list(data.corpus.values()), "document"),
        "title": client.embed(list(data.titles.values()), "document"),
        "query": client.embed(list(data.queries.values()), "query"),
    }


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


def rerank_scores(rerank_url: str, data: SciFactData, runs: Sequence[dict[str, dict[str, float]]],
                  depth: int) -> dict[str, dict[str, float]]:
    """``{qid: {doc: rerank score}}`` for every document in the top ``depth`` of any of ``runs``.

    A rerank score depends on the (query, document) pair only, so each query is sent once with the union of
    its candidates over all runs (one request per query instead of one per run).
    """
    from rag_plugins.rerank_client import RerankClient

    client = RerankClient(base_url=rerank_url)
    out: dict[str, dict[str, float]] = {}
    for qid, query in data.queries.items():
        docs = sorted({d for run in runs for d, _ in best_first(run.get(qid, {}))[:depth]})
        hits = client.rerank(query, [data.corpus[d] for d in docs]) if docs else []
        out[qid] = {docs[h.index]: float(h.score) for h in hits}
    return out


def reranked_run(run: dict[str, dict[str, float]], scores: dict[str, dict[str, float]],
                 depth: int) -> dict[str, dict[str, float]]:
    """``run`` with each list's top ``depth`` reordered by ``scores`` and the rest kept below, in order.

    Scores become descending ranks so the evaluation's sort reproduces the order exactly.
    """
    out = {}
    for qid, hits in run.items():
        ranked = [d for d, _ in best_first(hits)]
        head = sorted(ranked[:depth], key=lambda d: -scores[qid][d])
        order = head + ranked[depth:]
        out[qid] = {d: float(len(order) - i) for i, d in enumerate(order)}
    return out


def fusion_rows(data: SciFactData, vecs: dict[str, np.ndarray], *, candidates: int = 100,
                rrf_ks: Sequence[int] = DEFAULT_RRF_KS, alphas: Sequence[float] = DEFAULT_ALPHAS,
                rerank_url: str | None = None, rerank_depth: int = DEFAULT_RERANK_DEPTH) -> list[dict[str, Any]]:
    """nDCG@10 / Recall@100 of each field alone, RRF per ``k`` and weighted fusion per ``α``.

    Args:
        data: The queries, documents and judgements (``vecs`` rows follow its order).
        vecs: :func:`embed_fields` output.
        candidates: Per-field candidates before fusion.
        rrf_ks: RRF ``k`` values.
        alphas: Weights of the full-text field (the title field gets ``1 - α``).
        rerank_url: A ``rag-serve rerank`` server; None skips the rerank stage.
        rerank_depth: Top entries of each list the reranker reorders.

    Returns:
        ``[{"method", "kind", "param", "ndcg@10", "recall@100"[, "ndcg@10 reranked", "recall@100 reranked"]}]``
        (``kind``: ``field`` / ``rrf`` / ``weighted``; ``param``: the field name, ``k`` or ``α``).
    """
    doc_ids, qids = list(data.corpus), list(data.queries)
    per_field = {name: exact_search(vecs["query"], vecs[name], qids, doc_ids, top_k=max(candidates, RECALL_K))
                 for name in ("full", "title")}
    cands = {f: {q: dict(best_first(r[q])[:candidates]) for q in qids} for f, r in per_field.items()}
    entries: list[tuple[dict[str, Any], dict[str, dict[str, float]]]] = [
        ({"method": f"{name} alone (exact)", "kind": "field", "param": name}, run) for name, run in per_field.items()
    ]
    for k in rrf_ks:
        entries.append(({"method": f"RRF k={k}", "kind": "rrf", "param": k},
                        fused_run(cands, Fusion("rrf", rrf_k=k), qids, RECALL_K)))
    for a in alphas:
        fusion = Fusion("weighted", weights=(a, 1 - a))
        entries.append(({"method": f"weighted α={a:g} (full) / {1 - a:g} (title)", "kind": "weighted", "param": a},
                        fused_run({"text_vec": cands["full"], "image_vec": cands["title"]}, fusion, qids, RECALL_K)))
    scores = (rerank_scores(rerank_url, data, [run for _, run in entries], rerank_depth)
              if rerank_url and rerank_depth > 0 else None)
    rows = []
    for row, run in entries:
        row.update(metrics(data.qrels, run))
        if scores is not None:
            again = metrics(data.qrels, reranked_run(run, scores, rerank_depth))
            row.update({f"{m} reranked": v for m, v in again.items()})
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.4f}" if key in row else "–"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (reranked columns when any row has them; ``–`` where a row has none)."""
    rerank = any("ndcg@10 reranked" in r for r in rows)
    head = ["method", "nDCG@10", "Recall@100", *(["nDCG@10 + rerank", "Recall@100 + rerank"] if rerank else [])]
    keys = ["ndcg@10", "recall@100", *(["ndcg@10 reranked", "recall@100 reranked"] if rerank else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(r["method"]), *(_cell(r, k) for k in keys)]) + " |" for r in rows]
    return "\n".join(lines)


def _kind(row: dict[str, Any]) -> tuple[str, Any]:
    """``(kind, param)`` of a row (rows of results recorded before these keys existed: from ``method``)."""
    if "kind" in row:
        return str(row["kind"]), row["param"]
    method = str(row["method"])
    if method.startswith("RRF k="):
        return "rrf", int(method.split("=")[1])
    if method.startswith("weighted α="):
        return "weighted", float(method.split("=")[1].split()[0])
    if method.endswith("alone (exact)"):
        return "field", method.split()[0]
    return "other", method


def plot_rows(rows: Sequence[dict[str, Any]], title: str = "") -> Any:
    """nDCG@10 and Recall@100 against RRF ``k`` and weighted ``α`` (dashed: + rerank), fields alone as lines.

    Returns:
        The matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharey="row")
    kinds = [(_kind(r), r) for r in rows]
    for col, (kind, xlabel) in enumerate((("rrf", "RRF k"), ("weighted", "α (full-text weight)"))):
        points = sorted((p, r) for (k, p), r in kinds if k == kind)
        for row_i, metric in enumerate(("ndcg@10", "recall@100")):
            ax = axes[row_i][col]
            if points:
                xs = [p for p, _ in points]
                ax.plot(xs, [r[metric] for _, r in points], "o-", label=kind)
                if all(f"{metric} reranked" in r for _, r in points):
                    ax.plot(xs, [r[f"{metric} reranked"] for _, r in points], "s--", label=f"{kind} + rerank")
                if kind == "rrf":
                    ax.set_xscale("log")
            fields = [(p, r) for (k, p), r in kinds if k == "field"]
            for style, (name, r) in zip(("-", ":"), fields, strict=False):
                ax.axhline(r[metric], color="grey", linestyle=style, label=f"{name} alone")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(metric.replace("ndcg", "nDCG").replace("recall", "Recall"))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


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
    p.add_argument("--rrf-ks", default=",".join(str(k) for k in DEFAULT_RRF_KS))
    p.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS))
    p.add_argument("--rerank-url", default="", help="a running rerank server (else MiniLM rag-serve rerank is "
                                                    "started)")
    p.add_argument("--rerank-depth", type=int, default=DEFAULT_RERANK_DEPTH,
                   help="top entries of each list reranked (0: no rerank stage)")
    p.add_argument("--no-store", action="store_true", help="skip the MultiVectorMilvusStore runs")
    p.add_argument("--out", default=str(SCIFACT_RESULTS_DIR / "fusion_scifact"),
                   help="output stem (.json and .md); default outside the checkout, which holds nothing SciFact")
    args = p.parse_args(argv)
    try:
        data = load_scifact(args.data)
    except ValueError as exc:
        p.error(str(exc))
    doc_ids, qids = list(data.corpus), list(data.queries)
    vecs = embeddings(args, [data.corpus[d] for d in doc_ids], [data.titles[d] for d in doc_ids],
                      [data.queries[q] for q in qids])
    options: dict[str, Any] = {"candidates": args.candidates, "rrf_ks": [int(x) for x in args.rrf_ks.split(",")],
                               "alphas": [float(x) for x in args.alphas.split(",")], "rerank_depth": args.rerank_depth}
    t = time.perf_counter()
    if args.rerank_depth <= 0:
        rows = fusion_rows(data, vecs, **options)
    elif args.rerank_url:
        rows = fusion_rows(data, vecs, rerank_url=args.rerank_url.rstrip("/"), **options)
    else:
        from bench.beir_eval import _model_dir
        from bench.server_process import rag_serve

        log = Path("/tmp") / "fusion-scifact-rag-serve-rerank.log"
        with rag_serve("rerank", _model_dir(args.model), device=args.device, log_path=log) as rerank_url:
            rows = fusion_rows(data, vecs, rerank_url=rerank_url, **options)
    print(f"fusion rows (rerank depth {args.rerank_depth}): {time.perf_counter() - t:.1f}s", file=sys.stderr)
    if not args.no_store:
        with tempfile.TemporaryDirectory(prefix="fusion-scifact-") as tmp:
            for variant, runs in store_runs(vecs, doc_ids, qids, Path(tmp), args.candidates).items():
                for label, run in runs.items():
                    rows.append({"method": f"{variant}, {label}", "kind": "store", "param": label,
                                 **metrics(data.qrels, run)})
    table = markdown_table(rows)
    print(table)
    report = {"config": {k: str(v) for k, v in vars(args).items() if k not in ("out",)},
              "documents": len(doc_ids), "queries": len(qids), "dim": int(vecs["full"].shape[1]),
              "env": {"python": platform.python_version()}, "results": rows}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        cmd = "python -m bench.fusion_scifact " + " ".join(sys.argv[1:] if argv is None else argv)
        rerank = (f"Rerank stage: the top {args.rerank_depth} of each list reordered by all-MiniLM-L6-v2 served "
                  "by `rag-serve rerank` (a cosine bi-encoder over the full text: no cross-encoder weights are "
                  "bundled), the rest kept below; a reorder of the top 100 or fewer cannot change Recall@100."
                  if args.rerank_depth > 0 else "No rerank stage.")
        out.with_suffix(".md").write_text("\n".join([
            "# SciFact: title and full-text vectors as two fields, fused", "",
            f"`{cmd}` — all-MiniLM-L6-v2 (rag-serve, CPU), {len(doc_ids):,} documents, {len(qids)} test queries, "
            f"{args.candidates} candidates per field before fusion; BEIR/MTEB metrics (identical ids dropped). "
            + rerank, "", table, ""]))
    return report


if __name__ == "__main__":
    main()
