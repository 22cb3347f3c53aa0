"""MultiVectorMilvusStore on real Milvus Lite (in process): schema, errors, idempotent ingestion, deletes.

Embedders are ``HashImageSpaceEmbedder`` doubles: deterministic stand-ins for the embedding servers (the
e2e tests use a real rag-serve for text); see ``tests/support/milvus_doubles.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rag_plugins.milvus.errors import CollectionNotFoundError, DimensionMismatchError
from rag_plugins.milvus.items import StoreItem
from rag_plugins.milvus.retriever import HybridRetriever
from rag_plugins.milvus.settings import FieldIndexSettings, MilvusStoreSettings
from rag_plugins.milvus.store import MultiVectorMilvusStore, null_vector
from tests.support.milvus_doubles import HashImageSpaceEmbedder
from tests.unit.rag_plugins.milvus.conftest import IMAGE_DIM, N_ROWS, TEXT_DIM, RandomStore, make_settings


def items(n: int, doc: str = "d") -> list[StoreItem]:
    out = []
    for i in range(n):
        if i % 4 == 0:  # an image with a caption
            out.append(StoreItem(image=f"/imgs/{doc}_figure_{i}.png", caption=f"figure {i}", doc_id=doc,
                                 chunk_id=f"img{i}", page=i))
        elif i % 4 == 1:  # an image without any text: no text_vec
            out.append(StoreItem(image=f"/imgs/{doc}_photo_{i}.png", doc_id=doc, chunk_id=f"img{i}"))
        else:
            out.append(StoreItem(text=f"chunk {i} of {doc}", doc_id=doc, chunk_id=str(i)))
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MultiVectorMilvusStore]:
    s = MultiVectorMilvusStore(HashImageSpaceEmbedder(24), HashImageSpaceEmbedder(16),  # type: ignore[arg-type]
                               make_settings(tmp_path, batch_size=7))
    yield s
    s.close()


def test_schema_and_dims_from_embedders(store: MultiVectorMilvusStore) -> None:
    described = store.client.describe_collection("t")
    fields = {f["name"]: f for f in described["fields"]}
    assert fields["text_vec"]["params"]["dim"] == 24
    assert fields["image_vec"]["params"]["dim"] == 16
    assert {"id", "doc_id", "chunk_id", "modality", "uri", "page", "caption", "text", "meta"} <= set(fields)
    assert store.client.describe_index("t", "text_vec")["index_type"] == "FLAT"


def test_upsert_twice_is_idempotent_and_vectors_are_right(store: MultiVectorMilvusStore) -> None:
    batch = items(30)
    keys = store.upsert(batch, show_progress=False)
    assert store.upsert(batch, show_progress=False) == keys
    assert store.count() == 30
    assert len(set(keys)) == 30
    rows = {r["id"]: r for r in store.get(keys, output_fields=["id", "text_vec", "image_vec", "has_text_vec",
                                                               "has_image_vec", "modality"])}
    text_double, image_double = store.text_embedder, store.image_embedder
    for item in batch:
        row = rows[item.key]
        if item.text_for_text_vec:
            assert row["has_text_vec"]
            np.testing.assert_allclose(row["text_vec"], text_double.embed([item.text_for_text_vec])[0], atol=1e-6)  # type: ignore[union-attr]
        else:  # image without caption: null stand-in, flagged
            assert not row["has_text_vec"]
            assert row["text_vec"] == null_vector(24)
        expected_image = (image_double.embed_images([item.image]) if item.image is not None  # type: ignore[union-attr]
                          else image_double.embed([item.text]))[0]  # type: ignore[union-attr]
        assert row["has_image_vec"]
        np.testing.assert_allclose(row["image_vec"], expected_image, atol=1e-6)
        assert row["modality"] == ("image" if item.image is not None else "text")


def test_text_and_image_embedding_run_concurrently(store: MultiVectorMilvusStore) -> None:
    """The store's three embedding calls (texts, images, image-less items' text in image space) overlap."""
    import asyncio

    in_flight = 0
    peak = 0

    async def overlapping_call() -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1

    class Slow(HashImageSpaceEmbedder):
        async def aembed(self, texts: list[str], input_type: str = "document") -> np.ndarray:
            await overlapping_call()
            return self.embed(texts, input_type)

        async def aembed_images(self, images: list, texts: list[str] | None = None,
                                input_type: str = "document") -> np.ndarray:
            await overlapping_call()
            return self.embed_images(images, texts, input_type)

    store.text_embedder, store.image_embedder = Slow(24), Slow(16)
    asyncio.run(store.aembed_items(items(8)))
    # Counting calls in flight, not timing them, holds on a loaded runner: in sequence the peak would be 1.
    assert peak == 3


def test_delete_doc_and_filters(store: MultiVectorMilvusStore) -> None:
    store.upsert(items(12, "a") + items(8, 'b"quoted'), show_progress=False)
    assert store.count() == 20
    assert store.count({"doc_id": 'b"quoted'}) == 8
    store.delete_doc('b"quoted')
    assert store.count() == 12
    assert {r["doc_id"] for r in store.query({"modality": "image"})} == {"a"}
    store.delete([items(12, "a")[2].key])
    assert store.count() == 11


def test_dict_filters_with_lists_work_on_scalar_and_meta_keys(store: MultiVectorMilvusStore) -> None:
    rows = [StoreItem(text=f"t{i}", doc_id=f"d{i % 3}", meta={"lang": ["en", "de", "fr"][i % 3]}) for i in range(9)]
    store.upsert(rows, show_progress=False)
    assert store.count({"doc_id": ["d0", "d1"]}) == 6
    # Milvus refuses `meta["lang"] in [...]`; the dict form still means "one of these values".
    assert store.count({'meta["lang"]': ["en", "fr"]}) == 6
    assert store.count({'meta["lang"]': ["de"], "doc_id": "d1"}) == 3


def test_content_keys_are_deterministic() -> None:
    a = StoreItem(text="same text", doc_id="d")
    assert a.key == StoreItem(text="same text", doc_id="d").key
    assert a.key != StoreItem(text="other text", doc_id="d").key
    assert a.key != StoreItem(text="same text", doc_id="e").key
    assert StoreItem(text="x", doc_id="d", chunk_id="3").key == StoreItem(text="changed", doc_id="d", chunk_id="3").key
    assert StoreItem(image=b"\x89PNG...").key == StoreItem(image=b"\x89PNG...").key
    assert StoreItem(text="t", id="my-id").key == "my-id"
    with pytest.raises(ValueError, match="needs a text, a caption or an image"):
        StoreItem()


def test_dimension_mismatch_on_existing_collection(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    MultiVectorMilvusStore(HashImageSpaceEmbedder(24), HashImageSpaceEmbedder(16), settings).close()  # type: ignore[arg-type]
    with pytest.raises(DimensionMismatchError, match=r"text_vec dim 24 but the text model gives dim 32.*collection_name.*drop"):
        MultiVectorMilvusStore(HashImageSpaceEmbedder(32), HashImageSpaceEmbedder(16), settings)  # type: ignore[arg-type]
    with pytest.raises(DimensionMismatchError, match=r"image_vec dim 16 but the image-space model gives dim 8"):
        MultiVectorMilvusStore(HashImageSpaceEmbedder(24), HashImageSpaceEmbedder(8), settings)  # type: ignore[arg-type]


def test_dimension_mismatch_settings_vs_embedder(tmp_path: Path) -> None:
    with pytest.raises(DimensionMismatchError, match="settings say dim 100 but the embedder serves dim 24"):
        MultiVectorMilvusStore(HashImageSpaceEmbedder(24), HashImageSpaceEmbedder(16),  # type: ignore[arg-type]
                               make_settings(tmp_path, text_dim=100))


def test_dimension_mismatch_when_server_changes_model(store: MultiVectorMilvusStore) -> None:
    store.text_embedder = HashImageSpaceEmbedder(48)  # type: ignore[assignment]
    with pytest.raises(DimensionMismatchError, match=r"text_vec: the embedder returned shape \(\d+, 48\), expected"):
        store.upsert(items(4), show_progress=False)


def test_missing_collection_is_a_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, collection_name="nope")
    with pytest.raises(CollectionNotFoundError, match=r"'nope' does not exist.*create=True.*upsert"):
        MultiVectorMilvusStore(HashImageSpaceEmbedder(24), HashImageSpaceEmbedder(16), settings, create=False)  # type: ignore[arg-type]
    store = MultiVectorMilvusStore(HashImageSpaceEmbedder(24), HashImageSpaceEmbedder(16), settings)  # type: ignore[arg-type]
    store.upsert(items(3), show_progress=False)
    retriever = HybridRetriever(store)
    assert retriever.retrieve("chunk 2")
    store.drop()
    with pytest.raises(CollectionNotFoundError, match="does not exist"):
        retriever.retrieve("chunk 2")


def test_reopen_takes_dims_from_collection(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = MultiVectorMilvusStore(HashImageSpaceEmbedder(24), HashImageSpaceEmbedder(16), settings)  # type: ignore[arg-type]
    first.upsert(items(5), show_progress=False)
    first.close()
    raw = MultiVectorMilvusStore(settings=settings, create=False)
    assert (raw.text_dim, raw.image_dim) == (24, 16)
    assert raw.count() == 5


def test_create_without_dims_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"text_dim=.*image_dim="):
        MultiVectorMilvusStore(settings=make_settings(tmp_path))


def test_varchar_limit_is_a_clear_error(tmp_path: Path) -> None:
    store = MultiVectorMilvusStore(HashImageSpaceEmbedder(24), HashImageSpaceEmbedder(16),  # type: ignore[arg-type]
                                   make_settings(tmp_path, max_varchar_bytes=100))
    with pytest.raises(ValueError, match="over the 100 Milvus VARCHAR limit; split it"):
        store.upsert([StoreItem(text="x" * 101)], show_progress=False)


@pytest.mark.parametrize("index", [FieldIndexSettings("HNSW", "IP"), FieldIndexSettings("IVF_FLAT", "COSINE"),
                                   FieldIndexSettings("AUTOINDEX", "COSINE")])
def test_index_types(tmp_path: Path, index: FieldIndexSettings) -> None:
    store = MultiVectorMilvusStore(HashImageSpaceEmbedder(24), HashImageSpaceEmbedder(16),  # type: ignore[arg-type]
                                   make_settings(tmp_path, text_index=index, image_index=index))
    store.upsert(items(10), show_progress=False)
    assert HybridRetriever(store, top_k=3).retrieve("chunk 2 of d")
    assert store.client.describe_index("t", "image_vec")["metric_type"] == index.metric


def test_bad_index_settings() -> None:
    with pytest.raises(ValueError, match="index_type must be one of"):
        FieldIndexSettings("DISKANN")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metric must be"):
        FieldIndexSettings("HNSW", "L2")  # type: ignore[arg-type]


def test_default_index_is_flat_when_searches_run_in_process(tmp_path: Path) -> None:
    """Unset index types: FLAT for an embedded file searched in process (no HNSW build while ingesting),
    HNSW when Milvus answers; an explicit type is kept, and a reopened file keeps the type it was made with."""
    dims = {"text_dim": 8, "image_dim": 4}
    local = MultiVectorMilvusStore(settings=MilvusStoreSettings(uri=str(tmp_path / "a.db"), collection_name="t",
                                                                **dims))
    assert local.local is not None
    for field in ("text_vec", "image_vec"):
        assert local.client.describe_index("t", field)["index_type"] == "FLAT"
        assert local.index_settings(field).index_type == "FLAT"
    # Reopened with Milvus answering: the FLAT collection is searched with FLAT's parameters.
    twin = MultiVectorMilvusStore(settings=MilvusStoreSettings(uri=str(tmp_path / "a.db"), collection_name="t",
                                                               local_search=False), client=local.client)
    assert twin.index_settings("text_vec").search() == {"metric_type": "COSINE", "params": {}}
    remote = MultiVectorMilvusStore(settings=MilvusStoreSettings(uri=str(tmp_path / "a.db"), collection_name="r",
                                                                 local_search=False, **dims), client=local.client)
    assert remote.client.describe_index("r", "text_vec")["index_type"] == "HNSW"
    explicit = MultiVectorMilvusStore(settings=MilvusStoreSettings(
        uri=str(tmp_path / "a.db"), collection_name="h", text_index=FieldIndexSettings("HNSW"), **dims),
        client=local.client)
    assert explicit.client.describe_index("h", "text_vec")["index_type"] == "HNSW"
    assert explicit.client.describe_index("h", "image_vec")["index_type"] == "FLAT"
    local.close()


def test_unresolved_index_settings() -> None:
    index = FieldIndexSettings(metric="IP")
    assert index.resolved(True) == FieldIndexSettings("FLAT", "IP")
    assert index.resolved(False).search() == {"metric_type": "IP", "params": {"ef": 128}}
    assert FieldIndexSettings("IVF_FLAT").resolved(True).index_type == "IVF_FLAT"
    with pytest.raises(ValueError, match="call resolved"):
        index.build()


def test_milvus_uri_file_path_does_not_break_import(tmp_path: Path) -> None:
    """pymilvus raises at import when MILVUS_URI is a file path; our import hides it and restores it."""
    code = (
        "import os\n"
        "from rag_plugins.milvus.store import MultiVectorMilvusStore\n"
        "from rag_plugins.milvus.settings import MilvusStoreSettings\n"
        f"s = MultiVectorMilvusStore(settings=MilvusStoreSettings(uri={str(tmp_path / 'e.db')!r}, text_dim=4, image_dim=4))\n"
        "assert os.environ['MILVUS_URI'] == './milvus.db'\n"
        "print(s.count())\n"
    )
    env = {**os.environ, "MILVUS_URI": "./milvus.db"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[4])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0"


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        MilvusStoreSettings(batch_size=0)


# ------------------------------------------------------------------------------------------- search_field
def _cosine_ranking(vectors: dict[str, np.ndarray], query: np.ndarray) -> list[tuple[str, float]]:
    """(id, cosine) best first, ties by id, computed with numpy."""
    scored = [(k, float(v @ query / (np.linalg.norm(v) * np.linalg.norm(query)))) for k, v in vectors.items()]
    return sorted(scored, key=lambda s: (-s[1], s[0]))


@pytest.mark.parametrize("field", ["text_vec", "image_vec"])
def test_search_field_equals_brute_force_and_skips_null_vectors(random_store: RandomStore, field: str) -> None:
    vectors = random_store.text_vecs if field == "text_vec" else random_store.image_vecs
    assert len(vectors) < N_ROWS  # some rows hold the null stand-in for this field
    for qt, qi in random_store.queries.values():
        query = qt if field == "text_vec" else qi
        expected = _cosine_ranking(vectors, query)
        hits = random_store.store.search_field(field, query, top_k=N_ROWS)
        # Every row with a vector for the field, none without (a null row would add hits past len(vectors)).
        assert [h.id for h in hits] == [k for k, _ in expected]
        np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-4)
        top = random_store.store.search_field(field, query, top_k=5)
        assert [h.id for h in top] == [k for k, _ in expected[:5]]
        assert {"doc_id", "text", "meta", "has_text_vec"} <= set(top[0].fields)


def test_search_field_filters(random_store: RandomStore) -> None:
    qt, _ = random_store.queries["q0"]
    hits = random_store.store.search_field("text_vec", qt, top_k=N_ROWS, filters={"doc_id": ["doc3", "doc4"]})
    rows = {r["id"]: r for r in random_store.store.get(list(random_store.text_vecs))}
    expected = _cosine_ranking({k: v for k, v in random_store.text_vecs.items()
                                if rows[k]["doc_id"] in ("doc3", "doc4")}, qt)
    assert [h.id for h in hits] == [k for k, _ in expected]
    assert {h.fields["doc_id"] for h in hits} == {"doc3", "doc4"}
    page_hits = random_store.store.search_field("text_vec", qt, top_k=N_ROWS, filters="page == 2")
    assert page_hits
    assert all(h.fields["page"] == 2 for h in page_hits)


def test_search_field_inner_product_scores(tmp_path: Path) -> None:
    ip = FieldIndexSettings(index_type="FLAT", metric="IP")
    store = MultiVectorMilvusStore(settings=make_settings(tmp_path, text_dim=5, image_dim=3, text_index=ip,
                                                          image_index=ip))
    rng = np.random.default_rng(7)
    vecs = [rng.normal(size=5).astype(np.float32) * (i + 1) for i in range(6)]  # not normalized
    keys = store.upsert_vectors([StoreItem(text=f"t{i}", chunk_id=str(i)) for i in range(6)], vecs, [None] * 6)
    query = rng.normal(size=5).astype(np.float32)
    dots = sorted(((float(v @ query), k) for k, v in zip(keys, vecs, strict=True)), key=lambda s: (-s[0], s[1]))
    hits = store.search_field("text_vec", query, top_k=6)
    assert [h.id for h in hits] == [k for _, k in dots]
    np.testing.assert_allclose([h.score for h in hits], [s for s, _ in dots], rtol=1e-4)
    assert store.search_field("image_vec", [1.0, 0.0, 0.0], top_k=6) == []  # only null image vectors
    store.close()


def test_search_field_errors(random_store: RandomStore) -> None:
    store = random_store.store
    with pytest.raises(ValueError, match=r"\['text_vec', 'image_vec'\].*'caption'"):
        store.search_field("caption", np.ones(TEXT_DIM))
    with pytest.raises(DimensionMismatchError, match=rf"text_vec: got a vector of shape \({IMAGE_DIM},\), "
                                                     rf"expected \({TEXT_DIM},\)"):
        store.search_field("text_vec", np.ones(IMAGE_DIM))
    with pytest.raises(ValueError, match="top_k"):
        store.search_field("image_vec", np.ones(IMAGE_DIM), top_k=0)


def test_search_field_on_dropped_collection(tmp_path: Path) -> None:
    store = MultiVectorMilvusStore(settings=make_settings(tmp_path, text_dim=4, image_dim=4))
    store.drop()
    with pytest.raises(CollectionNotFoundError):
        store.search_field("text_vec", np.ones(4))
    store.close()
