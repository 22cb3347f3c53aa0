"""Wire protocol shared by the servers and the clients (pydantic, torch-free).

Request models validate what a client may send; response models document what the servers return and are
used by clients to parse it. The servers serialise embeddings straight from numpy (see
``servers.responses``) because building one pydantic float per vector element is too slow for bulk
ingestion; the shapes are the ones declared here.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

InputType = Literal["query", "document"]
EncodingFormat = Literal["float", "base64"]

#: Spellings of ``input_type`` that clients in the field send, mapped to the two kinds the recipes know.
INPUT_TYPE_ALIASES: dict[str, InputType] = {
    "query": "query",
    "search_query": "query",
    "document": "document",
    "passage": "document",
    "search_document": "document",
}

#: Seed ``prompt`` names of ``POST /embed_image``: ``X2Y`` names a retrieval task whose queries have modality X
#: and whose documents have modality Y (``t`` text, ``i`` image, ``it`` image+text). The images sent to
#: ``/embed_image`` are embedded as documents when the task retrieves images (Y holds ``i``), and as queries
#: when it retrieves texts from images (``i2t``, ``it2t``). To embed the query side of an image-to-image
#: task, send ``input_type: "query"``.
IMAGE_PROMPT_INPUT_TYPES: dict[str, InputType] = {
    "t2i": "document",
    "i2i": "document",
    "it2i": "document",
    "t2it": "document",
    "i2it": "document",
    "it2it": "document",
    "i2t": "query",
    "it2t": "query",
}

NonEmptyText = Annotated[str, Field(min_length=1)]


def _normalise_input_type(value: Any) -> Any:
    if value is None or not isinstance(value, str):
        return value
    key = value.strip().lower()
    if key not in INPUT_TYPE_ALIASES:
        allowed = ", ".join(sorted(INPUT_TYPE_ALIASES))
        raise ValueError(f"unknown input_type {value!r}; use one of: {allowed}")
    return INPUT_TYPE_ALIASES[key]


def _normalise_image_input_type(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in IMAGE_PROMPT_INPUT_TYPES:
        return IMAGE_PROMPT_INPUT_TYPES[value.strip().lower()]
    try:
        return _normalise_input_type(value)
    except ValueError:
        allowed = ", ".join(sorted({*INPUT_TYPE_ALIASES, *IMAGE_PROMPT_INPUT_TYPES}))
        raise ValueError(f"unknown input_type/prompt {value!r}; use one of: {allowed}") from None


def _reject_blank(texts: list[str]) -> list[str]:
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"item {i} is empty or whitespace only; every text must have content")
    return texts


class StrictRequest(BaseModel):
    """Base for request bodies: unknown fields are ignored, values are never coerced across types."""

    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)


def wire_body(request: BaseModel) -> dict[str, Any]:
    """The JSON body of a request model that a client built with ``model_construct``.

    Clients do not validate what they send (the server does, and answers with the message users need); the
    fields left unset, and those set to None, stay out of the body so the server's defaults apply.
    """
    body: dict[str, Any] = request.model_dump(exclude_unset=True, exclude_none=True, warnings=False)
    return body


# --------------------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------------------


class EmbedRequest(StrictRequest):
    """Body of ``POST /embed`` (the project's native shape)."""

    texts: list[NonEmptyText] = Field(min_length=1, description="Texts to embed, in order.")
    input_type: InputType = Field(
        default="document",
        validation_alias=AliasChoices("input_type", "prompt"),
        description='"query" gets the model\'s query instruction; "document" (alias "passage") gets none.',
    )
    instruction: str | None = Field(
        default=None, description="Task instruction for queries; the model's default when omitted."
    )
    dimensions: int | None = Field(
        default=None, ge=1, description="Matryoshka truncation: keep the first N dimensions, re-normalised."
    )
    normalize: bool = Field(default=True, description="L2-normalise the returned vectors.")
    truncate: bool = Field(
        default=True, description="Truncate over-long texts to the server's max length (false: 413 instead)."
    )
    encoding_format: EncodingFormat = Field(
        default="float", description='"base64" returns little-endian float32 bytes per vector (extension).'
    )

    _check_input_type = field_validator("input_type", mode="before")(_normalise_input_type)
    _check_texts = field_validator("texts")(_reject_blank)


class Usage(BaseModel):
    """Token accounting of one request."""

    prompt_tokens: int = Field(description="Tokens fed to the model, after templates and truncation.")
    total_tokens: int = Field(default=0, description="Same as prompt_tokens for embedding and rerank models.")


class EmbedResponse(BaseModel):
    """Answer of ``POST /embed`` and ``POST /embed_image``."""

    embeddings: list[list[float]] | list[str] = Field(description="One vector per input, input order.")
    dim: int = Field(description="Length of each vector.")
    model: str = Field(description="Served model name.")
    usage: Usage

    def as_array(self) -> np.ndarray:
        """Return the vectors as a float32 array of shape (n, dim)."""
        return embeddings_to_array(self.embeddings, self.dim)


def embeddings_to_array(items: list[list[float]] | list[str], dim: int) -> np.ndarray:
    """Turn float lists or base64 float32 strings into one (n, dim) float32 array."""
    if not items:
        return np.zeros((0, dim), dtype=np.float32)
    if isinstance(items[0], str):
        rows = [decode_base64_vector(str(s)) for s in items]
        return np.stack(rows).astype(np.float32, copy=False)
    return np.asarray(items, dtype=np.float32)


def decode_base64_vector(data: str) -> np.ndarray:
    """Decode one base64 string of little-endian float32 values (the OpenAI ``base64`` format)."""
    return np.frombuffer(base64.b64decode(data), dtype="<f4")


class OpenAIEmbeddingRequest(StrictRequest):
    """Body of ``POST /v1/embeddings`` (OpenAI shape plus ``input_type`` / ``instruction`` extensions)."""

    model_config = ConfigDict(extra="ignore", strict=False, populate_by_name=True)

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, texts, one token-id array or several token-id arrays."
    )
    model: str | None = Field(default=None, description="Ignored beyond validation: one model per server.")
    encoding_format: EncodingFormat = Field(default="float")
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    input_type: InputType = Field(default="document", validation_alias=AliasChoices("input_type", "prompt"))
    instruction: str | None = None

    _check_input_type = field_validator("input_type", mode="before")(_normalise_input_type)

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        # Validate by hand so the message says what is wrong instead of four union branches' errors.
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("input is an empty string")
            return value
        if not isinstance(value, list):
            raise ValueError("input must be a string, a list of strings, or token-id arrays")
        if not value:
            raise ValueError("input is an empty list")
        if all(isinstance(v, str) for v in value):
            _reject_blank(value)
            return value
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            if any(v < 0 for v in value):
                raise ValueError("token ids must be non-negative")
            return value
        if all(isinstance(v, list) for v in value):
            for i, row in enumerate(value):
                if not row:
                    raise ValueError(f"token array {i} is empty")
                if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in row):
                    raise ValueError(f"token array {i} must hold non-negative integers only")
            return value
        raise ValueError("input items must all be strings, or all be token ids, or all be token-id arrays")

    def items(self) -> list[str] | list[list[int]]:
        """Inputs as a list of texts or a list of token-id arrays."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int):
            return [list(self.input)]  # type: ignore[arg-type]
        return list(self.input)  # type: ignore[return-value]


class OpenAIEmbeddingData(BaseModel):
    """One vector of the OpenAI-shaped answer."""

    object: Literal["embedding"] = "embedding"
    index: int = Field(description="Input index.")
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32.")


class OpenAIEmbeddingResponse(BaseModel):
    """Answer of ``POST /v1/embeddings`` (OpenAI shape)."""

    object: Literal["list"] = "list"
    data: list[OpenAIEmbeddingData]
    model: str
    usage: Usage

    def as_array(self) -> np.ndarray:
        """Return the vectors in input order as a float32 array of shape (n, dim)."""
        rows = [d.embedding for d in sorted(self.data, key=lambda d: d.index)]
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        if isinstance(rows[0], str):
            return embeddings_to_array([str(r) for r in rows], 0)
        return embeddings_to_array([r for r in rows if isinstance(r, list)], len(rows[0]))


# --------------------------------------------------------------------------------------------------------
# Reranking
# --------------------------------------------------------------------------------------------------------


class DocInput(StrictRequest):
    """A document (or query) that may carry an image for multimodal rerankers."""

    text: str | None = None
    image: Any | None = Field(default=None, description="ImageInput: data URI, base64, {path}, {url}.")

    @model_validator(mode="after")
    def _needs_content(self) -> DocInput:
        if (self.text is None or not self.text.strip()) and self.image is None:
            raise ValueError("a document needs a non-empty text or an image")
        return self


def _doc_text(doc: str | DocInput) -> str:
    return doc if isinstance(doc, str) else (doc.text or "")


def _reject_blank_query(value: str | DocInput) -> str | DocInput:
    if isinstance(value, str) and not value.strip():
        raise ValueError("query is empty or whitespace only")
    return value


def _reject_blank_texts(value: str | list[str]) -> str | list[str]:
    for i, text in enumerate([value] if isinstance(value, str) else value):
        if not text.strip():
            raise ValueError(f"item {i} is empty or whitespace only")
    return value


class RerankRequest(StrictRequest):
    """Body of ``POST /rerank``: native shape, or the TEI shape when ``texts`` is given instead of ``docs``."""

    query: NonEmptyText | DocInput = Field(
        description='The search query: a text, or {"text"?, "image"?} for multimodal rerankers.'
    )
    docs: list[NonEmptyText | DocInput] | None = Field(default=None, description="Documents to score.")
    texts: list[NonEmptyText] | None = Field(default=None, description="TEI alias of docs (TEI answer).")
    instruction: str | None = Field(default=None, description="Task instruction; model default if omitted.")
    top_n: int | None = Field(default=None, ge=0, description="Only the best N in `order`.")
    truncate: bool = Field(default=True, description="Truncate over-long pairs (false: 413 instead).")
    raw_scores: bool = Field(default=False, description="TEI: scores before the activation (e.g. logits).")
    return_text: bool = Field(default=False, description="TEI: echo each document's text.")

    _check_query = field_validator("query")(_reject_blank_query)

    @model_validator(mode="after")
    def _one_list(self) -> RerankRequest:
        if self.docs is None and self.texts is None:
            raise ValueError("give the documents as `docs` (or `texts` for the TEI shape)")
        if self.docs is not None and self.texts is not None:
            raise ValueError("give either `docs` or `texts`, not both")
        documents = self.docs if self.docs is not None else self.texts
        if not documents:
            raise ValueError("no documents to rerank")
        return self

    @property
    def is_tei(self) -> bool:
        return self.texts is not None

    def documents(self) -> list[str | DocInput]:
        return list(self.docs if self.docs is not None else (self.texts or []))


class RerankResponse(BaseModel):
    """Answer of ``POST /rerank`` (native shape)."""

    scores: list[float] = Field(description="One score per document, input order.")
    order: list[int] = Field(description="Document indices, best first (cut to top_n).")
    indices: list[int] = Field(description="Seed-API name of `order` (the same list).")
    model: str = Field(description="Served model name.")
    usage: Usage


class TeiRerankHit(BaseModel):
    """One item of the TEI-shaped ``POST /rerank`` answer (a list, best first)."""

    index: int = Field(description="Document index in the request.")
    score: float = Field(description="Score (raw_scores=true: before the activation).")
    text: str | None = Field(default=None, description="The document's text, when return_text=true.")


class CohereRerankRequest(StrictRequest):
    """Body of ``POST /v1/rerank`` and ``/v2/rerank`` (Cohere / Jina shape)."""

    model: str | None = Field(default=None, description="Ignored beyond validation: one model per server.")
    query: NonEmptyText | DocInput = Field(description='A text, or {"text"?, "image"?} for multimodal rerankers.')
    documents: list[NonEmptyText | DocInput] = Field(min_length=1, description="Documents to score.")
    top_n: int | None = Field(default=None, ge=0, description="Only the best N results.")
    return_documents: bool = Field(default=False, description="Echo each result's document text.")
    instruction: str | None = Field(default=None, description="Task instruction (extension).")
    max_chunks_per_doc: int | None = None

    _check_query = field_validator("query")(_reject_blank_query)


class DocumentText(BaseModel):
    """A document echoed back (``return_documents=true``)."""

    text: str


class RerankResult(BaseModel):
    """One result of the Cohere/Jina rerank answer."""

    index: int = Field(description="Document index in the request.")
    relevance_score: float = Field(description="Score after the model's activation.")
    document: DocumentText | None = Field(default=None, description="Present when return_documents=true.")


class CohereRerankResponse(BaseModel):
    """Answer of ``POST /v1/rerank`` and ``/v2/rerank``: results best first."""

    id: str
    model: str
    results: list[RerankResult]
    usage: Usage


class ScoreRequest(StrictRequest):
    """Body of ``POST /score`` and ``/v1/score`` (vLLM shape): 1→N or N↔N pairs."""

    model: str | None = None
    text_1: NonEmptyText | list[NonEmptyText] = Field(validation_alias=AliasChoices("text_1", "queries"))
    text_2: NonEmptyText | list[NonEmptyText] = Field(validation_alias=AliasChoices("text_2", "documents"))
    instruction: str | None = None

    _check_texts = field_validator("text_1", "text_2")(_reject_blank_texts)

    @model_validator(mode="after")
    def _pairable(self) -> ScoreRequest:
        left = [self.text_1] if isinstance(self.text_1, str) else self.text_1
        right = [self.text_2] if isinstance(self.text_2, str) else self.text_2
        if not left or not right:
            raise ValueError("text_1 and text_2 must not be empty")
        if len(left) != 1 and len(left) != len(right):
            raise ValueError(
                f"text_1 has {len(left)} items and text_2 {len(right)}: give one query or equal-length lists"
            )
        return self

    def pairs(self) -> list[tuple[str, str]]:
        left = [self.text_1] if isinstance(self.text_1, str) else self.text_1
        right = [self.text_2] if isinstance(self.text_2, str) else self.text_2
        if len(left) == 1:
            left = left * len(right)
        return list(zip(left, right, strict=True))


class ScoreData(BaseModel):
    """One pair's score in the vLLM score answer."""

    index: int = Field(description="Pair index.")
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    """Answer of ``POST /score`` and ``/v1/score`` (vLLM shape): one score per pair, pair order."""

    id: str
    object: Literal["list"] = "list"
    created: int = Field(description="Unix time of the answer.")
    model: str
    data: list[ScoreData]
    usage: Usage


