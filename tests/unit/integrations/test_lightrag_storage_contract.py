"""``MultiVectorMilvusStorage`` against LightRAG's storage contract (no servers, no Milvus)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("lightrag")
pytest.importorskip("pymilvus")

from lightrag.base import BaseVectorStorage, StorageNameSpace
from lightrag.utils import EmbeddingFunc

from integrations.lightrag_storage import STORAGE_NAME, MultiVectorMilvusStorage, register


async def _zeros(texts: list[str], **_: Any) -> np.ndarray:
    return np.zeros((len(texts), 8), np.float32)


def make_storage(tmp_path: Path, namespace: str = "chunks", workspace: str = "", **kwargs: Any) -> Any:
    func = EmbeddingFunc(embedding_dim=8, func=_zeros, model_name="tiny/model-1")
    config = {"working_dir": str(tmp_path), "embedding_batch_num": 4,
              "vector_db_storage_cls_kwargs": {"cosine_better_than_threshold": 0.2, **kwargs}}
    return MultiVectorMilvusStorage(namespace=namespace, workspace=workspace, global_config=config,
                                    embedding_func=func, meta_fields={"content", "full_doc_id", "file_path"})


def test_every_abstract_method_is_implemented_here() -> None:
    assert not MultiVectorMilvusStorage.__abstractmethods__
    abstract = set(BaseVectorStorage.__abstractmethods__) | set(StorageNameSpace.__abstractmethods__)
    assert {"query", "upsert", "delete", "delete_entity", "delete_entity_relation", "get_by_id", "get_by_ids",
            "get_vectors_by_ids", "index_done_callback", "drop"} <= abstract
    public = {n for n, v in vars(BaseVectorStorage).items() if inspect.iscoroutinefunction(v) and not n.startswith("_")}
    public |= {n for n, v in vars(StorageNameSpace).items() if inspect.iscoroutinefunction(v) and not n.startswith("_")}
    public -= {"drop_pending_index_ops"}  # a documented no-op for backends that write immediately
    for name in abstract | public:
        assert name in vars(MultiVectorMilvusStorage), f"{name} is inherited, not implemented"
        assert inspect.iscoroutinefunction(getattr(MultiVectorMilvusStorage, name)), name


def test_register_makes_the_name_resolvable_without_milvus_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightrag.kg import STORAGE_ENV_REQUIREMENTS, STORAGE_IMPLEMENTATIONS, verify_storage_implementation
    from lightrag.kg.factory import get_storage_class
    from lightrag.utils import check_storage_env_vars

    register()
    register()  # idempotent
    assert STORAGE_IMPLEMENTATIONS["VECTOR_STORAGE"]["implementations"].count(STORAGE_NAME) == 1
    assert STORAGE_ENV_REQUIREMENTS[STORAGE_NAME] == []
    monkeypatch.delenv("MILVUS_URI", raising=False)
    monkeypatch.delenv("MILVUS_DB_NAME", raising=False)
    verify_storage_implementation("VECTOR_STORAGE", STORAGE_NAME)
    check_storage_env_vars(STORAGE_NAME)
    assert get_storage_class(STORAGE_NAME) is MultiVectorMilvusStorage


def test_collection_names_isolate_workspace_namespace_and_model(tmp_path: Path) -> None:
    a = make_storage(tmp_path, "chunks", "team-a")
    b = make_storage(tmp_path, "chunks", "team_b")
    e = make_storage(tmp_path, "entities", "team-a")
    assert a.collection_name == "lightrag_team_a_chunks_tiny_model_1_8d"
    assert len({a.collection_name, b.collection_name, e.collection_name}) == 3
    assert a.milvus_uri == str(tmp_path / "milvus_multivector.db")
    custom = make_storage(tmp_path, milvus_uri="http://milvus:19530", collection_prefix="kb")
    assert custom.milvus_uri == "http://milvus:19530"
    assert custom.collection_name.startswith("kb_chunks_")


def test_hybrid_only_where_configured(tmp_path: Path) -> None:
    assert not make_storage(tmp_path, "chunks").hybrid  # no image server: text only
    assert make_storage(tmp_path, "chunks", mm_base_url="http://127.0.0.1:1").hybrid
    assert not make_storage(tmp_path, "entities", mm_base_url="http://127.0.0.1:1").hybrid
    assert make_storage(tmp_path, "entities", mm_base_url="http://127.0.0.1:1",
                        hybrid_namespaces=["chunks", "entities"]).hybrid


def test_unknown_fusion_is_refused(tmp_path: Path) -> None:
    from rag_plugins.milvus.errors import FusionConfigError

    with pytest.raises(FusionConfigError, match="unknown fusion"):
        make_storage(tmp_path, fusion="max")


def test_image_path_detection(tmp_path: Path) -> None:
    png = tmp_path / "fig 1.png"
    png.write_bytes(b"\x89PNG not really")
    storage = make_storage(tmp_path, mm_base_url="http://127.0.0.1:1", image_root=str(tmp_path))
    chunk = f"\nImage Content Analysis:\n- Section Path: intro\nImage Path: {png}\nCaptions: a chart\n"
    assert storage.image_of({"content": chunk}) == str(png)
    assert storage.image_of({"content": "- Image Path: fig 1.png\n"}) == str(png)  # relative to image_root
    assert storage.image_of({"content": "x", "img_path": str(png)}) == str(png)
    assert storage.image_of({"content": "no image here"}) is None
    assert storage.image_of({"content": "Image Path: /nowhere/missing.png"}) is None  # warned, text-only
    assert storage.image_of({"content": "Image Path: None"}) is None
