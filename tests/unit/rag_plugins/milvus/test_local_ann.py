"""The in-process IVF path (large fields) and the side files that make reopening fast."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rag_plugins.milvus.items import StoreItem
from rag_plugins.milvus.local_index import FieldVectors, forget_mirror
from rag_plugins.milvus.settings import AnnSettings
from rag_plugins.milvus.store import MultiVectorMilvusStore
from tests.unit.rag_plugins.milvus.conftest import make_settings

DIM = 24


def clustered(rng: np.random.Generator, n: int, dim: int = DIM, clusters: int = 40) -> np.ndarray:
    """(n, dim) float32 unit vectors around ``clusters`` centres (the benchmark's data shape, small)."""
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(mat: np.ndarray, keys: list[str], q: np.ndarray, k: int) -> list[str]:
    order = np.argsort(-(mat @ q), kind="stable")[:k]
    return [keys[i] for i in order]


@pytest.fixture(scope="module")
def big_field() -> tuple[FieldVectors, np.ndarray, list[str], np.ndarray]:
    rng = np.random.default_rng(3)
    mat = clustered(rng, 3000)
    keys = [f"k{i:05d}" for i in range(mat.shape[0])]
    field = FieldVectors(DIM, "COSINE", AnnSettings(threshold=1000, nlist_per_sqrt_n=1.0, nprobe=8))
    field.upsert(keys, mat)
    queries = mat[rng.choice(3000, 40, replace=False)] + 0.3 * rng.standard_normal((40, DIM)).astype(np.float32)
    return field, mat, keys, queries


def test_large_field_uses_ivf_with_recall_and_exact_scores(big_field: tuple) -> None:
    field, mat, keys, queries = big_field
    recalls = []
    for q in queries:
        got = field.search(q, 20)
        assert field.uses_ann
        qn = q / np.linalg.norm(q)
        want = exact_top(mat, keys, qn, 20)
        recalls.append(len({k for k, _ in got} & set(want)) / 20)
        # Scores are the exact cosines (re-scored from float32), not fp16 approximations.
        np.testing.assert_allclose([s for _, s in got], [float(mat[keys.index(k)] @ qn) for k, _ in got], atol=1e-6)
    assert np.mean(recalls) >= 0.95


def test_ivf_below_threshold_is_exact_and_off_switch() -> None:
    rng = np.random.default_rng(5)
    mat = clustered(rng, 300)
    keys = [f"k{i}" for i in range(300)]
    for ann in (AnnSettings(threshold=1000), AnnSettings(threshold=0)):
        field = FieldVectors(DIM, "COSINE", ann)
        field.upsert(keys, mat)
        assert [k for k, _ in field.search(mat[0], 10)] == exact_top(mat, keys, mat[0], 10)
        assert not field.uses_ann


def test_ivf_follows_updates_deletes_filters_and_batches() -> None:
    rng = np.random.default_rng(9)
    mat = clustered(rng, 2500)
    keys = [f"k{i:05d}" for i in range(2500)]
    field = FieldVectors(DIM, "IP", AnnSettings(threshold=1000, nlist_per_sqrt_n=1.0, nprobe=8))
    field.upsert(keys, mat)
    field.build_index()
    assert field.uses_ann
    field.remove(keys[:10])  # deleted rows are never returned
    for i in range(10):
        assert keys[i] not in {k for k, _ in field.search(mat[i], 5)}
    moved = -mat[100]  # an updated vector is found where it now is
    field.upsert([keys[100]], moved[None, :])
    assert field.search(moved, 1)[0][0] == keys[100]
    narrow = field.mask_of(set(keys[500:520]))  # few allowed rows: exact over them
    assert [k for k, _ in field.search(mat[3], 5, narrow)] == exact_top(mat[500:520], keys[500:520], mat[3], 5)
    broad = field.mask_of(set(keys[::2]))  # many allowed rows: the IVF index with a selector
    assert all(int(k[1:]) % 2 == 0 for k, _ in field.search(mat[7], 10, broad))
    with ThreadPoolExecutor(6) as pool:  # concurrent queries (one FAISS call per batch) == one by one
        together = list(pool.map(lambda i: field.search(mat[i], 8), range(200, 260)))
    assert together == [field.search(mat[i], 8) for i in range(200, 260)]


def _fill(tmp_path: Path, n: int, **kw: object) -> tuple[MultiVectorMilvusStore, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    settings = make_settings(tmp_path, text_dim=DIM, image_dim=DIM + 8, **kw)
    store = MultiVectorMilvusStore(settings=settings)
    tv, iv = clustered(rng, n), clustered(rng, n, DIM + 8)
    items = [StoreItem(text=f"t{i}", doc_id=f"d{i % 5}", chunk_id=str(i), meta={"i": i}) for i in range(n)]
    store.upsert_vectors(items, list(tv), list(iv))
    return store, tv, iv


def test_store_with_ivf_fields_matches_milvus_exact_answer(tmp_path: Path) -> None:
    store, tv, iv = _fill(tmp_path, 1100, local_ann=AnnSettings(threshold=1000, nlist_per_sqrt_n=1.0, nprobe=8))
    twin = MultiVectorMilvusStore(settings=make_settings(tmp_path, local_search=False), client=store.client)
    same = []
    for i in range(0, 1100, 140):
        got = [h.id for h in store.search(tv[i], iv[i], top_k=10, text_limit=50, image_limit=50)]
        want = [h.id for h in twin.search(tv[i], iv[i], top_k=10, text_limit=50, image_limit=50)]
        same.append(len(set(got) & set(want)) / 10)
    assert store.local is not None
    assert all(f.uses_ann for f in store.local.fields.values())
    assert np.mean(same) >= 0.95
    store.close()


def test_reopen_reads_side_files_and_rejects_stale_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, tv, iv = _fill(tmp_path, 1200, local_ann=AnnSettings(threshold=1000))
    before = [(h.id, h.score) for h in store.search(tv[0], iv[0], top_k=10, text_limit=40, image_limit=40)]
    settings = store.settings
    store.close()  # saves the copy (and its IVF indexes) next to the DB file
    folder = store.local_index_dir()
    assert folder is not None
    assert (folder / "manifest.json").exists()
    assert (folder / "text_vec.ivf").exists()
    forget_mirror(store._local_key())

    def no_reload(*a: object, **k: object) -> None:
        raise AssertionError("reopen re-read every row from Milvus")

    monkeypatch.setattr(MultiVectorMilvusStore, "_load_local", no_reload)
    again = MultiVectorMilvusStore(settings=settings)
    assert again.local is not None
    assert again.local.persisted
    assert again.local.fields["text_vec"].uses_ann
    assert [(h.id, h.score) for h in again.search(tv[0], iv[0], top_k=10, text_limit=40,
                                                 image_limit=40)] == before
    row = again.local.rows[before[0][0]]  # scalars (JSON meta included) come back from the side files
    assert row["meta"] == {"i": int(row["chunk_id"])}
    assert row["text"] == f"t{row['chunk_id']}"
    again.delete([before[0][0]])  # a write makes the saved files stale at once (crash-safe)
    assert not (folder / "manifest.json").exists()
    monkeypatch.undo()
    # Files that no longer match the collection (a row deleted behind the store's back) are not used.
    again.save_local_index()
    again.client.delete(again.collection_name, ids=[before[1][0]])
    again.client.close()
    forget_mirror(store._local_key())
    third = MultiVectorMilvusStore(settings=settings)
    assert third.local is not None
    assert not third.local.persisted
    assert before[1][0] not in third.local.rows
    assert len(third.local.rows) == 1198
    third.close()


def test_embedded_rewrite_replaces_rows_across_flushes(tmp_path: Path) -> None:
    """On milvus-lite 3 the store writes with insert (no per-key read); a rewritten key must still replace."""
    store, tv, iv = _fill(tmp_path, 40)
    store.client.flush(store.collection_name)  # the old versions now live in a sealed segment
    items = [StoreItem(text=f"new {i}", doc_id=f"d{i % 5}", chunk_id=str(i), meta={"i": i}) for i in range(10)]
    store.upsert_vectors(items, list(-tv[:10]), [None] * 10)  # new text vectors, image vectors dropped
    store.client.flush(store.collection_name)
    twin = MultiVectorMilvusStore(settings=make_settings(tmp_path, local_search=False), client=store.client)
    assert store.count() == 40
    assert store.count("text like 'new%'") == 10
    assert twin.search_field("text_vec", -tv[3], top_k=1)[0].id == items[3].key
    assert items[3].key not in {h.id for h in twin.search_field("image_vec", iv[3], top_k=40)}
    store.close()
