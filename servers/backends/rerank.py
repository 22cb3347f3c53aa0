"""Torch backends for reranking: pair scorers (decoder last-token head, encoder cross-encoder) and a bi-encoder.

Every reranking backend (these three and :class:`~servers.backends.multimodal_rerank.QwenVLPairScorer`) keeps
one contract, :class:`PairScoringBackend`: ``prepare`` (CPU, the engine's tokenizer threads: format and
tokenize a request's pairs into scheduler items) -> ``launch`` (a scheduler lane's model thread: queue one
padded batch on the device; ``forward`` = launch + wait) -> ``finish`` (one *raw* score per pair, before the
recipe's activation, from the items' outputs). The engine validates, schedules and assembles; it never asks
which backend it holds. Results never depend
on the batch an item lands in: causal decoders run right-padded without a mask through
:class:`~servers.backends.accelerated.LastTokenDecoder` (graphs / compilation on CUDA) and are read at each
row's last real token; encoders mask their padding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from servers.backends.accelerated import AccelerationSettings, LastTokenDecoder
from servers.backends.device import Placement
from servers.backends.text_embedding import TextEmbeddingBackend, load_text_embedder
from servers.backends.torch_runtime import (
    HostResult,
    LaneStreams,
    ThreadLocalTokenizer,
    is_causal,
    last_token_index,
    model_load_kwargs,
    model_max_length,
    pad_batch,
    positions_from_mask,
)
from servers.errors import RequestTooLargeError
from servers.recipes.rerank import RerankRecipe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedInput:
    """One model input: a formatted pair (pair scorers) or one text (bi-encoder).

    Attributes:
        ids: Token ids, after templates and truncation; a tuple for the garbage collector's sake (see
            :class:`~servers.backends.text_embedding.TokenizedText`).
        type_ids: Segment ids for encoders that use them (BERT pairs), else None.
        original_length: Tokens before truncation.
    """

    ids: tuple[int, ...]
    type_ids: tuple[int, ...] | None
    original_length: int

    @property
    def truncated(self) -> bool:
        return self.original_length > len(self.ids)


@dataclass(frozen=True)
class PreparedScoring:
    """A request's model inputs and how their outputs become one raw score per pair.

    Attributes:
        items: Scheduler payloads, one per model input (a pair, or one distinct text of a bi-encoder).
        costs: Token cost of each item.
        pair_rows: None when item ``i`` is pair ``i``; else int (n_pairs, 2): the items holding each pair's
            query and document (a bi-encoder embeds each distinct text once).
    """

    items: list[Any]
    costs: list[int]
    pair_rows: np.ndarray | None = None


class PairScoringBackend(Protocol):
    """What the rerank engine needs of a backend (see the module docstring)."""

    recipe: RerankRecipe
    placement: Placement
    max_length: int

    def prepare(self, pairs: Sequence[tuple[Any, Any]], instruction: str | None, truncate: bool) -> PreparedScoring:
        """Format and tokenize validated pairs (texts; query/document inputs on image rerankers).

        ``instruction`` None means the recipe's default. Raises RequestTooLargeError for an input over
        ``max_length`` when ``truncate`` is False."""
        ...

    @property
    def packs_bulk(self) -> bool: ...

    def launch(self, batch: list[Any], lane: str) -> HostResult: ...

    def forward(self, batch: list[Any], lane: str) -> np.ndarray: ...

    def finish(self, prepared: PreparedScoring, outputs: Sequence[Any]) -> np.ndarray:
        """Raw scores, float32 (n_pairs,), pair order."""
        ...

    def describe(self) -> dict[str, Any]:
        """Backend-specific ``/info`` fields."""
        ...

    def start_acceleration(self) -> None: ...

    def stop_acceleration(self) -> None: ...

    def acceleration_info(self) -> dict[str, Any]: ...


def check_lengths(encoded: Sequence[EncodedInput], truncate: bool, limit: int, what: str) -> None:
    """Refuse an input that had to be cut when the request said ``truncate=false``.

    Raises:
        RequestTooLargeError: naming the first such input (``what`` i) and its length.
    """
    if truncate:
        return
    for i, item in enumerate(encoded):
        if item.truncated:
            raise RequestTooLargeError(
                f"{what} {i} has {item.original_length} tokens, over the limit of {limit}; "
                "shorten it or send truncate=true"
            )


def scores_per_item(prepared: PreparedScoring, outputs: Sequence[Any]) -> np.ndarray:
    """``finish`` of a pair scorer: item ``i`` is pair ``i`` and its output is the raw score. Returns (n,)."""
    return np.asarray(outputs, dtype=np.float32).reshape(len(prepared.items))


def raw_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """One raw score per row: the logit of a 1-label head, ``logit_1 - logit_0`` of a 2-label head.

    Args:
        logits: (n, 1) or (n, 2).

    Returns:
        (n,) float32.
    """
    logits = logits.float()
    if logits.shape[-1] == 1:
        return logits[:, 0]
    return logits[:, 1] - logits[:, 0]


@dataclass(frozen=True)
class ScoreHead:
    """The few output rows a reranker's raw score comes from, float32 on the device.

    Attributes:
        weight: (labels, hidden): the LM-head rows ``[no, yes]`` of a yes/no reranker, or a classifier's
            ``score`` layer.
        bias: (labels,) or None.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def from_layer(cls, layer: Any, device: torch.device, rows: Sequence[int] | None = None) -> ScoreHead:
        """Copy ``layer``'s weight (and bias) rows ``rows`` (all rows when None) to ``device`` in float32."""
        weight = layer.weight.detach()
        bias = layer.bias.detach() if getattr(layer, "bias", None) is not None else None
        if rows is not None:
            index = torch.tensor(list(rows), dtype=torch.long, device=weight.device)
            weight = weight.index_select(0, index)
            bias = bias.index_select(0, index) if bias is not None else None
        return cls(weight.to(device, torch.float32).clone(),
                   bias.to(device, torch.float32).clone() if bias is not None else None)

    def raw(self, hidden: torch.Tensor) -> torch.Tensor:
        """Raw scores (see :func:`raw_from_logits`) of last-token hidden states (n, hidden). Returns (n,)."""
        logits = hidden.float() @ self.weight.T
        if self.bias is not None:
            logits = logits + self.bias
        return raw_from_logits(logits)