# --------------------------------------------------------------------------------------------------------
# Errors and info
# --------------------------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    message: str = Field(description="What went wrong and how to fix it.")
    type: str = Field(description="Machine-readable class, e.g. invalid_request_error, overloaded_error.")
    code: int = Field(description="HTTP status code.")


class ErrorEnvelope(BaseModel):
    """The one error shape every route returns."""

    error: ErrorBody


class HealthResponse(BaseModel):
    """Answer of ``GET /health`` and ``GET /healthz`` when the model is loaded and warmed up."""

    status: Literal["ok"] = "ok"
    model: str


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models`` (OpenAI shape)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: str


class ModelList(BaseModel):
    """Answer of ``GET /v1/models``: the one model this server holds."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ServerInfo(BaseModel):
    """Answer of ``GET /info``: the model, where it runs, and every limit the server applies.

    Kind-specific facts (pooling, pixel range, modalities …) come as extra fields.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str = Field(description="Served model name.")
    kind: str = Field(description="Server kind: embed, rerank, mm-embed, search.")
    dim: int | None = Field(default=None, description="Vector length (embedding servers).")
    dtype: str | None = Field(default=None, description="Model dtype (model servers).")
    device: str | None = Field(default=None, description="Model device (model servers).")
    attention: str | None = None
    max_length: int | None = Field(default=None, description="Max tokens per input (model limit and --max-length).")
    recipe: str | None = Field(default=None, description="Model recipe resolved from the model's files.")
    scoring: str | None = Field(default=None, description="How a reranker scores (rerank servers).")
    default_instruction: str | None = None
    max_batch_tokens: int
    max_batch_size: int
    max_wait_ms: float
    max_queue_items: int
    max_client_batch: int
    bulk_workers: int = Field(description="Model threads of the bulk lane.")
    retry_after_s: int = Field(description="Minimum Retry-After seconds on 429.")
    priority_max_items: int = Field(description="Requests with at most this many items use the priority lane.")
    priority_max_tokens: int = Field(description="Token bound of priority-lane requests.")
    tokenizer_threads: int
    warmup: bool = Field(description="A warm-up forward ran before the server reported healthy.")
    max_body_bytes: int = Field(description="Max request body size.")
    auth_required: bool = Field(description="Routes other than /health and /healthz need a Bearer key.")
    gc_freeze: bool = Field(
        default=False, description="The start-up heap is frozen out of garbage collection (--gc-freeze).")
    gc_frozen_objects: int | None = Field(
        default=None, description="Objects the garbage collector skips now (frozen at start-up and after acceleration).")
    gc_freezes: list[dict[str, Any]] | None = Field(
        default=None, description="Each freeze so far: reason, objects frozen after it, seconds it took.")
    milvus_uri: str | None = Field(default=None, description="Search server: Milvus URI of its collection.")
    collection: str | None = Field(default=None, description="Search server: the collection it searches.")
    upstreams: dict[str, str] | None = Field(
        default=None, description="Search server: base URLs of the embed, mm_embed and rerank servers it calls.")


