"""RAG-Anything on rag-plugins: our embedding / rerank functions and the multi-vector Milvus storage.

RAG-Anything only captions images; with :func:`build_raganything` the chunk it writes for an image item
(whose content carries an ``Image Path:`` line) also gets the image file's vector in ``image_vec`` from a
rag-serve ``mm-embed`` server, and chunk queries search text and image vectors together (hybrid fusion).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from integrations.lightrag import embedding_func, rerank_model_func
from rag_plugins.optional import require

logger = logging.getLogger(__name__)

#: LightRAG's registered name of :class:`integrations.lightrag_storage.MultiVectorMilvusStorage`.
VECTOR_STORAGE = "MultiVectorMilvusStorage"
#: raganything 1.4.3 pins lightrag-hku<1.5 and mineru[core] (which pulls CUDA torch); content-list insertion
#: and queries need neither, so it is installed without its dependencies.
RAGANYTHING_INSTALL = "pip install --no-deps raganything==1.4.3"

_COMPAT_CLASSES: dict[type, type] = {}
#: Keys LightRAG >= 1.5's ``_build_global_config()`` adds that ``extract_entities`` / ``merge_nodes_and_edges``
#: read and ``LightRAG.__dict__`` lacks (``role_llm_funcs`` / ``addon_params`` are properties there).
_RUNTIME_KEYS = ("role_llm_funcs", "llm_cache_identities", "addon_params")


def _sync_global_config(lightrag: Any) -> None:
    """Give ``lightrag.__dict__`` the runtime keys of LightRAG >= 1.5's ``_build_global_config()``.

    RAG-Anything 1.4 (written for LightRAG < 1.5) passes ``lightrag.__dict__`` as ``global_config`` to
    ``extract_entities`` / ``merge_nodes_and_edges`` in its batch multimodal path; LightRAG 1.5 reads keys
    there that only ``_build_global_config()`` adds (``role_llm_funcs``, ``addon_params``, ...), so the batch
    path raised ``KeyError: 'role_llm_funcs'`` and RAG-Anything fell back to processing every item again
    (calling the vision model twice). These keys are properties or absent on ``LightRAG``, so the extra
    instance-dict entries change neither attribute access nor ``asdict``.
    """
    build = getattr(lightrag, "_build_global_config", None)
    if not callable(build):  # LightRAG < 1.5: __dict__ is what it expects
        return
    config = build()
    state = vars(lightrag)
    for key in _RUNTIME_KEYS:
        if key in config:
            state[key] = config[key]  # refreshed on every call: roles / addon params may be reconfigured


def _compat_class(base: type) -> type:
    """``RAGAnything`` subclass that keeps ``lightrag.__dict__`` usable as LightRAG 1.5's global config."""
    if base not in _COMPAT_CLASSES:

        class RAGAnythingCompat(base):  # type: ignore[valid-type, misc]
            async def _initialize_lightrag(self) -> Any:
                result = await super()._initialize_lightrag()
                if self.lightrag is not None:
                    _sync_global_config(self.lightrag)
                return result

        RAGAnythingCompat.__name__ = RAGAnythingCompat.__qualname__ = base.__name__
        _COMPAT_CLASSES[base] = RAGAnythingCompat
    return _COMPAT_CLASSES[base]