class DecoderPairScorer:
    """Decoder reranker (Qwen3-Reranker and its ``*-seq-cls`` conversion).

    Input = prefix + middle (truncated) + suffix; left padding; the hidden state of the last real token goes
    through a small head: the two LM-head rows ``[no, yes]`` of a causal LM, or the ``score`` layer of a
    sequence classifier. Only those rows are computed (not the 150k-wide vocabulary projection).
    """

    @property
    def packs_bulk(self) -> bool:
        """Whether bulk batches run packed (``--bulk-packing``, where the decoder's probe accepted it)."""
        return self.decoder is not None and self.decoder.packing

    def __init__(self, model_dir: Path, recipe: RerankRecipe, placement: Placement, max_length: int,
                 acceleration: AccelerationSettings | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        if recipe.template is None:
            raise ValueError("a decoder reranker recipe needs a template")
        self.recipe = recipe
        self.template = recipe.template
        self.placement = placement
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self._tokenizer = ThreadLocalTokenizer(tokenizer)
        kwargs = model_load_kwargs(placement)
        if recipe.head_token_ids is not None:
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
            self.head = ScoreHead.from_layer(model.get_output_embeddings(), placement.device, recipe.head_token_ids)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), **kwargs)
            self.head = ScoreHead.from_layer(model.score, placement.device)
        config = model.config
        # Keep only the decoder stack: the full LM head (untied on larger models) is freed with the wrapper.
        self.model = getattr(model, model.base_model_prefix).to(placement.device).eval()
        del model
        self.max_length = model_max_length(config, tokenizer, max_length)
        self.prefix_ids: list[int] = list(tokenizer.encode(self.template.prefix, add_special_tokens=False))
        self.suffix_ids: list[int] = list(tokenizer.encode(self.template.suffix, add_special_tokens=False))
        self.middle_budget = self.max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if self.middle_budget < 1:
            raise ValueError(
                f"max_length {self.max_length} leaves no room for the query and document after the template's "
                f"{len(self.prefix_ids) + len(self.suffix_ids)} tokens; raise --max-length"
            )
        self._truncate_left = getattr(tokenizer, "truncation_side", "right") == "left"
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = int(pad) if pad is not None else 0
        self._streams = LaneStreams(placement, self.model)
        causal = is_causal(self.model)
        # Causal decoders run right-padded without a mask (exact; graphs and compilation need it).
        self.decoder = LastTokenDecoder(
            self.model, placement, self.pad_token_id, self.head.raw, acceleration or AccelerationSettings(),
            self.max_length, name="rerank",
        ) if causal else None

    def start_acceleration(self) -> None:
        if self.decoder is not None:
            self.decoder.start()

    def stop_acceleration(self) -> None:
        if self.decoder is not None:
            self.decoder.stop()

    def acceleration_info(self) -> dict[str, Any]:
        return self.decoder.info() if self.decoder is not None else {"graphs": "off", "compile": "off"}

    def prepare(self, pairs: Sequence[tuple[str, str]], instruction: str | None, truncate: bool) -> PreparedScoring:
        """Tokenize pairs with the instruction (None: the recipe's default); see :class:`PairScoringBackend`."""
        task = instruction if instruction is not None else (self.recipe.default_instruction() or "")
        encoded = self.tokenize_pairs(list(pairs), task)
        check_lengths(encoded, truncate, self.max_length, "pair")
        return PreparedScoring(list(encoded), [len(e.ids) for e in encoded])

    finish = staticmethod(scores_per_item)

    def describe(self) -> dict[str, Any]:
        return {}

    def tokenize_pairs(self, pairs: list[tuple[str, str]], instruction: str) -> list[EncodedInput]:
        """Format and tokenize pairs; only the middle part is truncated (prefix/suffix always whole)."""
        middles = [self.template.format_middle(instruction, q, d) for q, d in pairs]
        encoded = self._tokenizer.encode_ids(middles, add_special_tokens=False)
        fixed = len(self.prefix_ids) + len(self.suffix_ids)
        out: list[EncodedInput] = []
        for ids in encoded:
            middle = list(ids)
            original = fixed + len(middle)
            if len(middle) > self.middle_budget:
                middle = middle[-self.middle_budget :] if self._truncate_left else middle[: self.middle_budget]
            out.append(EncodedInput((*self.prefix_ids, *middle, *self.suffix_ids), None, original))
        return out

    def forward(self, batch: list[EncodedInput], lane: str) -> np.ndarray:
        """Raw scores of a batch. Returns float32 (n,)."""
        with self._streams.hold(lane):
            return self.launch(batch, lane).result()

    @torch.inference_mode()
    def launch(self, batch: list[EncodedInput], lane: str) -> HostResult:
        """Queue a batch's forward on the device (see :meth:`forward`)."""
        with self._streams.use(lane):
            if self.decoder is not None:
                return HostResult(self.decoder.run([b.ids for b in batch], lane))
            ids, mask = pad_batch([b.ids for b in batch], self.pad_token_id, "left", self.placement.device)
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False
            )
            hidden = out.last_hidden_state
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            return HostResult(self.head.raw(hidden[rows, last_token_index(mask)]))


