"""MultiModalEmbeddingClient and LocalMultiModalEmbedding against a real ``rag-serve mm-embed``."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
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


def test_llamaindex_multimodal_index_over_milvus_lite(mm_server: str, minilm_server: str, tmp_path: Path) -> None:
    """The acceptance line: MultiModalVectorStoreIndex over one Milvus Lite collection (text_vec + image_vec)."""
    from llama_index.core import StorageContext
    from llama_index.core.indices import MultiModalVectorStoreIndex
    from llama_index.core.schema import ImageNode, TextNode

    from rag_plugins import LocalEmbedding
    from rag_plugins.milvus import MilvusFieldVectorStore, MilvusStoreSettings, MultiVectorMilvusStore
    from rag_plugins.multimodal import LocalMultiModalEmbedding

    mm = LocalMultiModalEmbedding(base_url=mm_server)
    text_model = LocalEmbedding(base_url=minilm_server)
    store = MultiVectorMilvusStore(settings=MilvusStoreSettings(
        uri=str(tmp_path / "mm.db"), text_dim=text_model.client.info()["dim"], image_dim=mm.client.info()["dim"]))
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(png_bytes((40 + 20 * i, 50), seed=20 + i))
        paths.append(p)
    # No text on the image nodes, so they go to the image store only; VectorStoreIndex drops nodes whose
    # embed content (text + metadata) is empty, hence the file name (as SimpleDirectoryReader sets it).
    images = [ImageNode(image_path=str(p), id_=f"img{i}", metadata={"file_name": p.name})
              for i, p in enumerate(paths)]
    texts = ["Mars is the red planet, the fourth from the Sun.",
             "Python is a programming language with dynamic typing."]
    text_nodes = [TextNode(text=t, id_=f"t{i}") for i, t in enumerate(texts)]
    storage = StorageContext.from_defaults(vector_store=MilvusFieldVectorStore(store, "text_vec"),
                                           image_store=MilvusFieldVectorStore(store, "image_vec"))
    index = MultiModalVectorStoreIndex([*images, *text_nodes], storage_context=storage, embed_model=text_model,
                                       image_embed_model=mm)
    assert store.count() == 5
    assert store.count("has_image_vec == true") == 3
    assert store.count("has_text_vec == true") == 2
    assert store.count("has_text_vec == true and has_image_vec == true") == 0
    retriever = index.as_retriever(similarity_top_k=2, image_similarity_top_k=3)

    # image -> image: the query image is img1 itself.
    hits = retriever.image_to_image_retrieve(str(paths[1]))
    assert hits[0].node.node_id == "img1"
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert all(isinstance(h.node, ImageNode) for h in hits)
    # text -> image: exactly the indexed images, ranked and scored by cosine in the image space.
    text_hits = retriever.text_to_image_retrieve("a picture")
    assert sorted(h.node.node_id for h in text_hits) == ["img0", "img1", "img2"]
    query_vec = np.asarray(mm.get_query_embedding("a picture"))
    image_vecs = mm.client.embed_images(list(paths))
    cosines = image_vecs @ query_vec / (np.linalg.norm(image_vecs, axis=1) * np.linalg.norm(query_vec))
    assert text_hits[0].node.node_id == f"img{int(np.argmax(cosines))}"
    got = {h.node.node_id: h.score for h in text_hits}
    np.testing.assert_allclose([got[f"img{i}"] for i in range(3)], cosines, atol=1e-4)
    assert {h.node.image_path for h in text_hits} == {str(p) for p in paths}
    assert {h.node.metadata["file_name"] for h in text_hits} == {p.name for p in paths}
    # text -> text: TextNodes only, ranked by the text model.
    question = "Which planet is red?"
    text_results = retriever.text_retrieve(question)
    assert [type(h.node) for h in text_results] == [TextNode, TextNode]
    doc_vecs = text_model.client.embed(texts)
    q_vec = np.asarray(text_model.get_query_embedding(question))
    text_cosines = doc_vecs @ q_vec / (np.linalg.norm(doc_vecs, axis=1) * np.linalg.norm(q_vec))
    assert text_results[0].node.node_id == f"t{int(np.argmax(text_cosines))}"
    assert text_results[0].score == pytest.approx(float(np.max(text_cosines)), abs=1e-4)
    assert text_results[0].node.text == texts[int(np.argmax(text_cosines))]
    store.close()
