"""Multimodal embedding recipes (DESIGN §4), resolved from the model's ``config.json``, never its name.

GME-Qwen2-VL: one chat turn per input,

    <|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n{IMG}{text}<|im_end|>\\n<|im_start|>assistant\\n<|endoftext|>

with ``IMG = <|vision_start|><|image_pad|>*n<|vision_end|>`` when the input has an image (n = the image's
token count from the image processor's grid). Queries carry the task instruction (a full stop appended
when it ends without punctuation, as GME's own code does); documents get ``You are a helpful assistant.``.
The vector is the last token's hidden state, L2-normalised.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from rag_plugins.protocol import InputType
from servers.recipes.embedding import read_json

GME_DOCUMENT_PROMPT = "You are a helpful assistant."
#: GME's model card uses this task for text -> image retrieval queries.
GME_DEFAULT_QUERY_INSTRUCTION = "Find an image that matches the given text."
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"


@dataclass(frozen=True)
class MultiModalRecipe:
    """How a multimodal embedder formats an (image?, text?) input and pools its output.

    Attributes:
        name: Label shown in ``/info``.
        default_instruction: Query task when a request names none.
        document_prompt: System prompt of documents.
        min_dimensions: Smallest Matryoshka size offered.
    """

    name: str
    default_instruction: str
    document_prompt: str
    min_dimensions: int = 32

    def system_prompt(self, input_type: InputType, instruction: str | None) -> str:
        """The system turn's text for one input."""
        if input_type != "query":
            return self.document_prompt
        task = (instruction if instruction is not None else self.default_instruction).strip()
        if not task:
            return self.document_prompt
        return task if task[-1] in string.punctuation else task + "."

    def prefix(self, input_type: InputType, instruction: str | None) -> str:
        """Template text before the image/text of the user turn."""
        return f"<|im_start|>system\n{self.system_prompt(input_type, instruction)}<|im_end|>\n<|im_start|>user\n"

    @staticmethod
    def suffix() -> str:
        """Template text after the user's content; its last token is the pooled one."""
        return "<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"


GME_QWEN2_VL = MultiModalRecipe(
    name="gme-qwen2-vl",
    default_instruction=GME_DEFAULT_QUERY_INSTRUCTION,
    document_prompt=GME_DOCUMENT_PROMPT,
)
_RECIPES_BY_MODEL_TYPE = {"qwen2_vl": GME_QWEN2_VL}


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
