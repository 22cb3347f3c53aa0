"""Rerank recipes: how a model turns a (query, document) pair into one relevance score, as data.

A recipe is resolved from the model's own files (``config.json``, the sentence-transformers files
``modules.json`` / ``config_sentence_transformers.json``, and the tokenizer's vocabulary), never from the
model's name. The rules, first match wins:

0. **Yes/no vision-language reranker** (multimodal): ``config.json`` has a ``model_type`` of
   :data:`VISION_RERANKERS` and ``architectures`` lists a ``*ForConditionalGeneration`` or ``*ForCausalLM``
   class (a causal LM with an LM head), and the tokenizer maps ``"yes"`` / ``"no"`` to single tokens and has
   the ChatML tokens and the vision tokens ``<|vision_start|>`` ``<|image_pad|>`` ``<|vision_end|>``. Query
   and documents may each carry an image (``DocInput`` ``{"text", "image"}``); each side is ``{IMG}{text}``
   with ``IMG = <|vision_start|><|image_pad|><|vision_end|>`` when it has an image (the pad expanded to the
   image's token count from the image processor's grid, as for the embedders). The template is the model
   type's:

   * ``qwen2_vl`` (Qwen2-VL-based yes/no rerankers): :data:`QWEN3_RERANKER_TEMPLATE`, pixels 256..1280 x 28²;
   * ``qwen3_vl`` (Qwen3-VL-Reranker): :data:`QWEN3_VL_RERANKER_TEMPLATE`, the official reranker's chat turn
     (system judge prompt; user ``<Instruct>: {instruction}<Query>:{query}\n<Document>:{doc}``; generation
     prompt ``<|im_start|>assistant\n``; an empty side is ``NULL``), pixels 4..1280 x 32²;
   * ``qwen2_5_vl`` (Lychee-Rerank-MM, ``vec-ai/lychee-rerank-mm``): :data:`LYCHEE_RERANK_MM_TEMPLATE`, the
     chat turn its published usage code builds and renders with the Qwen2.5-VL chat template (system judge
     prompt; user content parts ``<Instruct>: {instruction}``, ``<Query>:``, the query's image and text,
     ``\n<Document>:``, the document's image and text, concatenated with nothing between them; generation
     prompt added; an empty side is nothing), images first resized by qwen-vl-utils' ``fetch_image`` (as its
     ``process_vision_info`` call does) then by the image processor within 4..1280 x 28², max length 3200,
     M-RoPE positions (the model's own forward), run on ``Qwen2_5_VLForConditionalGeneration``.

   ``--prompt-template FILE`` replaces the template of any yes/no reranker (text or vision) with a JSON file
   ``{"prefix", "middle", "suffix", "default_instruction"?, "empty_side"?}`` (see :func:`load_pair_template`),
   so a model card's prompt can be matched without code.

   The whole prompt is tokenized at once, M-RoPE positions come from the model's ``get_rope_index``, left
   padding, and the score is ``sigmoid(logit_yes - logit_no)`` of the last position with the yes/no ids from
   the tokenizer (the official Qwen3-VL-Reranker code scores ``sigmoid((w_yes - w_no) . h)``, the same number).
   Only texts are truncated (document text first), never images. A ``qwen3_vl`` repository with a
   sentence-transformers ``Pooling`` module is an embedding model and is refused here (serve it with
   ``mm-embed``). Another vision-language model (``config.json`` with a ``vision_config``) is refused with an
   error naming the supported types.
1. **Sentence-transformers cross-encoder** (``config_sentence_transformers.json`` says
   ``"model_type": "CrossEncoder"``, or ``modules.json`` lists a ``LogitScore`` module, or ``config.json``
   carries the cross-encoder keys ``sentence_transformers`` / ``sbert_ce_default_activation_function``):
   a causal-LM architecture is scored like rule 3, anything else like rule 4.
2. **Sentence-transformers bi-encoder** (``modules.json`` with a ``Pooling`` module, e.g. all-MiniLM-L6-v2
   or Qwen3-Embedding): both texts are embedded with the model's embedding recipe and the score is their
   cosine; ``/info`` reports ``"scoring": "cosine (bi-encoder)"``.
3. **Yes/no causal-LM reranker** (Qwen3-Reranker): ``architectures`` lists a ``*ForCausalLM`` class, and
   the tokenizer maps ``"yes"`` and ``"no"`` to single tokens and has the ChatML tokens ``<|im_start|>`` /
   ``<|im_end|>`` the template is written in. The pair is formatted with :data:`QWEN3_RERANKER_TEMPLATE`,
   the middle part tokenized without special tokens and truncated so that
   prefix + middle + suffix <= max_length, left-padded, and scored as
   ``sigmoid(logit_yes - logit_no)`` of the last position (== softmax over [no, yes]). The token ids come
   from the tokenizer (``convert_tokens_to_ids``, checked against ``encode``), never from constants.
4. **Sequence-classification cross-encoder** (``architectures`` lists a ``*ForSequenceClassification``
   class): an encoder (BERT, XLM-R, ...) gets the tokenizer's own pair encoding (``[CLS] q [SEP] d [SEP]``,
   ``longest_first`` truncation, right padding); a decoder (``Qwen3ForSequenceClassification``, i.e. the
   converted ``*-seq-cls`` Qwen3 rerankers, whose one logit is ``logit_yes - logit_no``) whose tokenizer has
   the ChatML tokens gets the same Qwen3-Reranker template as rule 3 and last-token pooling. The activation
   is the one the config names (``sentence_transformers.activation_fn`` in ``config.json`` or
   ``activation_fn`` in ``config_sentence_transformers.json``: Sigmoid, Identity or Tanh); otherwise
   sigmoid for one label. Two-label heads score ``logit_1 - logit_0`` (so sigmoid gives softmax[1]).
5. Anything else cannot rerank: a clear error names what was found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from servers.recipes.embedding import (
    DEFAULT_RETRIEVAL_INSTRUCTION,
    EmbeddingRecipe,
    read_json,
    resolve_embedding_recipe,
)
from servers.recipes.multimodal import QWEN_VL_FETCH_IMAGE, ImagePreResize, PositionScheme

logger = logging.getLogger(__name__)

RerankKind = Literal["decoder", "vision-decoder", "cross-encoder", "bi-encoder"]
Activation = Literal["sigmoid", "identity", "tanh"]

#: Decoder model types that can run as a last-token sequence classifier.
_DECODER_MODEL_TYPES = frozenset({"qwen2", "qwen3", "qwen3_moe", "llama", "mistral", "gemma", "gemma2", "phi3"})
_CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
_VISION_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
_ACTIVATIONS: dict[str, Activation] = {"sigmoid": "sigmoid", "identity": "identity", "tanh": "tanh"}


@dataclass(frozen=True)
class PairTemplate:
    """Text around a (query, document) pair for template-driven rerankers (Qwen3-Reranker).

    Attributes:
        prefix: Tokenized once, never truncated.
        middle: Format string with ``{instruction}``, ``{query}`` and ``{doc}``; the only part truncated.
        suffix: Tokenized once, never truncated; the score is read at its last token.
        default_instruction: Task used when neither the request nor ``--instruction`` names one.
        empty_side: What stands for a query or document with neither text nor image.
    """

    prefix: str
    middle: str
    suffix: str
    default_instruction: str
    empty_side: str = ""

    def format_middle(self, instruction: str, query: str, doc: str) -> str:
        """The part of the prompt that holds the request's texts."""
        return self.middle.format(instruction=instruction, query=query, doc=doc)


