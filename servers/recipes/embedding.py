"""Embedding recipes: how a model wants its input formatted and its output pooled, as data.

A recipe is resolved from the model's own files (``config.json``, the sentence-transformers ``modules.json``,
``1_Pooling/config.json`` and ``config_sentence_transformers.json``), never from the model's name:

* a sentence-transformers model whose pooling is ``lasttoken`` (Qwen3-Embedding and other decoder
  embedders) and any decoder-only model without sentence-transformers files get last-token pooling: the
  sequence must end with an end token, left padding, the hidden state of the last real token, L2 norm.
  The Qwen3-Embedding model card (``Qwen/Qwen3-Embedding-*`` README, transformers usage) ends every sequence
  with ``<|endoftext|>`` (id 151643), the token the official tokenizer's post-processor appends. The backend
  takes the end token from, in order: the tokenizer's own post-processor (whatever it appends), the recipe's
  :data:`LAST_TOKEN_END` when the vocabulary has it, ``config.json``'s ``eos_token_id``, the tokenizer's
  EOS. (Fine-tunes of Qwen3 chat models often name ``<|im_end|>`` as ``eos_token_id``; taking that first
  would give vectors unlike the model card's and unlike the same checkpoint served with the official
  tokenizer.)
* any other sentence-transformers model runs its own modules (pooling, dense layers) and prompts.

Query instructions: when the model's query prompt has the shape ``Instruct: <task>\\nQuery:`` (the
Qwen3-Embedding / gte-Qwen / e5-mistral convention) the task part becomes the default instruction and a
request's ``instruction`` replaces it; for other models a request's ``instruction`` replaces the query
prompt verbatim.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rag_plugins.protocol import InputType

PoolingKind = Literal["lasttoken", "sentence-transformers"]

#: Task used for queries when neither the model nor the request names one (Qwen3-Embedding's default).
DEFAULT_RETRIEVAL_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
#: Query prompt of decoder embedders that ship without sentence-transformers prompts.
DEFAULT_INSTRUCT_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery:"
#: End token of last-token recipes (Qwen3-Embedding model card), when the tokenizer appends none itself.
LAST_TOKEN_END = "<|endoftext|>"

_INSTRUCT_PROMPT = re.compile(r"^Instruct:\s?(?P<task>.*)\nQuery:\s?$", re.DOTALL)
_DECODER_ARCH_SUFFIXES = ("ForCausalLM",)
_DECODER_MODEL_TYPES = {"qwen2", "qwen3", "llama", "mistral", "gemma", "gemma2", "gemma3_text", "phi3"}


@dataclass(frozen=True)
class EmbeddingRecipe:
    """How to turn (text, input_type, instruction) into model input and the output into a vector.

    Attributes:
        name: Label shown in ``/info``.
        pooling: ``lasttoken`` (run by this project) or ``sentence-transformers`` (the model's modules).
        query_template: Prefix for queries; ``{instruction}`` is replaced by the task when present.
        default_instruction: Task used when a query request names none (None: template has no slot).
        document_prompt: Prefix for documents.
        end_token: Token text every sequence must end with (last-token pooling) when the tokenizer does not
            append one itself, else None.
        eos_token_id: ``config.json``'s EOS id, the fallback when the vocabulary lacks ``end_token``.
        padding_side: ``left`` for last-token pooling so the last column is every row's last token.
        normalize: Whether the model itself L2-normalises (reported in /info; requests choose).
        min_dimensions: Smallest Matryoshka size the model supports.
    """

    name: str
    pooling: PoolingKind
    query_template: str = ""
    default_instruction: str | None = None
    document_prompt: str = ""
    end_token: str | None = None
    eos_token_id: int | None = None
    padding_side: Literal["left", "right"] = "right"
    normalize: bool = True
    min_dimensions: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def query_prefix(self, instruction: str | None) -> str:
        """Prompt put before a query's text."""
        if "{instruction}" in self.query_template:
            task = instruction if instruction is not None else (self.default_instruction or "")
            return self.query_template.replace("{instruction}", task)
        if instruction is not None:
            return instruction
        return self.query_template

    def format(self, text: str, input_type: InputType, instruction: str | None = None) -> str:
        """The string that is tokenized for ``text``."""
        if input_type == "query":
            return self.query_prefix(instruction) + text
        return self.document_prompt + text


def read_json(path: Path) -> dict[str, Any] | list[Any] | None:
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] | list[Any] = json.load(fh)
    return data


