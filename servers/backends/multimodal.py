"""Torch backend of Qwen-VL last-token embedders (GME-Qwen2-VL, Qwen3-VL-Embedding).

GME's remote code pins transformers < 4.52 and the stock Qwen-VL processors import torchvision (for video),
so this project runs the recipes itself on the current transformers ``Qwen2VLModel`` / ``Qwen3VLModel``
(the class the recipe names): the template of :mod:`servers.recipes.multimodal`, the recipe's image
pre-resize (GME's ``fetch_image``) then the image processor used directly (its PIL path), image tokens
expanded from the processor's grid, the recipe's position ids (sequential for GME, M-RoPE from
``get_rope_index`` with ``mm_token_type_ids`` for Qwen3-VL), left padding and the last position's hidden
state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from rag_plugins.protocol import InputType
from servers.backends.accelerated import AccelerationSettings, LastTokenDecoder
from servers.backends.device import Placement
from servers.backends.torch_runtime import (
    HostResult,
    LaneStreams,
    ThreadLocalTokenizer,
    model_load_kwargs,
    model_max_length,
    pad_batch,
    positions_from_mask,
)
from servers.errors import InvalidRequestError, RequestTooLargeError
from servers.recipes.multimodal import (
    IMAGE_PAD,
    VISION_END,
    VISION_SPECIAL_TOKENS,
    VISION_START,
    ImagePreResize,
    MultiModalRecipe,
    PositionScheme,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedInput:
    """One input ready for the model.

    Attributes:
        ids: Token ids, image pads already expanded to the image's token count; a tuple for the garbage
            collector's sake (see :class:`~servers.backends.text_embedding.TokenizedText`).
        pixel_values: float32 (patches, channels * temporal_patch * patch * patch), or None without image.
        grid_thw: The image's (t, h, w) patch grid, or None.
        original_length: Tokens before the text was truncated.
    """

    ids: tuple[int, ...]
    pixel_values: np.ndarray | None
    grid_thw: tuple[int, int, int] | None
    original_length: int

    @property
    def truncated(self) -> bool:
        return self.original_length > len(self.ids)


def pixel_range(min_pixels: int | None, max_pixels: int | None, default: tuple[int, int]) -> tuple[int, int]:
    """The image area range in use: the server's bounds where set, else the recipe's ``default``.

    Raises:
        ValueError: the resulting minimum is above the maximum.
    """
    low = min_pixels if min_pixels is not None else default[0]
    high = max_pixels if max_pixels is not None else default[1]
    if low > high:
        raise ValueError(f"min_pixels {low} is above max_pixels {high}")
    return low, high


def check_text_has_no_vision_tokens(text: str | None, what: str = "text") -> None:
    """Refuse a request text holding vision special tokens (they would be read as image positions).

    Raises:
        InvalidRequestError: the text holds one.
    """
    if text and any(t in text for t in VISION_SPECIAL_TOKENS):
        raise InvalidRequestError(f"the {what} may not contain vision special tokens such as {IMAGE_PAD}")


def load_image_processor(model_dir: Path, min_pixels: int, max_pixels: int) -> Any:
    """The Qwen-VL image processor of ``model_dir`` (PIL path, no torchvision) with the given pixel range.

    Patch size, merge size, mean and std come from the model's ``preprocessor_config.json`` (Qwen3-VL's
    names the torchvision "fast" class; the PIL class computes the same patches). The pixel range wins over
    the file's, as the models' own embedding code sets its own range too.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil.from_pretrained(str(model_dir), min_pixels=min_pixels, max_pixels=max_pixels)


def process_image(
    image_processor: Any, image: Image.Image, pre_resize: ImagePreResize | None = None
) -> tuple[np.ndarray, tuple[int, int, int], int]:
    """Pre-process one image (blocking CPU work): the recipe's pre-resize, then the image processor.

    Args:
        image_processor: The model's Qwen-VL image processor.
        image: A decoded RGB image.
        pre_resize: The recipe's first resize (qwen-vl-utils' ``fetch_image``), or None.

    Returns:
        (pixel_values float32 (patches, C*T*P*P), the (t, h, w) patch grid, the image's token count after
        the ``merge_size`` x ``merge_size`` merge).
    """
    if pre_resize is not None:
        size = pre_resize.target_size(*image.size)
        # PIL's default filter for RGB images, which fetch_image's plain ``image.resize(size)`` uses.
        image = image.resize(size, Image.Resampling.BICUBIC)
    out = image_processor(images=[image], return_tensors="pt")
    pixel_values = out["pixel_values"].numpy().astype(np.float32, copy=False)
    g = out["image_grid_thw"][0].tolist()
    grid = (int(g[0]), int(g[1]), int(g[2]))
    merge = int(image_processor.merge_size)
    return pixel_values, grid, grid[0] * grid[1] * grid[2] // (merge**2)


