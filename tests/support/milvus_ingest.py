"""Ingest N generated nodes into a Milvus Lite store (text from a real rag-serve): a process the e2e test kills.

``python -m tests.support.milvus_ingest --uri DB --base-url URL --n 200 --batch-size 10 --delay 0.3`` prints
``batch <i>`` (flushed) after each text-embedding call, then sleeps ``--delay`` so a test can SIGKILL it
half-way through. The image-space embedder is the ``HashImageSpaceEmbedder`` double (the multimodal server
is built separately).
"""

from __future__ import annotations

import argparse

import numpy as np

from rag_plugins.embedding_client import EmbeddingClient
from rag_plugins.milvus.items import StoreItem
from rag_plugins.milvus.settings import MilvusStoreSettings
from rag_plugins.milvus.store import MultiVectorMilvusStore
from tests.support.milvus_doubles import HashImageSpaceEmbedder

TOPICS = ["planets", "oceans", "volcanoes", "forests", "deserts", "glaciers", "rivers", "mountains"]


def generated_items(n: int) -> list[StoreItem]:
    """``n`` items over 10 documents; every 5th an image (with a caption) of a topic."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        doc = f"doc{i % 10}"
        if i % 5 == 0:
            out.append(StoreItem(image=f"/data/images/{topic}_{i}.png", caption=f"A photo about {topic}.",
                                 doc_id=doc, chunk_id=f"c{i}", page=i // 10))
        else:
            out.append(StoreItem(text=f"Passage {i}: facts about {topic} and their features.", doc_id=doc,
                                 chunk_id=f"c{i}", page=i // 10))
    return out


class PacedEmbedder:
    """Delegates to an ``EmbeddingClient``; reports each call and pauses, so the test can kill mid-run."""

    def __init__(self, client: EmbeddingClient, delay_s: float) -> None:
        self.client = client
        self.delay_s = delay_s
        self.calls = 0

    def embed(self, texts: list[str], input_type: str = "document") -> np.ndarray:
        return self.client.embed(texts, input_type)  # type: ignore[arg-type]

    async def aembed(self, texts: list[str], input_type: str = "document") -> np.ndarray:
        import asyncio

        out = await self.client.aembed(texts, input_type)  # type: ignore[arg-type]
        self.calls += 1
        print(f"batch {self.calls}", flush=True)
        await asyncio.sleep(self.delay_s)
        return out

    def info(self) -> dict:
        return self.client.info()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    store = MultiVectorMilvusStore(
        PacedEmbedder(EmbeddingClient(args.base_url), args.delay), HashImageSpaceEmbedder(32),  # type: ignore[arg-type]
        MilvusStoreSettings(uri=args.uri, collection_name="kb", batch_size=args.batch_size),
    )
    store.upsert(generated_items(args.n), show_progress=False)
    print(f"done {store.count()}", flush=True)
    store.close()


if __name__ == "__main__":
    main()