#: The Qwen3-Reranker prompt, from the model card.
QWEN3_RERANKER_TEMPLATE = PairTemplate(
    prefix=(
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    ),
    middle="<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}",
    suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    default_instruction=DEFAULT_RETRIEVAL_INSTRUCTION,
)
_JUDGE_SYSTEM_PROMPT = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that '
    'the answer can only be "yes" or "no".'
)
#: Qwen3-VL-Reranker's prompt: the official reranker's chat turn rendered by the Qwen3-VL chat template (its
#: content parts are concatenated with nothing between them), with the generation prompt and no think block.
QWEN3_VL_RERANKER_TEMPLATE = PairTemplate(
    prefix=f"<|im_start|>system\n{_JUDGE_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n",
    middle="<Instruct>: {instruction}<Query>:{query}\n<Document>:{doc}",
    suffix="<|im_end|>\n<|im_start|>assistant\n",
    default_instruction="Given a search query, retrieve relevant candidates that answer the query.",
    empty_side="NULL",
)
#: Lychee-Rerank-MM's prompt: the published usage code's chat turn rendered by the Qwen2.5-VL chat template.
LYCHEE_RERANK_MM_TEMPLATE = PairTemplate(
    prefix=f"<|im_start|>system\n{_JUDGE_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n",
    middle="<Instruct>: {instruction}<Query>:{query}\n<Document>:{doc}",
    suffix="<|im_end|>\n<|im_start|>assistant\n",
    default_instruction=DEFAULT_RETRIEVAL_INSTRUCTION,
    empty_side="",
)
_TEMPLATE_FIELDS = frozenset({"prefix", "middle", "suffix", "default_instruction", "empty_side"})