class CrossEncoderPairScorer:
    """Encoder cross-encoder: the tokenizer's own pair encoding, ``longest_first`` truncation, right padding."""

    #: Bulk batches run padded (packing is for the text decoders' last-token path only).
    packs_bulk = False

    def __init__(self, model_dir: Path, recipe: RerankRecipe, placement: Placement, max_length: int) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.recipe = recipe
        self.placement = placement
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self._tokenizer = ThreadLocalTokenizer(tokenizer)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), **model_load_kwargs(placement)
        )
        self.model.to(placement.device).eval()
        self.max_length = model_max_length(self.model.config, tokenizer, max_length)
        self.pad_token_id = int(tokenizer.pad_token_id or 0)
        self._wants_token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
        self._streams = LaneStreams(placement, self.model)

    def start_acceleration(self) -> None:
        """Bidirectional encoders run eager (graphs and compilation serve the causal decoders)."""

    def stop_acceleration(self) -> None:
        """Nothing runs in the background for an encoder."""

    def acceleration_info(self) -> dict[str, Any]:
        return {"graphs": "off (encoder)", "compile": "off (encoder)"}

    def prepare(self, pairs: Sequence[tuple[str, str]], instruction: str | None, truncate: bool) -> PreparedScoring:
        """Tokenize pairs (cross-encoders take no instruction); see :class:`PairScoringBackend`."""
        encoded = self.tokenize_pairs(list(pairs))
        check_lengths(encoded, truncate, self.max_length, "pair")
        return PreparedScoring(list(encoded), [len(e.ids) for e in encoded])

    finish = staticmethod(scores_per_item)

    def describe(self) -> dict[str, Any]:
        return {}

    def tokenize_pairs(self, pairs: list[tuple[str, str]], instruction: str | None = None) -> list[EncodedInput]:
        """Tokenize (query, document) pairs; ``instruction`` is ignored (cross-encoders take none)."""
        tok = self._tokenizer.get()
        queries = [q for q, _ in pairs]
        docs = [d for _, d in pairs]
        full = tok(queries, docs, add_special_tokens=True)
        out: list[EncodedInput] = []
        for i, ids in enumerate(full["input_ids"]):
            types = full["token_type_ids"][i] if "token_type_ids" in full else None
            if len(ids) > self.max_length:
                cut = tok(queries[i], docs[i], truncation="longest_first", max_length=self.max_length)
                cut_types = cut.get("token_type_ids")
                out.append(EncodedInput(tuple(cut["input_ids"]), tuple(cut_types) if cut_types is not None else None,
                                        len(ids)))
            else:
                out.append(EncodedInput(tuple(ids), tuple(types) if types is not None else None, len(ids)))
        return out

    def forward(self, batch: list[EncodedInput], lane: str) -> np.ndarray:
        """Raw scores of a batch. Returns float32 (n,)."""
        with self._streams.hold(lane):
            return self.launch(batch, lane).result()

    @torch.inference_mode()
    def launch(self, batch: list[EncodedInput], lane: str) -> HostResult:
        """Queue a batch's forward on the device (see :meth:`forward`)."""
        with self._streams.use(lane):
            ids, mask = pad_batch([b.ids for b in batch], self.pad_token_id, "right", self.placement.device)
            features: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
            if self._wants_token_types:
                types = [b.type_ids if b.type_ids is not None else [0] * len(b.ids) for b in batch]
                features["token_type_ids"], _ = pad_batch(types, 0, "right", self.placement.device)
            logits = self.model(**features).logits
            return HostResult(raw_from_logits(logits))


