"""``ThreadLocalTokenizer.encode_ids``: the Rust fast path gives the Hugging Face call's ids."""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from servers.backends.torch_runtime import ThreadLocalTokenizer

#: Texts that stress pre-tokenization and special-token handling: unicode, whitespace runs, an empty
#: string, special tokens written in the text, and a long text.
TEXTS = [
    "What is the capital of France?",
    "",
    "   leading and trailing   ",
    "tabs\tand\nnewlines\r\n\n",
    "Émile Zola écrivit « Germinal » — 1885; 東京は日本の首都です。🙂👍🏽",
    "a<|endoftext|>b <|im_start|>user\nhi<|im_end|>",
    "[CLS] [SEP] [MASK] [PAD] written as text",
    "numbers 3.14159 1,000,000 and code: def f(x): return x**2",
    " ".join(["protein folding kinetics"] * 300),
]


@cache
def load(tokenizer_dir: Path) -> Any:
    """One prototype per folder (a Qwen vocabulary takes a second to load); tests copy before mutating."""
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(params=["qwen-eos", "qwen-plain", "minilm"])
def tokenizer_dir(
    request: pytest.FixtureRequest, qwen_tokenizer_dir: Path, qwen_tokenizer_plain_dir: Path, minilm: Path
) -> Path:
    return {"qwen-eos": qwen_tokenizer_dir, "qwen-plain": qwen_tokenizer_plain_dir, "minilm": minilm}[
        request.param
    ]


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_ids_equals_the_hugging_face_call(
    tokenizer_dir: Path, add_special_tokens: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = load(tokenizer_dir)
    assert tok.is_fast
    expected = [list(ids) for ids in tok(TEXTS, add_special_tokens=add_special_tokens)["input_ids"]]
    # The fast path must not fall back to the Hugging Face call (which would give the same ids).
    monkeypatch.setattr(type(tok), "__call__", lambda *a, **k: pytest.fail("encode_ids took the slow path"))
    got = ThreadLocalTokenizer(tok).encode_ids(TEXTS, add_special_tokens=add_special_tokens)
    assert got == expected
    # The cases differ: special tokens in the text stay single ids, the long text stays whole.
    assert max(len(ids) for ids in got) > 512


def test_encode_ids_is_neither_truncated_nor_padded_by_an_earlier_call(tokenizer_dir: Path) -> None:
    """A truncating, padding call on the same thread's copy leaves both set on the Rust backend."""
    tok = load(tokenizer_dir)
    local = ThreadLocalTokenizer(tok)
    local.get()(TEXTS, truncation=True, max_length=16, padding=True)
    backend = local.get().backend_tokenizer
    assert backend.truncation is not None
    assert backend.padding is not None
    got = local.encode_ids(TEXTS)
    assert got == [list(ids) for ids in tok(TEXTS)["input_ids"]]
    assert len(got[-1]) > 512


def test_encode_ids_honours_split_special_tokens(qwen_tokenizer_plain_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(qwen_tokenizer_plain_dir), split_special_tokens=True)
    text = ["a<|endoftext|>b"]
    expected = [list(ids) for ids in tok(text, add_special_tokens=False)["input_ids"]]
    assert tok.convert_tokens_to_ids("<|endoftext|>") not in expected[0]
    assert ThreadLocalTokenizer(tok).encode_ids(text, add_special_tokens=False) == expected


def test_each_thread_encodes_with_its_own_copy(qwen_tokenizer_dir: Path) -> None:
    tok = load(qwen_tokenizer_dir)
    local = ThreadLocalTokenizer(tok)
    expected = [list(ids) for ids in tok(TEXTS)["input_ids"]]
    results: list[list[list[int]]] = []
    copies: list[Any] = []

    def work() -> None:
        for _ in range(5):
            results.append(local.encode_ids(TEXTS))
        copies.append(local.get())  # the object, not id(): a freed copy's address can be reused

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(copies) == 2
    assert copies[0] is not copies[1]
    assert results == [expected] * 10