def build_raganything(
    working_dir: str,
    text_url: str,
    mm_url: str | None = None,
    rerank_url: str | None = None,
    *,
    llm_model_func: Callable[..., Any],
    vision_model_func: Callable[..., Any] | None = None,
    tokenizer: Any = None,
    workspace: str | None = None,
    config: Any = None,
    lightrag_kwargs: dict[str, Any] | None = None,
    **storage_kwargs: Any,
) -> Any:
    """Build a ``RAGAnything`` that embeds, reranks and stores through rag-plugins.

    The LightRAG instance RAG-Anything creates on first use gets :func:`integrations.lightrag.embedding_func`
    of ``text_url``, :func:`integrations.lightrag.rerank_model_func` of ``rerank_url`` (when given) and
    ``vector_storage="MultiVectorMilvusStorage"`` (registered here) with ``mm_base_url=mm_url``, so image
    chunks get an ``image_vec`` and chunk queries use hybrid search. The Milvus Lite file is
    ``<working_dir>/milvus_multivector.db`` unless ``uri=`` is passed in ``storage_kwargs``.

    With LightRAG >= 1.5 the returned object is a thin ``RAGAnything`` subclass that adds LightRAG 1.5's
    runtime ``global_config`` keys to ``lightrag.__dict__`` (RAG-Anything 1.4 passes that dict), so the
    batch multimodal path works instead of failing over to per-item processing.

    Document *parsing* (``process_document_complete``) needs RAG-Anything's parser (MinerU by default).
    When the configured parser is not installed, the installation check is skipped (with a warning) so that
    ``insert_content_list`` and queries, which never parse, still work.

    Args:
        working_dir: RAG-Anything / LightRAG working directory (KV, graph, Milvus Lite file).
        text_url: rag-serve text embedding server (``native`` API).
        mm_url: rag-serve ``mm-embed`` server for ``image_vec`` (None: text-only storage, no image vectors).
        rerank_url: rag-serve rerank server (None: no reranking).
        llm_model_func: LightRAG LLM function (``async (prompt, system_prompt=None, history_messages=None,
            **kw) -> str``).
        vision_model_func: Vision model for image items (``async (prompt, image_data=<base64>,
            system_prompt=..., **kw) -> str``); None: ``llm_model_func`` captions images.
        tokenizer: ``lightrag.utils.Tokenizer``; pass one offline, otherwise LightRAG fetches a tiktoken
            encoding at run time.
        workspace: LightRAG workspace (data isolation inside one working directory); None: LightRAG's
            default (``$WORKSPACE`` or ``""``).
        config: ``raganything.RAGAnythingConfig``; None: one with ``working_dir`` and the environment's
            defaults. Its ``working_dir`` is set to ``working_dir``.
        lightrag_kwargs: Further ``LightRAG(...)`` keyword arguments; they override the ones set here.
        **storage_kwargs: ``vector_db_storage_cls_kwargs`` of the storage (``cosine_better_than_threshold``,
            ``fusion``, ``uri``, ``mm_api_key``, ...); see :mod:`integrations.lightrag_storage`.

    Returns:
        ``raganything.RAGAnything`` (LightRAG is created lazily by its first insert or query).

    Raises:
        MissingExtraError: raganything or lightrag is not installed.

    Example:
        >>> from lightrag.utils import Tokenizer
        >>> from integrations.raganything import build_raganything
        >>> rag = build_raganything(  # doctest: +SKIP
        ...     "./rag", "http://127.0.0.1:8001", mm_url="http://127.0.0.1:8003",
        ...     rerank_url="http://127.0.0.1:8002", llm_model_func=my_llm, vision_model_func=my_vlm,
        ...     tokenizer=Tokenizer("my-model", my_tokenizer), cosine_better_than_threshold=0.2,
        ... )
        >>> await rag.insert_content_list(  # doctest: +SKIP
        ...     [{"type": "text", "text": "Rainfall peaks in November.", "page_idx": 0},
        ...      {"type": "image", "img_path": "/abs/fig2.png", "image_caption": ["Figure 2"], "page_idx": 0}],
        ...     file_path="report.pdf",
        ... )
        >>> await rag.aquery("When does it rain most?", mode="hybrid")  # doctest: +SKIP
    """
    raganything = require("raganything", "lightrag", install=RAGANYTHING_INSTALL)
    require("lightrag", "lightrag")
    from integrations.lightrag_storage import register

    register()
    cfg = config if config is not None else raganything.RAGAnythingConfig(working_dir=str(working_dir))
    cfg.working_dir = str(working_dir)

    vdb_kwargs: dict[str, Any] = dict(storage_kwargs)
    if mm_url is not None:
        vdb_kwargs["mm_base_url"] = mm_url
    params: dict[str, Any] = {
        "working_dir": str(working_dir),
        "vector_storage": VECTOR_STORAGE,
        "vector_db_storage_cls_kwargs": vdb_kwargs,
    }
    if workspace is not None:
        params["workspace"] = workspace
    if tokenizer is not None:
        params["tokenizer"] = tokenizer
    if rerank_url is not None:
        params["rerank_model_func"] = rerank_model_func(rerank_url)
    params.update(lightrag_kwargs or {})

    rag = _compat_class(raganything.RAGAnything)(
        llm_model_func=llm_model_func,
        vision_model_func=vision_model_func,
        embedding_func=embedding_func(text_url),
        config=cfg,
        lightrag_kwargs=params,
    )
    if not rag.check_parser_installation():
        logger.warning(
            "RAG-Anything parser %r is not installed: insert_content_list and queries work, parsing documents "
            "(process_document_complete) does not until it is installed.", cfg.parser,
        )
        rag._parser_installation_checked = True
    return rag