def expand_image_pads(ids: list[int], image_token_id: int, counts: list[int]) -> list[int]:
    """Replace the k-th ``<|image_pad|>`` of ``ids`` by ``counts[k]`` copies (one per image token)."""
    out: list[int] = []
    k = 0
    for t in ids:
        if t == image_token_id:
            out.extend([image_token_id] * counts[k])
            k += 1
        else:
            out.append(t)
    if k != len(counts):
        raise ValueError(f"expected {len(counts)} image placeholders, found {k}")
    return out


def vision_model_inputs(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, image_token_id: int, pixel_values: list[np.ndarray],
    grids: list[tuple[int, int, int]], positions: PositionScheme = "mrope",
) -> dict[str, Any]:
    """Keyword inputs of a Qwen-VL model forward for a left-padded batch (images in row-major order).

    Position ids are computed for every batch, text-only ones included: with left padding the model's own
    default (arange over the padded row) would shift a padded text's positions. ``sequential`` gives each
    row 0..n-1 from its first real token (what a decoder called without position ids computes for an
    unpadded input, GME's case); ``mrope`` the model's ``get_rope_index``.
    """
    device = ids.device
    # 1 marks image tokens: get_rope_index gives them 3-D (t, h, w) positions, text 1-D ones.
    mm_token_type_ids = (ids == image_token_id).int()
    extra: dict[str, Any] = {}
    image_grid_thw = torch.tensor(grids, dtype=torch.long, device=device) if grids else None
    if image_grid_thw is not None:
        extra["pixel_values"] = torch.from_numpy(np.concatenate(pixel_values)).to(device)
        extra["image_grid_thw"] = image_grid_thw
    if positions == "sequential":
        position_ids = positions_from_mask(mask)
    else:
        position_ids, _ = model.get_rope_index(
            ids, mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=mask
        )
    return {
        "input_ids": ids, "attention_mask": mask, "position_ids": position_ids,
        "mm_token_type_ids": mm_token_type_ids, "use_cache": False, **extra,
    }


def text_decoder(model: Any, placement: Placement, pad_id: int, head: Any, acceleration: AccelerationSettings | None,
                 max_length: int, name: str) -> LastTokenDecoder:
    """The runner of a Qwen-VL model's text-only batches: its language model, right-padded, no mask.

    For a text-only input both position schemes give 0..n-1 (``get_rope_index`` numbers text tokens
    sequentially on all three M-RoPE axes), which is what the language model computes without position
    ids, so text-only batches can take the graphed / compiled path; batches with images stay eager.
    """
    # Bulk batches of these backends mix images in (padded, masked), so their text batches stay padded too.
    settings = replace(acceleration or AccelerationSettings(), bulk_packing="off")
    return LastTokenDecoder(model.language_model, placement, pad_id, head, settings, max_length, name=name)


def vision_language_class(name: str) -> Any:
    """The transformers model class a recipe names (``Qwen2VLModel``, ``Qwen3VLForConditionalGeneration``, ...)."""
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"transformers {transformers.__version__} has no {name}; upgrade transformers")
    return cls