# --------------------------------------------------------------------------------------------------------
# Multimodal embeddings (mm-embed server)
# --------------------------------------------------------------------------------------------------------


def _check_image_input(value: Any) -> Any:
    """An ``ImageInput``: a data URI / base64 string, or an object with exactly one of base64, path, url."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("image is an empty string")
        return value
    if isinstance(value, dict):
        keys = [k for k in ("base64", "path", "url") if value.get(k) is not None]
        if len(keys) != 1 or not isinstance(value[keys[0]], str) or not value[keys[0]].strip():
            raise ValueError('an image object needs exactly one non-empty string field: "base64", "path" or "url"')
        return {keys[0]: value[keys[0]]}
    raise ValueError('an image is a data URI, a base64 string, or {"base64"|"path"|"url": str}')


ImageInput = Annotated[str | dict[str, str], Field(description="Data URI, base64, {base64}, {path}, {url}.")]


class EmbedImageRequest(StrictRequest):
    """Body of ``POST /embed_image``: images, optionally fused with one text each."""

    images: list[ImageInput] = Field(min_length=1, description="Images to embed, in order.")
    texts: list[str] | None = Field(default=None, description="Same length as images: fused image+text inputs.")
    input_type: InputType = Field(
        default="document",
        validation_alias=AliasChoices("input_type", "prompt"),
        description='"query" or "document" (aliases as for /embed), or a seed prompt name t2i, i2i, it2i, t2it, '
        'i2it, it2it (document) or i2t, it2t (query).',
    )
    instruction: str | None = Field(default=None, description="Task instruction for queries.")
    dimensions: int | None = Field(default=None, ge=1, description="Matryoshka truncation, re-normalised.")
    normalize: bool = Field(default=True, description="L2-normalise the returned vectors.")
    encoding_format: EncodingFormat = Field(default="float", description='"base64": little-endian float32.')

    _check_input_type = field_validator("input_type", mode="before")(_normalise_image_input_type)

    @field_validator("images", mode="before")
    @classmethod
    def _check_images(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [_check_image_input(v) for v in value]
        return value

    @model_validator(mode="after")
    def _same_length(self) -> EmbedImageRequest:
        if self.texts is not None and len(self.texts) != len(self.images):
            raise ValueError(f"texts has {len(self.texts)} items but images has {len(self.images)}; give one each")
        return self


class MultiModalItem(StrictRequest):
    """One ``/v1/embeddings`` input of the multimodal server: a text, an image, or both."""

    text: str | None = None
    image: ImageInput | None = None

    @field_validator("image", mode="before")
    @classmethod
    def _check_image(cls, value: Any) -> Any:
        return None if value is None else _check_image_input(value)

    @model_validator(mode="after")
    def _needs_content(self) -> MultiModalItem:
        if self.image is None and not (self.text and self.text.strip()):
            raise ValueError('an input item needs "text" or "image"')
        return self


class MultiModalEmbeddingRequest(StrictRequest):
    """Body of ``POST /v1/embeddings`` on the multimodal server (OpenAI shape, items may carry images)."""

    model_config = ConfigDict(extra="ignore", strict=False, populate_by_name=True)

    input: NonEmptyText | list[NonEmptyText | MultiModalItem] = Field(
        description='A text, or a list of texts and {"text"?, "image"?} items.'
    )
    model: str | None = None
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    input_type: InputType = Field(default="document", validation_alias=AliasChoices("input_type", "prompt"))
    instruction: str | None = None

    _check_input_type = field_validator("input_type", mode="before")(_normalise_input_type)

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("input is an empty list")
        return value

    def items(self) -> list[MultiModalItem]:
        """Every input as an item (strings become text-only items)."""
        raw = [self.input] if isinstance(self.input, str) else list(self.input)
        return [MultiModalItem(text=v) if isinstance(v, str) else v for v in raw]



# --------------------------------------------------------------------------------------------------------
# Hybrid search (search server; the core is rag_plugins.milvus.search_service)
# --------------------------------------------------------------------------------------------------------

#: RRF ``k`` when a request does not choose one (the same as ``rag_plugins.milvus.fusion.DEFAULT_RRF_K``).
SEARCH_DEFAULT_RRF_K = 60


class SearchRequest(BaseModel):
    """A hybrid search over ``text_vec`` and ``image_vec`` (``POST /search``).

    A text query is embedded into ``text_vec`` (text model) and into the image space (multimodal model's
    text side); an image query into the image space (fused with the text when both are given). Fields with
    no query vector, or disabled with ``use_text`` / ``use_image``, are not searched.
    """

    text: str | None = Field(None, description="Query text.")
    image: str | None = Field(None, description="Query image: path, URL, data URI or base64.")
    fusion: Literal["rrf", "weighted"] = "rrf"
    weights: tuple[float, float] = Field((0.5, 0.5), description="(alpha, 1 - alpha) for text_vec / image_vec.")
    rrf_k: int = SEARCH_DEFAULT_RRF_K
    text_limit: int | None = Field(None, ge=1, description="Candidates from text_vec (default top_k).")
    image_limit: int | None = Field(None, ge=1, description="Candidates from image_vec (default top_k).")
    filters: str | dict[str, Any] | None = Field(None, description="Milvus expression or {field: value | [values]}.")
    top_k: int = Field(10, ge=1, description="Fused candidates kept.")
    use_text: bool = True
    use_image: bool = True
    rerank: bool = False
    top_n: int | None = Field(None, ge=1, description="Candidates kept after the rerank stage (default all).")
    output_fields: list[str] | None = Field(None, description="Stored fields returned (default all scalars).")

    @model_validator(mode="after")
    def _needs_query(self) -> SearchRequest:
        if not self.text and self.image is None:
            raise ValueError("give a text and/or an image query")
        return self


class Candidate(BaseModel):
    """One answer: primary key, fused score, rerank score (when reranked) and stored fields."""

    id: str
    score: float = Field(description="Fused score (RRF or weighted) from the vector search.")
    rerank_score: float | None = None
    fields: dict[str, Any] = Field(default_factory=dict)


class SearchResponse(BaseModel):
    """Candidates best first (by rerank score when reranked, else by fused score)."""

    candidates: list[Candidate]
    fields_searched: list[str]
    reranked: bool = False
    timings_ms: dict[str, float] = Field(
        default_factory=dict, description="Milliseconds per stage: embed, search, and rerank when reranked.")


__all__ = [
    "IMAGE_PROMPT_INPUT_TYPES",
    "INPUT_TYPE_ALIASES",
    "SEARCH_DEFAULT_RRF_K",
    "Candidate",
    "CohereRerankRequest",
    "CohereRerankResponse",
    "DocInput",
    "DocumentText",
    "EmbedImageRequest",
    "EmbedRequest",
    "EmbedResponse",
    "EncodingFormat",
    "ErrorBody",
    "ErrorEnvelope",
    "HealthResponse",
    "ImageInput",
    "InputType",
    "ModelCard",
    "ModelList",
    "MultiModalEmbeddingRequest",
    "MultiModalItem",
    "OpenAIEmbeddingRequest",
    "OpenAIEmbeddingResponse",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "ScoreData",
    "ScoreRequest",
    "ScoreResponse",
    "SearchRequest",
    "SearchResponse",
    "ServerInfo",
    "TeiRerankHit",
    "Usage",
    "decode_base64_vector",
    "embeddings_to_array",
    "wire_body",
]