def load_pair_template(path: Path, base: PairTemplate) -> PairTemplate:
    """A :class:`PairTemplate` from a JSON file; keys it leaves out keep ``base``'s values.

    The file holds ``prefix``, ``middle`` (with the ``{instruction}``, ``{query}`` and ``{doc}`` slots, each
    once; write literal braces as ``{{`` / ``}}``), ``suffix`` and optionally ``default_instruction`` and
    ``empty_side``.

    Raises:
        ValueError: the file is missing, not a JSON object, has unknown keys, or ``middle`` lacks a slot.
    """
    import json
    import string

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--prompt-template {path}: cannot read a JSON object ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"--prompt-template {path}: expected a JSON object of strings")
    unknown = set(data) - _TEMPLATE_FIELDS
    if unknown:
        raise ValueError(f"--prompt-template {path}: unknown keys {sorted(unknown)} (known: {sorted(_TEMPLATE_FIELDS)})")
    template = PairTemplate(**{**{f: getattr(base, f) for f in _TEMPLATE_FIELDS}, **data})
    slots = [name for _, name, _, _ in string.Formatter().parse(template.middle) if name is not None]
    if sorted(slots) != ["doc", "instruction", "query"]:
        raise ValueError(
            f"--prompt-template {path}: 'middle' must hold {{instruction}}, {{query}} and {{doc}} once each; "
            f"found {slots}"
        )
    return template


@dataclass(frozen=True)
class VisionRerankerSpec:
    """What a vision-language ``model_type`` reranks with.

    Attributes:
        name: The template's name in the recipe label.
        template: Prompt around the pair.
        model_class: transformers class with the LM head (its decoder runs; two head rows are kept).
        min_pixels: Default image area lower bound (``--min-pixels`` overrides).
        max_pixels: Default upper bound (``--max-pixels`` overrides).
        positions: Decoder position ids (``--vision-positions`` overrides).
        pre_resize: Resize applied to every image before the image processor, or None.
        max_length: The model's published input length cap (``--max-length`` may lower it), or None.
    """

    name: str
    template: PairTemplate
    model_class: str
    min_pixels: int
    max_pixels: int
    positions: PositionScheme = "mrope"
    pre_resize: ImagePreResize | None = None
    max_length: int | None = None


#: ``model_type`` values of vision-language models whose yes/no reranking this project implements.
VISION_RERANKERS: dict[str, VisionRerankerSpec] = {
    "qwen2_vl": VisionRerankerSpec("qwen3-reranker", QWEN3_RERANKER_TEMPLATE, "Qwen2VLForConditionalGeneration",
                                   256 * 28 * 28, 1280 * 28 * 28),
    "qwen3_vl": VisionRerankerSpec("qwen3-vl-reranker", QWEN3_VL_RERANKER_TEMPLATE,
                                   "Qwen3VLForConditionalGeneration", 4 * 32 * 32, 1280 * 32 * 32),
    "qwen2_5_vl": VisionRerankerSpec("lychee-rerank-mm", LYCHEE_RERANK_MM_TEMPLATE,
                                     "Qwen2_5_VLForConditionalGeneration", 4 * 28 * 28, 1280 * 28 * 28,
                                     pre_resize=QWEN_VL_FETCH_IMAGE, max_length=3200),
}


@dataclass(frozen=True)
class RerankRecipe:
    """How one model scores pairs.

    Attributes:
        name: Label shown in ``/info`` (``recipe``).
        kind: ``decoder`` (last-token head on a decoder), ``vision-decoder`` (the same on a vision-language
            model, images allowed), ``cross-encoder`` (encoder pair classifier) or ``bi-encoder`` (cosine of
            two embeddings).
        scoring: Human-readable scoring rule shown in ``/info``.
        activation: Applied to the raw score (``raw_scores`` requests skip it).
        template: Prompt around the pair (decoders), else None.
        head_token_ids: ``(no_id, yes_id)`` rows of the LM head for yes/no causal LMs, else None
            (sequence-classification models use their ``score`` / classifier head).
        num_labels: Outputs of a classification head (1 or 2).
        padding_side: ``left`` for decoders (last column = last token), ``right`` for encoders.
        embedding: The embedding recipe of a bi-encoder.
        vision: Model class and pixel range of a ``vision-decoder``, else None.
    """

    name: str
    kind: RerankKind
    scoring: str
    activation: Activation = "sigmoid"
    template: PairTemplate | None = None
    head_token_ids: tuple[int, int] | None = None
    num_labels: int = 1
    padding_side: Literal["left", "right"] = "right"
    embedding: EmbeddingRecipe | None = None
    vision: VisionRerankerSpec | None = None

    def default_instruction(self) -> str | None:
        return self.template.default_instruction if self.template is not None else None

    @property
    def accepts_images(self) -> bool:
        """Whether queries and documents may carry images (``DocInput`` with ``image``)."""
        return self.kind == "vision-decoder"

    @property
    def modalities(self) -> list[str]:
        """Input kinds a query or document may be, as shown in ``/info``."""
        return ["text", "image", "text+image"] if self.accepts_images else ["text"]