class QwenVLEmbedder:
    """Last-token Qwen-VL embedder: ``prepare`` (CPU, any thread) and ``forward`` (model thread).

    Args:
        min_pixels: Image area lower bound after resizing (None: the recipe's default).
        max_pixels: Upper bound (None: the recipe's default).
        positions: Decoder position ids (None: the recipe's).
    """

    #: Bulk batches run padded (packing is for the text decoders' last-token path only).
    packs_bulk = False

    def __init__(
        self, model_dir: Path, recipe: MultiModalRecipe, placement: Placement, max_length: int,
        min_pixels: int | None = None, max_pixels: int | None = None, positions: PositionScheme | None = None,
        acceleration: AccelerationSettings | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        self.recipe = recipe
        self.positions: PositionScheme = positions or recipe.positions
        self.placement = placement
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self._tokenizer = ThreadLocalTokenizer(tokenizer)
        self.min_pixels, self.max_pixels = pixel_range(min_pixels, max_pixels, (recipe.min_pixels, recipe.max_pixels))
        self.image_processor = load_image_processor(model_dir, self.min_pixels, self.max_pixels)
        self.merge_size = int(self.image_processor.merge_size)
        model_class = vision_language_class(recipe.model_class)
        # Typed Any: transformers' stubs type the tensors as LongTensor/IntTensor subclasses torch never returns.
        self.model: Any = cast(Any, model_class.from_pretrained(str(model_dir), **model_load_kwargs(placement)))
        self.model.to(placement.device).eval()
        config = self.model.config
        text_config = config.text_config
        self.dim = int(text_config.hidden_size)
        self.max_length = model_max_length(text_config, None, max_length)
        self.image_token_id = int(config.image_token_id)
        pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        if pad_id != self.image_token_id:
            raise ValueError(f"tokenizer's {IMAGE_PAD} is id {pad_id}, the model's image_token_id is {self.image_token_id}")
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else 0
        self._streams = LaneStreams(placement, self.model)
        self.text_decoder = text_decoder(self.model, placement, self.pad_token_id, None, acceleration,
                                         self.max_length, "mm-embed text")

    def start_acceleration(self) -> None:
        self.text_decoder.start()

    def stop_acceleration(self) -> None:
        self.text_decoder.stop()

    def acceleration_info(self) -> dict[str, Any]:
        return {**self.text_decoder.info(), "images": "eager"}

    # --------------------------------------------------------------------------------------------- prepare
    def prepare(
        self, text: str | None, image: Image.Image | None, input_type: InputType, instruction: str | None,
        truncate: bool = True,
    ) -> PreparedInput:
        """Template, tokenize and pre-process one input (blocking CPU work).

        Raises:
            InvalidRequestError: the text holds vision special tokens.
            RequestTooLargeError: the image's tokens plus the template exceed ``max_length``, or the text
                does with ``truncate=False``.
        """
        check_text_has_no_vision_tokens(text)
        tok = self._tokenizer.get()
        prefix = self.recipe.prefix(input_type, instruction)
        image_part = VISION_START + IMAGE_PAD + VISION_END if image is not None else ""
        # Tokenize the whole string at once, like GME's processor call, so BPE sees the same boundaries.
        ids: list[int] = tok(prefix + image_part + (text or "") + self.recipe.suffix(), add_special_tokens=False)[
            "input_ids"
        ]
        pixel_values: np.ndarray | None = None
        grid: tuple[int, int, int] | None = None
        n_image = 0
        if image is not None:
            pixel_values, grid, n_image = process_image(self.image_processor, image, self.recipe.pre_resize)
            ids = expand_image_pads(ids, self.image_token_id, [n_image])
        original = len(ids)
        if original > self.max_length:
            # Only an input over the limit needs its text's own tokens (to cut them).
            text_ids: list[int] = tok(text, add_special_tokens=False)["input_ids"] if text else []
            fixed = original - len(text_ids)
            if fixed > self.max_length:
                raise RequestTooLargeError(
                    f"input needs {fixed} tokens before its text ({n_image} for the image), over the limit of "
                    f"{self.max_length}; lower --max-pixels or raise --max-length"
                )
            if not truncate:
                raise RequestTooLargeError(
                    f"input has {original} tokens, over the limit of {self.max_length}; shorten it or send truncate=true"
                )
            # Keep the template and the image whole; cut the end of the text (GME truncates text too).
            keep = self.max_length - fixed
            head = tok(prefix + image_part, add_special_tokens=False)["input_ids"]
            if image is not None:
                at = head.index(self.image_token_id)
                head = [*head[:at], *([self.image_token_id] * n_image), *head[at + 1 :]]
            tail = tok(self.recipe.suffix(), add_special_tokens=False)["input_ids"]
            ids = [*head, *text_ids[:keep], *tail]
        return PreparedInput(ids=tuple(ids), pixel_values=pixel_values, grid_thw=grid, original_length=original)

    # --------------------------------------------------------------------------------------------- forward
    def forward(self, batch: list[PreparedInput], lane: str) -> np.ndarray:
        """Embed a batch. Returns float32 (n, dim), not normalised."""
        with self._streams.hold(lane):
            return self.launch(batch, lane).result()

    @torch.inference_mode()
    def launch(self, batch: list[PreparedInput], lane: str) -> HostResult:
        """Queue a batch's forward on the device (see :meth:`forward`)."""
        device = self.placement.device
        with self._streams.use(lane):
            grids = [p.grid_thw for p in batch if p.grid_thw is not None]
            if not grids:
                return HostResult(self.text_decoder.run([p.ids for p in batch], lane))
            ids, mask = pad_batch([p.ids for p in batch], self.pad_token_id, "left", device)
            pixels = [p.pixel_values for p in batch if p.pixel_values is not None]
            out = self.model(
                **vision_model_inputs(self.model, ids, mask, self.image_token_id, pixels, grids, self.positions)
            )
            # Left padding: the last column is every row's last real token (the template's last).
            return HostResult(out.last_hidden_state[:, -1].float())
