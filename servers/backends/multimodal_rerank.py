"""Torch backend of yes/no vision-language reranking on the current transformers Qwen2-VL / Qwen3-VL models.

The recipe is rule 0 of :mod:`servers.recipes.rerank`: the model type's template (Qwen3-Reranker's for
Qwen2-VL rerankers, the official Qwen3-VL-Reranker turn for ``qwen3_vl``, Lychee-Rerank-MM's for
``qwen2_5_vl``), where the query and the document are each ``{IMG}{text}``
(``IMG = <|vision_start|><|image_pad|><|vision_end|>`` when that side has an image). Image handling is the
embedders' (:mod:`servers.backends.multimodal`): the recipe's pre-resize, the PIL image processor,
``<|image_pad|>`` expanded to the image's token count from its grid, M-RoPE position ids from
``get_rope_index`` with ``mm_token_type_ids`` (or sequential ones where a recipe or ``--vision-positions``
says so). Left padding; the score is read at the last position through
the two LM-head rows ``[no, yes]`` (the 150k-wide vocabulary projection is never computed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from servers.backends.accelerated import AccelerationSettings
from servers.backends.device import Placement
from servers.backends.multimodal import (
    check_text_has_no_vision_tokens,
    expand_image_pads,
    load_image_processor,
    pixel_range,
    process_image,
    text_decoder,
    vision_language_class,
    vision_model_inputs,
)
from servers.backends.rerank import PreparedScoring, ScoreHead, scores_per_item
from servers.backends.torch_runtime import (
    HostResult,
    LaneStreams,
    ThreadLocalTokenizer,
    model_load_kwargs,
    model_max_length,
    pad_batch,
)
from servers.errors import RequestTooLargeError, ServingError
from servers.images import MultiModalInput
from servers.recipes.multimodal import IMAGE_PAD, VISION_END, VISION_START, PositionScheme
from servers.recipes.rerank import RerankRecipe

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END
# Private-use characters that mark where the query and document go when the prompt is cut into pieces.
_Q_MARK, _D_MARK = "\ue000", "\ue001"


@dataclass(frozen=True)
class ProcessedImage:
    """An image after the image processor.

    Attributes:
        pixel_values: float32 (patches, C*T*P*P).
        grid_thw: (t, h, w) patch grid.
        tokens: Image tokens in the sequence (after the spatial merge).
    """

    pixel_values: np.ndarray
    grid_thw: tuple[int, int, int]
    tokens: int


@dataclass(frozen=True)
class PairSide:
    """The query or the document of a pair: a text, a processed image, or both."""

    text: str | None = None
    image: ProcessedImage | None = None

    def content(self, empty: str = "") -> str:
        """The side's text in the template: image placeholder first, then the text (``empty`` for neither)."""
        if self.image is None and not self.text:
            return empty
        return (IMAGE_PLACEHOLDER if self.image is not None else "") + (self.text or "")


@dataclass(frozen=True)
class PreparedPair:
    """One formatted pair ready for the model.

    Attributes:
        ids: Token ids, image pads expanded; a tuple for the garbage collector's sake (see
            :class:`~servers.backends.text_embedding.TokenizedText`).
        pixel_values: The pair's images in sequence order (query image first).
        grids: Their patch grids, same order.
        original_length: Tokens before the texts were truncated.
    """

    ids: tuple[int, ...]
    pixel_values: tuple[np.ndarray, ...]
    grids: tuple[tuple[int, int, int], ...]
    original_length: int

    @property
    def truncated(self) -> bool:
        return self.original_length > len(self.ids)


