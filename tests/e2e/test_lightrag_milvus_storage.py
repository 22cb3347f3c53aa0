"""LightRAG on ``MultiVectorMilvusStorage``: real MiniLM text server, real tiny GME mm server, real Milvus Lite.

The LLM is a deterministic stub (extracts nothing, so the knowledge-graph half of ``mix`` is empty and the
chunk vector search decides) and the tokenizer is a character tokenizer, so nothing is fetched.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag_plugins.multimodal_client import MultiModalEmbeddingClient
from tests.e2e.mm_fixtures import png_bytes
from tests.e2e.test_embed_clients import MARS, PLANETS, QUERY, CharTokenizer

pytest.importorskip("lightrag")
TOL = 1e-5


async def stub_llm(prompt: str, system_prompt: str | None = None, history_messages: object = None, **_: object) -> str:
    """Keywords for keyword-extraction prompts, nothing for entity extraction."""
    if "high_level_keywords" in f"{system_prompt or ''}{prompt}":
        return '{"high_level_keywords": ["planets"], "low_level_keywords": ["Red Planet"]}'
    return ""


def image_chunk(path: Path) -> str:
    """A chunk as RAG-Anything writes it for an image item (``PROMPTS["image_chunk"]``)."""
    return (f"Image Content Analysis:\n- Section Path: Results\nImage Path: {path}\n"
            f"Captions: Figure 2. Monthly rainfall in Lisbon\nFootnotes: None\n\n"
            f"Visual Analysis: a bar chart with twelve blue bars, tallest in November.")


def make_rag(working_dir: Path, text_url: str, **storage_kwargs: Any) -> Any:
    """LightRAG on our storage, in a fresh workspace.

    LightRAG keeps KV / doc-status data in process-wide shared dicts keyed by namespace and workspace, so
    another LightRAG of this test session that inserted the same documents in the default workspace would
    make these look like duplicates; a unique workspace keeps the tests independent.
    """
    from lightrag import LightRAG
    from lightrag.utils import Tokenizer

    from integrations.lightrag import embedding_func
    from integrations.lightrag_storage import register

    register()
    return LightRAG(
        working_dir=str(working_dir), workspace=f"mv_{uuid.uuid4().hex[:8]}",
        embedding_func=embedding_func(text_url), llm_model_func=stub_llm,
        tokenizer=Tokenizer("chars", CharTokenizer()), vector_storage="MultiVectorMilvusStorage",
        vector_db_storage_cls_kwargs=storage_kwargs,
    )


def rrf(rankings: list[list[str]], k: int = 60) -> dict[str, float]:
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return scores


def cosine_ranking(query: np.ndarray, rows: list[dict[str, Any]], field: str) -> list[str]:
    sims = {r["id"]: float(np.dot(query, r[field]) / np.linalg.norm(r[field]) / np.linalg.norm(query)) for r in rows}
    return sorted(sims, key=lambda key: -sims[key])


async def test_lightrag_naive_and_mix_over_hybrid_milvus(
    minilm_server: str, mm_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightrag import QueryParam

    # LightRAG's own Milvus storage needs these; ours reads neither, and a Milvus Lite path in MILVUS_URI
    # (which would break a later `import pymilvus`) is harmless.
    monkeypatch.delenv("MILVUS_DB_NAME", raising=False)
    monkeypatch.setenv("MILVUS_URI", str(tmp_path / "not-used.db"))
    png = tmp_path / "figures" / "rainfall.png"
    png.parent.mkdir()
    png.write_bytes(png_bytes((56, 56), seed=7))
    # Text threshold 0.78: of the planets only Mars (cosine 0.81) is a text candidate; every row is an
    # image-space candidate. So Mars wins under RRF whatever the random-weight image model says.
    rag = make_rag(tmp_path / "rag", minilm_server, mm_base_url=mm_server, cosine_better_than_threshold=0.78,
                   image_cosine_better_than_threshold=-1.0, candidate_multiplier=10)
    await rag.initialize_storages()
    try:
        await rag.ainsert([*PLANETS, image_chunk(png)])
        chunks = rag.chunks_vdb
        assert chunks.hybrid
        assert chunks.collection_name.startswith(f"lightrag_{rag.workspace}_chunks_")
        assert not rag.entities_vdb.hybrid
        assert not rag.relationships_vdb.hybrid
        assert (tmp_path / "rag" / "milvus_multivector.db").exists()
        assert not (tmp_path / "not-used.db").exists()

        for mode in ("naive", "mix"):
            param = QueryParam(mode=mode, only_need_context=True, top_k=1, chunk_top_k=1, enable_rerank=False)
            context = await rag.aquery(QUERY, param=param)
            assert isinstance(context, str)
            assert MARS in context, mode
            assert not any(p in context for p in PLANETS if p != MARS), mode

        # The image chunk's row: image_vec is the image file's vector from the mm server.
        store = chunks.store
        rows = store.query({"modality": "image"}, output_fields=["id", "uri", "text", "has_image_vec", "image_vec",
                                                                   "has_text_vec", "meta"])
        assert len(rows) == 1
        row = rows[0]
        assert row["uri"] == str(png)
        assert row["has_image_vec"] is True
        assert row["has_text_vec"] is True
        mm = MultiModalEmbeddingClient(mm_server)
        expected_image_vec = mm.embed_images([png])[0]
        assert np.linalg.norm(row["image_vec"]) > 0.5
        assert np.max(np.abs(np.asarray(row["image_vec"]) - expected_image_vec)) <= TOL
        record = await chunks.get_by_id(row["id"])
        assert record is not None
        assert record["id"] == row["id"]
        assert record["content"].startswith("Image Content Analysis:")
        assert record["full_doc_id"].startswith("doc-")
        assert isinstance(record["created_at"], int)
        # text_vec is LightRAG's embedding_func of the content (document side).
        vectors = await chunks.get_vectors_by_ids([row["id"], "chunk-missing"])
        assert list(vectors) == [row["id"]]
        expected_text_vec = (await rag.embedding_func([record["content"]], context="document"))[0]
        assert np.max(np.abs(np.asarray(vectors[row["id"]]) - expected_text_vec)) <= TOL
        # Text chunks (the planets; LightRAG may split the image document's analysis paragraph off into a
        # chunk without the Image Path line) got their text embedded into the image space (seed plan).
        text_rows = store.query({"modality": "text"}, output_fields=["id", "has_image_vec"])
        assert len(text_rows) == store.count() - 1 >= len(PLANETS)
        assert all(r["has_image_vec"] for r in text_rows)

        # Hybrid ranking = RRF of the two single-field cosine rankings, computed here independently.
        chunks.cosine_better_than_threshold = -1.0
        all_rows = store.query("", limit=100, output_fields=["id", "text_vec", "image_vec"])
        q_text = (await rag.embedding_func([QUERY], context="query"))[0]
        q_image = mm.embed([QUERY], "query")[0]
        expected = rrf([cosine_ranking(q_text, all_rows, "text_vec"), cosine_ranking(q_image, all_rows, "image_vec")])
        hits = await chunks.query(QUERY, top_k=len(all_rows))
        # Equal rank pairs give equal RRF scores; ties are broken by id.
        assert [h["id"] for h in hits] == sorted(expected, key=lambda key: (-round(expected[key], 6), key))
        for hit in hits:
            assert hit["distance"] == pytest.approx(expected[hit["id"]], rel=1e-4)
            assert set(hit["field_scores"]) == {"text_vec", "image_vec"}
        image_hit = next(h for h in hits if h["id"] == row["id"])
        assert image_hit["image_path"] == str(png)
        mm.http.close()
    finally:
        await rag.finalize_storages()


async def test_storage_methods_on_text_only_namespaces(minilm_server: str, tmp_path: Path) -> None:
    from lightrag.utils import compute_mdhash_id

    rag = make_rag(tmp_path, minilm_server, cosine_better_than_threshold=0.2)
    await rag.initialize_storages()
    try:
        entities, relations, chunks = rag.entities_vdb, rag.relationships_vdb, rag.chunks_vdb
        assert not chunks.hybrid  # no mm_base_url: text only
        names = ["Mars", "Venus", "Jupiter"]
        ids = [compute_mdhash_id(n, prefix="ent-") for n in names]
        await entities.upsert({
            i: {"entity_name": n, "content": f"{n}\n{p}", "source_id": "chunk-1", "file_path": "planets.txt"}
            for i, n, p in zip(ids, names, [PLANETS[1], PLANETS[0], PLANETS[2]], strict=True)
        })
        hits = await entities.query(QUERY, top_k=2)
        assert hits[0]["entity_name"] == "Mars"
        assert hits[0]["id"] == ids[0]
        assert hits[0]["distance"] > hits[1]["distance"] >= 0.2  # cosine, best first
        assert {"created_at", "file_path", "source_id", "content"} <= set(hits[0])
        assert await entities.query("Which planet is known as the Red Planet?", top_k=0) == []
        entities.cosine_better_than_threshold = 0.99
        assert await entities.query(QUERY, top_k=3) == []
        entities.cosine_better_than_threshold = 0.2

        got = await entities.get_by_ids([ids[1], "ent-missing", ids[0]])
        assert [g["entity_name"] if g else None for g in got] == ["Venus", None, "Mars"]
        await entities.delete_entity("Venus")
        assert await entities.get_by_id(ids[1]) is None
        await entities.delete([ids[2]])
        assert [g is None for g in await entities.get_by_ids(ids)] == [False, True, True]

        rel = {
            "rel-a": {"src_id": "Mars", "tgt_id": "Sun", "content": "Mars orbits the Sun", "source_id": "c1"},
            "rel-b": {"src_id": "Earth", "tgt_id": "Mars", "content": "Earth neighbours Mars", "source_id": "c1"},
            "rel-c": {"src_id": "Earth", "tgt_id": "Moon", "content": "the Moon orbits Earth", "source_id": "c1"},
        }
        await relations.upsert(rel)
        await relations.upsert({"rel-c": {**rel["rel-c"], "content": "the Moon orbits the Earth"}})  # idempotent
        assert relations.store.count() == 3
        assert (await relations.get_by_id("rel-c"))["content"] == "the Moon orbits the Earth"  # type: ignore[index]
        await relations.delete_entity_relation("Mars")
        assert [g is not None for g in await relations.get_by_ids(list(rel))] == [False, False, True]
        await relations.index_done_callback()

        # Workspace isolation: same namespace, another workspace, another collection.
        other = type(entities)(namespace="entities", workspace="other", global_config=entities.global_config,
                               embedding_func=entities.embedding_func, meta_fields=set(entities.meta_fields))
        await other.initialize()
        assert other.collection_name != entities.collection_name
        assert await other.get_by_id(ids[0]) is None
        await other.finalize()

        assert await entities.drop() == {"status": "success", "message": "data dropped"}
        assert entities.store.count() == 0
        assert await entities.query(QUERY, top_k=3) == []
        await entities.upsert({ids[0]: {"entity_name": "Mars", "content": PLANETS[1]}})  # usable after drop
        assert (await entities.get_by_id(ids[0])) is not None
    finally:
        await rag.finalize_storages()
