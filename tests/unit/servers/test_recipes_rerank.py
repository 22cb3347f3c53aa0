"""Rerank recipes are resolved from the model's files and tokenizer, never from its name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from servers.recipes.rerank import QWEN3_RERANKER_TEMPLATE, load_pair_template, resolve_rerank_recipe
from tests.support.rerank_models import save_tiny_bert_cross_encoder

CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def _config_only(target: Path, config: dict[str, object], tokenizer_dir: Path | None) -> Path:
    """A model directory with just ``config.json`` (+ tokenizer files): resolution never loads weights."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config))
    if tokenizer_dir is not None:
        for f in tokenizer_dir.iterdir():
            if f.is_file() and f.name.startswith(("tokenizer", "vocab", "special_tokens")):
                shutil.copy(f, target / f.name)
    return target


def test_template_is_the_model_card_text() -> None:
    assert QWEN3_RERANKER_TEMPLATE.prefix == CARD_PREFIX
    assert QWEN3_RERANKER_TEMPLATE.suffix == CARD_SUFFIX
    assert QWEN3_RERANKER_TEMPLATE.format_middle("I", "Q", "D") == "<Instruct>: I\n<Query>: Q\n<Document>: D"
    assert QWEN3_RERANKER_TEMPLATE.default_instruction == (
        "Given a web search query, retrieve relevant passages that answer the query"
    )


def test_causal_lm_with_yes_no_tokens_is_a_yes_no_reranker(tiny_qwen3_causal_lm: Path) -> None:
    recipe = resolve_rerank_recipe(tiny_qwen3_causal_lm)
    tok = AutoTokenizer.from_pretrained(str(tiny_qwen3_causal_lm))
    assert recipe.kind == "decoder"
    assert recipe.head_token_ids == (tok.convert_tokens_to_ids("no"), tok.convert_tokens_to_ids("yes"))
    assert recipe.head_token_ids == (2152, 9693)  # the ids the model card names, found from the vocabulary
    assert recipe.activation == "sigmoid"
    assert recipe.padding_side == "left"
    assert recipe.template == QWEN3_RERANKER_TEMPLATE


def test_resolution_ignores_the_directory_name(tiny_qwen3_causal_lm: Path, qwen_tokenizer_plain_dir: Path,
                                               tmp_path: Path) -> None:
    misleading = tmp_path / "bert-cross-encoder-ms-marco"
    config = json.loads((tiny_qwen3_causal_lm / "config.json").read_text())
    _config_only(misleading, config, qwen_tokenizer_plain_dir)
    assert resolve_rerank_recipe(misleading).kind == "decoder"


def test_causal_lm_without_chatml_tokens_is_refused(minilm: Path, tmp_path: Path) -> None:
    # BERT's vocabulary has "yes" and "no" but not the ChatML tokens the template is written in.
    model = _config_only(tmp_path / "m", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, minilm)
    with pytest.raises(ValueError, match="yes'/'no' tokens and the ChatML"):
        resolve_rerank_recipe(model)


def test_sentence_transformers_embedding_model_is_a_cosine_bi_encoder(minilm: Path) -> None:
    recipe = resolve_rerank_recipe(minilm)
    assert recipe.kind == "bi-encoder"
    assert recipe.scoring == "cosine (bi-encoder)"
    assert recipe.activation == "identity"
    assert recipe.embedding is not None


def test_qwen3_embedding_is_a_bi_encoder_not_a_yes_no_reranker(tiny_qwen3_embedding: Path) -> None:
    # Its config says Qwen3ForCausalLM and its tokenizer has yes/no; the sentence-transformers pooling wins.
    recipe = resolve_rerank_recipe(tiny_qwen3_embedding)
    assert recipe.kind == "bi-encoder"
    assert recipe.embedding is not None
    assert recipe.embedding.pooling == "lasttoken"


@pytest.mark.parametrize(
    ("activation_fn", "expected"),
    [(None, "sigmoid"), ("torch.nn.modules.activation.Sigmoid", "sigmoid"),
     ("torch.nn.modules.linear.Identity", "identity"), ("torch.nn.modules.activation.Tanh", "tanh")],
)
def test_cross_encoder_activation_comes_from_its_config(
    minilm: Path, tmp_path: Path, activation_fn: str | None, expected: str
) -> None:
    model = save_tiny_bert_cross_encoder(tmp_path / "ce", minilm, activation_fn=activation_fn)
    recipe = resolve_rerank_recipe(model)
    assert recipe.kind == "cross-encoder"
    assert recipe.activation == expected
    assert recipe.padding_side == "right"
    assert recipe.template is None


def test_two_label_classifier_scores_label_one_minus_label_zero(minilm: Path, tmp_path: Path) -> None:
    config = {"architectures": ["BertForSequenceClassification"], "model_type": "bert",
              "id2label": {"0": "irrelevant", "1": "relevant"}}
    recipe = resolve_rerank_recipe(_config_only(tmp_path / "m", config, minilm))
    assert recipe.num_labels == 2
    assert "logit_1 - logit_0" in recipe.scoring