class QwenVLPairScorer:
    """Yes/no reranker on a Qwen-VL model: ``process_image`` / ``prepare_pair`` (CPU, any thread), ``launch``
    (model thread).

    Args:
        min_pixels: Image area lower bound after resizing (None: the recipe's default).
        max_pixels: Upper bound (None: the recipe's default).
    """

    #: Bulk batches run padded (packing is for the text decoders' last-token path only).
    packs_bulk = False

    def __init__(
        self, model_dir: Path, recipe: RerankRecipe, placement: Placement, max_length: int,
        min_pixels: int | None = None, max_pixels: int | None = None, positions: PositionScheme | None = None,
        acceleration: AccelerationSettings | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        if recipe.template is None or recipe.head_token_ids is None or recipe.vision is None:
            raise ValueError("a vision yes/no reranker recipe needs a template, the yes/no token ids and a model class")
        self.recipe = recipe
        self.template = recipe.template
        self.placement = placement
        self.positions: PositionScheme = positions or recipe.vision.positions
        self.pre_resize = recipe.vision.pre_resize
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self._tokenizer = ThreadLocalTokenizer(tokenizer)
        self.min_pixels, self.max_pixels = pixel_range(
            min_pixels, max_pixels, (recipe.vision.min_pixels, recipe.vision.max_pixels)
        )
        self.image_processor = load_image_processor(model_dir, self.min_pixels, self.max_pixels)
        model_class = vision_language_class(recipe.vision.model_class)
        full: Any = model_class.from_pretrained(str(model_dir), **model_load_kwargs(placement))
        self.head = ScoreHead.from_layer(full.get_output_embeddings(), placement.device, recipe.head_token_ids)
        # Keep the inner model (vision tower + decoder); the full LM head is freed with the wrapper.
        self.model: Any = cast(Any, full.model).to(placement.device).eval()
        config = full.config
        del full
        cap = recipe.vision.max_length
        self.max_length = model_max_length(config.text_config, tokenizer, min(max_length, cap) if cap else max_length)
        self.image_token_id = int(config.image_token_id)
        if tokenizer.convert_tokens_to_ids(IMAGE_PAD) != self.image_token_id:
            raise ValueError(f"tokenizer's {IMAGE_PAD} is not the model's image_token_id {self.image_token_id}")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = int(pad) if pad is not None else 0
        self._streams = LaneStreams(placement, self.model)
        self.text_decoder = text_decoder(self.model, placement, self.pad_token_id, self.head.raw, acceleration,
                                         self.max_length, "rerank text")

    def start_acceleration(self) -> None:
        self.text_decoder.start()

    def stop_acceleration(self) -> None:
        self.text_decoder.stop()

    def acceleration_info(self) -> dict[str, Any]:
        return {**self.text_decoder.info(), "images": "eager"}

    def describe(self) -> dict[str, Any]:
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "vision_positions": self.positions}

    # --------------------------------------------------------------------------------------------- prepare
    def prepare(self, pairs: Sequence[tuple[Any, Any]], instruction: str | None, truncate: bool) -> PreparedScoring:
        """Process each distinct image once and tokenize every pair (see
        :class:`~servers.backends.rerank.PairScoringBackend`).

        Args:
            pairs: (query, document); each a text or a :class:`~servers.images.MultiModalInput` whose image is
                a decoded PIL image (the engine loads image sources under its policy).
            instruction: None for the recipe's default.
        """
        task = instruction if instruction is not None else (self.recipe.default_instruction() or "")
        processed: dict[int, ProcessedImage] = {}  # a query image repeated over the request is processed once

        def side(item: Any) -> PairSide:
            if isinstance(item, str):
                return PairSide(text=item)
            assert isinstance(item, MultiModalInput)
            image: ProcessedImage | None = None
            if item.image is not None:
                key = id(item.image)
                if key not in processed:
                    processed[key] = self.process_image(item.image)
                image = processed[key]
            return PairSide(text=item.text, image=image)

        out: list[PreparedPair] = []
        for i, (q, d) in enumerate(pairs):
            try:
                out.append(self.prepare_pair(side(q), side(d), task, truncate))
            except ServingError as exc:
                exc.message = f"pair {i}: {exc.message}"
                exc.args = (exc.message,)
                raise
        return PreparedScoring(list(out), [len(p.ids) for p in out])

    finish = staticmethod(scores_per_item)

    def process_image(self, image: Image.Image) -> ProcessedImage:
        """Run the image processor on one decoded image (blocking CPU work)."""
        pixel_values, grid, tokens = process_image(self.image_processor, image, self.pre_resize)
        return ProcessedImage(pixel_values, grid, tokens)

    def prepare_pair(self, query: PairSide, doc: PairSide, instruction: str, truncate: bool = True) -> PreparedPair:
        """Format and tokenize one pair; only texts are truncated (document text first), never images.

        Raises:
            InvalidRequestError: a text holds vision special tokens.
            RequestTooLargeError: the template and images alone exceed ``max_length``, or the pair does with
                ``truncate=False``.
        """
        check_text_has_no_vision_tokens(query.text, "query text")
        check_text_has_no_vision_tokens(doc.text, "document text")
        tok = self._tokenizer.get()
        images = [s.image for s in (query, doc) if s.image is not None]
        counts = [im.tokens for im in images]
        empty = self.template.empty_side
        prompt = (
            self.template.prefix
            + self.template.format_middle(instruction, query.content(empty), doc.content(empty))
            + self.template.suffix
        )
        # The whole prompt at once, as a chat template + processor call would tokenize it.
        ids = expand_image_pads(tok(prompt, add_special_tokens=False)["input_ids"], self.image_token_id, counts)
        original = len(ids)
        if original > self.max_length:
            ids = self._truncated(query, doc, instruction, original, truncate)
        return PreparedPair(
            ids=tuple(ids), pixel_values=tuple(im.pixel_values for im in images),
            grids=tuple(im.grid_thw for im in images), original_length=original,
        )

    def _truncated(self, query: PairSide, doc: PairSide, instruction: str, original: int, truncate: bool) -> list[int]:
        tok = self._tokenizer.get()
        skeleton = self.template.prefix + self.template.format_middle(instruction, _Q_MARK, _D_MARK) + self.template.suffix
        head, rest = skeleton.split(_Q_MARK, 1)
        middle, tail = rest.split(_D_MARK, 1)

        def encode(text: str) -> list[int]:
            return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []

        def with_image(text: str, side: PairSide) -> list[int]:
            if side.image is None:
                return encode(text)
            return expand_image_pads(encode(text + IMAGE_PLACEHOLDER), self.image_token_id, [side.image.tokens])

        a, b, c = with_image(head, query), with_image(middle, doc), encode(tail)
        q_ids, d_ids = encode(query.text or ""), encode(doc.text or "")
        fixed = len(a) + len(b) + len(c)
        if fixed > self.max_length:
            raise RequestTooLargeError(
                f"pair needs {fixed} tokens before its texts (template and images), over the limit of "
                f"{self.max_length}; lower --max-pixels or raise --max-length"
            )
        if not truncate:
            raise RequestTooLargeError(
                f"pair has {original} tokens, over the limit of {self.max_length}; shorten it or send truncate=true"
            )
        budget = self.max_length - fixed
        d_keep = min(len(d_ids), max(0, budget - len(q_ids)))
        q_keep = min(len(q_ids), budget - d_keep)
        return [*a, *q_ids[:q_keep], *b, *d_ids[:d_keep], *c]

    # --------------------------------------------------------------------------------------------- forward
    def forward(self, batch: list[PreparedPair], lane: str) -> np.ndarray:
        """Raw scores (``logit_yes - logit_no``) of a batch. Returns float32 (n,)."""
        with self._streams.hold(lane):
            return self.launch(batch, lane).result()

    @torch.inference_mode()
    def launch(self, batch: list[PreparedPair], lane: str) -> HostResult:
        """Queue a batch's forward on the device (see :meth:`forward`)."""
        with self._streams.use(lane):
            grids = [g for p in batch for g in p.grids]
            if not grids:
                return HostResult(self.text_decoder.run([p.ids for p in batch], lane))
            ids, mask = pad_batch([p.ids for p in batch], self.pad_token_id, "left", self.placement.device)
            pixels = [pv for p in batch for pv in p.pixel_values]
            out = self.model(
                **vision_model_inputs(self.model, ids, mask, self.image_token_id, pixels, grids, self.positions)
            )
            # Left padding: the last column is every row's last real token.
            return HostResult(self.head.raw(out.last_hidden_state[:, -1]))
