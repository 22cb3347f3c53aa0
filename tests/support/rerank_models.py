"""Tiny random-weight rerankers besides the Qwen3 causal LM: a converted ``*-seq-cls`` Qwen3 and a BERT
cross-encoder, saved with ``save_pretrained`` in the layout of their Hub repositories, so the server resolves
their recipes from the same files as for the real models (no test downloads a model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

_BERT_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_qwen3_seq_cls_from_causal_lm(target: Path, causal_lm_dir: Path) -> Path:
    """Convert a Qwen3-Reranker-shaped causal LM to ``Qwen3ForSequenceClassification`` the way the public
    ``*-seq-cls`` checkpoints are made: one label whose weight row is ``lm_head[yes] - lm_head[no]``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(causal_lm_dir))
    lm = AutoModelForCausalLM.from_pretrained(str(causal_lm_dir), dtype=torch.float32).eval()
    config = lm.config
    config.architectures = ["Qwen3ForSequenceClassification"]
    config.num_labels = 1
    model = Qwen3ForSequenceClassification(config).eval()
    model.model.load_state_dict(lm.model.state_dict())
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    head = lm.get_output_embeddings().weight.detach()
    with torch.no_grad():
        model.score.weight.copy_((head[yes] - head[no]).unsqueeze(0))
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target


def save_tiny_bert_cross_encoder(
    target: Path, tokenizer_dir: Path, *, activation_fn: str | None = None, seed: int = 0
) -> Path:
    """A sentence-transformers ``CrossEncoder`` repository: ``BertForSequenceClassification`` (1 label) with
    the BERT vocabulary of ``tokenizer_dir`` (e.g. all-MiniLM-L6-v2) and, optionally, an activation in
    ``config.json`` the way sentence-transformers >= 4 saves it."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, num_labels=1, architectures=["BertForSequenceClassification"],
    )
    model = BertForSequenceClassification(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    for name in _BERT_TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, target / name)
    if activation_fn is not None:
        data = json.loads((target / "config.json").read_text())
        data["sentence_transformers"] = {"activation_fn": activation_fn, "version": "5.0.0"}
        (target / "config.json").write_text(json.dumps(data, indent=2))
    return target
