"""Torch backends for text embedding: last-token pooling on a decoder, or a sentence-transformers stack."""

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
from servers.recipes.embedding import EmbeddingRecipe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizedText:
    """Token ids ready for the model, and how many tokens the text had before truncation.

    ``ids`` is a tuple, not a list: CPython stops tracking a tuple of ints at its first young collection,
    so the ids of queued requests (~0.5M under a 64-client bulk load) are never walked again by the garbage
    collector. As lists they doubled the length of every later collection (6 -> 10 ms, measured on the
    2-core CI box), each one a pause of the whole server.
    """

    ids: tuple[int, ...]
    original_length: int

    @property
    def truncated(self) -> bool:
        return self.original_length > len(self.ids)


class TextEmbeddingBackend(Protocol):
    """What the embedding engine needs from a backend."""

    recipe: EmbeddingRecipe
    placement: Placement
    dim: int
    max_length: int
    vocab_size: int

    def tokenize(self, texts: list[str]) -> list[TokenizedText]: ...

    def prepare_ids(self, ids: Sequence[int]) -> TokenizedText: ...

    def forward(self, batch: Sequence[Sequence[int]], lane: str) -> np.ndarray: ...

    def launch(self, batch: Sequence[Sequence[int]], lane: str) -> HostResult: ...

    @property
    def packs_bulk(self) -> bool: ...

    def start_acceleration(self) -> None: ...

    def stop_acceleration(self) -> None: ...

    def acceleration_info(self) -> dict[str, Any]: ...


def appended_token_id(tokenizer: Any) -> int | None:
    """The token the tokenizer's post-processor appends to every sequence, or None when it appends none."""
    probe = "end token probe"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    if len(full) > len(plain) and full[-1] != plain[-1] and full[-1 - len(plain) : -1] == plain:
        return int(full[-1])
    return None


def resolve_end_token_id(tokenizer: Any, recipe: EmbeddingRecipe) -> int | None:
    """The token every last-token input ends with: the post-processor's, else the recipe's end token (when
    the vocabulary has it as one token), else ``config.json``'s EOS, else the tokenizer's EOS."""
    appended = appended_token_id(tokenizer)
    if appended is not None:
        return appended
    if recipe.end_token is not None:
        token_id = tokenizer.convert_tokens_to_ids(recipe.end_token)
        unk = getattr(tokenizer, "unk_token_id", None)
        if token_id is not None and token_id != unk:
            return int(token_id)
    eos = recipe.eos_token_id if recipe.eos_token_id is not None else tokenizer.eos_token_id
    return int(eos) if eos is not None else None


class LastTokenEmbedder:
    """Decoder embedder (Qwen3-Embedding recipe): EOS-terminated input, hidden state of the last real token.

    The pooled vector is returned un-normalised in float32; the engine normalises and applies Matryoshka.

    ``padding="right"`` (default) pads each batch on the right and runs the model with no attention mask:
    in a causal decoder a real token only attends to the tokens before it, which are all real, so every
    real token's hidden state is the one the model computes for that text alone (the model card's left
    padding + mask gives the same numbers). Without a mask SDPA takes its fused causal kernel (about 10%
    faster on an H100 than the masked kernel) and no 4-D mask is built. Models whose attention is not
    causal fall back to ``"left"``: left padding, the padding mask and position ids from it.
    """

    @property
    def packs_bulk(self) -> bool:
        """Whether bulk batches run packed (``--bulk-packing``, where the decoder's probe accepted it)."""
        return self.decoder is not None and self.decoder.packing

    def __init__(
        self, model_dir: Path, recipe: EmbeddingRecipe, placement: Placement, max_length: int,
        padding: str = "right", acceleration: AccelerationSettings | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if padding not in ("left", "right"):
            raise ValueError(f"padding must be 'left' or 'right', not {padding!r}")
        self.recipe = recipe
        self.placement = placement
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self._tokenizer = ThreadLocalTokenizer(tokenizer)
        self.model = AutoModel.from_pretrained(str(model_dir), **model_load_kwargs(placement))
        self.model.to(placement.device).eval()
        config = self.model.config
        self.dim = int(config.hidden_size)
        self.max_length = model_max_length(config, None, max_length)
        self.vocab_size = int(config.vocab_size)
        self.eos_token_id: int | None = resolve_end_token_id(tokenizer, recipe)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        self.pad_token_id = int(pad) if pad is not None else 0
        causal = is_causal(self.model)
        self.padding = padding if causal else "left"
        self._streams = LaneStreams(placement, self.model)
        # Right padding without a mask is what graphs and compilation run (see servers.backends.accelerated).
        self.decoder = LastTokenDecoder(
            self.model, placement, self.pad_token_id, None, acceleration or AccelerationSettings(),
            self.max_length, name="embed",
        ) if self.padding == "right" else None

    def start_acceleration(self) -> None:
        if self.decoder is not None:
            self.decoder.start()

    def stop_acceleration(self) -> None:
        if self.decoder is not None:
            self.decoder.stop()

    def acceleration_info(self) -> dict[str, Any]:
        if self.decoder is None:
            return {"graphs": "off (left padding)", "compile": "off (left padding)"}
        return self.decoder.info()

    def _terminate(self, ids: list[int]) -> list[int]:
        if self.eos_token_id is not None and (not ids or ids[-1] != self.eos_token_id):
            ids = [*ids, self.eos_token_id]
        return ids

    def prepare_ids(self, ids: Sequence[int]) -> TokenizedText:
        """EOS-terminate and truncate to ``max_length`` keeping the EOS last."""
        terminated = self._terminate(list(ids))
        original = len(terminated)
        if original > self.max_length:
            if self.eos_token_id is not None:
                terminated = [*terminated[: self.max_length - 1], self.eos_token_id]
            else:
                terminated = terminated[: self.max_length]
        return TokenizedText(ids=tuple(terminated), original_length=original)

    def tokenize(self, texts: list[str]) -> list[TokenizedText]:
        # add_special_tokens=True keeps whatever the tokenizer's post-processor adds (the official
        # Qwen3-Embedding tokenizer appends <|endoftext|>); _terminate appends it where a copy does not.
        return [self.prepare_ids(ids) for ids in self._tokenizer.encode_ids(texts, add_special_tokens=True)]

    def forward(self, batch: Sequence[Sequence[int]], lane: str) -> np.ndarray:
        """Embed a batch. Returns float32 (n, dim), not normalised."""
        with self._streams.hold(lane):
            return self.launch(batch, lane).result()

    @torch.inference_mode()
    def launch(self, batch: Sequence[Sequence[int]], lane: str) -> HostResult:
        """Queue a batch's forward on the device; the result holds the float32 (n, dim) pooled vectors."""
        with self._streams.use(lane):
            if self.decoder is not None:
                # Causal attention never looks right, so the pads after a text cannot change it: no mask.
                return HostResult(self.decoder.run(batch, lane))
            ids, mask = pad_batch(batch, self.pad_token_id, self.padding, self.placement.device)
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False
            )
            hidden = out.last_hidden_state
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            pooled = hidden[rows, last_token_index(mask)].float()
            return HostResult(pooled)


