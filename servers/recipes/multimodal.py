"""Multimodal embedding recipes, resolved from the model's ``config.json``, never its name.

Every recipe formats one input as one chat turn,

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{IMG}{text}<|im_end|>\\n<|im_start|>assistant\\n{tail}

with ``IMG = <|vision_start|><|image_pad|>*n<|vision_end|>`` when the input has an image (n = the image's
token count from the image processor's grid) and pools the last token's hidden state, L2-normalised. The
recipes differ in data only:

* **GME-Qwen2-VL** (``model_type`` ``qwen2_vl``, run on ``Qwen2VLModel``) reproduces GME's published
  ``gme_inference.py`` (the file in the ``Alibaba-NLP/gme-Qwen2-VL-2B-Instruct`` / ``-7B-Instruct`` model
  repositories, which pins transformers < 4.52 and is the code behind the model card and its MTEB results):
  queries carry the task instruction verbatim (no punctuation added), documents
  ``You are a helpful assistant.``; ``tail = <|endoftext|>``; every image is first resized by GME's
  ``fetch_image`` (sides rounded to multiples of 28 within 4..16384 x 28² pixels, PIL's default bicubic
  filter), then by the image processor within 256..1280 x 28²; the text decoder is called without position
  ids, so positions are sequential 0..n-1 over all tokens, image tokens included (not the M-RoPE positions
  of ``get_rope_index``, which vLLM uses and GME's code does not). When a query names no instruction this
  project uses the model card's text-to-image task ``Find an image that matches the given text.``
  (``gme_inference.py`` itself would fall back to the document prompt).
* **Qwen3-VL-Embedding** (``model_type`` ``qwen3_vl``, run on ``Qwen3VLModel``): the official embedder's
  template (the Qwen3-VL chat template with ``add_generation_prompt``, so ``tail`` is empty and the pooled
  token is the ``\\n`` after ``assistant``); system = the instruction (a full stop appended when its last
  character is not Unicode punctuation, as the official code does) or ``Represent the user's input.``;
  queries default to the model card's ``Retrieve images or text relevant to the user's query.``; pixels
  4..1800 x 32² (patch 16, 2x2 merge); M-RoPE positions from the model's ``get_rope_index`` (the official
  embedder calls the model's own forward, which computes them).
"""

from __future__ import annotations

import math
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rag_plugins.protocol import InputType
from servers.recipes.embedding import read_json

GME_DOCUMENT_PROMPT = "You are a helpful assistant."
#: GME's model card uses this task for text -> image retrieval queries.
GME_DEFAULT_QUERY_INSTRUCTION = "Find an image that matches the given text."
#: Qwen3-VL-Embedding: the system prompt of inputs without an instruction (the official embedder's default).
QWEN3_VL_DOCUMENT_PROMPT = "Represent the user's input."
#: Qwen3-VL-Embedding model card: the instruction its retrieval queries carry.
QWEN3_VL_DEFAULT_QUERY_INSTRUCTION = "Retrieve images or text relevant to the user's query."
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
#: Vision special tokens a request's text may not hold (they would be read as image positions).
VISION_SPECIAL_TOKENS = (VISION_START, IMAGE_PAD, VISION_END, "<|video_pad|>")

Punctuation = Literal["ascii", "unicode"]
#: Decoder position ids of a vision-language input: ``sequential`` 0..n-1 over all tokens (image tokens
#: included; GME's code) or ``mrope``, the 3-D (t, h, w) positions of the model's ``get_rope_index``.
PositionScheme = Literal["sequential", "mrope"]
POSITION_SCHEMES: tuple[str, ...] = ("sequential", "mrope")


@dataclass(frozen=True)
class ImagePreResize:
    """A resize applied to every decoded image before the image processor (qwen-vl-utils' ``fetch_image``).

    GME's ``gme_inference.py`` and the Qwen2.5-VL usage code (through ``qwen_vl_utils.process_vision_info``)
    resize each image once so that both sides are multiples of ``factor`` and its area lies within
    ``[min_pixels, max_pixels]``; the image processor then resizes it again within the model's own range.

    Attributes:
        factor: Both sides become multiples of this (patch size x merge size: 28 for Qwen2-VL).
        min_pixels: Lower area bound of this first resize.
        max_pixels: Upper area bound.
        max_ratio: Largest long/short side ratio kept; a longer side is cut to ``short * max_ratio``.
    """

    factor: int = 28
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16384 * 28 * 28
    max_ratio: int = 200

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) an image of ``width`` x ``height`` is resized to."""
        f = self.factor
        h_bar = max(f, round(height / f) * f)
        w_bar = max(f, round(width / f) * f)
        if h_bar * w_bar > self.max_pixels:
            beta = math.sqrt((height * width) / self.max_pixels)
            h_bar = math.floor(height / beta / f) * f
            w_bar = math.floor(width / beta / f) * f
        elif h_bar * w_bar < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h_bar = math.ceil(height * beta / f) * f
            w_bar = math.ceil(width * beta / f) * f
        if max(h_bar, w_bar) / min(h_bar, w_bar) > self.max_ratio:
            if h_bar > w_bar:
                h_bar = w_bar * self.max_ratio
            else:
                w_bar = h_bar * self.max_ratio
        return w_bar, h_bar


#: qwen-vl-utils' ``fetch_image`` with its module defaults (what GME's copy of it uses).
QWEN_VL_FETCH_IMAGE = ImagePreResize()


def ends_with_punctuation(text: str, kind: Punctuation) -> bool:
    """Whether ``text``'s last character is punctuation (ASCII set, or any Unicode ``P*`` category)."""
    if not text:
        return False
    if kind == "ascii":
        return text[-1] in string.punctuation
    return unicodedata.category(text[-1]).startswith("P")


