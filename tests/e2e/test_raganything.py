"""RAG-Anything built with ``integrations.raganything.build_raganything``: real MiniLM text server, real tiny
GME mm server, real Milvus Lite; stub deterministic LLM and vision model, character tokenizer (no fetch).

``insert_content_list`` never parses a document, so RAG-Anything's parser (MinerU) is not needed.
"""

from __future__ import annotations

import atexit
import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from rag_plugins.multimodal_client import MultiModalEmbeddingClient
from tests.e2e.mm_fixtures import png_bytes
from tests.e2e.test_embed_clients import MARS, PLANETS, QUERY, CharTokenizer

pytest.importorskip("lightrag")
pytest.importorskip("raganything")
TOL = 1e-5
VISUAL_ANALYSIS = "A bar chart with twelve blue bars, the tallest in November."


async def stub_llm(prompt: str, system_prompt: str | None = None, history_messages: object = None, **_: object) -> str:
    """Keywords for keyword-extraction prompts, nothing for entity extraction."""
    if "high_level_keywords" in f"{system_prompt or ''}{prompt}":
        return '{"high_level_keywords": ["planets"], "low_level_keywords": ["Red Planet"]}'
    return ""


VISION_CALLS: list[dict[str, object]] = []


async def stub_vision(prompt: str, system_prompt: str | None = None, history_messages: object = None,
                      image_data: str | None = None, **_: object) -> str:
    """The JSON ``ImageModalProcessor._parse_response`` expects: ``detailed_description`` + ``entity_info``."""
    VISION_CALLS.append({"prompt": prompt, "image_data": image_data})
    return json.dumps({
        "detailed_description": VISUAL_ANALYSIS,
        "entity_info": {"entity_name": "Lisbon rainfall chart", "entity_type": "image",
                        "summary": "Monthly rainfall in Lisbon as a bar chart."},
    })


async def test_raganything_image_item_gets_image_vec(
    minilm_server: str, mm_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightrag import QueryParam
    from lightrag.utils import Tokenizer

    from integrations.raganything import build_raganything

    monkeypatch.delenv("MILVUS_DB_NAME", raising=False)
    monkeypatch.setenv("MILVUS_URI", str(tmp_path / "not-used.db"))
    png = tmp_path / "figures" / "rainfall.png"
    png.parent.mkdir()
    png.write_bytes(png_bytes((56, 56), seed=7))
    VISION_CALLS.clear()

    rag = build_raganything(
        str(tmp_path / "rag"), minilm_server, mm_server, llm_model_func=stub_llm, vision_model_func=stub_vision,
        tokenizer=Tokenizer("chars", CharTokenizer()), workspace=f"rga_{uuid.uuid4().hex[:8]}",
        cosine_better_than_threshold=0.2, image_cosine_better_than_threshold=-1.0,
    )
    assert rag.lightrag_kwargs["vector_storage"] == "MultiVectorMilvusStorage"
    assert rag.lightrag_kwargs["vector_db_storage_cls_kwargs"]["mm_base_url"] == mm_server
    try:
        content_list = [
            {"type": "text", "text": " ".join(PLANETS), "page_idx": 0},
            {"type": "image", "img_path": str(png), "image_caption": ["Figure 2. Monthly rainfall in Lisbon"],
             "image_footnote": [], "page_idx": 1},
        ]
        await rag.insert_content_list(content_list, file_path="planets.pdf", doc_id="doc-planets")
        assert len(VISION_CALLS) == 1
        assert VISION_CALLS[0]["image_data"]  # the image (base64) went to the vision model

        chunks = rag.lightrag.chunks_vdb
        assert chunks.hybrid
        store = chunks.store
        rows = store.query({"modality": "image"}, output_fields=["id", "uri", "text", "has_image_vec", "image_vec"])
        assert len(rows) == 1, rows
        row = rows[0]
        record = await chunks.get_by_id(row["id"])
        assert record is not None
        assert f"Image Path: {png}" in record["content"]
        assert VISUAL_ANALYSIS in record["content"]
        assert row["uri"] == str(png)
        assert row["has_image_vec"] is True
        image_vec = np.asarray(row["image_vec"])
        assert np.linalg.norm(image_vec) > 0.5
        mm = MultiModalEmbeddingClient(mm_server)
        try:
            expected = mm.embed_images([png])[0]
        finally:
            mm.http.close()
        assert np.max(np.abs(image_vec - expected)) <= TOL

        param = QueryParam(mode="naive", only_need_context=True, top_k=3, chunk_top_k=3, enable_rerank=False)
        context = await rag.lightrag.aquery(QUERY, param=param)
        assert isinstance(context, str)
        assert MARS in context
    finally:
        await rag.finalize_storages()
        # RAGAnything registers close() with atexit; it would finalize again after pytest closed its streams.
        atexit.unregister(rag.close)


def test_missing_raganything_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from integrations.raganything import build_raganything
    from rag_plugins.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "raganything", None)  # import raganything -> ImportError
    with pytest.raises(MissingExtraError, match=r"raganything is not installed.*pip install --no-deps raganything==1\.4\.3"):
        build_raganything("unused", "http://127.0.0.1:1", llm_model_func=stub_llm)