# ------------------------------------------------------------------------------------------------ helpers
def single_token_id(tokenizer: Any, token: str) -> int | None:
    """Id of ``token`` when the tokenizer has it as one token (``convert_tokens_to_ids`` == ``encode``)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if token_id is None or (unk is not None and token_id == unk):
        return None
    encoded = tokenizer.encode(token, add_special_tokens=False)
    if list(encoded) != [int(token_id)]:
        return None
    return int(token_id)


def has_chatml_tokens(tokenizer: Any) -> bool:
    return all(single_token_id(tokenizer, t) is not None for t in _CHATML_TOKENS)


def _architectures(config: dict[str, Any]) -> list[str]:
    return [str(a) for a in (config.get("architectures") or [])]


def _module_types(modules: Any) -> list[str]:
    return [str(m.get("type", "")) for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []


def _is_st_cross_encoder(config: dict[str, Any], st_config: Any, module_types: list[str]) -> bool:
    if isinstance(st_config, dict) and str(st_config.get("model_type", "")) == "CrossEncoder":
        return True
    if any(t.endswith("LogitScore") for t in module_types):
        return True
    return "sentence_transformers" in config or "sbert_ce_default_activation_function" in config


def _activation(config: dict[str, Any], st_config: Any, num_labels: int) -> Activation:
    """The activation the model's config names, else sigmoid (1 label) as sentence-transformers does."""
    path: Any = None
    st_block = config.get("sentence_transformers")
    if isinstance(st_block, dict):
        path = st_block.get("activation_fn")
    if path is None:
        path = config.get("sbert_ce_default_activation_function")
    if path is None and isinstance(st_config, dict):
        path = st_config.get("activation_fn")
    if path is None:
        return "sigmoid"
    name = str(path).rsplit(".", 1)[-1].lower()
    if name in _ACTIVATIONS:
        return _ACTIVATIONS[name]
    logger.warning("activation %r is not supported; using sigmoid", path)
    return "sigmoid"


def _num_labels(config: dict[str, Any]) -> int:
    if "num_labels" in config:
        return int(config["num_labels"])
    id2label = config.get("id2label")
    return len(id2label) if isinstance(id2label, dict) and id2label else 1


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _yes_no_recipe(tokenizer: Any, source: str) -> RerankRecipe | None:
    yes, no = single_token_id(tokenizer, "yes"), single_token_id(tokenizer, "no")
    if yes is None or no is None or not has_chatml_tokens(tokenizer):
        return None
    return RerankRecipe(
        name=f"qwen3-reranker yes/no ({source})",
        kind="decoder",
        scoring="sigmoid(logit_yes - logit_no) at the last token",
        activation="sigmoid",
        template=QWEN3_RERANKER_TEMPLATE,
        head_token_ids=(no, yes),
        padding_side="left",
    )


def _vision_yes_no_recipe(model_dir: Path, config: dict[str, Any], tokenizer: Any | None) -> RerankRecipe | None:
    """Rule 0: a Qwen2-VL causal LM whose tokenizer has yes/no, ChatML and vision tokens, else None."""
    model_type = str(config.get("model_type", ""))
    spec = VISION_RERANKERS.get(model_type)
    if spec is None:
        if "vision_config" in config:
            raise ValueError(
                f"{model_dir}: multimodal reranking is implemented for model_type "
                f"{', '.join(sorted(VISION_RERANKERS))}; this model is {model_type!r}"
            )
        return None
    if any(t.endswith("Pooling") for t in _module_types(read_json(model_dir / "modules.json"))):
        raise ValueError(
            f"{model_dir}: this {model_type} model is an embedding model (its sentence-transformers modules pool "
            "a vector); serve it with `rag-serve mm-embed`, and a reranker with `rag-serve rerank`"
        )
    archs = _architectures(config)
    if not any(a.endswith(("ForConditionalGeneration", "ForCausalLM")) for a in archs):
        return None
    tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(model_dir)
    recipe = _yes_no_recipe(tokenizer, "vision-language causal LM")
    if recipe is None or any(single_token_id(tokenizer, t) is None for t in _VISION_TOKENS):
        raise ValueError(
            f"{model_dir}: a {config.get('model_type')} model can rerank only when its tokenizer has single "
            "'yes'/'no' tokens, the ChatML tokens and the vision tokens of the Qwen-VL template"
        )
    return RerankRecipe(
        name=f"{model_type} yes/no ({spec.name} template, images in the user turn)",
        kind="vision-decoder",
        scoring=recipe.scoring,
        activation="sigmoid",
        template=spec.template,
        head_token_ids=recipe.head_token_ids,
        padding_side="left",
        vision=spec,
    )


