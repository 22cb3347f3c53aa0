"""Embedding recipes are resolved from the model's own files, never from its name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servers.recipes.embedding import (
    DEFAULT_RETRIEVAL_INSTRUCTION,
    EmbeddingRecipe,
    is_decoder_config,
    resolve_embedding_recipe,
)

QWEN_TASK = "Given a web search query, retrieve relevant passages that answer the query"
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
BERT_CONFIG = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384}
QWEN3_CONFIG = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "eos_token_id": 151643}


def write_model(
    root: Path,
    name: str,
    config: dict[str, object],
    *,
    modules: list[dict[str, object]] | None = None,
    pooling: dict[str, object] | None = None,
    prompts: dict[str, str] | None = None,
) -> Path:
    model = root / name
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    if modules is not None:
        (model / "modules.json").write_text(json.dumps(modules))
    if pooling is not None:
        (model / "1_Pooling").mkdir()
        (model / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if prompts is not None:
        (model / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    return model


def test_qwen3_embedding_files_give_last_token_recipe(tmp_path: Path) -> None:
    model = write_model(
        tmp_path, "anything", QWEN3_CONFIG, modules=ST_MODULES,
        pooling={"pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": False},
        prompts={"query": f"Instruct: {QWEN_TASK}\nQuery:", "document": ""},
    )
    recipe = resolve_embedding_recipe(model)
    assert recipe.pooling == "lasttoken"
    assert recipe.padding_side == "left"
    assert recipe.eos_token_id == 151643
    assert recipe.default_instruction == QWEN_TASK
    assert recipe.min_dimensions == 32
    assert recipe.normalize is True
    # The model card's query format: no space after "Query:"; documents get no instruction.
    assert recipe.format("what is rope?", "query") == f"Instruct: {QWEN_TASK}\nQuery:what is rope?"
    assert recipe.format("Rotary embeddings.", "document") == "Rotary embeddings."
    assert recipe.format("q", "query", "Find the answer") == "Instruct: Find the answer\nQuery:q"


def test_pooling_mode_string_lasttoken_is_recognised(tmp_path: Path) -> None:
    model = write_model(
        tmp_path, "m", {**QWEN3_CONFIG, "eos_token_id": [7, 8]}, modules=ST_MODULES[:2],
        pooling={"pooling_mode": "lasttoken"}, prompts={},
    )
    recipe = resolve_embedding_recipe(model)
    assert recipe.pooling == "lasttoken"
    assert recipe.eos_token_id == 7
    assert recipe.normalize is False  # no Normalize module
    assert recipe.format("x", "query") == "x"  # no query prompt in the files


def test_decoder_without_sentence_transformers_files_gets_default_instruct_recipe(tmp_path: Path) -> None:
    model = write_model(tmp_path, "bare", QWEN3_CONFIG)
    recipe = resolve_embedding_recipe(model)
    assert recipe.pooling == "lasttoken"
    assert recipe.default_instruction == DEFAULT_RETRIEVAL_INSTRUCTION
    assert recipe.format("hi", "query") == f"Instruct: {DEFAULT_RETRIEVAL_INSTRUCTION}\nQuery:hi"
    assert recipe.format("hi", "document") == "hi"
    assert recipe.eos_token_id == 151643


def test_encoder_with_prompts_uses_them_verbatim(tmp_path: Path) -> None:
    model = write_model(
        tmp_path, "e5-like", BERT_CONFIG, modules=ST_MODULES,
        pooling={"pooling_mode_mean_tokens": True}, prompts={"query": "query: ", "passage": "passage: "},
    )
    recipe = resolve_embedding_recipe(model)
    assert recipe.pooling == "sentence-transformers"
    assert recipe.default_instruction is None
    assert recipe.format("a", "query") == "query: a"
    assert recipe.format("a", "document") == "passage: a"
    # For non-"Instruct:" models a request's instruction replaces the query prompt verbatim.
    assert recipe.format("a", "query", "search_query: ") == "search_query: a"


def test_name_does_not_decide_the_recipe(tmp_path: Path) -> None:
    # A BERT model in a directory called "Qwen3-Embedding" is still a mean-pooling encoder.
    model = write_model(tmp_path, "Qwen3-Embedding-0.6B", BERT_CONFIG)
    recipe = resolve_embedding_recipe(model)
    assert recipe.pooling == "sentence-transformers"
    assert recipe.format("x", "query") == "x"
    # ... and a Qwen3 decoder in a neutral directory gets last-token pooling.
    assert resolve_embedding_recipe(write_model(tmp_path, "my-model", QWEN3_CONFIG)).pooling == "lasttoken"


def test_real_minilm_files(minilm: Path) -> None:
    recipe = resolve_embedding_recipe(minilm)
    assert recipe.pooling == "sentence-transformers"
    assert recipe.normalize is True
    assert recipe.format("Which planet?", "query") == "Which planet?"
    assert recipe.format("Mars.", "document") == "Mars."


def test_tiny_qwen3_embedding_fixture_files(tiny_qwen3_embedding: Path) -> None:
    recipe = resolve_embedding_recipe(tiny_qwen3_embedding)
    assert recipe.pooling == "lasttoken"
    assert recipe.eos_token_id == 151643
    assert recipe.default_instruction == QWEN_TASK


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"architectures": ["MistralForCausalLM"]}, True),
        ({"model_type": "qwen2"}, True),
        ({"architectures": ["BertModel"], "model_type": "bert"}, False),
        ({}, False),
    ],
)
def test_is_decoder_config(config: dict[str, object], expected: bool) -> None:
    assert is_decoder_config(config) is expected


def test_query_prefix_without_instruction_slot() -> None:
    recipe = EmbeddingRecipe(name="t", pooling="sentence-transformers", query_template="Represent: ")
    assert recipe.query_prefix(None) == "Represent: "
    assert recipe.query_prefix("Other: ") == "Other: "
