"""MilvusFieldVectorStore (LlamaIndex vector store over one field) on real Milvus Lite, hand-made vectors.

One ``MultiVectorMilvusStore`` with two adapters: ``text_vec`` for text nodes and ``image_vec`` for image
nodes. Vectors are chosen by the test (random, not normalized) and every ranking and score is checked against
cosine similarity computed with numpy (FLAT index = exact search).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.schema import ImageNode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    ExactMatchFilter,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from rag_plugins.milvus.errors import DimensionMismatchError
from rag_plugins.milvus.llamaindex_store import MilvusFieldVectorStore
from rag_plugins.milvus.store import MultiVectorMilvusStore
from tests.unit.rag_plugins.milvus.conftest import make_settings

TEXT_DIM = 8
IMAGE_DIM = 6
N_TEXT = 6
N_IMAGE = 5


@dataclass
class Adapters:
    store: MultiVectorMilvusStore
    text: MilvusFieldVectorStore
    image: MilvusFieldVectorStore
    text_vecs: dict[str, np.ndarray]
    image_vecs: dict[str, np.ndarray]
    image_paths: dict[str, str]


def cosine_ranking(vectors: dict[str, np.ndarray], query: np.ndarray) -> list[tuple[str, float]]:
    """(id, cosine similarity) best first, ties by id."""
    scored = [(k, float(v @ query / (np.linalg.norm(v) * np.linalg.norm(query)))) for k, v in vectors.items()]
    return sorted(scored, key=lambda s: (-s[1], s[0]))


def source(doc_id: str) -> dict[NodeRelationship, RelatedNodeInfo]:
    return {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc_id)}


@pytest.fixture
def adapters(tmp_path: Path) -> Iterator[Adapters]:
    rng = np.random.default_rng(42)
    store = MultiVectorMilvusStore(settings=make_settings(tmp_path, text_dim=TEXT_DIM, image_dim=IMAGE_DIM))
    text_store = MilvusFieldVectorStore(store, "text_vec")
    image_store = MilvusFieldVectorStore(store, "image_vec")
    text_vecs = {f"t{i}": rng.normal(size=TEXT_DIM).astype(np.float32) * (1 + i) for i in range(N_TEXT)}
    image_vecs = {f"i{i}": rng.normal(size=IMAGE_DIM).astype(np.float32) * (1 + i) for i in range(N_IMAGE)}
    image_paths = {k: str(tmp_path / f"{k}.png") for k in image_vecs}
    text_nodes = [
        TextNode(id_=k, text=f"text chunk {k}", embedding=v.tolist(), relationships=source(f"doc{i % 2}"),
                 metadata={"lang": "en" if i < 3 else "de", "rank": i})
        for i, (k, v) in enumerate(text_vecs.items())
    ]
    image_nodes = [
        ImageNode(id_=k, image_path=image_paths[k], embedding=v.tolist(), relationships=source(f"doc{i % 2}"),
                  metadata={"lang": "en" if i < 2 else "de", "rank": i})
        for i, (k, v) in enumerate(image_vecs.items())
    ]
    assert text_store.add(text_nodes) == list(text_vecs)
    assert image_store.add(image_nodes) == list(image_vecs)
    yield Adapters(store, text_store, image_store, text_vecs, image_vecs, image_paths)
    store.close()


def query(embedding: np.ndarray, top_k: int = 100, **kw: object) -> VectorStoreQuery:
    return VectorStoreQuery(query_embedding=embedding.tolist(), similarity_top_k=top_k, **kw)  # type: ignore[arg-type]


def test_one_collection_two_fields(adapters: Adapters) -> None:
    store = adapters.store
    assert store.count() == N_TEXT + N_IMAGE
    assert store.count("has_text_vec == true") == N_TEXT
    assert store.count("has_image_vec == true") == N_IMAGE
    assert store.count("has_text_vec == true and has_image_vec == true") == 0
    assert adapters.text.client is store.client
    assert adapters.text.stores_text
    assert adapters.text.is_embedding_query
    assert not adapters.text.flat_metadata


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_text_query_ranks_by_cosine_and_returns_text_nodes_only(adapters: Adapters, seed: int) -> None:
    q = np.random.default_rng(seed).normal(size=TEXT_DIM).astype(np.float32)
    expected = cosine_ranking(adapters.text_vecs, q)
    result = adapters.text.query(query(q))  # top_k 100 > rows: every text row, no image row
    assert result.ids == [k for k, _ in expected]
    np.testing.assert_allclose(result.similarities, [s for _, s in expected], atol=1e-4)
    assert [n.node_id for n in result.nodes] == result.ids
    assert all(type(n) is TextNode for n in result.nodes)
    assert result.nodes[0].text == f"text chunk {expected[0][0]}"
    assert adapters.text.query(query(q, top_k=2)).ids == [k for k, _ in expected[:2]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_query_ranks_by_cosine_and_returns_image_nodes(adapters: Adapters, seed: int) -> None:
    q = np.random.default_rng(100 + seed).normal(size=IMAGE_DIM).astype(np.float32)
    expected = cosine_ranking(adapters.image_vecs, q)
    result = adapters.image.query(query(q))
    assert result.ids == [k for k, _ in expected]
    np.testing.assert_allclose(result.similarities, [s for _, s in expected], atol=1e-4)
    assert all(isinstance(n, ImageNode) for n in result.nodes)
    assert [n.image_path for n in result.nodes] == [adapters.image_paths[k] for k in result.ids]


def test_nearest_vector_comes_first(adapters: Adapters) -> None:
    rng = np.random.default_rng(9)
    for key, vec in adapters.text_vecs.items():
        near = vec + rng.normal(scale=0.01 * float(np.linalg.norm(vec)), size=TEXT_DIM).astype(np.float32)
        result = adapters.text.query(query(near, top_k=1))
        assert result.ids == [key]
        assert result.similarities[0] == pytest.approx(cosine_ranking({key: vec}, near)[0][1], abs=1e-4)
    for key, vec in adapters.image_vecs.items():
        assert adapters.image.query(query(vec, top_k=1)).ids == [key]
        assert adapters.image.query(query(vec, top_k=1)).similarities[0] == pytest.approx(1.0, abs=1e-4)


def test_metadata_filters(adapters: Adapters) -> None:
    q = np.ones(TEXT_DIM, np.float32)

    def ids(filters: MetadataFilters, store: MilvusFieldVectorStore | None = None) -> set[str]:
        store = store or adapters.text
        return set(store.query(query(q if store is adapters.text else np.ones(IMAGE_DIM), filters=filters)).ids)

    assert ids(MetadataFilters(filters=[ExactMatchFilter(key="doc_id", value="doc1")])) == {"t1", "t3", "t5"}
    assert ids(MetadataFilters(filters=[MetadataFilter(key="doc_id", value=["doc0"], operator=FilterOperator.IN)])
               ) == {"t0", "t2", "t4"}
    assert ids(MetadataFilters(filters=[MetadataFilter(key="lang", value="de")])) == {"t3", "t4", "t5"}
    # A JSON key with IN (Milvus refuses `meta["k"] in [...]`; the adapter or-s equalities instead).
    assert ids(MetadataFilters(filters=[MetadataFilter(key="rank", value=[0, 4, 99], operator=FilterOperator.IN)])
               ) == {"t0", "t4"}
    both = MetadataFilters(filters=[ExactMatchFilter(key="doc_id", value="doc1"), ExactMatchFilter(key="lang", value="de")])
    assert ids(both) == {"t3", "t5"}
    nested = MetadataFilters(filters=[ExactMatchFilter(key="lang", value="en"),
                                      MetadataFilters(filters=[ExactMatchFilter(key="doc_id", value="doc0")])])
    assert ids(nested) == {"t0", "t2"}
    assert ids(MetadataFilters(filters=[ExactMatchFilter(key="lang", value="en")]), adapters.image) == {"i0", "i1"}
    assert ids(MetadataFilters(filters=[ExactMatchFilter(key="modality", value="image")]), adapters.image
               ) == set(adapters.image_vecs)
    assert ids(MetadataFilters(filters=[ExactMatchFilter(key="modality", value="image")])) == set()


def test_unsupported_filters_raise(adapters: Adapters) -> None:
    q = np.ones(TEXT_DIM, np.float32)
    with pytest.raises(NotImplementedError, match="'>'"):
        adapters.text.query(query(q, filters=MetadataFilters(
            filters=[MetadataFilter(key="rank", value=2, operator=FilterOperator.GT)])))
    with pytest.raises(NotImplementedError, match="AND"):
        adapters.text.query(query(q, filters=MetadataFilters(
            filters=[ExactMatchFilter(key="lang", value="en"), ExactMatchFilter(key="rank", value=4)],
            condition=FilterCondition.OR)))
    with pytest.raises(NotImplementedError, match="default"):
        adapters.text.query(query(q, mode=VectorStoreQueryMode.MMR))
    with pytest.raises(ValueError, match="query_embedding"):
        adapters.text.query(VectorStoreQuery(similarity_top_k=3))


def test_node_ids_and_doc_ids(adapters: Adapters) -> None:
    q = np.ones(TEXT_DIM, np.float32)
    expected = [k for k, _ in cosine_ranking({k: adapters.text_vecs[k] for k in ("t1", "t4")}, q)]
    assert adapters.text.query(query(q, node_ids=["t1", "t4", "i0"])).ids == expected
    assert set(adapters.text.query(query(q, doc_ids=["doc1"])).ids) == {"t1", "t3", "t5"}
    assert adapters.text.query(query(q, doc_ids=["doc1"], node_ids=["t1", "t2"])).ids == ["t1"]
    # VectorStoreIndex passes node_ids=[] for stores that keep text: no restriction.
    assert len(adapters.text.query(query(q, node_ids=[])).ids) == N_TEXT


def test_delete_ref_doc(adapters: Adapters) -> None:
    adapters.text.delete("doc1")
    q_text, q_image = np.ones(TEXT_DIM, np.float32), np.ones(IMAGE_DIM, np.float32)
    assert set(adapters.text.query(query(q_text)).ids) == {"t0", "t2", "t4"}
    assert adapters.store.count() == N_TEXT + N_IMAGE - 3
    # The image store's rows of doc1 are its own: they stay until it deletes them.
    assert set(adapters.image.query(query(q_image)).ids) == set(adapters.image_vecs)
    adapters.image.delete("doc1")
    assert set(adapters.image.query(query(q_image)).ids) == {"i0", "i2", "i4"}
    assert adapters.store.count({"doc_id": "doc1"}) == 0


def test_delete_nodes_get_nodes_and_clear(adapters: Adapters) -> None:
    got = adapters.image.get_nodes(["i2", "t0"])  # t0 is not an image-store node
    assert [n.node_id for n in got] == ["i2"]
    assert isinstance(got[0], ImageNode)
    assert got[0].image_path == adapters.image_paths["i2"]
    assert {n.node_id for n in adapters.text.get_nodes(filters=MetadataFilters(
        filters=[ExactMatchFilter(key="lang", value="de")]))} == {"t3", "t4", "t5"}
    adapters.text.delete_nodes(["t0", "i0"])  # i0 belongs to the image store: kept
    assert [r["id"] for r in adapters.store.get(["t0", "i0"])] == ["i0"]
    adapters.text.delete_nodes(filters=MetadataFilters(filters=[ExactMatchFilter(key="lang", value="de")]))
    assert {n.node_id for n in adapters.text.get_nodes()} == {"t1", "t2"}
    with pytest.raises(ValueError, match="node_ids"):
        adapters.text.delete_nodes()
    adapters.image.clear()
    assert adapters.store.count() == 2
    assert adapters.image.query(query(np.ones(IMAGE_DIM))).ids == []


def test_node_without_embedding_raises_and_writes_nothing(adapters: Adapters) -> None:
    ok = TextNode(id_="new", text="fine", embedding=[1.0] * TEXT_DIM)
    with pytest.raises(ValueError, match="'bad' has no embedding"):
        adapters.text.add([ok, TextNode(id_="bad", text="no vector")])
    assert adapters.store.get(["new", "bad"]) == []
    with pytest.raises(DimensionMismatchError, match="text_vec"):
        adapters.text.add([TextNode(id_="short", text="x", embedding=[1.0] * IMAGE_DIM)])
    assert adapters.text.add([]) == []


def test_node_in_both_stores_keeps_both_vectors(adapters: Adapters) -> None:
    # MultiModalVectorStoreIndex adds an ImageNode that has text to the text store too, same id.
    tv = np.linspace(1, 2, TEXT_DIM).astype(np.float32)
    iv = np.linspace(-1, 1, IMAGE_DIM).astype(np.float32)
    path = "/figures/plot.png"
    adapters.text.add([ImageNode(id_="fig", text="a plot", image_path=path, embedding=tv.tolist())])
    adapters.image.add([ImageNode(id_="fig", text="a plot", image_path=path, embedding=iv.tolist())])
    row = adapters.store.get(["fig"], output_fields=["id", "text_vec", "image_vec", "has_text_vec", "has_image_vec"])[0]
    assert row["has_text_vec"]
    assert row["has_image_vec"]
    np.testing.assert_allclose(row["text_vec"], tv, rtol=1e-6)
    np.testing.assert_allclose(row["image_vec"], iv, rtol=1e-6)
    text_hit = adapters.text.query(query(tv, top_k=1))
    image_hit = adapters.image.query(query(iv, top_k=1))
    assert text_hit.ids == image_hit.ids == ["fig"]
    assert isinstance(text_hit.nodes[0], ImageNode)
    assert text_hit.nodes[0].image_path == path
    # Re-adding through the text store (new vector) still keeps the image vector.
    adapters.text.add([ImageNode(id_="fig", text="a plot", image_path=path, embedding=(-tv).tolist())])
    row = adapters.store.get(["fig"], output_fields=["id", "text_vec", "image_vec", "has_image_vec"])[0]
    np.testing.assert_allclose(row["text_vec"], -tv, rtol=1e-6)
    np.testing.assert_allclose(row["image_vec"], iv, rtol=1e-6)


def test_storage_context_and_field_validation(adapters: Adapters) -> None:
    storage = MilvusFieldVectorStore.storage_context(adapters.store)
    text_store, image_store = storage.vector_stores["default"], storage.vector_stores["image"]
    assert (text_store.field, image_store.field) == ("text_vec", "image_vec")
    assert text_store.query(query(adapters.text_vecs["t2"], top_k=1)).ids == ["t2"]
    assert image_store.query(query(adapters.image_vecs["i3"], top_k=1)).ids == ["i3"]
    with pytest.raises(ValueError, match="text_vec"):
        MilvusFieldVectorStore(adapters.store, "caption")
    assert MilvusFieldVectorStore(adapters.store).field == "text_vec"
    assert MilvusFieldVectorStore.class_name() == "MilvusFieldVectorStore"
    assert text_store.to_dict()["field"] == "text_vec"