def _split_instruct_prompt(prompt: str) -> tuple[str, str | None]:
    """``"Instruct: T\\nQuery:"`` -> (template with ``{instruction}``, T); other prompts unchanged."""
    match = _INSTRUCT_PROMPT.match(prompt)
    if match is None:
        return prompt, None
    return DEFAULT_INSTRUCT_QUERY_TEMPLATE, match.group("task")


def is_decoder_config(config: dict[str, Any]) -> bool:
    """True for decoder-only language models (their embeddings come from the last token)."""
    archs = config.get("architectures") or []
    if any(str(a).endswith(_DECODER_ARCH_SUFFIXES) for a in archs):
        return True
    return str(config.get("model_type", "")) in _DECODER_MODEL_TYPES


def _eos_id(config: dict[str, Any]) -> int | None:
    eos = config.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return int(eos) if eos is not None else None


def _st_pooling_config(model_dir: Path, modules: list[Any]) -> dict[str, Any]:
    for module in modules:
        if str(module.get("type", "")).endswith("Pooling"):
            data = read_json(model_dir / str(module.get("path", "")) / "config.json")
            return data if isinstance(data, dict) else {}
    return {}


def _has_normalize(modules: list[Any]) -> bool:
    return any(str(m.get("type", "")).endswith("Normalize") for m in modules)


def resolve_embedding_recipe(model_dir: Path) -> EmbeddingRecipe:
    """Read the model's files in ``model_dir`` and return its recipe."""
    config = read_json(model_dir / "config.json")
    config = config if isinstance(config, dict) else {}
    modules = read_json(model_dir / "modules.json")
    st_config = read_json(model_dir / "config_sentence_transformers.json")
    prompts: dict[str, str] = {}
    if isinstance(st_config, dict):
        prompts = {str(k): str(v) for k, v in (st_config.get("prompts") or {}).items()}
    query_prompt = prompts.get("query", "")
    document_prompt = prompts.get("document", prompts.get("passage", ""))
    query_template, default_instruction = _split_instruct_prompt(query_prompt)

    if isinstance(modules, list):
        pooling = _st_pooling_config(model_dir, modules)
        lasttoken = bool(pooling.get("pooling_mode_lasttoken")) or pooling.get("pooling_mode") == "lasttoken"
        if lasttoken:
            return EmbeddingRecipe(
                name="last-token (sentence-transformers config)",
                pooling="lasttoken",
                query_template=query_template,
                default_instruction=default_instruction,
                document_prompt=document_prompt,
                end_token=LAST_TOKEN_END,
                eos_token_id=_eos_id(config),
                padding_side="left",
                normalize=_has_normalize(modules),
                min_dimensions=32,
            )
        return EmbeddingRecipe(
            name="sentence-transformers",
            pooling="sentence-transformers",
            query_template=query_template,
            default_instruction=default_instruction,
            document_prompt=document_prompt,
            normalize=_has_normalize(modules),
            min_dimensions=1,
        )

    if is_decoder_config(config):
        return EmbeddingRecipe(
            name="last-token (decoder default)",
            pooling="lasttoken",
            query_template=DEFAULT_INSTRUCT_QUERY_TEMPLATE,
            default_instruction=DEFAULT_RETRIEVAL_INSTRUCTION,
            document_prompt="",
            end_token=LAST_TOKEN_END,
            eos_token_id=_eos_id(config),
            padding_side="left",
            normalize=True,
            min_dimensions=32,
        )
    # A plain encoder without sentence-transformers files: sentence-transformers wraps it with mean pooling.
    return EmbeddingRecipe(name="sentence-transformers (mean pooling)", pooling="sentence-transformers")