class SentenceTransformerEmbedder:
    """Any sentence-transformers model, run through its own modules (pooling, dense) minus ``Normalize``."""

    #: Bulk batches run padded (packing is for the text decoders' last-token path only).
    packs_bulk = False

    def __init__(self, model_dir: Path, recipe: EmbeddingRecipe, placement: Placement, max_length: int) -> None:
        from sentence_transformers import SentenceTransformer

        self.recipe = recipe
        self.placement = placement
        kwargs: dict[str, Any] = {"model_kwargs": model_load_kwargs(placement)}
        self.model = SentenceTransformer(str(model_dir), device=str(placement.device), **kwargs)
        self.model.eval()
        tokenizer = self.model.tokenizer
        self._tokenizer = ThreadLocalTokenizer(tokenizer)
        st_max = int(self.model.max_seq_length or max_length)
        self.max_length = min(max_length, st_max)
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = getter()
        self.dim = dim if dim is not None else 0
        self.vocab_size = len(tokenizer)
        self.pad_token_id = int(tokenizer.pad_token_id or 0)
        self.padding_side = str(getattr(tokenizer, "padding_side", "right") or "right")
        self._wants_token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
        self._modules = [m for m in self.model if type(m).__name__ != "Normalize"]
        self._streams = LaneStreams(placement, self.model)

    def start_acceleration(self) -> None:
        """Bidirectional encoders run eager (graphs and compilation serve the causal decoders)."""

    def stop_acceleration(self) -> None:
        """Nothing runs in the background for an encoder."""

    def acceleration_info(self) -> dict[str, Any]:
        return {"graphs": "off (encoder)", "compile": "off (encoder)"}

    def prepare_ids(self, ids: Sequence[int]) -> TokenizedText:
        kept = tuple(ids)
        original = len(kept)
        if original > self.max_length:
            # Keep the closing special token (e.g. [SEP]) the model was trained to see last.
            kept = (*kept[: self.max_length - 1], kept[-1])
        return TokenizedText(ids=kept, original_length=original)

    def tokenize(self, texts: list[str]) -> list[TokenizedText]:
        full = self._tokenizer.encode_ids(texts, add_special_tokens=True)
        tok = self._tokenizer.get()
        out: list[TokenizedText] = []
        for text, ids in zip(texts, full, strict=True):
            if len(ids) <= self.max_length:
                out.append(TokenizedText(ids=tuple(ids), original_length=len(ids)))
            else:
                cut = tok(text, add_special_tokens=True, truncation=True, max_length=self.max_length)["input_ids"]
                out.append(TokenizedText(ids=tuple(cut), original_length=len(ids)))
        return out

    def forward(self, batch: Sequence[Sequence[int]], lane: str) -> np.ndarray:
        """Embed a batch. Returns float32 (n, dim), before the model's Normalize module."""
        with self._streams.hold(lane):
            return self.launch(batch, lane).result()

    @torch.inference_mode()
    def launch(self, batch: Sequence[Sequence[int]], lane: str) -> HostResult:
        """Queue a batch's forward on the device (see :meth:`forward`)."""
        with self._streams.use(lane):
            ids, mask = pad_batch(batch, self.pad_token_id, self.padding_side, self.placement.device)
            features: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
            if self._wants_token_types:
                features["token_type_ids"] = torch.zeros_like(ids)
            for module in self._modules:
                features = module(features)
            return HostResult(features["sentence_embedding"].float())


def load_text_embedder(
    model_dir: Path, recipe: EmbeddingRecipe, placement: Placement, max_length: int, padding: str = "right",
    acceleration: AccelerationSettings | None = None,
) -> TextEmbeddingBackend:
    """Instantiate the backend the recipe calls for (``padding``: see :class:`LastTokenEmbedder`)."""
    if recipe.pooling == "lasttoken":
        return LastTokenEmbedder(model_dir, recipe, placement, max_length, padding, acceleration)
    return SentenceTransformerEmbedder(model_dir, recipe, placement, max_length)