@dataclass(frozen=True)
class MultiModalRecipe:
    """How a multimodal embedder formats an (image?, text?) input and pools its output.

    Attributes:
        name: Label shown in ``/info``.
        model_class: The transformers class (vision tower + decoder, no LM head) that runs the recipe.
        default_instruction: Query task when a request names none.
        document_prompt: System prompt of documents (and of queries with an empty instruction).
        tail: Template text after ``<|im_start|>assistant\\n``; the pooled token is the last of the prompt.
        punctuation: Which punctuation counts as an instruction's ending (else a full stop is appended);
            None: instructions are used verbatim.
        positions: Decoder position ids (see :data:`PositionScheme`).
        pre_resize: Resize applied to every image before the image processor, or None.
        min_pixels: Default lower bound of an image's area after resizing (``--min-pixels`` overrides).
        max_pixels: Default upper bound (``--max-pixels`` overrides).
        min_dimensions: Smallest Matryoshka size offered.
    """

    name: str
    model_class: str
    default_instruction: str
    document_prompt: str
    tail: str
    punctuation: Punctuation | None
    min_pixels: int
    max_pixels: int
    positions: PositionScheme = "mrope"
    pre_resize: ImagePreResize | None = None
    min_dimensions: int = 32

    def system_prompt(self, input_type: InputType, instruction: str | None) -> str:
        """The system turn's text for one input."""
        if input_type != "query":
            return self.document_prompt
        raw = instruction if instruction is not None else self.default_instruction
        task = raw.strip()
        if not task:
            return self.document_prompt
        if self.punctuation is None:
            return raw  # verbatim, as GME's code uses it
        return task if ends_with_punctuation(task, self.punctuation) else task + "."

    def prefix(self, input_type: InputType, instruction: str | None) -> str:
        """Template text before the image/text of the user turn."""
        return f"<|im_start|>system\n{self.system_prompt(input_type, instruction)}<|im_end|>\n<|im_start|>user\n"

    def suffix(self) -> str:
        """Template text after the user's content; its last token is the pooled one."""
        return "<|im_end|>\n<|im_start|>assistant\n" + self.tail


GME_QWEN2_VL = MultiModalRecipe(
    name="gme-qwen2-vl",
    model_class="Qwen2VLModel",
    default_instruction=GME_DEFAULT_QUERY_INSTRUCTION,
    document_prompt=GME_DOCUMENT_PROMPT,
    tail="<|endoftext|>",
    punctuation=None,
    min_pixels=256 * 28 * 28,
    max_pixels=1280 * 28 * 28,
    positions="sequential",
    pre_resize=QWEN_VL_FETCH_IMAGE,
)
QWEN3_VL_EMBEDDING = MultiModalRecipe(
    name="qwen3-vl-embedding",
    model_class="Qwen3VLModel",
    default_instruction=QWEN3_VL_DEFAULT_QUERY_INSTRUCTION,
    document_prompt=QWEN3_VL_DOCUMENT_PROMPT,
    tail="",
    punctuation="unicode",
    min_pixels=4 * 32 * 32,
    max_pixels=1800 * 32 * 32,
    positions="mrope",
)
_RECIPES_BY_MODEL_TYPE = {"qwen2_vl": GME_QWEN2_VL, "qwen3_vl": QWEN3_VL_EMBEDDING}


def resolve_multimodal_recipe(model_dir: Path) -> MultiModalRecipe:
    """The recipe for the model in ``model_dir`` (from ``config.json``'s ``model_type``).

    Raises:
        ValueError: the model is not one this server knows how to embed images with.
    """
    config = read_json(model_dir / "config.json")
    model_type = str(config.get("model_type", "")) if isinstance(config, dict) else ""
    recipe = _RECIPES_BY_MODEL_TYPE.get(model_type)
    if recipe is None:
        known = ", ".join(sorted(_RECIPES_BY_MODEL_TYPE))
        raise ValueError(f"no multimodal embedding recipe for model_type {model_type!r} (known: {known})")
    return recipe