def _sequence_classification_recipe(
    model_dir: Path, config: dict[str, Any], st_config: Any, tokenizer: Any | None
) -> RerankRecipe:
    num_labels = _num_labels(config)
    if num_labels not in (1, 2):
        raise ValueError(
            f"{model_dir}: a sequence-classification reranker needs 1 or 2 labels; this one has {num_labels}"
        )
    activation = _activation(config, st_config, num_labels)
    raw = "logit" if num_labels == 1 else "logit_1 - logit_0"
    if str(config.get("model_type", "")) in _DECODER_MODEL_TYPES:
        tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(model_dir)
        if not has_chatml_tokens(tokenizer):
            raise ValueError(
                f"{model_dir}: decoder sequence classifier without the ChatML tokens its reranker template needs"
            )
        return RerankRecipe(
            name="qwen3-reranker template, sequence classification (seq-cls)",
            kind="decoder",
            scoring=f"{activation}({raw}) at the last token",
            activation=activation,
            template=QWEN3_RERANKER_TEMPLATE,
            num_labels=num_labels,
            padding_side="left",
        )
    return RerankRecipe(
        name="cross-encoder (sequence classification)",
        kind="cross-encoder",
        scoring=f"{activation}({raw})",
        activation=activation,
        num_labels=num_labels,
        padding_side="right",
    )


# ------------------------------------------------------------------------------------------------ resolve
def resolve_rerank_recipe(model_dir: Path, tokenizer: Any | None = None) -> RerankRecipe:
    """Read the model's files in ``model_dir`` (and its tokenizer) and return its rerank recipe.

    Args:
        model_dir: Local model directory.
        tokenizer: The model's tokenizer if already loaded; loaded from ``model_dir`` only when a rule
            needs the vocabulary.

    Raises:
        ValueError: the model matches no rule (see the module docstring).
    """
    raw_config = read_json(model_dir / "config.json")
    config: dict[str, Any] = raw_config if isinstance(raw_config, dict) else {}
    modules = read_json(model_dir / "modules.json")
    st_config = read_json(model_dir / "config_sentence_transformers.json")
    module_types = _module_types(modules)
    archs = _architectures(config)
    causal = any(a.endswith("ForCausalLM") for a in archs)
    seq_cls = any(a.endswith("ForSequenceClassification") for a in archs)

    vision = _vision_yes_no_recipe(model_dir, config, tokenizer)
    if vision is not None:
        return vision

    if _is_st_cross_encoder(config, st_config, module_types):
        if causal:
            tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(model_dir)
            recipe = _yes_no_recipe(tokenizer, "sentence-transformers cross-encoder")
            if recipe is None:
                raise ValueError(f"{model_dir}: causal-LM cross-encoder without single 'yes'/'no' tokens")
            return recipe
        return _sequence_classification_recipe(model_dir, config, st_config, tokenizer)

    if any(t.endswith("Pooling") for t in module_types):
        return RerankRecipe(
            name="bi-encoder (sentence-transformers)",
            kind="bi-encoder",
            scoring="cosine (bi-encoder)",
            activation="identity",
            embedding=resolve_embedding_recipe(model_dir),
        )

    if causal:
        tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(model_dir)
        recipe = _yes_no_recipe(tokenizer, "causal LM")
        if recipe is not None:
            return recipe
        raise ValueError(
            f"{model_dir}: a causal LM ({', '.join(archs)}) can rerank only when its tokenizer has single "
            "'yes'/'no' tokens and the ChatML tokens of the Qwen3-Reranker template"
        )

    if seq_cls:
        return _sequence_classification_recipe(model_dir, config, st_config, tokenizer)

    raise ValueError(
        f"{model_dir}: cannot serve this model as a reranker (architectures {archs or 'unknown'}, no "
        "sentence-transformers files); use a Qwen3-Reranker-style causal LM, a cross-encoder, or a "
        "sentence-transformers embedding model"
    )