class BiEncoderScorer:
    """A sentence-transformers embedding model used for reranking by cosine; runs the embedding backend."""

    @property
    def packs_bulk(self) -> bool:
        """Whether the embedding backend it runs packs its bulk batches."""
        return self.embedder.packs_bulk

    def __init__(self, model_dir: Path, recipe: RerankRecipe, placement: Placement, max_length: int,
                 acceleration: AccelerationSettings | None = None) -> None:
        if recipe.embedding is None:
            raise ValueError("a bi-encoder recipe needs an embedding recipe")
        self.recipe = recipe
        self.placement = placement
        self.embedder: TextEmbeddingBackend = load_text_embedder(
            model_dir, recipe.embedding, placement, max_length, acceleration=acceleration
        )
        self.max_length = self.embedder.max_length

    def start_acceleration(self) -> None:
        self.embedder.start_acceleration()

    def stop_acceleration(self) -> None:
        self.embedder.stop_acceleration()

    def acceleration_info(self) -> dict[str, Any]:
        return self.embedder.acceleration_info()

    def prepare(self, pairs: Sequence[tuple[str, str]], instruction: str | None, truncate: bool) -> PreparedScoring:
        """Embed each distinct query (with the instruction; None: the embedding recipe's default) and each
        distinct document once; see :class:`PairScoringBackend`."""
        embedding = self.recipe.embedding
        assert embedding is not None  # checked in __init__
        queries = list(dict.fromkeys(q for q, _ in pairs))
        docs = list(dict.fromkeys(d for _, d in pairs))
        texts = [embedding.format(q, "query", instruction) for q in queries]
        texts += [embedding.format(d, "document") for d in docs]
        encoded = self.tokenize_texts(texts)
        check_lengths(encoded, truncate, self.max_length, "text")
        q_row = {q: i for i, q in enumerate(queries)}
        d_row = {d: len(queries) + i for i, d in enumerate(docs)}
        rows = np.asarray([(q_row[q], d_row[d]) for q, d in pairs], dtype=np.int64).reshape(len(pairs), 2)
        return PreparedScoring(list(encoded), [len(e.ids) for e in encoded], rows)

    def finish(self, prepared: PreparedScoring, outputs: Sequence[Any]) -> np.ndarray:
        """Cosine of each pair's query and document vectors. Returns float32 (n_pairs,)."""
        assert prepared.pair_rows is not None
        vectors = np.stack(list(outputs)).astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        q, d = prepared.pair_rows[:, 0], prepared.pair_rows[:, 1]
        return np.einsum("ij,ij->i", vectors[q], vectors[d]).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {}

    def tokenize_texts(self, texts: list[str]) -> list[EncodedInput]:
        """Tokenize already formatted texts (query prompts applied by the engine)."""
        return [EncodedInput(t.ids, None, t.original_length) for t in self.embedder.tokenize(texts)]

    def forward(self, batch: list[EncodedInput], lane: str) -> np.ndarray:
        """Embeddings of a batch. Returns float32 (n, dim), not normalised."""
        return self.embedder.forward([b.ids for b in batch], lane)

    def launch(self, batch: list[EncodedInput], lane: str) -> HostResult:
        """Queue a batch's forward on the device (see :meth:`forward`)."""
        return self.embedder.launch([b.ids for b in batch], lane)


RerankBackend = DecoderPairScorer | CrossEncoderPairScorer | BiEncoderScorer


def load_reranker(model_dir: Path, recipe: RerankRecipe, placement: Placement, max_length: int,
                  acceleration: AccelerationSettings | None = None) -> RerankBackend:
    """Instantiate the backend the recipe calls for."""
    if recipe.kind == "decoder":
        return DecoderPairScorer(model_dir, recipe, placement, max_length, acceleration)
    if recipe.kind == "cross-encoder":
        return CrossEncoderPairScorer(model_dir, recipe, placement, max_length)
    return BiEncoderScorer(model_dir, recipe, placement, max_length, acceleration)
