"""MultiModalEmbeddingClient and LocalMultiModalEmbedding against a real ``rag-serve mm-embed``."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from rag_plugins.multimodal_client import MultiModalEmbeddingClient
from tests.e2e.mm_fixtures import png_bytes


def test_client_image_kinds_agree(mm_server: str, tmp_path: Path) -> None:
    data = png_bytes((50, 70), seed=5)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    client = MultiModalEmbeddingClient(base_url=mm_server)
    b64 = base64.b64encode(data).decode()
    kinds = [path, str(path), data, io.BytesIO(data), Image.open(io.BytesIO(data)), b64,
             "data:image/png;base64," + b64]
    vectors = client.embed_images(kinds)
    assert vectors.shape == (len(kinds), 64)
    for row in vectors[1:]:
        np.testing.assert_allclose(row, vectors[0], atol=1e-5)
    fused = client.embed_images([data], texts=["caption"], input_type="query")
    assert not np.allclose(fused[0], vectors[0])
    texts = client.embed(["a", "b"], input_type="query")
    assert texts.shape == (2, 64)
    assert client.info()["kind"] == "mm-embed"


async def test_client_async_matches_sync(mm_server: str) -> None:
    client = MultiModalEmbeddingClient(base_url=mm_server, image_batch_size=1)
    images = [png_bytes((40, 40), seed=i) for i in range(3)]
    np.testing.assert_allclose(await client.aembed_images(images), client.embed_images(images), atol=1e-5)
    np.testing.assert_allclose(await client.aembed(["q"]), client.embed(["q"]), atol=1e-6)


def test_llamaindex_multimodal_index_retrieves_images(mm_server: str, tmp_path: Path) -> None:
    from llama_index.core.indices import MultiModalVectorStoreIndex
    from llama_index.core.schema import ImageNode, TextNode

    from rag_plugins.multimodal import LocalMultiModalEmbedding

    mm = LocalMultiModalEmbedding(base_url=mm_server)
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(png_bytes((40 + 20 * i, 50), seed=20 + i))
        paths.append(p)
    nodes = [ImageNode(image_path=str(p), text=f"image {i}", id_=f"img{i}") for i, p in enumerate(paths)]
    text = TextNode(text="a caption", id_="t0")
    index = MultiModalVectorStoreIndex([*nodes, text], embed_model=mm, image_embed_model=mm)
    retriever = index.as_retriever(similarity_top_k=1, image_similarity_top_k=3)
    # image -> image: the query image is img1 itself, so it must come first.
    hits = retriever.image_to_image_retrieve(str(paths[1]))
    assert hits[0].node.node_id == "img1"
    # text -> image: every indexed image comes back, scored by the text's vector in the image space.
    text_hits = retriever.text_to_image_retrieve("a picture")
    assert {h.node.node_id for h in text_hits} == {"img0", "img1", "img2"}
    query_vec = np.asarray(mm.get_query_embedding("a picture"))
    image_vecs = mm.client.embed_images(list(paths))
    best = int(np.argmax(image_vecs @ query_vec))
    assert text_hits[0].node.node_id == f"img{best}"