def test_qwen3_seq_cls_conversion_keeps_the_qwen3_template(qwen_tokenizer_plain_dir: Path, tmp_path: Path) -> None:
    config = {"architectures": ["Qwen3ForSequenceClassification"], "model_type": "qwen3", "num_labels": 1}
    recipe = resolve_rerank_recipe(_config_only(tmp_path / "m", config, qwen_tokenizer_plain_dir))
    assert recipe.kind == "decoder"
    assert recipe.template == QWEN3_RERANKER_TEMPLATE
    assert recipe.head_token_ids is None
    assert recipe.activation == "sigmoid"


def test_unknown_model_is_refused_with_a_message(tmp_path: Path) -> None:
    model = _config_only(tmp_path / "m", {"architectures": ["WhisperForConditionalGeneration"]}, None)
    with pytest.raises(ValueError, match="cannot serve this model as a reranker"):
        resolve_rerank_recipe(model)


def test_qwen3_vl_reranker_template_is_the_official_turn() -> None:
    from servers.recipes.rerank import QWEN3_VL_RERANKER_TEMPLATE

    t = QWEN3_VL_RERANKER_TEMPLATE
    # The chat template renders the official content parts back to back, then the generation prompt.
    assert t.prefix == CARD_PREFIX
    assert t.format_middle("I", "Q", "D") == "<Instruct>: I<Query>:Q\n<Document>:D"
    assert t.suffix == "<|im_end|>\n<|im_start|>assistant\n"
    assert t.default_instruction == "Given a search query, retrieve relevant candidates that answer the query."
    assert t.empty_side == "NULL"


def _qwen3_vl_config() -> dict[str, object]:
    return {"model_type": "qwen3_vl", "architectures": ["Qwen3VLForConditionalGeneration"],
            "vision_config": {"patch_size": 16}, "text_config": {}}


def test_qwen3_vl_causal_lm_is_a_vision_reranker(qwen_tokenizer_plain_dir: Path, tmp_path: Path) -> None:
    from servers.recipes.rerank import QWEN3_VL_RERANKER_TEMPLATE

    recipe = resolve_rerank_recipe(_config_only(tmp_path / "m", _qwen3_vl_config(), qwen_tokenizer_plain_dir))
    assert recipe.kind == "vision-decoder"
    assert recipe.accepts_images
    assert recipe.template == QWEN3_VL_RERANKER_TEMPLATE
    assert recipe.head_token_ids == (2152, 9693)
    assert recipe.vision is not None
    assert recipe.vision.model_class == "Qwen3VLForConditionalGeneration"
    assert (recipe.vision.min_pixels, recipe.vision.max_pixels) == (4 * 32 * 32, 1280 * 32 * 32)


def test_qwen3_vl_embedding_model_is_refused_by_the_rerank_server(qwen_tokenizer_plain_dir: Path,
                                                                   tmp_path: Path) -> None:
    model = _config_only(tmp_path / "emb", _qwen3_vl_config(), qwen_tokenizer_plain_dir)
    (model / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    with pytest.raises(ValueError, match=r"embedding model.*mm-embed"):
        resolve_rerank_recipe(model)


def test_other_vision_language_models_are_refused_by_type(tmp_path: Path) -> None:
    model = _config_only(tmp_path / "llava", {"model_type": "llava", "vision_config": {},
                                              "architectures": ["LlavaForConditionalGeneration"]}, None)
    with pytest.raises(ValueError, match=r"qwen2_5_vl, qwen2_vl, qwen3_vl.*'llava'"):
        resolve_rerank_recipe(model)


def test_qwen2_5_vl_yes_no_model_gets_the_lychee_recipe(qwen_tokenizer_plain_dir: Path, tmp_path: Path) -> None:
    model = _config_only(tmp_path / "lychee", {"model_type": "qwen2_5_vl", "vision_config": {},
                                               "architectures": ["Qwen2_5_VLForConditionalGeneration"]},
                         qwen_tokenizer_plain_dir)
    recipe = resolve_rerank_recipe(model)
    assert recipe.kind == "vision-decoder"
    assert recipe.vision is not None
    assert recipe.template is not None
    assert recipe.vision.model_class == "Qwen2_5_VLForConditionalGeneration"
    assert (recipe.vision.min_pixels, recipe.vision.max_pixels, recipe.vision.max_length) == (
        4 * 28 * 28, 1280 * 28 * 28, 3200)
    assert recipe.vision.positions == "mrope"
    assert recipe.vision.pre_resize is not None
    prompt = recipe.template.prefix + recipe.template.format_middle("T", "q", "d") + recipe.template.suffix
    assert prompt == (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
        "<Instruct>: T<Query>:q\n<Document>:d<|im_end|>\n<|im_start|>assistant\n"
    )
    assert recipe.template.empty_side == ""


def test_prompt_template_file_overrides_given_keys_and_checks_slots(tmp_path: Path) -> None:
    base = QWEN3_RERANKER_TEMPLATE
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"middle": "Q={query} D={doc} I={instruction} {{literal}}"}))
    template = load_pair_template(path, base)
    assert template.prefix == base.prefix
    assert template.suffix == base.suffix
    assert template.format_middle("i", "q", "d") == "Q=q D=d I=i {literal}"
    for bad in ({"middle": "{query} {doc}"}, {"middle": "{query} {doc} {instruction} {query}"},
                {"middle": "{query} {doc} {instruction} {other}"}, {"unknown_key": "x"}, ["not", "an", "object"]):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="--prompt-template"):
            load_pair_template(path, base)
    with pytest.raises(ValueError, match="cannot read"):
        load_pair_template(tmp_path / "missing.json", base)
