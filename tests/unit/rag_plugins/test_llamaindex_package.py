"""The LlamaIndex adapters live in ``rag_plugins.llamaindex``; the older import paths still give the same classes,
and without llama-index installed the import names the extra to install."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

#: (old module, name, module that defines it)
OLD_PATHS = [
    ("rag_plugins", "LocalEmbedding", "rag_plugins.llamaindex.embedding"),
    ("rag_plugins", "LocalRerank", "rag_plugins.llamaindex.rerank"),
    ("rag_plugins", "LocalMultiModalEmbedding", "rag_plugins.llamaindex.multimodal"),
    ("rag_plugins.embedding", "LocalEmbedding", "rag_plugins.llamaindex.embedding"),
    ("rag_plugins.rerank", "LocalRerank", "rag_plugins.llamaindex.rerank"),
    ("rag_plugins.multimodal", "LocalMultiModalEmbedding", "rag_plugins.llamaindex.multimodal"),
    ("rag_plugins.milvus", "MilvusFieldVectorStore", "rag_plugins.llamaindex.milvus_store"),
    ("rag_plugins.milvus", "HybridRetriever", "rag_plugins.llamaindex.hybrid_retriever"),
    ("rag_plugins.milvus.llamaindex_store", "MilvusFieldVectorStore", "rag_plugins.llamaindex.milvus_store"),
    ("rag_plugins.milvus.retriever", "HybridRetriever", "rag_plugins.llamaindex.hybrid_retriever"),
    ("rag_plugins.milvus.nodes", "node_from_hit", "rag_plugins.llamaindex.milvus_nodes"),
    ("rag_plugins.llamaindex", "LocalEmbedding", "rag_plugins.llamaindex.embedding"),
    ("rag_plugins.llamaindex", "HybridRetriever", "rag_plugins.llamaindex.hybrid_retriever"),
]


@pytest.mark.parametrize(("module", "name", "home"), OLD_PATHS)
def test_old_import_paths_give_the_same_object(module: str, name: str, home: str) -> None:
    assert getattr(importlib.import_module(module), name) is getattr(importlib.import_module(home), name)


def test_adapter_classes_subclass_real_imports_without_type_ignore() -> None:
    """mypy sees llama-index-core's own types (it ships ``py.typed``): no class silences its base."""
    for path in sorted((REPO / "rag_plugins").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ClassDef):
                header = lines[node.lineno - 1]
                assert "type: ignore" not in header, f"{path.relative_to(REPO)}:{node.lineno}: {header.strip()}"


def test_missing_llamaindex_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['llama_index.core'] = None  # as if llama-index-core were not installed\n"
        "import rag_plugins\n"
        "try:\n"
        "    rag_plugins.LocalEmbedding\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                         check=True).stdout
    assert out.startswith("MissingExtraError"), out
    assert "pip install 'rag-plugins[llamaindex]'" in out
